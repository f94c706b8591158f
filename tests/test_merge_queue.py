"""The merge queue against real repositories, real gate processes and real signal inboxes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from attractor.engines import merge_queue as mq
from attractor.engines.gates import Gate
from attractor.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CorruptStateError, UsageError
from attractor.procs import start_time as process_start
from attractor.states import MergeEntryState, SignalKind
from attractor.store import locks, merge_entries, queue_hold
from attractor.store.payloads import MergeReady
from attractor.store.signals import Inbox, send
from attractor.store.statedir import StateDir
from tests.helpers import commit_file, git, make_repo, retry_until, run_cli, run_script

OWNER = "runner-impl"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"a.txt": "one\ntwo\nthree\n", "b.txt": "b\n"})


@pytest.fixture
def tree_log(tmp_path: Path) -> Path:
    """Gates append the tree they ran on to this file, outside the repository."""
    return tmp_path / "gate-trees.log"


def branch(repo: Path, name: str, files: dict[str, str], base: str = "main") -> str:
    """A branch from `base` with one commit per file; the user's checkout stays on main."""
    git(repo, "checkout", "-q", "-b", name, base)
    sha = ""
    for path, text in files.items():
        sha = commit_file(repo, path, text, f"{name}: {path}")
    git(repo, "checkout", "-q", "main")
    return sha


def signals_of(state: StateDir, owner: str = OWNER) -> list[tuple[SignalKind, dict[str, object]]]:
    return [(s.kind, s.payload.to_json()) for s in Inbox(state, owner).pending()]


def tree_gate(log: Path, extra: str = "") -> Gate:
    return Gate(f"git rev-parse 'HEAD^{{tree}}' >> {log}{extra}", 30)


def merge_dirs(repo: Path) -> list[str]:
    wt = repo / ".claude" / "worktrees"
    return sorted(p.name for p in wt.iterdir()) if wt.exists() else []


def assert_gated(repo: Path, base: str, log: Path) -> None:
    """Every commit the queue put on main (first parent since `base`) passed the gates on
    exactly its tree."""
    tested = set(log.read_text().split()) if log.exists() else set()
    for sha in git(repo, "rev-list", "--first-parent", f"{base}..main").split():
        assert git(repo, "rev-parse", f"{sha}^{{tree}}") in tested, f"{sha} landed untested"


def test_clean_fast_forward(repo: Path, state: StateDir, tree_log: Path) -> None:
    head = branch(repo, "attractor/r1/impl", {"c.txt": "c\n"})
    entry = mq.enqueue(state, repo, "attractor/r1/impl", owner=OWNER, node="impl")
    outcome = mq.process_next(state, repo, mq.QueueConfig(gates=(tree_gate(tree_log),)))
    assert outcome is not None and outcome.merged and outcome.entry_id == entry.id
    assert git(repo, "rev-parse", "main") == head == outcome.merged_sha  # exactly the branch
    assert (repo / "c.txt").read_text() == "c\n"  # the clean checkout was fast-forwarded
    assert git(repo, "status", "--porcelain") == ""
    assert mq.get_entry(state, entry.id).state is MergeEntryState.MERGED
    assert signals_of(state) == [(SignalKind.MERGE_COMPLETE, {
        "entry_id": entry.id, "branch": "attractor/r1/impl", "merged_sha": head,
        "target": "main", "node": "impl"})]
    assert merge_dirs(repo) == [] and len(git(repo, "worktree", "list").splitlines()) == 1
    assert mq.process_next(state, repo, mq.QueueConfig()) is None  # idempotent: nothing left


def test_branch_that_needs_a_rebase(repo: Path, state: StateDir, tree_log: Path) -> None:
    base = git(repo, "rev-parse", "main")
    branch(repo, "feature", {"c.txt": "c\n", "d.txt": "d\n"})
    main_tip = commit_file(repo, "b.txt", "b moved on main\n")
    mq.enqueue(state, repo, "feature", owner=OWNER)
    outcome = mq.process_next(state, repo, mq.QueueConfig(gates=(tree_gate(tree_log),)))
    assert outcome is not None and outcome.merged, outcome
    assert outcome.target_sha == main_tip
    # Two commits land rebased, under one merge commit whose first parent is the old tip.
    assert git(repo, "rev-list", "--first-parent", f"{base}..main").split() == [
        outcome.merged_sha, main_tip]
    assert git(repo, "rev-list", "--count", "main^1..main^2") == "2"
    assert git(repo, "rev-parse", "main^2~2") == main_tip  # rebased onto the tip
    assert {p.name for p in repo.iterdir()} >= {"c.txt", "d.txt"}
    assert (repo / "b.txt").read_text() == "b moved on main\n"
    assert git(repo, "rev-parse", "feature") != outcome.merged_sha  # the agent's branch untouched
    assert_gated(repo, main_tip, tree_log)
    assert merge_dirs(repo) == []


def test_textual_conflict_fails_and_leaves_the_target_alone(repo: Path, state: StateDir) -> None:
    branch(repo, "feature", {"a.txt": "one\nTWO from feature\nthree\n", "z.txt": "z\n"})
    main_tip = commit_file(repo, "a.txt", "one\nTWO from main\nthree\n")
    entry = mq.enqueue(state, repo, "feature", owner=OWNER, node="impl")
    outcome = mq.process_next(state, repo, mq.QueueConfig(gates=(Gate("true"),)))
    assert outcome is not None and outcome.result is mq.Result.FAILED
    assert outcome.reason == "conflict" and outcome.files == ("a.txt",)
    assert git(repo, "rev-parse", "main") == main_tip
    assert git(repo, "status", "--porcelain") == ""
    [(kind, payload)] = signals_of(state)
    assert kind is SignalKind.MERGE_FAILED
    assert payload["reason"] == "conflict" and payload["files"] == ["a.txt"]
    assert payload["target_sha"] == main_tip and payload["entry_id"] == entry.id
    assert merge_dirs(repo) == [] and len(git(repo, "worktree", "list").splitlines()) == 1
    assert mq.get_entry(state, entry.id).state is MergeEntryState.FAILED


def test_red_gate_fails_with_its_output(repo: Path, state: StateDir) -> None:
    main_tip = git(repo, "rev-parse", "main")
    branch(repo, "feature", {"c.txt": "c\n"})
    mq.enqueue(state, repo, "feature", owner=OWNER)
    gates = (Gate("echo first gate ok"), Gate("echo 'assert 1 == 2' >&2; echo FAILED; exit 3"))
    outcome = mq.process_next(state, repo, mq.QueueConfig(gates=gates))
    assert outcome is not None and outcome.reason == "gate_failed"
    assert "assert 1 == 2" in outcome.gate_output and "FAILED" in outcome.gate_output
    assert "status 3" in outcome.detail and outcome.files == ("c.txt",)
    assert git(repo, "rev-parse", "main") == main_tip
    [(kind, payload)] = signals_of(state)
    assert kind is SignalKind.MERGE_FAILED and "FAILED" in str(payload["gate_output"])
    assert merge_dirs(repo) == []


def test_gate_past_its_timeout_is_killed_with_its_process_group(
    repo: Path, state: StateDir, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    branch(repo, "feature", {"c.txt": "c\n"})
    mq.enqueue(state, repo, "feature", owner=OWNER)
    hang = Gate(f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; echo started; sleep 60", 0.5)
    started = time.monotonic()
    try:
        outcome = mq.process_next(state, repo, mq.QueueConfig(gates=(hang,)))
        assert time.monotonic() - started < 15
        assert outcome is not None and outcome.reason == "gate_timeout"
        assert "started" in outcome.gate_output and "timeout" in outcome.gate_output
        for pid in map(int, pids.read_text().split()):
            retry_until(lambda p=pid: process_start(p) is None, 5, what=f"gate process {pid} gone")
        assert merge_dirs(repo) == []
    finally:  # leave nothing running even when the test fails
        for pid in map(int, pids.read_text().split() if pids.exists() else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_dirty_checked_out_target_fails_and_touches_nothing(repo: Path, state: StateDir) -> None:
    main_tip = git(repo, "rev-parse", "main")
    branch(repo, "feature", {"c.txt": "c\n"})
    (repo / "a.txt").write_text("user's unsaved work\n")
    entry = mq.enqueue(state, repo, "feature", owner=OWNER)
    outcome = mq.process_next(state, repo, mq.QueueConfig(gates=(Gate("true"),)))
    assert outcome is not None and outcome.reason == "dirty_target"
    assert "uncommitted changes" in outcome.detail and f"retry {entry.id}" in outcome.detail
    assert (repo / "a.txt").read_text() == "user's unsaved work\n"
    assert not (repo / "c.txt").exists()
    assert git(repo, "rev-parse", "main") == main_tip
    assert signals_of(state)[0][1]["reason"] == "dirty_target"
    # Once the user has committed, a retry lands it.
    git(repo, "commit", "-q", "-am", "user work")
    mq.retry_entry(state, entry.id)
    outcome = mq.process_next(state, repo, mq.QueueConfig(gates=(Gate("true"),)))
    assert outcome is not None and outcome.merged
    assert (repo / "a.txt").read_text() == "user's unsaved work\n"


def test_target_not_checked_out_moves_by_update_ref(repo: Path, state: StateDir) -> None:
    branch(repo, "feature", {"c.txt": "c\n"})
    git(repo, "checkout", "-q", "-b", "elsewhere")
    (repo / "a.txt").write_text("dirty, but not the target's checkout\n")
    entry = mq.enqueue(state, repo, "feature", owner=OWNER)
    outcome = mq.process_next(state, repo, mq.QueueConfig())
    assert outcome is not None and outcome.merged
    assert git(repo, "rev-parse", "main") == outcome.merged_sha
    reflog = git(repo, "reflog", "-1", "--format=%gs", "refs/heads/main")
    assert reflog == f"attractor merge-queue: feature ({entry.id})"
    assert (repo / "a.txt").read_text() == "dirty, but not the target's checkout\n"
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "elsewhere"


def test_branch_deleted_after_enqueue(repo: Path, state: StateDir) -> None:
    main_tip = git(repo, "rev-parse", "main")
    branch(repo, "feature", {"c.txt": "c\n"})
    entry = mq.enqueue(state, repo, "feature", owner=OWNER)
    git(repo, "branch", "-D", "feature")
    outcome = mq.process_next(state, repo, mq.QueueConfig(gates=(Gate("true"),)))
    assert outcome is not None and outcome.reason == "branch_missing"
    assert git(repo, "rev-parse", "main") == main_tip
    assert signals_of(state) == [(SignalKind.MERGE_FAILED, {
        "entry_id": entry.id, "branch": "feature", "reason": "branch_missing", "target": "main",
        "target_sha": None, "node": None, "files": [], "gate_output": "",
        "detail": "branch 'feature' no longer exists"})]


def _intruder(repo: Path) -> str:
    """A commit on top of main made by 'someone else', not yet on main."""
    git(repo, "checkout", "-q", "-b", "intruder")
    sha = commit_file(repo, "b.txt", "someone else\n", "someone else's commit")
    git(repo, "checkout", "-q", "main")
    return sha


@pytest.mark.parametrize("checked_out", [True, False], ids=["checked-out", "update-ref"])
def test_target_moved_between_test_and_swap_is_retested(
    repo: Path, state: StateDir, tree_log: Path, tmp_path: Path, checked_out: bool
) -> None:
    base = git(repo, "rev-parse", "main")
    branch(repo, "feature", {"c.txt": "c\n"})
    intruder = _intruder(repo)
    if not checked_out:
        git(repo, "checkout", "-q", "--detach")
    flag = tmp_path / "moved-once"
    # The gate itself moves main the first time, as another process would while tests run.
    move = (f"merge -q --ff-only {intruder}" if checked_out
            else f"update-ref refs/heads/main {intruder}")
    mover = Gate(f"test -e {flag} || {{ touch {flag}; git -C \"$ATTRACTOR_REPO\" {move}; }}")
    mq.enqueue(state, repo, "feature", owner=OWNER)
    config = mq.QueueConfig(gates=(tree_gate(tree_log), mover))
    first = mq.process_next(state, repo, config)
    assert first is not None and first.result is mq.Result.REQUEUED
    assert first.reason == "target_moved"
    assert git(repo, "rev-parse", "main") == intruder  # the queue did not overwrite it
    assert signals_of(state) == []  # not decided yet
    second = mq.process_next(state, repo, config)
    assert second is not None and second.merged and second.target_sha == intruder
    assert git(repo, "rev-parse", "main^") == intruder
    assert_gated(repo, intruder, tree_log)
    assert len(git(repo, "rev-list", f"{base}..main").split()) == 2
    assert mq.get_entry(state, first.entry_id).retries == 1


def test_target_moved_too_often_fails_without_merging(
    repo: Path, state: StateDir, tmp_path: Path
) -> None:
    branch(repo, "feature", {"c.txt": "c\n"})
    intruder = _intruder(repo)
    mover = Gate(f"git -C \"$ATTRACTOR_REPO\" merge -q --ff-only {intruder} 2>/dev/null; true")
    mq.enqueue(state, repo, "feature", owner=OWNER)
    [outcome] = mq.process_all(state, repo, mq.QueueConfig(gates=(mover,), max_retries=0))
    assert outcome.reason == "target_moved" and outcome.result is mq.Result.FAILED
    assert git(repo, "rev-parse", "main") == intruder


def test_every_landed_commit_passed_the_gates_on_its_tree(
    repo: Path, state: StateDir, tree_log: Path
) -> None:
    branch(repo, "f1", {"f1.txt": "1\n"})
    branch(repo, "f2", {"f2.txt": "2\n", "f2b.txt": "2b\n"})
    branch(repo, "red", {"RED": "this branch breaks the build\n"})
    branch(repo, "clash", {"a.txt": "clash\n"})
    base = commit_file(repo, "a.txt", "main edits a\n")
    for name in ("f1", "red", "f2", "clash"):
        mq.enqueue(state, repo, name, owner=OWNER)
    gate = tree_gate(tree_log, "; test ! -e RED")
    outcomes = {o.branch: o for o in mq.process_all(state, repo, mq.QueueConfig(gates=(gate,)))}
    assert {b: o.result.value for b, o in outcomes.items()} == {
        "f1": "merged", "f2": "merged", "red": "failed", "clash": "failed"}
    assert outcomes["red"].reason == "gate_failed" and outcomes["clash"].reason == "conflict"
    assert_gated(repo, base, tree_log)
    assert git(repo, "rev-parse", "main") == outcomes["f2"].merged_sha


def test_fair_order_priority_then_age_with_retry_penalty(repo: Path, state: StateDir) -> None:
    for name in ("old", "new", "urgent", "retried"):
        branch(repo, name, {f"{name}.txt": name})
    mq.enqueue(state, repo, "retried", owner=OWNER)
    mq.enqueue(state, repo, "old", owner=OWNER)
    mq.enqueue(state, repo, "new", owner=OWNER)
    mq.enqueue(state, repo, "urgent", owner=OWNER, priority=5)
    retried = next(e for e in mq.list_entries(state) if e.branch == "retried")
    merge_entries.update_entry(state, retried.id, lambda e: e.noted("test", retries=1))
    order = [o.branch for o in mq.process_all(state, repo, mq.QueueConfig())]
    assert order == ["urgent", "old", "new", "retried"]


def test_same_branch_twice_updates_and_merging_twice_is_once(repo: Path, state: StateDir) -> None:
    first_sha = branch(repo, "feature", {"c.txt": "c\n"})
    one = mq.enqueue(state, repo, "feature", owner=OWNER)
    two = mq.enqueue(state, repo, "feature", owner=OWNER, priority=3, validated_sha=first_sha)
    assert one.id == two.id and len(mq.list_entries(state)) == 1
    assert mq.get_entry(state, one.id).priority == 3
    ready = MergeReady(node="impl", branch="feature", commit=first_sha, owner=OWNER)
    outcome = mq.handle_merge_ready(state, repo, ready, mq.QueueConfig())
    assert outcome.merged
    tip = git(repo, "rev-parse", "main")
    again = mq.handle_merge_ready(state, repo, ready, mq.QueueConfig())
    assert again.merged and again.entry_id == outcome.entry_id
    assert mq.enqueue(state, repo, "feature", owner=OWNER).id == one.id
    assert git(repo, "rev-parse", "main") == tip and len(mq.list_entries(state)) == 1
    assert [k for k, _ in signals_of(state)] == [SignalKind.MERGE_COMPLETE]


def test_a_failed_branch_enqueued_again_is_retested(repo: Path, state: StateDir) -> None:
    branch(repo, "feature", {"c.txt": "c\n"})
    entry = mq.enqueue(state, repo, "feature", owner=OWNER)
    [failed] = mq.process_all(state, repo, mq.QueueConfig(gates=(Gate("test -e fixed.txt"),)))
    assert failed.reason == "gate_failed"
    git(repo, "checkout", "-q", "feature")
    fixed = commit_file(repo, "fixed.txt", "ok\n")
    git(repo, "checkout", "-q", "main")
    assert mq.enqueue(state, repo, "feature", owner=OWNER, validated_sha=fixed).id == entry.id
    [merged] = mq.process_all(state, repo, mq.QueueConfig(gates=(Gate("test -e fixed.txt"),)))
    assert merged.merged and git(repo, "rev-parse", "main^2") == fixed  # both commits kept


class CorruptEntry(NamedTuple):
    test_id: str
    change: Callable[[dict[str, Any]], None]
    problem: str


CLAIM = merge_entries.EntryClaim(pid=1, pid_start=None, host="h", started_at="2026-01-01T00:00:00Z",
                            worktree="/w").to_json()
OUTCOME = merge_entries.Outcome("e", "feature", merge_entries.Result.MERGED, "main").to_json()
CORRUPT_ENTRIES = [
    CorruptEntry("no-priority", lambda d: d.pop("priority"), "merge queue entry: missing field(s) priority"),
    CorruptEntry("no-branch", lambda d: d.pop("branch"), "merge queue entry: missing field(s) branch"),
    CorruptEntry("unknown-field", lambda d: d.update(extra=1), "merge queue entry: unknown field(s) extra"),
    CorruptEntry("priority-type", lambda d: d.update(priority="high"), "field 'priority' must be int"),
    CorruptEntry("history-type", lambda d: d.update(history=[1]), "field 'history' must be a list of text"),
    CorruptEntry("claim-no-host", lambda d: d.update(claim={k: v for k, v in CLAIM.items() if k != "host"}),
                 "merge queue entry claim: missing field(s) host"),
    CorruptEntry("outcome-no-branch", lambda d: d.update(outcome={k: v for k, v in OUTCOME.items() if k != "branch"}),
                 "merge queue entry outcome: missing field(s) branch"),
]


@pytest.mark.parametrize("case", CORRUPT_ENTRIES, ids=[c.test_id for c in CORRUPT_ENTRIES])
def test_an_entry_with_a_missing_unknown_or_mistyped_field_is_corrupt(
        repo: Path, state: StateDir, case: CorruptEntry) -> None:
    branch(repo, "feature", {"c.txt": "c\n"})
    entry = mq.enqueue(state, repo, "feature", owner=OWNER)
    path = state.merge_queue / "entries" / f"{entry.id}.json"
    data = json.loads(path.read_text())
    case.change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptStateError) as info:
        merge_entries.get_entry(state, entry.id)
    assert info.value.path == path and case.problem in info.value.problem
    assert info.value.moved_to is not None and info.value.moved_to.exists() and not path.exists()
    assert mq.list_entries(state) == []


def test_cli_a_corrupt_entry_is_named_and_processing_goes_on(repo: Path, state: StateDir) -> None:
    branch(repo, "feature", {"c.txt": "c\n"})
    entry = mq.enqueue(state, repo, "feature", owner=OWNER)
    path = state.merge_queue / "entries" / f"{entry.id}.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "priority": "high"}))
    processed = cli(repo, state, "process", "--all")
    assert processed.returncode == EXIT_OK, processed.stderr
    assert str(path) in processed.stderr and "field 'priority' must be int" in processed.stderr
    assert not path.exists()
    del data["priority"]
    path.write_text(json.dumps(data))
    status = cli(repo, state, "status", entry.id)
    assert status.returncode == EXIT_USAGE, status.stderr
    error = status.stderr.splitlines()[-1]
    assert error.startswith(f"error: corrupt state file {path}: ") and "missing field(s) priority" in error


def test_a_mistyped_hold_is_still_a_hold(state: StateDir) -> None:
    queue_hold.hold(state, "a commit landed outside the queue", target="main", expected="a" * 40,
                    found="b" * 40, held_by="guardian-r1")
    path = state.merge_queue / "hold.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "reason": 5}))
    held = queue_hold.read(state)
    assert held is not None and "corrupt" in held.reason and "field 'reason' must be str" in held.reason
    assert len(list(path.parent.glob("hold.json.corrupt-*"))) == 1 and queue_hold.read(state) == held


def test_merge_ready_signal_from_an_inbox(repo: Path, state: StateDir) -> None:
    head = branch(repo, "attractor/r1/impl", {"c.txt": "c\n"})
    ready = MergeReady(node="impl", branch="attractor/r1/impl", commit=head, owner=OWNER)
    send(state, SignalKind.MERGE_READY, to="guardian-r1", sender=OWNER, payload=ready)
    [signal] = Inbox(state, "guardian-r1").pending()
    outcome = mq.handle_merge_ready(state, repo, signal, mq.QueueConfig(sender="guardian-r1"))
    assert outcome.merged and outcome.node == "impl"
    [incoming] = Inbox(state, OWNER).pending()
    assert incoming.kind is SignalKind.MERGE_COMPLETE and incoming.sender == "guardian-r1"
    # A MERGE_READY for a branch that does not exist: the owner is told, nothing is queued.
    missing = {"node": "x", "branch": "attractor/r1/x", "commit": head, "owner": OWNER}
    failed = mq.handle_merge_ready(state, repo, missing, mq.QueueConfig())
    assert failed.reason == "branch_missing" and len(mq.list_entries(state)) == 1
    assert Inbox(state, OWNER).pending()[-1].kind is SignalKind.MERGE_FAILED
    # A gate that cannot run is the caller's bad input: refused before anything is queued.
    y_head = branch(repo, "attractor/r1/y", {"y.txt": "y\n"})
    later = MergeReady(node="y", branch="attractor/r1/y", commit=y_head, owner=OWNER)
    with pytest.raises(mq.GateCommandError):
        mq.handle_merge_ready(state, repo, later, mq.QueueConfig(gates=(Gate("no-such-tool"),)))
    assert len(mq.list_entries(state)) == 1


def test_delete_merged_branch_and_push_to_a_remote(
    repo: Path, state: StateDir, tmp_path: Path
) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    branch(repo, "feature", {"c.txt": "c\n"})
    commit_file(repo, "b.txt", "main moved\n")
    mq.enqueue(state, repo, "feature", owner=OWNER)
    config = mq.QueueConfig(delete_merged_branch=True, push_remote="origin")
    [outcome] = mq.process_all(state, repo, config)
    assert outcome.merged and "deleted branch feature" in outcome.detail
    assert git(repo, "branch", "--list", "feature") == ""
    assert git(remote, "rev-parse", "main") == outcome.merged_sha
    # A push that fails is noted; the merge stands.
    branch(repo, "second", {"d.txt": "d\n"})
    mq.enqueue(state, repo, "second", owner=OWNER)
    [second] = mq.process_all(state, repo, mq.QueueConfig(push_remote="nowhere"))
    assert second.merged and "push to nowhere failed" in second.detail


def test_config_file_and_overrides(repo: Path) -> None:
    (repo / ".attractor").mkdir()
    (repo / ".attractor" / "merge-queue.toml").write_text(
        'target = "main"\ndelete_merged_branch = true\nmax_retries = 1\n'
        '[[gates]]\ncommand = "true"\ntimeout = 5\n[[gates]]\ncommand = "echo ok"\n'
    )
    config = mq.load_config(repo)
    assert config.gates == (Gate("true", 5.0), Gate("echo ok", 600.0))
    assert config.delete_merged_branch and config.max_retries == 1
    assert config.sender == "merge-queue-main"
    assert mq.load_config(repo, gate_timeout=9).gates == (Gate("true", 9), Gate("echo ok", 9))
    over = mq.load_config(repo, gates=["make test"], gate_timeout=7, target="release/1",
                          extra_gates=[Gate("lint", 3)])
    assert over.gates == (Gate("make test", 7), Gate("lint", 3))
    assert over.target == "release/1" and over.sender == "merge-queue-release_1"
    (repo / ".attractor" / "merge-queue.toml").write_text("gates = 3\n")
    with pytest.raises(UsageError, match="gates must be a list"):
        mq.load_config(repo)


# --- the command line -----------------------------------------------------------------------------


def cli(repo: Path, state: StateDir, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["merge-queue", *args, "--repo", str(repo), "--state-dir", str(state.root)])


def test_cli_round_trip(repo: Path, state: StateDir) -> None:
    head = branch(repo, "feature", {"c.txt": "c\n"})
    branch(repo, "red", {"d.txt": "d\n"})
    done = cli(repo, state, "enqueue", "feature", "--owner", OWNER, "--node", "impl", "--json")
    assert done.returncode == EXIT_OK, done.stderr
    entry_id = json.loads(done.stdout)["id"]
    cli(repo, state, "enqueue", "red", "--owner", OWNER, "--priority", "-1")
    listed = json.loads(cli(repo, state, "list", "--json").stdout)
    assert listed["schema"] == 1 and [e["branch"] for e in listed["entries"]] == ["feature", "red"]
    table = cli(repo, state, "list").stdout
    assert "feature" in table and "queued" in table
    processed = cli(repo, state, "process", "--gate", "test ! -e d.txt", "--gate-timeout", "30")
    assert processed.returncode == EXIT_OK, processed.stderr
    assert processed.stdout.startswith("merged") and git(repo, "rev-parse", "main") == head
    failing = cli(repo, state, "process", "--all", "--gate", "test ! -e d.txt", "--json")
    assert failing.returncode == EXIT_FAILURE
    [red] = json.loads(failing.stdout)["outcomes"]
    assert red["reason"] == "gate_failed"
    status = cli(repo, state, "status", red["entry_id"])
    assert "gate_failed" in status.stdout and "history:" in status.stdout
    assert json.loads(cli(repo, state, "status", entry_id, "--json").stdout)["state"] == "merged"
    assert cli(repo, state, "retry", red["entry_id"]).returncode == EXIT_OK
    assert cli(repo, state, "remove", red["entry_id"]).returncode == EXIT_OK
    assert [e.id for e in mq.list_entries(state)] == [entry_id]
    assert cli(repo, state, "process").stdout.startswith("nothing to process")


def test_cli_ready_and_scripts_cli_shim(repo: Path, state: StateDir) -> None:
    head = branch(repo, "feature", {"c.txt": "c\n"})
    args = ["merge-queue", "ready", "feature", "--owner", OWNER, "--node", "impl",
            "--repo", str(repo), "--state-dir", str(state.root), "--json"]
    done = run_script("cli.py", args)
    assert done.returncode == EXIT_OK, done.stderr
    assert json.loads(done.stdout)["outcomes"][0]["merged_sha"] == head
    listed = run_script("cli.py", ["merge-queue", "list", "--json", "--repo", str(repo),
                                   "--state-dir", str(state.root)])
    assert listed.stdout == cli(repo, state, "list", "--json").stdout


def test_cli_drain_handles_merge_ready_signals(repo: Path, state: StateDir) -> None:
    head = branch(repo, "feature", {"c.txt": "c\n"})
    ready = MergeReady(node="impl", branch="feature", commit=head, owner=OWNER)
    send(state, SignalKind.MERGE_READY, to="guardian-r1", sender=OWNER, payload=ready)
    done = cli(repo, state, "drain", "guardian-r1", "--gate", "true")
    assert done.returncode == EXIT_OK, done.stderr
    assert git(repo, "rev-parse", "main") == head
    assert Inbox(state, "guardian-r1").pending() == []
    assert [s.outcome for s in Inbox(state, "guardian-r1").list("done")] == ["merged"]


class BadInput(NamedTuple):
    test_id: str
    args: tuple[str, ...]
    message: str


BAD_INPUTS = [
    BadInput("unknown-branch", ("enqueue", "nope", "--owner", OWNER), "branch 'nope' not found"),
    BadInput("invalid-branch", ("enqueue", "a..b", "--owner", OWNER), "invalid branch name"),
    BadInput("bad-owner", ("enqueue", "feature", "--owner", "Bad Owner"), "invalid agent id"),
    BadInput("unknown-sha", ("enqueue", "feature", "--owner", OWNER, "--sha", "f" * 40),
             "not found"),
    BadInput("unknown-entry-status", ("status", "0badc0de"), "entry '0badc0de' not found"),
    BadInput("unknown-entry-remove", ("remove", "0badc0de"), "entry '0badc0de' not found"),
    BadInput("unknown-entry-retry", ("retry", "0badc0de"), "entry '0badc0de' not found"),
    BadInput("bad-entry-id", ("status", "../x"), "invalid entry id"),
    BadInput("missing-gate-program", ("process", "--gate", "no-such-tool --fast"),
             "program 'no-such-tool' not found"),
    BadInput("missing-absolute-gate", ("process", "--gate", "/nonexistent/run"),
             "does not exist"),
    BadInput("bad-gate-timeout", ("process", "--gate", "true", "--gate-timeout", "0"),
             "--gate-timeout"),
    BadInput("unknown-target", ("process", "--target", "nope"), "target branch 'nope' not found"),
    BadInput("ready-unknown-branch", ("ready", "nope", "--owner", OWNER), "branch 'nope'"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.test_id for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    repo: Path, state_dir: Path, case: BadInput
) -> None:
    state = StateDir(state_dir)  # not created: refused input must not create it
    branch(repo, "feature", {"c.txt": "c\n"})
    before = git(repo, "show-ref")
    done = cli(repo, state, *case.args)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and case.message in line
    assert not state.root.exists()
    assert git(repo, "show-ref") == before
    assert not (repo / ".claude").exists()


def test_not_a_git_repository_is_exit_2(tmp_path: Path, state_dir: Path) -> None:
    state = StateDir(state_dir)  # not created: no repository, no state directory
    plain = tmp_path / "plain"
    plain.mkdir()
    for args in (("list",), ("process", "--all"), ("enqueue", "x", "--owner", OWNER)):
        done = cli(plain, state, *args)
        assert done.returncode == EXIT_USAGE
        [line] = done.stderr.splitlines()
        assert "not a git repository" in line
    assert not state.root.exists() and os.listdir(plain) == []


def test_a_spare_worktree_nobody_took_is_removed_at_the_end(repo: Path, state: StateDir) -> None:
    branch(repo, "first", {"f.txt": "f\n"})
    branch(repo, "second", {"s.txt": "s\n"})
    mq.enqueue(state, repo, "first", owner=OWNER)
    second = mq.enqueue(state, repo, "second", owner=OWNER)
    # While the first entry's gate runs (and the spare for the next one is prepared), the
    # second entry is removed: the spare is left over at the end of the pass.
    remove = (f"{sys.executable} -m attractor merge-queue remove {second.id} "
              f"--repo {repo} --state-dir {state.root}")
    gate = Gate(f"test -e s.txt || {remove} >/dev/null", 30)
    [outcome] = mq.process_all(state, repo, mq.QueueConfig(gates=(gate,)))
    assert outcome.merged and outcome.branch == "first"
    assert merge_dirs(repo) == [] and len(git(repo, "worktree", "list").splitlines()) == 1


def test_cli_process_gives_up_on_a_busy_slot_with_wait(repo: Path, state: StateDir) -> None:
    branch(repo, "feature", {"c.txt": "c\n"})
    mq.enqueue(state, repo, "feature", owner=OWNER)
    with locks.file_lock(state.merge_queue / "slot", timeout=0):  # another processor's slot
        done = cli(repo, state, "process", "--wait", "0.2")
    assert done.returncode == EXIT_FAILURE
    assert "slot.lock" in done.stderr and len(done.stderr.splitlines()) == 1
    assert mq.list_entries(state)[0].state is MergeEntryState.QUEUED


def test_scripts_cli_runs_from_a_checkout_without_the_package_installed() -> None:
    shim = Path(__file__).resolve().parent.parent / "scripts" / "cli.py"
    # -S: no site-packages, so `attractor` is importable only through the shim's own path.
    done = subprocess.run([sys.executable, "-I", "-S", str(shim), "merge-queue", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_OK, done.stderr
    assert "merge-queue" in done.stdout and "process" in done.stdout


def test_a_session_keeps_the_spare_worktree_for_the_merge_on_its_way(repo: Path, state: StateDir,
                                                                     tmp_path: Path) -> None:
    # the guardian's path: one MERGE_READY at a time, the next one known to be coming
    shas = {name: branch(repo, name, {f"{name}.txt": f"{name}\n"}) for name in ("one", "two")}
    where = tmp_path / "gate-cwd.log"
    session = mq.MergeSession(more_coming=lambda: True)
    config = mq.QueueConfig(gates=(Gate(f"pwd -P >> {where}", 30),))
    first = mq.handle_merge_ready(state, repo, MergeReady(node="one", branch="one", commit=shas["one"], owner=OWNER),
                                  config, session=session)
    assert first.merged
    assert session.spare is not None and session.spare.is_dir() and "spare" in session.spare.name
    kept = session.spare.resolve()
    second = mq.handle_merge_ready(state, repo, MergeReady(node="two", branch="two", commit=shas["two"], owner=OWNER),
                                   config, session=session)
    assert second.merged
    assert Path(where.read_text().split()[1]) == kept  # the second merge's gates ran in the spare
    assert not kept.exists() and session.spare is not None  # used and removed; a new one waits
    session.close()
    assert merge_dirs(repo) == []  # nothing left behind
    assert git(repo, "show", "main:one.txt") == "one" and git(repo, "show", "main:two.txt") == "two"


def base_gate(log: Path, extra: str = "") -> Gate:
    """Each run appends `<branch> <base> <commit>`: the tip it was tested on and what it tested."""
    return Gate(f'echo "$ATTRACTOR_MERGE_BRANCH $ATTRACTOR_MERGE_BASE $ATTRACTOR_MERGE_COMMIT" >> {log}{extra}', 30)


def gate_runs(log: Path) -> list[tuple[str, str, str]]:
    return [(b, base, sha) for b, base, sha in (line.split() for line in log.read_text().splitlines())]


def assert_tested_on_its_parent(repo: Path, landed: str, log: Path) -> None:
    """`landed` passed the gates on exactly the tip it landed on (its first parent)."""
    runs = {(base, sha) for _, base, sha in gate_runs(log)}
    assert (git(repo, "rev-parse", f"{landed}^"), landed) in runs, f"{landed} landed untested on its parent"


def claimed_at(entry: merge_entries.Entry) -> str:
    return next(line.split(" ", 1)[0] for line in entry.history if " claimed by pid " in line)


def ready_payload(shas: dict[str, str], name: str) -> MergeReady:
    return MergeReady(node=name, branch=name, commit=shas[name], owner=OWNER)


def two_through_a_session(
    repo: Path, state: StateDir, shas: dict[str, str], config: mq.QueueConfig, *, in_flight: bool = True,
) -> tuple[mq.Outcome, mq.Outcome]:
    """The guardian's path: two MERGE_READYs handed over one after the other, the session told
    of the second (`upcoming`) while the first one's gates run. `in_flight`: the second one's
    gate is expected to run already when the first call returns."""
    first_name, second_name = shas
    offers = [mq.Upcoming(ready_payload(shas, second_name), config)]
    session = mq.MergeSession(upcoming=lambda: offers.pop() if offers else None)
    try:
        first = mq.handle_merge_ready(state, repo, ready_payload(shas, first_name), config, session=session)
        assert (session.inflight is not None) == in_flight, first
        second = mq.handle_merge_ready(state, repo, ready_payload(shas, second_name), config, session=session)
    finally:
        session.close()
    return first, second


def test_the_next_entry_is_got_ready_during_the_gate_and_started_on_the_new_tip(
    repo: Path, state: StateDir, tmp_path: Path
) -> None:
    # the guardian's path: while one merge's gate runs, the session is told what comes next
    shas = {name: branch(repo, name, {f"{name}.txt": f"{name}\n"}) for name in ("one", "two")}
    base = git(repo, "rev-parse", "main")
    log = tmp_path / "gate-runs.log"
    first, second = two_through_a_session(repo, state, shas, mq.QueueConfig(gates=(base_gate(log, "; sleep 0.3"),)))
    assert second.merged and git(repo, "rev-parse", "main") == second.merged_sha
    assert git(repo, "rev-parse", "main^") == first.merged_sha and git(repo, "rev-parse", "main^^") == base
    # the second entry was tested on exactly the commit the first one landed, and claimed (its
    # gate started) before the first one's outcome was written
    assert [r for r in gate_runs(log) if r[0] == "two"] == [("two", first.merged_sha, second.merged_sha)]
    assert_tested_on_its_parent(repo, str(first.merged_sha), log)
    assert claimed_at(mq.get_entry(state, second.entry_id)) < first.decided_at
    assert mq.get_entry(state, second.entry_id).retries == 0
    assert [k for k, _ in signals_of(state)] == [SignalKind.MERGE_COMPLETE, SignalKind.MERGE_COMPLETE]
    assert merge_dirs(repo) == [] and len(git(repo, "worktree", "list").splitlines()) == 1
    with locks.file_lock(state.merge_queue / "slot", timeout=0):
        pass  # the session let go of the merge slot


def test_a_prepared_entry_is_tested_again_when_the_tip_moves_under_its_gate(
    repo: Path, state: StateDir, tmp_path: Path
) -> None:
    # The second entry is got ready on the first one's commit and its gate starts when that
    # lands; then someone commits on main while that gate runs. Its result must not count: the
    # entry is rebased onto the new tip and gated there before it lands.
    shas = {name: branch(repo, name, {f"{name}.txt": f"{name}\n"}) for name in ("one", "two")}
    log = tmp_path / "gate-runs.log"
    flag = tmp_path / "moved-once"
    intrude = (f'; test "$ATTRACTOR_MERGE_BRANCH" != two || test -e {flag} || {{ touch {flag}; '
               f'git -C "$ATTRACTOR_REPO" commit -q --allow-empty --no-gpg-sign -m intruder; }}')
    first, second = two_through_a_session(repo, state, shas, mq.QueueConfig(gates=(base_gate(log, intrude),)))
    assert first.merged and second.merged
    intruder = git(repo, "rev-parse", "main^")
    assert git(repo, "log", "-1", "--format=%s", intruder) == "intruder"
    assert git(repo, "rev-parse", f"{intruder}^") == first.merged_sha  # nothing was overwritten
    runs = [r for r in gate_runs(log) if r[0] == "two"]
    assert [r[1] for r in runs] == [first.merged_sha, intruder]  # started on the first, then again
    assert_tested_on_its_parent(repo, str(second.merged_sha), log)
    assert_tested_on_its_parent(repo, str(first.merged_sha), log)
    assert mq.get_entry(state, second.entry_id).retries == 1
    assert merge_dirs(repo) == []


def test_a_prepared_entry_is_rebased_onto_the_real_tip_when_the_one_before_fails(
    repo: Path, state: StateDir, tmp_path: Path
) -> None:
    shas = {name: branch(repo, name, {f"{name}.txt": f"{name}\n"}) for name in ("red", "two")}
    base = git(repo, "rev-parse", "main")
    log = tmp_path / "gate-runs.log"
    config = mq.QueueConfig(gates=(base_gate(log, "; test ! -e red.txt"),))
    first, second = two_through_a_session(repo, state, shas, config, in_flight=False)
    assert first.reason == "gate_failed"
    assert second.merged and git(repo, "rev-parse", "main^") == base
    assert [r[1] for r in gate_runs(log) if r[0] == "two"] == [base]  # never gated on the red commit
    assert_tested_on_its_parent(repo, str(second.merged_sha), log)
    assert merge_dirs(repo) == []
