"""Signals: one maildir inbox per agent, delivered by rename, claimed by rename, epoch-checked.

Path: `signals/<agent-id>/{tmp,new,cur,done}/` under the state directory.

- A sender writes `tmp/<id>.json` (0600, fsync) and renames it to `new/<id>.json`, so `new/` only
  ever holds whole files. `<id>` is `<stamp>-<pid>-<rand>` (`20260124T010203.123456789Z-4711-
  a1b2c3d4`): UTC time to the nanosecond, the sender's pid, 8 random hex digits; ids sort by time.
- A consumer claims a signal by renaming `new/<id>.json` to `cur/<id>.by-<pid>-<start>.json`
  (`<start>` is the claimer's process start time from /proc, 0 where unknown, so a reused pid is
  not mistaken for the claimer). Exactly one claimer's rename succeeds.
- When handled, the record with its outcome is written atomically to `done/<id>.json`, then the
  claim is removed. A signal whose id is already in `done/` is never handled again (a crash
  between those two steps leaves such a copy behind).
- `sweep_dead_claims` renames claims whose claimer is dead back to `new/`.

Fields (schema 1): `schema`, `id`, `kind` (a `SignalKind` value), `sender` and `recipient` (agent
ids), `epoch` (the recipient's spawn epoch when sent, or null when it had no identity),
`payload` (the kind's typed record, see `payloads.py`), `created_at` (ISO-8601 UTC), and, once
handled, `outcome`, `handled_at`, `handled_by`, `detail`.

Staleness: a signal whose `epoch` is older than the recipient's current spawn epoch was addressed
to an earlier incarnation; it is completed with outcome `stale` and logged, never acted on. A
signal with no epoch, or the current (or a newer) one, is delivered.

Corrupt files (bad JSON, unknown kind, wrong fields) found in `new/`, `cur/` or `done/`, and
names there that are no readable file (a directory, a symbolic link, a pipe, a read error), are
moved aside to `<name>.corrupt-<stamp>` with the reason, logged with their path, and skipped:
one bad entry never stops a consumer from reading the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor import clock, names, procs
from attractor.errors import (
    BadInputError,
    CorruptStateError,
    NoSpaceError,
    TimeoutExpiredError,
    UnknownValueError,
    UsageError,
    no_space,
)
from attractor.states import SignalKind
from attractor.store import atomic, formats, wakeup
from attractor.store.payloads import PAYLOAD_TYPES, Payload, payload_from_json
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

SCHEMA = formats.SCHEMA
BOXES = ("new", "cur", "done")
DEFAULT_RESCAN_INTERVAL = 2.0
NO_EVENTS_RESCAN_INTERVAL = 1.0  # seconds between rescans where no file-system events come
# A temp file older than this is an orphan even if its sender's pid is alive again (reused).
ORPHAN_TMP_AGE = 600.0
# How often a waiting loop looks at an outside stop event between wake-ups.

_ID_PATTERN = r"\d{8}T\d{6}\.\d{9}Z-\d+-[0-9a-f]{8}"
_ID_RE = re.compile(_ID_PATTERN)
_FILE_RE = re.compile(rf"(?P<id>{_ID_PATTERN})\.json")
_CLAIM_RE = re.compile(rf"(?P<id>{_ID_PATTERN})\.by-(?P<pid>\d+)-(?P<start>\d+)\.json")
_FIELDS = formats.SIGNAL_FIELDS

KindsArg = Iterable[SignalKind | str] | None
Predicate = Callable[["Signal"], bool]


@dataclass(frozen=True)
class Signal:
    id: str
    kind: SignalKind
    sender: str
    recipient: str
    epoch: int | None
    payload: Payload
    created_at: str
    outcome: str | None = None
    handled_at: str | None = None
    handled_by: str | None = None
    detail: str = ""
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "id": self.id,
            "kind": self.kind.value,
            "sender": self.sender,
            "recipient": self.recipient,
            "epoch": self.epoch,
            "payload": self.payload.to_json(),
            "created_at": self.created_at,
            "outcome": self.outcome,
            "handled_at": self.handled_at,
            "handled_by": self.handled_by,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: Any) -> Signal:
        """Strict: every field present, no unknown field, each of the right type."""
        what = "signal record"
        if not isinstance(data, dict):
            raise BadInputError(what, f"expected a JSON object, got {type(data).__name__}")
        missing = [f for f in _FIELDS if f not in data]
        unknown = sorted(set(data) - set(_FIELDS))
        if missing or unknown:
            parts = ([f"missing field(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            )
            raise BadInputError(what, "; ".join(parts))
        if data["schema"] != SCHEMA:
            raise BadInputError(what, f"schema {data['schema']!r} is not the supported {SCHEMA}")
        if not isinstance(data["id"], str) or not _ID_RE.fullmatch(data["id"]):
            raise BadInputError(what, f"id {data['id']!r} is not <stamp>-<pid>-<rand>")
        if not isinstance(data["kind"], str):
            raise BadInputError(what, f"kind must be a string, got {data['kind']!r}")
        kind = SignalKind.from_text(data["kind"])
        for name in ("sender", "recipient"):
            names.validate_agent_id(data[name])
        epoch = data["epoch"]
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
            raise BadInputError(what, f"epoch must be an integer or null, got {epoch!r}")
        if not isinstance(data["created_at"], str):
            raise BadInputError(what, f"created_at must be a string, got {data['created_at']!r}")
        try:
            clock.parse_iso(data["created_at"])
        except ValueError:
            problem = f"created_at {data['created_at']!r} is not ISO-8601"
            raise BadInputError(what, problem) from None
        for name in ("outcome", "handled_at", "handled_by"):
            if data[name] is not None and not isinstance(data[name], str):
                raise BadInputError(what, f"{name} must be a string or null, got {data[name]!r}")
        if not isinstance(data["detail"], str):
            raise BadInputError(what, f"detail must be a string, got {data['detail']!r}")
        return cls(
            id=data["id"], kind=kind, sender=data["sender"], recipient=data["recipient"],
            epoch=epoch, payload=payload_from_json(kind, data["payload"]),
            created_at=data["created_at"], outcome=data["outcome"],
            handled_at=data["handled_at"], handled_by=data["handled_by"], detail=data["detail"],
        )


SignalList = list[Signal]


@dataclass(frozen=True)
class Claim:
    """A signal this process holds in `cur/`; pass it to `Inbox.complete` or `Inbox.release`."""

    signal: Signal
    path: Path


# --------------------------------------------------------------------------- helpers


def parse_kinds(kinds: KindsArg) -> frozenset[SignalKind] | None:
    if kinds is None:
        return None
    return frozenset(k if isinstance(k, SignalKind) else SignalKind.from_text(k) for k in kinds)


new_signal_id = formats.new_signal_id


def _process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live, non-zombie process; None if it is dead.
    0 when /proc is not available and the process exists."""
    start = procs.start_time(pid)
    if start is not None or procs.have_proc():
        return start
    return 0 if procs.pid_alive(pid) else None


def _claimer_alive(pid: int, start: int) -> bool:
    current = _process_start(pid)
    if current is None:
        return False
    return start == 0 or current == 0 or current == start


def _my_claim_suffix() -> str:
    pid = os.getpid()
    return f"{pid}-{_process_start(pid) or 0}"


def _box(state: StateDir, agent_id: str, box: str) -> Path:
    return state.signals / agent_id / box


def ensure_inbox(state: StateDir, agent_id: str) -> Path:
    """Create `signals/<agent_id>/{tmp,new,cur,done}` privately; returns the inbox directory."""
    names.validate_agent_id(agent_id)
    state.ensure()
    inbox = state.signals / agent_id
    for path in (state.signals, inbox, *(inbox / b for b in ("tmp", *BOXES))):
        atomic.ensure_private_dir(path)
    return inbox


def _as_state(state: StateDir | str | os.PathLike[str]) -> StateDir:
    return state if isinstance(state, StateDir) else StateDir(Path(state))


def _agents(state: StateDir, agent_id: str | None) -> list[str]:
    if agent_id is not None:
        return [names.validate_agent_id(agent_id)]
    try:
        entries = sorted(os.listdir(state.signals))
    except FileNotFoundError:
        return []
    result = []
    for entry in entries:
        try:
            names.validate_agent_id(entry)
        except UsageError:
            continue
        if (state.signals / entry).is_dir():
            result.append(entry)
    return result


def inbox_agents(state: StateDir) -> list[str]:
    """The agent ids that have an inbox under `signals/`."""
    return _agents(_as_state(state), None)


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- sending


def _build_payload(kind: SignalKind, payload: Payload | dict[str, Any] | None) -> Payload:
    what = f"{kind.value} payload"
    if payload is None:
        cls = PAYLOAD_TYPES[kind]
        required = [
            f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if required:
            raise BadInputError(
                what, f"required field(s) {', '.join(required)}; pass them with --payload JSON"
            )
        return cls()
    if isinstance(payload, Payload):
        if payload.kind is not kind:
            raise BadInputError(what, f"got a {payload.kind.value} payload")
        return payload
    return payload_from_json(kind, payload)


def send(
    state: StateDir,
    kind: SignalKind | str,
    *,
    to: str,
    sender: str,
    payload: Payload | dict[str, Any] | None = None,
    epoch: int | None = None,
) -> Signal:
    """Deliver one signal into `to`'s inbox: write `tmp/<id>.json`, fsync, rename into `new/`.

    Everything is validated before anything is written. `epoch=None` addresses the recipient's
    current spawn epoch (`identities.current_epoch`), or none if it has no identity yet."""
    state = _as_state(state)
    kind = kind if isinstance(kind, SignalKind) else SignalKind.from_text(kind)
    names.validate_agent_id(to)
    names.validate_agent_id(sender)
    body = _build_payload(kind, payload)
    if epoch is None:
        from attractor.store import identities

        try:
            epoch = identities.current_epoch(state, to)
        except CorruptStateError as exc:
            # a broken registry record must not stop a signal; it goes unaddressed
            logger.warning("%s; sending to %s without an epoch", exc, to)
    elif not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise BadInputError("epoch", f"must be a non-negative integer, got {epoch!r}")
    signal = Signal(
        id=new_signal_id(), kind=kind, sender=sender, recipient=to, epoch=epoch,
        payload=body, created_at=clock.iso(),
    )
    inbox = ensure_inbox(state, to)
    tmp = inbox / "tmp" / f"{signal.id}.json"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, atomic.FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(atomic.dumps(signal.to_json()))
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, inbox / "new" / f"{signal.id}.json")
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        full = no_space(exc, tmp)
        if full is not None:
            raise full from None
        raise
    atomic.fsync_dir(inbox / "new")
    logger.debug(
        "sent %s %s to %s", kind.value, signal.id, to,
        extra={"att_signal": signal.id, "att_agent": to},
    )
    return signal


# --------------------------------------------------------------------------- the inbox


class Inbox:
    """One agent's maildir. Readers never create directories; writers create what they need."""

    def __init__(self, state: StateDir, agent_id: str) -> None:
        self.state = _as_state(state)
        self.agent_id = names.validate_agent_id(agent_id)
        self.root = self.state.signals / agent_id
        # Corrupt files this inbox moved aside, newest last (also logged as warnings).
        self.corrupt: list[CorruptStateError] = []

    def _dir(self, box: str) -> Path:
        return self.root / box

    def _read(self, path: Path, expected_id: str) -> Signal | None:
        """The signal in `path`; None if it vanished or was corrupt (then moved aside)."""
        try:
            data = atomic.read_json_object(path, schema=SCHEMA)
            signal = Signal.from_json(data)
            if signal.id != expected_id:
                problem = f"id {signal.id!r} does not match its file name"
                raise BadInputError("signal record", problem)
            return signal
        except FileNotFoundError:
            return None
        except CorruptStateError as exc:
            self._report(exc)
            return None
        except UsageError as exc:
            self._report(CorruptStateError(path, str(exc), atomic.move_aside(path)))
            return None

    def _report(self, exc: CorruptStateError) -> None:
        self.corrupt.append(exc)
        logger.warning("%s", exc, extra={"att_agent": self.agent_id, "att_path": str(exc.path)})

    def list(self, box: str) -> SignalList:
        """Signals in `new`, `cur` or `done`, oldest first; corrupt files are moved aside."""
        if box not in BOXES:
            raise UnknownValueError("signal box", box, BOXES)
        pattern = _CLAIM_RE if box == "cur" else _FILE_RE
        result = []
        for name in _listdir(self._dir(box)):
            match = pattern.fullmatch(name)
            if match:
                signal = self._read(self._dir(box) / name, match["id"])
                if signal is not None:
                    result.append(signal)
        return result

    def pending(self, kinds: KindsArg = None) -> SignalList:
        wanted = parse_kinds(kinds)
        return [s for s in self.list("new") if wanted is None or s.kind in wanted]

    def is_done(self, signal_id: str) -> bool:
        return (self._dir("done") / f"{signal_id}.json").exists()

    def claim_next(
        self, kinds: KindsArg = None, *, predicate: Predicate | None = None
    ) -> Claim | None:
        """Claim the oldest pending signal of `kinds` (and matching `predicate`), or None.

        Among concurrent claimers exactly one rename succeeds; the others move on. A signal
        already recorded in `done/` is dropped instead of being handed out again."""
        wanted = parse_kinds(kinds)
        new_dir = self._dir("new")
        suffix: str | None = None
        for name in _listdir(new_dir):
            match = _FILE_RE.fullmatch(name)
            if not match:
                continue
            signal = self._read(new_dir / name, match["id"])
            if signal is None or (wanted is not None and signal.kind not in wanted):
                continue
            if predicate is not None and not predicate(signal):
                continue
            suffix = suffix or _my_claim_suffix()
            target = self._dir("cur") / f"{signal.id}.by-{suffix}.json"
            try:
                os.rename(new_dir / name, target)
            except FileNotFoundError:
                continue  # another claimer won, or cur/ is missing
            if self.is_done(signal.id):
                logger.info(
                    "signal %s was already handled; dropping the duplicate", signal.id,
                    extra={"att_signal": signal.id, "att_agent": self.agent_id},
                )
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
                continue
            return Claim(signal, target)
        return None

    def complete(self, claim: Claim, outcome: str, detail: str = "") -> Signal:
        """Record the outcome in `done/<id>.json` and drop the claim. Idempotent: completing a
        signal that is already done only removes the leftover claim and returns the record."""
        done = self._dir("done") / f"{claim.signal.id}.json"
        if done.exists():
            existing = self._read(done, claim.signal.id)
            if existing is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(claim.path)
                return existing
        ensure_inbox(self.state, self.agent_id)
        record = dataclasses.replace(
            claim.signal, outcome=outcome, detail=detail, handled_at=clock.iso(),
            handled_by=f"{self.agent_id} (pid {os.getpid()})",
        )
        atomic.write_json_atomic(done, record.to_json(), fsync=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim.path)
        logger.info(
            "signal %s %s from %s: %s", record.kind.value, record.id, record.sender, outcome,
            extra={"att_signal": record.id, "att_agent": self.agent_id},
        )
        return record

    def release(self, claim: Claim) -> bool:
        """Put a claimed signal back into `new/`; False if the claim was no longer there."""
        try:
            os.rename(claim.path, self._dir("new") / f"{claim.signal.id}.json")
        except FileNotFoundError:
            return False
        return True

    def stale(self, signal: Signal, current_epoch: int | None) -> bool:
        """True when `signal` was addressed to an older spawn epoch than `current_epoch`."""
        if signal.epoch is None or current_epoch is None:
            return False
        return signal.epoch < current_epoch


def sweep_dead_claims(state: StateDir, agent_id: str | None = None) -> int:
    """Return claims held by dead processes to `new/` (for one agent, or every inbox).

    A claim whose signal is already in `done/` is removed instead. Returns how many claims went
    back to `new/`."""
    state = _as_state(state)
    returned = 0
    for agent in _agents(state, agent_id):
        cur = _box(state, agent, "cur")
        for name in _listdir(cur):
            match = _CLAIM_RE.fullmatch(name)
            if not match or _claimer_alive(int(match["pid"]), int(match["start"])):
                continue
            signal_id = match["id"]
            if (_box(state, agent, "done") / f"{signal_id}.json").exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(cur / name)
                continue
            try:
                os.rename(cur / name, _box(state, agent, "new") / f"{signal_id}.json")
            except FileNotFoundError:
                continue  # another sweeper got it first
            returned += 1
            logger.warning(
                "returned signal %s of dead consumer pid %s to %s/new", signal_id,
                match["pid"], agent, extra={"att_signal": signal_id, "att_agent": agent},
            )
    return returned


def remove_orphan_tmp(state: StateDir, agent_id: str | None = None) -> int:
    """Delete temp files of senders that died before renaming them into `new/`."""
    state = _as_state(state)
    removed = 0
    now = time.time()
    for agent in _agents(state, agent_id):
        tmp = _box(state, agent, "tmp")
        for name in _listdir(tmp):
            match = _FILE_RE.fullmatch(name)
            if not match:
                continue
            pid = int(match["id"].split("-")[1])
            try:
                age = now - (tmp / name).stat().st_mtime
            except FileNotFoundError:
                continue
            if _process_start(pid) is not None and age < ORPHAN_TMP_AGE:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp / name)
                removed += 1
    return removed


def _epoch_reader(state: StateDir, agent_id: str) -> Callable[[], int | None]:
    def read() -> int | None:
        from attractor.store import identities

        return identities.current_epoch(state, agent_id)

    return read


def _safe_epoch(current_epoch: Callable[[], int | None], agent_id: str) -> int | None:
    try:
        return current_epoch()
    except Exception as exc:
        logger.warning(
            "cannot read the current epoch of %s (%s); treating its signals as current",
            agent_id, exc,
        )
        return None


def _completed_as_stale(
    inbox: Inbox, claim: Claim, current_epoch: Callable[[], int | None]
) -> bool:
    """Complete `claim` with outcome `stale` if it was addressed to an older epoch."""
    signal = claim.signal
    current = _safe_epoch(current_epoch, inbox.agent_id)
    if not inbox.stale(signal, current):
        return False
    logger.warning(
        "stale signal %s %s from %s to %s: addressed to epoch %s, current epoch is %s; "
        "recorded, not acted on", signal.kind.value, signal.id, signal.sender, inbox.agent_id,
        signal.epoch, current, extra={"att_signal": signal.id, "att_agent": inbox.agent_id},
    )
    inbox.complete(claim, "stale", f"addressed to epoch {signal.epoch}, current epoch {current}")
    return True


class Consumer:
    """Claims and handles the signals of one inbox.

    `handler(signal)` returns the outcome string recorded in `done/`. It must be idempotent: a
    consumer killed between acting and recording leaves a claim that `sweep_dead_claims` hands
    out again. Stale signals are recorded with outcome `stale` and never reach the handler; a
    handler exception is recorded as `error: …` and the consumer goes on."""

    def __init__(
        self,
        state: StateDir,
        agent_id: str,
        handler: Callable[[Signal], str],
        *,
        current_epoch: Callable[[], int | None] | None = None,
        kinds: KindsArg = None,
        rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
        use_events: bool = True,
    ) -> None:
        if rescan_interval <= 0:
            raise BadInputError("rescan interval", f"must be positive, got {rescan_interval!r}")
        self.inbox = Inbox(state, agent_id)
        self.handler = handler
        self.current_epoch = current_epoch or _epoch_reader(self.inbox.state, agent_id)
        self.kinds = parse_kinds(kinds)
        self.rescan_interval = rescan_interval
        self.use_events = use_events
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._running_stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def _stopping(self) -> bool:
        """Only a running loop stops early; a direct `poll_once` always drains the inbox."""
        return bool(self._running_stop and self._running_stop.is_set())

    def poll_once(self) -> int:
        """Claim and handle every pending signal; returns how many were completed."""
        count = 0
        while not self._stopping():
            claim = self.inbox.claim_next(self.kinds)
            if claim is None:
                break
            self._handle(claim)
            count += 1
        return count

    def _handle(self, claim: Claim) -> None:
        signal = claim.signal
        extra = {"att_signal": signal.id, "att_agent": self.inbox.agent_id}
        if _completed_as_stale(self.inbox, claim, self.current_epoch):
            return
        try:
            result = self.handler(signal)
            outcome = result if isinstance(result, str) and result else "handled"
        except NoSpaceError as exc:
            # not the signal's fault: it goes back to new/ and is handled when space returns
            logger.error("handling signal %s: %s; it waits in new/ for space", signal.id, exc, extra=extra)
            self.inbox.release(claim)
            return
        except Exception as exc:
            logger.exception("handler failed on signal %s", signal.id, extra=extra)
            outcome = f"error: {type(exc).__name__}: {exc}"
        except BaseException:
            self.inbox.release(claim)
            raise
        try:
            self.inbox.complete(claim, outcome)
        except BaseException:
            self.inbox.release(claim)  # handled again later: handlers are idempotent
            raise

    def run(self, stop: threading.Event) -> None:
        """Handle signals until `stop` is set: on every file-system event in `new/`, and on a
        rescan every `rescan_interval` seconds (so a lost event delays a signal no longer)."""
        ensure_inbox(self.inbox.state, self.inbox.agent_id)
        self._running_stop = stop
        unwatch = wakeup.watch_directory(self.inbox.root / "new", self._wake) if self.use_events else None
        # the rescan is a safety net behind the file-system events; without them it is the way
        interval = self.rescan_interval if unwatch is not None or not self.use_events else min(
            self.rescan_interval, NO_EVENTS_RESCAN_INTERVAL)
        try:
            with contextlib.suppress(Exception):
                sweep_dead_claims(self.inbox.state, self.inbox.agent_id)
            while not self._stopping():
                self._wake.clear()
                try:
                    self.poll_once()
                except Exception:
                    logger.exception("signal consumer of %s: poll failed", self.inbox.agent_id)
                # `stop()` sets the wake-up too, so only a stop event of the caller's own needs
                # looking at while asleep
                wakeup.sleep(self._wake, None if stop is self._stop else stop, interval)
        finally:
            wakeup.unwatch(unwatch)
            self._running_stop = None

    def start(self) -> Consumer:
        """Run in a daemon thread; `stop()` ends it."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name=f"signals-{self.inbox.agent_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread after the signal in hand (safe to call from a handler, too)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Consumer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(
    state: StateDir,
    agent_id: str,
    *,
    kinds: KindsArg = None,
    timeout: float | None = None,
    predicate: Predicate | None = None,
    current_epoch: Callable[[], int | None] | None = None,
    rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
    use_events: bool = True,
) -> Signal:
    """Block until a signal of `kinds` matching `predicate` is in `agent_id`'s inbox, claim it,
    complete it with outcome `received` and return the completed record. Stale matching signals
    are recorded as `stale` on the way. Raises `TimeoutExpiredError` after `timeout` seconds."""
    inbox = Inbox(state, agent_id)
    wanted = parse_kinds(kinds)
    epoch_of = current_epoch or _epoch_reader(inbox.state, agent_id)
    ensure_inbox(inbox.state, agent_id)
    deadline = None if timeout is None else time.monotonic() + timeout

    def take() -> Signal | None:
        for claim in _claims(inbox, wanted, predicate):
            if not _completed_as_stale(inbox, claim, epoch_of):
                return inbox.complete(claim, "received")
        return None

    found = take()  # the common case needs no watch at all
    if found is not None:
        return found
    wake = threading.Event()
    unwatch = wakeup.watch_directory(inbox.root / "new", wake) if use_events else None
    try:
        while True:
            wake.clear()
            found = take()
            if found is not None:
                return found
            pause = rescan_interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    kinds_text = ", ".join(sorted(k.value for k in wanted)) if wanted else "any"
                    what = f"a signal ({kinds_text}) for {agent_id}"
                    raise TimeoutExpiredError(what, timeout or 0)
                pause = min(pause, remaining)
            wakeup.sleep(wake, None, pause)
    finally:
        wakeup.unwatch(unwatch)


def _claims(
    inbox: Inbox, wanted: frozenset[SignalKind] | None, predicate: Predicate | None
) -> Iterator[Claim]:
    while True:
        claim = inbox.claim_next(wanted, predicate=predicate)
        if claim is None:
            return
        yield claim
