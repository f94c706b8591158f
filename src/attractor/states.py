"""Every state machine of attractor: the enums and the allowed moves, with one `transition()`
that checks a move, names the current and allowed states in its error, and logs the change."""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import TypeVar

from attractor.errors import TransitionError, UnknownValueError

logger = logging.getLogger(__name__)


class _Named(enum.Enum):
    @classmethod
    def parse(cls, value: str, kind: str):  # type: ignore[no-untyped-def]
        try:
            return cls(value)
        except ValueError:
            raise UnknownValueError(kind, value, [m.value for m in cls]) from None


class RunStatus(enum.StrEnum):
    """A run's status in its checkpoint (`runs/<id>/checkpoint.json`). A StrEnum: its value is
    the text written to the file and compared by the readers of `status --json`."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class Outcome(enum.StrEnum):
    """How a finished node ended, as the conditional edges of a pipeline read it
    (`condition="outcome=success"`)."""

    SUCCESS = "success"
    FAIL = "fail"


class IdentityStatus(_Named):
    SPAWNING = "spawning"
    ACTIVE = "active"
    STALE = "stale"
    CRASHED = "crashed"
    RESPAWNING = "respawning"
    TERMINATED = "terminated"
    QUARANTINED = "quarantined"

    @classmethod
    def from_text(cls, value: str) -> IdentityStatus:
        result: IdentityStatus = cls.parse(value, "identity status")
        return result


class HookPhase(_Named):
    SPAWNED = "spawned"
    EXECUTING = "executing"
    IMPL_COMPLETE = "impl_complete"
    VALIDATING = "validating"
    MERGE_READY = "merge_ready"
    MERGED = "merged"
    FAILED = "failed"

    @classmethod
    def from_text(cls, value: str) -> HookPhase:
        result: HookPhase = cls.parse(value, "phase")
        return result


class SignalKind(_Named):
    ORCHESTRATOR_DONE = "ORCHESTRATOR_DONE"
    ORCHESTRATOR_STUCK = "ORCHESTRATOR_STUCK"
    NODE_IMPL_COMPLETE = "NODE_IMPL_COMPLETE"
    VALIDATION_PASSED = "VALIDATION_PASSED"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    MERGE_READY = "MERGE_READY"
    MERGE_COMPLETE = "MERGE_COMPLETE"
    MERGE_FAILED = "MERGE_FAILED"
    RESPAWN = "RESPAWN"
    SHUTDOWN = "SHUTDOWN"
    MESSAGE = "MESSAGE"  # text for a live agent, delivered through its hooks or typed into its pane
    PIPELINE_RELOAD = "PIPELINE_RELOAD"  # to a guardian: apply the edited pipeline staged in the run

    @classmethod
    def from_text(cls, value: str) -> SignalKind:
        result: SignalKind = cls.parse(value, "signal kind")
        return result


class MergeEntryState(_Named):
    QUEUED = "queued"
    PROCESSING = "processing"
    MERGED = "merged"
    FAILED = "failed"
    REMOVED = "removed"

    @classmethod
    def from_text(cls, value: str) -> MergeEntryState:
        result: MergeEntryState = cls.parse(value, "merge entry state")
        return result


class NodeState(_Named):
    PENDING = "pending"
    RUNNING = "running"
    VALIDATING = "validating"
    MERGING = "merging"
    MERGED = "merged"
    DONE = "done"  # start/exit/tool/conditional nodes that finished without a merge of their own
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"  # on a branch of a conditional that was not taken

    @classmethod
    def from_text(cls, value: str) -> NodeState:
        result: NodeState = cls.parse(value, "node state")
        return result


S = IdentityStatus
IDENTITY_MOVES: Mapping[IdentityStatus, frozenset[IdentityStatus]] = {
    S.SPAWNING: frozenset({S.ACTIVE, S.STALE, S.CRASHED, S.TERMINATED, S.QUARANTINED}),
    S.ACTIVE: frozenset({S.STALE, S.CRASHED, S.TERMINATED, S.QUARANTINED}),
    S.STALE: frozenset({S.ACTIVE, S.CRASHED, S.TERMINATED, S.QUARANTINED}),
    S.CRASHED: frozenset({S.RESPAWNING, S.TERMINATED, S.QUARANTINED}),
    S.RESPAWNING: frozenset({S.SPAWNING, S.ACTIVE, S.CRASHED, S.TERMINATED, S.QUARANTINED}),
    S.QUARANTINED: frozenset({S.RESPAWNING, S.TERMINATED}),
    S.TERMINATED: frozenset({S.SPAWNING}),
}

P = HookPhase
PHASE_MOVES: Mapping[HookPhase, frozenset[HookPhase]] = {
    P.SPAWNED: frozenset({P.EXECUTING, P.FAILED}),
    P.EXECUTING: frozenset({P.IMPL_COMPLETE, P.FAILED}),
    P.IMPL_COMPLETE: frozenset({P.VALIDATING, P.MERGE_READY, P.EXECUTING, P.FAILED}),
    # validation failed: the work goes back to the agent
    P.VALIDATING: frozenset({P.MERGE_READY, P.EXECUTING, P.FAILED}),
    # merge failed (conflict, red gate): back to the agent, or give up
    P.MERGE_READY: frozenset({P.MERGED, P.EXECUTING, P.FAILED}),
    P.MERGED: frozenset(),
    # a failed node may be retried by hand or by policy
    P.FAILED: frozenset({P.EXECUTING}),
}

M = MergeEntryState
MERGE_ENTRY_MOVES: Mapping[MergeEntryState, frozenset[MergeEntryState]] = {
    M.QUEUED: frozenset({M.PROCESSING, M.REMOVED}),
    M.PROCESSING: frozenset({M.MERGED, M.FAILED, M.QUEUED}),
    M.FAILED: frozenset({M.QUEUED, M.REMOVED}),
    M.MERGED: frozenset({M.REMOVED}),
    M.REMOVED: frozenset(),
}

N = NodeState
NODE_MOVES: Mapping[NodeState, frozenset[NodeState]] = {
    N.PENDING: frozenset({N.RUNNING, N.DONE, N.FAILED, N.BLOCKED, N.SKIPPED}),
    # RUNNING/VALIDATING -> MERGED: a restarted guardian finds the hook already merged
    N.RUNNING: frozenset({N.VALIDATING, N.MERGING, N.MERGED, N.DONE, N.FAILED, N.BLOCKED, N.PENDING}),
    N.VALIDATING: frozenset({N.RUNNING, N.MERGING, N.MERGED, N.FAILED, N.BLOCKED}),
    N.MERGING: frozenset({N.MERGED, N.RUNNING, N.FAILED, N.BLOCKED}),
    N.MERGED: frozenset(),
    N.DONE: frozenset(),
    N.FAILED: frozenset({N.PENDING}),
    N.BLOCKED: frozenset({N.PENDING}),
    N.SKIPPED: frozenset(),
}


E = TypeVar("E", bound=enum.Enum)


def transition(
    what: str, current: E, target: E, moves: Mapping[E, frozenset[E]]
) -> E:
    """Check the move `current -> target` against `moves`; raise TransitionError if illegal.

    `what` names the thing moving (`identity runner-impl_auth`) for the error and the log."""
    allowed = moves.get(current, frozenset())
    if target not in allowed:
        raise TransitionError(
            what, str(current.value), str(target.value), sorted(str(m.value) for m in allowed)
        )
    logger.info("%s: %s -> %s", what, current.value, target.value)
    return target
