"""Typed state records: the one way the stores check, read, list and change their record files.

A record is a frozen dataclass with `to_json()` and a strict `from_json()`, stored as one JSON
file. `from_json` starts with `fields`: an object with exactly the record's fields (older
records get the values of fields added since), the schema version, and each field of its type;
anything else is a BadInputError that names the record and the field. A `Kind` ties the record
to its files:

    RECORDS = records.Kind("identity record", SCHEMA, Identity.from_json, missing, stem=...)
    RECORDS.load(path)               the record; FileNotFoundError passes through
    RECORDS.get(path)                the record, or `missing(path)` raised when there is none
    RECORDS.find(path)               the record, or None when there is none
    RECORDS.list(directory, problems)  every readable `*.json` record, corrupt ones collected
    RECORDS.modify(path, change)     read-modify-write under `<file>.lock`

Corrupt records: a file that does not parse, has another schema version, lacks a field, has an
unknown one or one of the wrong type, or (with `stem`) is stored under another record's name is
moved aside (`<name>.corrupt-<stamp>`), logged, and raised as CorruptStateError naming the file
and the problem. Where every writer holds `<file>.lock` (`lock=True`), the reader decides under
that lock, after reading again, so a good version written meanwhile is never the one moved.
A listing never raises for a corrupt file: it appends the error to `problems` and goes on.

Imports only the standard library, leaves and store modules: the hot commands use it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from attractor.errors import AttractorError, BadInputError, CorruptStateError, UsageError
from attractor.store import atomic, locks

logger = logging.getLogger(__name__)

Types = Mapping[str, tuple[type, ...]]
OPTIONAL_TEXT: tuple[type, ...] = (str, type(None))
OPTIONAL_INT: tuple[type, ...] = (int, type(None))
OPTIONAL_OBJECT: tuple[type, ...] = (dict, type(None))


def check_types(what: str, data: Mapping[str, Any], types: Types) -> None:
    """Each field named in `types` holds one of its allowed types (a bool is no int unless
    `bool` is allowed); otherwise a BadInputError naming the field."""
    for key, allowed in types.items():
        value = data[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise BadInputError(what, f"field {key!r} must be {kinds}, not {value!r}")


def fields(what: str, data: Any, names: tuple[str, ...] | list[str], schema: int | None, *,
           types: Types | None = None, older: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The first step of a strict `from_json`: `data` is an object with exactly the fields
    `names` (`atomic.check_record_fields`) and, unless `schema` is None (a record inside
    another), `schema` at this version; the fields in `types` are of their types. `older` gives
    the value of fields that records written before them lack."""
    if older and isinstance(data, dict):
        data = {**older, **data}
    checked = atomic.check_record_fields(what, data, names, schema)
    if types:
        check_types(what, checked, types)
    return checked


class Record(Protocol):
    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Record)


def _always(old: object, new: object) -> bool:
    return True


@dataclass(frozen=True)
class Kind(Generic[R]):
    """One kind of record file: how to parse it, what it must be named, what a missing one is.

    `what` names the record in errors and logs ("identity record"); `parse` is its strict
    `from_json`; `missing(path)` is the error for a record that is not there; `stem(record)` is
    the file name (without `.json`) the record must be stored under, if it has one; `lock`
    says every writer holds `<file>.lock`, so a corrupt file is moved aside under it."""

    what: str
    schema: int
    parse: Callable[[dict[str, Any]], R]
    missing: Callable[[Path], AttractorError]
    stem: Callable[[R], str] | None = None
    lock: bool = True

    def _parse(self, path: Path) -> R:
        record = self.parse(atomic.read_json_object(path, schema=self.schema, move_corrupt=False))
        if self.stem is not None and path.name != f"{self.stem(record)}.json":
            raise BadInputError(self.what, f"names {self.stem(record)!r}, not the file name")
        return record

    def load(self, path: Path, *, locked: bool = False) -> R:
        """The record at `path`, read strictly; a corrupt one is moved aside (under its lock,
        which `locked` says the caller holds already) and raised as CorruptStateError.
        FileNotFoundError passes through."""
        try:
            return self._parse(path)
        except CorruptStateError as exc:
            problem = exc.problem
        except BadInputError as exc:
            problem = str(exc)
        except (UsageError, ValueError, TypeError) as exc:  # a field that fails its own check
            problem = f"{self.what}: {exc}"
        if self.lock and not locked:
            with locks.file_lock(path):
                return self.load(path, locked=True)
        moved = atomic.move_aside(path)
        logger.warning("corrupt %s %s moved aside to %s: %s", self.what, path, moved, problem,
                       extra={"att_path": str(path)})
        raise CorruptStateError(path, problem, moved)

    def get(self, path: Path) -> R:
        """The record at `path`; `missing(path)` when there is none."""
        try:
            return self.load(path)
        except FileNotFoundError:
            raise self.missing(path) from None

    def find(self, path: Path) -> R | None:
        """The record at `path`, or None when there is none (a corrupt one still raises)."""
        try:
            return self.load(path)
        except FileNotFoundError:
            return None

    def list(self, directory: Path, problems: list[CorruptStateError] | None = None) -> list[R]:
        """Every readable `*.json` record in `directory`, by file name. Corrupt files are moved
        aside, logged and appended to `problems`; they never raise. Temp files of writers that
        died mid-write are removed."""
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        for orphan in atomic.remove_orphan_temps(directory):
            logger.info("removed %s, left by a writer that died mid-write", orphan)
        found = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                found.append(self.load(directory / name))
            except FileNotFoundError:
                continue  # removed meanwhile
            except CorruptStateError as exc:
                if problems is not None:
                    problems.append(exc)
        return found

    def modify(self, path: Path, change: Callable[[R], R], *,
               fsync: Callable[[R, R], bool] = _always, prepare: Callable[[], object] | None = None) -> R:
        """Read-modify-write the record at `path` under its lock: `change` gets the current
        record, read again under the lock, and returns the new one (the same object to leave
        the file untouched), which replaces it (an `atomic.Replacement`, so only the write and
        the rename happen under the lock; fsynced if `fsync(old, new)`). `prepare` runs once the
        record is known to be there, before anything is created beside it (the store checks its
        directories). `missing(path)` when there is no record: no lock file is made for it."""
        if not path.exists():
            raise self.missing(path)
        if prepare is not None:
            prepare()
        try:
            with atomic.Replacement(path) as replacement, locks.file_lock(path):
                current = self.load(path, locked=True)
                new = change(current)
                if new is not current:
                    replacement.commit(atomic.dumps(new.to_json()), fsync=fsync(current, new))
        except FileNotFoundError:
            raise self.missing(path) from None
        return new
