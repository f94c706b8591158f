"""The merge queue's entries: records and their store.

Path: `merge-queue/entries/<id>.json` under the state directory, one file per queued branch
(0600, atomic replace, fsync); `merge-queue/queue.lock` is held for each read-modify-write.

Fields (schema 1): `schema`, `id` (8 hex digits), `branch`, `owner` (agent id that gets
MERGE_COMPLETE / MERGE_FAILED), `node`, `priority` (higher first), `validated_sha` (the commit
that was validated; null: the branch head), `state` (queued -> processing -> merged | failed,
failed -> queued on retry; a removed entry is deleted), `enqueued_at`, `updated_at` (ISO-8601
UTC), `attempts` (processing starts), `retries` (re-tests after a moved target or a dead
processor), `claim` (null, or the processor's `pid`, `pid_start` (its start time in clock ticks
from /proc), `host`, `started_at`, `worktree`, then as it advances `source_sha`, `target_old`,
`tested_sha` (written before the swap), `gate_pid`, `gate_pid_start`), `outcome` (the decision,
`Outcome.to_json`: `entry_id`, `branch`, `result` merged|failed|requeued, `target`, `reason`,
`merged_sha`, `target_sha`, `node`, `files`, `gate_output`, `detail`, `decided_at`, `timings`),
`notified` (the owner was sent the outcome), `history` (the last lines of `<stamp> <note>`).

Reading is strict (store/records.py): an entry that does not parse, lacks a field, has an unknown
one or one of the wrong type (in the claim and the outcome too) is corrupt: moved aside, logged and
reported with its path and the field. Writers hold the queue lock, which a reader may hold
already, so a corrupt entry is moved aside at once rather than under a lock of its own.

Staleness: a `processing` entry is stale when nobody holds the merge slot (see merge_queue.py);
only a slot holder recovers it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attractor import clock, gitops, procs
from attractor.errors import BadInputError, NotFoundError
from attractor.names import validate_agent_id, validate_name
from attractor.states import MERGE_ENTRY_MOVES, MergeEntryState, transition
from attractor.store import atomic, locks, records
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

SCHEMA = 1
HISTORY_LINES = 20
M = MergeEntryState


class UnknownBranchError(NotFoundError):
    def __init__(self, branch: str, repo: Path) -> None:
        self.branch = branch
        self.repo = repo
        super().__init__("branch", branch, f"no such branch in {repo}; see 'git branch --list'")


# --- records --------------------------------------------------------------------------------------


class Result(enum.Enum):
    MERGED = "merged"
    FAILED = "failed"
    REQUEUED = "requeued"  # the target moved (or the branch was enqueued again): tested again


@dataclass(frozen=True)
class Outcome:
    """What processing decided for one entry; stored in the entry once decided."""

    entry_id: str
    branch: str
    result: Result
    target: str
    reason: str | None = None  # a MergeFailureReason value unless merged
    merged_sha: str | None = None
    target_sha: str | None = None  # the target tip the entry was tested on (or found at)
    node: str | None = None
    files: tuple[str, ...] = ()
    gate_output: str = ""
    detail: str = ""
    decided_at: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per phase

    @property
    def merged(self) -> bool:
        return self.result is Result.MERGED

    def summary(self) -> str:
        if self.merged:
            sha = (self.merged_sha or "")[:12]
            return f"merged {self.branch} into {self.target} at {sha}" + (
                f" ({self.detail})" if self.detail else "")
        return f"{self.result.value} {self.branch}: {self.reason}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(result=self.result.value, files=list(self.files), timings=dict(self.timings))
        return data

    @classmethod
    def from_json(cls, data: Any) -> Outcome:
        """Strict: a missing, unknown or mistyped field is a BadInputError naming it."""
        what = "merge queue entry outcome"
        values = records.fields(what, data, _OUTCOME_FIELDS, None, types=_OUTCOME_TYPES)
        if values["result"] not in _RESULTS:
            raise BadInputError(what, f"result {values['result']!r} is not one of {', '.join(_RESULTS)}")
        if not all(isinstance(name, str) for name in values["files"]):
            raise BadInputError(what, "field 'files' must be a list of text")
        timings = values["timings"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in timings.values()):
            raise BadInputError(what, "field 'timings' must map phases to seconds")
        return cls(**{**values, "result": Result(values["result"]), "files": tuple(values["files"])})


@dataclass(frozen=True)
class EntryClaim:
    """The processor that took an entry: the queue's claim on it (not a signal's claim, signals.Claim)."""

    pid: int
    pid_start: int | None
    host: str
    started_at: str
    worktree: str
    source_sha: str | None = None
    target_old: str | None = None
    tested_sha: str | None = None
    gate_pid: int | None = None
    gate_pid_start: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> EntryClaim:
        """Strict: a missing, unknown or mistyped field is a BadInputError naming it."""
        return cls(**records.fields("merge queue entry claim", data, _CLAIM_FIELDS, None, types=_CLAIM_TYPES))

    def alive(self) -> bool:
        """The claiming process still runs (same pid, same start time) on this host."""
        return self.host == socket.gethostname() and procs.start_time(self.pid) == self.pid_start


@dataclass(frozen=True)
class Entry:
    id: str
    branch: str
    owner: str
    state: MergeEntryState
    enqueued_at: str
    updated_at: str
    node: str | None = None
    priority: int = 0
    validated_sha: str | None = None
    attempts: int = 0
    retries: int = 0
    claim: EntryClaim | None = None
    outcome: Outcome | None = None
    notified: bool = False
    history: tuple[str, ...] = ()
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(
            state=self.state.value, history=list(self.history),
            claim=self.claim.to_json() if self.claim else None,
            outcome=self.outcome.to_json() if self.outcome else None,
        )
        return data

    @classmethod
    def from_json(cls, data: Any) -> Entry:
        """Strict: a missing, unknown or mistyped field is a BadInputError naming it."""
        what = "merge queue entry"
        values = records.fields(what, data, _ENTRY_FIELDS, SCHEMA, types=_ENTRY_TYPES)
        if not all(isinstance(line, str) for line in values["history"]):
            raise BadInputError(what, "field 'history' must be a list of text")
        validate_name(values["id"], "entry id")
        return cls(**{
            **values,
            "state": MergeEntryState.from_text(values["state"]),
            "claim": None if values["claim"] is None else EntryClaim.from_json(values["claim"]),
            "outcome": None if values["outcome"] is None else Outcome.from_json(values["outcome"]),
            "history": tuple(values["history"]),
        })

    def noted(self, note: str, **changes: Any) -> Entry:
        now = clock.iso()
        history = (*self.history, f"{now} {note}")[-HISTORY_LINES:]
        return dataclasses.replace(self, updated_at=now, history=history, **changes)

    def moved(self, target: MergeEntryState, note: str, **changes: Any) -> Entry:
        transition(f"merge entry {self.id}", self.state, target, MERGE_ENTRY_MOVES)
        return self.noted(f"{self.state.value} -> {target.value}: {note}", state=target, **changes)


_TEXT, _OPT_TEXT, _OPT_INT = (str,), records.OPTIONAL_TEXT, records.OPTIONAL_INT
_RESULTS = tuple(result.value for result in Result)
_OUTCOME_FIELDS = tuple(f.name for f in dataclasses.fields(Outcome))
_OUTCOME_TYPES: dict[str, tuple[type, ...]] = {
    "entry_id": _TEXT, "branch": _TEXT, "result": _TEXT, "target": _TEXT, "reason": _OPT_TEXT,
    "merged_sha": _OPT_TEXT, "target_sha": _OPT_TEXT, "node": _OPT_TEXT, "files": (list,),
    "gate_output": _TEXT, "detail": _TEXT, "decided_at": _TEXT, "timings": (dict,),
}
_CLAIM_FIELDS = tuple(f.name for f in dataclasses.fields(EntryClaim))
_CLAIM_TYPES: dict[str, tuple[type, ...]] = {
    "pid": (int,), "pid_start": _OPT_INT, "host": _TEXT, "started_at": _TEXT, "worktree": _TEXT,
    "source_sha": _OPT_TEXT, "target_old": _OPT_TEXT, "tested_sha": _OPT_TEXT, "gate_pid": _OPT_INT,
    "gate_pid_start": _OPT_INT,
}
_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(Entry))
_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "id": _TEXT, "branch": _TEXT, "owner": _TEXT, "state": _TEXT, "enqueued_at": _TEXT,
    "updated_at": _TEXT, "node": _OPT_TEXT, "priority": (int,), "validated_sha": _OPT_TEXT,
    "attempts": (int,), "retries": (int,), "claim": records.OPTIONAL_OBJECT,
    "outcome": records.OPTIONAL_OBJECT, "notified": (bool,), "history": (list,), "schema": (int,),
}


# --- the entry store ------------------------------------------------------------------------------


def _entries_dir(state: StateDir) -> Path:
    return state.merge_queue / "entries"


def _entry_path(state: StateDir, entry_id: str) -> Path:
    return _entries_dir(state) / f"{validate_name(entry_id, 'entry id')}.json"


# writers hold the queue lock, not the entry's own (see the module docstring): lock=False
_RECORDS = records.Kind(
    "merge queue entry", SCHEMA, Entry.from_json,
    lambda path: NotFoundError("merge queue entry", path.stem, "see 'attractor merge-queue list'"),
    stem=lambda entry: entry.id, lock=False,
)


def write_entry(state: StateDir, entry: Entry, *, fsync: bool = True) -> None:
    atomic.write_json_atomic(_entry_path(state, entry.id), entry.to_json(), fsync=fsync)


@contextlib.contextmanager
def queue_lock(state: StateDir) -> Iterator[None]:
    state.ensure("merge-queue", "entries")
    with locks.file_lock(state.merge_queue / "queue"):
        yield


def list_entries(state: StateDir) -> list[Entry]:
    """Every entry, oldest first. A corrupt file is moved aside and logged, never fatal."""
    return sorted(_RECORDS.list(_entries_dir(state)), key=lambda e: (e.enqueued_at, e.id))


def get_entry(state: StateDir, entry_id: str) -> Entry:
    return _RECORDS.get(_entry_path(state, entry_id))


def update_entry(
    state: StateDir, entry_id: str, change: Callable[[Entry], Entry], *, fsync: bool = True
) -> Entry:
    """Re-read entry `entry_id` under the queue lock, apply `change`, write the result."""
    with queue_lock(state):
        entry = change(get_entry(state, entry_id))
        write_entry(state, entry, fsync=fsync)
        return entry


def new_entry_id(state: StateDir) -> str:
    while True:
        entry_id = os.urandom(4).hex()
        if not _entry_path(state, entry_id).exists():
            return entry_id


def enqueue(
    state: StateDir,
    repo: gitops.RepoLike,
    branch: str,
    *,
    owner: str,
    node: str | None = None,
    priority: int = 0,
    validated_sha: str | None = None,
) -> Entry:
    """Queue `branch` for merging. The same branch again updates its entry (a failed one goes
    back to the queue); a commit that was already merged returns that merged entry."""
    r = gitops.as_repo(repo)
    branch = gitops.validate_branch_name(branch.removeprefix("refs/heads/"))
    validate_agent_id(owner)
    if node is not None:
        validate_name(node, "node name")
    head = gitops.rev_parse(r, f"refs/heads/{branch}")
    if head is None:
        raise UnknownBranchError(branch, r.root)
    sha = None
    if validated_sha is not None:
        sha = gitops.rev_parse(r, validated_sha)
        if sha is None:
            raise NotFoundError("commit", validated_sha, f"no such commit in {r.root}")
        if sha != head and not gitops.is_ancestor(r, sha, head):
            raise BadInputError("--sha", f"commit {sha[:12]} is not on branch {branch}")
    fields: dict[str, Any] = {"owner": owner, "node": node, "priority": int(priority),
                              "validated_sha": sha}
    with queue_lock(state):
        same = [e for e in list_entries(state) if e.branch == branch]
        active = [e for e in same if e.state is not M.MERGED]
        wanted = sha or head
        merged = [e for e in same if e.state is M.MERGED and e.outcome
                  and wanted in (e.validated_sha, e.outcome.merged_sha)]
        if active:
            entry = active[0]
            if entry.state is M.FAILED:
                entry = entry.moved(M.QUEUED, f"enqueued again by {owner}", outcome=None,
                                    notified=False, retries=0, **fields)
            else:
                entry = entry.noted(f"enqueued again by {owner}: entry updated", **fields)
        elif merged:
            return merged[-1]
        else:
            now = clock.iso()
            entry = Entry(id=new_entry_id(state), branch=branch, state=M.QUEUED, enqueued_at=now,
                          updated_at=now, history=(f"{now} enqueued by {owner}",), **fields)
        write_entry(state, entry)
    logger.info("merge entry %s (%s): %s", entry.id, branch, entry.state.value,
                extra={"att_entry": entry.id})
    return entry


def remove_entry(state: StateDir, entry_id: str) -> Entry:
    """Delete an entry that is not being processed; returns what it was."""
    get_entry(state, entry_id)  # an unknown id changes nothing on disk
    with queue_lock(state):
        entry = get_entry(state, entry_id)
        transition(f"merge entry {entry.id}", entry.state, M.REMOVED, MERGE_ENTRY_MOVES)
        _entry_path(state, entry_id).unlink()
    return entry


def retry_entry(state: StateDir, entry_id: str) -> Entry:
    """Put a failed entry back in the queue (its retry count starts again)."""
    get_entry(state, entry_id)
    return update_entry(state, entry_id, lambda e: e.moved(
        M.QUEUED, "retry requested", outcome=None, notified=False, retries=0))
