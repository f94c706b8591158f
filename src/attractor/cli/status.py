"""`attractor status` and `attractor stop`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from attractor.cli import subparser
from attractor.cli._flags import (
    add_json_option,
    add_state_dir_option,
    add_target_dir_option,
    add_tmux_socket_option,
    state_from,
)
from attractor.cli._output import print_json


def _age(stamp: str | None, now: float) -> str:
    from attractor import clock

    if not stamp:
        return "-"
    return f"{now - clock.parse_iso(stamp):.1f}s"


def collect(args: argparse.Namespace) -> dict[str, Any]:
    from attractor import clock
    from attractor.errors import NotFoundError
    from attractor.procs import pid_alive
    from attractor.store import checkpoint as cp_store
    from attractor.store import hooks, identities

    state = state_from(args)
    run_id = args.run or cp_store.latest_run(state)
    if run_id is None:
        raise NotFoundError("run", "(any)", f"no run in {state.root}; start one with: attractor run PIPELINE")
    cp = cp_store.read_checkpoint(state, run_id)
    now = time.time()
    problems: list[Any] = []
    hook_by_node = {h.name: h for h in hooks.list_hooks(state, problems)}
    from attractor.engines.supervision import Supervisor
    from attractor.engines.watch import SUPERVISED, health_of

    supervisor = Supervisor(state)
    records = identities.list_identities(state, problems)
    recorded = next((i.tmux_socket for i in records if i.role == "guardian" and i.name == run_id and i.tmux_socket),
                    None)
    panes = _panes(getattr(args, "tmux_socket", None) or recorded, cp)
    from attractor.store import agent_sessions

    agents = []
    usage_by_node: dict[str, dict[str, Any]] = {}
    for ident in records:
        if ident.session_id != run_id and not getattr(args, "all_agents", False):
            continue  # another run's
        alive = pid_alive(ident.pid)
        socket = ident.tmux_socket
        sup = supervisor.state_of(ident.agent_id)
        if sup.quarantined or ident.status.value == "quarantined":
            health = "quarantined"
        elif ident.status in SUPERVISED:
            health = health_of(ident, panes).health.value
        else:
            health = ident.status.value
        session = agent_sessions.find(state, ident.agent_id) if ident.role == "orchestrator" else None
        if session is not None and session.run_id != run_id:
            session = None  # another run's record of this node name
        if session is not None and session.needs_input and health not in ("dead", "quarantined"):
            health = "needs-input"
        if session is not None and session.usage:
            usage_by_node[ident.name] = session.usage
        agents.append({
            "agent_id": ident.agent_id, "role": ident.role, "name": ident.name, "status": ident.status.value,
            "health": health, "restarts": sup.restarts,
            "next_restart": clock.iso(sup.next_restart_at) if sup.awaiting_respawn and sup.next_restart_at else None,
            "quarantine_reason": sup.quarantine_reason or None,
            "alive": alive, "pid": ident.pid, "epoch": ident.epoch, "crash_count": ident.crash_count,
            "heartbeat_age": round(now - clock.parse_iso(ident.last_heartbeat), 3) if ident.last_heartbeat else None,
            "tmux_session": ident.tmux_session, "pane_id": ident.pane_id,
            "attach": (f"tmux -L {socket} attach -t {ident.tmux_session}"
                       if socket and ident.tmux_session and alive else None),
            "cli": session.cli if session else None,
            "session_id": (session.session_id or None) if session else None,
            "needs_input": session.needs_input if session else None,
            "usage": session.usage if session else None,
            "last_words": (session.death or {}).get("last_line") if session and session.death else None,
        })
    nodes = []
    for name, node in cp.nodes.items():
        hook = hook_by_node.get(name)
        nodes.append({**node.to_json(), "phase": hook.phase.value if hook else None,
                      "usage": usage_by_node.get(name)})
    from attractor.store import merge_entries, queue_hold

    entries = [e.to_json() for e in merge_entries.list_entries(state)]

    held = queue_hold.read(state)
    run = {k: v for k, v in cp.to_json().items() if k != "nodes"}
    run["usage"] = _sum_usage(list(usage_by_node.values()))
    run["paused"] = cp_store.paused(state, run_id)
    return {"schema": 1, "run": run, "nodes": nodes, "queue_hold": held.to_json() if held else None,
            "agents": agents, "merge_queue": entries, "problems": [str(p) for p in problems],
            "state_dir": str(state.root)}


def _sum_usage(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not items:
        return None
    from attractor.agents import Usage

    total = Usage()
    for item in items:
        total = total + Usage.from_json(item)
    data = total.to_json()
    data["source"] = "sum of the nodes"
    return data


def _usage_text(usage: dict[str, Any] | None) -> str:
    if not usage:
        return "-"
    tokens = int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0) \
        + int(usage.get("cache_read_tokens") or 0) + int(usage.get("cache_write_tokens") or 0)
    cost = usage.get("cost_usd")
    return f"{tokens:,} tok" + (f" ${cost:.4f}" if isinstance(cost, (int, float)) else "")


def _panes(socket: str | None, cp: Any) -> dict[str, Any] | None:
    """One batched pane query on the run's tmux socket; None when tmux cannot be asked."""
    from attractor.errors import AttractorError
    from attractor.tmux import Tmux, socket_name_for

    try:
        return {p.pane_id: p for p in Tmux(socket_name_for(Path(cp.target_dir), socket)).list_panes()}
    except AttractorError:
        return None


def run_status(args: argparse.Namespace) -> int:
    data = collect(args)
    if args.json:
        print_json(data)
        return 0
    run = data["run"]
    print(f"run {run['run_id']}  {run['status']}  pipeline {run['pipeline_name']}  target {run['target_branch']}  "
          f"started {run['started_at']}")
    if run.get("reason"):
        print(f"  reason: {run['reason']}")
    if run.get("paused") and run["status"] == "running":
        pause = run["paused"]
        why = f": {pause['reason']}" if pause.get("reason") else ""
        print(f"  PAUSED by {pause.get('by')} at {pause.get('at')}{why}; no new agents start "
              f"(unpause with: attractor unpause {run['run_id']})")
    print(f"\n{'NODE':<20} {'KIND':<12} {'STATE':<11} {'PHASE':<14} {'ATTEMPTS':>8}  {'MERGED':<10}  USAGE")
    for n in data["nodes"]:
        print(f"{n['name']:<20} {n['kind']:<12} {n['state']:<11} {(n['phase'] or '-'):<14} {n['attempts']:>8}  "
              f"{(n['merged_sha'] or '')[:10]:<10}  {_usage_text(n.get('usage'))}")
    if run.get("usage"):
        print(f"{'total':<20} {'':<12} {'':<11} {'':<14} {'':>8}  {'':<10}  {_usage_text(run['usage'])}")
    width = max([len("AGENT"), *(len(a["agent_id"]) for a in data["agents"])])
    print(f"\n{'AGENT':<{width}} {'HEALTH':<12} {'PID':>7} {'HEARTBEAT':>10} {'RESTARTS':>8}  NEXT/ATTACH")
    for a in data["agents"]:
        age = f"{a['heartbeat_age']:.1f}s" if a["heartbeat_age"] is not None else "-"
        extra = a["attach"] or (f"restart at {a['next_restart']}" if a["next_restart"] else "") \
            or (a["quarantine_reason"] or "") or (f"last words: {a['last_words']}" if a.get("last_words") else "")
        print(f"{a['agent_id']:<{width}} {a['health']:<12} {a['pid'] or '-':>7} {age:>10} {a['restarts']:>8}  {extra}")
        if a.get("needs_input"):
            asked = str(a["needs_input"].get("message") or "").replace("\n", " / ")[:160]
            print(f"{'':<{width}}   needs input: {asked}")
            print(f"{'':<{width}}   answer with: attractor agent answer {a['name']} yes|no|always")
    if data.get("queue_hold"):
        print(f"\nMERGING HELD: {data['queue_hold']['reason']}\n  after deciding, lift it with: "
              "attractor merge-queue resume")
    if data["merge_queue"]:
        print(f"\n{'ENTRY':<14} {'STATE':<11} BRANCH")
        for e in data["merge_queue"]:
            print(f"{str(e.get('id'))[:14]:<14} {e.get('state')!s:<11} {e.get('branch')}")
    for p in data["problems"]:
        print(f"warning: {p}", file=sys.stderr)
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from attractor.layers.stop import stop_run

    result = stop_run(state_from(args), args.run_id, tmux_socket=args.tmux_socket,
                      timeout=args.timeout)
    for line in result:
        print(line)
    return 0


def run_pause(args: argparse.Namespace) -> int:
    from attractor.store import checkpoint as cp_store

    state = state_from(args)
    run_id = _run_id(state, args.run_id)
    if args.command == "pause":
        changed = cp_store.pause_run(state, run_id, by=args.by, reason=args.reason)
        print(f"run {run_id} paused: no new agents start; running ones go on" if changed
              else f"run {run_id} was already paused")
    else:
        changed = cp_store.unpause_run(state, run_id, by=args.by)
        print(f"run {run_id} unpaused: ready nodes start again" if changed else f"run {run_id} was not paused")
    return 0


def _run_id(state: Any, given: str | None) -> str:
    from attractor.errors import NotFoundError
    from attractor.names import validate_name
    from attractor.store import checkpoint as cp_store

    run_id = given or cp_store.latest_run(state)
    if run_id is None:
        raise NotFoundError("run", "(any)", f"no run in {state.root}")
    return validate_name(run_id, "run id")


def add_parser(subparsers: Any) -> None:
    p = subparser(subparsers, "status", "show a run: nodes, agents (with the tmux pane to attach to), the queue",
                  "attractor status --json")
    p.add_argument("--run", help="run id (default: the latest run)")
    add_target_dir_option(p)
    add_state_dir_option(p)
    add_tmux_socket_option(p)
    p.add_argument("--all-agents", action="store_true", help="also list agents of other runs")
    add_json_option(p)
    p.set_defaults(func=run_status)

    s = subparser(subparsers, "stop", "end a run cleanly; remove only what attractor created",
                  "attractor stop demo-20261124-010203-001")
    s.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a clean end (default: 10)")
    add_target_dir_option(s)
    add_state_dir_option(s)
    add_tmux_socket_option(s)
    s.set_defaults(func=run_stop)

    for name, text, example in (
            ("pause", "start no new agents in a run (the running ones go on)",
             "attractor pause demo-20261124-010203-001 --reason 'lunch'"),
            ("unpause", "let a paused run start agents again", "attractor unpause")):
        c = subparser(subparsers, name, text, example)
        c.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
        if name == "pause":
            c.add_argument("--reason", default="", help="why (kept in the run's events)")
        c.add_argument("--by", default=os.environ.get("USER") or "user", help="who (default: $USER)")
        add_target_dir_option(c)
        add_state_dir_option(c)
        c.set_defaults(func=run_pause)
