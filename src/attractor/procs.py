"""Process identity: a pid together with its start time, so that a reused pid is never taken
for the process that was recorded.

A pid alone names a process only while that process lives; after it exits (a crash, a reboot)
the kernel hands the number to the next process that starts. Every pid attractor records goes
with the process's start time, field 22 of `/proc/<pid>/stat` (clock ticks since boot), and
nothing is signalled unless both still match.

`/proc/<pid>/stat` is `pid (comm) state ppid pgrp session …`; `comm` may hold spaces and
parentheses, so the fields are counted from after the last `)`: the state is field 3, the
session field 6, the start time field 22.

Start times count clock ticks (10 ms here): two processes started within one tick share one. A
pid the kernel reuses by itself comes back only after it cycled through every other pid, which
takes far longer than a tick.

Where there is no /proc (not Linux), start times are unknown (None): `same_process` then
answers False for any recorded start time, so nothing is signalled on a guess.

A leaf: imports nothing of attractor.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# states of a process that has finished: it holds nothing any more (a zombie waits to be reaped)
_FINISHED_STATES = frozenset({"Z", "X", "x"})


@dataclass(frozen=True)
class ProcStat:
    """The fields of `/proc/<pid>/stat` attractor uses."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int

    @property
    def finished(self) -> bool:
        return self.state in _FINISHED_STATES


def parse_stat(raw: bytes) -> ProcStat:
    """Parse the text of `/proc/<pid>/stat`; ValueError if it is not one."""
    close = raw.rfind(b")")
    open_ = raw.find(b"(")
    if close < 0 or open_ < 0 or open_ > close:
        raise ValueError("no '(comm)' in a /proc stat line")
    fields = raw[close + 1:].split()
    # after ')' come fields 3 (state) … 22 (starttime) and more: at least 20 of them
    if len(fields) < 20:
        raise ValueError(f"a /proc stat line with {len(fields) + 2} fields, expected at least 22")
    return ProcStat(
        pid=int(raw[:open_].strip()),
        state=fields[0].decode("ascii", "replace"),
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        start_time=int(fields[19]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """The stat of process `pid`, or None if there is no such process (or no /proc)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    try:
        return parse_stat(raw)
    except ValueError:
        return None


def have_proc() -> bool:
    return (PROC / "self" / "stat").exists()


def pid_alive(pid: int | None) -> bool:
    """True if a process with this pid exists and has not finished (an exited child that nobody
    reaped yet still answers `kill -0`, but it holds nothing)."""
    if pid is None or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OverflowError:
        return False
    stat = read_stat(pid)
    if stat is None:
        return have_proc() is False  # no /proc: kill -0 is all there is
    return not stat.finished


def start_time(pid: int | None) -> int | None:
    """The start time (clock ticks since boot) of live process `pid`; None if it is gone,
    finished, or start times are unknown here (no /proc)."""
    if pid is None:
        return None
    stat = read_stat(pid)
    if stat is None or stat.finished:
        return None
    return stat.start_time


def same_process(pid: int | None, start: int | None) -> bool:
    """True only if `pid` is alive and is the process that had start time `start` when it was
    recorded. An unknown start time (None: an old record, no /proc) is never a match."""
    if pid is None or start is None:
        return False
    current = start_time(pid)
    return current is not None and current == start


def signal_if_same(pid: int | None, start: int | None, sig: int) -> bool:
    """Send `sig` to `pid` only if it is still the recorded process; True if it was sent.

    Where pidfds exist the check cannot race a reuse of the pid: the pidfd is opened first, the
    start time checked after, and the signal goes through the pidfd (to the process it names,
    even if the pid was reused meanwhile). Without pidfds a pid can only be reused between the
    check and the kill if the recorded process exits and the kernel cycles through its pids."""
    if pid is None or start is None or isinstance(pid, bool) or pid <= 0:
        return False
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
    try:
        if not same_process(pid, start):
            return False
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def signal_group_if_same(pgid: int | None, start: int | None, sig: int) -> bool:
    """Send `sig` to process group `pgid`, whose leader is the recorded process (`start`);
    only while that leader is alive and the same. True if it was sent."""
    if not same_process(pgid, start):
        return False
    assert pgid is not None
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def session_members(sid: int) -> list[ProcStat]:
    """Every live process of session `sid` (its leader may be gone: the others keep the id)."""
    members = []
    try:
        entries = os.listdir(PROC)
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        stat = read_stat(int(name))
        if stat is not None and stat.session == sid and not stat.finished:
            members.append(stat)
    return members

