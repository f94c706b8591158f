"""What each page shows, computed from the command line's shapes (`attractor status --json`, the
run's events, the merge queue): plain dicts the templates render and `/api/` returns.

Card status of a node (the tree's colours): `queued` (pending), `starting` (its agent is
starting), `working` (running, validating, merging), `needs-input` (its agent waits for a human),
`stuck` (hung, stale or blocked agent), `quarantined`, `done` (merged, done, skipped), `failed`
(failed, blocked). Heartbeat dots: green under 30 s, amber under 120 s, red beyond or none.
"""

from __future__ import annotations

from typing import Any

from attractor import clock
from attractor.layers import layout
from attractor.names import agent_id

HEARTBEAT_GREEN = 30.0
HEARTBEAT_AMBER = 120.0
STUCK_HEALTH = frozenset({"hung", "stale", "blocked", "stuck"})
DONE_STATES = frozenset({"merged", "done", "skipped"})
FAILED_STATES = frozenset({"failed", "blocked"})
ALERT_EVENTS = {
    "runner_died": "death", "alert": "alert", "validation_failed": "failed gate", "merge_failed": "failed gate",
    "merge_error": "failed gate", "failed": "failure", "blocked": "failure", "needs_input": "needs input",
    "launch_failed": "failure", "pipeline_reload_failed": "failure",
}


def heartbeat_dot(age: float | None) -> str:
    if age is None:
        return "red"
    return "green" if age < HEARTBEAT_GREEN else "amber" if age < HEARTBEAT_AMBER else "red"


def card_status(node: dict[str, Any], agent: dict[str, Any] | None) -> str:
    state = str(node.get("state"))
    if state in DONE_STATES:
        return "done"
    if state in FAILED_STATES:
        return "failed"
    if state == "pending":
        return "queued"
    health = str(agent.get("health")) if agent else ""
    if health == "quarantined":
        return "quarantined"
    if health == "needs-input" or (agent and agent.get("needs_input")):
        return "needs-input"
    if health in STUCK_HEALTH:
        return "stuck"
    if state == "running" and (agent is None or health in ("starting", "", "registered")):
        return "starting"
    return "working"


def _tokens(usage: dict[str, Any] | None) -> int:
    if not usage:
        return 0
    return sum(int(usage.get(k) or 0) for k in ("input_tokens", "output_tokens", "cache_read_tokens",
                                                "cache_write_tokens"))


def _context(usage: dict[str, Any] | None) -> float | None:
    """The share of the context window in use, when the agent's CLI reports both numbers."""
    if not usage:
        return None
    used, window = usage.get("context_tokens"), usage.get("context_window")
    if isinstance(used, (int, float)) and isinstance(window, (int, float)) and window > 0:
        return max(0.0, min(1.0, used / window))
    return None


ENDED_HEALTH = frozenset({"dead", "terminated", "stopped"})


def _process(agent: dict[str, Any], node_state: str) -> dict[str, Any]:
    """A runner's or agent's line on its card: a process that has ended once its node moved on
    (validating, merging, done) is `exited` with a grey dot, not a red alarm; one that died while
    its node still runs keeps its health and a red dot."""
    if agent.get("health") in ENDED_HEALTH or not agent.get("alive", True):
        if node_state != "running":
            return {**agent, "shown": "exited", "dot": "off"}
        return {**agent, "shown": agent.get("health"), "dot": "red"}
    return {**agent, "shown": agent.get("health"), "dot": heartbeat_dot(agent.get("heartbeat_age"))}


def tree(report: dict[str, Any]) -> dict[str, Any]:
    """launcher → guardian → runners → agents: one card per node, with its runner and agent."""
    by_id = {a["agent_id"]: a for a in report["agents"]}
    run_id = report["run"]["run_id"]

    def layer(role: str) -> dict[str, Any] | None:
        agent = by_id.get(agent_id(role, run_id))
        if agent is None:
            return None
        return {**agent, "dot": heartbeat_dot(agent.get("heartbeat_age"))}

    cards = []
    for node in report["nodes"]:
        name = node["name"]
        runner = by_id.get(layout.runner_id(name))
        agent = by_id.get(layout.orchestrator_id(name))
        usage = node.get("usage") or (agent or {}).get("usage")
        cards.append({
            "name": name, "kind": node.get("kind"), "state": node.get("state"), "phase": node.get("phase"),
            "status": card_status(node, agent), "attempts": node.get("attempts"), "branch": node.get("branch"),
            "reason": node.get("reason"), "outcome": node.get("outcome"),
            "runner": runner and _process(runner, str(node.get("state"))),
            "agent": agent and _process(agent, str(node.get("state"))),
            "restarts": sum(int((a or {}).get("restarts") or 0) for a in (runner, agent)),
            "tokens": _tokens(usage), "cost_usd": (usage or {}).get("cost_usd"), "context": _context(usage),
            "needs_input": (agent or {}).get("needs_input"),
            "attach": (agent or {}).get("attach") or (runner or {}).get("attach"),
        })
    order = {"needs-input": 0, "stuck": 1, "quarantined": 2, "failed": 3, "starting": 4, "working": 5,
             "queued": 6, "done": 7}
    counts: dict[str, int] = {}
    for card in cards:
        counts[card["status"]] = counts.get(card["status"], 0) + 1
    return {"run": report["run"], "project": report.get("project"), "launcher": layer("launcher"),
            "guardian": layer("guardian"), "nodes": cards, "counts": counts,
            "needs_human": sorted((c for c in cards if order[c["status"]] <= 2), key=lambda c: order[c["status"]])}


# --- the timeline ------------------------------------------------------------------------

_PHASE_OF_EVENT = {"runner_spawned": "running", "validation_failed": "running", "validating": "validating",
                   "merging": "merging", "needs_input": "needs-input", "input_given": "running"}
_END_EVENTS = {"merged": "merged", "done": "done", "failed": "failed", "blocked": "failed", "skipped": "done",
               "validator": "done"}


def timeline(report: dict[str, Any], events: list[dict[str, Any]], queue: list[dict[str, Any]]) -> dict[str, Any]:
    """One lane per node: bars of running, validating, in the queue, merging (and waiting for a
    human), from the run's events and the queue's records; failures and retries as marks."""
    run = report["run"]
    start = clock.parse_iso(run["started_at"]) if run.get("started_at") else None
    lanes: dict[str, dict[str, Any]] = {n["name"]: {"node": n["name"], "kind": n.get("kind"), "bars": [], "marks": [],
                                                    "open": None}
                                        for n in report["nodes"] if n.get("kind") not in ("start", "exit")}
    last = start or 0.0
    for item in events:
        event = item["event"]
        kind, node = event.get("event"), event.get("node")
        at = clock.parse_iso(event["at"]) if event.get("at") else last
        last = max(last, at)
        if start is None:
            start = at
        lane = lanes.get(str(node)) if node else None
        if lane is None:
            continue
        phase = _PHASE_OF_EVENT.get(str(kind))
        if phase is not None or kind in _END_EVENTS:
            if lane["open"] is not None:
                lane["bars"].append({**lane["open"], "end": at})
                lane["open"] = None
            if phase is not None:
                lane["open"] = {"phase": phase, "start": at, "attempt": event.get("attempts")}
        if kind in ("merge_failed", "merge_error", "failed", "blocked", "runner_died"):
            lane["marks"].append({"at": at, "kind": "failure", "label": f"{kind}: {event.get('reason') or ''}".strip()})
        if kind == "validation":  # a gate's verdict on this node's commit
            ok = event.get("ok") is True
            lane["marks"].append({"at": at, "kind": "passed" if ok else "failure",
                                  "label": f"{event.get('tool')}: {'passed' if ok else 'failed'}"})
        if kind in ("validator", "done") and lane.get("kind") not in ("codergen", None):
            ok = event.get("outcome") in (None, "success")
            lane["marks"].append({"at": at, "kind": "passed" if ok else "failure",
                                  "label": f"decided: {event.get('outcome')}"})
        attempt = event.get("attempts")
        if isinstance(attempt, int) and attempt > lane.get("attempt", 1):
            lane["marks"].append({"at": at, "kind": "retry", "label": f"attempt {attempt}"})
        if isinstance(attempt, int):
            lane["attempt"] = max(attempt, lane.get("attempt", 1))
    # the wait in the queue: from the entry's enqueue to its claim, inside the node's merging bar
    for entry in queue:
        lane = lanes.get(str(entry.get("node")))
        if lane is None or not entry.get("enqueued_at"):
            continue
        claimed = next((h.split(" ", 1)[0] for h in entry.get("history") or [] if "-> processing" in h), None)
        begin = clock.parse_iso(entry["enqueued_at"])
        if start is not None and begin < start:
            continue  # an entry of an earlier run on this state directory
        end = clock.parse_iso(claimed) if claimed else None
        lane["bars"].append({"phase": "queued", "start": begin, "end": end, "attempt": None})
    now = clock.parse_iso(run["finished_at"]) if run.get("finished_at") else max(last, _now())
    for lane in lanes.values():
        if lane["open"] is not None:
            lane["bars"].append({**lane["open"], "end": None})
        lane.pop("open")
        lane.pop("attempt", None)
    origin = start or now
    span = max(now - origin, 1e-3)
    for lane in lanes.values():
        for bar in lane["bars"]:
            end = bar["end"] if bar["end"] is not None else now
            bar["left"] = round(100 * (bar["start"] - origin) / span, 3)
            bar["width"] = round(max(100 * (end - bar["start"]) / span, 0.4), 3)
            bar["seconds"] = round(end - bar["start"], 2)
            bar["start"] = clock.iso(bar["start"])
            bar["end"] = clock.iso(bar["end"]) if bar["end"] is not None else None
        for mark in lane["marks"]:
            mark["left"] = round(100 * (mark["at"] - origin) / span, 3)
            mark["at"] = clock.iso(mark["at"])
    return {"run": run, "project": report.get("project"), "origin": clock.iso(origin), "seconds": round(span, 2),
            "lanes": list(lanes.values())}


def _now() -> float:
    import time

    return time.time()


# --- costs and alerts ---------------------------------------------------------------------

def costs(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens and USD per node, per agent CLI and per run."""
    nodes: list[dict[str, Any]] = []
    by_cli: dict[str, dict[str, Any]] = {}
    by_run: list[dict[str, Any]] = []
    for report in reports:
        run = report["run"]
        clis = {a["name"]: a.get("cli") for a in report["agents"] if a["role"] == "orchestrator"}
        total_tokens, total_cost, any_cost = 0, 0.0, False
        for node in report["nodes"]:
            usage = node.get("usage")
            if not usage:
                continue
            cli = clis.get(node["name"]) or run.get("agent") or "-"
            tokens, cost = _tokens(usage), usage.get("cost_usd")
            nodes.append({"project": report.get("project"), "run_id": run["run_id"], "node": node["name"], "cli": cli,
                          "input_tokens": int(usage.get("input_tokens") or 0),
                          "output_tokens": int(usage.get("output_tokens") or 0), "tokens": tokens, "cost_usd": cost,
                          "source": usage.get("source")})
            row = by_cli.setdefault(cli, {"cli": cli, "nodes": 0, "tokens": 0, "cost_usd": 0.0})
            row["nodes"] += 1
            row["tokens"] += tokens
            row["cost_usd"] += float(cost or 0.0)
            total_tokens += tokens
            if cost is not None:
                total_cost += float(cost)
                any_cost = True
        by_run.append({"project": report.get("project"), "run_id": run["run_id"], "status": run.get("status"),
                       "tokens": total_tokens, "cost_usd": round(total_cost, 6) if any_cost else None})
    peak = max([r["cost_usd"] or 0.0 for r in by_run] + [0.0])
    for row in by_run:
        row["bar"] = round(100 * (row["cost_usd"] or 0.0) / peak, 1) if peak else 0.0
    return {"nodes": nodes, "by_cli": sorted(by_cli.values(), key=lambda r: -r["cost_usd"]), "by_run": by_run,
            "total_usd": round(sum(r["cost_usd"] or 0.0 for r in by_run), 6),
            "total_tokens": sum(r["tokens"] for r in by_run)}


def alerts(run_events: list[tuple[dict[str, Any], list[dict[str, Any]]]], kind: str | None = None,
           text: str | None = None) -> list[dict[str, Any]]:
    """Deaths, quarantines, escalations, needs-input prompts and failed gates, newest first;
    `kind` keeps one kind, `text` the ones whose line contains it."""
    rows = []
    for run, items in run_events:
        for item in items:
            event = item["event"]
            name = str(event.get("event"))
            what = ALERT_EVENTS.get(name)
            if name == "alert" and "quarantin" in str(event.get("alert") or event.get("reason") or ""):
                what = "quarantine"
            if name == "alert" and "escalat" in str(event.get("alert") or event.get("reason") or ""):
                what = "escalation"
            if name == "blocked" and "quarantin" in str(event.get("reason") or ""):
                what = "quarantine"
            if name == "validation" and event.get("ok") is False:
                what = "failed gate"
            if what is None:
                continue
            detail = " ".join(str(event.get(k)) for k in ("alert", "tool", "reason", "message", "kind")
                              if event.get(k))
            rows.append({"at": event.get("at"), "kind": what, "event": name, "node": event.get("node"),
                         "detail": detail, "run_id": run["run_id"], "project": run.get("project"), "id": item["id"]})
    if kind:
        rows = [r for r in rows if r["kind"] == kind]
    if text:
        needle = text.lower()
        rows = [r for r in rows if needle in f"{r['node']} {r['detail']} {r['event']}".lower()]
    rows.sort(key=lambda r: r["at"] or "", reverse=True)
    return rows
