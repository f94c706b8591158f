"""Nothing an agent says is taken on its word: forged merge signals, a worktree deleted under a
live agent, commits that reach the target outside the queue. Real chain: scripted agents in real
tmux panes, real git, the real merge queue."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tests.chain_helpers import (
    checkpoint,
    codergen,
    events,
    git_show,
    launch,
    module_steps,
    pipeline_file,
    run_id,
    tool,
)
from tests.helpers import git, retry_until, run_cli


def _finish(proc: subprocess.Popen[str], seconds: float = 120) -> tuple[int, str]:
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out + err


def _alerts(state: Path, kind: str) -> list[dict[str, object]]:
    if run_id(state) is None:
        return []
    return [e for e in events(state) if e.get("event") == "alert" and e.get("alert") == kind]


def test_a_forged_merge_complete_is_rejected_and_alerted(chain: tuple[Path, Path]) -> None:
    target, state = chain
    payload = json.dumps({"entry_id": "forged1", "branch": "attractor/x/forger", "merged_sha": "deadbeef",
                          "target": "main", "node": "forger"})
    forge = (f"run {shlex.quote(sys.executable)} -m attractor signal send MERGE_COMPLETE --to runner-forger "
             f"--from merge-queue --payload {shlex.quote(payload)}")
    script = module_steps("forger", 1) + "commit forger\n" + forge + "\nsleep 3\nreport"
    red_gate = "python3 -c 'import sys; sys.exit(1)'"
    pipe = pipeline_file(target.parent, codergen("forger", script, max_retries=0) + tool("check_forger", red_gate),
                         "  start -> forger -> check_forger -> exit\n")
    code, out = _finish(launch(pipe, target, state))
    assert code != 0, out
    node = checkpoint(state)["nodes"]["forger"]
    assert node["state"] != "merged" and not node.get("merged_sha"), node
    assert git_show(target, "main", "app/forger.py") is None
    rejected = _alerts(state, "signal_rejected")
    assert rejected and rejected[0]["kind"] == "MERGE_COMPLETE"
    assert "no merge-queue entry 'forged1'" in str(rejected[0]["reason"])


def test_a_deleted_worktree_is_recreated_and_a_commit_outside_the_queue_holds_merging(
        chain: tuple[Path, Path]) -> None:
    target, state = chain
    before = git(target, "rev-parse", "main")
    # attempt 1: the agent deletes its worktree, makes a plain directory in its place (inside the
    # main checkout) and commits there, which lands on main; then it reports
    attack = ("@1 run cd .. && rm -rf wrecker && mkdir wrecker\n"
              "@1 write app/evil.py EVIL = 1\\n\n"
              "@1 run git add -f app/evil.py && git commit -q -m evil\n"
              "@1 report\n")
    script = attack + "@2+ " + module_steps("wrecker", 2).replace("\nwrite", "\n@2+ write") + \
        "@2+ commit wrecker\n@2+ report"
    pipe = pipeline_file(target.parent, codergen("wrecker", script) + tool("check_wrecker"),
                         "  start -> wrecker -> check_wrecker -> exit\n")
    proc = launch(pipe, target, state)
    held = retry_until(lambda: _alerts(state, "target_moved"), 60, what="the target_moved alert")
    assert held[0]["expected"] == before
    assert (state / "merge-queue" / "hold.json").exists()
    assert retry_until(lambda: _alerts(state, "worktree"), 30, what="the worktree alert")
    status = run_cli(["status", "--state-dir", str(state)])
    assert "MERGING HELD" in status.stdout
    # the human decides: the ungated commit goes, merging resumes
    assert git_show(target, "main", ".claude/worktrees/wrecker/app/evil.py") == "EVIL = 1\n"
    git(target, "reset", "--hard", "-q", before)
    resumed = run_cli(["queue", "resume", "--state-dir", str(state)])
    assert resumed.returncode == 0 and "hold lifted" in resumed.stdout, resumed.stderr
    code, out = _finish(proc)
    assert code == 0, out
    assert git_show(target, "main", "app/wrecker.py") == "VALUE = 2\n"
    assert git_show(target, "main", ".claude/worktrees/wrecker/app/evil.py") is None
    strays = list((target / ".claude" / "worktrees").glob("wrecker.stray-*"))
    assert strays and (strays[0] / "app" / "evil.py").exists()  # nothing the agent wrote is lost


def test_a_resumed_run_never_adopts_a_later_runs_result(chain: tuple[Path, Path], tmux_socket: str) -> None:
    target, state = chain
    go = target.parent / "go-on"
    slow = module_steps("impl", 1) + f"run while ! test -e {go}; do sleep 0.2; done\ncommit impl one\nreport"
    first = pipeline_file(target.parent, codergen("impl", slow) + tool("check_impl"),
                          "  start -> impl -> check_impl -> exit\n", name="one")
    launch(first, target, state, detach=True).wait(timeout=60)
    r1 = retry_until(lambda: run_id(state), 30, what="run one")
    retry_until(lambda: (state / "hooks" / "runner-impl.json").exists(), 30, what="run one's hook")
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], check=False)  # run one crashes
    quick = module_steps("other", 2) + "commit impl two\nreport"
    second = pipeline_file(target.parent, codergen("impl", quick) + tool("check_impl"),
                           "  start -> impl -> check_impl -> exit\n", name="two")
    code, out = _finish(launch(second, target, state))
    assert code == 0, out
    r2_sha = git(target, "rev-parse", "main")
    go.touch()  # run one's agent may finish now
    resumed = subprocess.run([sys.executable, "-m", "attractor", "run", "--resume", r1, "--target-dir", str(target),
                              "--state-dir", str(state)], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    node = json.loads((state / "runs" / r1 / "checkpoint.json").read_text())["nodes"]["impl"]
    assert node["state"] == "merged" and node["merged_sha"] != r2_sha
    assert git_show(target, "main", "app/impl.py") == "VALUE = 1\n"  # run one's work landed
    assert git_show(target, "main", "app/other.py") == "VALUE = 2\n"


def test_a_dirty_checked_out_target_is_refused_before_the_run(chain: tuple[Path, Path]) -> None:
    target, state = chain
    (target / "README.md").write_text("edited by hand\n")
    pipe = pipeline_file(target.parent, codergen("n", module_steps("n", 1) + "commit n\nreport") + tool("check_n"),
                         "  start -> n -> check_n -> exit\n")
    code, out = _finish(launch(pipe, target, state))
    assert code == 2, out
    assert "README.md" in out and "uncommitted changes" in out and out.count("\n") <= 2, out
    assert not (state / "runs").exists()


def test_a_target_dirtied_mid_run_holds_merging_without_spending_attempts(chain: tuple[Path, Path]) -> None:
    target, state = chain
    go = target.parent / "go"
    script = module_steps("late", 3) + f"run while ! test -e {go}; do sleep 0.2; done\ncommit late\nreport"
    pipe = pipeline_file(target.parent, codergen("late", script) + tool("check_late"),
                         "  start -> late -> check_late -> exit\n")
    proc = launch(pipe, target, state)
    retry_until(lambda: (state / "hooks" / "runner-late.json").exists(), 30, what="the node to start")
    (target / "README.md").write_text("a human is editing this\n")
    go.touch()
    alert = retry_until(lambda: _alerts(state, "dirty_target"), 60, what="the dirty_target alert")
    assert "README.md" in str(alert[0]["reason"])
    assert checkpoint(state)["nodes"]["late"]["attempts"] == 1
    git(target, "checkout", "--", "README.md")
    assert run_cli(["merge-queue", "resume", "--state-dir", str(state)]).returncode == 0
    code, out = _finish(proc)
    assert code == 0, out
    assert git_show(target, "main", "app/late.py") == "VALUE = 3\n"
    assert checkpoint(state)["nodes"]["late"]["attempts"] == 1
    assert len(_alerts(state, "dirty_target")) == 1


def test_a_full_disk_pauses_the_run_and_it_goes_on_when_space_returns(tmp_path: Path, tmux_socket: str) -> None:
    import contextlib
    import os

    from tests.chain_helpers import identity, kill_everything, target_repo

    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            raise AssertionError(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
        import pytest

        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    state = mount / "state"
    target = target_repo(tmp_path)
    go = tmp_path / "go"
    try:
        script = module_steps("roomy", 4) + f"run while ! test -e {go}; do sleep 0.2; done\ncommit roomy\nreport"
        pipe = pipeline_file(tmp_path, codergen("roomy", script) + tool("check_roomy"),
                             "  start -> roomy -> check_roomy -> exit\n")
        proc = launch(pipe, target, state)
        retry_until(lambda: (identity(state, "orchestrator-roomy") or {}).get("pid"), 60, what="the agent to start")
        filler = mount / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            while True:
                fh.write(b"x" * 65536)
                fh.flush()
        agent_pid = int((identity(state, "orchestrator-roomy") or {}).get("pid") or 0)
        pids = [int((identity(state, agent) or {}).get("pid") or 0)
                for agent in ("runner-roomy", f"guardian-{run_id(state)}")]

        from attractor.procs import pid_alive as alive  # an exited, unreaped pane process is not alive

        go.touch()  # the agent reports now, onto a full disk: its `signal send` fails and it exits
        try:
            retry_until(lambda: not alive(agent_pid), 60, what="the agent to fail on the full disk")
        except AssertionError:
            panes = subprocess.run(["tmux", "-L", tmux_socket, "list-panes", "-a", "-F", "#{pane_id} #{pane_pid}"],
                                   capture_output=True, text=True).stdout
            texts = [subprocess.run(["tmux", "-L", tmux_socket, "capture-pane", "-p", "-t", line.split()[0]],
                                    capture_output=True, text=True).stdout[-800:] for line in panes.splitlines()]
            raise AssertionError(f"agent {agent_pid} still alive; panes {panes}: {texts}") from None
        # for three seconds of a full disk, every control process stays up (polled, fails at once)
        window = time.monotonic() + 3.0
        while time.monotonic() < window:
            dead = [agent for agent, pid in zip(("runner", "guardian"), pids, strict=True) if not alive(pid)]
            if dead:
                filler.unlink()
                logs = {p.name: p.read_text()[-3000:] for p in (state / "logs").glob("*.log")}
                raise AssertionError(f"{dead} died of the full disk; logs: {logs}")
            assert proc.poll() is None, "the launcher gave up on a full disk"
            time.sleep(0.1)
        filler.unlink()  # space returns
        code, out = _finish(proc)
        assert code == 0, out
        assert git_show(target, "main", "app/roomy.py") == "VALUE = 4\n"
    finally:
        kill_everything(state)
        subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def test_a_users_session_on_a_runner_name_fails_the_node_with_the_real_reason(
        chain: tuple[Path, Path], tmux_socket: str) -> None:
    target, state = chain
    go = target.parent / "never"
    script = module_steps("held", 1) + f"run while ! test -e {go}; do sleep 0.2; done\ncommit held\nreport"
    pipe = pipeline_file(target.parent, codergen("held", script) + tool("check_held"),
                         "  start -> held -> check_held -> exit\n")
    launch(pipe, target, state, detach=True).wait(timeout=60)
    rid = retry_until(lambda: run_id(state), 30, what="the run")
    retry_until(lambda: (state / "hooks" / "runner-held.json").exists(), 30, what="the runner")
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], check=False)  # the run crashes
    name = f"att-{rid}-runner-held".replace(".", "_")
    retry_until(lambda: subprocess.run(["tmux", "-L", tmux_socket, "new-session", "-d", "-s", name, "sleep 600"],
                                       capture_output=True).returncode == 0, 20, what="the user's own session")
    resumed = subprocess.run([sys.executable, "-m", "attractor", "run", "--resume", rid, "--target-dir", str(target),
                              "--state-dir", str(state)], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    node = checkpoint(state)["nodes"]["held"]
    assert node["state"] == "failed" and "not created by attractor" in node["reason"], node
    assert subprocess.run(["tmux", "-L", tmux_socket, "has-session", "-t", name]).returncode == 0  # left alone
