"""Layer 0, the launcher: what it does when the run's state is damaged under it, and launches it
refuses (a live run, a taken session name) without changing any state."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.chain_helpers import checkpoint, codergen, identity, launch, module_steps, pipeline_file, run_id, tool
from tests.helpers import retry_until


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
