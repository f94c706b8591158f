"""The merge queue: lands validated branches on the target branch one at a time, and moves the
target only by compare-and-swap to a commit that passed the gates on exactly that tree.

Files (under the state directory):

    merge-queue/entries/<id>.json   the entries (format and fields: merge_entries.py)
    merge-queue/queue.lock          held for each read-modify-write of an entry (tiny sections)
    merge-queue/slot.lock           the merge slot: held for the whole processing of one entry

Staleness rule: a processor holds `slot.lock` (`locks.file_lock`, released by the kernel when the process
dies) from claiming an entry until its outcome is recorded. So an entry in `processing` seen by
whoever holds the slot was abandoned: its gate's session is killed, its merge worktree removed,
and it is merged if the target already contains the claim's `tested_sha` (the crash came after
the swap), else queued again as a retry (failed once `max_retries` is used up).

Merge worktrees are `<repo>/.claude/worktrees/_merge-<id>` (or `_merge-spare-<hex>`, checked out
for the next entry while the current one's gates run), detached: never the user's checkout nor
an agent's. Each is removed when its entry is decided, even on failure; any left by a dead
processor are removed by the next one.

Landing: a branch already on the target's tip lands as it is; a one-commit branch is replayed
on the tip in memory; a longer one is rebased in the merge worktree and lands under a merge
commit whose first parent is the old tip, so every commit on the target's first-parent line is
one that passed the gates on exactly its tree.

The config file and its options: merge_config.py. The next entry got ready while the current
one's gates run, and started the moment it lands: merge_session.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from attractor import clock, gitops, procs
from attractor.engines.gates import (
    OUTPUT_TAIL_CHARS,
    Gate,
    GateCommandError,
    RunningGate,
    check_gate,
    kill_session,
    run_gate,
    start_gate,
)
from attractor.engines.merge_config import CONFIG_FILE, DEFAULT_MAX_RETRIES, QueueConfig, check_config, load_config
from attractor.engines.merge_session import InFlight, MergeSession, Prepared, Upcoming, unclaim
from attractor.errors import AttractorError, BadInputError, UsageError
from attractor.names import validate_agent_id
from attractor.states import MergeEntryState, SignalKind
from attractor.store import locks
from attractor.store.merge_entries import (
    Entry,
    EntryClaim,
    Outcome,
    Result,
    UnknownBranchError,
    enqueue,
    get_entry,
    list_entries,
    new_entry_id,
    queue_lock,
    remove_entry,
    retry_entry,
    update_entry,
    write_entry,
)
from attractor.store.payloads import MergeComplete, MergeFailed, MergeFailureReason, MergeReady
from attractor.store.statedir import StateDir

__all__ = [
    "CONFIG_FILE", "DEFAULT_MAX_RETRIES", "Entry", "Gate", "GateCommandError", "MergeSession", "Outcome",
    "QueueConfig", "Result", "UnknownBranchError", "Upcoming", "check_config", "enqueue", "get_entry",
    "handle_merge_ready", "list_entries", "load_config", "process_all", "process_next", "remove_entry",
    "retry_entry",
]

logger = logging.getLogger(__name__)

RETRY_PENALTY_SECONDS = 300.0  # a retried entry sorts as if enqueued this much later, per retry
MERGE_WORKTREE_PREFIX = "_merge-"
# Test hook `<point>:<ready-file>`: the processor writes <ready-file> and stops at <point>
# (`rebase`: inside git rebase; `before_swap`; `after_swap`) so that a test can kill it there.
PAUSE_ENV = "ATTRACTOR_MERGE_QUEUE_PAUSE"
_KEEP_GIT_ENV = frozenset({
    "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
    "GIT_CONFIG_NOSYSTEM",
})

M = MergeEntryState
DECIDED = (M.MERGED, M.FAILED)
R = MergeFailureReason


# --- processing -----------------------------------------------------------------------------------


class SignalLike(Protocol):
    @property
    def payload(self) -> Any: ...


@contextlib.contextmanager
def _slot(state: StateDir, wait: float | None) -> Iterator[None]:
    state.ensure("merge-queue")
    with locks.file_lock(state.merge_queue / "slot", timeout=-1 if wait is None else wait):
        yield


def _merge_worktree(repo: gitops.GitRepo, entry_id: str) -> Path:
    return repo.root / gitops.WORKTREES_DIR / f"{MERGE_WORKTREE_PREFIX}{entry_id}"


def _pause(point: str, *, wait: bool = True) -> str | None:
    """The test hook (PAUSE_ENV). With `wait`, stop here forever once the ready file is written;
    without, return the ready file for the caller to use."""
    name, _, ready = os.environ.get(PAUSE_ENV, "").partition(":")
    if name != point or not ready:
        return None
    if not wait:
        return ready
    Path(ready).write_text(f"{os.getpid()}\n")
    while True:
        time.sleep(3600)


def _fail(entry: Entry, target: str, reason: R, detail: str, **kw: Any) -> Outcome:
    return Outcome(entry.id, entry.branch, Result.FAILED, target, reason=reason.value,
                   node=entry.node, detail=detail, **kw)


def _merged(entry: Entry, target: str, sha: str, base: str | None, detail: str = "") -> Outcome:
    return Outcome(entry.id, entry.branch, Result.MERGED, target, merged_sha=sha,
                   target_sha=base, node=entry.node, detail=detail)


def process_next(
    state: StateDir, repo: gitops.RepoLike, config: QueueConfig, *, wait: float | None = None
) -> Outcome | None:
    """Take the merge slot, recover abandoned claims, process the fairest queued entry; returns
    its outcome, or None when nothing is queued. `wait` bounds the wait for the slot (None: as
    long as it takes; a live holder is bounded by its gates' timeouts)."""
    with _Processor(state, repo, config, wait, spare=False) as processor:
        return processor.next()


def process_all(
    state: StateDir, repo: gitops.RepoLike, config: QueueConfig, *, wait: float | None = None
) -> list[Outcome]:
    """Process until nothing is queued (the slot is taken again for every entry)."""
    with _Processor(state, repo, config, wait, spare=True) as processor:
        outcomes = []
        while (outcome := processor.next()) is not None:
            outcomes.append(outcome)
        return outcomes


def handle_merge_ready(
    state: StateDir,
    repo: gitops.RepoLike,
    signal_or_payload: MergeReady | SignalLike | Mapping[str, Any],
    config: QueueConfig,
    *,
    wait: float | None = None,
    session: MergeSession | None = None,
) -> Outcome:
    """Enqueue the branch of a MERGE_READY and process the queue until that entry is decided.
    Idempotent: a commit already merged returns its recorded outcome and sends nothing more.
    A branch or commit that does not exist is reported to the owner as MERGE_FAILED. With a
    `session`, what it got ready for the next entry outlives this call (merge_session.py)."""
    payload: Any = signal_or_payload
    if isinstance(payload, Mapping):
        payload = MergeReady.from_json(dict(payload))
    elif not isinstance(payload, MergeReady):
        payload = payload.payload
    if not isinstance(payload, MergeReady):
        raise BadInputError("MERGE_READY signal", f"payload is {type(payload).__name__}")
    validate_agent_id(payload.owner)
    with _Processor(state, repo, config, wait, spare=True, session=session) as processor:  # checks the config
        inflight = session.inflight if session is not None else None
        try:
            if inflight is not None and _same_request(inflight.entry, payload):
                entry = inflight.entry  # enqueued and claimed already; its gate runs
            else:
                entry = enqueue(state, processor.repo, payload.branch, owner=payload.owner,
                                node=payload.node or None, priority=payload.priority,
                                validated_sha=payload.commit)
        except UsageError as exc:
            reason = R.BRANCH_MISSING if isinstance(exc, UnknownBranchError) else R.ERROR
            outcome = Outcome("", payload.branch, Result.FAILED, config.target,
                              reason=reason.value, node=payload.node or None, detail=str(exc),
                              decided_at=clock.iso())
            _send(state, config, payload.owner, outcome)
            return outcome
        while entry.state not in DECIDED or entry.outcome is None:
            processed = processor.next()
            if processed is not None and processed.reason == R.TARGET_UNTRUSTED.value:
                return processed  # nothing merges onto that target: the caller holds the queue
            entry = get_entry(state, entry.id)
            if processed is None and entry.state is M.QUEUED:
                raise AttractorError(f"merge entry {entry.id} is queued but was not processed")
    return entry.outcome


def _same_request(entry: Entry, payload: MergeReady) -> bool:
    return (entry.branch == payload.branch.removeprefix("refs/heads/") and entry.owner == payload.owner
            and bool(payload.commit) and entry.validated_sha == payload.commit)


def _fair_key(entry: Entry) -> tuple[int, float, str, str]:
    """Priority first, then age, with a retried entry sorting as if it came later."""
    age = clock.parse_iso(entry.enqueued_at) + entry.retries * RETRY_PENALTY_SECONDS
    return (-entry.priority, age, entry.enqueued_at, entry.id)


def _record_claim(state: StateDir, entry_id: str, *, fsync: bool = True, **changes: Any) -> None:
    def change(e: Entry) -> Entry:
        assert e.claim is not None
        return dataclasses.replace(e, claim=dataclasses.replace(e.claim, **changes))

    update_entry(state, entry_id, change, fsync=fsync)


def _new_claim(worktree: Path) -> EntryClaim:
    pid = os.getpid()
    return EntryClaim(pid=pid, pid_start=procs.start_time(pid), host=socket.gethostname(),
                      started_at=clock.iso(), worktree=str(worktree))


class _Processor:
    """One processor's pass over the queue. With `spare`, while an entry's gates run it checks
    out a fresh worktree for the next entry in the background (the checkout of the whole tree
    is most of the git work per merge); the next entry takes it over, checks out its own commit
    there (only the files that differ are written) and removes it when decided, like any merge
    worktree. A spare not taken over is removed when the pass ends; one left by a dead
    processor is swept by the next slot holder. With a session that names the upcoming entry,
    that entry is prepared instead, and started when the current one lands (merge_session.py)."""

    def __init__(self, state: StateDir, repo: gitops.RepoLike, config: QueueConfig,
                 wait: float | None, *, spare: bool, session: MergeSession | None = None) -> None:
        self.state = state
        self.repo = gitops.as_repo(repo)
        self.config = config
        self.wait = wait
        self.use_spare = spare and bool(config.gates)
        self.session = session
        self.spare: Path | None = None
        if session is not None:  # the spare an earlier pass of the session prepared
            self.spare, session.spare, session.repo = session.spare, None, self.repo
        self.preparing: threading.Thread | None = None
        self.prepared: Prepared | None = None
        self.slot: contextlib.ExitStack | None = None  # holds the merge slot during next()
        self.more_queued = False
        check_config(self.repo, config)

    def __enter__(self) -> _Processor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._join_spare()
        self._unprepare()
        if self.spare is not None and self.session is not None and exc[0] is None:
            self.session.spare, self.spare = self.spare, None  # for the session's next entry
        if self.spare is not None:
            with contextlib.suppress(AttractorError):
                gitops.remove_worktree(self.repo, self.spare)
            self.spare = None

    def next(self) -> Outcome | None:
        inflight = self._adopt()
        if inflight is not None:
            with inflight.slot as slot:  # held since the entry was claimed
                self.slot = slot
                return self._process(inflight.entry, inflight)
        with contextlib.ExitStack() as slot:
            slot.enter_context(_slot(self.state, self.wait))
            self.slot = slot
            recovered = _recover(self.state, self.repo, self.config, keep=self.spare)
            _notify_pending(self.state, self.config)
            if recovered is not None:
                return recovered
            entry = self._claim_next()
            return None if entry is None else self._process(entry)

    def _adopt(self) -> InFlight | None:
        """The session's entry in flight, if its gate may count: it started on the commit the
        caller expects the target at. Otherwise it goes back to the queue, its worktree kept."""
        session = self.session
        inflight = session.inflight if session is not None else None
        if session is None or inflight is None:
            return None
        session.inflight = None
        base, expected = inflight.prepared.base, self.config.expected_base
        if expected is None or expected == base:
            return inflight
        logger.warning("merge entry %s: its gates started on %s, the target is expected at %s: tested again",
                       inflight.entry.id, base[:12], expected[:12], extra={"att_entry": inflight.entry.id})
        self._keep_spare(inflight.drop(f"requeued: tested on {base[:12]}, not on {expected[:12]}", keep=True))
        return None

    def _claim_next(self) -> Entry | None:
        with queue_lock(self.state):
            queued = [e for e in list_entries(self.state) if e.state is M.QUEUED]
            if not queued:
                return None
            entry = min(queued, key=_fair_key)
            self.more_queued = len(queued) > 1
            spare, self.spare = self.spare, None
            worktree = spare if spare is not None and spare.exists() else _merge_worktree(
                self.repo, entry.id)
            entry = entry.moved(M.PROCESSING, f"claimed by pid {os.getpid()}", claim=_new_claim(worktree),
                                attempts=entry.attempts + 1)
            write_entry(self.state, entry)
        return entry

    def _process(self, entry: Entry, inflight: InFlight | None = None) -> Outcome:
        assert entry.claim is not None
        started = time.monotonic()
        timings: dict[str, float] = {}
        worktree = Path(entry.claim.worktree)
        try:
            outcome = self._attempt(entry, worktree, timings, inflight)
        except AttractorError as exc:  # an unexpected git failure: this entry fails, loudly
            logger.error("merge entry %s: %s", entry.id, exc, extra={"att_entry": entry.id})
            outcome = _fail(entry, self.config.target, R.ERROR, str(exc))
        finally:
            if inflight is not None:
                inflight.gate.close()  # already over unless the attempt broke off
            self._join_spare()
            self._unprepare()
            mark = time.monotonic()
            if worktree.exists():
                gitops.remove_worktree(self.repo, worktree)
            timings["cleanup"] = time.monotonic() - mark
        timings["total"] = time.monotonic() - started
        outcome = dataclasses.replace(outcome, timings=timings, decided_at=clock.iso())
        return _record_outcome(self.state, self.config, entry, outcome)

    def _checkout(self, worktree: Path, commit: str) -> None:
        """`worktree` at exactly `commit`: a taken-over spare is moved there, else it is added."""
        if worktree.exists():
            try:
                gitops.checkout_detached(worktree, commit, force=True)
                return
            except AttractorError as exc:  # swept meanwhile, or broken: start afresh
                logger.warning("spare worktree %s unusable (%s); adding a new one", worktree, exc)
                gitops.remove_worktree(self.repo, worktree)
        gitops.add_detached_worktree(self.repo, worktree, commit)

    def _coming(self) -> bool:
        """Whether another entry is queued, or the session's caller has one on its way."""
        session = self.session
        return self.more_queued or (session is not None and session.more_coming is not None and session.more_coming())

    def _start_spare(self, old: str, tested: str) -> None:
        """While the gates run: prepare the upcoming entry on `tested` (as if the current one
        lands), or else check out a spare worktree at `old` for whatever comes next."""
        upcoming = self.session.upcoming if self.session is not None else None
        if not self.use_spare or self.preparing or (upcoming is None and (self.spare or not self._coming())):
            return

        def prepare() -> None:
            if upcoming is not None:
                try:
                    offer = upcoming()
                    self.prepared = None if offer is None else self._prepare(offer, tested)
                except AttractorError as exc:
                    logger.warning("cannot prepare the next merge entry: %s", exc)
            if self.prepared is not None or self.spare is not None or not self._coming():
                return
            spare = self._spare_path()
            try:
                gitops.add_detached_worktree(self.repo, spare, old)
                self.spare = spare
            except AttractorError as exc:
                logger.warning("cannot prepare a spare merge worktree: %s", exc)

        self.preparing = threading.Thread(target=prepare, name="merge-queue-spare", daemon=True)
        self.preparing.start()

    def _spare_path(self) -> Path:
        return self.repo.root / gitops.WORKTREES_DIR / f"{MERGE_WORKTREE_PREFIX}spare-{os.urandom(4).hex()}"

    def _join_spare(self) -> None:
        if self.preparing is not None:
            self.preparing.join()
            self.preparing = None

    def _keep_spare(self, worktree: Path | None) -> None:
        """Keep `worktree` as the spare, unless there is one already (then it is removed)."""
        if worktree is None or worktree == self.spare:
            return
        if self.spare is None and worktree.exists():
            self.spare = worktree
            return
        with contextlib.suppress(AttractorError):
            gitops.remove_worktree(self.repo, worktree)

    def _unprepare(self) -> None:
        prepared, self.prepared = self.prepared, None
        if prepared is not None:
            self._keep_spare(prepared.worktree)

    def _prepare(self, offer: Upcoming, base: str) -> Prepared | None:
        """Enqueue the upcoming MERGE_READY and rebase it onto `base` in the spare worktree;
        None when there is nothing to get ready (it is then processed like any entry)."""
        started = time.monotonic()
        payload, config = offer.payload, offer.config
        if not config.gates or config.target != self.config.target:
            return None
        try:
            for gate in config.gates:
                check_gate(gate)
            validate_agent_id(payload.owner)
            entry = enqueue(self.state, self.repo, payload.branch, owner=payload.owner,
                            node=payload.node or None, priority=payload.priority, validated_sha=payload.commit)
        except UsageError:
            return None  # reported when the MERGE_READY is handed over
        head = gitops.rev_parse(self.repo, f"refs/heads/{entry.branch}")
        source = entry.validated_sha or head
        if entry.state is not M.QUEUED or head is None or source is None or (
                source != head and not gitops.is_ancestor(self.repo, source, head)):
            return None
        behind, ahead = gitops.ahead_behind(self.repo, base, source)
        if ahead == 0:
            return None
        worktree, self.spare = self.spare, None
        if worktree is None or not worktree.exists():
            worktree = self._spare_path()
        tested, _, _ = self._rebase(entry, worktree, config.target, base, source, behind, ahead, pause=False)
        if not tested or tested == base:
            self._keep_spare(worktree if worktree.exists() else None)
            return None
        return Prepared(entry.id, entry.validated_sha, config, head, source, base, tested, worktree,
                        time.monotonic() - started)

    def _hand_off(self, landed: str) -> None:
        """The current entry landed at exactly `landed`: claim the entry prepared on that commit
        and start its first gate now; the session's caller picks it up. Nothing here can undo the
        landing: any trouble only drops the preparation."""
        prepared, self.prepared = self.prepared, None
        session = self.session
        if prepared is None:
            return
        if session is None or self.slot is None or prepared.base != landed:
            self._keep_spare(prepared.worktree)
            return
        entry: Entry | None = None
        try:
            with queue_lock(self.state):
                queued = [e for e in list_entries(self.state) if e.state is M.QUEUED]
                fairest = min(queued, key=_fair_key) if queued else None
                if fairest is not None and fairest.id == prepared.entry_id \
                        and fairest.validated_sha == prepared.validated_sha:
                    entry = fairest.moved(M.PROCESSING, f"claimed by pid {os.getpid()}",
                                          claim=_new_claim(prepared.worktree), attempts=fairest.attempts + 1)
                    # not fsynced: a claim lost with the machine leaves the entry queued, and
                    # its gate died with it; a dead process loses nothing of it
                    write_entry(self.state, entry, fsync=False)
            if entry is None:  # another entry is fairer now, or this one changed
                self._keep_spare(prepared.worktree)
                return
            env = _gate_env(self.repo, prepared.config, entry, prepared.base, prepared.tested)
            gate = start_gate(prepared.config.gates[0], prepared.worktree, env)
        except (AttractorError, OSError) as exc:
            logger.warning("merge entry %s: cannot start it: %s", prepared.entry_id, exc)
            with contextlib.suppress(AttractorError):
                if entry is not None:
                    unclaim(self.state, entry.id, f"requeued: its gate did not start ({exc})")
            self._keep_spare(prepared.worktree)
            return
        session.inflight = InFlight(self.state, self.repo, entry, prepared, gate, self.slot.pop_all())
        try:
            _record_claim(self.state, entry.id, fsync=False, gate_pid=gate.pid,
                          gate_pid_start=procs.start_time(gate.pid))
        except AttractorError as exc:
            logger.warning("merge entry %s: recording its gate: %s", entry.id, exc)

    def _rebase(self, entry: Entry, worktree: Path, target: str, old: str, source: str, behind: int, ahead: int,
                *, pause: bool = True) -> tuple[str, tuple[str, ...], str]:
        """`source` put onto `old` and checked out in `worktree`: (the commit to test, or "" on
        a conflict; the conflicting files; git's message)."""
        repo = self.repo
        gitops.exclude_attractor_dirs(repo)
        conflicts: tuple[str, ...] = ()
        message = ""
        if behind == 0:  # already on the tip: nothing to rebase
            tested = source
            self._checkout(worktree, tested)
        elif ahead == 1:  # one commit: replayed in memory, then checked out once
            picked = gitops.pick_onto(repo, source, old)
            conflicts, tested = picked.conflicts, picked.commit or ""
            if picked.ok:
                self._checkout(worktree, tested)
        else:
            self._checkout(worktree, source)
            ready = _pause("rebase", wait=False) if pause else None
            hold = f": > {shlex.quote(ready)}; sleep 3600" if ready else None
            rebased = gitops.rebase(worktree, old, exec_cmd=hold)
            conflicts, tested, message = rebased.conflicts, rebased.head or "", rebased.message
        if tested and tested != old and ahead > 1:
            # Several commits: land them under one merge commit (first parent: the old tip), so
            # that every commit on the target's first-parent line is one the gates tested.
            merge_message = f"Merge {entry.branch} into {target}\n\nmerge queue entry {entry.id}"
            tree = gitops.tree_of(repo, tested)
            tested = gitops.commit_tree(repo, tree, [old, tested], merge_message)
            gitops.checkout_detached(worktree, tested)
        return tested, conflicts, message

    def _attempt(self, entry: Entry, worktree: Path, timings: dict[str, float],
                 inflight: InFlight | None) -> Outcome:
        """Rebase, gate, swap. Returns the outcome; the caller removes the worktree."""
        if inflight is not None:  # rebased while the entry before it was tested; its gate runs
            p = inflight.prepared
            timings["rebase"] = p.seconds
            return self._gate_and_land(entry, worktree, timings, p.config, p.head, p.source, p.base, p.tested,
                                       inflight.gate)
        repo, config = self.repo, self.config
        mark = time.monotonic()
        target = config.target
        head = gitops.rev_parse(repo, f"refs/heads/{entry.branch}")
        if head is None:
            return _fail(entry, target, R.BRANCH_MISSING,
                         f"branch {entry.branch!r} no longer exists")
        source = entry.validated_sha or head
        if source != head and not gitops.is_ancestor(repo, source, head):
            detail = (f"branch {entry.branch} was rewritten after it was validated at "
                      f"{source[:12]}; enqueue it again")
            return _fail(entry, target, R.ERROR, detail)
        old = gitops.rev_parse(repo, f"refs/heads/{target}")
        if old is None:
            return _fail(entry, target, R.ERROR, f"target branch {target!r} no longer exists")
        if config.expected_base and old != config.expected_base:
            return _fail(entry, target, R.TARGET_UNTRUSTED,
                         f"{target} is at {old[:12]}, not at {config.expected_base[:12]} where the queue "
                         "left it: a commit landed outside the queue", target_sha=old)
        behind, ahead = gitops.ahead_behind(repo, old, source)  # only in old, only in source
        if ahead == 0:
            return _merged(entry, target, source, old, "already on the target; nothing to merge")
        tested, conflicts, message = self._rebase(entry, worktree, target, old, source, behind, ahead)
        timings["rebase"] = time.monotonic() - mark
        if not tested:
            detail = (f"rebase onto {target} ({old[:12]}) conflicts in "
                      f"{', '.join(conflicts) or 'unknown files'}")
            return _fail(entry, target, R.CONFLICT, detail, target_sha=old, files=conflicts,
                         gate_output=message[-OUTPUT_TAIL_CHARS:])
        if tested == old:
            return _merged(entry, target, old, old, "every commit is already on the target")
        return self._gate_and_land(entry, worktree, timings, config, head, source, old, tested, None)

    def _gate_and_land(self, entry: Entry, worktree: Path, timings: dict[str, float], config: QueueConfig,
                       head: str, source: str, old: str, tested: str, running: RunningGate | None) -> Outcome:
        """Gate `tested` (its first gate maybe running already), then move the target from
        exactly `old` to exactly `tested`."""
        repo, state, target = self.repo, self.state, config.target
        mark = time.monotonic() if running is None else running.started
        self._start_spare(old, tested)
        failed = _run_gates(state, repo, config, entry, worktree, old, tested, running)
        self._join_spare()
        timings["gates"] = time.monotonic() - mark
        if failed is not None:
            return failed

        mark = time.monotonic()
        # Progress inside a claim is not fsynced: a dead process loses nothing of it (the page
        # cache survives it), and after a power cut a lost `tested_sha` only means the entry is
        # tested again, and its commit found already on the target.
        _record_claim(state, entry.id, fsync=False, source_sha=source, tested_sha=tested,
                      target_old=old)
        _pause("before_swap")
        refused = _swap(repo, entry, target, old, tested)
        timings["swap"] = time.monotonic() - mark
        if refused is not None:
            return refused
        self._hand_off(tested)  # the next entry's gate starts on exactly this tip
        _pause("after_swap")
        mark = time.monotonic()
        detail = _after_merge(repo, config, entry, head if source == head else None)
        timings["after"] = time.monotonic() - mark
        return _merged(entry, target, tested, old, detail)


def _gate_env(repo: gitops.GitRepo, config: QueueConfig, entry: Entry, old: str, tested: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEEP_GIT_ENV}
    env.pop(PAUSE_ENV, None)
    env.update(ATTRACTOR_MERGE_ENTRY=entry.id, ATTRACTOR_MERGE_BRANCH=entry.branch,
               ATTRACTOR_MERGE_TARGET=config.target, ATTRACTOR_MERGE_BASE=old,
               ATTRACTOR_MERGE_COMMIT=tested, ATTRACTOR_REPO=str(repo.root))
    return env


def _run_gates(
    state: StateDir, repo: gitops.GitRepo, config: QueueConfig, entry: Entry, worktree: Path,
    old: str, tested: str, running: RunningGate | None = None,
) -> Outcome | None:
    """Run every gate on the tested tree (the first one maybe `running` already); None when
    all passed, else the failure."""
    env = _gate_env(repo, config, entry, old, tested)

    def started(pid: int) -> None:
        _record_claim(state, entry.id, fsync=False, gate_pid=pid, gate_pid_start=procs.start_time(pid))

    for index, gate in enumerate(config.gates):
        if index == 0 and running is not None:
            run = running.finish()
        else:
            run = run_gate(gate, worktree, env, on_start=started)
        if not run.ok:
            reason = R.GATE_TIMEOUT if run.timed_out else R.GATE_FAILED
            what = (f"timed out after {gate.timeout:g}s" if run.timed_out
                    else f"exited with status {run.returncode}")
            files = tuple(gitops.changed_files(repo, old, tested))
            return _fail(entry, config.target, reason, f"gate {gate.command!r} {what}",
                         target_sha=old, files=files, gate_output=run.output_tail)
        if gitops.head_of(worktree) != tested:
            detail = f"gate {gate.command!r} committed in the merge worktree; gates must not commit"
            return _fail(entry, config.target, R.ERROR, detail, target_sha=old)
    return None


def _swap(repo: gitops.GitRepo, entry: Entry, target: str, old: str, tested: str) -> Outcome | None:
    """Move `target` from `old` to exactly `tested`: None on success, else why not."""
    moved = _fail(entry, target, R.TARGET_MOVED,
                  f"{target} moved away from {old[:12]} while the entry was tested", target_sha=old)
    holder, holder_head = next(((t.path, t.head) for t in gitops.list_worktrees(repo)
                                if t.branch == target and not t.prunable), (None, None))
    if holder is None:
        message = f"attractor merge-queue: {entry.branch} ({entry.id})"
        ok = gitops.update_ref(repo, f"refs/heads/{target}", tested, old, message=message)
        return None if ok else moved
    if not gitops.is_clean(holder, untracked=False):
        detail = (f"{target} is checked out in {holder} with uncommitted changes; commit or stash "
                  f"them, then run 'attractor merge-queue retry {entry.id}'")
        return _fail(entry, target, R.DIRTY_TARGET, detail, target_sha=old)
    if holder_head != old:
        return moved
    ok, message = gitops.merge_ff_only(holder, tested)
    if ok:
        return None
    if gitops.rev_parse(repo, f"refs/heads/{target}") != old:
        return moved
    detail = f"cannot fast-forward {target} in {holder}: {message}"
    return _fail(entry, target, R.DIRTY_TARGET, detail, target_sha=old)


def _after_merge(repo: gitops.GitRepo, config: QueueConfig, entry: Entry, head: str | None) -> str:
    """Optional steps once merged (delete the branch, push); their failures are only noted."""
    notes = []
    if config.delete_merged_branch:
        if head is None:
            notes.append(f"branch {entry.branch} kept: it has commits after the merged one")
        else:
            try:
                deleted = gitops.delete_branch(repo, entry.branch, expected_sha=head)
                notes.append(f"deleted branch {entry.branch}" if deleted
                             else f"branch {entry.branch} kept: it moved")
            except AttractorError as exc:
                notes.append(f"branch {entry.branch} kept: {exc}")
    if config.push_remote:
        ref = f"refs/heads/{config.target}"
        try:
            gitops.push(repo, config.push_remote, f"{ref}:{ref}")
            notes.append(f"pushed {config.target} to {config.push_remote}")
        except AttractorError as exc:
            logger.error("merge entry %s: %s", entry.id, exc, extra={"att_entry": entry.id})
            notes.append(f"push to {config.push_remote} failed: {exc}")
    return "; ".join(notes)


def _record_outcome(
    state: StateDir, config: QueueConfig, claimed: Entry, outcome: Outcome
) -> Outcome:
    """Write the decision into the entry, then tell the owner. A moved target (or the branch
    enqueued again meanwhile with a newer commit) sends the entry back to the queue instead."""

    def change(e: Entry) -> Entry:
        nonlocal outcome
        superseded = e.validated_sha != claimed.validated_sha
        retry = outcome.reason == R.TARGET_MOVED.value and e.retries < config.max_retries
        if outcome.reason == R.TARGET_UNTRUSTED.value:  # waits, queued, for a human; not a try
            outcome = dataclasses.replace(outcome, result=Result.REQUEUED)
            return e.moved(M.QUEUED, f"held: {outcome.detail}", claim=None)
        if outcome.result is Result.FAILED and (retry or superseded):
            why = "enqueued again with a newer commit" if superseded else outcome.detail
            outcome = dataclasses.replace(outcome, result=Result.REQUEUED)
            return e.moved(M.QUEUED, f"requeued: {why}", claim=None,
                           retries=e.retries + (0 if superseded else 1))
        if outcome.result is Result.MERGED and superseded:
            fresh = _fresh_entry(state, e)  # the newer commit still has to land
            write_entry(state, fresh)
            return e.moved(M.MERGED, f"merged {outcome.merged_sha}; newer commit is {fresh.id}",
                           claim=None, outcome=outcome, notified=True,
                           validated_sha=claimed.validated_sha)
        if outcome.result is Result.MERGED:
            return e.moved(M.MERGED, f"merged {outcome.merged_sha}", claim=None, outcome=outcome)
        return e.moved(M.FAILED, f"{outcome.reason}: {outcome.detail}", claim=None,
                       outcome=outcome, notified=False)

    entry = update_entry(state, claimed.id, change)
    logger.info("merge entry %s (%s): %s", entry.id, entry.branch, outcome.summary(),
                extra={"att_entry": entry.id})
    if entry.state in DECIDED and not entry.notified:
        _notify(state, config, entry)
    return outcome


def _fresh_entry(state: StateDir, old: Entry) -> Entry:
    now = clock.iso()
    return Entry(id=new_entry_id(state), branch=old.branch, owner=old.owner, state=M.QUEUED,
                 enqueued_at=old.enqueued_at, updated_at=now, node=old.node,
                 priority=old.priority, validated_sha=old.validated_sha,
                 history=(f"{now} enqueued again while {old.id} was merging",))


def _send(state: StateDir, config: QueueConfig, owner: str, outcome: Outcome) -> None:
    from attractor.store.signals import send

    payload: MergeComplete | MergeFailed
    if outcome.merged:
        assert outcome.merged_sha is not None
        payload = MergeComplete(entry_id=outcome.entry_id, branch=outcome.branch,
                                merged_sha=outcome.merged_sha, target=outcome.target,
                                node=outcome.node)
        kind = SignalKind.MERGE_COMPLETE
    else:
        payload = MergeFailed(entry_id=outcome.entry_id, branch=outcome.branch,
                              reason=outcome.reason or R.ERROR.value, target=outcome.target,
                              target_sha=outcome.target_sha, node=outcome.node,
                              files=list(outcome.files), gate_output=outcome.gate_output,
                              detail=outcome.detail)
        kind = SignalKind.MERGE_FAILED
    send(state, kind, to=owner, sender=config.sender, payload=payload)


def _notify(state: StateDir, config: QueueConfig, entry: Entry) -> None:
    """Send the entry's outcome to its owner, then mark it notified: at least once, since a
    crash in between sends it again on the next `process`."""
    assert entry.outcome is not None
    try:
        _send(state, config, entry.owner, entry.outcome)
    except AttractorError as exc:
        logger.error("merge entry %s: cannot notify %s: %s", entry.id, entry.owner, exc,
                     extra={"att_entry": entry.id})
        return
    update_entry(state, entry.id, lambda e: dataclasses.replace(e, notified=True), fsync=False)


def _notify_pending(state: StateDir, config: QueueConfig) -> None:
    for entry in list_entries(state):
        if entry.state in DECIDED and not entry.notified and entry.outcome is not None:
            _notify(state, config, entry)


def _recover(
    state: StateDir, repo: gitops.GitRepo, config: QueueConfig, keep: Path | None = None
) -> Outcome | None:
    """With the slot held, every `processing` entry was abandoned: kill its gate, remove its
    worktree; merged if the target holds its tested commit, else queued again as a retry."""
    decided: Outcome | None = None
    for entry in list_entries(state):
        if entry.state is not M.PROCESSING or entry.claim is None:
            continue
        claim = entry.claim
        logger.warning("merge entry %s: recovering the claim of processor pid %s", entry.id,
                       claim.pid, extra={"att_entry": entry.id})
        if claim.gate_pid:
            kill_session(claim.gate_pid, claim.gate_pid_start)
        gitops.remove_worktree(repo, Path(claim.worktree))
        tip = gitops.rev_parse(repo, f"refs/heads/{config.target}")
        tested = claim.tested_sha
        note = f"processor pid {claim.pid} died"
        outcome: Outcome | None = None
        if tested and tip and tested != claim.target_old and gitops.is_ancestor(repo, tested, tip):
            outcome = _merged(entry, config.target, tested, claim.target_old, f"{note} after swap")
        elif entry.retries >= config.max_retries:
            detail = f"{note} while processing ({entry.retries + 1} times)"
            outcome = _fail(entry, config.target, R.ERROR, detail)
        if outcome is not None:
            outcome = dataclasses.replace(outcome, decided_at=clock.iso())
            decided = decided or _record_outcome(state, config, entry, outcome)
            continue
        update_entry(state, entry.id, functools.partial(_requeue, note=f"requeued: {note}"))
    _sweep_worktrees(repo, keep)
    return decided


def _requeue(entry: Entry, note: str) -> Entry:
    return entry.moved(M.QUEUED, note, claim=None, retries=entry.retries + 1)


def _sweep_worktrees(repo: gitops.GitRepo, keep: Path | None) -> None:
    """Remove merge worktrees nobody holds (the caller holds the slot: nobody but itself holds
    any, and its own spare is `keep`)."""
    directory = repo.root / gitops.WORKTREES_DIR
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for path in [directory / n for n in names if n.startswith(MERGE_WORKTREE_PREFIX)]:
        if path == keep:
            continue
        logger.warning("removing stray merge worktree %s", path)
        gitops.remove_worktree(repo, path)
