"""Identity registry: one record per agent, at `identities/<role>-<name>.json` in the state dir.

Fields (schema 1):
    schema          1
    role, name      the agent's role (names.ROLES) and name; `agent_id` is `<role>-<name>`
    epoch           spawn epoch: 1 for the first incarnation, +1 for each re-create or respawn.
                    Signals carry the epoch they were addressed to; older ones are stale.
    status          states.IdentityStatus; changed only through `set_status` (checked moves)
    pid             the process holding the identity, or null
    pid_start       that process's start time (procs.start_time: clock ticks since boot), taken
                    when the pid was recorded; null when unknown. A record written before this
                    field existed reads as null. The pid is acted on (signalled, or taken as the
                    live holder) only while pid and start time both match (procs.same_process):
                    a reused pid is an unrelated process. An unknown start time is never a
                    match: such a record's pid is reported, never signalled.
    tmux_socket, tmux_session, pane_id   where the agent runs (null when not in tmux)
    worktree        the agent's git worktree (absolute path) or null
    session_id      the agent CLI's own session id (for `--resume`), or null
    created_at      ISO-8601 UTC time this incarnation was created
    last_heartbeat  ISO-8601 UTC time of the last `update_liveness`
    crash_count     how many times the agent was marked crashed, across incarnations
    history         [{at, from, to, reason}] every status change, oldest first (capped)

Staleness rule: a record in spawning, active or stale whose `last_heartbeat` is older than the
caller's timeout is stale (`find_stale`); terminated and quarantined records never are, and
crashed/respawning records belong to the supervisor already. A record in spawning, active or
stale whose process is alive (same pid and start time) holds its identity: `create_identity`
refuses to take it over.

Heartbeat intervals: how often each role stamps `last_heartbeat` is written down here once
(`HEARTBEAT_INTERVALS`), and the writers beat by these values: the launcher, guardian and runner
every 5 s on a timer; an agent (orchestrator) from its CLI's hooks or its own steps, with no
timer, and is asked in its prompt to beat every few minutes: 300 s. merge-queue and user have no
heartbeat (no process of theirs registers), so their records are never judged by age.

Registry view (`judge`, `registry_view`): what a listing of live services shows for a record,
judged at read time from the record and the clock, never written, so it holds whether or not a
supervisor runs. Only a record whose stored status says its process should be beating
(spawning, active, stale: `BEATING_STATUSES`) can be judged; crashed and respawning ones are
already known not to run (the supervisor has them), terminated and quarantined ones are ended on
purpose, and all of these are shown as stored. Such a record is `down` once its heartbeat is more
than `DOWN_AFTER_INTERVALS` (2) of its role's intervals old, or at once when its recorded process
is gone (a pid recorded and not alive with its start time, `process_gone`), and `evicted` once
the heartbeat is more than `EVICTED_AFTER_INTERVALS` (3) intervals old: left out of default
listings, kept on disk for the audit trail. `find_stale` keeps its own caller-given timeout.

Epochs: `create_identity` starts a new incarnation (epoch + 1), except over a record in
`respawning`, whose epoch `mark_respawning` already advanced; so a respawn costs exactly one
epoch whether the new process registers itself with `create_identity` or just heartbeats.

Writes: every read-modify-write holds `<file>.lock` and re-reads after locking; records are
replaced atomically with fsync, except plain heartbeats (cheap to recreate, written often).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from attractor import clock, names, procs
from attractor.errors import (
    BadInputError,
    CorruptStateError,
    IdentityTakenError,
    NotFoundError,
    UnknownValueError,
)
from attractor.states import IDENTITY_MOVES, IdentityStatus, transition
from attractor.store import atomic, formats, locks, records
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

SCHEMA = formats.SCHEMA
HISTORY_LIMIT = formats.HISTORY_LIMIT
S = IdentityStatus
# Statuses in which a record is claimed by a (possibly) running process.
LIVE_STATUSES = frozenset({S.SPAWNING, S.ACTIVE, S.STALE})
# Statuses `find_stale` looks at.
WATCHED_STATUSES = LIVE_STATUSES
# Statuses whose process should be beating: only these can be shown down or evicted.
BEATING_STATUSES = LIVE_STATUSES
UPDATABLE_FIELDS = ("pid", "pane_id", "tmux_session", "tmux_socket", "worktree", "session_id")

# How often each role stamps `last_heartbeat`, in seconds. The writers beat by these and the
# registry view measures ages in them. The control layers beat on a timer: the launcher from
# its follow loop, the guardian from a heartbeat thread, the runner from its loop (and a thread
# while it sets up).
LAUNCHER_HEARTBEAT_INTERVAL = 5.0
GUARDIAN_HEARTBEAT_INTERVAL = 5.0
RUNNER_HEARTBEAT_INTERVAL = 5.0
# An agent beats from its CLI's hooks (session start, each prompt and tool use) or its own steps
# (scripted), with no timer, and its prompt asks it to beat every few minutes. Two intervals are
# ten minutes: the supervisor's `hung_after` for an agent whose pane is quiet.
ORCHESTRATOR_HEARTBEAT_INTERVAL = 300.0
# The supervisor measures a control process's staleness in its role's interval
# (`supervision.PolicyConfig.heartbeat_for`), and in this one, the slowest control layer's, for
# a role it does not know.
CONTROL_HEARTBEAT_INTERVAL = max(LAUNCHER_HEARTBEAT_INTERVAL, GUARDIAN_HEARTBEAT_INTERVAL,
                                 RUNNER_HEARTBEAT_INTERVAL)
# Per role (every role of names.ROLES); None: the role has no heartbeat, never down by age.
HEARTBEAT_INTERVALS: Mapping[str, float | None] = MappingProxyType({
    "launcher": LAUNCHER_HEARTBEAT_INTERVAL,
    "guardian": GUARDIAN_HEARTBEAT_INTERVAL,
    "runner": RUNNER_HEARTBEAT_INTERVAL,
    "orchestrator": ORCHESTRATOR_HEARTBEAT_INTERVAL,
    "merge-queue": None,
    "user": None,
})
DOWN_AFTER_INTERVALS = 2
EVICTED_AFTER_INTERVALS = 3

_TMUX_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_PANE_ID_RE = re.compile(r"%[0-9]{1,9}")
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


# --------------------------------------------------------------------------- field checks


# Kept for callers that only report whether some process has the pid; anything that acts on a
# recorded process uses `Identity.process_alive` / `procs.same_process` instead.


def _check_pid(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadInputError("pid", f"{value!r} is not a positive process id")
    return value


def _check_pid_start(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInputError("pid_start", f"{value!r} is not a process start time (clock ticks >= 0)")
    return value


def _check_pattern(kind: str, value: Any, pattern: re.Pattern[str], rule: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadInputError(kind, f"{value!r} is not valid; {rule}")
    return value


def _check_worktree(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value):
        raise BadInputError("worktree", f"{value!r} is not a usable path (empty, or control chars)")
    return value


_TMUX_RULE = "use letters, digits, _ . - (no spaces, ; # { or quotes)"
_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "pid": _check_pid,
    "pid_start": _check_pid_start,
    "pane_id": lambda v: _check_pattern("pane id", v, _PANE_ID_RE, "expected a pane id like %12"),
    "tmux_session": lambda v: _check_pattern("tmux session", v, _TMUX_NAME_RE, _TMUX_RULE),
    "tmux_socket": lambda v: _check_pattern("tmux socket", v, _TMUX_NAME_RE, _TMUX_RULE),
    "worktree": _check_worktree,
    "session_id": lambda v: _check_pattern(
        "session id", v, _SESSION_ID_RE, "use letters, digits, _ . : - (no spaces or quotes)"
    ),
}


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Identity:
    schema: int
    role: str
    name: str
    agent_id: str
    epoch: int
    status: IdentityStatus
    pid: int | None
    pid_start: int | None
    tmux_socket: str | None
    tmux_session: str | None
    pane_id: str | None
    worktree: str | None
    session_id: str | None
    created_at: str
    last_heartbeat: str
    crash_count: int
    history: tuple[dict[str, Any], ...]

    def heartbeat_age(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat (negative if the stamp is in the future)."""
        return (time.time() if now is None else now) - clock.parse_iso(self.last_heartbeat)

    @property
    def process_alive(self) -> bool:
        """The recorded process is alive: its pid exists with the recorded start time. False
        for an unknown start time (the pid may have been reused)."""
        return procs.same_process(self.pid, self.pid_start)

    @property
    def may_be_alive(self) -> bool:
        """The recorded process is alive, or might be: with an unknown start time (a record
        written before start times were recorded) a live pid is taken for the holder. For
        decisions that hold back (refusing to take over an identity); never to signal."""
        if self.pid_start is None:
            return procs.pid_alive(self.pid)
        return self.process_alive

    @property
    def holds_live_pid(self) -> bool:
        return self.status in LIVE_STATUSES and self.may_be_alive

    def to_json(self) -> dict[str, Any]:
        data = {f: getattr(self, f) for f in _FIELD_NAMES}  # asdict deep-copies: 10x slower
        data["status"] = self.status.value
        data["history"] = [dict(entry) for entry in self.history]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Identity:
        """Strict: a missing, unknown or mistyped field is a BadInputError naming it."""
        what = "identity record"
        # pid_start: null in records written before start times were recorded
        data = records.fields(what, data, _FIELD_NAMES, SCHEMA, older={"pid_start": None})
        for key in ("epoch", "crash_count"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadInputError(what, f"field {key!r} must be an integer >= 0, not {value!r}")
        for key in ("created_at", "last_heartbeat"):
            if not isinstance(data[key], str):
                raise BadInputError(what, f"field {key!r} must be an ISO-8601 string")
            try:
                clock.parse_iso(data[key])
            except ValueError:
                raise BadInputError(what, f"field {key!r} is not ISO-8601: {data[key]!r}") from None
        history = data["history"]
        if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
            raise BadInputError(what, "field 'history' must be a list of objects")
        role = names.validate_role(data["role"])
        name = names.validate_name(data["name"])
        if data["agent_id"] != f"{role}-{name}":
            raise BadInputError(what, f"agent_id {data['agent_id']!r} does not match {role}-{name}")
        fields = {key: check(data[key]) for key, check in _FIELD_CHECKS.items()}
        return cls(
            schema=SCHEMA,
            role=role,
            name=name,
            agent_id=data["agent_id"],
            epoch=data["epoch"],
            status=IdentityStatus.from_text(data["status"]),
            created_at=data["created_at"],
            last_heartbeat=data["last_heartbeat"],
            crash_count=data["crash_count"],
            history=tuple(history),
            **fields,
        )


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Identity))


# --------------------------------------------------------------------------- reading


def path_for(state: StateDir, role: str, name: str) -> Path:
    """The record's path; validates role and name first, so nothing odd ever reaches a path."""
    return state.identities / f"{names.agent_id(role, name)}.json"


def _not_found(path: Path) -> NotFoundError:
    role, name = names.split_agent_id(path.stem)
    return NotFoundError(
        "identity", path.stem, f"register it with `attractor identity create {role} {name}`"
    )


_RECORDS = records.Kind("identity record", SCHEMA, Identity.from_json, _not_found,
                        stem=lambda record: record.agent_id)


def get(state: StateDir, role: str, name: str) -> Identity:
    """The record of `<role>-<name>`; NotFoundError when there is none, CorruptStateError
    (moved aside) when it is corrupt."""
    return _RECORDS.get(path_for(state, role, name))


def find(state: StateDir, role: str, name: str) -> Identity | None:
    """The record of `<role>-<name>`, or None when there is none (a corrupt one still raises
    CorruptStateError, after moving it aside)."""
    return _RECORDS.find(path_for(state, role, name))


def find_live(state: StateDir, role: str) -> Identity | None:
    """The first record of `role` (by agent id) whose status is not terminated and whose
    process may be alive (`Identity.may_be_alive`): its recorded pid and start time are a live
    process. A pid reused by another process is not the holder; a record without a start time
    whose pid is alive is taken for one (it can be stopped)."""
    for record in list_identities(state):
        if record.role == role and record.status is not S.TERMINATED and record.may_be_alive:
            return record
    return None


def current_epoch(state: StateDir, agent_id: str) -> int | None:
    """The epoch of `agent_id`'s record, or None if it has none. One read, no lock: records are
    replaced atomically, so a reader sees one whole version."""
    names.validate_agent_id(agent_id)
    path = state.identities / f"{agent_id}.json"
    try:
        data = atomic.read_json_object(path, schema=SCHEMA, move_corrupt=False)
    except FileNotFoundError:
        return None
    except CorruptStateError:
        return _RECORDS.load(path).epoch  # moves it aside and raises, unless repaired
    epoch = data.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        return _RECORDS.load(path).epoch
    return epoch


def list_identities(
    state: StateDir, problems: list[CorruptStateError] | None = None
) -> list[Identity]:
    """Every readable record, sorted by agent id. Corrupt files are moved aside, logged and
    appended to `problems`; they never raise."""
    return _RECORDS.list(state.identities, problems)


def find_stale(
    state: StateDir,
    timeout: float,
    now: float | None = None,
    problems: list[CorruptStateError] | None = None,
) -> list[Identity]:
    """Records in spawning/active/stale whose heartbeat is older than `timeout` seconds."""
    if timeout < 0:
        raise BadInputError("timeout", f"{timeout:g} is negative; give seconds >= 0")
    moment = time.time() if now is None else now
    return [
        record
        for record in list_identities(state, problems)
        if record.status in WATCHED_STATUSES and record.heartbeat_age(moment) > timeout
    ]


# --------------------------------------------------------------------------- registry view


class ShownStatus(enum.Enum):
    """What the registry view shows for a record: its stored status, or DOWN / EVICTED judged
    at read time (never stored)."""

    SPAWNING = "spawning"
    ACTIVE = "active"
    STALE = "stale"
    CRASHED = "crashed"
    RESPAWNING = "respawning"
    TERMINATED = "terminated"
    QUARANTINED = "quarantined"
    DOWN = "down"
    EVICTED = "evicted"

    @classmethod
    def from_text(cls, value: str) -> ShownStatus:
        try:
            return cls(value)
        except ValueError:
            raise UnknownValueError("status", value, [m.value for m in cls]) from None

    @classmethod
    def stored(cls, status: IdentityStatus) -> ShownStatus:
        return cls(status.value)


@dataclass(frozen=True)
class RegistryEntry:
    """A record as the registry view shows it at one moment."""

    record: Identity
    status: ShownStatus
    reason: str  # why it is down or evicted; "" when shown as stored
    heartbeat_age: float  # seconds, at the moment it was judged
    interval: float | None  # its role's heartbeat interval; None: the role has none

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "agent_id": record.agent_id, "role": record.role, "name": record.name,
            "status": self.status.value, "stored_status": record.status.value,
            "status_reason": self.reason, "epoch": record.epoch, "pid": record.pid,
            "last_heartbeat": record.last_heartbeat, "heartbeat_age": round(self.heartbeat_age, 3),
            "heartbeat_interval": self.interval,
        }


def process_gone(record: Identity) -> bool:
    """The record names a process and it is certainly not running: the pid is not alive with
    its recorded start time (a reused pid is gone too). With no start time a live pid is taken
    for the process (`Identity.may_be_alive`); with no pid nothing is known."""
    return record.pid is not None and not record.may_be_alive


def judge(record: Identity, now: float, *, gone: bool = False) -> RegistryEntry:
    """How the registry view shows `record` at `now` (POSIX seconds); `gone`: its process is
    known to be gone (`process_gone`, which the caller checks: this function reads nothing).
    The rules are the module docstring's "Registry view"."""
    interval = HEARTBEAT_INTERVALS.get(record.role)
    age = record.heartbeat_age(now)
    shown = ShownStatus.stored(record.status)
    if record.status not in BEATING_STATUSES:
        return RegistryEntry(record, shown, "", age, interval)
    reasons = []
    if interval is not None and age > DOWN_AFTER_INTERVALS * interval:
        evicted = age > EVICTED_AFTER_INTERVALS * interval
        limit = EVICTED_AFTER_INTERVALS if evicted else DOWN_AFTER_INTERVALS
        shown = ShownStatus.EVICTED if evicted else ShownStatus.DOWN
        reasons.append(f"no heartbeat for {age:.1f}s (more than {limit} x {interval:g}s)")
    if gone:
        reasons.append(f"pid {record.pid} is gone")
        if shown is not ShownStatus.EVICTED:
            shown = ShownStatus.DOWN
    return RegistryEntry(record, shown, "; ".join(reasons), age, interval)


def registry_view(
    state: StateDir, now: float | None = None, problems: list[CorruptStateError] | None = None
) -> list[RegistryEntry]:
    """Every readable record as the registry view shows it at `now` (default: the clock), by
    agent id; evicted ones included (a listing leaves them out). Checks the processes of the
    records in a beating status; writes nothing but what `list_identities` moves aside."""
    moment = time.time() if now is None else now
    return [
        judge(record, moment, gone=record.status in BEATING_STATUSES and process_gone(record))
        for record in list_identities(state, problems)
    ]


# --------------------------------------------------------------------------- writing


def _history(record: Identity, entry: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (*record.history, entry)[-HISTORY_LIMIT:]


def _modify(
    state: StateDir,
    role: str,
    name: str,
    change: Callable[[Identity, str], Identity],
    *,
    fsync: Callable[[Identity, Identity], bool] = lambda old, new: True,
) -> Identity:
    """Read-modify-write one existing record under its lock. `change(current, now_iso)` returns
    the new record (the same object to leave the file untouched)."""
    return _RECORDS.modify(path_for(state, role, name), lambda current: change(current, clock.iso()),
                           fsync=fsync, prepare=lambda: state.ensure("identities"))


def create_identity(
    state: StateDir,
    role: str,
    name: str,
    *,
    session_id: str | None = None,
    worktree: str | None = None,
    pid: int | None = None,
    tmux_socket: str | None = None,
    tmux_session: str | None = None,
    pane_id: str | None = None,
    replace_dead: bool = True,
) -> Identity:
    """Register a new incarnation of `<role>-<name>` in status spawning.

    Refuses (IdentityTakenError) if the current record is spawning/active/stale and its process
    is alive (`Identity.may_be_alive`; unless that pid is the caller's own or the one being
    registered). `pid` is recorded with its current start time (`pid_start`). With
    `replace_dead=False` such a record is refused even when its holder is dead."""
    path = path_for(state, role, name)
    agent = path.stem
    fields = {
        "session_id": session_id, "worktree": worktree, "pid": pid,
        "tmux_socket": tmux_socket, "tmux_session": tmux_session, "pane_id": pane_id,
    }
    checked = {key: _FIELD_CHECKS[key](value) for key, value in fields.items()}
    checked["pid_start"] = procs.start_time(checked["pid"])
    state.ensure("identities")
    with locks.file_lock(path):
        note = ""
        old: Identity | None
        try:
            old = _RECORDS.load(path, locked=True)
        except FileNotFoundError:
            old = None
        except CorruptStateError as exc:
            old = None
            note = f"; previous record was corrupt, moved aside to {exc.moved_to}"
        if old is not None and old.status in LIVE_STATUSES:
            ours = old.pid is not None and old.pid in (os.getpid(), pid)
            if not ours and old.may_be_alive:
                raise IdentityTakenError(
                    agent, old.pid, f"status {old.status.value}, epoch {old.epoch}"
                )
            if not replace_dead:
                raise IdentityTakenError(
                    agent, old.pid,
                    f"status {old.status.value}, epoch {old.epoch}; holder is gone, "
                    "allow replacing dead holders to take it over",
                )
        now = clock.iso()
        history: tuple[dict[str, Any], ...] = ()
        if old is None:
            epoch, crashes = 1, 0
            reason = f"created epoch 1{note}"
        else:
            epoch = old.epoch if old.status is S.RESPAWNING else old.epoch + 1
            crashes, history = old.crash_count, old.history
            holder = f" (pid {old.pid} gone)" if old.status in LIVE_STATUSES and old.pid else ""
            reason = f"re-created as epoch {epoch}{holder}"
        record = Identity(
            schema=SCHEMA, role=role, name=name, agent_id=agent, epoch=epoch,
            status=S.SPAWNING, created_at=now, last_heartbeat=now, crash_count=crashes,
            history=(*history, {
                "at": now, "from": old.status.value if old else None, "to": S.SPAWNING.value,
                "reason": reason,
            })[-HISTORY_LIMIT:],
            **checked,
        )
        atomic.write_json_atomic(path, record.to_json())
    logger.info("identity %s: %s", agent, reason, extra={"att_agent": agent})
    return record


def update_liveness(state: StateDir, role: str, name: str, *, pid: int | None = None) -> Identity:
    """Heartbeat: stamp `last_heartbeat` (and `pid` if given); spawning, stale and respawning
    records become active through the checked transition. Not fsynced unless the status moves."""
    new_pid = _check_pid(pid)

    def change(current: Identity, now: str) -> Identity:
        status, history = current.status, current.history
        if status is not S.ACTIVE:
            what = f"identity {current.agent_id}"
            status = transition(what, current.status, S.ACTIVE, IDENTITY_MOVES)
            history = _history(current, {"at": now, "from": current.status.value,
                                         "to": status.value, "reason": "heartbeat"})
        if new_pid is None or (new_pid == current.pid and current.pid_start is not None):
            pid, pid_start = current.pid, current.pid_start
        else:
            pid, pid_start = new_pid, procs.start_time(new_pid)
        return dataclasses.replace(
            current, status=status, history=history, last_heartbeat=now, pid=pid, pid_start=pid_start,
        )

    return _modify(state, role, name, change, fsync=lambda old, new: old.status is not new.status)


def update_fields(state: StateDir, role: str, name: str, **fields: Any) -> Identity:
    """Set any of pid, pane_id, tmux_session, tmux_socket, worktree, session_id."""
    unknown = sorted(set(fields) - set(UPDATABLE_FIELDS))
    if unknown:
        raise BadInputError(
            "identity fields",
            f"cannot set {', '.join(unknown)}; settable: {', '.join(UPDATABLE_FIELDS)}",
        )
    checked = {key: _FIELD_CHECKS[key](value) for key, value in fields.items()}
    start = procs.start_time(checked["pid"]) if checked.get("pid") is not None else None

    def change(current: Identity, now: str) -> Identity:
        if all(getattr(current, key) == value for key, value in checked.items()) and (
                "pid" not in checked or current.pid_start is not None or current.pid is None):
            return current
        new = dataclasses.replace(current, **checked)
        if "pid" in checked:  # a pid is recorded with the start time it had when it was given
            same = checked["pid"] == current.pid and current.pid_start is not None
            new = dataclasses.replace(new, pid_start=current.pid_start if same else start)
        return new

    return _modify(state, role, name, change)


def set_status(
    state: StateDir, role: str, name: str, status: IdentityStatus | str, reason: str = ""
) -> Identity:
    """The one checked status change, appended to the history. Setting the current status again
    is a no-op, so a supervisor that retries after a crash does no harm. Entering crashed counts
    a crash; entering respawning advances the epoch (the next incarnation's)."""
    target = status if isinstance(status, IdentityStatus) else IdentityStatus.from_text(status)
    path_for(state, role, name)  # validate before anything else

    def change(current: Identity, now: str) -> Identity:
        if current.status is target:
            return current
        transition(f"identity {current.agent_id}", current.status, target, IDENTITY_MOVES)
        return dataclasses.replace(
            current,
            status=target,
            crash_count=current.crash_count + (1 if target is S.CRASHED else 0),
            epoch=current.epoch + (1 if target is S.RESPAWNING else 0),
            history=_history(current, {"at": now, "from": current.status.value,
                                       "to": target.value, "reason": reason}),
        )

    record = _modify(state, role, name, change)
    logger.info("identity %s: %s (%s)", record.agent_id, record.status.value, reason or "no reason",
                extra={"att_agent": record.agent_id})
    return record


def mark_crashed(state: StateDir, role: str, name: str, reason: str = "") -> Identity:
    return set_status(state, role, name, S.CRASHED, reason)


def mark_terminated(state: StateDir, role: str, name: str, reason: str = "") -> Identity:
    return set_status(state, role, name, S.TERMINATED, reason)


def mark_respawning(state: StateDir, role: str, name: str, reason: str = "") -> Identity:
    return set_status(state, role, name, S.RESPAWNING, reason)


def mark_quarantined(state: StateDir, role: str, name: str, reason: str = "") -> Identity:
    return set_status(state, role, name, S.QUARANTINED, reason)


def mark_stale(state: StateDir, role: str, name: str, reason: str = "") -> Identity:
    return set_status(state, role, name, S.STALE, reason)
