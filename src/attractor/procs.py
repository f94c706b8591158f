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
import select
import signal
import threading
from collections.abc import Hashable
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


def terminal_of(pid: int | None) -> Path | None:
    """The terminal (a pty's `/dev/pts/N`) on the standard input, output or error of `pid`;
    None when none of them is one, the process is gone, or there is no /proc."""
    if pid is None or pid <= 0:
        return None
    for fd in (1, 2, 0):
        try:
            target = os.readlink(PROC / str(pid) / "fd" / str(fd))
        except OSError:
            continue
        if target.startswith("/dev/pts/"):
            return Path(target)
    return None


def written_stamp(terminal: Path) -> int | None:
    """When the terminal was last written to, as Linux keeps it (the device's mtime in ns), or
    None if it cannot be read. Linux moves this stamp only when a write lands in another
    8-second slot than the stamp's (so that it does not leak keystroke timing): a write at
    least 8 s after the stamp always moves it, closer ones may not."""
    try:
        return os.stat(terminal).st_mtime_ns
    except OSError:
        return None


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



class DeathWatch:
    """Sleep until a watched process ends, someone calls `wake`, or a timeout passes.

    Each watched process is held by a pidfd (opened first, its start time checked after, so a
    reused pid is never watched in its place); the kernel makes a pidfd readable the moment its
    process exits, whoever its parent is. `wake` (any thread) ends the current or next `wait`
    through a pipe. Where pidfds do not exist (not Linux, an old kernel) `watch` answers False and
    the caller's timeout is the only way to notice a death: every wait has one."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)
        self._fds: dict[Hashable, tuple[int, int, int | None]] = {}  # key -> (pidfd, pid, start)
        self._lock = threading.Lock()

    def watch(self, key: Hashable, pid: int | None, start: int | None) -> bool:
        """Watch the recorded process (`pid` with start time `start`) under `key`, replacing what
        `key` watched before. False if it is not alive (or not that process) or pidfds are
        unavailable: the caller then finds the death on its timeout."""
        with self._lock:
            held = self._fds.get(key)
            if held is not None and held[1:] == (pid, start):
                return True
            self._drop(key)
            if pid is None or start is None or isinstance(pid, bool) or pid <= 0:
                return False
            try:
                pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                return False
            if not same_process(pid, start):
                os.close(pidfd)
                return False
            self._fds[key] = (pidfd, pid, start)
            self._poll.register(pidfd, select.POLLIN)
            return True

    def unwatch(self, key: Hashable) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        held = self._fds.pop(key, None)
        if held is not None:
            self._poll.unregister(held[0])
            os.close(held[0])

    def watching(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._fds

    def wake(self) -> None:
        """End the current (or the next) `wait` at once; safe from any thread."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"!")

    def set(self) -> None:
        """`wake`, under the name of `threading.Event.set`: a file-system watch rings it."""
        self.wake()

    def wait(self, timeout: float) -> frozenset[Hashable]:
        """Sleep up to `timeout` seconds; returns the keys whose process ended (each is then
        no longer watched). An empty set: woken, or the timeout passed."""
        try:
            ready = self._poll.poll(max(0.0, timeout) * 1000.0)
        except InterruptedError:
            ready = []
        ended: set[Hashable] = set()
        with self._lock:
            fds = {fd for fd, _ in ready}
            if self._read in fds:
                with contextlib.suppress(BlockingIOError, OSError):
                    while os.read(self._read, 4096):
                        pass
            for key, (pidfd, _pid, _start) in list(self._fds.items()):
                if pidfd in fds:
                    ended.add(key)
                    self._drop(key)
        return frozenset(ended)

    def close(self) -> None:
        with self._lock:
            for key in list(self._fds):
                self._drop(key)
            for fd in (self._read, self._write):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> DeathWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
