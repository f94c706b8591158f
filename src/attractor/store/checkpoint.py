"""Pipeline progress of one run: the checkpoint and the event log.

Files (under the state directory):
    runs/<run-id>/checkpoint.json   rewritten atomically (fsync) after every node change
    runs/<run-id>/events.jsonl      append-only, one JSON object per line: {"at", "event", ...};
                                    a line's number (from 1) is the event's id
    runs/<run-id>/paused.json       present while the run is paused: {"schema", "by", "reason",
                                    "at"}; its existence is the flag (no new agent starts)

checkpoint.json fields: schema (1), run_id, pipeline_name, pipeline_path, target_dir,
target_branch, agent, agent_cmd, max_agents, status (running | succeeded | failed | stopped),
reason, started_at, updated_at, finished_at, guardian_starts, pipeline_source (the user's file,
or null), nodes: {name: {name, kind, state, attempts, outcome, reason, branch, merged_sha,
started_at, finished_at}}.

Reading is strict, like every record: a file that does not parse, has another schema, misses a
field or has one of the wrong type is corrupt (CorruptStateError naming the field) and is moved
aside under its lock (`checkpoint.json.lock`, which every write holds too), so a good version
written meanwhile is never the one moved. The guardian rewrites it on its next node change.

Staleness: a checkpoint with status `running` whose guardian identity is dead is a run to resume
(`attractor run --resume RUN_ID`); merged nodes are never redone. A truncated last line of
events.jsonl (a writer killed mid-append) is skipped by readers.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attractor import clock
from attractor.errors import BadInputError, NotFoundError, no_space
from attractor.names import validate_name
from attractor.states import NODE_MOVES, NodeState, RunStatus, transition
from attractor.store import locks, records
from attractor.store.atomic import ensure_private_dir, write_json_atomic
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

SCHEMA = 1
FINISHED_NODE_STATES = frozenset({NodeState.MERGED, NodeState.DONE, NodeState.FAILED, NodeState.BLOCKED,
                                  NodeState.SKIPPED})


@dataclass(frozen=True)
class NodeProgress:
    name: str
    kind: str
    state: NodeState = NodeState.PENDING
    attempts: int = 0
    outcome: str | None = None
    reason: str = ""
    branch: str | None = None
    merged_sha: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_NODE_STATES

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: Any) -> NodeProgress:
        """Strict: every field present, none unknown, each of its type (BadInputError names it)."""
        what = f"checkpoint node {data.get('name', '?') if isinstance(data, dict) else '?'!r}"
        data = records.fields(what, data, _NODE_FIELDS, None, types=_NODE_TYPES)
        return cls(**{**data, "state": NodeState.from_text(data["state"])})


@dataclass(frozen=True)
class Checkpoint:
    run_id: str
    pipeline_name: str
    pipeline_path: str
    target_dir: str
    target_branch: str
    agent: str
    agent_cmd: str | None
    max_agents: int
    nodes: dict[str, NodeProgress] = field(default_factory=dict)
    status: RunStatus = RunStatus.RUNNING
    reason: str = ""
    started_at: str = field(default_factory=clock.iso)
    updated_at: str = field(default_factory=clock.iso)
    finished_at: str | None = None
    guardian_starts: int = 0
    schema: int = SCHEMA
    # the file the user gave (absolute), which the daemon watches for edits; None before
    # checkpoints recorded it
    pipeline_source: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["nodes"] = {name: node.to_json() for name, node in self.nodes.items()}
        return data

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """Strict: every field present, none unknown, each of its type (BadInputError names it)."""
        what = "checkpoint"
        data = records.fields(what, data, _CP_FIELDS, SCHEMA, types=_CP_TYPES, older={"pipeline_source": None})
        validate_name(data["run_id"], "run id")
        if data["status"] not in tuple(RunStatus):
            raise BadInputError(what, f"status {data['status']!r} is not one of {', '.join(RunStatus)}")
        if not isinstance(data["nodes"], dict):
            raise BadInputError(what, "field 'nodes' must be an object of node records")
        nodes = {}
        for name, node in data["nodes"].items():
            nodes[name] = NodeProgress.from_json(node)
            if nodes[name].name != name:
                raise BadInputError(what, f"node {name!r} is recorded as {nodes[name].name!r}")
        return cls(**{**data, "nodes": nodes, "status": RunStatus(data["status"])})

    def node(self, name: str) -> NodeProgress:
        return self.nodes[name]

    def with_node(self, name: str, **changes: Any) -> Checkpoint:
        current = self.nodes[name]
        target = changes.get("state")
        if isinstance(target, NodeState) and target is not current.state:
            transition(f"node {name}", current.state, target, NODE_MOVES)
        nodes = dict(self.nodes)
        nodes[name] = dataclasses.replace(current, **changes)
        return dataclasses.replace(self, nodes=nodes, updated_at=clock.iso())

    def with_nodes(self, added: list[NodeProgress], dropped: list[str]) -> Checkpoint:
        """A pipeline reload: `added` nodes join as they are, `dropped` pending ones leave."""
        for name in dropped:
            if self.nodes[name].state is not NodeState.PENDING:
                raise BadInputError(f"node {name}", f"is {self.nodes[name].state.value}; only a pending node can go")
        nodes = {n: p for n, p in self.nodes.items() if n not in dropped}
        for progress in added:
            if progress.name in nodes:
                raise BadInputError(f"node {progress.name}", "is in the run already")
            nodes[progress.name] = progress
        return dataclasses.replace(self, nodes=nodes, updated_at=clock.iso())

    def with_status(self, status: RunStatus, reason: str = "") -> Checkpoint:
        finished = None if status is RunStatus.RUNNING else clock.iso()
        return dataclasses.replace(self, status=status, reason=reason, finished_at=finished, updated_at=clock.iso())

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for node in self.nodes.values():
            result[node.state.value] = result.get(node.state.value, 0) + 1
        return result


_OPT_STR = records.OPTIONAL_TEXT
_NODE_FIELDS = tuple(f.name for f in dataclasses.fields(NodeProgress))
_NODE_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "kind": (str,), "state": (str,), "attempts": (int,), "outcome": _OPT_STR, "reason": (str,),
    "branch": _OPT_STR, "merged_sha": _OPT_STR, "started_at": _OPT_STR, "finished_at": _OPT_STR,
}
_CP_FIELDS = tuple(f.name for f in dataclasses.fields(Checkpoint))
_CP_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "pipeline_name": (str,), "pipeline_path": (str,), "target_dir": (str,),
    "target_branch": (str,), "agent": (str,), "agent_cmd": _OPT_STR, "max_agents": (int,),
    "status": (str,), "reason": (str,), "started_at": (str,), "updated_at": (str,),
    "finished_at": _OPT_STR, "guardian_starts": (int,), "schema": (int,), "pipeline_source": _OPT_STR,
}


def run_dir(state: StateDir, run_id: str) -> Path:
    return state.runs / validate_name(run_id, "run id")


def checkpoint_path(state: StateDir, run_id: str) -> Path:
    return run_dir(state, run_id) / "checkpoint.json"


def write_checkpoint(state: StateDir, cp: Checkpoint) -> None:
    directory = run_dir(state, cp.run_id)
    state.ensure("runs")
    ensure_private_dir(directory)
    path = directory / "checkpoint.json"
    with locks.file_lock(path):
        write_json_atomic(path, cp.to_json())


_RECORDS = records.Kind("checkpoint", SCHEMA, Checkpoint.from_json,
                        lambda path: NotFoundError("run", path.parent.name, "list runs with: attractor status"))


def read_checkpoint(state: StateDir, run_id: str) -> Checkpoint:
    """The run's checkpoint, read strictly. A corrupt one is read again under its lock and, if
    still corrupt, moved aside there and raised as CorruptStateError."""
    return _RECORDS.get(checkpoint_path(state, run_id))


def list_runs(state: StateDir) -> list[str]:
    """Run ids, oldest first (by checkpoint modification time)."""
    if not state.runs.is_dir():
        return []
    found = [p for p in state.runs.iterdir() if (p / "checkpoint.json").is_file()]
    found.sort(key=lambda p: (p / "checkpoint.json").stat().st_mtime)
    return [p.name for p in found]


def latest_run(state: StateDir) -> str | None:
    runs = list_runs(state)
    return runs[-1] if runs else None


class Event(enum.StrEnum):
    """The events of `events.jsonl`: each line is `{"at", "event", …}` with the fields that
    EVENT_FIELDS lists for its event (any of them may be left out)."""

    LAUNCHED = "launched"                  # a launch or resume started the run's guardian
    LAUNCH_FAILED = "launch_failed"        # ... and it did not start
    GUARDIAN_STARTED = "guardian_started"  # the guardian took the run (again, after a restart)
    RUN_FINISHED = "run_finished"
    RUN_STOPPED = "run_stopped"            # by `attractor stop`
    RUN_PAUSED = "run_paused"              # by `attractor pause`: no new agent starts
    RUN_UNPAUSED = "run_unpaused"
    PIPELINE_RELOADED = "pipeline_reloaded"  # an edit of the pipeline file, applied to the live run
    PIPELINE_RELOAD_FAILED = "pipeline_reload_failed"  # ... refused: nothing changed
    ROLE_CHANGED = "role_changed"          # a role definition was edited: the next agent uses it
    ALERT = "alert"                        # something did not hold against the ground truth
    ACTION = "action"                      # a person acted on the run (`layers/actions.py`): who, what
    NEEDS_INPUT = "needs_input"            # a node's agent waits for a human (a dialog, a question)
    INPUT_GIVEN = "input_given"            # ... and no longer does
    VALIDATION = "validation"              # one validator's verdict on a node's commit
    RUNNER_DIED = "runner_died"
    RUNNER_RESPAWN = "runner_respawn"
    # a node's record changed: the node and the fields that changed
    NODE = "node"
    RUNNER_SPAWNED = "runner_spawned"
    VALIDATING = "validating"
    VALIDATION_FAILED = "validation_failed"
    VALIDATOR = "validator"                # a validator node decided with the node it validates
    MERGING = "merging"
    MERGE_FAILED = "merge_failed"
    MERGE_ERROR = "merge_error"
    MERGED = "merged"
    FAILED = "failed"
    BLOCKED = "blocked"
    DONE = "done"
    SKIPPED = "skipped"


NODE_EVENTS = frozenset({Event.NODE, Event.RUNNER_SPAWNED, Event.VALIDATING, Event.VALIDATION_FAILED, Event.VALIDATOR,
                         Event.MERGING, Event.MERGE_FAILED, Event.MERGE_ERROR, Event.MERGED, Event.FAILED,
                         Event.BLOCKED, Event.DONE, Event.SKIPPED})
EVENT_FIELDS: dict[Event, frozenset[str]] = {
    Event.LAUNCHED: frozenset({"resume", "pid", "target_tip"}),
    Event.LAUNCH_FAILED: frozenset({"reason"}),
    Event.GUARDIAN_STARTED: frozenset({"pid", "start"}),
    Event.RUN_FINISHED: frozenset({"status", "reason"}),
    Event.RUN_STOPPED: frozenset(),
    Event.RUN_PAUSED: frozenset({"by", "reason"}),
    Event.RUN_UNPAUSED: frozenset({"by"}),
    Event.PIPELINE_RELOADED: frozenset({"added", "dropped", "changed", "kept", "edges_changed", "by", "source"}),
    Event.PIPELINE_RELOAD_FAILED: frozenset({"problems", "by", "source", "sha256"}),
    Event.ROLE_CHANGED: frozenset({"role", "path", "ok", "problem"}),
    Event.ALERT: frozenset({"alert", "reason", "node", "kind", "sender", "expected", "found"}),
    Event.ACTION: frozenset({"action", "by", "ok", "detail", "node", "reply", "chosen", "text", "agent",
                             "escalation"}),
    Event.NEEDS_INPUT: frozenset({"node", "agent", "kind", "message"}),
    Event.INPUT_GIVEN: frozenset({"node", "agent", "cause"}),  # cause: the hook event (`event` is the kind)
    Event.VALIDATION: frozenset({"node", "tool", "ok"}),
    Event.RUNNER_DIED: frozenset({"node", "reason"}),
    Event.RUNNER_RESPAWN: frozenset({"node", "restart"}),
    **{event: frozenset({"node", *_NODE_FIELDS}) - {"name"} for event in NODE_EVENTS},
}


def append_event(state: StateDir, run_id: str, event: Event, /, **fields: Any) -> None:
    """Append one line to events.jsonl with a single write (O_APPEND). A field EVENT_FIELDS
    does not list for the event is written all the same (an event is never lost) and logged."""
    event = Event(event)
    if "at" in fields or "event" in fields:
        raise ValueError(f"event {event}: 'at' and 'event' are the line's own fields, not fields of the event")
    unlisted = sorted(set(fields) - EVENT_FIELDS[event])
    if unlisted:
        logger.warning("event %s of run %s has field(s) not listed in EVENT_FIELDS: %s", event, run_id,
                       ", ".join(unlisted))
    directory = run_dir(state, run_id)
    ensure_private_dir(directory)
    line = json.dumps({"at": clock.iso(), "event": event, **fields}, sort_keys=True) + "\n"
    path = directory / "events.jsonl"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            data = line.encode()
            while data:  # a short write (a nearly full disk) must not glue the next event on
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
    except OSError as exc:
        full = no_space(exc, path)
        if full is not None:
            raise full from None
        raise


def read_events(state: StateDir, run_id: str) -> list[dict[str, Any]]:
    path = run_dir(state, run_id) / "events.jsonl"
    events: list[dict[str, Any]] = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return events
    for number, line in enumerate(lines, start=1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: unreadable event line skipped", path, number)
            continue
        if isinstance(item, dict):
            events.append(item)
    return events


class EventTail:
    """The complete lines added to a run's events.jsonl since the last call, with their ids
    (line numbers from 1). `after` skips the events a reader has seen already, so one that
    comes back with the last id it got misses none and sees none twice. A line still being
    written (no newline yet) waits for the next call; an unreadable one keeps its number."""

    def __init__(self, path: Path, after: int = 0) -> None:
        self.path = path
        self.after = after
        self.offset = 0
        self.count = 0

    def new_numbered(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        found = []
        for line in data[: end + 1].splitlines():
            self.count += 1
            if self.count <= self.after:
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                found.append((self.count, item))
        return found

    def new_events(self) -> list[dict[str, Any]]:
        return [item for _, item in self.new_numbered()]


# -- pausing --------------------------------------------------------------------------------------


def pause_path(state: StateDir, run_id: str) -> Path:
    return run_dir(state, run_id) / "paused.json"


def pause_run(state: StateDir, run_id: str, by: str, reason: str = "") -> bool:
    """Pause a running run: no new agent starts (running ones go on). False if it already was."""
    cp = read_checkpoint(state, run_id)
    if cp.status != RunStatus.RUNNING:
        raise BadInputError(f"run {run_id}", f"is {cp.status}; only a running run can be paused")
    path = pause_path(state, run_id)
    if path.exists():
        return False
    write_json_atomic(path, {"schema": SCHEMA, "by": by, "reason": reason, "at": clock.iso()})
    append_event(state, run_id, Event.RUN_PAUSED, by=by, reason=reason)
    return True


def unpause_run(state: StateDir, run_id: str, by: str) -> bool:
    """Let the run start agents again. False if it was not paused."""
    read_checkpoint(state, run_id)
    try:
        pause_path(state, run_id).unlink()
    except FileNotFoundError:
        return False
    append_event(state, run_id, Event.RUN_UNPAUSED, by=by)
    return True


def paused(state: StateDir, run_id: str) -> dict[str, Any] | None:
    """Who paused the run, why and when; None when it is not paused. A pause file that does not
    read keeps the run paused (the flag is the file) and says so."""
    path = pause_path(state, run_id)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"by": "?", "reason": f"unreadable {path.name}: {exc}; remove it to unpause", "at": None}
    return data if isinstance(data, dict) else {"by": "?", "reason": f"{path.name} is not an object", "at": None}
