"""What an agent CLI's session told us about itself, at `agents/<agent-id>/session.json`.

The directory `agents/<agent-id>/` (mode 0700) also holds the files its adapter writes for it
(Claude Code's settings file, Aider's history files). The session record is written by the
runner when it starts the agent and by the agent's own hooks (`attractor agent-hook …`), and read
by `attractor status`, `attractor agent answer` and the runner.

Fields (schema 1):
    schema            1
    agent_id          `orchestrator-<node>`
    run_id, node      the run and node it works for
    cli               the adapter's name (claude, codex, aider, scripted, custom)
    session_id        the CLI's own session id (the `--session-id` Claude Code was started with,
                      or what its SessionStart hook reported), or ""
    transcript_path   where the CLI records the conversation, or ""
    resumable         a respawn may resume `session_id` (false after a resume failed)
    starts            how many times an agent process was started for this session record
    needs_input       null, or {"message", "since", "kind"}: the agent waits for a human
                      (a permission prompt, a question); cleared when the agent moves on
    idle_since        ISO time the CLI said it waits at its prompt, or null
    stop_blocks       how many times the Stop hook sent the agent back to report
    reported          the agent has reported (done or stuck) in this session
    last_event        the last hook event and when: {"event", "at"}
    end_reason        why the session ended (SessionEnd), or ""
    usage             tokens and cost (`attractor.agents.Usage.to_json()`), or null
    death             null, or {"at", "exit_code", "pane_tail"}: how the last process ended
    updated_at        ISO-8601 UTC

Staleness rule: a record belongs to the incarnation of `run_id`; a new run of the same node name
starts a new record. Nothing in it is trusted for control decisions without the ground truth
(the runner checks the process and git before acting); it explains and reminds.

Writes: read-modify-write under `session.json.lock`, atomic replace without fsync (everything in
it is re-learnt from the next hook event).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor import clock, names
from attractor.errors import CorruptStateError, NotFoundError
from attractor.store import atomic, locks, records
from attractor.store.statedir import StateDir

SCHEMA = 1
FIELDS = ("schema", "agent_id", "run_id", "node", "cli", "session_id", "transcript_path", "resumable",
          "starts", "needs_input", "idle_since", "stop_blocks", "reported", "last_event", "end_reason",
          "usage", "death", "updated_at")
TAIL_LIMIT = 8 * 1024
_TEXT = ("agent_id", "run_id", "node", "cli", "session_id", "transcript_path", "end_reason", "updated_at")
_TYPES: dict[str, tuple[type, ...]] = {
    **{key: (str,) for key in _TEXT}, "resumable": (bool,), "reported": (bool,), "starts": (int,),
    "stop_blocks": (int,), "idle_since": records.OPTIONAL_TEXT,
    **{key: records.OPTIONAL_OBJECT for key in ("needs_input", "last_event", "usage", "death")},
}


@dataclass(frozen=True)
class AgentSession:
    agent_id: str
    run_id: str
    node: str
    cli: str
    session_id: str = ""
    transcript_path: str = ""
    resumable: bool = False
    starts: int = 0
    needs_input: dict[str, Any] | None = None
    idle_since: str | None = None
    stop_blocks: int = 0
    reported: bool = False
    last_event: dict[str, Any] | None = None
    end_reason: str = ""
    usage: dict[str, Any] | None = None
    death: dict[str, Any] | None = None
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schema"] = SCHEMA
        return data

    @classmethod
    def from_json(cls, data: Any) -> AgentSession:
        """Strict: a missing, unknown or mistyped field is a BadInputError naming it."""
        checked = dict(records.fields("agent session", data, FIELDS, SCHEMA, types=_TYPES))
        checked.pop("schema")
        return cls(**checked)


def agent_dir(state: StateDir, agent_id: str) -> Path:
    """The agent's private directory (not created)."""
    return state.root / "agents" / names.validate_agent_id(agent_id)


def ensure_agent_dir(state: StateDir, agent_id: str) -> Path:
    state.ensure()
    atomic.ensure_private_dir(state.root / "agents")
    return atomic.ensure_private_dir(agent_dir(state, agent_id))


def path_for(state: StateDir, agent_id: str) -> Path:
    return agent_dir(state, agent_id) / "session.json"


def _not_found(path: Path) -> NotFoundError:
    return NotFoundError("agent session", path.parent.name, f"no {path}")


_RECORDS = records.Kind("agent session", SCHEMA, AgentSession.from_json, _not_found)


def read(state: StateDir, agent_id: str) -> AgentSession:
    return _RECORDS.get(path_for(state, agent_id))


def find(state: StateDir, agent_id: str) -> AgentSession | None:
    """The session record, or None when there is none (or it was corrupt and moved aside)."""
    try:
        return _RECORDS.find(path_for(state, agent_id))
    except CorruptStateError:
        return None


def start(state: StateDir, agent_id: str, *, run_id: str, node: str, cli: str,
          new_session_id: Callable[[], str]) -> AgentSession:
    """The record for a new agent process of `run_id`: kept (and `starts` counted) when it
    belongs to this run and this CLI, else replaced by a fresh one with `new_session_id()`."""
    ensure_agent_dir(state, agent_id)
    path = path_for(state, agent_id)
    now = clock.iso()
    fresh = AgentSession(agent_id=agent_id, run_id=run_id, node=node, cli=cli, session_id=new_session_id(),
                         starts=1, updated_at=now)
    with atomic.Replacement(path) as replacement, locks.file_lock(path):
        try:
            current: AgentSession | None = _RECORDS.load(path, locked=True)
        except (FileNotFoundError, CorruptStateError):
            current = None
        if current is not None and current.run_id == run_id and current.cli == cli:
            record = dataclasses.replace(current, starts=current.starts + 1, needs_input=None, idle_since=None,
                                         stop_blocks=0, reported=False, end_reason="", updated_at=now)
        else:
            record = fresh
        replacement.commit(atomic.dumps(record.to_json()), fsync=False)
    return record


def modify(state: StateDir, agent_id: str, change: Callable[[AgentSession], AgentSession]) -> AgentSession | None:
    """Read-modify-write the record under its lock; None when there is no record (an agent
    started by hand outside a run). `change` returns the same object to leave it untouched."""
    now = clock.iso()
    before: list[AgentSession] = []

    def stamped(current: AgentSession) -> AgentSession:
        before[:] = [current]
        new = change(current)
        return new if new is current else dataclasses.replace(new, updated_at=now)

    try:
        record = _RECORDS.modify(path_for(state, agent_id), stamped, fsync=lambda old, new: False)
    except NotFoundError:
        return None
    if before and bool(before[0].needs_input) != bool(record.needs_input):
        _log_needs_input(state, record, record.last_event if record.last_event != before[0].last_event else None)
    return record


def _log_needs_input(state: StateDir, record: AgentSession, news: dict[str, Any] | None) -> None:
    """The run's event log says when a node's agent starts and stops waiting for a human, so the
    live views see it at once (the session record is the truth; this is its news)."""
    from attractor.store import checkpoint

    if not record.run_id or not checkpoint.run_dir(state, record.run_id).is_dir():
        return
    if record.needs_input:
        checkpoint.append_event(state, record.run_id, checkpoint.Event.NEEDS_INPUT, node=record.node,
                                agent=record.agent_id, kind=record.needs_input.get("kind"),
                                message=str(record.needs_input.get("message") or "")[:2000])
    else:
        # what ended the wait when this change says (an answer, a hook event), else the dialog went away
        cause = str(news.get("event")) if news else "the dialog closed"
        checkpoint.append_event(state, record.run_id, checkpoint.Event.INPUT_GIVEN, node=record.node,
                                agent=record.agent_id, cause=cause)


def update(state: StateDir, agent_id: str, **fields: Any) -> AgentSession | None:
    unknown = set(fields) - {f.name for f in dataclasses.fields(AgentSession)}
    if unknown:
        raise ValueError(f"unknown agent session field(s): {', '.join(sorted(unknown))}")

    def change(current: AgentSession) -> AgentSession:
        if all(getattr(current, key) == value for key, value in fields.items()):
            return current
        return dataclasses.replace(current, **fields)

    return modify(state, agent_id, change)


def record_event(state: StateDir, agent_id: str, event: str, **fields: Any) -> AgentSession | None:
    """Note a hook event (and any fields it changes) in one write."""
    return update(state, agent_id, last_event={"event": event, "at": clock.iso(), "pid": os.getppid()}, **fields)


def clip_tail(text: str) -> str:
    return text[-TAIL_LIMIT:]
