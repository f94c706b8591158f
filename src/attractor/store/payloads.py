"""Typed payloads of signals, one frozen record per kind, with `to_json`/`from_json`.

`from_json` is strict: a missing required field, an unknown field or a value of the wrong type is
a `BadInputError` naming the kind and the field. Optional fields have defaults.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

from attractor.errors import BadInputError
from attractor.states import SignalKind
from attractor.store.formats import JSON_TYPES

_JSON_TYPES = JSON_TYPES


class MergeFailureReason(enum.Enum):
    CONFLICT = "conflict"
    GATE_FAILED = "gate_failed"
    GATE_TIMEOUT = "gate_timeout"
    TARGET_MOVED = "target_moved"
    BRANCH_MISSING = "branch_missing"
    DIRTY_TARGET = "dirty_target"
    # the target is not where its owner last saw the queue leave it (a commit landed outside
    # the queue): nothing is merged onto it; the entry waits, queued, for a human
    TARGET_UNTRUSTED = "target_untrusted"
    ERROR = "error"


@dataclass(frozen=True)
class Payload:
    kind: ClassVar[SignalKind]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Self:
        what = f"{cls.kind.value} payload"
        if not isinstance(data, dict):
            raise BadInputError(what, f"expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise BadInputError(what, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
        hints = {name: str(t) for name, t in cls.__annotations__.items()}
        for name, f in fields.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name not in data:
                if required:
                    raise BadInputError(what, f"missing required field {name!r}")
                continue
            allowed = _JSON_TYPES.get(hints[name])
            value = data[name]
            if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
                raise BadInputError(what, f"field {name!r} must be {hints[name]}, got {value!r}")
            if hints[name] == "list[str]" and not all(isinstance(v, str) for v in value):
                raise BadInputError(what, f"field {name!r} must be a list of strings")
        return cls(**data)


@dataclass(frozen=True)
class OrchestratorDone(Payload):
    kind = SignalKind.ORCHESTRATOR_DONE
    node: str
    commit: str | None = None
    summary: str = ""


@dataclass(frozen=True)
class OrchestratorStuck(Payload):
    kind = SignalKind.ORCHESTRATOR_STUCK
    node: str
    reason: str = ""
    quarantined: bool = False  # the node is blocked (its agent is quarantined), not failed


@dataclass(frozen=True)
class NodeImplComplete(Payload):
    kind = SignalKind.NODE_IMPL_COMPLETE
    node: str
    branch: str
    commit: str
    worktree: str = ""


@dataclass(frozen=True)
class ValidationPassed(Payload):
    kind = SignalKind.VALIDATION_PASSED
    node: str
    commit: str
    output: str = ""


@dataclass(frozen=True)
class ValidationFailed(Payload):
    kind = SignalKind.VALIDATION_FAILED
    node: str
    commit: str
    output: str = ""
    attempt: int = 1


@dataclass(frozen=True)
class MergeReady(Payload):
    kind = SignalKind.MERGE_READY
    node: str
    branch: str
    commit: str
    owner: str  # agent id that receives MERGE_COMPLETE / MERGE_FAILED
    priority: int = 0


@dataclass(frozen=True)
class MergeComplete(Payload):
    kind = SignalKind.MERGE_COMPLETE
    entry_id: str
    branch: str
    merged_sha: str
    target: str
    node: str | None = None


@dataclass(frozen=True)
class MergeFailed(Payload):
    kind = SignalKind.MERGE_FAILED
    entry_id: str
    branch: str
    reason: str  # a MergeFailureReason value
    target: str
    target_sha: str | None = None
    node: str | None = None
    files: list[str] = field(default_factory=list)
    gate_output: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Respawn(Payload):
    kind = SignalKind.RESPAWN
    reason: str = ""


@dataclass(frozen=True)
class Shutdown(Payload):
    kind = SignalKind.SHUTDOWN
    reason: str = ""


@dataclass(frozen=True)
class AgentMessage(Payload):
    """Text for a live agent (`attractor agent send`, or the guardian's "validation failed: …")."""

    kind = SignalKind.MESSAGE
    text: str
    author: str = ""


@dataclass(frozen=True)
class PipelineReload(Payload):
    """An edited pipeline, linted and staged in the run's directory with its parsed form
    (`staged`, whose bytes have SHA-256 `sha256`), for the guardian to apply."""

    kind = SignalKind.PIPELINE_RELOAD
    staged: str
    sha256: str
    source: str = ""


PAYLOAD_TYPES: dict[SignalKind, type[Payload]] = {
    cls.kind: cls
    for cls in (
        OrchestratorDone, OrchestratorStuck, NodeImplComplete, ValidationPassed,
        ValidationFailed, MergeReady, MergeComplete, MergeFailed, Respawn, Shutdown, AgentMessage,
        PipelineReload,
    )
}


P = TypeVar("P", bound=Payload)


def payload_from_json(kind: SignalKind, data: Any) -> Payload:
    return PAYLOAD_TYPES[kind].from_json(data)


def expect(payload: Payload, cls: type[P], what: str) -> P:
    """`payload` as the record type its signal kind promises; `what` names the signal."""
    if not isinstance(payload, cls):
        raise BadInputError(what, f"carries a {type(payload).__name__} payload, not {cls.__name__}")
    return payload
