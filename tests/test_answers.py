"""Answering an agent that needs a human (`attractor agent answer`) and messages to a live agent
(`attractor agent send`), on the real chain: scripted agents in real tmux panes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from attractor.engines.answers import command_asked_about
from tests.chain_helpers import codergen, git_show, launch, module_steps, pipeline_file, read_json, tool
from tests.helpers import retry_until, run_cli


def _session(state: Path, node: str) -> dict[str, Any] | None:
    path = state / "agents" / f"orchestrator-{node}" / "session.json"
    return read_json(path) if path.exists() else None


def _finish(proc: Any, seconds: float = 90) -> tuple[int, str]:
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out + err


def test_permission_prompt_is_needs_input_until_answered(chain: tuple[Path, Path]) -> None:
    target, state = chain
    script = ("menu Bash command\\n   pytest -q\\n\\nDo you want to proceed?|Yes|No, and tell the agent what to do\n"
              + module_steps("asks", 3) + "commit asks\nreport")
    pipe = pipeline_file(target.parent, codergen("asks", script) + tool("check_asks"),
                         "  start -> asks -> check_asks -> exit\n")
    proc = launch(pipe, target, state)
    waiting = retry_until(lambda: (_session(state, "asks") or {}).get("needs_input"), 30, what="needs-input")
    assert waiting["rule"] == "claude-permission"
    status = run_cli(["status", "--state-dir", str(state)])
    assert "needs input:" in status.stdout and "attractor agent answer asks" in status.stdout
    _watch_shows_it_first(state)
    answered = run_cli(["agent", "answer", "asks", "yes", "--json", "--state-dir", str(state)])
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["chosen"] == "Yes"
    code, out = _finish(proc)
    assert code == 0, out
    assert git_show(target, "main", "app/asks.py") == "VALUE = 3\n"


def _watch_shows_it_first(state: Path) -> None:
    """`status --watch` redraws every interval with the waiting agent at the top; Ctrl-C leaves."""
    watcher = subprocess.Popen([sys.executable, "-m", "attractor", "status", "--watch", "--interval", "0.2",
                                "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert watcher.stdout is not None
        seen = b""
        while seen.count(b"\f") < 3:  # three screens drawn
            chunk = watcher.stdout.read1(65536)
            assert chunk, watcher.stderr.read() if watcher.stderr else b""
            seen += chunk
        screen = seen.split(b"\f")[2].decode().splitlines()
        assert screen[1].startswith("every 0.2s") and screen[2] == "NEEDS INPUT (1)", screen[:5]
        assert screen[3].startswith("  orchestrator-asks: ") and "attractor agent answer asks" in screen[4]
    finally:
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 130 and err.decode().strip() == "error: interrupted"


def test_answer_without_a_dialog_is_a_clear_error(chain: tuple[Path, Path]) -> None:
    target, state = chain
    pipe = pipeline_file(target.parent, codergen("quiet", "sleep 30\n" + module_steps("quiet", 1) + "commit q\nreport")
                         + tool("check_quiet"), "  start -> quiet -> check_quiet -> exit\n")
    proc = launch(pipe, target, state, detach=True)
    proc.wait(timeout=60)
    retry_until(lambda: (_session(state, "quiet") or {}).get("starts"), 30, what="agent started")
    try:
        answered = run_cli(["agent", "answer", "quiet", "yes", "--state-dir", str(state)])
        assert answered.returncode == 2
        assert answered.stderr.startswith("error: agent orchestrator-quiet: is not waiting at a menu")
        missing = run_cli(["agent", "answer", "nobody", "no", "--state-dir", str(state)])
        assert missing.returncode == 2 and "no such agent" in missing.stderr
    finally:
        run_cli(["stop", "--state-dir", str(state)], timeout=60)


def test_message_is_typed_into_an_idle_agent_once(chain: tuple[Path, Path]) -> None:
    target, state = chain
    script = "ask What next?\n" + module_steps("talk", 4) + "commit talk\nreport"
    pipe = pipeline_file(target.parent, codergen("talk", script) + tool("check_talk"),
                         "  start -> talk -> check_talk -> exit\n")
    proc = launch(pipe, target, state)
    retry_until(lambda: (_session(state, "talk") or {}).get("starts"), 30, what="agent started")
    sent = run_cli(["agent", "send", "talk", "please also keep the tests green", "--json",
                    "--state-dir", str(state)])
    assert sent.returncode == 0, sent.stderr
    signal_id = json.loads(sent.stdout)["signal_id"]
    code, out = _finish(proc)
    assert code == 0, out
    inbox = state / "signals" / "orchestrator-talk"
    done = read_json(inbox / "done" / f"{signal_id}.json")
    assert done["outcome"] == "delivered" and "typed into pane" in done["detail"]
    assert not list((inbox / "new").iterdir()) and not list((inbox / "cur").iterdir())
    assert len(list((inbox / "done").iterdir())) == 1  # delivered once


def test_command_asked_about() -> None:
    assert command_asked_about("Bash command\n  pytest -q tests\nRun the tests") == "pytest -q tests"
    assert command_asked_about("Would you like to run the following command?\n$ npm test") == "npm test"
    assert command_asked_about("Do you want to proceed?") is None
