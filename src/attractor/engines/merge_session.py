"""A merge session: the merge queue's processor kept across entries by a caller that hands it
one MERGE_READY at a time (the guardian's merge thread), so that the next entry is got ready
while the current one's gates run, and its gates start the moment the current one lands.

The steps, for entries N and N+1 (see merge_queue.py for the processing itself):

1. While N's gates run, `upcoming()` (the caller's) names the MERGE_READY it will hand over
   next. It is enqueued (a queue entry on disk, so a crash loses nothing) and rebased onto N's
   tested commit, as if N lands, in a spare merge worktree (`_merge-spare-<hex>`): `Prepared`.
   Nothing else is written: a preparation is a cache, and a dead processor's is swept.
2. When N lands (the compare-and-swap from N's base to exactly N's tested commit succeeded, so
   the target is now exactly the preparation's base), N+1 is claimed, if it is still the fairest
   queued entry with the same commit, and its first gate is started: `InFlight`, which holds the
   merge slot from then on, across the caller's calls. N's own bookkeeping (cleanup, outcome,
   MERGE_COMPLETE, the caller's checkpoint) then runs while N+1's gate does.
3. The caller's next call (for N+1) adopts it: the gate is waited for, then N+1 lands like any
   entry, by compare-and-swap from the preparation's base, so a target moved in between makes
   it `target_moved` and it is tested again on the new tip. A call that expects the target
   anywhere but the preparation's base does not trust the gate: the entry is put back in the
   queue as it was and processed from scratch.

If N does not land, the preparation is dropped (its worktree kept as the spare) and N+1 is
rebased onto the real tip like any entry. Without `upcoming`, `more_coming()` saying another
entry is on its way still gets a spare worktree checked out and kept for it.

A crash while N+1 is in flight leaves it `processing` with its gate's pid in its claim: the
next slot holder kills the gate and queues the entry again (merge_queue.py, staleness rule).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attractor import gitops
from attractor.engines.gates import RunningGate
from attractor.engines.merge_config import QueueConfig
from attractor.errors import AttractorError
from attractor.states import MergeEntryState
from attractor.store.merge_entries import Entry, update_entry
from attractor.store.payloads import MergeReady
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

M = MergeEntryState


@dataclass(frozen=True)
class Upcoming:
    """The MERGE_READY the session's caller hands over next, and the config to merge it with."""

    payload: MergeReady
    config: QueueConfig


@dataclass(frozen=True)
class Prepared:
    """Entry `entry_id` rebased onto `base` (the commit the current entry is tested as): its
    commit to test is `tested`, checked out in `worktree`."""

    entry_id: str
    validated_sha: str | None
    config: QueueConfig
    head: str
    source: str
    base: str
    tested: str
    worktree: Path
    seconds: float  # how long the preparation took (the entry's `rebase` timing)


def unclaim(state: StateDir, entry_id: str, note: str) -> None:
    """Put an entry this process claimed back in the queue as it was (not a retry: nothing was
    decided about it)."""

    def back(entry: Entry) -> Entry:
        if entry.state is not M.PROCESSING or entry.claim is None or entry.claim.pid != os.getpid():
            return entry
        return entry.moved(M.QUEUED, note, claim=None)

    update_entry(state, entry_id, back)


@dataclass
class InFlight:
    """A prepared entry, claimed, its first gate running on exactly `prepared.base`; `slot`
    holds the merge slot until the entry is decided or dropped."""

    state: StateDir
    repo: gitops.GitRepo
    entry: Entry
    prepared: Prepared
    gate: RunningGate
    slot: contextlib.ExitStack

    def drop(self, note: str, *, keep: bool) -> Path | None:
        """Stop it: kill its gate, queue the entry again as it was, let go of the slot. The
        worktree is returned when `keep` (to serve as the spare), else removed."""
        try:
            self.gate.close()
            unclaim(self.state, self.entry.id, note)
            if not keep:
                gitops.remove_worktree(self.repo, self.prepared.worktree)
        except AttractorError as exc:  # the next slot holder recovers what is left
            logger.warning("merge entry %s: dropping it: %s", self.entry.id, exc, extra={"att_entry": self.entry.id})
        finally:
            self.slot.close()
        return self.prepared.worktree if keep else None


class MergeSession:
    """A merge processor that lives across entries (see the module docstring). `upcoming`
    names the next MERGE_READY (or None: none yet); `more_coming` says one is on its way.
    `close()` drops an entry still in flight and removes a spare left over."""

    def __init__(self, more_coming: Callable[[], bool] | None = None,
                 upcoming: Callable[[], Upcoming | None] | None = None) -> None:
        self.more_coming = more_coming
        self.upcoming = upcoming
        self.spare: Path | None = None
        self.repo: gitops.GitRepo | None = None
        self.inflight: InFlight | None = None

    def close(self) -> None:
        inflight, self.inflight = self.inflight, None
        if inflight is not None:
            inflight.drop("requeued: the merge session closed", keep=False)
        if self.spare is not None and self.repo is not None:
            with contextlib.suppress(AttractorError):
                gitops.remove_worktree(self.repo, self.spare)
        self.spare = None
