"""The lock beside every state file, with real processes and threads: waiters are served in
arrival order even when the releaser asks again at once, a waiter killed or timed out in the
queue neither lets the next one in early nor holds it up, threads of one process exclude each
other, a forked child gets its own waiter threads, and a dead holder releases everything."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from attractor import locks
from attractor.errors import LockTimeoutError
from tests.helpers import REPO_ROOT, retry_until

pytestmark = pytest.mark.skipif(not locks.QUEUED, reason="the queue needs Linux OFD locks")

# Takes the lock `rounds` times back to back, logging each time it holds it; on a timeout it
# logs that and stays alive (its waiter thread keeps its place) until stdin closes.
LOCKER = (
    "import sys\n"
    f"sys.path.insert(0, {str(REPO_ROOT / 'src')!r})\n"
    "from pathlib import Path\n"
    "from attractor import locks\n"
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
    "from attractor import locks\n"
    "with locks.file_lock(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


def tickets(path: Path) -> int:
    """How many tickets have been drawn on `path`'s lock (the counter in the lock file)."""
    raw = path.with_name(path.name + ".lock").read_bytes()[:8]
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


def locker(path: Path, name: str, log: Path, *, timeout: float = 10, rounds: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), name, str(timeout), str(rounds), str(log)],
        stdin=subprocess.PIPE, text=True,
    )


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
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
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
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
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
