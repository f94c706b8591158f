"""`layers/actions.py`: what a person does to a run is recorded in its events with who did it,
whether it came from the command line, the daemon or the dashboard; a failed action too."""

from __future__ import annotations

from pathlib import Path

import pytest

from attractor.errors import AttractorError
from attractor.layers import actions
from attractor.store import agent_sessions
from attractor.store import checkpoint as cp_store
from attractor.store.checkpoint import Checkpoint, NodeProgress
from attractor.store.statedir import StateDir
from tests.helpers import run_cli


def _run(state: StateDir, run_id: str = "r1") -> None:
    cp_store.write_checkpoint(state, Checkpoint(
        run_id=run_id, pipeline_name="p", pipeline_path="/p.dot", target_dir=str(state.root.parent),
        target_branch="main", agent="scripted", agent_cmd=None, max_agents=2,
        nodes={"a": NodeProgress("a", "codergen")}))


def _actions(state: StateDir, run_id: str = "r1") -> list[dict[str, object]]:
    return [e for e in cp_store.read_events(state, run_id) if e["event"] == "action"]


def test_the_command_line_records_who_did_what(state: StateDir) -> None:
    _run(state)
    agent_sessions.start(state, "orchestrator-a", run_id="r1", node="a", cli="scripted", new_session_id=lambda: "")
    sent = run_cli(["agent", "send", "a", "look at the <b>tests</b>", "--state-dir", str(state.root)])
    assert sent.returncode == 0, sent.stderr
    answered = run_cli(["agent", "answer", "a", "yes", "--state-dir", str(state.root)])
    assert answered.returncode == 2 and answered.stderr.startswith("error: agent orchestrator-a: no such agent")
    paused = run_cli(["pause", "--state-dir", str(state.root), "--by", "ops"])
    assert paused.returncode == 0, paused.stderr
    send, answer = _actions(state)
    assert send["action"] == "send" and send["ok"] is True and send["node"] == "a"
    assert str(send["by"]).endswith("@cli") and send["text"] == "look at the <b>tests</b>"
    assert answer["action"] == "answer" and answer["ok"] is False and answer["reply"] == "yes"
    assert "no such agent" in str(answer["detail"])
    pause = cp_store.paused(state, "r1")
    assert pause is not None and pause["by"] == "ops"


def test_an_action_goes_to_the_run_of_the_agent(state: StateDir) -> None:
    """A node's agent works for its session's run, not necessarily the latest one."""
    _run(state, "r1")
    _run(state, "r2")
    agent_sessions.start(state, "orchestrator-a", run_id="r1", node="a", cli="scripted", new_session_id=lambda: "")
    actions.perform(state, "send", by="me@test", node="a", text="hi")
    assert len(_actions(state, "r1")) == 1 and _actions(state, "r2") == []


@pytest.mark.parametrize("kwargs, message", [
    ({"action": "explode"}, "unknown action 'explode'"),
    ({"action": "send"}, "name the node"),
    ({"action": "send", "node": "a/b"}, "node"),
    ({"action": "clear"}, "give ROLE NAME, or --escalation"),
    ({"action": "clear", "role": "runner"}, "missing NAME after role 'runner'"),
])
def test_bad_actions_are_refused_before_anything_happens(state: StateDir, kwargs: dict[str, str],
                                                          message: str) -> None:
    _run(state)
    action = kwargs.pop("action")
    with pytest.raises(AttractorError, match=message):
        actions.perform(state, action, by="me@test", **kwargs)  # type: ignore[arg-type]
    assert _actions(state) == []


def test_who_names_the_user_and_the_front_end() -> None:
    assert actions.who("cli").endswith("@cli")
    assert actions.who("dashboard", "127.0.0.1").endswith("@dashboard(127.0.0.1)")


def test_a_failed_stop_of_a_run_that_is_not_there_is_a_clear_error(state_dir: Path) -> None:
    StateDir(state_dir).ensure()
    stopped = run_cli(["stop", "--state-dir", str(state_dir)])
    assert stopped.returncode == 1 or stopped.returncode == 2
    assert stopped.stderr.startswith("error: ") and stopped.stderr.count("\n") == 1
