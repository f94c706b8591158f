"""The runner's answer to each signal, driven in this process against a real git repository, a
real state directory and the real merge queue (no agent is started: the hook is moved to the
phase under test by the store's own API)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from attractor import gitops
from attractor.engines import merge_queue
from attractor.layers import runner as runner_module
from attractor.layers.layout import branch_name, worktree_path
from attractor.layers.runner import Runner, RunnerConfig
from attractor.states import HookPhase, SignalKind
from attractor.store import hooks, signals
from attractor.store.statedir import StateDir
from tests.chain_helpers import codergen, module_steps, pipeline_file, target_repo, tool
from tests.helpers import git

RUN = "r1"
NODE = "late"
GUARDIAN = "guardian-" + RUN


@pytest.fixture
def runner(tmp_path: Path, state_dir: Path, tmux_socket: str) -> Runner:
    target = target_repo(tmp_path)
    pipe = pipeline_file(tmp_path, codergen(NODE, module_steps(NODE, 1) + f"commit {NODE}\nreport", max_retries=0)
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


def _sent_to_guardian(r: Runner) -> list[signals.Signal]:
    return list(signals.Inbox(r.state, GUARDIAN).pending())


PAYLOADS: dict[SignalKind, dict[str, object]] = {
    SignalKind.ORCHESTRATOR_DONE: {"node": NODE, "summary": "done"},
    SignalKind.ORCHESTRATOR_STUCK: {"node": NODE, "reason": "lost"},
    SignalKind.VALIDATION_PASSED: {"node": NODE, "commit": "a" * 40},
    SignalKind.VALIDATION_FAILED: {"node": NODE, "commit": "a" * 40, "output": "red"},
    SignalKind.MERGE_FAILED: {"entry_id": "e1", "branch": "b", "reason": "conflict", "target": "main"},
}


KINDS: list[SignalKind] = sorted(PAYLOADS, key=lambda k: k.value)


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_a_signal_outside_the_phases_it_means_something_in_is_ignored(runner: Runner, kind: SignalKind) -> None:
    phases = Runner.HANDLED_IN[kind]
    assert phases is not None and HookPhase.SPAWNED not in phases
    before = runner.hook()
    sig = signals.send(runner.state, kind, to=runner.cfg.agent_id, sender=GUARDIAN, payload=PAYLOADS[kind])
    assert runner.handle(sig) == "ignored: phase is spawned"
    assert runner.hook() == before
    assert not runner.finished.is_set() and not _sent_to_guardian(runner)


def test_a_signal_for_another_layer_is_ignored(runner: Runner) -> None:
    sig = signals.send(runner.state, SignalKind.MERGE_READY, to=runner.cfg.agent_id, sender=GUARDIAN,
                       payload={"node": NODE, "branch": runner.branch, "commit": "a" * 40, "owner": "x"})
    assert runner.handle(sig) == "ignored: MERGE_READY is not for a runner"


def test_validation_passed_makes_the_node_merge_ready_and_asks_the_guardian_to_merge(runner: Runner) -> None:
    commit = _to_merge_ready(runner)
    runner.set_phase(HookPhase.FAILED, note="reset for the test")  # back to a phase before validation
    runner.set_phase(HookPhase.EXECUTING)
    runner.set_phase(HookPhase.IMPL_COMPLETE, commit=commit)
    sig = signals.send(runner.state, SignalKind.VALIDATION_PASSED, to=runner.cfg.agent_id, sender=GUARDIAN,
                       payload={"node": NODE, "commit": commit})
    assert runner.handle(sig) == "merge_ready"
    assert runner.hook().phase is HookPhase.MERGE_READY
    [ask] = _sent_to_guardian(runner)
    assert ask.kind is SignalKind.MERGE_READY
    assert ask.payload.to_json() == {"node": NODE, "branch": runner.branch, "commit": commit,
                                     "owner": runner.cfg.agent_id, "priority": 0}


def test_a_merge_failure_on_the_last_attempt_fails_the_node_with_the_queue_reason(runner: Runner) -> None:
    _to_merge_ready(runner)
    sig = signals.send(runner.state, SignalKind.MERGE_FAILED, to=runner.cfg.agent_id, sender=GUARDIAN,
                       payload={"entry_id": "e1", "branch": runner.branch, "reason": "conflict", "target": "main",
                                "files": ["app/a.py"]})
    assert runner.handle(sig) == "merge_failed"
    hook = runner.hook()
    assert hook.phase is HookPhase.FAILED
    note = str(hook.history[-1]["note"])
    assert note.startswith("a merge failure (conflict) after 1 attempt(s): ") and "merge failed: conflict" in note
    [stuck] = _sent_to_guardian(runner)
    assert stuck.kind is SignalKind.ORCHESTRATOR_STUCK
    assert "conflicting files: app/a.py" in stuck.payload.to_json()["reason"]
    assert runner.finished.is_set() and runner.exit_code == 1


def test_a_report_from_an_earlier_incarnation_of_the_agent_is_stale(runner: Runner) -> None:
    from attractor.store import identities

    runner.set_phase(HookPhase.EXECUTING)
    old = signals.send(runner.state, SignalKind.ORCHESTRATOR_DONE, to=runner.cfg.agent_id,
                       sender=runner.cfg.orchestrator_id, payload={"node": NODE, "summary": "old"})
    identities.create_identity(runner.state, "orchestrator", NODE, session_id=RUN)  # the agent started again
    assert runner.handle(old) == "stale: sent by an earlier incarnation of the agent"
    assert runner.hook().phase is HookPhase.EXECUTING


def test_a_node_blocked_by_quarantine_says_so_in_a_field_not_in_its_wording(runner: Runner) -> None:
    runner.set_phase(HookPhase.EXECUTING)
    runner.fail("the agent keeps dying", quarantined=True)
    assert runner.hook().quarantined
    [stuck] = _sent_to_guardian(runner)
    assert stuck.payload.to_json() == {"node": NODE, "reason": "the agent keeps dying", "quarantined": True}


def test_a_failure_worded_like_a_quarantine_is_still_a_failure(runner: Runner) -> None:
    runner.set_phase(HookPhase.EXECUTING)
    runner.fail("quarantined: said the agent, which is not the supervisor")
    assert not runner.hook().quarantined
    [stuck] = _sent_to_guardian(runner)
    assert stuck.payload.to_json()["quarantined"] is False


def test_the_quarantined_field_is_a_boolean(runner: Runner) -> None:
    from attractor.errors import BadInputError

    with pytest.raises(BadInputError, match="'quarantined' must be bool"):
        signals.send(runner.state, SignalKind.ORCHESTRATOR_STUCK, to=runner.cfg.agent_id, sender=GUARDIAN,
                     payload={"node": NODE, "reason": "r", "quarantined": "yes"})


def test_the_agents_pane_is_asked_of_tmux_again_only_when_due_or_when_its_process_died(
        runner: Runner, tmp_path: Path) -> None:
    import os
    import signal as sig

    from attractor import procs
    from attractor.store import identities
    from tests.helpers import retry_until

    pane = runner.tmux.new_session("att-r1-orch-late", ["sleep", "60"], cwd=tmp_path, keep_dead_panes=True)
    identities.create_identity(runner.state, "orchestrator", NODE, session_id=RUN)
    ident = identities.update_fields(runner.state, "orchestrator", NODE, pid=pane.pane_pid, pane_id=pane.pane_id)
    retry_until(lambda: procs.terminal_of(pane.pane_pid), what="the pane's process on its pty")
    first = runner.agent_pane(ident, watched=True)
    assert first is not None and not first.dead
    assert runner.agent_pane(ident, watched=True) is first  # alive and not due: no tmux client started
    assert runner.pty is not None and runner.pty_stamp is not None  # the agent's terminal, watched
    # quiet for longer than ACTIVE_WINDOW and asked PANE_CHECK_INTERVAL ago: while nothing was
    # written to its terminal, tmux is not asked; once something was, at once
    quiet = dataclasses.replace(first, last_activity=time.time() - runner_module.ACTIVE_WINDOW - 5)
    runner.last_pane, runner.last_pane_at = quiet, time.monotonic() - runner_module.PANE_CHECK_INTERVAL - 1
    assert runner.agent_pane(ident, watched=True) is quiet
    assert runner.agent_pane(ident, watched=False) is not quiet  # its death would not wake the loop: asked
    runner.last_pane, runner.last_pane_at = quiet, time.monotonic() - runner_module.PANE_CHECK_INTERVAL - 1
    runner.pty_stamp = (runner.pty_stamp or 0) - 1  # written to since tmux was last asked
    asked = runner.agent_pane(ident, watched=True)
    assert asked is not quiet and asked is not None and asked.pane_id == first.pane_id
    os.kill(pane.pane_pid, sig.SIGKILL)
    retry_until(lambda: not ident.process_alive, 10, what="the agent's process gone")
    after = runner.agent_pane(ident, watched=True)
    assert after is not asked and (after is None or after.dead)  # asked again at once


def test_an_idle_runner_sleeps_until_its_agent_prints_and_then_looks_at_once(runner: Runner, tmp_path: Path) -> None:
    from attractor import procs
    from attractor.store import identities
    from tests.helpers import retry_until

    pane = runner.tmux.new_session("att-r1-orch-late", ["sleep", "60"], cwd=tmp_path)
    identities.create_identity(runner.state, "orchestrator", NODE, session_id=RUN)
    ident = identities.update_fields(runner.state, "orchestrator", NODE, pid=pane.pane_pid, pane_id=pane.pane_id)
    pty = retry_until(lambda: procs.terminal_of(pane.pane_pid), what="the pane's process on its pty")
    runner.agent_pane(ident, watched=True)
    assert runner.bell_pty == pty and runner.bell_unwatch is not None
    runner.settled = True  # what a look that found the agent alive and watched leaves
    # quiet since the last look: the loop may sleep the whole idle interval, the bell armed
    assert runner.next_look() == runner_module.IDLE_CHECK_INTERVAL > runner_module.ACTIVE_CHECK_INTERVAL
    assert runner.bell.armed
    assert runner.deaths.wait(0.3) == frozenset() and runner.bell.writes == 0
    with open(pty, "w") as terminal:  # the agent prints
        terminal.write("a dialog\r\n")
    started = time.monotonic()
    runner.deaths.wait(30)
    assert time.monotonic() - started < runner_module.ACTIVE_CHECK_INTERVAL  # woken by the write
    assert runner.bell.writes >= 1 and not runner.bell.armed
    # it printed since the last look: looked at again soon, however quiet it is by then
    assert runner.next_look() == runner_module.ACTIVE_CHECK_INTERVAL and not runner.bell.armed
    with open(pty, "w") as terminal:  # a busy agent does not wake the loop on every write
        terminal.write("more\r\n")
    retry_until(lambda: runner.bell.writes >= 2, 10, what="the second write counted")
    started = time.monotonic()
    runner.deaths.wait(0.5)
    assert time.monotonic() - started >= 0.4
    assert runner.next_look() == runner_module.ACTIVE_CHECK_INTERVAL
    assert runner.next_look() == runner_module.IDLE_CHECK_INTERVAL and runner.bell.armed  # quiet again
    # the agent's part over (reported, being validated): its printing wakes the loop no more,
    # but the bell still listens, for when the node comes back to it
    assert runner.hook().phase is HookPhase.SPAWNED  # not executing: what a look then finds
    runner.check_orchestrator()
    assert runner.agent_done and runner.settled
    with open(pty, "w") as terminal:
        terminal.write("done\r\n")
    retry_until(lambda: runner.bell.writes >= 3, 10, what="the third write counted")
    assert runner.next_look() == runner_module.IDLE_CHECK_INTERVAL and not runner.bell.armed
    assert runner.bell_unwatch is not None
    runner.agent_done = False
    runner.next_look()
    assert runner.next_look() == runner_module.IDLE_CHECK_INTERVAL and runner.bell.armed
    runner.listen_to(None)
    runner.deaths.wait(0)  # what the writes rang is taken
    assert runner.bell_unwatch is None
    # a message for the agent wakes the loop too, to type it in
    runner.listen_for_messages()
    signals.send(runner.state, SignalKind.MESSAGE, to=runner.cfg.orchestrator_id, sender="user-alice",
                 payload={"text": "also do b"})
    started = time.monotonic()
    runner.deaths.wait(30)
    assert time.monotonic() - started < runner_module.ACTIVE_CHECK_INTERVAL
