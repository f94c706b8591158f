"""`attractor status` and `attractor stop`."""

from __future__ import annotations

import argparse
import os
import sys
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


def _usage_text(usage: dict[str, Any] | None) -> str:
    if not usage:
        return "-"
    tokens = int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0) \
        + int(usage.get("cache_read_tokens") or 0) + int(usage.get("cache_write_tokens") or 0)
    cost = usage.get("cost_usd")
    return f"{tokens:,} tok" + (f" ${cost:.4f}" if isinstance(cost, (int, float)) else "")


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """The run's report (`layers.status.run_report`), from the daemon when one runs (the same
    code, in a warm process), else from the files here."""
    from attractor.layers.status import run_report
    from attractor.names import ENV_TMUX_SOCKET

    state = state_from(args)
    socket = getattr(args, "tmux_socket", None) or os.environ.get(ENV_TMUX_SOCKET) or None
    all_agents = bool(getattr(args, "all_agents", False))
    if not getattr(args, "no_daemon", False):
        from attractor.control import client

        try:
            report = client.call(client.socket_path(), "run.status", {
                "state_dir": str(state.root), "run_id": args.run, "tmux_socket": socket, "all_agents": all_agents},
                timeout=30.0)
            assert isinstance(report, dict)
            return report
        except client.DaemonNotRunningError:
            pass
    return run_report(state, args.run, tmux_socket=socket, all_agents=all_agents)


def run_status(args: argparse.Namespace) -> int:
    from attractor.errors import UsageError

    if args.watch:
        if args.json:
            raise UsageError("status: --watch redraws a screen for people; for a machine, read --json "
                             "in a loop or the daemon's events.subscribe")
        return watch(args)
    data = collect(args)
    if args.json:
        print_json(data)
        return 0
    sys.stdout.write(render(data))
    for p in data["problems"]:
        print(f"warning: {p}", file=sys.stderr)
    return 0


CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def watch(args: argparse.Namespace) -> int:
    """Redraw the status every `--interval` seconds, in place on a terminal (a form feed between
    screens elsewhere), with the agents that need someone at the top, until Ctrl-C."""
    import time

    from attractor.errors import AttractorError

    tty = sys.stdout.isatty()
    while True:
        try:
            screen = render(collect(args), needs_first=True)
        except AttractorError as exc:  # a run not there yet, a file being replaced: say so, go on
            screen = f"attractor status: {exc}\n"
        stamp = time.strftime("%H:%M:%S")
        sys.stdout.write((CLEAR if tty else "\f\n") + f"every {args.interval:g}s, at {stamp} (Ctrl-C to leave)\n"
                         + screen)
        sys.stdout.flush()
        time.sleep(args.interval)


def render(data: dict[str, Any], *, needs_first: bool = False) -> str:
    """The status as people read it; with `needs_first`, the agents waiting for an answer lead."""
    lines: list[str] = []
    out = lines.append
    run = data["run"]
    waiting = [a for a in data["agents"] if a.get("needs_input")]
    if needs_first and waiting:
        out(f"NEEDS INPUT ({len(waiting)})")
        for a in waiting:
            asked = str(a["needs_input"].get("message") or "").replace("\n", " / ")[:160]
            out(f"  {a['agent_id']}: {asked}")
            out(f"    answer with: attractor agent answer {a['name']} yes|no|always")
        out("")
    out(f"run {run['run_id']}  {run['status']}  pipeline {run['pipeline_name']}  target {run['target_branch']}  "
        f"started {run['started_at']}")
    if run.get("reason"):
        out(f"  reason: {run['reason']}")
    if run.get("paused") and run["status"] == "running":
        pause = run["paused"]
        why = f": {pause['reason']}" if pause.get("reason") else ""
        out(f"  PAUSED by {pause.get('by')} at {pause.get('at')}{why}; no new agents start "
            f"(unpause with: attractor unpause {run['run_id']})")
    out(f"\n{'NODE':<20} {'KIND':<12} {'STATE':<11} {'PHASE':<14} {'ATTEMPTS':>8}  {'MERGED':<10}  USAGE")
    for n in data["nodes"]:
        out(f"{n['name']:<20} {n['kind']:<12} {n['state']:<11} {(n['phase'] or '-'):<14} {n['attempts']:>8}  "
            f"{(n['merged_sha'] or '')[:10]:<10}  {_usage_text(n.get('usage'))}")
    if run.get("usage"):
        out(f"{'total':<20} {'':<12} {'':<11} {'':<14} {'':>8}  {'':<10}  {_usage_text(run['usage'])}")
    width = max([len("AGENT"), *(len(a["agent_id"]) for a in data["agents"])])
    out(f"\n{'AGENT':<{width}} {'HEALTH':<12} {'PID':>7} {'HEARTBEAT':>10} {'RESTARTS':>8}  NEXT/ATTACH")
    for a in data["agents"]:
        age = f"{a['heartbeat_age']:.1f}s" if a["heartbeat_age"] is not None else "-"
        extra = a["attach"] or (f"restart at {a['next_restart']}" if a["next_restart"] else "") \
            or (a["quarantine_reason"] or "") or (f"last words: {a['last_words']}" if a.get("last_words") else "")
        out(f"{a['agent_id']:<{width}} {a['health']:<12} {a['pid'] or '-':>7} {age:>10} {a['restarts']:>8}  {extra}")
        if a.get("needs_input") and not needs_first:
            asked = str(a["needs_input"].get("message") or "").replace("\n", " / ")[:160]
            out(f"{'':<{width}}   needs input: {asked}")
            out(f"{'':<{width}}   answer with: attractor agent answer {a['name']} yes|no|always")
    if data.get("queue_hold"):
        out(f"\nMERGING HELD: {data['queue_hold']['reason']}\n  after deciding, lift it with: "
            "attractor merge-queue resume")
    if data["merge_queue"]:
        out(f"\n{'ENTRY':<14} {'STATE':<11} BRANCH")
        for e in data["merge_queue"]:
            out(f"{str(e.get('id'))[:14]:<14} {e.get('state')!s:<11} {e.get('branch')}")
    return "\n".join(lines) + "\n"


def run_stop(args: argparse.Namespace) -> int:
    from attractor.layers import actions

    done = actions.perform(state_from(args), "stop", by=actions.who("cli"), run_id=args.run_id,
                           tmux_socket=args.tmux_socket, stop_timeout=args.timeout)
    for line in done["lines"]:
        print(line)
    return 0


def run_pause(args: argparse.Namespace) -> int:
    from attractor.layers import actions

    done = actions.perform(state_from(args), args.command, by=args.by or actions.who("cli"), run_id=args.run_id,
                           reason=getattr(args, "reason", "") or "")
    print(done["lines"][0])
    return 0


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0.1 to 3600")
    return value


def add_parser(subparsers: Any) -> None:
    p = subparser(subparsers, "status", "show a run: nodes, agents (with the tmux pane to attach to), the queue",
                  "attractor status --json")
    p.add_argument("--run", help="run id (default: the latest run)")
    add_target_dir_option(p)
    add_state_dir_option(p)
    add_tmux_socket_option(p)
    p.add_argument("--all-agents", action="store_true", help="also list agents of other runs")
    p.add_argument("--no-daemon", action="store_true", help="read the files even when a daemon runs")
    p.add_argument("--watch", action="store_true",
                   help="redraw in place every second, the agents that need you at the top (Ctrl-C leaves)")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS",
                   help="seconds between screens with --watch (default 1)")
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
