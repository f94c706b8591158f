"""Process identity (procs.py) and the commands that signal recorded pids: a pid is only ever
signalled while it is still the process that was recorded (pid and start time).

Pid reuse is real here, not simulated: a recorded process exits and another one is started with
the same pid through /proc/sys/kernel/ns_last_pid (which needs root in this pid namespace)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attractor import procs
from attractor.store import checkpoint as cp_store
from attractor.store import identities
from attractor.store.checkpoint import Checkpoint
from attractor.store.statedir import StateDir
from tests.helpers import make_repo, retry_until, run_cli

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def _can_choose_pids() -> bool:
    try:
        with open(NS_LAST_PID, "w") as fh:
            fh.write(NS_LAST_PID.read_text().strip())
    except OSError:
        return False
    return True


needs_pid_choice = pytest.mark.skipif(
    not _can_choose_pids() and not os.environ.get("CI"),
    reason="reusing a pid on purpose needs a writable /proc/sys/kernel/ns_last_pid (root)",
)


def _ticks_since_boot() -> int:
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


class Procs:
    """Processes started by a test, all ended at its end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(SLEEP)
        self.started.append(proc)
        return proc

    def reuse_pid_of(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """End `proc`, then start another process that gets the same pid."""
        pid = proc.pid
        start = procs.start_time(pid)
        assert start is not None
        proc.kill()
        proc.wait()
        # start times count clock ticks: a process started in the same tick has the same one (a
        # reuse the kernel makes by itself comes after it cycled through every pid, far later)
        retry_until(lambda: _ticks_since_boot() > start, what="the next clock tick")
        for _ in range(50):
            with open(NS_LAST_PID, "w") as fh:
                fh.write(str(pid - 1))
            other = self.start()
            if other.pid == pid:
                return other
            other.kill()
            other.wait()
        raise AssertionError(f"could not start a process with pid {pid} again")

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes() -> Iterator[Procs]:
    group = Procs()
    yield group
    group.close()


# --------------------------------------------------------------------------- the parser


def test_stat_fields_are_counted_after_the_last_parenthesis() -> None:
    fields = " ".join(str(n) for n in range(4, 53))  # field n holds n
    stat = procs.parse_stat(f"4711 (a) b (c) d) S {fields}\n".encode())
    assert stat.pid == 4711
    assert stat.state == "S"
    assert (stat.ppid, stat.pgrp, stat.session) == (4, 5, 6)
    assert stat.start_time == 22


def test_a_short_or_broken_stat_line_is_refused() -> None:
    for raw in (b"", b"12 no parens S 1 2", b"12 (x) S 1 2 3"):
        with pytest.raises(ValueError):
            procs.parse_stat(raw)


def test_start_time_of_this_process_is_field_22() -> None:
    raw = Path("/proc/self/stat").read_bytes()
    expected = int(raw[raw.rindex(b")") + 2:].split()[19])
    assert procs.start_time(os.getpid()) == expected
    assert procs.same_process(os.getpid(), expected)
    assert not procs.same_process(os.getpid(), expected + 1)
    assert not procs.same_process(os.getpid(), None)  # unknown is never a match


def test_zombies_and_dead_pids_have_no_start_time() -> None:
    child = subprocess.Popen(["true"])
    retry_until(lambda: (procs.read_stat(child.pid) or procs.ProcStat(0, "Z", 0, 0, 0, 0)).finished,
                what="the child to exit")
    assert procs.start_time(child.pid) is None and not procs.pid_alive(child.pid)
    child.wait()
    assert procs.start_time(child.pid) is None and not procs.pid_alive(child.pid)


def test_signal_if_same_signals_only_the_recorded_process(processes: Procs) -> None:
    proc = processes.start()
    start = procs.start_time(proc.pid)
    assert start is not None
    assert not procs.signal_if_same(proc.pid, start + 1, signal.SIGKILL)
    assert not procs.signal_if_same(proc.pid, None, signal.SIGKILL)
    assert proc.poll() is None
    assert procs.signal_if_same(proc.pid, start, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert not procs.signal_if_same(proc.pid, start, signal.SIGKILL)


@needs_pid_choice
def test_a_reused_pid_is_not_the_same_process(processes: Procs) -> None:
    first = processes.start()
    start = procs.start_time(first.pid)
    second = processes.reuse_pid_of(first)
    assert procs.pid_alive(second.pid)
    assert not procs.same_process(second.pid, start)
    assert not procs.signal_if_same(second.pid, start, signal.SIGKILL)
    assert second.poll() is None


# --------------------------------------------------------------------------- identities


def test_a_recorded_pid_goes_with_its_start_time(state_dir: Path, processes: Procs) -> None:
    state = StateDir(state_dir)
    proc = processes.start()
    record = identities.create_identity(state, "runner", "a", pid=proc.pid)
    assert record.pid_start == procs.start_time(proc.pid) and record.process_alive
    other = processes.start()
    moved = identities.update_fields(state, "runner", "a", pid=other.pid)
    assert moved.pid_start == procs.start_time(other.pid)
    beat = identities.update_liveness(state, "runner", "a", pid=os.getpid())
    assert beat.pid_start == procs.start_time(os.getpid())
    on_disk = json.loads(identities.path_for(state, "runner", "a").read_text())
    assert on_disk["pid_start"] == beat.pid_start


def test_a_record_without_a_start_time_is_still_read(state_dir: Path, processes: Procs) -> None:
    state = StateDir(state_dir)
    proc = processes.start()
    identities.create_identity(state, "runner", "old", pid=proc.pid)
    path = identities.path_for(state, "runner", "old")
    data = json.loads(path.read_text())
    del data["pid_start"]  # as written before start times were recorded
    path.write_text(json.dumps(data))
    record = identities.get(state, "runner", "old")
    assert record.pid_start is None
    assert not record.process_alive  # never to be signalled
    assert record.may_be_alive  # but not taken over while its pid lives


# --------------------------------------------------------------------------- attractor stop


def _run_with_a_runner(tmp_path: Path, state: StateDir, pid: int) -> str:
    repo = make_repo(tmp_path / "repo")
    run_id = "r1"
    cp_store.write_checkpoint(state, Checkpoint(
        run_id=run_id, pipeline_name="p", pipeline_path=str(tmp_path / "p.dot"), target_dir=str(repo),
        target_branch="main", agent="scripted", agent_cmd=None, max_agents=1))
    made = run_cli(["identity", "create", "runner", "x", "--pid", str(pid), "--session-id", run_id,
                    "--state-dir", str(state.root)])
    assert made.returncode == 0, made.stderr
    return run_id


@needs_pid_choice
def test_stop_never_signals_a_reused_pid(tmp_path: Path, state_dir: Path, processes: Procs) -> None:
    state = StateDir(state_dir)
    runner = processes.start()
    run_id = _run_with_a_runner(tmp_path, state, runner.pid)
    unrelated = processes.reuse_pid_of(runner)  # the runner died; its pid went to someone else
    stopped = run_cli(["stop", run_id, "--state-dir", str(state_dir)])
    assert stopped.returncode == 0, stopped.stderr
    assert unrelated.poll() is None, "attractor stop killed an unrelated process"
    assert f"left pid {unrelated.pid} of runner-x alone" in stopped.stdout
    assert identities.get(state, "runner", "x").status.value == "terminated"


def test_stop_never_signals_a_pid_recorded_without_start_time(
        tmp_path: Path, state_dir: Path, processes: Procs) -> None:
    state = StateDir(state_dir)
    holder = processes.start()
    run_id = _run_with_a_runner(tmp_path, state, holder.pid)
    path = identities.path_for(state, "runner", "x")
    data = json.loads(path.read_text())
    del data["pid_start"]
    path.write_text(json.dumps(data))
    stopped = run_cli(["stop", run_id, "--state-dir", str(state_dir)])
    assert stopped.returncode == 0, stopped.stderr
    assert holder.poll() is None
    assert "has no start time" in stopped.stdout


def test_stop_ends_the_recorded_process(tmp_path: Path, state_dir: Path, processes: Procs) -> None:
    state = StateDir(state_dir)
    holder = processes.start()
    run_id = _run_with_a_runner(tmp_path, state, holder.pid)
    stopped = run_cli(["stop", run_id, "--state-dir", str(state_dir)])
    assert stopped.returncode == 0, stopped.stderr
    assert holder.wait(timeout=10) == -signal.SIGTERM
    assert f"ended runner-x (pid {holder.pid})" in stopped.stdout


# --------------------------------------------------------------------------- DeathWatch


def test_death_watch_wakes_when_the_watched_process_is_killed(processes: Procs) -> None:
    proc = processes.start()
    other = processes.start()
    with procs.DeathWatch() as deaths:
        assert deaths.watch("a", proc.pid, procs.start_time(proc.pid))
        assert deaths.watch("b", other.pid, procs.start_time(other.pid))
        assert deaths.wait(0.05) == frozenset()  # both alive: the timeout ends the wait
        proc.send_signal(signal.SIGKILL)
        # a long timeout: the pidfd, not the timeout, ends this wait
        assert deaths.wait(60) == {"a"}
        assert not deaths.watching("a") and deaths.watching("b")


def test_death_watch_refuses_a_pid_that_is_not_the_recorded_process(processes: Procs) -> None:
    proc = processes.start()
    start = procs.start_time(proc.pid)
    assert start is not None
    with procs.DeathWatch() as deaths:
        assert not deaths.watch("a", proc.pid, start + 1)  # another start time: another process
        assert not deaths.watch("a", proc.pid, None)
        assert not deaths.watch("a", None, start)
        assert not deaths.watching("a")


def test_death_watch_wake_ends_a_wait_from_another_thread(processes: Procs) -> None:
    import threading

    proc = processes.start()
    with procs.DeathWatch() as deaths:
        assert deaths.watch("a", proc.pid, procs.start_time(proc.pid))
        threading.Timer(0.1, deaths.wake).start()
        began = time.monotonic()
        assert deaths.wait(60) == frozenset()  # woken: nobody died
        deaths.wake()
        deaths.wake()  # wake-ups before a wait are kept, however many
        assert deaths.wait(60) == frozenset()
        # woken, not timed out (the timeout is far longer than any loaded machine's delay)
        assert time.monotonic() - began < 30
        assert deaths.watching("a")
        assert deaths.wait(0) == frozenset()  # the wake-ups were used up: this one times out
