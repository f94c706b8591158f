"""The seed-style shims scripts/spawn_runner.py and scripts/spawn_orchestrator.py: every input is
checked before anything is written, a run id such as PRD-TEST-001 is taken as given (and mapped
to a valid name, with a note), and a missing pipeline is named with its fix. Real git, real tmux
on the test's private socket, real processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.chain_helpers import codergen, git_show, identity, kill_everything, pipeline_file, tool
from tests.helpers import git, make_repo, retry_until, run_script

SCRIPT = "write app/auth.py LOGIN = True\\n\ncommit add login\nreport login ready"


def auth_pipeline(where: Path) -> Path:
    return pipeline_file(where, codergen("impl_auth", SCRIPT) + tool("validate"),
                         "  start -> impl_auth -> validate -> exit\n", name="auth")


def test_spawn_runner_takes_an_uppercase_run_id_and_starts_a_runner_that_works(chain: tuple[Path, Path]) -> None:
    target, state = chain
    pipe = auth_pipeline(target.parent)
    result = run_script("spawn_runner.py", ["--node", "impl_auth", "--prd", "PRD-TEST-001", "--pipeline", str(pipe),
                                            "--target-dir", str(target), "--state-dir", str(state)])
    assert result.returncode == 0, result.stderr
    assert "run id 'PRD-TEST-001' is used as 'prd-test-001'" in result.stderr
    assert "att-prd-test-001-runner-impl_auth" in result.stdout
    runner = identity(state, "runner-impl_auth")
    assert runner is not None and runner["session_id"] == "prd-test-001"
    hook = json.loads((state / "hooks" / "runner-impl_auth.json").read_text())
    assert hook["run_id"] == "prd-test-001"
    # the runner lives on: its agent commits on the node's branch and the runner records the report
    retry_until(lambda: git_show(target, "attractor/prd-test-001/impl_auth", "app/auth.py"), 30, what="agent commit")
    retry_until(lambda: json.loads((state / "hooks" / "runner-impl_auth.json").read_text())["phase"]
                == "impl_complete", 30, what="report recorded")


def test_spawn_orchestrator_takes_an_uppercase_run_id(chain: tuple[Path, Path]) -> None:
    target, state = chain
    pipe = auth_pipeline(target.parent)
    result = run_script("spawn_orchestrator.py", ["--node", "impl_auth", "--run", "PRD-TEST-001", "--pipeline",
                                                  str(pipe), "--target-dir", str(target), "--state-dir", str(state)])
    try:
        assert result.returncode == 0, result.stderr
        assert "used as 'prd-test-001'" in result.stderr
        retry_until(lambda: git_show(target, "attractor/prd-test-001/impl_auth", "app/auth.py"), 30,
                    what="agent commit")
    finally:
        kill_everything(state)


class BadInput(NamedTuple):
    test_id: str
    args: list[str]  # {pipe}, {target}, {plain}, {tool_node} are filled in
    fragments: tuple[str, ...]  # all in the one line on stderr


BAD_INPUTS = [
    BadInput("no-pipeline", ["--node", "impl_auth", "--prd", "PRD-TEST-001"],
             ("--pipeline", "no pipeline for run 'prd-test-001'", "runs/prd-test-001/pipeline.dot does not exist",
              "pass --pipeline FILE")),
    BadInput("pipeline-file-missing", ["--node", "impl_auth", "--prd", "PRD-TEST-001", "--pipeline", "{plain}/x.dot"],
             ("--pipeline", "x.dot does not exist")),
    BadInput("node-not-in-pipeline", ["--node", "impl_login", "--run", "r1", "--pipeline", "{pipe}"],
             ("--node", "'impl_login' is not in pipeline", "its agent tasks: impl_auth")),
    BadInput("node-is-a-tool", ["--node", "validate", "--run", "r1", "--pipeline", "{pipe}"],
             ("--node", "'validate'", "is a tool node", "agent task (box): impl_auth")),
    BadInput("invalid-node-name", ["--node", "Impl Auth", "--run", "r1", "--pipeline", "{pipe}"],
             ("invalid node name 'Impl Auth'",)),
    BadInput("target-not-a-repository", ["--node", "impl_auth", "--run", "r1", "--pipeline", "{pipe}",
                                         "--target-dir", "{plain}"],
             ("--target-dir", "not a git repository", "git checkout")),
    BadInput("target-branch-missing", ["--node", "impl_auth", "--run", "r1", "--pipeline", "{pipe}",
                                       "--target", "release"],
             ("--target", "no branch 'release'", "pass --target BRANCH")),
    BadInput("run-id-too-long-for-tmux", ["--node", "impl_auth", "--run", "R" * 60, "--pipeline", "{pipe}"],
             ("--run", "tmux session name", "use a shorter run id")),
    BadInput("run-id-maps-to-nothing", ["--node", "impl_auth", "--run", "!!!", "--pipeline", "{pipe}"],
             ("invalid run id '!!!'",)),
    BadInput("script-the-agent-refuses", ["--node", "impl_auth", "--run", "r1", "--pipeline", "{bad_script}"],
             ("node 'impl_auth'", "script line 1", "unknown step 'writ'")),
    BadInput("scripted-node-without-script", ["--node", "impl_auth", "--run", "r1", "--pipeline", "{no_script}"],
             ("node 'impl_auth'", "needs a `script` attribute")),
]


@pytest.mark.parametrize("shim", ["spawn_runner.py", "spawn_orchestrator.py"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.test_id for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path: Path, shim: str, case: BadInput) -> None:
    target = make_repo(tmp_path / "app")
    plain = tmp_path / "plain"
    plain.mkdir()
    state = tmp_path / "state"
    files = {
        "pipe": auth_pipeline(tmp_path),
        "bad_script": pipeline_file(tmp_path, codergen("impl_auth", "writ app/x.py 1"),
                                    "  start -> impl_auth -> exit\n", name="bad"),
        "no_script": pipeline_file(tmp_path, '  impl_auth [shape=box, prompt="add login"]\n',
                                   "  start -> impl_auth -> exit\n", name="noscript"),
    }
    values = {"plain": str(plain), **{key: str(path) for key, path in files.items()}}
    args = [arg.format(**values) for arg in case.args]
    if "--target-dir" not in args:
        args += ["--target-dir", str(target)]
    before = git(target, "for-each-ref")
    result = run_script(shim, [*args, "--state-dir", str(state)])
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: "), result.stderr
    for fragment in case.fragments:
        assert fragment in line, line
    assert result.stdout == ""
    assert not state.exists()  # no identity, hook, log or lock
    assert not (target / ".claude").exists() and git(target, "for-each-ref") == before  # no worktree, no branch
