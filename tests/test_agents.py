"""Agent adapters and the scripted agent (a real program, run here as a real process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.agents import LaunchContext, custom_agent, resolve_agent
from attractor.agents.scripted import parse_script, unescape
from attractor.errors import BadInputError, MissingBinaryError, UnknownValueError
from tests.helpers import git, make_repo


def ctx(tmp_path: Path) -> LaunchContext:
    return LaunchContext(node="n", worktree=tmp_path, prompt_file=tmp_path / "p f.md", attempt=2,
                         agent_id="orchestrator-n", runner_id="runner-n", state_dir=tmp_path / "s",
                         script_file=tmp_path / "n.script")


def test_custom_template_substitutes_per_word(tmp_path: Path) -> None:
    agent = custom_agent("mycli --prompt-file {prompt_file} --try {attempt}")
    assert agent.argv(ctx(tmp_path)) == ["mycli", "--prompt-file", str(tmp_path / "p f.md"), "--try", "2"]
    with pytest.raises(BadInputError) as info:
        custom_agent("mycli {secret}")
    assert "{prompt_file}" in str(info.value)


def test_claude_gets_the_prompt_as_one_argument(tmp_path: Path) -> None:
    argv = resolve_agent("claude").argv(ctx(tmp_path))
    assert argv[0] == "sh" and argv[-1] == str(tmp_path / "p f.md")


def test_unknown_and_missing_agents(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownValueError):
        resolve_agent("wizard")
    with monkeypatch.context() as patch, pytest.raises(MissingBinaryError) as info:
        patch.setenv("PATH", "/nonexistent")
        resolve_agent("codex").check()
    assert "'codex' not found" in str(info.value)


class ScriptCase(NamedTuple):
    test_id: str
    text: str
    problem: str


BAD_SCRIPTS = [
    ScriptCase("unknown-step", "write a x\ndance now", "line 2"),
    ScriptCase("write-without-path", "write", "needs a PATH"),
    ScriptCase("sleep-not-number", "sleep soon", "sleep needs seconds"),
    ScriptCase("fail-not-code", "fail badly", "exit code"),
]


@pytest.mark.parametrize("case", BAD_SCRIPTS, ids=[c.test_id for c in BAD_SCRIPTS])
def test_bad_scripts_name_their_line(case: ScriptCase) -> None:
    with pytest.raises(BadInputError) as info:
        parse_script(case.text)
    assert case.problem in str(info.value)


def test_attempt_filters_and_escapes() -> None:
    steps = parse_script("# comment\n@1 write a one\n@2+ write a two\n\nreport done")
    assert [(s.verb, s.applies(1), s.applies(3)) for s in steps] == [
        ("write", True, False), ("write", False, True), ("report", True, True)]
    assert unescape(r"a\nb\tc\\n") == "a\nb\tc\\n"


def test_scripted_agent_edits_commits_and_refuses_to_leave_its_worktree(tmp_path: Path, state_dir: Path) -> None:
    repo = make_repo(tmp_path / "wt")
    script = tmp_path / "s.script"
    script.write_text("write pkg/mod.py X = 1\\n\ncommit add mod\n")
    run = subprocess.run([sys.executable, "-m", "attractor.agents.scripted", "--script-file", str(script),
                          "--worktree", str(repo), "--node", "n", "--state-dir", str(state_dir)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (repo / "pkg" / "mod.py").read_text() == "X = 1\n"
    assert git(repo, "log", "-1", "--format=%s") == "add mod"
    script.write_text("write ../escape.txt nope\n")
    run = subprocess.run([sys.executable, "-m", "attractor.agents.scripted", "--script-file", str(script),
                          "--worktree", str(repo), "--node", "n", "--state-dir", str(state_dir)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "leaves the worktree" in run.stderr
    assert not (tmp_path / "escape.txt").exists()
