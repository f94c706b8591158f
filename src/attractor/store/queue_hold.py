"""A hold on the merge queue, at `merge-queue/hold.json`: while it exists, no entry is merged.

The guardian puts the hold when the target branch moved to something the queue did not put there
(a commit landed outside the queue, or the tip after a merge is not the commit the queue moved it
to): a human decides what to do with the target, then lifts the hold with
`attractor merge-queue resume`.

Fields (schema 1): schema, reason (text), target (branch), expected (the sha the queue last put
there, or null), found (the sha found), held_at (ISO-8601 UTC), held_by (agent id), repo (the
target repository's path, or "").

`merge-queue/resumed.json` ({schema, tip, at}) records the target's tip when a human lifted the
hold: the tip they accepted. The guardian goes on from exactly that tip; a commit that lands
after the decision is held again.

Staleness rule: none; a hold lasts until it is lifted by hand. Written atomically with fsync.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor import clock
from attractor.errors import CorruptStateError, NotFoundError
from attractor.store import atomic, records
from attractor.store.statedir import StateDir

SCHEMA = 1
FIELDS = ("schema", "reason", "target", "expected", "found", "held_at", "held_by", "repo")
_TYPES: dict[str, tuple[type, ...]] = {
    "reason": (str,), "target": (str,), "expected": records.OPTIONAL_TEXT, "found": records.OPTIONAL_TEXT,
    "held_at": (str,), "held_by": (str,), "repo": (str,),
}


@dataclass(frozen=True)
class Hold:
    reason: str
    target: str
    expected: str | None
    found: str | None
    held_at: str
    held_by: str
    repo: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "reason": self.reason, "target": self.target, "expected": self.expected,
                "found": self.found, "held_at": self.held_at, "held_by": self.held_by, "repo": self.repo}

    @classmethod
    def from_json(cls, data: Any) -> Hold:
        """Strict: a missing, unknown or mistyped field is a BadInputError naming it."""
        values = records.fields("queue hold", data, FIELDS, SCHEMA, types=_TYPES)
        values.pop("schema")
        return cls(**values)


# written without a lock of its own (the guardian and `merge-queue resume` write it): lock=False
_RECORDS = records.Kind("queue hold", SCHEMA, Hold.from_json,
                        lambda path: NotFoundError("queue hold", path.name), lock=False)


def _path(state: StateDir) -> Path:
    return state.merge_queue / "hold.json"


def read(state: StateDir) -> Hold | None:
    """The hold, or None. A corrupt hold file is moved aside and still counts as a hold, so a
    damaged file never lets merging go on unseen."""
    try:
        return _RECORDS.find(_path(state))
    except CorruptStateError as exc:
        # a damaged hold is still a hold: written anew, with what happened
        return hold(state, f"the hold file was corrupt ({exc}); a human decides, then resumes",
                    target="?", expected=None, found=None, held_by="queue-hold")


def hold(state: StateDir, reason: str, *, target: str, expected: str | None, found: str | None,
         held_by: str, repo: str = "") -> Hold:
    record = Hold(reason, target, expected, found, clock.iso(), held_by, repo)
    state.ensure("merge-queue")
    atomic.write_json_atomic(_path(state), record.to_json())
    return record


def lift(state: StateDir, accepted_tip: str | None = None) -> Hold | None:
    """Remove the hold, recording the target tip the human accepted; returns what it was (None
    when there was none)."""
    current = read(state)
    if current is not None:
        atomic.write_json_atomic(state.merge_queue / "resumed.json",
                                 {"schema": SCHEMA, "tip": accepted_tip, "at": clock.iso()})
    with contextlib.suppress(FileNotFoundError):
        _path(state).unlink()
    return current


def write_trusted_tip(state: StateDir, tip: str) -> None:
    """`merge-queue/trusted.json`: the target tip the guardian last saw the queue leave."""
    state.ensure("merge-queue")
    atomic.write_json_atomic(state.merge_queue / "trusted.json", {"schema": SCHEMA, "tip": tip, "at": clock.iso()})


def trusted_tip(state: StateDir) -> str | None:
    try:
        data = atomic.read_json_object(state.merge_queue / "trusted.json", schema=SCHEMA)
    except (FileNotFoundError, CorruptStateError):
        return None
    tip = data.get("tip")
    return tip if isinstance(tip, str) and tip else None


def accepted_tip(state: StateDir) -> str | None:
    """The tip recorded by the last lift, or None."""
    try:
        data = atomic.read_json_object(state.merge_queue / "resumed.json", schema=SCHEMA)
    except (FileNotFoundError, CorruptStateError):
        return None
    tip = data.get("tip")
    return tip if isinstance(tip, str) and tip else None
