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

Bytes 8-15 stamp the last hand-over through the queue (a monotonic clock in ns). The byte-range
calls and the uncontended take live in `formats.py`, shared with the hot commands' short path.

Staleness: none to clean up. A dead process's byte locks vanish with it; if a waiter dies, the
one behind it goes straight on to wait for `HELD`, so mutual exclusion never rests on the queue.
A waiter that is stopped rather than dead (Ctrl-Z, SIGSTOP, a debugger) would hold up everyone
behind it, so waiters check every STALL_CHECK seconds: no hand-over and `HELD` free at two
checks in a row means the queue ahead is stuck, and the checker takes `HELD` past it. Order is
given up only then, and for `timeout=0` callers, which take a free `HELD` without queueing.
Where open-file-description locks are missing (not Linux), `HELD` is a plain flock.

Limits: a process forked (without exec) while it holds a lock keeps it until the child exits,
as with any lock that belongs to an open file; the child does drop its parent's waits. A
KeyboardInterrupt that lands in the few bytecodes where a descriptor passes from one owner to
the next (the waiter thread's result to the caller, the caller's to `file_lock`) can leave the
lock held until the process exits; everywhere else an interrupted wait lets go when its turn
comes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from attractor.errors import LockTimeoutError, UnsafeStateFileError, no_space
from attractor.store.formats import (
    FILE_MODE,
    FIRST_TICKET,
    GUARD,
    HELD,
    QUEUED,
    SERVED,
    TICKETS,
    open_lock,
    try_fast,
)
from attractor.store.formats import draw_ticket as _draw_ticket
from attractor.store.formats import is_free as _is_free
from attractor.store.formats import lock_byte as _lock
from attractor.store.formats import mark_served as _mark_served
from attractor.store.formats import next_ticket as _next_ticket
from attractor.store.formats import ticket_byte as _ticket_byte
from attractor.store.formats import unlock_byte as _unlock

__all__ = ["FILE_MODE", "FIRST_TICKET", "GUARD", "HELD", "QUEUED", "SERVED", "TICKETS", "file_lock"]

DEFAULT_LOCK_TIMEOUT = 10.0
STALL_CHECK = 0.1  # seconds between a waiter's checks that the queue ahead still moves


def _wait_turn(waiter: _Waiter) -> None:
    """Block until the waiter's open file holds the lock: draw a ticket if there is none yet,
    wait for the one ahead, then for HELD (on a waiter thread)."""
    fd = waiter.fd
    if not QUEUED:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    if waiter.ticket < 0:
        _lock(fd, GUARD, wait=True)
        try:
            waiter.ticket = _draw_ticket(fd, _next_ticket(fd))
        finally:
            _unlock(fd, GUARD)
    ahead = _ticket_byte(waiter.ticket - 1)
    _lock(fd, ahead, wait=True)
    _unlock(fd, ahead)
    _lock(fd, HELD, wait=True)
    _mark_served(fd)
    _unlock(fd, _ticket_byte(waiter.ticket))


def _bypass(lock_path: Path) -> int | None:
    """A descriptor of its own holding HELD, if HELD can be had right now."""
    fd = _open(lock_path)
    if _lock(fd, HELD, wait=False):
        _mark_served(fd)
        return fd
    os.close(fd)
    return None


class _Waiter:
    """One wait in the queue, run by a helper thread on a duplicate of the caller's descriptor
    (the same open file, so the same locks). A blocking lock call cannot time out, so the
    caller waits on `ready` and may abandon the wait (timeout, an exception such as Ctrl-C, or
    a bypass). An abandoned waiter keeps its place and lets go as soon as its turn comes, so
    nobody behind it waits longer than they would have; the next wait of this process for the
    same lock takes it over instead of queueing again, so repeated timeouts leave at most one
    behind."""

    live: set[_Waiter] = set()  # every waiter whose descriptor is open
    abandoned_by_lock: dict[tuple[int, int], list[_Waiter]] = {}
    registry = threading.Lock()

    def __init__(self, origin: int, ticket: int, key: tuple[int, int]) -> None:
        self.origin = origin  # the caller's descriptor (closed by file_lock)
        self.fd = os.dup(origin)
        self.ticket = ticket
        self.key = key
        self.mutex = threading.Lock()
        self.ready = threading.Lock()  # released when the wait is over
        self.ready.acquire()
        self.done = False
        self.abandoned = False
        self.closed = False
        self.handed_over = False  # to a helper thread
        self.error: BaseException | None = None
        with self.registry:
            self.live.add(self)

    @classmethod
    def take_over(cls, key: tuple[int, int], origin: int) -> _Waiter | None:
        """An abandoned waiter of this process for the same lock, still in the queue, now
        waited for by the caller holding `origin`."""
        with cls.registry:
            pending = cls.abandoned_by_lock.get(key)
            waiter = pending.pop() if pending else None
            if not pending:
                cls.abandoned_by_lock.pop(key, None)
        if waiter is None:
            return None
        with waiter.mutex:
            if waiter.done:  # its thread is closing it
                return None
            waiter.origin = origin  # first: a fork in between must not close a stale number
            waiter.abandoned = False
        return waiter

    def wait(self) -> None:
        """The helper thread's part."""
        try:
            _wait_turn(self)
        except BaseException as exc:  # handed to the caller, or dropped with the descriptor
            self.error = exc
        with self.mutex:
            self.done = True
            abandoned = self.abandoned
        if abandoned:
            self.close()

    def abandon(self, *, take_over: bool = True) -> None:
        """The caller gives up on this wait (its thread still waits its turn). With
        `take_over`, the next wait of this process for the lock may take its place."""
        with self.mutex:
            if self.abandoned or self.closed:
                return
            if not self.done:
                self.abandoned = True
                if take_over:
                    with self.registry:
                        self.abandoned_by_lock.setdefault(self.key, []).append(self)
                return
        self.close()  # it got the lock in the meantime: let go at once

    def close(self) -> None:
        with self.registry:
            if self.closed:
                return
            self.closed = True
            self.live.discard(self)
            pending = self.abandoned_by_lock.get(self.key, [])
            if self in pending:
                pending.remove(self)
            if not pending:
                self.abandoned_by_lock.pop(self.key, None)
        os.close(self.fd)  # the last descriptor of the open file, unless the caller's is open


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
        waiter.handed_over = True  # before the release: from here on only abandon, never close
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


def _after_fork_in_child() -> None:
    """None of the parent's threads exist in a forked child: forget them, and close the
    descriptors of their waits, which would otherwise keep the parent's place and locks."""
    for waiter in _Waiter.live:
        # the caller's own descriptor is open only while it still waits
        for fd in {waiter.fd} if waiter.abandoned else {waiter.fd, waiter.origin}:
            with contextlib.suppress(OSError):
                os.close(fd)
    _Waiter.live = set()
    _Waiter.abandoned_by_lock = {}
    _Waiter.registry = threading.Lock()
    _Helper.idle = []
    _Helper.idle_mutex = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _lock_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _wait_queued(fd: int, lock_path: Path, timeout: float, ticket: int = -1,
                 waiter: _Waiter | None = None) -> int:
    """Wait for the lock through a helper thread, checking every STALL_CHECK seconds that the
    queue ahead still moves: if nobody has been served since the last check and HELD is free,
    the one ahead is stopped (Ctrl-Z, SIGSTOP, a debugger) rather than dead, and this caller
    takes HELD past it. Returns the descriptor that holds the lock: `fd`, or one the caller
    must also close."""
    taken_over = waiter is not None
    if waiter is None:
        waiter = _Waiter(fd, ticket, _lock_key(fd))
        try:
            _Helper.run_soon(waiter)
        except BaseException:  # no thread could start, or Ctrl-C just as one did
            if waiter.handed_over:
                waiter.abandon()  # its thread may be using the descriptor: it closes it
            else:
                waiter.close()
            raise
    deadline = None if timeout < 0 else time.monotonic() + timeout
    served, stuck = None, 0
    try:
        while True:
            step = STALL_CHECK if deadline is None else min(STALL_CHECK, deadline - time.monotonic())
            if step > 0 and waiter.ready.acquire(timeout=step):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeoutError(lock_path, timeout)
            if not QUEUED:
                continue
            seen = os.pread(fd, 8, SERVED)
            # stuck: no hand-over and HELD free at two checks in a row (one could fall in the
            # moment between a release and the next waiter taking HELD)
            stuck = stuck + 1 if seen == served and _is_free(fd, HELD) else 0
            served = seen
            if stuck >= 2:
                held = _bypass(lock_path)
                if held is not None:
                    try:
                        if waiter.ticket >= 0:  # let those behind this wait go on to HELD too
                            _unlock(waiter.fd, _ticket_byte(waiter.ticket))
                        waiter.abandon(take_over=False)  # it stays behind the stuck one
                    except BaseException:
                        os.close(held)
                        raise
                    return held
        if waiter.error is not None:
            raise waiter.error
        if not taken_over:
            waiter.close()  # `fd` refers to the same open file and keeps the locks
            return fd
        with _Waiter.registry:
            _Waiter.live.discard(waiter)
        return waiter.fd  # a wait taken over from an earlier call: its descriptor holds the lock
    except BaseException:  # a timeout, Ctrl-C, ...: the waiter thread keeps the place
        waiter.abandon()
        raise


def _acquire(fd: int, lock_path: Path, timeout: float) -> int:
    """Take the lock; returns the descriptor holding it (see `_wait_queued`)."""
    if timeout != timeout:
        raise ValueError("lock timeout is NaN")
    if timeout == 0:  # one try, no queueing: free right now or LockTimeoutError
        if QUEUED and _lock(fd, HELD, wait=False):
            return fd
        if not QUEUED:
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
        raise LockTimeoutError(lock_path, timeout)
    timeout = -1 if timeout == math.inf else timeout
    ticket = -1
    if _Waiter.abandoned_by_lock:  # this process gave up waiting for some lock
        waiter = _Waiter.take_over(_lock_key(fd), fd)
        if waiter is not None:  # take its place rather than queue again
            return _wait_queued(fd, lock_path, timeout, waiter=waiter)
    if QUEUED:
        fast = try_fast(fd)
        if fast is True:
            return fd
        ticket = int(fast)
    else:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
    return _wait_queued(fd, lock_path, timeout, ticket)


def _open(lock_path: Path) -> int:
    try:
        return open_lock(lock_path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStateFileError(lock_path, "the lock file is a symbolic link; attractor never makes one, "
                                       "so something else did: remove it") from None
        if exc.errno == errno.EISDIR:
            raise UnsafeStateFileError(lock_path, "the lock file is a directory: remove it") from None
        full = no_space(exc, lock_path)
        if full is not None:
            raise full from None
        raise


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold `<path>.lock` (beside the data) for the duration of the block.

    Waiters are served in the order they arrived and sleep in the kernel; a process that dies
    releases everything it held, so a dead holder never wedges anyone. `timeout` < 0 waits
    forever, 0 tries once (taking the lock only if it is free right now), > 0 waits that many
    seconds; running out raises LockTimeoutError.
    """
    lock_path = path.with_name(path.name + ".lock")
    fd = held = -1
    try:
        fd = _open(lock_path)
        held = _acquire(fd, lock_path, timeout)
        yield
    finally:
        if held not in (-1, fd):
            os.close(held)
        if fd != -1:
            os.close(fd)
