"""The real agent CLIs run pipelines end to end: Claude Code, Codex and Aider, installed from npm
and PyPI at pinned versions (scripts/install_agent_clis.sh), in real tmux panes and git
worktrees, against the scripted model server in tests/modelserver (the only stand-in: it plays
the model). A fresh HOME for every test (conftest), so every first-run dialog a new user meets is
met here too.

Locally a test skips with the reason when its CLI is not installed; under CI=true none skips.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_bins import agent_binary
from tests.chain_helpers import checkpoint, git_show, identity, read_json, run_id
from tests.helpers import REPO_ROOT, git, retry_until, run_cli
from tests.modelserver.__main__ import pipeline_scripts
from tests.modelserver.core import Action, ModelServer, Playbook, bash, report, say, script_playbook, write

DEMO = REPO_ROOT / "pipelines" / "demo.dot"
CLIS = ("claude", "codex", "aider")
AIDER_METADATA = {"openai/scripted": {"max_tokens": 4096, "max_input_tokens": 128000, "max_output_tokens": 4096,
                                      "input_cost_per_token": 0.000002, "output_cost_per_token": 0.000008,
                                      "litellm_provider": "openai", "mode": "chat"}}


def cli_env(cli: str, server: ModelServer, home: Path) -> dict[str, str]:
    """What a user of each CLI has in their environment to reach the model (here: the server)."""
    binary = agent_binary(cli)
    env = {"PATH": f"{binary.parent}:{os.environ['PATH']}"}
    if cli == "claude":
        env.update(ANTHROPIC_BASE_URL=server.url, ANTHROPIC_API_KEY="sk-ant-api03-scripted-0123456789abcdef",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1",
                   DISABLE_ERROR_REPORTING="1", DISABLE_AUTOUPDATER="1")
    elif cli == "codex":
        env.update(OPENAI_BASE_URL=server.url + "/v1", OPENAI_API_KEY="sk-scripted")
    else:
        metadata = home / "aider-model-metadata.json"
        metadata.write_text(json.dumps(AIDER_METADATA))
        env.update(OPENAI_API_BASE=server.url + "/v1", OPENAI_API_KEY="sk-scripted", AIDER_MODEL="openai/scripted",
                   AIDER_MODEL_METADATA_FILE=str(metadata))
    return env


def demo_repo(tmp_path: Path) -> Path:
    from attractor.cli.demo import make_demo_repo

    target = tmp_path / "calc"
    make_demo_repo(target)
    return target


def run(pipeline: Path, target: Path, state: Path, cli: str, env: dict[str, str], *extra: str,
        detach: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, str(REPO_ROOT / "scripts" / "launch_guardian.py"), str(pipeline),
            "--target-dir", str(target), "--state-dir", str(state), "--agent", cli, *extra]
    if detach:
        args.append("--detach")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)


def finish(proc: subprocess.Popen[str], seconds: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out + err


def session(state: Path, node: str) -> dict[str, Any] | None:
    path = state / "agents" / f"orchestrator-{node}" / "session.json"
    return read_json(path) if path.exists() else None


def one_node(tmp_path: Path, node: str, prompt: str, **attrs: str) -> Path:
    extra = "".join(f", {k}={json.dumps(v)}" for k, v in attrs.items())
    path = tmp_path / f"{node}.dot"
    path.write_text(f"digraph {node} {{\n  start [shape=Mdiamond]\n  exit [shape=Msquare]\n"
                    f"  {node} [shape=box, prompt={json.dumps(prompt)}{extra}]\n"
                    f"  check_{node} [shape=parallelogram, command=\"python3 -m unittest discover -s tests -t . -q\"]\n"
                    f"  start -> {node} -> check_{node} -> exit\n}}\n")
    return path


def unit_test_text(name: str, value: int) -> str:
    return (f"import unittest\n\nfrom app.{name} import VALUE\n\n\nclass T(unittest.TestCase):\n"
            f"    def test_value(self):\n        self.assertEqual(VALUE, {value})\n")


@pytest.fixture
def server_for() -> Iterator[Any]:
    servers: list[ModelServer] = []

    def start(playbook: Playbook) -> ModelServer:
        server = ModelServer(playbook).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("cli", CLIS)
def test_demo_pipeline_end_to_end(cli: str, tmp_path: Path, state_dir: Path, server_for: Any,
                                  chain: tuple[Path, Path]) -> None:
    """`attractor run pipelines/demo.dot --agent CLI`: folder trust handled, no prompt for the
    allowed commands, report → validation (a failed first validation sent back) → merge."""
    target = demo_repo(tmp_path)
    server = server_for(script_playbook(pipeline_scripts(DEMO)))
    env = cli_env(cli, server, Path(os.environ["HOME"]))
    code, out = finish(run(DEMO, target, state_dir, cli, env))
    assert code == 0, out
    assert f"run {run_id(state_dir)} succeeded" in out
    for path in ("calc/ops.py", "calc/fmt.py", "calc/cli.py"):
        assert git_show(target, "main", path), path
    tests = subprocess.run([sys.executable, "-m", "unittest", "discover", "-s", "calc", "-t", ".", "-q"],
                           cwd=target, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stderr
    authors = set(git(target, "log", "--format=%an <%ae>", "main").splitlines())
    user = f"{os.environ['GIT_AUTHOR_NAME']} <{os.environ['GIT_AUTHOR_EMAIL']}>"  # as conftest sets it
    assert authors == {user}, authors  # every commit is the user's, none "Your Name" or the CLI's
    logs = "\n".join(p.read_text() for p in (state_dir / "logs").glob("runner-*.log"))
    assert "needs input" not in logs and "answering prompt" not in logs  # configured, not answered
    status = json.loads(run_cli(["status", "--json", "--state-dir", str(state_dir)]).stdout)
    usage = {n["name"]: n["usage"] for n in status["nodes"] if n["kind"] == "codergen"}
    assert all(u and u["input_tokens"] > 0 and u["output_tokens"] > 0 for u in usage.values()), usage
    assert status["run"]["usage"]["input_tokens"] == sum(u["input_tokens"] for u in usage.values())


def _steps_killable(marker: Path, entered: threading.Event) -> list[Action | Playbook]:
    def first_write(conv: Any) -> Action:
        entered.set()  # the agent waits for the model now, one turn into the node
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return write("app/slow.py", "VALUE = 5\n")

    # the first turn is answered at once, so a conversation exists to resume when the kill comes
    return [write("tests/test_slow.py", unit_test_text("slow", 5)), first_write,
            bash("git add -A && git commit -q -m 'add slow'"), report("slow ready"), say("Done.")]


@pytest.mark.parametrize("cli", CLIS)
def test_killed_agent_is_respawned_and_resumes_its_session(cli: str, tmp_path: Path, state_dir: Path,
                                                           server_for: Any, chain: tuple[Path, Path]) -> None:
    """SIGKILL the agent while it waits for the model: it is respawned and finishes the node;
    Claude Code resumes the same session (its id recorded before and after)."""
    from tests.modelserver.core import NodePlaybook

    marker = tmp_path / "go-on"
    entered = threading.Event()
    server = server_for(NodePlaybook({"slow": _steps_killable(marker, entered)}))
    target = chain[0]
    pipe = one_node(tmp_path, "slow", "Add app/slow.py with VALUE = 5 and its test")
    proc = run(pipe, target, state_dir, cli, cli_env(cli, server, Path(os.environ["HOME"])))
    retry_until(entered.is_set, 120, what="the agent to wait for the model")
    first = session(state_dir, "slow")
    assert first is not None and first["session_id"]
    if cli == "claude":
        # Claude Code writes its transcript a moment after the turn: a kill before that leaves
        # nothing to resume (it then says "No conversation found" and the runner starts afresh)
        def conversation_written() -> bool:
            found = session(state_dir, "slow") or {}
            path = Path(str(found.get("transcript_path") or ""))
            return path.is_file() and any('"type":"assistant"' in line or '"type": "assistant"' in line
                                          for line in path.read_text(errors="replace").splitlines())

        retry_until(conversation_written, 60, what="Claude Code to write the first turn to its transcript")
    ident = identity(state_dir, "orchestrator-slow")
    assert ident is not None
    os.kill(int(ident["pid"]), signal.SIGKILL)
    retry_until(lambda: (session(state_dir, "slow") or {}).get("starts", 0) >= 2, 60, what="the respawn")
    marker.touch()
    code, out = finish(proc)
    assert code == 0, out
    assert git_show(target, "main", "app/slow.py") == "VALUE = 5\n"
    after = session(state_dir, "slow")
    assert after is not None and after["starts"] >= 2
    if cli == "claude":
        log = (state_dir / "logs" / "runner-slow.log").read_text()
        assert after["session_id"] == first["session_id"]
        assert f"resuming session {first['session_id']}" in log


# Codex runs with approval "never" in a full-access sandbox (its workspace-write sandbox cannot
# commit in a worktree), so it never asks; Aider answers its own questions (--yes-always).
def test_command_outside_the_allow_list_needs_input_and_is_answered(tmp_path: Path, state_dir: Path,
                                                                    server_for: Any,
                                                                    chain: tuple[Path, Path]) -> None:
    from tests.modelserver.core import NodePlaybook

    outside = "python3 -c \"open('asked.txt', 'w').write('granted')\""
    server = server_for(NodePlaybook({"asks": [
        bash(outside), write("app/asks.py", "VALUE = 7\n"), write("tests/test_asks.py", unit_test_text("asks", 7)),
        bash("git add -A && git commit -q -m 'add asks'"), report("asks ready"), say("Done.")]}))
    target = chain[0]
    pipe = one_node(tmp_path, "asks", "Add app/asks.py")
    proc = run(pipe, target, state_dir, "claude", cli_env("claude", server, Path(os.environ["HOME"])))
    try:
        waiting = retry_until(lambda: (session(state_dir, "asks") or {}).get("needs_input"), 120,
                              what="the agent to need input")
        assert "asked.txt" in json.dumps(waiting) or waiting.get("kind") == "permission", waiting
        status = run_cli(["status", "--state-dir", str(state_dir)])
        assert "needs-input" in status.stdout and "attractor agent answer asks" in status.stdout
        answered = retry_until(lambda: (lambda r: r if r.returncode == 0 else None)(
            run_cli(["agent", "answer", "asks", "yes", "--state-dir", str(state_dir)])), 30,
            what="an answer to be possible (the menu on screen)")
        assert "chose" in answered.stdout
    except BaseException:
        proc.kill()
        raise
    code, out = finish(proc)
    assert code == 0, out
    assert git_show(target, "main", "app/asks.py") == "VALUE = 7\n"


@pytest.mark.parametrize("cli", ("claude", "codex"))  # Aider reports by exiting: nothing to forget
def test_an_agent_that_ends_without_reporting_is_reminded(cli: str, tmp_path: Path, state_dir: Path,
                                                          server_for: Any, chain: tuple[Path, Path]) -> None:
    from tests.modelserver.core import NodePlaybook

    server = server_for(NodePlaybook({"forgets": [
        write("app/forgets.py", "VALUE = 8\n"), write("tests/test_forgets.py", unit_test_text("forgets", 8)),
        bash("git add -A && git commit -q -m 'add forgets'"),
        say("I am finished."),  # ends its turn without the report: the Stop hook sends it back
        report("forgets ready"), say("Reported.")]}))
    target = chain[0]
    pipe = one_node(tmp_path, "forgets", "Add app/forgets.py")
    code, out = finish(run(pipe, target, state_dir, cli, cli_env(cli, server, Path(os.environ["HOME"]))))
    assert code == 0, out
    assert git_show(target, "main", "app/forgets.py") == "VALUE = 8\n"
    record = session(state_dir, "forgets")
    assert record is not None and record["stop_blocks"] == 1
    reminded = [c for c in server.conversations("forgets") if "You have not reported this node yet" in c.text()]
    assert reminded, "the model never saw the reminder"
    assert checkpoint(state_dir)["nodes"]["forgets"]["attempts"] == 1  # reminded, not restarted
