"""Layer 0, the launcher: what it does when the run's state is damaged under it, and launches it
refuses (a live run, a taken session name) without changing any state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.chain_helpers import checkpoint, codergen, identity, launch, module_steps, pipeline_file, run_id, tool
from tests.helpers import REPO_ROOT, make_repo, retry_until

ATTRACTOR = [sys.executable, "-m", "attractor"]


def _gated_pipeline(target: Path, gate: Path) -> Path:
    """One node whose agent waits until `gate` exists, so a test acts while the run is live."""
    script = module_steps("feature", 7) + f"run while [ ! -e {gate} ]; do sleep 0.05; done\ncommit add feature\nreport"
    return pipeline_file(target.parent, codergen("impl", script) + tool("check"), "  start -> impl -> check -> exit\n")


def _finish(proc: subprocess.Popen[str], seconds: float = 90) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out, err


def test_the_follower_keeps_following_through_a_corrupt_checkpoint(chain: tuple[Path, Path]) -> None:
    target, state = chain
    gate = target.parent / "go"
    proc = launch(_gated_pipeline(target, gate), target, state)
    try:
        rid = retry_until(lambda: run_id(state), 20, what="run id")
        retry_until(lambda: identity(state, "orchestrator-impl"), 30, what="the agent to start")
        path = state / "runs" / rid / "checkpoint.json"
        path.write_text('{"schema": 1, "status": "running"}')  # no run_id, no nodes: corrupt
        retry_until(lambda: any(".corrupt-" in p.name for p in path.parent.iterdir()), 20,
                    what="the follower to move the corrupt checkpoint aside")
        assert proc.poll() is None, "the launcher gave up on a corrupt checkpoint"
        gate.touch()
        code, out, err = _finish(proc)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
    assert code == 0, out + err
    assert "corrupt state file" in out and "following on" in out
    assert f"run {rid} succeeded" in out
    assert checkpoint(state)["status"] == "succeeded"


def _state_files(state: Path) -> dict[str, bytes]:
    """Every state file but lock files (taking a lock is not a change of state)."""
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def test_a_resume_refused_for_a_taken_session_name_changes_no_state(
        chain: tuple[Path, Path], tmux_socket: str) -> None:
    target, state = chain
    gate = target.parent / "go"
    proc = launch(_gated_pipeline(target, gate), target, state, detach=True)
    code, out, err = _finish(proc)
    assert code == 0, out + err
    rid = run_id(state)
    assert rid is not None
    stopped = subprocess.run([*ATTRACTOR, "stop", rid, "--state-dir", str(state)], capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr
    name = f"att-{rid}-guardian-main"
    subprocess.run(["tmux", "-L", tmux_socket, "new-session", "-d", "-s", name, "sleep 600"], check=True)
    before = _state_files(state)
    resumed = subprocess.run([*ATTRACTOR, "run", "--resume", rid, "--target-dir", str(target), "--state-dir",
                              str(state), "--agent", "scripted"], capture_output=True, text=True, timeout=60)
    assert resumed.returncode != 0
    assert name in resumed.stderr and "not created by attractor" in resumed.stderr, resumed.stderr
    assert checkpoint(state)["status"] == "stopped"
    assert _state_files(state) == before


def test_a_concurrent_second_launch_names_the_live_guardian(chain: tuple[Path, Path]) -> None:
    target, state = chain
    gate = target.parent / "go"
    pipe = _gated_pipeline(target, gate)
    try:
        procs = [launch(pipe, target, state, detach=True) for _ in range(2)]
        results = [_finish(p) for p in procs]
    finally:
        gate.touch()
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    winner = next(out for code, out, _ in results if code == 0)
    loser = next(err for code, _, err in results if code == 1)
    rid = run_id(state)
    ident = identity(state, f"guardian-{rid}")
    assert ident is not None and f"run {rid}: guardian pid {ident['pid']}" in winner
    assert f"held by pid {ident['pid']}" in loser and str(ident["tmux_session"]) in loser, loser
    runs = [p.name for p in (state / "runs").iterdir()]
    assert runs == [rid], runs  # the refused launch wrote no run of its own
    assert checkpoint(state)["status"] == "running"


def test_a_target_dir_that_is_no_repository_names_the_option_run_has(tmp_path: Path, state_dir: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = subprocess.run([*ATTRACTOR, "run", str(REPO_ROOT / "pipelines" / "demo.dot"), "--target-dir", str(plain),
                             "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--target-dir" in result.stderr and "--repo" not in result.stderr, result.stderr
    assert not state_dir.exists()


BARE_PYTHON = "/usr/bin/python3"


def _bare_python_lacks(module: str) -> bool:
    if not Path(BARE_PYTHON).exists():
        return False
    found = subprocess.run([BARE_PYTHON, "-c", f"import {module}"], capture_output=True)
    return found.returncode != 0


@pytest.mark.skipif(not _bare_python_lacks("git"), reason=f"needs a {BARE_PYTHON} without attractor's dependencies")
@pytest.mark.parametrize("script", ["launch_guardian.py", "cli.py"])
def test_shims_under_a_bare_python_name_the_missing_package(tmp_path: Path, state_dir: Path, script: str) -> None:
    target = make_repo(tmp_path / "repo")
    args = [str(REPO_ROOT / "pipelines" / "demo.dot"), "--target-dir", str(target), "--state-dir", str(state_dir)]
    if script == "cli.py":
        args = ["run", *args]
    result = subprocess.run([BARE_PYTHON, str(REPO_ROOT / "scripts" / script), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: ") and "pip install" in line, line
    assert any(package in line for package in ("PyYAML", "pydot", "watchdog")), line
