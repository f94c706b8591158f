"""Process logs: `logs/<agent-id>.log` in the state directory, read record by record.

Files: the guardian and each runner log there through a `logging.FileHandler` opened by
`attractor guardian` / `attractor runner` (`guardian-<run>.log`, `runner-<node>.log`); a file is
appended to by every incarnation of its agent, so `runner-<node>.log` holds the records of every
run that had the node. Other files there (`crash-<stamp>-<pid>.log`, `agent-hook.log`) are not
named after an agent and are not read here.

Format, one record per logging call, in the order written:

    2026-12-01 19:04:23,203 14786 WARNING attractor.layers.runner: runner a: the agent's pane at its end (exit 2):
    error: script line 1: sleep needs seconds
    <blank pane rows>

The header line is `%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s`: local time with
milliseconds, the writer's pid (optional: the daemon's format has none), the level, the logger
and the first line of the message. Every following line that is not a header (the rest of a
message, a traceback, a pane dump) belongs to the record above it. Lines before a file's first
header form a record of their own, with no pid, level or logger, timed like the record after
them (or the file's modification time).

Staleness: none; records are only ever appended. Readers take the file as it is: a last line
without its newline is a writer still writing it (`read_tail` returns the offset after the last
complete line so a follower starts there), and a file that shrinks or is replaced is read again
from its start.
"""

from __future__ import annotations

import functools
import heapq
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from attractor import clock, names
from attractor.errors import InvalidNameError

SUFFIX = ".log"
BLOCK = 64 * 1024  # the first read from a file's end; each further read doubles it, up to MAX_BLOCK
MAX_BLOCK = 8 * 1024 * 1024
HOLD = 0.2  # seconds a followed record waits for more continuation lines before it is given out

_HEADER_RE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (?:(\d+) )?([A-Z]+) (\S+?): ?(.*)"
)


@dataclass(frozen=True)
class Record:
    """One logging call of one agent: its header line and its continuation lines."""

    time: float  # POSIX seconds
    agent: str
    lines: tuple[str, ...]  # as written, header first
    pid: int | None = None
    level: str | None = None  # None for lines found before a file's first header
    logger: str | None = None

    @property
    def message(self) -> str:
        """The message as logged: the header's text, then the continuation lines."""
        match = _HEADER_RE.fullmatch(self.lines[0]) if self.level is not None else None
        head = [match.group(6)] if match else list(self.lines[:1])
        return "\n".join([*head, *self.lines[1:]])

    def to_json(self) -> dict[str, Any]:
        return {"time": clock.iso(self.time), "agent": self.agent, "pid": self.pid, "level": self.level,
                "logger": self.logger, "message": self.message}


def header_time(line: str) -> float | None:
    """The POSIX time of a header line, or None when `line` continues a record."""
    match = _HEADER_RE.fullmatch(line)
    return _time_of(match) if match else None


@functools.lru_cache(maxsize=1024)
def _second(text: str) -> float | None:
    """`2026-12-01 19:04:23` (local time, as logging writes it) as POSIX seconds."""
    try:
        return datetime(int(text[:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                        int(text[17:19])).timestamp()
    except ValueError:  # 2026-13-45: not a header after all
        return None


def _time_of(match: re.Match[str]) -> float | None:
    second, millis = match.group(1, 2)
    at = _second(second)
    return None if at is None else at + int(millis) / 1000


def _header(line: str) -> tuple[re.Match[str], float] | None:
    match = _HEADER_RE.fullmatch(line)
    at = _time_of(match) if match else None
    return None if match is None or at is None else (match, at)


def parse_lines(agent: str, lines: Iterable[str], *, leading: bool, fallback: float) -> list[Record]:
    """Group lines into records. Lines before the first header make a record of their own when
    `leading` (they start the file), timed like the record after them (else `fallback`), and
    are dropped otherwise (their header was not read)."""
    records: list[Record] = []
    head: tuple[re.Match[str], float] | None = None
    group: list[str] = []
    orphans: list[str] = []

    def close() -> None:
        if head is not None:
            match, at = head
            pid, level, logger = match.group(3, 4, 5)
            records.append(Record(at, agent, tuple(group), int(pid) if pid else None, level, logger))

    for line in lines:
        found = _header(line)
        if found is None:
            (group if head is not None else orphans).append(line)
            continue
        close()
        head, group = found, [line]
    close()
    if orphans and leading:
        records.insert(0, Record(records[0].time if records else fallback, agent, tuple(orphans)))
    return records


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").removesuffix("\r")


class _Enough:
    """Counts the headers of lines read from a file's end, newest first, until they hold every
    record wanted: `last` of them in [since, until), or one older than `since`."""

    def __init__(self, last: int | None, since: float | None, until: float | None) -> None:
        self.last, self.since, self.until = last, since, until
        self.count = 0

    def seen(self, newest_first: Iterable[bytes]) -> bool:
        if self.last is None and self.since is None:
            return False
        for raw in newest_first:
            at = header_time(_decode(raw))
            if at is None:
                continue
            if self.since is not None and at < self.since:
                return True
            if self.until is None or at < self.until:
                self.count += 1
                if self.last is not None and self.count >= self.last:
                    return True
        return False


def read_tail(path: Path, agent: str, *, last: int | None = None, since: float | None = None,
              until: float | None = None, partial: bool = True) -> tuple[list[Record], int]:
    """The records of `path` timed in [since, until), at most the `last` of them, and the offset
    just past the last complete line (where a follower goes on). The file is read backwards from
    its end only as far as those records need. With `partial`, a last line still without its
    newline is read too."""
    enough = _Enough(last, since, until)
    newest_first: list[bytes] = []  # the file's last piece (b"" after a final newline) first
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        mtime = os.fstat(fh.fileno()).st_mtime
        start, block, earliest = end, BLOCK, b""  # earliest: a line that may begin before `start`
        while start > 0:
            step = min(block, start)
            start -= step
            block = min(block * 2, MAX_BLOCK)
            fh.seek(start)
            parts = (fh.read(step) + earliest).split(b"\n")
            earliest = parts[0]
            complete = parts[:0:-1]
            counted = complete[1:] if not newest_first else complete  # the last piece may be unfinished
            newest_first.extend(complete)
            if enough.seen(counted):
                break
    if start == 0:
        newest_first.append(earliest)  # the file's first line
    tail = newest_first[0]
    offset = end - len(tail)
    lines = newest_first[:0:-1] + ([tail] if partial and tail else [])
    records = parse_lines(agent, (_decode(raw) for raw in lines), leading=start == 0, fallback=mtime)
    records = [r for r in records if (since is None or r.time >= since) and (until is None or r.time < until)]
    if last is not None:
        records = records[-last:] if last > 0 else []
    return records, offset


def merge(streams: Iterable[list[Record]]) -> list[Record]:
    """Records of several files in time order; each file's own order is kept."""
    return list(heapq.merge(*streams, key=lambda record: record.time))


def agent_logs(logs: Path) -> dict[str, Path]:
    """The log files in `logs` named after an agent (`<role>-<name>.log`), by agent id."""
    found: dict[str, Path] = {}
    try:
        entries = list(os.scandir(logs))
    except FileNotFoundError:
        return found
    for entry in entries:
        stem = entry.name.removesuffix(SUFFIX)
        if stem == entry.name or not entry.is_file():
            continue
        try:
            names.split_agent_id(stem)
        except InvalidNameError:
            continue
        found[stem] = Path(entry.path)
    return dict(sorted(found.items()))


class Follower:
    """What is appended to one log file after `offset`, given out record by record.

    A record is held back until the next header arrives or the file has been quiet for HOLD
    seconds, so that a record written in several pieces is given out whole."""

    def __init__(self, path: Path, agent: str, offset: int = 0, *, since: float | None = None,
                 until: float | None = None) -> None:
        self.path = path
        self.agent = agent
        self.offset = offset
        self.since = since
        self.until = until
        self.file_id = _file_id(path)
        self.rest = b""  # the start of a line still being written
        self.held: list[str] = []  # the lines of the last record, not given out yet
        self.grew = time.monotonic()
        self.last_time = time.time()

    def due(self) -> float | None:
        """When (time.monotonic) the held record is given out unless more arrives."""
        return self.grew + HOLD if self.held else None

    def poll(self, now: float | None = None) -> list[Record]:
        """The records completed since the last poll."""
        now = time.monotonic() if now is None else now
        ready: list[list[str]] = []
        data = self._read_new(ready)
        if data:
            self.grew = now
            lines = (self.rest + data).split(b"\n")
            self.rest = lines.pop()
            for raw in lines:
                line = _decode(raw)
                if header_time(line) is not None and self.held:
                    ready.append(self.held)
                    self.held = []
                self.held.append(line)
        due = self.due()
        if due is not None and now >= due:
            ready.append(self.held)
            self.held = []
        return self._keep([self._make(group) for group in ready])

    def _read_new(self, ready: list[list[str]]) -> bytes:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return b""
        size, file_id = st.st_size, (st.st_dev, st.st_ino)
        if file_id != self.file_id or size < self.offset:  # replaced or truncated: from the start
            if self.held:
                ready.append(self.held)
            self.file_id, self.offset, self.rest, self.held = file_id, 0, b"", []
        if size == self.offset:
            return b""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        return data

    def _make(self, lines: list[str]) -> Record:
        [record] = parse_lines(self.agent, lines, leading=True, fallback=self.last_time)
        self.last_time = record.time
        return record

    def _keep(self, records: list[Record]) -> list[Record]:
        return [r for r in records
                if (self.since is None or r.time >= self.since) and (self.until is None or r.time < self.until)]


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
