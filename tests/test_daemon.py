"""The user's daemon as a user meets it: `attractor daemon …` and `attractor rpc …` as real
processes, its real socket and lock under the test's HOME, real runs in tmux that it supervises,
and real SIGKILLs of the guardian and of the daemon itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attractor import procs
from attractor.control import client, daemon
from attractor.states import NodeState
from attractor.store import checkpoint as cp_store
from attractor.store import identities, projects
from attractor.store.statedir import StateDir
from tests.chain_helpers import run_detached
from tests.helpers import make_repo, retry_until, run_cli


def _rpc(method: str, params: dict[str, Any] | None = None) -> Any:
    result = run_cli(["rpc", method, json.dumps(params or {})])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _holder_pid() -> int | None:
    holder = client.lock_holder()
    return holder.get("pid") if holder else None


@pytest.fixture
def running_daemon() -> Iterator[int]:
    started = run_cli(["daemon", "start"])
    assert started.returncode == 0, started.stderr
    pid = _holder_pid()
    assert pid is not None
    yield pid
    _stop_everything()


def _stop_everything() -> None:
    run_cli(["daemon", "stop", "--runs"], timeout=60)
    holder = client.lock_holder()
    if holder:
        procs.signal_if_same(holder.get("pid"), holder.get("pid_start"), signal.SIGKILL)


def test_status_without_a_daemon_says_so_and_succeeds() -> None:
    result = run_cli(["daemon", "status", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"running": False, "socket": str(client.socket_path())}
    human = run_cli(["daemon", "status"])
    assert human.returncode == 0 and "no daemon is running" in human.stdout


def test_one_daemon_per_user_on_a_private_socket(running_daemon: int) -> None:
    again = run_cli(["daemon", "start"])
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and f"pid {running_daemon}" in again.stderr
    sock = client.socket_path()
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    for log in ("daemon.log", "daemon.err"):
        assert stat.S_IMODE((client.log_dir() / log).stat().st_mode) == 0o600, log
    status = json.loads(run_cli(["daemon", "status", "--json"]).stdout)
    assert status["running"] is True and status["pid"] == running_daemon and status["socket"] == str(sock)
    stopped = run_cli(["daemon", "stop"])
    assert stopped.returncode == 0 and f"pid {running_daemon} stopped" in stopped.stdout
    retry_until(lambda: not procs.pid_alive(running_daemon), 10, what="the daemon to exit")
    assert not sock.exists() and client.lock_holder() is None


def test_a_killed_daemon_leaves_nothing_that_stops_the_next(running_daemon: int) -> None:
    os.kill(running_daemon, signal.SIGKILL)
    retry_until(lambda: client.lock_holder() is None, 10, what="the kernel to release the daemon's lock")
    assert client.socket_path().exists()  # left behind by the killed daemon: accepts nothing now
    assert json.loads(run_cli(["daemon", "status", "--json"]).stdout)["running"] is False
    again = run_cli(["daemon", "start"])
    assert again.returncode == 0, again.stderr
    assert _rpc("status")["pid"] != running_daemon


def test_a_stale_socket_file_is_removed_and_a_live_one_refused(tmp_path: Path) -> None:
    path = client.socket_path()
    daemon.ensure_private(path.parent)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on
    try:
        started = run_cli(["daemon", "start"])
        assert started.returncode == 0, started.stderr
        assert _rpc("status")["running"] is True
    finally:
        _stop_everything()
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(str(path))
    squatter.listen(1)  # something answers there: never removed
    try:
        refused = run_cli(["daemon", "start", "--foreground"])
        assert refused.returncode == 1 and "already running" in refused.stderr, refused.stderr
        assert path.exists()
    finally:
        squatter.close()
        path.unlink()


def test_a_runtime_directory_others_may_write_is_refused() -> None:
    directory = client.runtime_dir()
    directory.mkdir(parents=True)
    directory.chmod(0o777)
    result = run_cli(["daemon", "start", "--foreground"])
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and str(directory) in line and "chmod 700" in line, line
    assert not client.socket_path().exists()


def test_projects_are_files_the_user_can_read(running_daemon: int, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "app")
    added = _rpc("projects.add", {"name": "app", "path": str(repo / "."), "agent": "scripted"})
    assert added["path"] == str(repo) and added["agent"] == "scripted"
    assert [p["name"] for p in _rpc("projects.list")] == ["app"]
    again = run_cli(["rpc", "projects.add", json.dumps({"name": "app", "path": str(repo)})])
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = run_cli(["rpc", "projects.add", json.dumps({"name": "../x", "path": str(repo)})])
    assert bad.returncode == 2 and "project name" in bad.stderr
    not_repo = run_cli(["rpc", "projects.add", json.dumps({"name": "y", "path": str(tmp_path)})])
    assert not_repo.returncode == 2 and "git checkout" in not_repo.stderr
    broken = projects.projects_dir() / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert [p["name"] for p in _rpc("projects.list")] == ["app"]  # a bad file is skipped, not fatal
    assert broken.exists()  # and left for the user to fix
    assert _rpc("projects.remove", {"name": "app"})["name"] == "app"
    assert _rpc("projects.list") == []
    not_json = run_cli(["rpc", "projects.list", "{nope"])
    assert not_json.returncode == 2 and "not JSON" in not_json.stderr


_SLOW = """digraph slow {{
  start [shape=Mdiamond]
  a [shape=box, prompt="a", script="{wait}
write a.txt a
commit add a
report a done"]
  b [shape=box, prompt="b", script="{wait}
write b.txt b
commit add b
report b done"]
  exit [shape=Msquare]
  start -> a -> exit
  start -> b -> exit
}}
"""


def _slow(secs: int, release: Path | None = None) -> str:
    """Two nodes whose agents wait `secs` seconds, or until the file `release` appears."""
    wait = f"sleep {secs}" if release is None else \
        f"run for i in $(seq {secs * 10}); do [ -e {release} ] && break; sleep 0.1; done"
    return _SLOW.format(wait=wait)


def _guardian(state: StateDir, run_id: str) -> identities.Identity | None:
    ident = identities.find(state, "guardian", run_id)
    return ident if ident is not None and ident.process_alive else None


def _kill_guardian_and_see_it_back(state: StateDir, run_id: str) -> int:
    """SIGKILL the live guardian; the pid of the one the daemon starts in its place."""
    before = retry_until(lambda: _guardian(state, run_id), 30, what="a live guardian")
    assert before.pid is not None
    os.kill(before.pid, signal.SIGKILL)
    after = retry_until(lambda: (g := _guardian(state, run_id)) is not None and g.pid != before.pid and g, 60,
                        what="the daemon to start the guardian again")
    assert after and after.pid is not None
    return after.pid


def test_the_daemon_keeps_a_detached_run_alive_through_guardian_and_daemon_kills(
        running_daemon: int, tmp_path: Path, state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    pipeline = tmp_path / "slow.dot"
    release = tmp_path / "release"
    pipeline.write_text(_slow(20, release))
    state, run_id, said = run_detached(pipeline, repo, state_dir)
    assert "the daemon supervises it (project app)" in said
    pids = {_kill_guardian_and_see_it_back(state, run_id) for _ in range(3)}
    # the daemon itself dies; a new one adopts the live guardian as it is, then supervises it
    os.kill(running_daemon, signal.SIGKILL)
    guardian = retry_until(lambda: _guardian(state, run_id), 30)
    assert run_cli(["daemon", "start"]).returncode == 0
    runs = retry_until(lambda: [r for r in _rpc("runs.list") if r["supervision"] == "supervising"], 30,
                       what="the new daemon to adopt the run")
    assert runs[0]["run_id"] == run_id and runs[0]["guardian_pid"] == guardian.pid
    pids.add(_kill_guardian_and_see_it_back(state, run_id))
    assert len(pids) == 4  # four guardians started by the daemons, each a new process
    release.touch()  # the agents may finish now
    retry_until(lambda: cp_store.read_checkpoint(state, run_id).status != "running", 120, interval=0.2,
                what="the run to finish")
    cp = cp_store.read_checkpoint(state, run_id)
    assert cp.status == "succeeded", cp.reason
    subjects = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "main"], capture_output=True,
                              text=True, check=True).stdout.splitlines()
    assert subjects.count("add a") == 1 and subjects.count("add b") == 1, subjects


_CHAIN = """digraph chain {{
  start [shape=Mdiamond]
  a [shape=box, prompt="a", script="sleep {secs}
write a.txt a
commit add a
report a done"]
  b [shape=box, prompt="b", script="write b.txt b
commit add b
report b done"]
  exit [shape=Msquare]
  start -> a -> b -> exit
}}
"""


def _stays(predicate: Any, seconds: float) -> bool:
    """Whether `predicate` holds at every look for `seconds` (the window a property must hold)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.1)
    return True


def _start_through_the_daemon(tmp_path: Path, state_dir: Path, secs: int) -> tuple[Path, dict[str, Any]]:
    """Register project `app` (a repo with the chain pipeline) and start a run with `run.start`."""
    repo = make_repo(tmp_path / "app")
    (repo / "chain.dot").write_text(_CHAIN.format(secs=secs))
    _rpc("projects.add", {"name": "app", "path": str(repo), "state_dir": str(state_dir),
                          "pipeline": "chain.dot", "agent": "scripted"})
    return repo, _rpc("run.start", {"project": "app"})


def test_a_paused_run_starts_no_new_agent_until_unpaused(running_daemon: int, tmp_path: Path,
                                                         state_dir: Path) -> None:
    _, started = _start_through_the_daemon(tmp_path, state_dir, secs=3)
    run_id = started["run_id"]
    assert started["exit_code"] == 0 and run_id, started
    state = StateDir(state_dir)
    paused = run_cli(["pause", run_id, "--state-dir", str(state_dir), "--reason", "lunch"])
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    status = run_cli(["status", "--run", run_id, "--state-dir", str(state_dir)])
    assert "PAUSED by" in status.stdout and "lunch" in status.stdout
    retry_until(lambda: cp_store.read_checkpoint(state, run_id).nodes["a"].state is NodeState.MERGED, 60, interval=0.1,
                what="node a, already running when paused, to go on and merge")
    # the guardian schedules after every change and at least every 2 s: b would have started
    assert _stays(lambda: cp_store.read_checkpoint(state, run_id).nodes["b"].state is NodeState.PENDING
                  and identities.find(state, "runner", "b") is None, 5)
    unpaused = _rpc("run.unpause", {"project": "app", "run_id": run_id, "by": "tester"})
    assert unpaused["changed"] is True
    retry_until(lambda: cp_store.read_checkpoint(state, run_id).status != "running", 60, interval=0.2)
    assert cp_store.read_checkpoint(state, run_id).status == "succeeded"
    kinds = [(e["event"], e.get("by")) for e in cp_store.read_events(state, run_id)
             if e["event"] in ("run_paused", "run_unpaused")]
    assert kinds == [("run_paused", os.environ.get("USER") or "user"), ("run_unpaused", "tester")]


def _subscribe(after: int, run_id: str, until_event: str | None, count: int | None = None) -> list[dict[str, Any]]:
    """The events the daemon streams from `after` on, until one of kind `until_event` (or `count`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(client.socket_path()))
    request = {"jsonrpc": "2.0", "method": "events.subscribe", "params": {"project": "app", "run_id": run_id,
                                                                          "after": after}, "id": 1}
    sock.sendall(json.dumps(request).encode() + b"\n")
    got: list[dict[str, Any]] = []
    buffer = b""
    answered = False
    with sock:
        while True:
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                assert chunk, "the daemon closed the stream"
                buffer += chunk
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            if not answered:
                assert message["result"]["run_id"] == run_id, message
                answered = True
                continue
            assert message["method"] == "event"
            got.append(message["params"])
            if message["params"]["event"]["event"] == until_event or (count is not None and len(got) == count):
                return got


def test_events_stream_live_and_a_reconnect_resumes_after_its_last_id(running_daemon: int, tmp_path: Path,
                                                                      state_dir: Path) -> None:
    _, started = _start_through_the_daemon(tmp_path, state_dir, secs=1)
    run_id = started["run_id"]
    first = _subscribe(0, run_id, "run_finished")
    ids = [e["id"] for e in first]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) > 5
    assert [e["event"] for e in first] == cp_store.read_events(StateDir(state_dir), run_id)[: len(first)]
    middle = ids[len(ids) // 2]
    again = _subscribe(middle, run_id, "run_finished")
    assert [e["id"] for e in again] == ids[middle:]  # no gap, no repeat
    assert [e["event"] for e in again] == [e["event"] for e in first[middle:]]
    bad = run_cli(["rpc", "events.subscribe", json.dumps({"project": "app", "after": -1})])
    assert bad.returncode == 2 and "after" in bad.stderr


def _without_clocks(report: dict[str, Any]) -> dict[str, Any]:
    for agent in report["agents"]:
        agent.pop("heartbeat_age")
    return report


def test_status_comes_from_the_daemon_when_it_runs_and_says_the_same(tmp_path: Path, state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    pipeline = tmp_path / "chain.dot"
    pipeline.write_text(_CHAIN.format(secs=0))
    ran = run_cli(["run", str(pipeline), "--target-dir", str(repo), "--agent", "scripted", "--state-dir",
                   str(state_dir)], timeout=120)
    assert ran.returncode == 0, ran.stderr
    local = run_cli(["status", "--json", "--state-dir", str(state_dir)])
    assert local.returncode == 0, local.stderr
    logs = sorted((state_dir / "logs").glob("*.log"))
    assert logs and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in logs), logs  # private, like all state
    started = run_cli(["--log-level", "DEBUG", "daemon", "start"])
    assert started.returncode == 0, started.stderr
    try:
        served = run_cli(["status", "--json", "--state-dir", str(state_dir)])
        assert served.returncode == 0, served.stderr
        assert _without_clocks(json.loads(served.stdout)) == _without_clocks(json.loads(local.stdout))
        assert "rpc run.status" in (client.log_dir() / "daemon.log").read_text()
        missing = run_cli(["status", "--run", "nope", "--state-dir", str(state_dir)])
        alone = run_cli(["status", "--run", "nope", "--state-dir", str(state_dir), "--no-daemon"])
        assert (missing.returncode, missing.stderr) == (alone.returncode, alone.stderr) and missing.returncode == 2
        human = run_cli(["status", "--state-dir", str(state_dir)])
        assert human.returncode == 0 and "succeeded" in human.stdout
    finally:
        _stop_everything()


def test_run_with_daemon_starts_one_and_hands_it_the_run(tmp_path: Path, state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    pipeline = tmp_path / "chain.dot"
    pipeline.write_text(_CHAIN.format(secs=1))
    try:
        ran = run_cli(["run", str(pipeline), "--target-dir", str(repo), "--agent", "scripted", "--daemon",
                       "--state-dir", str(state_dir)], timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert "daemon pid" in ran.stdout and "the daemon supervises it (project app)" in ran.stdout, ran.stdout
        state = StateDir(state_dir)
        run_id = cp_store.latest_run(state)
        assert run_id is not None
        retry_until(lambda: cp_store.read_checkpoint(state, run_id).status != "running", 60, interval=0.2)
        assert cp_store.read_checkpoint(state, run_id).status == "succeeded"
        again = run_cli(["run", str(pipeline), "--target-dir", str(repo), "--agent", "scripted", "--daemon",
                         "--state-dir", str(state_dir)], timeout=120)
        assert again.returncode == 0 and "daemon pid" not in again.stdout, again.stdout  # one was running
    finally:
        _stop_everything()


def test_the_queue_listing_comes_from_the_daemon_and_says_the_same(tmp_path: Path, state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    subprocess.run(["git", "-C", str(repo), "branch", "attractor/r1/work"], check=True)
    queued = run_cli(["merge-queue", "enqueue", "attractor/r1/work", "--owner", "runner-work", "--repo", str(repo),
                      "--state-dir", str(state_dir)])
    assert queued.returncode == 0, queued.stderr
    args = ["merge-queue", "list", "--repo", str(repo), "--state-dir", str(state_dir)]
    local_json, local_table = run_cli([*args, "--json"]), run_cli(args)
    assert run_cli(["--log-level", "DEBUG", "daemon", "start"]).returncode == 0
    try:
        served_json, served_table = run_cli([*args, "--json"]), run_cli(args)
        assert json.loads(served_json.stdout) == json.loads(local_json.stdout)
        assert served_table.stdout.splitlines()[0] == local_table.stdout.splitlines()[0]
        assert [line.split()[:4] for line in served_table.stdout.splitlines()] == \
            [line.split()[:4] for line in local_table.stdout.splitlines()]
        assert "rpc queue.list" in (client.log_dir() / "daemon.log").read_text()
    finally:
        _stop_everything()


def test_a_run_whose_guardian_died_while_no_daemon_ran_is_resumed_when_one_starts(
        running_daemon: int, tmp_path: Path, state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    _rpc("projects.add", {"name": "app", "path": str(repo), "state_dir": str(state_dir)})
    assert run_cli(["daemon", "stop"]).returncode == 0
    pipeline = tmp_path / "slow.dot"
    pipeline.write_text(_slow(4))
    state, run_id, said = run_detached(pipeline, repo, state_dir)
    assert "daemon supervises" not in said, said
    dead = retry_until(lambda: _guardian(state, run_id), 30)
    assert dead.pid is not None
    os.kill(dead.pid, signal.SIGKILL)  # nobody supervises: it stays dead
    retry_until(lambda: not procs.pid_alive(dead.pid), 10)
    assert run_cli(["daemon", "start"]).returncode == 0
    back = retry_until(lambda: _guardian(state, run_id), 30, what="the new daemon to resume the run")
    assert back.pid != dead.pid
    retry_until(lambda: cp_store.read_checkpoint(state, run_id).status != "running", 90, interval=0.2)
    assert cp_store.read_checkpoint(state, run_id).status == "succeeded"


def test_a_launcher_stopped_with_ctrl_z_supervises_nothing_so_the_daemon_does(running_daemon: int, tmp_path: Path,
                                                                               state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    _rpc("projects.add", {"name": "app", "path": str(repo), "state_dir": str(state_dir)})
    pipeline = tmp_path / "slow.dot"
    pipeline.write_text(_slow(30))
    follower = subprocess.Popen([sys.executable, "-m", "attractor", "run", str(pipeline), "--target-dir", str(repo),
                                 "--agent", "scripted", "--state-dir", str(state_dir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = StateDir(state_dir)
        run_id = retry_until(lambda: cp_store.latest_run(state) if (state_dir / "runs").is_dir() else None, 30)
        guardian = retry_until(lambda: _guardian(state, run_id), 60)
        retry_until(lambda: [r for r in _rpc("runs.list") if r["supervision"] == "followed-elsewhere"], 30,
                    what="the daemon to leave the run to its launcher")
        os.kill(follower.pid, signal.SIGSTOP)  # Ctrl-Z in the user's terminal
        assert guardian.pid is not None
        os.kill(guardian.pid, signal.SIGKILL)
        back = retry_until(lambda: (g := _guardian(state, run_id)) is not None and g.pid != guardian.pid and g, 60,
                           what="the daemon to take over from the silent launcher")
        assert back and back.pid != guardian.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(follower.pid, signal.SIGCONT)
        follower.kill()
        follower.wait(timeout=30)


def test_a_daemon_and_an_attached_launcher_start_a_dead_guardian_once(running_daemon: int, tmp_path: Path,
                                                                      state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    pipeline = tmp_path / "slow.dot"
    release = tmp_path / "release"
    pipeline.write_text(_slow(20, release))
    state, run_id, _ = run_detached(pipeline, repo, state_dir)
    attached = subprocess.Popen([sys.executable, "-m", "attractor", "run", "--attach", "--target-dir", str(repo),
                                 "--state-dir", str(state_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        retry_until(lambda: (i := identities.find(state, "launcher", run_id)) is not None and i.pid == attached.pid,
                    30, what="the attached launcher to follow")
        first = _kill_guardian_and_see_it_back(state, run_id)
        release.touch()
        retry_until(lambda: cp_store.read_checkpoint(state, run_id).status != "running", 90, interval=0.2)
        starts = [e for e in cp_store.read_events(state, run_id) if e["event"] == "guardian_started"]
        assert len(starts) == 2, starts  # the first guardian and one replacement, not two
        assert cp_store.read_checkpoint(state, run_id).status == "succeeded"
        out, _ = attached.communicate(timeout=60)
        assert "duplicate session" not in out and attached.returncode == 0, out
        assert first is not None
    finally:
        attached.kill()
        attached.wait(timeout=30)


def test_a_second_daemon_is_refused_whatever_runtime_directory_its_shell_has(running_daemon: int,
                                                                              tmp_path: Path) -> None:
    elsewhere = tmp_path / "run"
    elsewhere.mkdir(mode=0o700)
    second = run_cli(["daemon", "start", "--foreground"], env={**os.environ, "XDG_RUNTIME_DIR": str(elsewhere)})
    assert second.returncode == 1 and f"pid {running_daemon}" in second.stderr, second.stderr
    assert not (elsewhere / "attractor" / "daemon.sock").exists()


def test_a_pause_ends_with_its_run_and_a_resume_says_when_one_is_left(tmp_path: Path, state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    pipeline = tmp_path / "chain.dot"
    pipeline.write_text(_CHAIN.format(secs=20))
    state, run_id, _ = run_detached(pipeline, repo, state_dir)
    assert run_cli(["pause", run_id, "--state-dir", str(state_dir)]).returncode == 0
    stopped = run_cli(["stop", run_id, "--state-dir", str(state_dir)], timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    retry_until(lambda: cp_store.paused(state, run_id) is None, 30, what="the pause to end with the run")
    assert [e.get("by") for e in cp_store.read_events(state, run_id) if e["event"] == "run_unpaused"] == \
        ["the run's end"]
    # a pause that raced the run's end is left behind: the resume says so, on stderr
    (cp_store.pause_path(state, run_id)).write_text(json.dumps({"by": "someone", "reason": "", "at": "then"}))
    resumed = run_cli(["run", "--resume", run_id, "--target-dir", str(repo), "--state-dir", str(state_dir),
                       "--detach"], timeout=120)
    try:
        assert resumed.returncode == 0, resumed.stderr
        assert f"run {run_id} is paused (by someone" in resumed.stderr
        assert f"attractor unpause {run_id}" in resumed.stderr
    finally:
        run_cli(["stop", run_id, "--state-dir", str(state_dir)], timeout=60)
