"""The layered chain's latency from an agent's report to its merge, and the demo's wall time,
printed as JSON (progress on stderr).

Part 1 runs a pipeline of `--nodes` scripted codergen nodes with `attractor run` (a real
launcher, guardian, runners and orchestrators in tmux on a private socket), each node writing
one file and committing, each validated by a tool node `command="true"` (a gate that takes no
time; the merge queue runs it again). `--layout chain` (the default) chains the nodes, so one
node is in flight at a time and each hop is measured alone; `--layout parallel` makes them
independent (up to `--max-agents` at once, merges queue behind each other). `--repeat` runs it
several times. Afterwards the state files give, per node, the time from ORCHESTRATOR_DONE
written (its `created_at` in `signals/runner-<node>/done/`) to MERGE_COMPLETE received by the
runner (its `handled_at` there, stamped after the runner's handler returned), and the hops in
between:

    done -> impl_complete   runner wakes, checks the commit (git), writes the hook
    -> NODE_IMPL_COMPLETE    runner sends it to the guardian
    -> validating            guardian wakes, checkpoint + event, hook to validating
    -> gate                  the validation command (here `true`)
    -> VALIDATION_PASSED     guardian sends it
    -> merge_ready           runner wakes, writes the hook
    -> MERGE_READY           runner sends it
    -> merging               guardian wakes, hands it to its merge thread, checkpoint + event
    -> enqueued -> claimed   merge queue: config, entry written, slot taken, entry claimed
    -> decided               rebase, gates (again `true`), compare-and-swap, cleanup
    -> MERGE_COMPLETE sent   outcome recorded, signal sent
    -> merged                runner wakes, marks the hook merged
    -> handled               runner stops the orchestrator, signal recorded done

`done_to_merged_ms` is the whole span; `..._excl_gates_ms` subtracts the two gate runs (the
validation gate and the merge queue's `gates` timing). Target (issue 5): median <= 500 ms
excluding gate time.

With `--gate-seconds S` the tool nodes run `sleep S` instead (the validation, in parallel, and
the merge queue's run of it, serial): with `--layout parallel` and more nodes than the queue can
keep up with, `queue` reports the merge queue's throughput through the guardian's real path
(MERGE_READY signals, checkpoint, events, one entry handed over at a time) against the serial
limit 60/S merges per minute: merges per minute from the first merge decided to the last
(`vs_limit_pct`, target of issue 13: >= 96), the gap from one entry decided to the next one
claimed (`decided_to_next_claimed_ms`; negative when the next entry's gate started before the
current one's outcome was written, as the merge session does), and per merge the time between
two decisions in which no gate ran (`outside_gates_per_merge_ms`: what the queue's own steps
cost on top of the gates).

Part 2 (`--skip-demo` leaves it out) runs `attractor demo --dir <tmp>` `--demo-repeat` times
as a subprocess and reports median and min wall time. The machine is shared: the load average
is reported beside every figure.

Usage: /tmp/v/bin/python bench/chain.py [--nodes 12] [--repeat 2] [--layout chain] [--skip-demo]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import load, log, stats_ms, ts

REPO = Path(__file__).resolve().parent.parent

HOPS = (  # (name, from mark, to mark)
    ("done_to_impl_complete", "done", "impl_complete"),
    ("impl_complete_to_nic_sent", "impl_complete", "nic_sent"),
    ("nic_sent_to_validating", "nic_sent", "validating_hook"),
    ("validation_gate", "validating_hook", "validation_event"),
    ("gate_to_vp_sent", "validation_event", "vp_sent"),
    ("vp_sent_to_merge_ready", "vp_sent", "merge_ready"),
    ("merge_ready_to_mr_sent", "merge_ready", "mr_sent"),
    ("mr_sent_to_merging", "mr_sent", "merging_event"),
    ("merging_to_enqueued", "merging_event", "enqueued"),
    ("enqueued_to_claimed", "enqueued", "claimed"),
    ("claimed_to_decided", "claimed", "decided"),
    ("decided_to_mc_sent", "decided", "mc_sent"),
    ("mc_sent_to_merged_hook", "mc_sent", "merged_hook"),
    ("merged_hook_to_mc_handled", "merged_hook", "mc_handled"),
)
MILESTONES = (  # the brief's cumulative breakdown, from ORCHESTRATOR_DONE written
    ("impl_complete", "impl_complete"),
    ("validation_passed_sent", "vp_sent"),
    ("merge_ready_sent", "mr_sent"),
    ("merge_complete_sent", "mc_sent"),
    ("merge_complete_received", "merged_hook"),
    ("merge_complete_handled", "mc_handled"),
)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE", "ATTRACTOR_STATE_DIR")}
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------- setup


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def make_target(path: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.invalid"),
                       ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    (path / "README.md").write_text("bench target\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "start")


def node_name(i: int) -> str:
    return f"n{i:02d}"


def pipeline_text(nodes: int, layout: str, max_agents: int, gate_seconds: float = 0.0) -> str:
    lines = [f"digraph bench {{\n  graph [max_agents={max_agents}]\n  start [shape=Mdiamond]\n  exit [shape=Msquare]\n"]
    for i in range(1, nodes + 1):
        name = node_name(i)
        script = f"write out/{name}.txt node {name}\\n\ncommit {name}: one file\nreport {name} ready"
        lines.append(f'  {name} [shape=box, prompt="write out/{name}.txt", script="{script}"]\n')
        command = f"sleep {gate_seconds:g}" if gate_seconds > 0 else "true"
        lines.append(f'  check_{name} [shape=parallelogram, command="{command}", timeout=60]\n')
        lines.append(f"  {name} -> check_{name}\n")
    if layout == "chain":
        previous = "start"
        for i in range(1, nodes + 1):
            lines.append(f"  {previous} -> {node_name(i)}\n")
            previous = f"check_{node_name(i)}"
        lines.append(f"  {previous} -> exit\n")
    else:
        for i in range(1, nodes + 1):
            lines.append(f"  start -> {node_name(i)}\n  check_{node_name(i)} -> exit\n")
    lines.append("}\n")
    return "".join(lines)


# --------------------------------------------------------------------------- cleanup


def recorded_pids(state: Path, marker: Path) -> list[int]:
    """Pids the run recorded that are still alive and still ours: a pid whose command line
    does not name `marker` (the bench's temp directory) was reused by someone else."""
    pids = []
    for path in (state / "identities").glob("*.json") if (state / "identities").is_dir() else []:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            pid = json.loads(path.read_text()).get("pid")
            if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(marker) in cmdline:
                pids.append(pid)
    return pids


def cleanup(state: Path, socket_name: str, marker: Path) -> None:
    """Kill this run's tmux server (its own private socket) and any process it recorded."""
    subprocess.run(["tmux", "-L", socket_name, "kill-server"], capture_output=True)
    # tmux may leave the socket file of a server that is gone; this name is ours alone
    socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
    (socket_dir / socket_name).unlink(missing_ok=True)
    for pid in recorded_pids(state, marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- reading the state


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def done_signals(state: Path, agent_id: str) -> list[dict[str, Any]]:
    box = state / "signals" / agent_id / "done"
    items = [read_json(p) for p in box.glob("*.json")] if box.is_dir() else []
    return sorted(items, key=lambda s: s["id"])


def last(items: list[dict[str, Any]], kind: str, node: str | None = None) -> dict[str, Any] | None:
    found = [s for s in items if s["kind"] == kind and (node is None or s["payload"].get("node") == node)]
    return found[-1] if found else None


def node_marks(state: Path, run_dir: Path, node: str, guardian_inbox: list[dict[str, Any]],
               events: list[dict[str, Any]], entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The stamps (epoch seconds) of one node's way from its report to its merge."""
    inbox = done_signals(state, f"runner-{node}")
    hook = read_json(state / "hooks" / f"runner-{node}.json")
    phases = {h["to"]: ts(h["at"]) for h in hook["history"]}  # the last of each phase
    node_events = [e for e in events if e.get("node") == node]

    def event_at(name: str) -> float | None:
        found = [ts(e["at"]) for e in node_events if e["event"] == name]
        return found[-1] if found else None

    marks: dict[str, Any] = {}
    od = last(inbox, "ORCHESTRATOR_DONE")
    vp = last(inbox, "VALIDATION_PASSED")
    mc = last(inbox, "MERGE_COMPLETE")
    nic = last(guardian_inbox, "NODE_IMPL_COMPLETE", node)
    mr = last(guardian_inbox, "MERGE_READY", node)
    marks["runner_spawned"] = event_at("runner_spawned")
    marks["done"] = ts(od["created_at"]) if od else None
    marks["done_handled"] = ts(od["handled_at"]) if od else None
    marks["impl_complete"] = phases.get("impl_complete")
    marks["nic_sent"] = ts(nic["created_at"]) if nic else None
    marks["validating_hook"] = phases.get("validating")
    marks["validation_event"] = event_at("validation")
    marks["vp_sent"] = ts(vp["created_at"]) if vp else None
    marks["merge_ready"] = phases.get("merge_ready")
    marks["mr_sent"] = ts(mr["created_at"]) if mr else None
    marks["merging_event"] = event_at("merging")
    entry = entries.get(node)
    timings: dict[str, float] = {}
    if entry is not None:
        marks["enqueued"] = ts(entry["enqueued_at"])
        claimed = [line.split(" ", 1)[0] for line in entry["history"] if " claimed by pid " in line]
        marks["claimed"] = ts(claimed[-1]) if claimed else None
        outcome = entry.get("outcome") or {}
        marks["decided"] = ts(outcome["decided_at"]) if outcome.get("decided_at") else None
        timings = {k: round(v * 1000, 1) for k, v in (outcome.get("timings") or {}).items()}
    marks["mc_sent"] = ts(mc["created_at"]) if mc else None
    marks["merged_hook"] = phases.get("merged")
    marks["mc_handled"] = ts(mc["handled_at"]) if mc else None
    marks["merge_timings_ms"] = timings
    return marks


def collect(state: Path, nodes: int) -> list[dict[str, Any]]:
    runs = [p for p in (state / "runs").iterdir() if (p / "events.jsonl").exists()]
    run_dir = max(runs, key=lambda p: p.stat().st_mtime)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    guardian_inbox = done_signals(state, f"guardian-{run_dir.name}")
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted((state / "merge-queue" / "entries").glob("*.json")):
        entry = read_json(path)
        if entry.get("node") and entry.get("state") == "merged":
            entries[entry["node"]] = entry
    samples = []
    for i in range(1, nodes + 1):
        marks = node_marks(state, run_dir, node_name(i), guardian_inbox, events, entries)
        if marks["done"] is None or marks["mc_handled"] is None:
            log(f"  {node_name(i)}: incomplete stamps, left out")
            continue
        samples.append(marks)
    return samples


# --------------------------------------------------------------------------- the runs


def run_chain(work: Path, index: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    target = work / f"target-{index}"
    state = work / f"state-{index}"
    make_target(target)
    pipe = work / f"bench-{index}.dot"
    pipe.write_text(pipeline_text(args.nodes, args.layout, args.max_agents, args.gate_seconds))
    socket_name = f"bench-{secrets.token_hex(4)}"
    argv = [sys.executable, "-m", "attractor", "run", str(pipe), "--target-dir", str(target),
            "--state-dir", str(state), "--agent", "scripted", "--tmux-socket", socket_name,
            "--max-agents", str(args.max_agents), "--timeout", str(args.timeout)]
    load_before = load()
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=args.timeout + 30)
        wall = time.monotonic() - started
        if done.returncode != 0:
            log(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"error: chain run {index + 1} exited {done.returncode}")
        samples = collect(state, args.nodes)
    finally:
        cleanup(state, socket_name, work)
    info = {"wall_s": round(wall, 2), "samples": len(samples), "load_before": load_before, "load_after": load()}
    info["queue"] = queue_figures(samples, args.gate_seconds)
    return samples, info


def queue_figures(samples: list[dict[str, Any]], gate_seconds: float) -> dict[str, Any]:
    """The merge queue's throughput over the run: merges per minute from the first merge decided
    to the last (against the serial limit 60/S with `--gate-seconds S`); the gap from one entry
    decided to the next one claimed (negative: the next one was claimed, and its gate started,
    before the current one's outcome was recorded); and per merge, the time between two decisions
    that no gate ran (what the queue's own steps cost on top of the gates)."""
    spans = sorted((s["decided"], s["claimed"], s["merge_timings_ms"].get("gates", 0.0)) for s in samples
                   if s.get("claimed") and s.get("decided"))
    if len(spans) < 2:
        return {"merges": len(spans)}
    decided = [d for d, _, _ in spans]
    gaps = [1000 * (spans[i + 1][1] - spans[i][0]) for i in range(len(spans) - 1)]
    outside = [1000 * (spans[i + 1][0] - spans[i][0]) - spans[i + 1][2] for i in range(len(spans) - 1)]
    per_min = 60 * (len(spans) - 1) / (decided[-1] - decided[0])
    figures: dict[str, Any] = {
        "merges": len(spans), "merges_per_min": round(per_min, 2),
        "decided_to_next_claimed_ms": stats_ms(gaps),
        "idle_between_ms": stats_ms([g for g in gaps if g >= 0]),
        "overlapping": sum(1 for g in gaps if g < 0),
        "outside_gates_per_merge_ms": stats_ms(outside)}
    if gate_seconds > 0:
        figures["limit_per_min"] = round(60 / gate_seconds, 2)
        figures["vs_limit"] = round(per_min * gate_seconds / 60, 4)
        figures["vs_limit_pct"] = round(100 * per_min * gate_seconds / 60, 1)
    return figures


def run_demo(work: Path, index: int) -> tuple[float, list[float]]:
    target = work / f"demo-{index}"
    socket_name = f"bench-{secrets.token_hex(4)}"
    argv = [sys.executable, "-m", "attractor", "demo", "--dir", str(target), "--tmux-socket", socket_name]
    before = load()
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=180)
        wall = time.monotonic() - started
    finally:
        cleanup(target / ".claude" / "state", socket_name, work)
    if done.returncode != 0:
        log(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"error: demo run {index + 1} exited {done.returncode}")
    return wall, before


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def span(a: str, b: str) -> list[float]:
        return [1000 * (s[b] - s[a]) for s in samples if s.get(a) is not None and s.get(b) is not None]

    gate_ms = []
    for s in samples:
        validation = 1000 * (s["validation_event"] - s["validating_hook"]) \
            if s.get("validation_event") and s.get("validating_hook") else 0.0
        gate_ms.append(validation + s["merge_timings_ms"].get("gates", 0.0))
    total = span("done", "mc_handled")
    merge_timings: dict[str, list[float]] = {}
    for s in samples:
        for key, value in s["merge_timings_ms"].items():
            merge_timings.setdefault(key, []).append(value)
    return {
        "done_to_merged_ms": stats_ms(total),
        "done_to_merged_excl_gates_ms": stats_ms([t - g for t, g in zip(total, gate_ms, strict=True)]),
        "done_to_merge_complete_received_excl_gates_ms": stats_ms(
            [1000 * (s["merged_hook"] - s["done"]) - g for s, g in zip(samples, gate_ms, strict=True)
             if s.get("merged_hook")]),
        "gates_ms": stats_ms(gate_ms),
        "milestones_from_done_ms": {name: stats_ms(span("done", mark)) for name, mark in MILESTONES},
        "hops_ms": {name: stats_ms(span(a, b)) for name, a, b in HOPS},
        "merge_queue_timings_ms": {k: stats_ms(v) for k, v in sorted(merge_timings.items())},
        "orchestrator_done_handler_ms": stats_ms(span("impl_complete", "done_handled")),
        # outside the target's span: starting the runner, its worktree, the agent, the agent's work
        "runner_spawned_to_done_ms": stats_ms(span("runner_spawned", "done")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=12, help="codergen nodes per run (default 12)")
    parser.add_argument("--repeat", type=int, default=2, help="pipeline runs (default 2)")
    parser.add_argument("--layout", choices=("chain", "parallel"), default="chain")
    parser.add_argument("--max-agents", type=int, default=4)
    parser.add_argument("--demo-repeat", type=int, default=3)
    parser.add_argument("--skip-demo", action="store_true", help="leave out the demo's wall time")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one pipeline run may take")
    parser.add_argument("--gate-seconds", type=float, default=0.0,
                        help="the tool nodes run `sleep S` (default 0: `true`)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.repeat < 1 or args.demo_repeat < 1:
        parser.error("--nodes, --repeat and --demo-repeat must be at least 1")
    if shutil.which("tmux") is None:
        print("error: tmux is not installed; install it with: apt-get install tmux", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    result: dict[str, Any] = {"schema": 1, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                              "params": {"nodes": args.nodes, "repeat": args.repeat, "layout": args.layout,
                                         "max_agents": args.max_agents,
                                         "gate": f"sleep {args.gate_seconds:g}" if args.gate_seconds > 0 else "true"}}
    try:
        samples: list[dict[str, Any]] = []
        runs = []
        for index in range(args.repeat):
            log(f"chain run {index + 1}/{args.repeat}: {args.nodes} nodes, {args.layout}")
            got, info = run_chain(work, index, args)
            log(f"  {info}")
            samples += got
            runs.append(info)
        result["chain"] = {"runs": runs, **summarize(samples), "target_median_ms": 500}
        med = result["chain"]["done_to_merged_excl_gates_ms"].get("median")
        result["chain"]["meets_target"] = med is not None and med <= 500
        if not args.skip_demo:
            walls, loads = [], []
            for index in range(args.demo_repeat):
                log(f"demo {index + 1}/{args.demo_repeat}")
                wall, before = run_demo(work, index)
                log(f"  {wall:.2f}s (load {before})")
                walls.append(wall)
                loads.append(before)
            result["demo"] = {"runs": args.demo_repeat, "wall_s": [round(w, 2) for w in walls],
                              "median_s": round(statistics.median(walls), 2), "min_s": round(min(walls), 2),
                              "load_before_each": loads, "load_after": load()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
