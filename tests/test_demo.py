"""pipelines/demo.dot brings everything it needs, so it runs on any git repository with a `main`
branch; a node that runs out of attempts says why in one line (the error, not a caret line).
Real tmux on the test's private socket, real git, the real scripted agent."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.chain_helpers import checkpoint, codergen, kill_everything, launch, pipeline_file, tool
from tests.helpers import REPO_ROOT, git, make_repo

DEMO = REPO_ROOT / "pipelines" / "demo.dot"


def finish(proc: subprocess.Popen[str], seconds: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out, err


# A repository of someone else's: pytest-style tests (no tests/__init__.py, so `unittest discover
# -s tests` cannot even import them) and no `calc` package.
OTHER_REPO = {
    "README.md": "# shop\n",
    "shop/__init__.py": "",
    "shop/cart.py": "def total(prices):\n    return sum(prices)\n",
    "tests/test_cart.py": "from shop.cart import total\n\n\ndef test_total():\n    assert total([1, 2]) == 3\n",
}


def test_demo_pipeline_runs_on_a_repository_that_is_not_the_demo_one(tmp_path: Path, state_dir: Path,
                                                                       tmux_socket: str) -> None:
    target = make_repo(tmp_path / "shop", OTHER_REPO)
    start = git(target, "rev-parse", "main")
    try:
        code, out, err = finish(launch(DEMO, target, state_dir))
        assert code == 0, out + err
        nodes = checkpoint(state_dir)["nodes"]
        assert {name: nodes[name]["state"] for name in ("add_ops", "add_format", "add_cli")} == dict.fromkeys(
            ("add_ops", "add_format", "add_cli"), "merged")
        assert nodes["add_cli"]["attempts"] == 2  # the deliberate first-attempt failure, then the fix
        changed = git(target, "diff", "--name-only", start, "main").splitlines()
        assert sorted(changed) == ["calc/__init__.py", "calc/cli.py", "calc/fmt.py", "calc/ops.py",
                                   "calc/test_cli.py", "calc/test_fmt.py", "calc/test_ops.py"]  # nothing else touched
    finally:
        kill_everything(state_dir)


def test_a_node_out_of_attempts_says_which_error_failed_its_validation(chain: tuple[Path, Path]) -> None:
    target, state = chain
    script = ("write tests/test_missing.py import unittest\\n\\nfrom app.nowhere import thing\\n\\n\\n"
              "class T(unittest.TestCase):\\n    def test_thing(self):\\n        self.assertTrue(thing)\\n\n"
              "commit a test of a module that does not exist\nreport")
    pipe = pipeline_file(target.parent, codergen("broken", script, max_retries=0) + tool("check"),
                         "  start -> broken -> check -> exit\n")
    code, out, err = finish(launch(pipe, target, state), 60)
    assert code == 1, out + err
    wanted = "ModuleNotFoundError: No module named 'app.nowhere'"
    reason = checkpoint(state)["nodes"]["broken"]["reason"]
    assert reason.splitlines()[0] == f"a validation failure after 1 attempt(s): {wanted}", reason
    [line] = [line for line in out.splitlines() if line.split("]", 1)[-1].split()[:2] == ["broken", "failed:"]]
    assert line.endswith(wanted), out
    assert "^^^" not in line


def test_demo_command_checks_main_with_the_pipelines_own_command(tmp_path: Path, tmux_socket: str) -> None:
    """`attractor demo` starts from an empty project and says which command it ran on main."""
    from tests.helpers import run_cli

    demo = tmp_path / "demo"
    result = run_cli(["demo", "--dir", str(demo)], timeout=120)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert git(demo, "ls-tree", "--name-only", "main~3") == "README.md"  # the project before the run
        assert "tests on main: OK (python3 -m unittest discover -s calc -t . -q)" in result.stdout
    finally:
        kill_everything(demo / ".claude" / "state")


def test_make_demo_repo_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    used = make_repo(tmp_path / "used")
    result = run_cli(["demo", "--dir", str(used)])
    assert result.returncode == 2 and result.stderr.startswith("error: --dir:"), result.stderr
