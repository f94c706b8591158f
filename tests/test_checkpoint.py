"""The run checkpoint and event log."""

from __future__ import annotations

from pathlib import Path

import pytest

from attractor import checkpoint as cp_store
from attractor.checkpoint import Checkpoint, NodeProgress
from attractor.errors import CorruptStateError, NotFoundError, TransitionError
from attractor.statedir import StateDir
from attractor.states import NodeState


def sample() -> Checkpoint:
    return Checkpoint(run_id="r1", pipeline_name="p", pipeline_path="/p.dot", target_dir="/t", target_branch="main",
                      agent="scripted", agent_cmd=None, max_agents=2,
                      nodes={"a": NodeProgress("a", "codergen"), "s": NodeProgress("s", "start")})


def test_roundtrip_and_checked_node_moves(state_dir: Path) -> None:
    state = StateDir(state_dir)
    cp = sample().with_node("a", state=NodeState.RUNNING, attempts=1)
    cp_store.write_checkpoint(state, cp)
    again = cp_store.read_checkpoint(state, "r1")
    assert again.nodes["a"].state is NodeState.RUNNING and again == cp
    with pytest.raises(TransitionError):
        again.with_node("a", state=NodeState.PENDING).with_node("a", state=NodeState.MERGED)
    assert cp_store.list_runs(state) == ["r1"] and cp_store.latest_run(state) == "r1"


def test_missing_and_corrupt(state_dir: Path) -> None:
    state = StateDir(state_dir)
    with pytest.raises(NotFoundError):
        cp_store.read_checkpoint(state, "nope")
    cp_store.write_checkpoint(state, sample())
    path = cp_store.checkpoint_path(state, "r1")
    path.write_text("{truncated")
    with pytest.raises(CorruptStateError) as info:
        cp_store.read_checkpoint(state, "r1")
    assert str(path) in str(info.value) and not path.exists()


def test_events_append_and_skip_a_torn_line(state_dir: Path) -> None:
    state = StateDir(state_dir)
    cp_store.append_event(state, "r1", "one", node="a", state="running")
    cp_store.append_event(state, "r1", "two")
    with open(cp_store.run_dir(state, "r1") / "events.jsonl", "a") as fh:
        fh.write('{"at": "x", "ev')  # a writer killed mid-line
    assert [e["event"] for e in cp_store.read_events(state, "r1")] == ["one", "two"]
