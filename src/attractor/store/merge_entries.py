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

Staleness: a `processing` entry is stale when nobody holds the merge slot (see merge_queue.py);
only a slot holder recovers it. An unreadable entry is moved aside and logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attractor import clock, gitops
from attractor.engines.gates import process_start
from attractor.errors import AttractorError, BadInputError, CorruptStateError, NotFoundError
from attractor.names import validate_agent_id, validate_name
from attractor.states import MERGE_ENTRY_MOVES, MergeEntryState, transition
from attractor.store import atomic, locks
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
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        values = dict(data)
        values.update(result=Result(values["result"]), files=tuple(values.get("files", ())))
        return cls(**values)


@dataclass(frozen=True)
class Claim:
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
    def from_json(cls, data: Mapping[str, Any]) -> Claim:
        return cls(**data)

    def alive(self) -> bool:
        """The claiming process still runs (same pid, same start time) on this host."""
        return self.host == socket.gethostname() and process_start(self.pid) == self.pid_start


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
    claim: Claim | None = None
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
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        values = dict(data)
        values.update(
            state=MergeEntryState.from_text(values["state"]),
            claim=Claim.from_json(values["claim"]) if values.get("claim") else None,
            outcome=Outcome.from_json(values["outcome"]) if values.get("outcome") else None,
            history=tuple(values.get("history", ())),
        )
        entry = cls(**values)
        validate_name(entry.id, "entry id")
        return entry

    def noted(self, note: str, **changes: Any) -> Entry:
        now = clock.iso()
        history = (*self.history, f"{now} {note}")[-HISTORY_LINES:]
        return dataclasses.replace(self, updated_at=now, history=history, **changes)

    def moved(self, target: MergeEntryState, note: str, **changes: Any) -> Entry:
        transition(f"merge entry {self.id}", self.state, target, MERGE_ENTRY_MOVES)
        return self.noted(f"{self.state.value} -> {target.value}: {note}", state=target, **changes)


# --- the entry store ------------------------------------------------------------------------------


def _entries_dir(state: StateDir) -> Path:
    return state.merge_queue / "entries"


def _entry_path(state: StateDir, entry_id: str) -> Path:
    return _entries_dir(state) / f"{validate_name(entry_id, 'entry id')}.json"


def _read_entry(path: Path) -> Entry:
    data = atomic.read_json_object(path, schema=SCHEMA)
    try:
        entry = Entry.from_json(data)
        if path.stem != entry.id:
            raise ValueError(f"entry id {entry.id!r} does not match the file name")
    except (KeyError, TypeError, ValueError, AttractorError) as exc:
        problem = f"not a merge queue entry ({exc})"
        raise CorruptStateError(path, problem, atomic.move_aside(path)) from None
    return entry


def write_entry(state: StateDir, entry: Entry, *, fsync: bool = True) -> None:
    atomic.write_json_atomic(_entry_path(state, entry.id), entry.to_json(), fsync=fsync)


@contextlib.contextmanager
def queue_lock(state: StateDir) -> Iterator[None]:
    state.ensure("merge-queue", "entries")
    with locks.file_lock(state.merge_queue / "queue"):
        yield


def list_entries(state: StateDir) -> list[Entry]:
    """Every entry, oldest first. A corrupt file is moved aside and logged, never fatal."""
    directory = _entries_dir(state)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    entries = []
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            try:
                entries.append(_read_entry(directory / name))
            except FileNotFoundError:
                continue
            except CorruptStateError as exc:
                logger.warning("%s", exc, extra={"att_path": str(exc.path)})
    return sorted(entries, key=lambda e: (e.enqueued_at, e.id))


def get_entry(state: StateDir, entry_id: str) -> Entry:
    try:
        return _read_entry(_entry_path(state, entry_id))
    except FileNotFoundError:
        hint = "see 'attractor merge-queue list'"
        raise NotFoundError("merge queue entry", entry_id, hint) from None


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
        entry_id = secrets.token_hex(4)
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
