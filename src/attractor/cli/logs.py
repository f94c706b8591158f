"""`attractor logs [AGENT|NODE]`: one agent's log, or all of a run's logs interleaved by time.

What is read: the files `logs/<agent-id>.log` of the state directory (their format is
`attractor.store.logfiles`'s). The agents of a run (default: the latest) are its guardian, the
runner and orchestrator of each of its agent nodes, and every identity whose `session_id` is the
run. Runner and orchestrator files are named after the node and shared by every run that had
it, so of those only the records from the run's start are the run's (and, for a run that ended
before a later run with the node started, only those before that start).

Selection: no argument is every agent of the run; AGENT (`runner-impl_auth`, `guardian-<run>`)
is that agent of the run, or any agent with a log file (then the whole file); NODE is that
node's runner and orchestrator. Anything else is an error naming the agents with logs and the
run's nodes.

Output: one agent's lines as written; several agents' records interleaved by time, each line
after the agent's name (`runner-a  | 2026-12-01 19:04:23,203 14786 INFO …`), a record's
continuation lines (a traceback, a pane dump) kept with it. `--json` prints one object per record
and line (JSON Lines, so that `--follow` can stream it): time (ISO-8601 UTC), agent, pid, level,
logger, message (continuation lines included, joined by newlines); records found before a file's
first header have null pid, level and logger.

`--follow` wakes on file-system events in `logs/` (with a rescan every RESCAN seconds when there
are none) and picks up the selected agents' files that appear later. Exit codes: 0, 2 for bad
input (an unknown agent, node or run, a bad --since or --lines), 130 when Ctrl-C ends --follow.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from attractor.cli import subparser
from attractor.cli._flags import add_json_option, add_state_dir_option, state_from

if TYPE_CHECKING:
    from attractor.store.checkpoint import Checkpoint
    from attractor.store.logfiles import Record
    from attractor.store.statedir import StateDir

DEFAULT_LINES = 40
RESCAN = 1.0  # seconds between looks at the files when no file-system event wakes --follow
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SINCE_RULE = "give an ISO-8601 time (2026-12-01T19:04:00Z; local time without an offset) or an age (30s, 10m, 2h, 1d)"


@dataclass(frozen=True)
class Source:
    """One agent's log file, and the window of it that belongs to the run (None: no bound)."""

    agent: str
    path: Path
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class Selection:
    sources: tuple[Source, ...]
    single: bool  # one agent named: its lines as written, without its name before each


def parse_since(text: str, now: float) -> float:
    """`--since`: an age (`30s`, `10m`, `2h`, `1d`) before `now`, or an ISO-8601 time."""
    from datetime import datetime

    from attractor.errors import BadInputError

    age = _AGE_RE.fullmatch(text.strip())
    if age:
        return now - float(age.group(1)) * _UNITS[age.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInputError("--since", f"{text!r} is not a time; {SINCE_RULE}") from None
    return when.timestamp()  # naive: local time, like the log lines


def _later_starts(state: StateDir, cp: Checkpoint, nodes: list[str]) -> dict[str, float]:
    """For each of `nodes`, when the first run started after `cp`'s with that node started."""
    from attractor import clock
    from attractor.errors import AttractorError
    from attractor.store import checkpoint as cp_store

    started = clock.parse_iso(cp.started_at)
    later: dict[str, float] = {}
    for run_id in cp_store.list_runs(state):
        if run_id == cp.run_id:
            continue
        try:
            other = cp_store.read_checkpoint(state, run_id)
        except AttractorError as exc:
            print(f"warning: {exc}", file=sys.stderr)
            continue
        at = clock.parse_iso(other.started_at)
        for node in nodes:
            if at > started and node in other.nodes:
                later[node] = min(later.get(node, at), at)
    return later


def run_agents(state: StateDir, cp: Checkpoint) -> tuple[dict[str, Source], list[str]]:
    """The agents of run `cp` with their log files and windows, and its agent nodes."""
    from attractor import clock, names
    from attractor.cli._output import report_problems
    from attractor.errors import CorruptStateError
    from attractor.store import identities

    nodes = [name for name, node in cp.nodes.items() if node.kind == "codergen"]
    started = clock.parse_iso(cp.started_at)
    ended = clock.parse_iso(cp.finished_at) if cp.finished_at else None
    later = _later_starts(state, cp, nodes) if ended is not None else {}
    agents: dict[str, Source] = {}

    def add(agent: str, since: float | None = None, until: float | None = None) -> None:
        agents.setdefault(agent, Source(agent, state.logs / f"{agent}.log", since, until))

    add(names.agent_id("guardian", cp.run_id))
    for node in nodes:
        until = later.get(node)
        if until is not None and ended is not None and ended > until:
            until = None  # resumed after the later run started: no clean end
        for role in ("runner", "orchestrator"):
            add(names.agent_id(role, node), started, until)
    problems: list[CorruptStateError] = []
    for ident in identities.list_identities(state, problems):
        if ident.session_id == cp.run_id:
            add(ident.agent_id)
    report_problems(problems)
    return dict(sorted(agents.items())), nodes


def select(state: StateDir, word: str | None, run_id: str | None) -> Selection:
    from attractor import names
    from attractor.errors import NotFoundError
    from attractor.store import checkpoint as cp_store
    from attractor.store import logfiles

    run_id = run_id or cp_store.latest_run(state)
    agents: dict[str, Source] = {}
    nodes: list[str] = []
    if run_id is not None:
        agents, nodes = run_agents(state, cp_store.read_checkpoint(state, run_id))
    if word is None:
        if run_id is None:
            raise NotFoundError("run", "(any)", f"no run in {state.root}; start one with: attractor run PIPELINE")
        return Selection(tuple(agents.values()), single=False)
    if word in agents:
        return Selection((agents[word],), single=True)
    if word in nodes:
        return Selection(tuple(agents[names.agent_id(role, word)] for role in ("runner", "orchestrator")),
                         single=False)
    files = logfiles.agent_logs(state.logs)
    if word in files:
        return Selection((Source(word, files[word]),), single=True)
    where = f"nodes of run {run_id}: {', '.join(nodes) or '(none)'}" if run_id else f"no run in {state.root}"
    raise NotFoundError("agent or node", word, f"agents with logs: {', '.join(files) or '(none)'}; {where}")


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class Printer:
    def __init__(self, selection: Selection, as_json: bool, out: TextIO) -> None:
        self.single = selection.single
        self.as_json = as_json
        self.out = out
        self.width = max(len(source.agent) for source in selection.sources)

    def write(self, records: list[Record]) -> None:
        for record in records:
            if self.as_json:
                self.out.write(json.dumps(record.to_json()) + "\n")
            elif self.single:
                self.out.writelines(line + "\n" for line in record.lines)
            else:
                name = record.agent.ljust(self.width)
                self.out.writelines(f"{name} | {line}\n" for line in record.lines)
        self.out.flush()


def follow(state: StateDir, selection: Selection, offsets: dict[str, int], since: float | None,
           printer: Printer) -> int:
    """Print what the selected files get, and the selected files that appear, until Ctrl-C."""
    import threading

    from attractor.errors import EXIT_INTERRUPTED
    from attractor.store import logfiles, wakeup

    wake = threading.Event()
    unwatch: Callable[[], None] | None = None
    watching = False
    followers: dict[str, logfiles.Follower] = {}
    try:
        while True:
            if not watching and state.logs.is_dir():
                unwatch, watching = wakeup.watch_directory(state.logs, wake, modified=True), True
            wake.clear()
            for source in selection.sources:
                if source.agent not in followers and (source.agent in offsets or source.path.exists()):
                    followers[source.agent] = logfiles.Follower(
                        source.path, source.agent, offsets.get(source.agent, 0),
                        since=_later(since, source.since), until=source.until)
            now = time.monotonic()
            printer.write(logfiles.merge([f.poll(now) for f in followers.values()]))
            dues = [due - time.monotonic() for f in followers.values() if (due := f.due()) is not None]
            wake.wait(max(0.01, min([RESCAN, *dues])))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        wakeup.unwatch(unwatch)


def run_logs(args: argparse.Namespace) -> int:
    from attractor.errors import BadInputError
    from attractor.store import logfiles

    since = parse_since(args.since, time.time()) if args.since is not None else None
    if args.lines is not None and args.lines < 0:
        raise BadInputError("--lines", f"{args.lines} is negative; give a count of records >= 0")
    last = args.lines if args.lines is not None else (None if since is not None else DEFAULT_LINES)
    state = state_from(args)
    selection = select(state, args.target, args.run)
    streams: list[list[Record]] = []
    offsets: dict[str, int] = {}
    for source in selection.sources:
        try:
            records, offsets[source.agent] = logfiles.read_tail(
                source.path, source.agent, last=last, since=_later(since, source.since), until=source.until,
                partial=not args.follow)
        except FileNotFoundError:
            continue
        streams.append(records)
    merged = logfiles.merge(streams)
    printer = Printer(selection, args.json, sys.stdout)
    printer.write(merged if last is None else merged[-last:] if last else [])
    if not offsets:
        wanted = ", ".join(source.agent for source in selection.sources)
        waiting = "; waiting for one (Ctrl-C ends)" if args.follow else ""
        print(f"no log yet of {wanted} in {state.logs}{waiting}", file=sys.stderr)
    return follow(state, selection, offsets, since, printer) if args.follow else 0


DESCRIPTION = """one agent's log, or all of a run's logs interleaved by time

AGENT is an agent id (runner-impl_auth, guardian-RUN); NODE is a node of the run, meaning its
runner and orchestrator; none is every agent of the run. Several agents' records are printed in
time order with the agent's name before each line; a record's continuation lines (a traceback, a
pane dump) stay with it. --json prints one JSON object per record and line: time (ISO-8601 UTC),
agent, pid, level, logger, message."""


def add_parser(subparsers: Any) -> None:
    p = subparser(subparsers, "logs", "one agent's log, or all of a run's logs interleaved by time",
                  "attractor logs impl_auth --since 10m --follow")
    p.description = DESCRIPTION
    p.add_argument("target", nargs="?", metavar="AGENT|NODE",
                   help="an agent id or a node name (default: every agent of the run)")
    p.add_argument("--run", help="run id (default: the latest run)")
    p.add_argument("--lines", type=int, metavar="N",
                   help=f"the last N records (default {DEFAULT_LINES}; with --since: every record since then)")
    p.add_argument("--since", metavar="T", help="records from T on: an ISO-8601 time (2026-12-01T19:04:00Z; "
                   "local time without an offset) or an age (30s, 10m, 2h, 1d)")
    p.add_argument("--follow", action="store_true",
                   help="go on printing new records, and logs of the selection that appear, until Ctrl-C")
    add_state_dir_option(p)
    add_json_option(p)
    p.set_defaults(func=run_logs)
