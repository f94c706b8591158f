"""The guardian's answer to each signal, driven in this process on a real checkpoint, a real
pipeline file and a real state directory (no runner, no tmux session is started)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from attractor.engines.pipeline import load_pipeline
from attractor.layers.guardian import Guardian, GuardianConfig
from attractor.states import NodeState, SignalKind
from attractor.store import checkpoint as cp_store
from attractor.store import signals
from attractor.store.checkpoint import Checkpoint, NodeProgress
from attractor.store.statedir import StateDir
from tests.chain_helpers import codergen, pipeline_file, target_repo, tool

RUN = "r1"


@pytest.fixture
def guardian(tmp_path: Path, state: StateDir, tmux_socket: str) -> Iterator[Guardian]:
    target = target_repo(tmp_path)
    pipe = pipeline_file(tmp_path, codergen("a", "report") + codergen("b", "report") + tool("check_a"),
                         "  start -> a -> check_a -> exit\n  start -> b -> exit\n")
    pipeline = load_pipeline(pipe)
    nodes = {name: NodeProgress(name=name, kind=node.kind) for name, node in pipeline.nodes.items()}
    cp_store.write_checkpoint(state, Checkpoint(
        run_id=RUN, pipeline_name=pipeline.name, pipeline_path=str(pipe), target_dir=str(target),
        target_branch="main", agent="scripted", agent_cmd=None, max_agents=2, nodes=nodes))
    g = Guardian(GuardianConfig(state=state, run_id=RUN, tmux_socket=tmux_socket))
    yield g
    g.pool.shutdown(wait=True)


def _to_guardian(g: Guardian, kind: SignalKind, payload: dict[str, object]) -> signals.Signal:
    return signals.send(g.state, kind, to=g.cfg.agent_id, sender="runner-a", payload=payload)


def test_a_stuck_node_fails_and_a_quarantined_one_is_blocked(guardian: Guardian) -> None:
    out = guardian.handle(_to_guardian(guardian, SignalKind.ORCHESTRATOR_STUCK, {"node": "a", "reason": "gave up"}))
    assert out == "node failed" and guardian.cp.nodes["a"].state is NodeState.FAILED
    # the validator of a failed node fails with it
    assert guardian.cp.nodes["check_a"].state is NodeState.FAILED
    out = guardian.handle(_to_guardian(guardian, SignalKind.ORCHESTRATOR_STUCK,
                                       {"node": "b", "reason": "keeps dying", "quarantined": True}))
    assert out == "node blocked" and guardian.cp.nodes["b"].state is NodeState.BLOCKED
    assert cp_store.read_checkpoint(guardian.state, RUN).nodes["b"].state is NodeState.BLOCKED


def test_wording_alone_never_blocks_a_node(guardian: Guardian) -> None:
    guardian.handle(_to_guardian(guardian, SignalKind.ORCHESTRATOR_STUCK,
                                 {"node": "a", "reason": "quarantined: says the agent"}))
    assert guardian.cp.nodes["a"].state is NodeState.FAILED


def test_a_signal_about_a_decided_or_unknown_node_changes_nothing(guardian: Guardian) -> None:
    guardian.handle(_to_guardian(guardian, SignalKind.ORCHESTRATOR_STUCK, {"node": "a", "reason": "x"}))
    before = cp_store.read_checkpoint(guardian.state, RUN)
    out = guardian.handle(_to_guardian(guardian, SignalKind.MERGE_READY, {
        "node": "a", "branch": "attractor/r1/a", "commit": "a" * 40, "owner": "runner-a"}))
    assert out == "ignored: node is failed" and guardian.merge_work.empty()
    out = guardian.handle(_to_guardian(guardian, SignalKind.ORCHESTRATOR_STUCK, {"node": "zz", "reason": "x"}))
    assert out == "ignored: unknown node 'zz'"
    assert cp_store.read_checkpoint(guardian.state, RUN) == before


def test_merge_ready_goes_to_the_merge_worker_once(guardian: Guardian) -> None:
    payload: dict[str, object] = {"node": "b", "branch": "attractor/r1/b", "commit": "b" * 40, "owner": "runner-b"}
    assert guardian.handle(_to_guardian(guardian, SignalKind.MERGE_READY, payload)) == "merging"
    assert guardian.handle(_to_guardian(guardian, SignalKind.MERGE_READY, payload)) == "merging"
    work = guardian.merge_work.get_nowait()
    assert work is not None and work[0] == "b" and work[1].commit == "b" * 40
    assert guardian.merge_work.empty()


def test_shutdown_stops_the_loop_and_other_kinds_are_not_for_the_guardian(guardian: Guardian) -> None:
    assert guardian.handle(_to_guardian(guardian, SignalKind.SHUTDOWN, {"reason": "stop"})) == "stopping"
    assert guardian.stop_event.is_set()
    out = guardian.handle(_to_guardian(guardian, SignalKind.VALIDATION_PASSED, {"node": "a", "commit": "a" * 40}))
    assert out == "ignored: VALIDATION_PASSED is not for the guardian"


def test_the_loop_sleeps_on_a_runners_pidfd_and_wakes_when_a_node_finishes(guardian: Guardian) -> None:
    import subprocess
    import time

    from attractor.store import hooks, identities

    runner = subprocess.Popen(["sleep", "120"])
    try:
        guardian.update_node("a", state=NodeState.RUNNING)
        identities.create_identity(guardian.state, "runner", "a", session_id=RUN, pid=runner.pid)
        identities.update_liveness(guardian.state, "runner", "a", pid=runner.pid)
        hooks.create_hook(guardian.state, "runner", "a", node="a", run_id=RUN)
        guardian.deaths.wait(0)  # use up the wake-up of the node's change above
        guardian.supervise()
        assert guardian.deaths.watching("a")  # the live runner is held by its pidfd
        runner.kill()
        began = time.monotonic()
        assert guardian.deaths.wait(60) == {"a"}  # its death ends the sleep, not the timeout
        assert time.monotonic() - began < 30
    finally:
        runner.kill()
        runner.wait()
    # a node that finished wakes the loop (the schedule may move); shutdown does too
    began = time.monotonic()
    guardian.update_node("b", state=NodeState.FAILED)
    assert guardian.deaths.wait(60) == frozenset() and time.monotonic() - began < 30
    guardian.handle(_to_guardian(guardian, SignalKind.SHUTDOWN, {"reason": "stop"}))
    began = time.monotonic()
    assert guardian.deaths.wait(60) == frozenset() and time.monotonic() - began < 30
