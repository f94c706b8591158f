"""`attractor agent-hook EVENT`, run as the agent CLIs run it: a new process with the hook's JSON
on stdin and the agent's environment, against a real state directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attractor.errors import CorruptStateError
from attractor.states import HookPhase, SignalKind
from attractor.store import agent_sessions, hooks, identities, signals
from attractor.store.statedir import StateDir
from tests.helpers import REPO_ROOT

RUN = "r1"
NODE = "n1"
AGENT = f"orchestrator-{NODE}"


@pytest.fixture
def agent(state_dir: Path) -> StateDir:
    state = StateDir(state_dir)
    created = identities.create_identity(state, "orchestrator", NODE, pid=os.getpid(), session_id=RUN)
    assert created.epoch == 1
    hooks.create_hook(state, "runner", NODE, node=NODE, run_id=RUN)
    hooks.update_phase(state, "runner", NODE, HookPhase.EXECUTING)
    agent_sessions.start(state, AGENT, run_id=RUN, node=NODE, cli="claude", new_session_id=lambda: "s-1")
    return state


def hook(state: StateDir, event: str, data: dict[str, Any] | None = None, epoch: int = 1) -> str:
    env = {**os.environ, "ATTRACTOR_STATE_DIR": str(state.root), "ATTRACTOR_AGENT_ID": AGENT,
           "ATTRACTOR_RUNNER_ID": f"runner-{NODE}", "ATTRACTOR_NODE": NODE, "ATTRACTOR_RUN_ID": RUN,
           "ATTRACTOR_AGENT_EPOCH": str(epoch), "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "attractor", "agent-hook", event], input=json.dumps(data or {}),
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def session(state: StateDir) -> agent_sessions.AgentSession:
    return agent_sessions.read(state, AGENT)


def test_session_start_records_the_cli_session(agent: StateDir) -> None:
    out = hook(agent, "session-start", {"session_id": "abc", "transcript_path": "/t/abc.jsonl", "source": "startup"})
    assert out == ""
    record = session(agent)
    assert (record.session_id, record.transcript_path, record.resumable) == ("abc", "/t/abc.jsonl", True)
    assert identities.get(agent, "orchestrator", NODE).last_heartbeat


def test_after_a_compaction_the_wisdom_and_report_command_come_back(agent: StateDir) -> None:
    out = hook(agent, "session-start", {"session_id": "abc", "source": "compact"})
    assert "signal send ORCHESTRATOR_DONE --to runner-n1 --from orchestrator-n1" in out


def test_stop_reminds_twice_then_reports_stuck(agent: StateDir) -> None:
    for expected in (1, 2):
        reply = json.loads(hook(agent, "stop", {"stop_hook_active": expected > 1}))
        assert reply["decision"] == "block"
        assert "signal send ORCHESTRATOR_DONE --to runner-n1" in reply["reason"]
        assert session(agent).stop_blocks == expected
    assert hook(agent, "stop") == ""
    stuck = signals.Inbox(agent, f"runner-{NODE}").pending([SignalKind.ORCHESTRATOR_STUCK])
    assert len(stuck) == 1 and "without reporting" in stuck[0].payload.to_json()["reason"]


def test_stop_after_a_report_lets_the_agent_end(agent: StateDir) -> None:
    signals.send(agent, SignalKind.ORCHESTRATOR_DONE, to=f"runner-{NODE}", sender=AGENT,
                 payload={"node": NODE, "summary": "done"})
    assert hook(agent, "stop") == ""
    assert session(agent).reported


def test_queued_messages_are_delivered_once(agent: StateDir) -> None:
    sent = signals.send(agent, SignalKind.MESSAGE, to=AGENT, sender="user-cli",
                        payload={"text": "use the new API", "author": "ana"})
    out = hook(agent, "user-prompt-submit", {"prompt": "go"})
    assert "[message from ana] use the new API" in out
    assert hook(agent, "user-prompt-submit", {"prompt": "go"}) == ""
    done = signals.Inbox(agent, AGENT).list("done")
    assert [s.id for s in done] == [sent.id] and done[0].outcome == "delivered"


def test_a_message_at_stop_sends_the_agent_back_to_work(agent: StateDir) -> None:
    signals.send(agent, SignalKind.MESSAGE, to=AGENT, sender="user-cli", payload={"text": "also fix the docs"})
    reply = json.loads(hook(agent, "stop"))
    assert reply["decision"] == "block" and "also fix the docs" in reply["reason"]
    assert session(agent).stop_blocks == 0  # a message is not a reminder


def test_permission_notification_is_needs_input_until_a_tool_runs(agent: StateDir) -> None:
    hook(agent, "notification", {"notification_type": "permission_prompt",
                                 "message": "Claude needs your permission to use Bash"})
    waiting = session(agent).needs_input
    assert waiting is not None and waiting["message"] == "Claude needs your permission to use Bash"
    hook(agent, "post-tool-use", {"tool_name": "Bash"})
    assert session(agent).needs_input is None


def test_hooks_of_a_replaced_incarnation_are_ignored(agent: StateDir) -> None:
    assert hook(agent, "stop", epoch=0) == ""
    assert session(agent).stop_blocks == 0
    signals.send(agent, SignalKind.MESSAGE, to=AGENT, sender="user-cli", payload={"text": "for the new one"})
    assert hook(agent, "user-prompt-submit", epoch=0) == ""
    assert signals.Inbox(agent, AGENT).pending([SignalKind.MESSAGE])


def test_pre_compact_saves_progress_in_the_hook(agent: StateDir, tmp_path: Path) -> None:
    from tests.helpers import commit_file, make_repo

    repo = make_repo(tmp_path / "repo")
    subprocess.run(["git", "checkout", "-q", "-b", "work"], cwd=repo, check=True)
    commit_file(repo, "a.txt", "a\n", "first piece")
    hook(agent, "pre-compact", {"trigger": "auto", "cwd": str(repo)})
    text = hooks.read_hook(agent, "runner", NODE).resumption_instructions
    assert "compacted (auto)" in text and "first piece" in text


def test_a_broken_state_never_breaks_the_agent(tmp_path: Path) -> None:
    env = {**os.environ, "ATTRACTOR_STATE_DIR": str(tmp_path / "nothing"), "ATTRACTOR_AGENT_ID": AGENT,
           "ATTRACTOR_NODE": NODE, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "attractor", "agent-hook", "stop"], input="{not json",
                          env=env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "")


def test_a_mistyped_session_record_is_corrupt_and_the_next_start_is_fresh(agent: StateDir) -> None:
    path = agent_sessions.path_for(agent, AGENT)
    data = json.loads(path.read_text())
    data["starts"] = "2"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptStateError) as info:
        agent_sessions.read(agent, AGENT)
    assert f"corrupt state file {path}: agent session: field 'starts' must be int" in str(info.value)
    assert info.value.moved_to is not None and not path.exists()
    assert agent_sessions.find(agent, AGENT) is None
    fresh = agent_sessions.start(agent, AGENT, run_id=RUN, node=NODE, cli="claude", new_session_id=lambda: "s-2")
    assert (fresh.starts, fresh.session_id) == (1, "s-2")
