"""Hooks: how far one runner/orchestrator pair got, at `hooks/<role>-<name>.json`.

A hook survives its agent: a respawned orchestrator's prompt starts with the wisdom block built
from it (`build_wisdom_prompt_block`), so the new session knows what is done and what to skip.

Fields (schema 1):
    schema                   1
    role, name, agent_id     whose hook it is (`agent_id` = `<role>-<name>`)
    node                     the pipeline node it works on, or null
    phase                    states.HookPhase: spawned, executing, impl_complete, validating,
                             merge_ready, merged, failed; moves checked by states.PHASE_MOVES
    history                  [{at, from, to, note, commit}] every phase change, oldest first
    resumption_instructions  free text for the next session (what to fix, where to look)
    last_commit              the last commit reported with a phase change, or null
    attempts                 how many times the hook entered `executing`
    run_id                   the run the hook belongs to ("" in records written before runs were
                             recorded); a reader that names its run treats another run's hook as
                             absent, and creating a hook for a run retires another run's one
    created_at, updated_at   ISO-8601 UTC

Staleness rule: a hook never goes stale by age; it is current until its phase is `merged` (final)
or a supervisor moves it on. Liveness of the agent itself lives in the identity registry.

Writes: read-modify-write under `<file>.lock` with a re-read after locking; atomic replace with
fsync (a lost phase change is expensive to recreate).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor import clock, names
from attractor.errors import BadInputError, CorruptStateError, NotFoundError
from attractor.states import PHASE_MOVES, HookPhase, transition
from attractor.store import atomic, formats, locks, records
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

SCHEMA = formats.SCHEMA
HISTORY_LIMIT = formats.HISTORY_LIMIT
TEXT_LIMIT = formats.TEXT_LIMIT
P = HookPhase


def _check_text(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadInputError(what, f"expected text, got {type(value).__name__}")
    if len(value) > TEXT_LIMIT:
        raise BadInputError(what, f"{len(value)} characters is over the limit of {TEXT_LIMIT}")
    if "\x00" in value:
        raise BadInputError(what, "contains a NUL character")
    return value


def check_commit(value: Any) -> str | None:
    """A commit id: 4-64 hex digits (lowercased), or None."""
    if value is None:
        return None
    text = value.lower() if isinstance(value, str) else value
    if not formats.is_commit(text):
        raise BadInputError("commit", f"{value!r} is not a commit id; give 4-64 hex digits")
    return text


def _check_node(value: Any) -> str | None:
    return None if value is None else names.validate_name(value, "node")


@dataclass(frozen=True)
class Hook:
    schema: int
    role: str
    name: str
    agent_id: str
    node: str | None
    phase: HookPhase
    history: tuple[dict[str, Any], ...]
    resumption_instructions: str
    last_commit: str | None
    attempts: int
    updated_at: str
    created_at: str
    run_id: str = ""

    @property
    def quarantined(self) -> bool:
        """The hook's last move was to failed because the node's agent is quarantined."""
        return bool(self.history and self.history[-1].get("quarantined") is True)

    def to_json(self) -> dict[str, Any]:
        data = {f: getattr(self, f) for f in _FIELD_NAMES}  # asdict deep-copies: 10x slower
        data["phase"] = self.phase.value
        data["history"] = [dict(entry) for entry in self.history]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Hook:
        """Strict: a missing, unknown or mistyped field is a BadInputError naming it."""
        what = "hook record"
        # run_id: "" in hooks written before hooks named their run
        data = records.fields(what, data, _FIELD_NAMES, SCHEMA, types={"run_id": (str,)},
                              older={"run_id": ""})
        attempts = data["attempts"]
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise BadInputError(what, f"field 'attempts' must be an integer >= 0, not {attempts!r}")
        for key in ("created_at", "updated_at"):
            try:
                clock.parse_iso(data[key])
            except (TypeError, ValueError, AttributeError):
                raise BadInputError(what, f"field {key!r} is not ISO-8601: {data[key]!r}") from None
        history = data["history"]
        if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
            raise BadInputError(what, "field 'history' must be a list of objects")
        role = names.validate_role(data["role"])
        name = names.validate_name(data["name"])
        if data["agent_id"] != f"{role}-{name}":
            raise BadInputError(what, f"agent_id {data['agent_id']!r} does not match {role}-{name}")
        return cls(
            schema=SCHEMA,
            role=role,
            name=name,
            agent_id=data["agent_id"],
            node=_check_node(data["node"]),
            phase=HookPhase.from_text(data["phase"]),
            history=tuple(history),
            resumption_instructions=_check_text(
                "resumption instructions", data["resumption_instructions"]
            ),
            last_commit=check_commit(data["last_commit"]),
            attempts=attempts,
            updated_at=data["updated_at"],
            created_at=data["created_at"],
            run_id=data["run_id"],
        )


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Hook))


# --------------------------------------------------------------------------- reading


def path_for(state: StateDir, role: str, name: str) -> Path:
    """The hook's path; validates role and name first, so nothing odd ever reaches a path."""
    return state.hooks / f"{names.agent_id(role, name)}.json"


def _not_found(path: Path) -> NotFoundError:
    role, name = names.split_agent_id(path.stem)
    return NotFoundError("hook", path.stem, f"create it with `attractor hook create {role} {name}`")


_RECORDS = records.Kind("hook record", SCHEMA, Hook.from_json, _not_found, stem=lambda hook: hook.agent_id)


def _other_run(hook: Hook, run_id: str | None) -> bool:
    return bool(run_id and hook.run_id and hook.run_id != run_id)


def read_hook(state: StateDir, role: str, name: str, *, run_id: str | None = None) -> Hook:
    """The hook; with `run_id`, a hook of another run counts as absent (NotFoundError)."""
    hook = _RECORDS.get(path_for(state, role, name))
    if _other_run(hook, run_id):
        raise NotFoundError("hook", hook.agent_id, f"the one there belongs to run {hook.run_id}, not {run_id}")
    return hook


def find_hook(state: StateDir, role: str, name: str, *, run_id: str | None = None) -> Hook | None:
    """The hook, or None when there is none (with `run_id`: none of that run). A corrupt one
    still raises CorruptStateError, after moving it aside."""
    hook = _RECORDS.find(path_for(state, role, name))
    return None if hook is None or _other_run(hook, run_id) else hook


def list_hooks(state: StateDir, problems: list[CorruptStateError] | None = None) -> list[Hook]:
    """Every readable hook, sorted by agent id. Corrupt files are moved aside, logged and
    appended to `problems`; they never raise."""
    return _RECORDS.list(state.hooks, problems)


# --------------------------------------------------------------------------- writing


def create_hook(
    state: StateDir, role: str, name: str, *, node: str | None = None, instructions: str = "",
    run_id: str = "",
) -> Hook:
    """Create the hook in phase `spawned`; an existing hook of the same run is returned
    unchanged, so a respawned runner keeps its history. A hook of another run is retired
    (kept beside the data as `<name>.json.retired-<stamp>`) and a fresh one created."""
    path = path_for(state, role, name)
    node = _check_node(node)
    instructions = _check_text("resumption instructions", instructions)
    state.ensure("hooks")
    with locks.file_lock(path):
        try:
            existing = _RECORDS.load(path, locked=True)
        except FileNotFoundError:
            existing = None
        except CorruptStateError as exc:
            logger.warning("recreating hook %s: %s", path.stem, exc)
            existing = None
        if existing is not None and run_id and existing.run_id and existing.run_id != run_id:
            stamp = clock.iso().replace(":", "").replace("-", "")
            os.replace(path, path.with_name(f"{path.name}.retired-{stamp}"))
            logger.warning("hook %s belonged to run %s; retired for run %s", existing.agent_id, existing.run_id,
                           run_id)
            existing = None
        if existing is not None:
            if node is not None and existing.node not in (None, node):
                logger.warning("hook %s is for node %s, not %s; keeping it",
                               existing.agent_id, existing.node, node)
            return existing
        now = clock.iso()
        record = Hook(
            schema=SCHEMA, role=role, name=name, agent_id=path.stem, node=node, phase=P.SPAWNED,
            history=({"at": now, "from": None, "to": P.SPAWNED.value, "note": "created",
                      "commit": None},),
            resumption_instructions=instructions, last_commit=None, attempts=0,
            updated_at=now, created_at=now, run_id=run_id,
        )
        atomic.write_json_atomic(path, record.to_json())
    logger.info("hook %s created (node %s)", record.agent_id, node, extra={"att_agent": path.stem})
    return record


def _modify(state: StateDir, role: str, name: str, change: Callable[[Hook, str], Hook]) -> Hook:
    """Read-modify-write one existing hook under its lock; `change` returns the same object to
    leave the file untouched."""
    return _RECORDS.modify(path_for(state, role, name), lambda current: change(current, clock.iso()),
                           prepare=lambda: state.ensure("hooks"))


def update_phase(
    state: StateDir,
    role: str,
    name: str,
    phase: HookPhase | str,
    *,
    note: str = "",
    commit: str | None = None,
    quarantined: bool = False,
) -> Hook:
    """Move the hook to `phase` (checked by states.PHASE_MOVES), recording the note and commit.
    Asking for the current phase again changes nothing (a retried report is harmless), except
    that a new commit given with it is kept as `last_commit`. `quarantined` marks a move to
    failed made because the node's agent is quarantined (the node is blocked, not failed)."""
    path_for(state, role, name)  # validate the names before anything else
    target = phase if isinstance(phase, HookPhase) else HookPhase.from_text(phase)
    note = _check_text("note", note)
    sha = check_commit(commit)

    def change(current: Hook, now: str) -> Hook:
        if current.phase is target:
            if sha is None or sha == current.last_commit:
                return current
            return dataclasses.replace(current, last_commit=sha, updated_at=now)
        transition(f"hook {current.agent_id}", current.phase, target, PHASE_MOVES)
        entry: dict[str, Any] = {"at": now, "from": current.phase.value, "to": target.value, "note": note,
                                 "commit": sha}
        if quarantined:
            entry["quarantined"] = True
        return dataclasses.replace(
            current,
            phase=target,
            history=(*current.history, entry)[-HISTORY_LIMIT:],
            last_commit=sha or current.last_commit,
            attempts=current.attempts + (1 if target is P.EXECUTING else 0),
            updated_at=now,
        )

    return _modify(state, role, name, change)


def update_resumption_instructions(state: StateDir, role: str, name: str, text: str) -> Hook:
    """Replace the resumption instructions the next session will read."""
    path_for(state, role, name)
    text = _check_text("resumption instructions", text)

    def change(current: Hook, now: str) -> Hook:
        if current.resumption_instructions == text:
            return current
        return dataclasses.replace(current, resumption_instructions=text, updated_at=now)

    return _modify(state, role, name, change)


def mark_merged(state: StateDir, role: str, name: str, commit: str) -> Hook:
    """merge_ready -> merged, recording the merged commit."""
    if commit is None:
        raise BadInputError("commit", "mark_merged needs the merged commit id")
    return update_phase(state, role, name, P.MERGED, note="merged", commit=commit)


# --------------------------------------------------------------------------- wisdom block

_NOTE_LIMIT = 600
_HISTORY_SHOWN = 8

# phase -> (already done, what to skip, what to do now); `{commit}` is the last commit.
_GUIDANCE: dict[HookPhase, tuple[str, str, str]] = {
    P.SPAWNED: (
        "Nothing yet: the previous session stopped before it started working.",
        "Nothing to skip.",
        "Start the task from the beginning.",
    ),
    P.EXECUTING: (
        "Work was in progress{at_commit}. Anything already committed on your branch, and any "
        "uncommitted changes in your worktree, are that session's partial work.",
        "Do not start over, do not reset or re-create the branch, and do not redo steps whose "
        "results are already committed.",
        "Run `git status` and `git log --oneline -10` in your worktree to see what exists, "
        "finish the remaining work, commit it, and report completion as your instructions say.",
    ),
    P.IMPL_COMPLETE: (
        "The implementation was finished and reported complete{at_commit}.",
        "Do not re-implement, rewrite or extend the finished work; do not amend or rebase its "
        "commits.",
        "Change nothing unless the resumption instructions below ask for it. If you are unsure "
        "whether the completion report went out, send it again (reports are idempotent).",
    ),
    P.VALIDATING: (
        "The implementation is complete{at_commit} and the supervisor is validating it.",
        "Do not change or commit anything on the branch while validation runs: that would "
        "invalidate the commit under test.",
        "Wait. Act only if the resumption instructions below report a validation failure.",
    ),
    P.MERGE_READY: (
        "The work passed validation{at_commit} and is queued for merging.",
        "Do not commit to the branch: the merge queue tests and lands the exact queued commit.",
        "Wait for the merge result. Act only if the resumption instructions below report a "
        "merge failure.",
    ),
    P.MERGED: (
        "The work is merged{at_commit}. This node is finished.",
        "Everything: there is nothing left to implement.",
        "Do nothing further; report that the node is already merged and stop.",
    ),
    P.FAILED: (
        "The previous attempt failed{at_commit}; the reason is in the history and instructions "
        "below.",
        "Do not repeat the approach that failed.",
        "Read the failure note first, fix its cause, then finish the task and report completion.",
    ),
}


def _short(text: str, limit: int = _NOTE_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 15].rstrip() + " ...(truncated)"


def _phase_path(hook: Hook) -> str:
    steps: list[str] = []
    for entry in hook.history:
        to = entry.get("to")
        if isinstance(to, str) and (not steps or steps[-1] != to):
            steps.append(to)
    return " -> ".join(steps) if steps else hook.phase.value


def _sent_back(hook: Hook) -> dict[str, Any] | None:
    """The latest move back into executing from a later phase (validation or merge failed)."""
    for entry in reversed(hook.history):
        if entry.get("to") == P.EXECUTING.value and entry.get("from") not in (None, "spawned"):
            return dict(entry)
    return None


def build_wisdom_prompt_block(hook: Hook) -> str:
    """The text a respawned agent's prompt starts with: the last phase reached, what is already
    done, what to skip, and the resumption instructions. Deterministic: built from the hook
    alone (no clock, no environment), so the same hook always gives the same text."""
    at_commit = f" at commit {hook.last_commit}" if hook.last_commit else ""
    done, skip, now = (text.format(at_commit=at_commit) for text in _GUIDANCE[hook.phase])
    since = hook.history[-1].get("at", hook.updated_at) if hook.history else hook.updated_at
    node = f" on node {hook.node}" if hook.node else ""
    lines = [
        f"## Resuming {hook.agent_id}{node}: read this before anything else",
        "",
        "You are a respawned agent. An earlier session of this agent stopped before the work "
        "was finished. These notes come from its hook file and are authoritative: continue "
        "from them instead of starting over.",
        "",
        f"- Last phase reached: {hook.phase.value} (since {since})",
        f"- Phases passed: {_phase_path(hook)}",
        f"- Last known commit: {hook.last_commit or 'none recorded'}",
        f"- Attempts at executing so far: {hook.attempts}",
    ]
    back = _sent_back(hook)
    if back is not None and hook.phase in (P.EXECUTING, P.FAILED):
        reason = _short(str(back.get("note") or "")) or "no reason recorded"
        lines.append(f"- Sent back to work from {back.get('from')}: {reason}")
    if hook.last_commit:
        lines.append(
            f"- Inspect the last commit with `git show --stat {hook.last_commit}` in your worktree."
        )
    lines += [
        "",
        "### Already done",
        done,
        "",
        "### Skip",
        skip,
        "",
        "### Do now",
        now,
        "",
        "### Resumption instructions",
        hook.resumption_instructions.strip() or "(none given)",
    ]
    shown = hook.history[-_HISTORY_SHOWN:]
    if shown:
        lines += ["", f"### Phase history (last {len(shown)} of {len(hook.history)})"]
        for entry in shown:
            step = f"{entry.get('from') or 'new'} -> {entry.get('to')}"
            extras = [f"commit {entry['commit']}"] if entry.get("commit") else []
            if entry.get("note"):
                extras.append(_short(str(entry["note"])))
            detail = f": {'; '.join(extras)}" if extras else ""
            lines.append(f"- {entry.get('at')} {step}{detail}")
    lines += ["", "## End of resumption notes; your task follows.", ""]
    return "\n".join(lines)
