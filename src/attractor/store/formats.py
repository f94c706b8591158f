"""The bytes of attractor's state files, written down once for both writers of them: the stores
(`atomic`, `locks`, `signals`, `hooks`, `identities`) and the short path of the hot commands
(`cli/hot.py`), which starts as a new process many times an hour and so imports only `os`,
`sys`, `time`, `stat`, `errno` and the C halves of `json` (`_json`) and `fcntl`: no logging,
dataclasses, enum, typing, pathlib or re (together most of a hot command's start-up).

- JSON text (`dumps`): two-space indent, keys sorted, ASCII only, one newline at the end; the
  same text as `json.dumps(data, indent=2, sort_keys=True) + "\\n"`. `loads` reads JSON with the
  C scanner `json` itself uses; it raises ValueError for anything it does not take, and the
  stores leave such text to `json.loads`, whose messages they report.
- Temp files of an atomic replace: `.<name>.tmp-<pid>-<monotonic ns>` beside the target
  (`temp_name`); `Replacement` writes one and renames it over the target.
- Lock files: the byte layout `locks.py` documents (GUARD, HELD, tickets, the served stamp);
  this module holds the byte-range calls and the uncontended take (`try_fast`).
- Private directories: 0700, ours, not writable by group or others (`dir_problem`).
- Times: ISO-8601 UTC with microseconds (`iso_stamp`, the text `clock.iso` writes).
- Signal ids `<stamp>-<pid>-<rand>` and the fields of the records the hot commands write.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

# the C half of json (the `json` package itself imports re, and its encoder's indenting is Python)
from _json import encode_basestring_ascii as _quoted
from _json import make_scanner as _make_scanner

from attractor.errors import no_space

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FILE_MODE = 0o600
DIR_MODE = 0o700
HISTORY_LIMIT = 1000  # entries kept in a record's history (identities, hooks)
TEXT_LIMIT = 64 * 1024  # characters of a hook's note or resumption instructions

# --------------------------------------------------------------------------- JSON text

_INFINITY = float("inf")


def _key(key: object) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return _number(key)
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {key.__class__.__name__}")


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)


def _encode(value: Any, indent: str, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_quoted(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[")
        for index, item in enumerate(value):
            out.append(("\n" if index == 0 else ",\n") + inner)
            _encode(item, inner, out)
        out.append("\n" + indent + "]")
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        out.append("{")
        for index, (key, item) in enumerate(sorted(value.items())):
            out.append(("\n" if index == 0 else ",\n") + inner + _quoted(_key(key)) + ": ")
            _encode(item, inner, out)
        out.append("\n" + indent + "}")
    else:
        raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(data: Any) -> bytes:
    """The file text of `data`: two-space indent, sorted keys, ASCII, a newline at the end."""
    out: list[str] = []
    _encode(data, "", out)
    out.append("\n")
    return "".join(out).encode()


class _Decoding:
    """What the C scanner reads from a decoder: json.loads's defaults, except that NaN and
    Infinity are refused (no record holds them; json.loads reads such a file)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"JSON constant {name} is left to json.loads")


_scanners: list[Any] = []
_WHITESPACE = " \t\n\r"


def loads(text: str | bytes) -> Any:
    """The JSON value of `text` (bytes are UTF-8); ValueError for anything else, without
    json.loads's message (a caller that reports the problem reads the text with json.loads)."""
    if isinstance(text, bytes):
        if text.startswith(b"\xef\xbb\xbf"):
            raise ValueError("byte order mark")
        text = text.decode("utf-8")
    if not _scanners:
        _scanners.append(_make_scanner(_Decoding()))  # type: ignore[arg-type]
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scanners[0](text, start)
    except Exception:  # StopIteration, or (its message needs json.decoder, not loaded) SystemError
        raise ValueError("not JSON that this reader takes; json.loads says why") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError("extra data after the JSON value")
    return value


# --------------------------------------------------------------------------- files

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# holds a file's inode without reading it (O_PATH is Linux's; elsewhere a plain read open)
PIN_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class Unreadable(Exception):
    """A name that is there but is no readable regular file; `reason` says what it is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_regular_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file `path`. Never follows a symbolic link and never blocks on
    a pipe. FileNotFoundError when there is no such name; `Unreadable` with the reason when
    the name is there but is no readable regular file."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise  # no such name: the caller's business (a record not written yet, a claimed signal)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            target = os.readlink(path) if os.path.islink(path) else "?"
            dangling = "" if os.path.exists(path) else ", dangling"
            raise Unreadable(f"a symbolic link (to {target}{dangling}), not a file") from None
        raise Unreadable(f"cannot be read ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        for test, kind in _KINDS:
            if test(mode):
                raise Unreadable(f"{kind}, not a file")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def dir_problem(st: os.stat_result) -> str | None:
    """Why a directory with this stat may not hold state (None: it may): not a directory,
    someone else's, or writable by group or others."""
    if not stat.S_ISDIR(st.st_mode):
        return "exists and is not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not you (uid {os.geteuid()}); use your own --state-dir"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); run chmod 700 on it"
    return None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(target: str) -> tuple[str, str]:
    """The directory of `target` and a fresh temp name beside it."""
    directory, name = os.path.split(target)
    return directory or ".", os.path.join(directory, f".{name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


def write_all(fd: int, data: bytes, fsync: bool) -> None:
    """Write `data` to `fd`, fsync it if asked, and close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


class Replacement:
    """An atomic replace split around a lock, so that the slow file-system work stays out of
    the critical section: the temp file is created on entry, before the caller takes the lock;
    `commit` writes it and renames it over `path` (the part that needs the lock), holding the
    replaced version open so that its inode is freed on exit, after the lock is gone (inside the
    rename, ext4 frees it while every waiter waits: ~75 us of a ~100 us rename). On exit without
    a commit the temp file is removed.

        with formats.Replacement(path) as new, locks.file_lock(path):
            ...read, decide...
            new.commit(data, fsync=False)
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: int = FILE_MODE) -> None:
        self.target = os.fspath(path)
        self.directory, self.tmp = temp_name(self.target)
        try:
            self.fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError as exc:
            full = no_space(exc, self.target)
            if full is not None:
                raise full from None
            raise
        self.replaced: int | None = None  # the old version, held open until exit
        self.committed = False

    def commit(self, data: bytes, *, fsync: bool = True) -> None:
        if self.fd is None:
            raise RuntimeError(f"replacement of {self.target} already committed or closed")
        fd, self.fd = self.fd, None
        try:
            write_all(fd, data, fsync)
        except OSError as exc:
            full = no_space(exc, self.target)
            if full is not None:
                raise full from None
            raise
        try:  # noqa: SIM105 (contextlib costs the hot commands a millisecond) a first version replaces nothing
            self.replaced = os.open(self.target, PIN_FLAGS)
        except FileNotFoundError:
            pass
        os.replace(self.tmp, self.target)
        self.committed = True
        if fsync:
            fsync_dir(self.directory)

    def close(self) -> None:
        for fd in (self.fd, self.replaced):
            _close_quietly(fd)
        self.fd = self.replaced = None
        if not self.committed:
            try:  # noqa: SIM105
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Replacement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- lock files

GUARD, HELD, FIRST_TICKET = 0, 1, 2
SERVED = 8  # file offset of the last hand-over's stamp (8 bytes, after the ticket counter)
TICKETS = 1 << 40  # ticket numbers wrap here; far more than can ever wait at once
LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    QUEUED = False
else:
    # open-file-description locks, with struct flock laid out as on 64-bit Linux: l_type and
    # l_whence (2 bytes each), padding to 8, l_start and l_len (8 each), l_pid (4, must be 0), padding
    QUEUED = sys.platform == "linux" and hasattr(fcntl, "F_OFD_SETLKW") and sys.maxsize > 2**32


def _range(kind: int, start: int) -> bytes:
    order = sys.byteorder
    return (kind.to_bytes(2, order, signed=True) + os.SEEK_SET.to_bytes(2, order) + bytes(4)
            + start.to_bytes(8, order, signed=True) + (1).to_bytes(8, order) + bytes(8))


def lock_byte(fd: int, start: int, *, wait: bool) -> bool:
    """Lock one byte for writing; False if it is taken and `wait` is off."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, _range(fcntl.F_WRLCK, start))
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by someone else
        return False
    return True


def unlock_byte(fd: int, start: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _range(fcntl.F_UNLCK, start))


def is_free(fd: int, start: int) -> bool:
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _range(fcntl.F_WRLCK, start))
    return int.from_bytes(answer[:2], sys.byteorder, signed=True) == fcntl.F_UNLCK


def ticket_byte(ticket: int) -> int:
    return FIRST_TICKET + ticket % TICKETS


def next_ticket(fd: int) -> int:
    raw = os.pread(fd, 8, 0)
    return int.from_bytes(raw, "little") % TICKETS if len(raw) == 8 else 0


def draw_ticket(fd: int, ticket: int) -> int:
    """Take `ticket` (the next one; the caller holds GUARD) and lock its byte."""
    os.pwrite(fd, ((ticket + 1) % TICKETS).to_bytes(8, "little"), 0)
    lock_byte(fd, ticket_byte(ticket), wait=True)  # nobody else locks a fresh ticket's byte
    return ticket


def mark_served(fd: int) -> None:
    """Stamp the lock file when the lock changes hands through the queue, so that waiters can
    tell a queue that moves from one that is stuck."""
    os.pwrite(fd, time.monotonic_ns().to_bytes(8, "little"), SERVED)


def try_fast(fd: int, *, queue: bool = True) -> int | bool:
    """Take the lock without blocking if it is free and nobody waits for it: True. Otherwise,
    with `queue`, queue up: the ticket drawn (-1 if GUARD was busy); without, -1. The
    uncontended path draws no ticket, so it never writes to the lock file."""
    if not lock_byte(fd, GUARD, wait=False):
        return -1
    try:
        ticket = next_ticket(fd)
        # everyone queued holds their ticket's byte until they hold HELD, so a free byte for the
        # last ticket drawn means nobody is waiting
        if is_free(fd, ticket_byte(ticket - 1)) and lock_byte(fd, HELD, wait=False):
            return True
        return draw_ticket(fd, ticket) if queue else -1
    finally:
        unlock_byte(fd, GUARD)


def open_lock(lock_path: str | os.PathLike[str]) -> int:
    """The lock file opened for locking, created (0600) if missing; OSError as the OS says."""
    try:  # without O_CREAT first: creating takes the directory's lock, which writers there need
        return os.open(lock_path, LOCK_FLAGS)
    except FileNotFoundError:
        return os.open(lock_path, LOCK_FLAGS | os.O_CREAT, FILE_MODE)


# --------------------------------------------------------------------------- times and ids


def iso_stamp(ts: float | None = None) -> str:
    """An ISO-8601 UTC stamp with microseconds, `2026-11-24T01:02:03.456789Z`: what
    `clock.iso` writes (microseconds rounded half to even, as datetime rounds them)."""
    moment = time.time() if ts is None else ts
    seconds = int(moment)
    micros = round((moment - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


_DIGITS = frozenset("0123456789")
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_iso_stamp(text: object) -> bool:
    """`text` is a stamp exactly as `iso_stamp` writes it, of a real moment (a date that
    exists, a time of day); other ISO-8601 forms answer False."""
    if not isinstance(text, str) or len(text) != 27 or text[4] + text[7] + text[10] + text[13] + text[16] \
            + text[19] + text[26] != "--T::.Z":
        return False
    parts = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16], text[17:19], text[20:26])
    if not all(part and set(part) <= _DIGITS for part in parts):
        return False
    year, month, day, hour, minute, second, _ = (int(part) for part in parts)
    if year < 1 or not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return False
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return 1 <= day <= _DAYS[month - 1] + leap


def new_signal_id() -> str:
    """`<stamp>-<pid>-<rand>`: UTC time to the nanosecond, the sender's pid, 8 random hex
    digits (`20260124T010203.123456789Z-4711-a1b2c3d4`); ids sort by time."""
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000))
    return f"{stamp}.{ns % 1_000_000_000:09d}Z-{os.getpid()}-{os.urandom(4).hex()}"


_HEX = frozenset("0123456789abcdef")


def is_commit(text: object) -> bool:
    """A commit id as records keep it: 4-64 lowercase hex digits."""
    return isinstance(text, str) and 4 <= len(text) <= 64 and set(text) <= _HEX


# --------------------------------------------------------------------------- record fields

SCHEMA = 1  # the version of the identity, hook and signal records
SIGNAL_FIELDS = (
    "schema", "id", "kind", "sender", "recipient", "epoch", "payload", "created_at",
    "outcome", "handled_at", "handled_by", "detail",
)
IDENTITY_FIELDS = (
    "schema", "role", "name", "agent_id", "epoch", "status", "pid", "pid_start", "tmux_socket",
    "tmux_session", "pane_id", "worktree", "session_id", "created_at", "last_heartbeat",
    "crash_count", "history",
)
HOOK_FIELDS = (
    "schema", "role", "name", "agent_id", "node", "phase", "history", "resumption_instructions",
    "last_commit", "attempts", "updated_at", "created_at", "run_id",
)

# Hook phases and the moves between them: states.PHASE_MOVES by value.
PHASE_MOVES = {
    "spawned": ("executing", "failed"),
    "executing": ("impl_complete", "failed"),
    "impl_complete": ("validating", "merge_ready", "executing", "failed"),
    "validating": ("merge_ready", "executing", "failed"),
    "merge_ready": ("merged", "executing", "failed"),
    "merged": (),
    "failed": ("executing",),
}

# The JSON types a payload field of each annotation may hold (a bool is no int).
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "list[str]": (list,),
    "dict[str, Any]": (dict,),
    "bool": (bool,),
}
REQUIRED = "(required)"  # the default of a payload field that has none
# Each signal kind's payload fields, as payloads.py declares them: (name, annotation, default).
PAYLOAD_FIELDS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "ORCHESTRATOR_DONE": (("node", "str", REQUIRED), ("commit", "str | None", None), ("summary", "str", "")),
    "ORCHESTRATOR_STUCK": (("node", "str", REQUIRED), ("reason", "str", ""), ("quarantined", "bool", False)),
    "NODE_IMPL_COMPLETE": (("node", "str", REQUIRED), ("branch", "str", REQUIRED), ("commit", "str", REQUIRED),
                           ("worktree", "str", "")),
    "VALIDATION_PASSED": (("node", "str", REQUIRED), ("commit", "str", REQUIRED), ("output", "str", "")),
    "VALIDATION_FAILED": (("node", "str", REQUIRED), ("commit", "str", REQUIRED), ("output", "str", ""),
                          ("attempt", "int", 1)),
    "MERGE_READY": (("node", "str", REQUIRED), ("branch", "str", REQUIRED), ("commit", "str", REQUIRED),
                    ("owner", "str", REQUIRED), ("priority", "int", 0)),
    "MERGE_COMPLETE": (("entry_id", "str", REQUIRED), ("branch", "str", REQUIRED), ("merged_sha", "str", REQUIRED),
                       ("target", "str", REQUIRED), ("node", "str | None", None)),
    "MERGE_FAILED": (("entry_id", "str", REQUIRED), ("branch", "str", REQUIRED), ("reason", "str", REQUIRED),
                     ("target", "str", REQUIRED), ("target_sha", "str | None", None), ("node", "str | None", None),
                     ("files", "list[str]", []), ("gate_output", "str", ""), ("detail", "str", "")),
    "RESPAWN": (("reason", "str", ""),),
    "SHUTDOWN": (("reason", "str", ""),),
    "MESSAGE": (("text", "str", REQUIRED), ("author", "str", "")),
    "PIPELINE_RELOAD": (("staged", "str", REQUIRED), ("sha256", "str", REQUIRED), ("source", "str", "")),
}


def json_type_ok(value: object, annotation: str) -> bool:
    """`value` (read from JSON) fits a payload field declared `annotation`."""
    allowed = JSON_TYPES.get(annotation)
    if allowed is None:
        return True
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        return False
    return annotation != "list[str]" or all(isinstance(item, str) for item in value)  # type: ignore[attr-defined]


def plain_payload(kind: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """The payload record of `kind` that `data` gives, every field filled in (what
    `Payload.to_json` returns), or None when `data` is no valid payload of that kind (the
    payload's `from_json` then says why)."""
    fields = PAYLOAD_FIELDS[kind]
    if set(data) - {name for name, _, _ in fields}:
        return None
    record = {}
    for name, annotation, default in fields:
        if name not in data:
            if default is REQUIRED:
                return None
            record[name] = list(default) if isinstance(default, list) else default
        elif json_type_ok(data[name], annotation):
            value = data[name]
            record[name] = list(value) if isinstance(value, list) else value
        else:
            return None
    return record
