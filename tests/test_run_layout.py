"""layers/layout.py names every part of a run, and nothing else in the package formats those
names by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import attractor
from attractor.errors import InvalidNameError
from attractor.layers import layout
from attractor.store.statedir import StateDir

ROOT = Path(attractor.__file__).resolve().parent


def test_the_names_of_a_run() -> None:
    run = layout.RunLayout("p-20261201-1", Path("/repo"))
    assert run.guardian_id == "guardian-p-20261201-1"
    assert layout.runner_id("impl") == "runner-impl"
    assert layout.orchestrator_id("impl") == "orchestrator-impl"
    assert run.branch("impl") == "attractor/p-20261201-1/impl"
    assert run.worktree("impl") == Path("/repo/.claude/worktrees/impl")
    assert run.validation_tree("impl") == Path("/repo/.claude/worktrees/_validate-impl")
    assert layout.is_validation_tree(run.validation_tree("impl"))
    assert not layout.is_validation_tree(run.worktree("impl"))
    assert run.guardian_session == "att-p-20261201-1-guardian-main"


def test_session_names_have_no_tmux_separators() -> None:
    name = layout.session_name("r.1", "orch", "a.b:c")
    assert name == "att-r_1-orch-a_b_c"
    assert name.startswith(layout.session_prefix("r.1", "orch"))
    assert name.startswith(layout.run_sessions_prefix("r.1"))
    with pytest.raises(ValueError, match="tmux session role"):
        layout.session_prefix("r1", "orchestrator")


def test_a_node_name_with_a_slash_never_becomes_a_path() -> None:
    with pytest.raises(InvalidNameError):
        layout.worktree_path(Path("/repo"), "../main")
    with pytest.raises(InvalidNameError):
        layout.branch_name("r1", "a/b")


def test_the_agent_environment_names_the_agent_and_its_runner(tmp_path: Path) -> None:
    env = layout.agent_env(StateDir(tmp_path), run_id="r1", node="n1", tmux_socket="sock", target_branch="dev")
    assert env["ATTRACTOR_AGENT_ID"] == "orchestrator-n1" and env["ATTRACTOR_RUNNER_ID"] == "runner-n1"
    assert env["ATTRACTOR_STATE_DIR"] == str(tmp_path) and env["ATTRACTOR_TARGET_BRANCH"] == "dev"
    assert layout.layer_env(StateDir(tmp_path), "sock", "runner-n1") == {
        "ATTRACTOR_STATE_DIR": str(tmp_path), "ATTRACTOR_TMUX_SOCKET": "sock", "ATTRACTOR_AGENT_ID": "runner-n1"}


# Formatting a run's names by hand: an agent id of a layer role, a session name, a branch of a
# run, a worktree or validation tree path, an ATTRACTOR_* variable name as a string literal.
HAND_MADE = re.compile(
    r'f"(runner|orchestrator|guardian)-\{'
    r'|"att-'
    r'|f"attractor/\{'
    r'|/ "worktrees"'
    r'|_validate-'
    r'|"ATTRACTOR_(STATE_DIR|TMUX_SOCKET|AGENT_ID|RUNNER_ID|NODE|RUN_ID|TARGET_BRANCH|AGENT_EPOCH|LOG_LEVEL|MODEL)"')
# gitops defines the worktrees directory and the branch prefix that layout builds on (and line
# `main_git / "worktrees"` there is git's own directory of worktree records).
OWNERS = {"layers/layout.py", "names.py", "gitops.py"}


def test_no_module_formats_a_run_name_by_hand() -> None:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in OWNERS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if HAND_MADE.search(line) and not line.lstrip().startswith("#"):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "names of a run belong to layers/layout.py (or names.ENV_*):\n" + "\n".join(found)
