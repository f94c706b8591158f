"""Crash-safe JSON files: atomic replace, strict reads that move corrupt files aside, and
private directories.

Rules (DESIGN.md): write a temp file in the same directory, flush, `os.replace` over the target,
remove the temp on failure; fsync file and directory for state that is hard to recreate, skip it
for heartbeats. Locks are `<file>.lock` beside the data, never on it (`locks.file_lock`).
Directories are 0700, files 0600; a directory owned by someone else or writable by others is
refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from attractor.errors import BadInputError, CorruptStateError, StateDirError, no_space

FILE_MODE = 0o600
DIR_MODE = 0o700
# `.<name>.tmp-<pid>-<ns>`: the temp files of write_bytes_atomic and Replacement
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)-[0-9]+")
# holds a file's inode without reading it (O_PATH is Linux's; elsewhere a plain read open)
_PIN_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(target: str) -> tuple[str, str]:
    directory, name = os.path.split(target)
    return directory or ".", os.path.join(directory, f".{name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


def _write_all(fd: int, data: bytes, fsync: bool) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` so that readers see the old or the new content, never a mix."""
    target = os.fspath(path)
    directory, tmp = _temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            _write_all(fd, data, fsync)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if fsync:
            fsync_dir(Path(directory))
    except OSError as exc:
        full = no_space(exc, target)
        if full is not None:
            raise full from None
        raise


class Replacement:
    """`write_bytes_atomic` split around a lock, so that the slow file-system work stays out of
    the critical section: the temp file is created on entry, before the caller takes the lock;
    `commit` writes it and renames it over `path` (the part that needs the lock), holding the
    replaced version open so that its inode is freed on exit, after the lock is gone (inside the
    rename, ext4 frees it while every waiter waits: ~75 us of a ~100 us rename). On exit without
    a commit the temp file is removed.

        with atomic.Replacement(path) as new, locks.file_lock(path):
            ...read, decide...
            new.commit(data, fsync=False)
    """

    def __init__(self, path: Path, *, mode: int = FILE_MODE) -> None:
        self.target = os.fspath(path)
        self.directory, self.tmp = _temp_name(self.target)
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
            _write_all(fd, data, fsync)
        except OSError as exc:
            full = no_space(exc, self.target)
            if full is not None:
                raise full from None
            raise
        with contextlib.suppress(FileNotFoundError):  # a first version replaces nothing
            self.replaced = os.open(self.target, _PIN_FLAGS)
        os.replace(self.tmp, self.target)
        self.committed = True
        if fsync:
            fsync_dir(Path(self.directory))

    def close(self) -> None:
        for fd in (self.fd, self.replaced):
            if fd is not None:
                os.close(fd)
        self.fd = self.replaced = None
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)

    def __enter__(self) -> Replacement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_orphan_temps(directory: Path) -> list[Path]:
    """Remove temp files of `write_bytes_atomic` and `Replacement` whose writer died between
    create and rename (SIGKILL, power loss); temps of live writers are left alone. Returns what
    was removed."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for entry in names:
        match = _TEMP_RE.fullmatch(entry)
        if match is None:
            continue
        try:
            os.kill(int(match["pid"]), 0)
            continue  # alive (or reused by someone; the temp is harmless either way)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / entry)
            removed.append(directory / entry)
    return removed


def dumps(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(path: Path, data: Any, *, fsync: bool = True) -> None:
    write_bytes_atomic(path, dumps(data), fsync=fsync)


def move_aside(path: Path) -> Path | None:
    """Rename a corrupt file to `<name>.corrupt-<stamp>`; returns the new path (None if gone)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.monotonic_ns() % 10**9}"
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class _Unreadable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_regular_bytes(path: Path) -> bytes:
    """The bytes of the regular file `path`. Never follows a symbolic link and never blocks on
    a pipe. FileNotFoundError when there is no such name; `_Unreadable` with the reason when
    the name is there but is no readable regular file."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise  # no such name: the caller's business (a record not written yet, a claimed signal)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            target = os.readlink(path) if os.path.islink(path) else "?"
            dangling = "" if os.path.exists(path) else ", dangling"
            raise _Unreadable(f"a symbolic link (to {target}{dangling}), not a file") from None
        raise _Unreadable(f"cannot be read ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        for test, kind in _KINDS:
            if test(mode):
                raise _Unreadable(f"{kind}, not a file")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _Unreadable(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_json_object(path: Path, *, schema: int | None = None, move_corrupt: bool = True) -> dict[str, Any]:
    """Read a JSON object strictly. A file that does not parse, is not an object or has another
    schema version, and a name that is no readable file (a directory, a symbolic link, a pipe,
    a read error), is moved aside and reported with `CorruptStateError`.
    FileNotFoundError passes through untouched."""
    try:
        raw = read_regular_bytes(path)
    except _Unreadable as exc:
        moved = move_aside(path) if move_corrupt else None
        raise CorruptStateError(path, exc.reason, moved) from None
    problem = None
    data: Any = None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"not valid JSON ({exc})" if raw.strip() else "empty file"
    except RecursionError:
        problem = "JSON nested too deeply to read"
    if problem is None and not isinstance(data, dict):
        problem = f"expected a JSON object, found {type(data).__name__}"
    if problem is None and schema is not None and data.get("schema") != schema:
        problem = f"schema {data.get('schema')!r} is not the supported version {schema}"
    if problem is not None:
        moved = move_aside(path) if move_corrupt else None
        raise CorruptStateError(path, problem, moved)
    assert isinstance(data, dict)
    return data


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 and refuse one that is not safe to use."""
    try:
        try:
            st = os.stat(path)  # no mkdir when it exists: mkdir locks the parent directory
        except FileNotFoundError:
            path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            st = os.stat(path)
    except OSError as exc:
        full = no_space(exc, path)
        if full is not None:
            raise full from None
        raise StateDirError(path, f"cannot create ({exc.strerror})") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(path, "exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(
            path, f"owned by uid {st.st_uid}, not you (uid {os.geteuid()}); use your own --state-dir"
        )
    if st.st_mode & 0o022:
        raise StateDirError(
            path, f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); run chmod 700 on it"
        )
    return path


def check_record_fields(what: str, data: Any, names: tuple[str, ...] | list[str],
                        schema: int | None) -> dict[str, Any]:
    """The common part of a strict `from_json`: an object with exactly these fields and this
    schema version (None: a record inside another, with no version of its own); anything else
    is a BadInputError naming what is missing or unknown."""
    if not isinstance(data, dict):
        raise BadInputError(what, f"expected a JSON object, got {type(data).__name__}")
    expected = set(names)
    missing = sorted(expected - set(data))
    unknown = sorted(set(data) - expected)
    if missing or unknown:
        parts = [f"missing field(s) {', '.join(missing)}"] if missing else []
        parts += [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        raise BadInputError(what, "; ".join(parts))
    if schema is not None and data["schema"] != schema:
        raise BadInputError(what, f"schema {data['schema']!r} is not {schema}")
    return data
