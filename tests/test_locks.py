"""The lock beside every state file, with real processes and threads: waiters are served in
arrival order even when the releaser asks again at once, a waiter killed or timed out in the
queue neither lets the next one in early nor holds it up, threads of one process exclude each
other, a forked child gets its own waiter threads, and a dead holder releases everything."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from attractor.errors import LockTimeoutError
from attractor.store import locks
from tests.helpers import REPO_ROOT, retry_until

pytestmark = pytest.mark.skipif(not locks.QUEUED, reason="the queue needs Linux OFD locks")

# Takes the lock `rounds` times back to back, logging each time it holds it; on a timeout it
# logs that and stays alive (its waiter thread keeps its place) until stdin closes.
LOCKER = (
    "import sys\n"
    f"sys.path.insert(0, {str(REPO_ROOT / 'src')!r})\n"
    "from pathlib import Path\n"
    "from attractor.store import locks\n"
    "from attractor.errors import LockTimeoutError\n"
    "path, name, timeout, rounds, log = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), "
    "int(sys.argv[4]), sys.argv[5]\n"
    "for n in range(rounds):\n"
    "    try:\n"
    "        with locks.file_lock(path, timeout):\n"
    "            with open(log, 'a') as fh:\n"
    "                fh.write(f'{name}#{n}\\n')\n"
    "    except LockTimeoutError:\n"
    "        with open(log, 'a') as fh:\n"
    "            fh.write(f'{name} timed out\\n')\n"
    "        sys.stdin.read()\n"
)

HOLDER = (
    "import sys, time\n"
    f"sys.path.insert(0, {str(REPO_ROOT / 'src')!r})\n"
    "from pathlib import Path\n"
    "from attractor.store import locks\n"
    "with locks.file_lock(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


# Waits for the lock, is interrupted by SIGINT (Ctrl-C) while waiting, then locks again.
INTERRUPTED = (
    "import signal, sys\n"
    # Ctrl-C raises KeyboardInterrupt even when this process inherited SIGINT ignored (started
    # from a background job of a shell without job control, as `nohup … &` does)
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    f"sys.path.insert(0, {str(REPO_ROOT / 'src')!r})\n"
    "from pathlib import Path\n"
    "from attractor.store import locks\n"
    "path, log = Path(sys.argv[1]), sys.argv[2]\n"
    "def note(text):\n"
    "    with open(log, 'a') as fh:\n"
    "        fh.write(text + '\\n')\n"
    "try:\n"
    "    with locks.file_lock(path, 30):\n"
    "        note('got it first')\n"
    "except KeyboardInterrupt:\n"
    "    note('interrupted')\n"
    "with locks.file_lock(path, 30):\n"
    "    note('got it after')\n"
)


@contextlib.contextmanager
def held_elsewhere(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `path`'s lock until it is killed (or the block ends)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()


def tickets(path: Path) -> int:
    """How many tickets have been drawn on `path`'s lock (the counter in the lock file)."""
    raw = path.with_name(path.name + ".lock").read_bytes()[:8]
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


def locker(path: Path, name: str, log: Path, *, timeout: float = 10, rounds: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), name, str(timeout), str(rounds), str(log)],
        stdin=subprocess.PIPE, text=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGSTOP `proc` and wait until every thread of it has stopped."""
    proc.send_signal(signal.SIGSTOP)

    def all_stopped() -> bool:
        tasks = Path(f"/proc/{proc.pid}/task")
        return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                   for task in tasks.iterdir())

    retry_until(all_stopped, what=f"pid {proc.pid} stopped")


def _threads_of(pid: int) -> str:
    """Each thread of `pid` with its state and kernel wait channel, for a failure message."""
    out = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            out.append(f"{task.name}:{state}:{(task / 'wchan').read_text()}")
        except OSError:
            continue
    return ", ".join(out) or "gone"


def log_lines(log: Path) -> list[str]:
    return log.read_text().split("\n")[:-1] if log.exists() else []


def stays_false(predicate: Callable[[], bool], seconds: float) -> bool:
    """Watch `predicate` for `seconds` (something that must NOT happen); True if it never did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return False
        time.sleep(0.02)
    return not predicate()


def finish(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=20)
        finally:
            proc.kill()


WAITERS = 8


def test_waiters_are_served_in_arrival_order_and_a_releaser_queues_again(tmp_path: Path) -> None:
    path, log = tmp_path / "rec.json", tmp_path / "log"
    procs = []
    try:
        with locks.file_lock(path):
            drawn = tickets(path)
            for k in range(WAITERS):
                procs.append(locker(path, f"w{k}", log, rounds=2))
                retry_until(lambda k=k: tickets(path) == drawn + k + 1, what=f"w{k} queued")
            assert log_lines(log) == []
        finish(procs)
    finally:
        finish(procs)
    lines = log_lines(log)
    assert lines[:WAITERS] == [f"w{k}#0" for k in range(WAITERS)]
    # each asked again the moment it let go, and so went behind everyone already waiting
    assert sorted(lines[WAITERS:]) == sorted(f"w{k}#1" for k in range(WAITERS))


def test_a_waiter_killed_in_the_queue_lets_nobody_in_early(tmp_path: Path) -> None:
    path, log = tmp_path / "rec.json", tmp_path / "log"
    first = second = None
    try:
        with locks.file_lock(path):
            drawn = tickets(path)
            first = locker(path, "first", log)
            retry_until(lambda: tickets(path) == drawn + 1, what="first queued")
            second = locker(path, "second", log)
            retry_until(lambda: tickets(path) == drawn + 2, what="second queued")
            first.kill()  # the one ahead of `second` is gone, but the lock is still held here
            first.wait()
            assert stays_false(log.exists, 0.5), log_lines(log)
        retry_until(lambda: log_lines(log) == ["second#0"], what="second got the lock")
    finally:
        finish([proc for proc in (first, second) if proc is not None])


def test_a_timed_out_waiter_keeps_its_place_and_passes_the_lock_on(tmp_path: Path) -> None:
    path, log = tmp_path / "rec.json", tmp_path / "log"
    procs = []
    try:
        with locks.file_lock(path):
            drawn = tickets(path)
            procs.append(locker(path, "impatient", log, timeout=0.3))
            retry_until(lambda: log_lines(log) == ["impatient timed out"], what="the timeout")
            procs.append(locker(path, "patient", log))
            retry_until(lambda: tickets(path) == drawn + 2, what="patient queued behind it")
        # `impatient` is alive and never takes the lock again, yet `patient` gets it
        retry_until(lambda: "patient#0" in log_lines(log), what="patient got the lock")
        assert procs[0].poll() is None
    finally:
        finish(procs)


def test_a_timed_out_waiter_thread_does_the_same_for_a_process_next_to_it(tmp_path: Path) -> None:
    path, log = tmp_path / "rec.json", tmp_path / "log"
    timeouts: list[LockTimeoutError] = []

    def impatient() -> None:
        try:
            with locks.file_lock(path, timeout=0.3):
                pass
        except LockTimeoutError as exc:
            timeouts.append(exc)

    patient = None
    try:
        with locks.file_lock(path):
            drawn = tickets(path)
            thread = threading.Thread(target=impatient)
            thread.start()
            thread.join(10)
            assert len(timeouts) == 1 and tickets(path) == drawn + 1
            patient = locker(path, "patient", log)
            retry_until(lambda: tickets(path) == drawn + 2, what="patient queued behind it")
        retry_until(lambda: log_lines(log) == ["patient#0"], what="patient got the lock")
    finally:
        finish([patient] if patient else [])


def test_a_wait_interrupted_by_ctrl_c_does_not_keep_the_lock(tmp_path: Path) -> None:
    path, log = tmp_path / "rec.json", tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(path), str(log)])
    try:
        with locks.file_lock(path):
            retry_until(lambda: tickets(path) == 1, what="queued")
            proc.send_signal(signal.SIGINT)
            try:
                retry_until(lambda: log_lines(log) == ["interrupted"], 30, what="the interrupt")
            except AssertionError as exc:  # what the waiter was doing, to tell a hang from slowness
                raise AssertionError(f"{exc}; log {log_lines(log)}; threads {_threads_of(proc.pid)}") from None
        # the interrupted wait let go when its turn came; the next call in that process got it
        retry_until(lambda: log_lines(log) == ["interrupted", "got it after"], what="relocked")
        assert proc.wait(10) == 0
        with locks.file_lock(path, timeout=0):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_a_stopped_waiter_does_not_hold_up_the_queue(tmp_path: Path) -> None:
    path, log = tmp_path / "rec.json", tmp_path / "log"
    procs = []
    try:
        with locks.file_lock(path):
            drawn = tickets(path)
            procs.append(locker(path, "stopped", log))
            retry_until(lambda: tickets(path) == drawn + 1, what="stopped queued")
            stop(procs[0])  # Ctrl-Z in its pane, or a debugger
            procs.append(locker(path, "next", log))
            retry_until(lambda: tickets(path) == drawn + 2, what="next queued behind it")
        retry_until(lambda: log_lines(log) == ["next#0"], what="next went past the stopped one")
        procs[0].send_signal(signal.SIGCONT)
        retry_until(lambda: log_lines(log) == ["next#0", "stopped#0"], what="stopped resumed")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
        finish(procs)


def test_once_past_a_stopped_waiter_the_next_calls_are_not_held_up(tmp_path: Path) -> None:
    path, log = tmp_path / "rec.json", tmp_path / "log"
    stopped = None
    try:
        with locks.file_lock(path):
            stopped = locker(path, "stopped", log)
            retry_until(lambda: tickets(path) == 1, what="stopped queued")
            stop(stopped)
        began = time.monotonic()
        with locks.file_lock(path, timeout=5):  # queues behind it, then goes past it
            assert time.monotonic() - began < 3
        for _ in range(3):  # the lock is free: no waiting for another stuck-queue check
            with locks.file_lock(path, timeout=0.05):
                pass
        stopped.send_signal(signal.SIGCONT)
        retry_until(lambda: log_lines(log) == ["stopped#0"], what="stopped resumed")
    finally:
        if stopped is not None:
            stopped.send_signal(signal.SIGCONT)
            finish([stopped])


def test_repeated_timeouts_leave_one_wait_behind_not_one_each(tmp_path: Path) -> None:
    path = tmp_path / "rec.json"
    with held_elsewhere(path) as holder:
        with pytest.raises(LockTimeoutError), locks.file_lock(path, timeout=0.05):
            pass
        threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            with pytest.raises(LockTimeoutError), locks.file_lock(path, timeout=0.05):
                pass
        assert threading.active_count() == threads
        assert len(os.listdir("/proc/self/fd")) == fds
        assert tickets(path) == 1  # every later call took over the first call's place
        holder.kill()
        with locks.file_lock(path, timeout=5):
            pass
    with locks.file_lock(path, timeout=0):  # nothing of this process still holds it
        pass


def _sleep_until_killed() -> None:
    time.sleep(60)


def test_a_forked_child_does_not_keep_its_parents_waits(tmp_path: Path) -> None:
    path, log = tmp_path / "rec.json", tmp_path / "log"
    child = multiprocessing.get_context("fork").Process(target=_sleep_until_killed)
    try:
        with held_elsewhere(path) as holder:
            with pytest.raises(LockTimeoutError), locks.file_lock(path, timeout=0.1):
                pass  # this process now has a wait in the queue, kept by a waiter thread
            child.start()
            holder.kill()
            other = locker(path, "other", log)  # another process, while the child lives on
            retry_until(lambda: log_lines(log) == ["other#0"], what="another process got it")
            finish([other])
            assert child.is_alive()
    finally:
        if child.pid is not None:
            child.kill()
            child.join()


def test_an_infinite_timeout_waits_while_the_lock_is_held(tmp_path: Path) -> None:
    """`timeout=inf` queues behind a holder (here another thread of this process: threads
    exclude each other) and takes the lock once it is let go: never an error, never earlier."""
    path = tmp_path / "rec.json"
    events: list[str] = []
    errors: list[BaseException] = []

    def wait_forever() -> None:
        try:
            with locks.file_lock(path, timeout=math.inf):
                events.append("waiter holds it")
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_forever, daemon=True)
    with locks.file_lock(path):
        drawn = tickets(path)
        waiter.start()
        retry_until(lambda: tickets(path) == drawn + 1, what="the waiter queued")
        # a few stuck-queue checks go by: a lock that is held is never taken past its holder
        assert stays_false(lambda: bool(events or errors), 5 * locks.STALL_CHECK), (events, errors)
        assert waiter.is_alive()
        events.append("holder lets go")
    waiter.join(10)
    assert errors == []
    assert events == ["holder lets go", "waiter holds it"]


def test_a_nan_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError), locks.file_lock(tmp_path / "rec.json", timeout=math.nan):
        pass


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    counter.write_text("0")

    def work() -> None:
        for _ in range(40):
            with locks.file_lock(counter):
                value = int(counter.read_text())
                time.sleep(0.0002)  # invite a lost update
                counter.write_text(str(value + 1))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.read_text() == "240"


def _hold_briefly(path: Path, held: threading.Event) -> None:
    with locks.file_lock(path):
        held.set()
        time.sleep(0.2)


def _contended_timed_wait(path: Path) -> None:
    """Wait (with a timeout, so through a waiter thread) for a lock another thread holds."""
    held = threading.Event()
    thread = threading.Thread(target=_hold_briefly, args=(path, held))
    thread.start()
    held.wait(5)
    with locks.file_lock(path, timeout=5):
        pass
    thread.join()


def _child(path: str) -> None:
    _contended_timed_wait(Path(path))


def test_a_forked_child_does_not_count_on_its_parents_waiter_threads(tmp_path: Path) -> None:
    path = tmp_path / "rec.json"
    _contended_timed_wait(path)  # leaves an idle waiter thread in this process
    child = multiprocessing.get_context("fork").Process(target=_child, args=(str(path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0


def test_timeouts_and_a_dead_holder(tmp_path: Path) -> None:
    path = tmp_path / "rec.json"
    with held_elsewhere(path) as holder:
        with pytest.raises(LockTimeoutError) as info, locks.file_lock(path, timeout=0):
            pass
        assert info.value.path == tmp_path / "rec.json.lock"
        began = time.monotonic()
        with pytest.raises(LockTimeoutError), locks.file_lock(path, timeout=0.2):
            pass
        assert 0.2 <= time.monotonic() - began < 5
        holder.kill()  # dies holding the lock: the kernel releases it
        holder.wait()
        with locks.file_lock(path, timeout=5):
            pass
        with locks.file_lock(path, timeout=-1):
            pass
    # the waiter abandoned at the 0.2 s timeout got the lock after the kill and let it go
    with locks.file_lock(path, timeout=0):
        pass


def test_the_lock_is_beside_the_data_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "rec.json"
    with locks.file_lock(path):
        assert (tmp_path / "rec.json.lock").exists()
        assert not path.exists()
    lock_file = tmp_path / "rec.json.lock"
    assert lock_file.exists()  # removing it would let two processes lock two files
    with locks.file_lock(path, timeout=0), locks.file_lock(tmp_path / "other.json", timeout=-1):
        pass
    assert lock_file.read_bytes() == b""  # taken uncontended: no ticket drawn, nothing written
