"""The merge queue under concurrency and crashes: real processors (`attractor merge-queue
process`) racing each other or SIGKILLed at chosen points, then recovered by the next one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.engines import merge_queue as mq
from attractor.errors import EXIT_OK
from attractor.procs import start_time as process_start
from attractor.states import MergeEntryState, SignalKind
from attractor.store import locks
from attractor.store.signals import Inbox
from attractor.store.statedir import StateDir
from tests.helpers import commit_file, git, make_repo, retry_until


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"a.txt": "a\n", "b.txt": "b\n"})


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Sessions (process groups) to SIGKILL after the test, passed or not."""
    sessions: list[int] = []
    yield sessions
    for sid in sessions:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)


def branch(repo: Path, name: str, files: dict[str, str]) -> str:
    git(repo, "checkout", "-q", "-b", name, "main")
    sha = ""
    for path, text in files.items():
        sha = commit_file(repo, path, text, f"{name}: {path}")
    git(repo, "checkout", "-q", "main")
    return sha


def processor(repo: Path, state: StateDir, gate: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[str]:
    """`attractor merge-queue process --all` in its own session (so its children can be killed
    with it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "attractor", "merge-queue", "process", "--all", "--gate", gate,
         "--gate-timeout", "60", "--repo", str(repo), "--state-dir", str(state.root)],
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )


def gated_trees(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def assert_gated(repo: Path, base: str, log: Path) -> None:
    trees = set(gated_trees(log))
    for sha in git(repo, "rev-list", "--first-parent", f"{base}..main").split():
        assert git(repo, "rev-parse", f"{sha}^{{tree}}") in trees, f"{sha} landed untested"


def assert_no_leftovers(repo: Path, state: StateDir) -> None:
    worktrees = repo / ".claude" / "worktrees"
    assert not worktrees.exists() or list(worktrees.iterdir()) == []
    assert len(git(repo, "worktree", "list", "--porcelain").split("\n\n")) == 1
    with locks.file_lock(state.merge_queue / "slot", timeout=0):
        pass  # nobody holds the merge slot


def completes(state: StateDir, owner: str) -> list[str]:
    return [str(s.payload.to_json()["merged_sha"]) for s in Inbox(state, owner).pending()
            if s.kind is SignalKind.MERGE_COMPLETE]


def test_two_processors_started_together_merge_each_entry_once(
    repo: Path, state: StateDir, tmp_path: Path, reaper: list[int]
) -> None:
    log = tmp_path / "trees.log"
    names = [f"b{i}" for i in range(6)]
    for i, name in enumerate(names):
        branch(repo, name, {f"{name}.txt": f"{name}\n"})
        if i % 2:
            commit_file(repo, "a.txt", f"main moves {i}\n")  # later branches need a rebase
    base = git(repo, "rev-parse", "main")
    for name in names:
        mq.enqueue(state, repo, name, owner=f"runner-{name}")
    gate = f"sleep 0.05; git rev-parse 'HEAD^{{tree}}' >> {log}"
    first, second = processor(repo, state, gate), processor(repo, state, gate)
    reaper.extend([first.pid, second.pid])
    for proc in (first, second):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == EXIT_OK, err
    entries = mq.list_entries(state)
    assert [e.state for e in entries] == [MergeEntryState.MERGED] * len(names)
    landed = git(repo, "rev-list", "--first-parent", f"{base}..main").split()
    assert len(landed) == len(names)  # one commit per entry, none twice
    assert sorted(git(repo, "log", "--format=%s", f"{base}..main").splitlines()) == sorted(
        f"{name}: {name}.txt" for name in names)
    for entry in entries:
        assert completes(state, entry.owner) == [entry.outcome.merged_sha]  # type: ignore[union-attr]
    assert len(gated_trees(log)) == len(names)  # each gated once
    assert_gated(repo, base, log)
    assert_no_leftovers(repo, state)


class KillPoint(NamedTuple):
    test_id: str
    pause: str  # PAUSE_ENV point, or "" for a gate that waits
    whole_group: bool  # kill the processor's children too (git rebase), or only the processor
    swapped: bool  # the target had moved before the kill


KILL_POINTS = [
    KillPoint("during-rebase", "rebase", True, False),
    KillPoint("during-gate", "", False, False),
    KillPoint("right-before-swap", "before_swap", False, False),
    KillPoint("right-after-swap", "after_swap", False, True),
]


@pytest.mark.parametrize("point", KILL_POINTS, ids=[p.test_id for p in KILL_POINTS])
def test_processor_killed_is_recovered_by_the_next(
    repo: Path, state: StateDir, tmp_path: Path, point: KillPoint, reaper: list[int]
) -> None:
    log, ready, gate_pid = tmp_path / "trees.log", tmp_path / "ready", tmp_path / "gate.pid"
    branch(repo, "feature", {"c.txt": "c\n", "d.txt": "d\n"})
    old = commit_file(repo, "a.txt", "main moved\n")  # so the branch needs a rebase
    entry = mq.enqueue(state, repo, "feature", owner="runner-impl")
    record = f"git rev-parse 'HEAD^{{tree}}' >> {log}"
    gate = record
    env = {mq.PAUSE_ENV: f"{point.pause}:{ready}"} if point.pause else {}
    if not point.pause:  # the first run of the gate stops, ready to be killed with it
        hold = f"echo $$ > {gate_pid}; : > {ready}; sleep 60"
        gate = f"if [ ! -e {ready} ]; then {hold}; fi; {record}"
    victim = processor(repo, state, gate, env)
    reaper.append(victim.pid)
    retry_until(ready.exists, 30, what=f"processor paused {point.test_id}")
    if gate_pid.exists():
        reaper.append(int(gate_pid.read_text()))
        # the gate may say it is ready before the processor has put its pid in the claim
        retry_until(lambda: (c := mq.get_entry(state, entry.id).claim) is not None and c.gate_pid, 10,
                    what="the gate's pid in the claim")
    assert mq.get_entry(state, entry.id).state is MergeEntryState.PROCESSING
    if point.whole_group:
        os.killpg(victim.pid, signal.SIGKILL)
    else:
        os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)

    # Dead processor: the target is where it was, or at the tested commit; never elsewhere.
    tip = git(repo, "rev-parse", "main")
    assert (tip != old) == point.swapped
    assert_gated(repo, old, log)
    abandoned = mq.get_entry(state, entry.id)
    assert abandoned.state is MergeEntryState.PROCESSING
    assert abandoned.claim is not None and not abandoned.claim.alive()

    recovery = processor(repo, state, record)
    _, err = recovery.communicate(timeout=60)
    assert recovery.returncode == EXIT_OK, err
    final = mq.get_entry(state, entry.id)
    assert final.state is MergeEntryState.MERGED and final.outcome is not None
    assert final.retries == (0 if point.swapped else 1)
    assert git(repo, "rev-parse", "main") == final.outcome.merged_sha
    assert git(repo, "rev-list", "--first-parent", f"{old}..main").split() == [
        final.outcome.merged_sha]  # merged once: one merge commit on the old tip
    if point.swapped:
        assert final.outcome.merged_sha == tip and len(gated_trees(log)) == 1
    assert completes(state, "runner-impl") == [final.outcome.merged_sha]
    assert_gated(repo, old, log)
    assert_no_leftovers(repo, state)
    if gate_pid.exists():  # the orphaned gate of the killed processor was killed in recovery
        pid = int(gate_pid.read_text())
        retry_until(lambda: process_start(pid) is None, 10, what="orphaned gate killed")
    assert git(repo, "status", "--porcelain") == ""


def test_spare_worktree_of_a_killed_processor_is_swept(
    repo: Path, state: StateDir, tmp_path: Path, reaper: list[int]
) -> None:
    ready, gate_pid = tmp_path / "ready", tmp_path / "gate.pid"
    for name in ("first", "second"):
        branch(repo, name, {f"{name}.txt": f"{name}\n"})
        mq.enqueue(state, repo, name, owner=f"runner-{name}")
    # The first gate run waits long enough for the next entry's spare worktree to be ready.
    hold = f"echo $$ > {gate_pid}; : > {ready}; sleep 60"
    gate = f"if [ ! -e {ready} ]; then {hold}; fi"
    victim = processor(repo, state, gate)
    reaper.append(victim.pid)
    retry_until(ready.exists, 30, what="first gate running")
    reaper.append(int(gate_pid.read_text()))
    worktrees = repo / ".claude" / "worktrees"
    retry_until(lambda: any(p.name.startswith("_merge-spare-") for p in worktrees.iterdir()), 30,
                what="spare worktree prepared")
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    recovery = processor(repo, state, gate)
    _, err = recovery.communicate(timeout=60)
    assert recovery.returncode == EXIT_OK, err
    assert [e.state for e in mq.list_entries(state)] == [MergeEntryState.MERGED] * 2
    assert_no_leftovers(repo, state)


SESSION_PROCESSOR = """
import sys
from pathlib import Path
from attractor.engines import merge_queue as mq
from attractor.engines.gates import Gate
from attractor.store.payloads import MergeReady
from attractor.store.statedir import StateDir

repo, state_dir, gate, first, second = sys.argv[1:6]
state = StateDir(Path(state_dir))
config = mq.QueueConfig(gates=(Gate(gate, 60),))
def ready(name, sha):
    return MergeReady(node=name, branch=name, commit=sha, owner=f"runner-{name}")
offers = [mq.Upcoming(ready(*second.split("=")), config)]
session = mq.MergeSession(upcoming=lambda: offers.pop() if offers else None)
for name_sha in (first, second):
    mq.handle_merge_ready(state, Path(repo), ready(*name_sha.split("=")), config, session=session)
session.close()
"""


def test_a_session_killed_while_the_next_entry_is_in_flight_loses_nothing(
    repo: Path, state: StateDir, tmp_path: Path, reaper: list[int]
) -> None:
    # The guardian's merge session: the first entry lands, the second (got ready during the
    # first one's gate) is claimed and its gate started; the process is SIGKILLed right then.
    log, ready, gate_pid = tmp_path / "trees.log", tmp_path / "ready", tmp_path / "gate.pid"
    shas = {name: branch(repo, name, {f"{name}.txt": f"{name}\n"}) for name in ("first", "second")}
    base = git(repo, "rev-parse", "main")
    record = f"git rev-parse 'HEAD^{{tree}}' >> {log}"
    # the second entry's first gate run records its pid and waits, as a long test suite would
    hold = f"echo $$ > {gate_pid}; sleep 60"
    gate = f'{record}; if [ "$ATTRACTOR_MERGE_BRANCH" = second ] && [ ! -e {gate_pid} ]; then {hold}; fi'
    victim = subprocess.Popen(
        [sys.executable, "-c", SESSION_PROCESSOR, str(repo), str(state.root), gate,
         f"first={shas['first']}", f"second={shas['second']}"],
        env={**os.environ, mq.PAUSE_ENV: f"after_swap:{ready}"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    reaper.append(victim.pid)
    retry_until(ready.exists, 30, what="first entry landed")
    retry_until(gate_pid.exists, 30, what="second entry's gate running")
    orphan = int(gate_pid.read_text())
    reaper.append(orphan)
    first, second = sorted(mq.list_entries(state), key=lambda e: e.branch)
    assert first.state is MergeEntryState.PROCESSING and second.state is MergeEntryState.PROCESSING
    assert second.claim is not None and second.claim.gate_pid == orphan
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    landed = git(repo, "rev-parse", "main")
    assert git(repo, "rev-parse", "main^") == base  # the first one landed, on its tested tip

    recovery = processor(repo, state, record)
    _, err = recovery.communicate(timeout=60)
    assert recovery.returncode == EXIT_OK, err
    retry_until(lambda: process_start(orphan) is None, 10, what="the in-flight gate killed")
    first, second = sorted(mq.list_entries(state), key=lambda e: e.branch)
    assert first.state is MergeEntryState.MERGED and first.outcome is not None
    assert first.outcome.merged_sha == landed and first.retries == 0
    assert second.state is MergeEntryState.MERGED and second.outcome is not None
    assert second.retries == 1 and second.outcome.target_sha == landed
    assert git(repo, "rev-list", "--first-parent", f"{base}..main").split() == [
        second.outcome.merged_sha, landed]  # each merged once
    assert completes(state, "runner-first") == [landed]
    assert completes(state, "runner-second") == [second.outcome.merged_sha]
    assert_gated(repo, base, log)
    assert_no_leftovers(repo, state)
