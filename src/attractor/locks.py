"""The lock beside every state file: `<file>.lock`, first come first served, released by the
kernel when its holder dies.

File format: `<file>.lock`, mode 0600, never removed (removing it would let two processes lock
two different files). Its content is the ticket counter: 8 bytes, little-endian (an empty or
short file counts as 0). Byte-range locks (Linux open-file-description locks, owned by the open
file rather than the process) mark who holds and who waits:

- byte 0, `GUARD`: held for the few microseconds of taking a ticket (read, bump, write);
- byte 1, `HELD`: the lock proper. Only its holder runs the critical section;
- byte `2 + t`, ticket `t`: held by the process that drew ticket `t`, from drawing it until it
  lets go of `HELD`.

To lock: draw ticket `t` under `GUARD` and lock byte `2 + t` before letting go of `GUARD`; wait
until byte `2 + t - 1` is free (the one ahead has finished, given up or died); then take `HELD`.
Each waiter sleeps on its own byte, so a release wakes exactly the next in line, and a process
that releases and locks again queues behind everyone already waiting. A plain flock wakes every
waiter and lets the releaser take the lock straight back: with 32 processes updating one record
back to back on two cores its p99 wait is about twice the queue's (bench/state_writes.py, README
"Performance"). A lock taken while nobody holds or waits for it draws no ticket.

Staleness: none to clean up. A dead process's byte locks vanish with it; if a waiter dies, the
one behind it goes straight on to wait for `HELD`, so mutual exclusion never rests on the queue.
Where open-file-description locks are missing (not Linux), `HELD` is a plain flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from attractor.errors import LockTimeoutError

FILE_MODE = 0o600
DEFAULT_LOCK_TIMEOUT = 10.0

GUARD, HELD, FIRST_TICKET = 0, 1, 2
TICKETS = 1 << 40  # ticket numbers wrap here; far more than can ever wait at once
# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (must be 0), padding
_FLOCK = struct.Struct("@hhqqi4x")
QUEUED = sys.platform == "linux" and hasattr(fcntl, "F_OFD_SETLKW") and _FLOCK.size == 32


def _range(kind: int, start: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, start, 1, 0)


def _lock(fd: int, start: int, *, wait: bool) -> bool:
    """Lock one byte for writing; False if it is taken and `wait` is off."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, _range(fcntl.F_WRLCK, start))
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by someone else
        return False
    return True


def _unlock(fd: int, start: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _range(fcntl.F_UNLCK, start))


def _is_free(fd: int, start: int) -> bool:
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _range(fcntl.F_WRLCK, start))
    kind: int = _FLOCK.unpack(answer)[0]
    return kind == fcntl.F_UNLCK


def _ticket_byte(ticket: int) -> int:
    return FIRST_TICKET + ticket % TICKETS


def _next_ticket(fd: int) -> int:
    raw = os.pread(fd, 8, 0)
    return int.from_bytes(raw, "little") % TICKETS if len(raw) == 8 else 0


def _draw_ticket(fd: int, ticket: int) -> int:
    """Take `ticket` (the next one; the caller holds GUARD) and lock its byte."""
    os.pwrite(fd, ((ticket + 1) % TICKETS).to_bytes(8, "little"), 0)
    _lock(fd, _ticket_byte(ticket), wait=True)  # nobody else locks a fresh ticket's byte
    return ticket


def _try_fast(fd: int) -> int | bool:
    """Take the lock without blocking if it is free and nobody waits for it: True. Otherwise
    queue up: the ticket drawn (-1 if GUARD was busy). The uncontended path draws no ticket,
    so it never writes to the lock file."""
    if not _lock(fd, GUARD, wait=False):
        return -1
    try:
        ticket = _next_ticket(fd)
        # everyone queued holds their ticket's byte until they hold HELD, so a free byte for the
        # last ticket drawn means nobody is waiting
        if _is_free(fd, _ticket_byte(ticket - 1)) and _lock(fd, HELD, wait=False):
            return True
        return _draw_ticket(fd, ticket)
    finally:
        _unlock(fd, GUARD)


def _wait_turn(fd: int, ticket: int) -> None:
    """Block until `fd` holds the lock: draw a ticket if there is none (-1), wait for the one
    ahead, then for HELD."""
    if not QUEUED:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    if ticket < 0:
        _lock(fd, GUARD, wait=True)
        try:
            ticket = _draw_ticket(fd, _next_ticket(fd))
        finally:
            _unlock(fd, GUARD)
    ahead = _ticket_byte(ticket - 1)
    _lock(fd, ahead, wait=True)
    _unlock(fd, ahead)
    _lock(fd, HELD, wait=True)
    _unlock(fd, _ticket_byte(ticket))


class _Waiter:
    """One timed wait: `_wait_turn` run by a helper thread on its own duplicate of the lock
    descriptor (the same open file, so the same locks). A blocking lock call cannot time out;
    the caller waits on `ready` instead and abandons the waiter on timeout, which then keeps its
    place in the queue and lets go as soon as its turn comes, so nobody behind it waits longer
    than they would have."""

    def __init__(self, fd: int, ticket: int) -> None:
        self.fd = fd
        self.ticket = ticket
        self.mutex = threading.Lock()
        self.ready = threading.Lock()  # released when the wait is over
        self.ready.acquire()
        self.done = False
        self.abandoned = False
        self.error: OSError | None = None

    def wait(self) -> None:
        try:
            _wait_turn(self.fd, self.ticket)
        except OSError as exc:
            self.error = exc
        with self.mutex:
            self.done = True
            abandoned = self.abandoned
        if abandoned:
            os.close(self.fd)  # the last descriptor of the open file: releases everything


class _Helper(threading.Thread):
    """A thread that runs waiters one after another. Idle ones are kept for the next wait:
    starting a thread costs about as much as a whole uncontended update, and on a busy machine
    that time comes out of the lock holder's."""

    idle: list[_Helper] = []
    idle_mutex = threading.Lock()

    def __init__(self) -> None:
        super().__init__(name="lock waiter", daemon=True)
        self.job: _Waiter | None = None
        self.wake = threading.Lock()  # released when there is a job
        self.wake.acquire()

    @classmethod
    def run_soon(cls, waiter: _Waiter) -> None:
        with cls.idle_mutex:
            helper = cls.idle.pop() if cls.idle else None
        if helper is None:
            helper = cls()
            helper.start()
        helper.job = waiter
        helper.wake.release()

    def run(self) -> None:
        while True:
            self.wake.acquire()
            job, self.job = self.job, None
            assert job is not None
            job.wait()
            with self.idle_mutex:  # idle again before the caller resumes and may need one
                self.idle.append(self)
            job.ready.release()


def _forget_helpers() -> None:
    """In a forked child: none of the parent's threads exist there."""
    _Helper.idle = []
    _Helper.idle_mutex = threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def _acquire(fd: int, lock_path: Path, timeout: float) -> None:
    if timeout == 0:  # one try, no queueing: free right now or LockTimeoutError
        if QUEUED and _lock(fd, HELD, wait=False):
            return
        if not QUEUED:
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
        raise LockTimeoutError(lock_path, timeout)
    ticket = -1
    if QUEUED:
        fast = _try_fast(fd)
        if fast is True:
            return
        ticket = int(fast)
    else:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
    if timeout < 0:
        _wait_turn(fd, ticket)
        return
    waiter = _Waiter(os.dup(fd), ticket)
    _Helper.run_soon(waiter)
    waiter.ready.acquire(timeout=timeout)
    with waiter.mutex:
        if not waiter.done:
            waiter.abandoned = True
            raise LockTimeoutError(lock_path, timeout)
    os.close(waiter.fd)  # `fd` refers to the same open file and keeps the locks
    if waiter.error is not None:
        raise waiter.error


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold `<path>.lock` (beside the data) for the duration of the block.

    Waiters are served in the order they arrived and sleep in the kernel; a process that dies
    releases everything it held, so a dead holder never wedges anyone. `timeout` < 0 waits
    forever, 0 tries once (taking the lock only if it is free right now), > 0 waits that many
    seconds; running out raises LockTimeoutError.
    """
    lock_path = path.with_name(path.name + ".lock")
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:  # without O_CREAT first: creating takes the directory's lock, which writers there need
        fd = os.open(lock_path, flags)
    except FileNotFoundError:
        fd = os.open(lock_path, flags | os.O_CREAT, FILE_MODE)
    try:
        _acquire(fd, lock_path, timeout)
        yield
    finally:
        os.close(fd)
