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
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from attractor.errors import BadInputError, CorruptStateError, StateDirError, no_space
from attractor.store.formats import (
    DIR_MODE,
    FILE_MODE,
    Replacement,
    dir_problem,
    dumps,
    fsync_dir,
    read_regular_bytes,
    temp_name,
    write_all,
)
from attractor.store.formats import Unreadable as _Unreadable

__all__ = ["DIR_MODE", "FILE_MODE", "Replacement", "dumps", "fsync_dir", "read_regular_bytes"]

# `.<name>.tmp-<pid>-<ns>`: the temp files of write_bytes_atomic and Replacement (formats.temp_name)
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)-[0-9]+")


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` so that readers see the old or the new content, never a mix."""
    target = os.fspath(path)
    directory, tmp = temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            write_all(fd, data, fsync)
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
    problem = dir_problem(st)
    if problem is not None:
        raise StateDirError(path, problem)
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
