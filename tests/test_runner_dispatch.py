"""The runner's answer to each signal, driven in this process against a real git repository, a
real state directory and the real merge queue (no agent is started: the hook is moved to the
phase under test by the store's own API)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attractor import gitops
from attractor.engines import merge_queue
from attractor.layers.layout import branch_name, worktree_path
from attractor.layers.runner import Runner, RunnerConfig
from attractor.states import HookPhase, SignalKind
from attractor.store import hooks, signals
from attractor.store.statedir import StateDir
from tests.chain_helpers import codergen, module_steps, pipeline_file, target_repo, tool
from tests.helpers import git

RUN = "r1"
NODE = "late"


@pytest.fixture
def runner(tmp_path: Path, state_dir: Path, tmux_socket: str) -> Runner:
    target = target_repo(tmp_path)
    pipe = pipeline_file(tmp_path, codergen(NODE, module_steps(NODE, 1) + f"commit {NODE}\nreport")
                         + tool(f"check_{NODE}"), f"  start -> {NODE} -> check_{NODE} -> exit\n")
    state = StateDir(state_dir)
    cfg = RunnerConfig(state=state, run_id=RUN, node=NODE, target_dir=target, pipeline_path=pipe,
                       agent="scripted", agent_cmd=None, tmux_socket=tmux_socket)
    worktree = worktree_path(target, NODE)
    gitops.ensure_worktree(target, worktree, branch_name(RUN, NODE), base="main")
    (worktree / "app" / f"{NODE}.py").write_text("VALUE = 1\n")
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", NODE)
    hooks.create_hook(state, "runner", NODE, node=NODE, run_id=RUN)
    return Runner(cfg)


def _to_merge_ready(r: Runner) -> str:
    commit = gitops.rev_parse(r.cfg.target_dir, f"refs/heads/{r.branch}") or ""
    for phase in (HookPhase.EXECUTING, HookPhase.IMPL_COMPLETE, HookPhase.VALIDATING, HookPhase.MERGE_READY):
        r.set_phase(phase, commit=commit)
    return commit


def _merged_by_the_queue(r: Runner, commit: str) -> signals.Signal:
    """The real queue merges the branch and tells the runner; returns its MERGE_COMPLETE."""
    config = merge_queue.load_config(r.cfg.target_dir, target="main", gates=[], sender="guardian-" + RUN)
    outcome = merge_queue.handle_merge_ready(r.state, r.cfg.target_dir, {
        "node": NODE, "branch": r.branch, "commit": commit, "owner": r.cfg.agent_id}, config)
    assert outcome.merged, outcome
    pending = signals.Inbox(r.state, r.cfg.agent_id).pending([SignalKind.MERGE_COMPLETE])
    assert len(pending) == 1
    return pending[0]


def test_merge_complete_after_the_guardian_marked_the_hook_merged_still_ends_the_runner(runner: Runner) -> None:
    complete = _merged_by_the_queue(runner, _to_merge_ready(runner))
    # the guardian settles the hook first (its merge worker is faster than the runner's inbox)
    hooks.mark_merged(runner.state, "runner", NODE, str(complete.payload.to_json()["merged_sha"]))
    outcome = runner.handle(complete)
    assert outcome == "merged (the hook already said so)"
    assert runner.finished.is_set(), "a merged node's runner lingers until the run ends"


def test_merge_complete_in_merge_ready_marks_the_hook_and_ends_the_runner(runner: Runner) -> None:
    complete = _merged_by_the_queue(runner, _to_merge_ready(runner))
    assert runner.handle(complete) == "merged"
    assert runner.hook().phase is HookPhase.MERGED
    assert runner.finished.is_set()


def test_a_merge_complete_the_queue_never_sent_changes_nothing(runner: Runner) -> None:
    commit = _to_merge_ready(runner)
    forged = signals.send(runner.state, SignalKind.MERGE_COMPLETE, to=runner.cfg.agent_id, sender="merge-queue",
                          payload={"entry_id": "forged", "branch": runner.branch, "merged_sha": commit,
                                   "target": "main", "node": NODE})
    assert runner.handle(forged).startswith("rejected: no merge-queue entry 'forged'")
    assert runner.hook().phase is HookPhase.MERGE_READY
    assert not runner.finished.is_set()
