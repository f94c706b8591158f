"""The identity registry: library, `attractor identity …` in-process and as real processes, and
the `scripts/identity_registry.py` shim."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor import procs
from attractor.cli import main
from attractor.errors import (
    BadInputError,
    CorruptStateError,
    IdentityTakenError,
    InvalidNameError,
    NotFoundError,
    TransitionError,
)
from attractor.states import IdentityStatus as S
from attractor.store import identities
from attractor.store.statedir import StateDir
from tests.helpers import REPO_ROOT, retry_until, run_cli, run_script


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` with its bytes and mode: 'nothing changed on disk' is equality."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- library


def test_create_writes_a_private_record(state_dir: Path) -> None:
    state = StateDir(state_dir)  # not created: the first record creates it, private
    record = identities.create_identity(state, "runner", "impl_auth", session_id="s-1",
                                        worktree="/w/impl auth", pid=dead_pid())
    path = state.identities / "runner-impl_auth.json"
    assert (record.epoch, record.status, record.crash_count) == (1, S.SPAWNING, 0)
    assert record.agent_id == "runner-impl_auth"
    assert record.history[0]["from"] is None and record.history[0]["to"] == "spawning"
    assert path.stat().st_mode & 0o777 == 0o600
    assert state.identities.stat().st_mode & 0o777 == 0o700
    assert state.root.stat().st_mode & 0o777 == 0o700
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["status"] == "spawning"
    assert identities.Identity.from_json(data) == record
    assert identities.get(state, "runner", "impl_auth") == record


def test_create_refuses_a_live_holder_and_takes_over_a_dead_one(
    state: StateDir, sleeper: subprocess.Popen[bytes]
) -> None:
    identities.create_identity(state, "runner", "a", pid=sleeper.pid)
    before = snapshot(state.root)
    with pytest.raises(IdentityTakenError) as info:
        identities.create_identity(state, "runner", "a", pid=os.getpid() + 100000)
    assert str(sleeper.pid) in str(info.value) and "runner-a" in str(info.value)
    assert snapshot(state.root) == before
    sleeper.kill()
    sleeper.wait()
    record = identities.create_identity(state, "runner", "a")
    assert record.epoch == 2 and record.status is S.SPAWNING
    assert f"pid {sleeper.pid} gone" in record.history[-1]["reason"]


def test_create_refuses_even_a_dead_holder_without_replace_dead(state: StateDir) -> None:
    identities.create_identity(state, "runner", "a", pid=dead_pid())
    with pytest.raises(IdentityTakenError):
        identities.create_identity(state, "runner", "a", replace_dead=False)
    identities.mark_terminated(state, "runner", "a")
    assert identities.create_identity(state, "runner", "a", replace_dead=False).epoch == 2


def test_the_same_holder_may_register_again(
    state: StateDir, sleeper: subprocess.Popen[bytes]
) -> None:
    identities.create_identity(state, "runner", "a", pid=sleeper.pid)
    assert identities.create_identity(state, "runner", "a", pid=sleeper.pid).epoch == 2
    identities.create_identity(state, "guardian", "g", pid=os.getpid())
    assert identities.create_identity(state, "guardian", "g").epoch == 2


def test_pid_alive_sees_zombies_as_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    # not reaped yet: a zombie still answers kill -0
    retry_until(lambda: not procs.pid_alive(proc.pid), 10, what="child to exit")
    os.kill(proc.pid, 0)
    proc.wait()
    assert not procs.pid_alive(proc.pid)
    assert procs.pid_alive(os.getpid())
    assert not procs.pid_alive(None) and not procs.pid_alive(0)


def test_recreate_carries_epoch_and_crashes_forward(state: StateDir) -> None:
    identities.create_identity(state, "orchestrator", "n1")
    identities.update_liveness(state, "orchestrator", "n1")
    crashed = identities.mark_crashed(state, "orchestrator", "n1", "pane died")
    assert crashed.crash_count == 1 and crashed.epoch == 1
    again = identities.create_identity(state, "orchestrator", "n1")
    assert (again.epoch, again.crash_count, again.status) == (2, 1, S.SPAWNING)
    assert [h["to"] for h in again.history] == ["spawning", "active", "crashed", "spawning"]


def test_a_respawn_costs_exactly_one_epoch(state: StateDir) -> None:
    identities.create_identity(state, "runner", "r")
    identities.mark_crashed(state, "runner", "r")
    respawning = identities.mark_respawning(state, "runner", "r", "backoff over")
    assert respawning.epoch == 2
    assert identities.current_epoch(state, "runner-r") == 2
    # the new process may register itself (create) or just heartbeat: still epoch 2
    assert identities.create_identity(state, "runner", "r").epoch == 2
    identities.mark_crashed(state, "runner", "r")
    identities.mark_respawning(state, "runner", "r")
    record = identities.update_liveness(state, "runner", "r", pid=os.getpid())
    assert (record.epoch, record.status, record.crash_count) == (3, S.ACTIVE, 2)


def test_update_liveness_activates_and_stamps(state: StateDir) -> None:
    created = identities.create_identity(state, "runner", "a")
    first = identities.update_liveness(state, "runner", "a", pid=os.getpid())
    assert first.status is S.ACTIVE and first.pid == os.getpid()
    assert first.history[-1] == {"at": first.last_heartbeat, "from": "spawning", "to": "active",
                                 "reason": "heartbeat"}
    second = identities.update_liveness(state, "runner", "a")
    assert second.pid == os.getpid() and len(second.history) == len(first.history)
    assert second.last_heartbeat > first.last_heartbeat > created.last_heartbeat
    identities.mark_stale(state, "runner", "a", "no heartbeat")
    assert identities.update_liveness(state, "runner", "a").status is S.ACTIVE


def test_heartbeat_of_a_terminated_identity_is_refused(state: StateDir) -> None:
    identities.create_identity(state, "runner", "a")
    identities.mark_terminated(state, "runner", "a", "done")
    before = snapshot(state.root)
    with pytest.raises(TransitionError) as info:
        identities.update_liveness(state, "runner", "a")
    message = str(info.value)
    assert "terminated -> active" in message and "allowed from terminated: spawning" in message
    assert snapshot(state.root) == before


def test_set_status_is_checked_and_idempotent(state: StateDir) -> None:
    identities.create_identity(state, "runner", "a")
    identities.mark_crashed(state, "runner", "a")
    again = identities.mark_crashed(state, "runner", "a")
    assert again.crash_count == 1 and [h["to"] for h in again.history][-1] == "crashed"
    with pytest.raises(TransitionError) as info:
        identities.set_status(state, "runner", "a", "active")
    assert "crashed -> active" in str(info.value)
    assert "quarantined, respawning, terminated" in str(info.value)
    quarantined = identities.mark_quarantined(state, "runner", "a", "3 crashes")
    assert quarantined.history[-1]["reason"] == "3 crashes"
    with pytest.raises(Exception, match="unknown identity status 'asleep'"):
        identities.set_status(state, "runner", "a", "asleep")


def test_update_fields_checks_every_value(state: StateDir) -> None:
    identities.create_identity(state, "runner", "a")
    record = identities.update_fields(state, "runner", "a", pid=4242, pane_id="%3",
                                      tmux_session="att-run1-runner-a", tmux_socket="att-x")
    assert (record.pid, record.pane_id, record.tmux_session) == (4242, "%3", "att-run1-runner-a")
    before = snapshot(state.root)
    for bad in ({"pane_id": "3"}, {"tmux_session": "a;b"}, {"tmux_session": "#{pane}"},
                {"tmux_socket": "x y"}, {"session_id": "a'b"}, {"pid": -1}, {"pid": True},
                {"worktree": "a\nb"}, {"epoch": 9}):
        with pytest.raises(BadInputError):
            identities.update_fields(state, "runner", "a", **bad)
    assert snapshot(state.root) == before


def test_missing_record_is_not_found_and_nothing_is_created(state_dir: Path) -> None:
    state = StateDir(state_dir)  # not created, and nothing below may create it
    for call in (
        lambda: identities.get(state, "runner", "ghost"),
        lambda: identities.update_liveness(state, "runner", "ghost"),
        lambda: identities.mark_crashed(state, "runner", "ghost"),
        lambda: identities.update_fields(state, "runner", "ghost", pid=1),
    ):
        with pytest.raises(NotFoundError, match="identity create runner ghost"):
            call()
    assert not state.root.exists()
    assert identities.current_epoch(state, "runner-ghost") is None
    assert identities.list_identities(state) == []
    with pytest.raises(InvalidNameError):
        identities.current_epoch(state, "../x")


def test_find_stale_by_heartbeat_age(state: StateDir) -> None:
    for name in ("fresh", "old", "done", "quar", "dead", "spawn"):
        identities.create_identity(state, "runner", name)
    for name in ("fresh", "old", "done", "quar", "dead"):
        identities.update_liveness(state, "runner", name)
    identities.mark_terminated(state, "runner", "done")
    identities.mark_quarantined(state, "runner", "quar")
    identities.mark_crashed(state, "runner", "dead")
    now = time.time()
    assert identities.find_stale(state, 3600, now=now) == []
    later = now + 120
    identities.update_liveness(state, "runner", "fresh")  # still older than `later`
    stale = identities.find_stale(state, 60, now=later)
    assert [r.name for r in stale] == ["fresh", "old", "spawn"]
    assert all(r.heartbeat_age(later) > 60 for r in stale)
    with pytest.raises(BadInputError):
        identities.find_stale(state, -1)


def _write_corrupt(state: StateDir) -> dict[str, Path]:
    identities.create_identity(state, "runner", "good")
    directory = state.identities
    bad = {
        "truncated": directory / "runner-truncated.json",
        "empty": directory / "runner-empty.json",
        "array": directory / "runner-array.json",
        "schema": directory / "runner-schema.json",
        "misnamed": directory / "runner-misnamed.json",
        "badfield": directory / "runner-badfield.json",
    }
    good = (directory / "runner-good.json").read_text()
    bad["truncated"].write_text(good[: len(good) // 2])
    bad["empty"].write_text("")
    bad["array"].write_text("[1, 2]")
    bad["schema"].write_text(good.replace('"schema": 1', '"schema": 99'))
    bad["misnamed"].write_text(good)  # says runner-good inside
    bad["badfield"].write_text(good.replace('"status": "spawning"', '"status": "dozing"'))
    return bad


def test_corrupt_records_are_moved_aside_and_reported(state: StateDir) -> None:
    bad = _write_corrupt(state)
    problems: list[CorruptStateError] = []
    records = identities.list_identities(state, problems)
    assert [r.agent_id for r in records] == ["runner-good"]
    assert sorted(p.path for p in problems) == sorted(bad.values())
    for problem in problems:
        assert problem.moved_to is not None and problem.moved_to.exists()
        assert ".corrupt-" in problem.moved_to.name
        assert not problem.path.exists()
    assert any("dozing" in p.problem for p in problems)
    assert any("schema 99" in p.problem for p in problems)
    # a second listing is clean: the bad files are out of the way
    again: list[CorruptStateError] = []
    assert len(identities.list_identities(state, again)) == 1 and again == []


def test_find_stale_and_get_survive_corruption(state: StateDir) -> None:
    _write_corrupt(state)
    problems: list[CorruptStateError] = []
    stale = identities.find_stale(state, 0, now=time.time() + 5, problems=problems)
    assert [r.agent_id for r in stale] == ["runner-good"] and len(problems) == 6
    path = state.identities / "runner-good.json"
    path.write_text('{"schema": 1, "role": "runner"')
    with pytest.raises(CorruptStateError) as info:
        identities.get(state, "runner", "good")
    assert str(path) in str(info.value) and info.value.moved_to is not None
    # re-creating after corruption starts over cleanly
    assert identities.create_identity(state, "runner", "good").epoch == 1


def test_find_and_find_live(state: StateDir, sleeper: subprocess.Popen[bytes]) -> None:
    assert identities.find(state, "guardian", "ghost") is None
    assert identities.find_live(state, "guardian") is None
    identities.create_identity(state, "guardian", "dead", pid=dead_pid())
    identities.create_identity(state, "guardian", "ended", pid=sleeper.pid)
    identities.mark_terminated(state, "guardian", "ended")
    identities.create_identity(state, "guardian", "reused", pid=sleeper.pid)
    path = state.identities / "guardian-reused.json"
    data = json.loads(path.read_text())
    data["pid_start"] += 1  # the pid now belongs to another process
    path.write_text(json.dumps(data))
    identities.create_identity(state, "runner", "live", pid=sleeper.pid)
    assert identities.find_live(state, "guardian") is None  # dead, terminated, reused; a runner
    identities.create_identity(state, "guardian", "run2", pid=sleeper.pid)
    live = identities.find_live(state, "guardian")
    assert live is not None and live.agent_id == "guardian-run2"
    assert identities.find(state, "guardian", "run2") == live
    (state.identities / "runner-bad.json").write_text("{")
    with pytest.raises(CorruptStateError):
        identities.find(state, "runner", "bad")


def test_orphaned_temp_files_are_swept(state: StateDir) -> None:
    identities.create_identity(state, "runner", "a")
    orphan = state.identities / f".runner-a.json.tmp-{dead_pid()}-123"
    orphan.write_text("{partial")
    mine = state.identities / f".runner-a.json.tmp-{os.getpid()}-456"
    mine.write_text("{in progress")
    assert len(identities.list_identities(state)) == 1
    assert not orphan.exists() and mine.exists()


# --------------------------------------------------------------------------- CLI in-process


def test_cli_lifecycle(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = ["--state-dir", str(state_dir)]
    assert main(["identity", "create", "runner", "impl_auth", "--session-id", "s-1",
                 "--worktree", "wt", "--pid", str(os.getpid()), "--tmux-session", "t1", *sd]) == 0
    assert capsys.readouterr().out == (
        f"created runner-impl_auth: spawning, epoch 1, pid {os.getpid()}\n"
    )
    assert main(["identity", "update-liveness", "runner", "impl_auth", *sd]) == 0
    assert "heartbeat runner-impl_auth: active" in capsys.readouterr().out
    assert main(["identity", "show", "runner", "impl_auth", "--json", *sd]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["worktree"] == str(Path.cwd() / "wt") and shown["status"] == "active"
    assert shown["tmux_session"] == "t1" and shown["session_id"] == "s-1"
    assert main(["identity", "mark-crashed", "runner", "impl_auth", "--reason", "gone", *sd]) == 0
    assert main(["identity", "mark-terminated", "runner", "impl_auth", *sd]) == 0
    capsys.readouterr()
    assert main(["identity", "list", "--json", *sd]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["schema"] == 1 and listing["problems"] == []
    (record,) = listing["identities"]
    assert (record["status"], record["crash_count"]) == ("terminated", 1)
    assert [h["to"] for h in record["history"]] == ["spawning", "active", "crashed", "terminated"]
    assert main(["identity", "show", "runner", "impl_auth", *sd]) == 0
    human = capsys.readouterr().out
    assert "terminated" in human and "AT" in human and "REASON" in human


def test_cli_tables_are_aligned(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = ["--state-dir", str(state_dir)]
    assert main(["identity", "list", *sd]) == 0
    assert capsys.readouterr().out == "no identities registered\n"
    main(["identity", "create", "runner", "a", *sd])
    main(["identity", "create", "orchestrator", "long_name_here", "--pid", "1", *sd])
    capsys.readouterr()
    assert main(["identity", "list", *sd]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["AGENT", "EPOCH", "STATUS", "PID", "HEARTBEAT", "CRASHES", "PANE",
                                "SESSION", "WORKTREE"]
    assert [line.split()[0] for line in lines[1:]] == ["orchestrator-long_name_here", "runner-a"]
    columns = {line.index(word) for line, word in zip(lines, ["EPOCH", "1", "1"], strict=True)}
    assert len(columns) == 1


def test_cli_find_stale_and_stale_only(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = ["--state-dir", str(state_dir)]
    main(["identity", "create", "runner", "a", *sd])
    main(["identity", "create", "runner", "b", *sd])
    main(["identity", "mark-terminated", "runner", "b", *sd])
    capsys.readouterr()
    assert main(["identity", "find-stale", "--timeout", "3600", *sd]) == 0
    assert capsys.readouterr().out == "no stale identities\n"
    assert main(["identity", "find-stale", "--timeout", "0", "--json", *sd]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["agent_id"] for r in out["identities"]] == ["runner-a"]
    assert out["stale_timeout"] == 0
    assert main(["identity", "list", "--stale-only", "--timeout", "0", "--json", *sd]) == 0
    assert [r["agent_id"] for r in json.loads(capsys.readouterr().out)["identities"]] == [
        "runner-a"
    ]


def test_cli_list_reports_corrupt_files(
    state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _write_corrupt(state)
    assert main(["identity", "list", "--json", "--state-dir", str(state.root)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [r["agent_id"] for r in out["identities"]] == ["runner-good"]
    assert sorted(p["path"] for p in out["problems"]) == sorted(str(p) for p in bad.values())
    warnings = captured.err.splitlines()
    assert len(warnings) == 6
    assert all(w.startswith("warning: corrupt state file ") for w in warnings)
    (state.identities / "runner-x.json").write_text("{")
    assert main(["identity", "find-stale", "--timeout", "1", "--state-dir", str(state.root)]) == 0
    assert str(state.identities / "runner-x.json") in capsys.readouterr().err


class BadCase(NamedTuple):
    test_id: str
    argv: list[str]
    expect: str


BAD_CASES = [
    BadCase("slash", ["create", "runner", "a/b"], "invalid name 'a/b'"),
    BadCase("dotdot", ["create", "runner", ".."], "invalid name '..'"),
    BadCase("traversal", ["update-liveness", "runner", "../../etc"], "invalid name"),
    BadCase("space", ["create", "runner", "a b"], "invalid name 'a b'"),
    BadCase("quote", ["create", "runner", "a'b"], "invalid name"),
    BadCase("dquote", ["mark-crashed", "runner", 'a"b'], "invalid name"),
    BadCase("semicolon", ["create", "runner", "a;b"], "invalid name 'a;b'"),
    BadCase("tmux-format", ["create", "runner", "#{pane_id}"], "invalid name"),
    BadCase("upper", ["create", "runner", "Impl"], "invalid name"),
    BadCase("unknown-role", ["create", "wizard", "a"], "unknown role 'wizard'"),
    BadCase("tmux-session-meta", ["create", "runner", "a", "--tmux-session", "x;kill-server"],
            "tmux session"),
    BadCase("session-id-quote", ["create", "runner", "a", "--session-id", "x' y"], "session id"),
    BadCase("bad-pid", ["create", "runner", "a", "--pid", "abc"], "not a process id"),
    BadCase("zero-pid", ["update-liveness", "runner", "existing", "--pid", "0"], "process id"),
    BadCase("negative-timeout", ["find-stale", "--timeout", "-5"], ">= 0 seconds"),
    BadCase("no-timeout", ["find-stale"], "--timeout"),
    BadCase("missing", ["update-liveness", "runner", "ghost"], "identity 'runner-ghost' not found"),
    BadCase("illegal-transition", ["set-status", "runner", "existing", "respawning"],
            "illegal transition spawning -> respawning; allowed from spawning: active, crashed"),
    BadCase("unknown-status", ["set-status", "runner", "existing", "asleep"],
            "unknown identity status 'asleep'"),
    BadCase("unknown-action", ["frobnicate"], "invalid choice"),
    BadCase("update-nothing", ["update", "runner", "existing"], "give at least one of"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.test_id for c in BAD_CASES])
def test_cli_bad_input(case: BadCase, state: StateDir, capsys: pytest.CaptureFixture[str]) -> None:
    identities.create_identity(state, "runner", "existing")
    before = snapshot(state.root)
    code = main(["identity", *case.argv, "--state-dir", str(state.root)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and case.expect in lines[0], lines
    assert snapshot(state.root) == before


def test_cli_identity_taken_is_exit_1(state_dir: Path, capsys: pytest.CaptureFixture[str],
                                      sleeper: subprocess.Popen[bytes]) -> None:
    sd = ["--state-dir", str(state_dir)]
    assert main(["identity", "create", "runner", "a", "--pid", str(sleeper.pid), *sd]) == 0
    capsys.readouterr()
    assert main(["identity", "create", "runner", "a", *sd]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: identity 'runner-a' is held by pid {sleeper.pid} "
                   "(status spawning, epoch 1)\n")


# --------------------------------------------------------------------------- real processes


def test_subprocess_cli_round_trip(state_dir: Path) -> None:
    sd = ["--state-dir", str(state_dir)]
    created = run_cli(["identity", "create", "runner", "impl_auth", "--session-id", "s",
                       "--worktree", "/tmp/w", "--json", *sd])
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["epoch"] == 1
    beat = run_cli(["identity", "update-liveness", "runner", "impl_auth", *sd])
    assert beat.returncode == 0 and beat.stderr == ""
    listed = run_cli(["identity", "list", "--json", *sd])
    assert json.loads(listed.stdout)["identities"][0]["status"] == "active"
    bad = run_cli(["identity", "create", "runner", "x;y", *sd])
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1


def test_script_shim_flag_form(state_dir: Path) -> None:
    sd = ["--state-dir", str(state_dir)]
    out = run_script("identity_registry.py", ["--create-identity", "runner", "impl_auth",
                                              "--session-id", "s1", "--worktree", "/tmp/w", *sd])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("created runner-impl_auth: spawning, epoch 1")
    assert run_script("identity_registry.py",
                      ["--update-liveness", "runner", "impl_auth", *sd]).returncode == 0
    stale = run_script("identity_registry.py", ["--find-stale", "--timeout", "0", *sd])
    assert stale.returncode == 0 and "runner-impl_auth" in stale.stdout
    assert run_script("identity_registry.py",
                      ["--mark-crashed", "runner", "impl_auth", *sd]).returncode == 0
    listed = run_script("identity_registry.py", ["--list", "--json", *sd])
    (record,) = json.loads(listed.stdout)["identities"]
    assert (record["status"], record["crash_count"]) == ("crashed", 1)
    assert run_script("identity_registry.py",
                      ["--mark-terminated", "runner", "impl_auth", *sd]).returncode == 0
    only = run_script("identity_registry.py", ["--list", "--stale-only", "--json", *sd])
    assert json.loads(only.stdout)["identities"] == []
    for argv, expect in (
        (["--update-liveness", "runner"], "--update-liveness needs ROLE NAME"),
        (["--list", "--find-stale"], "give only one action"),
        ([], "no action given"),
        (["--create-identity", "runner", "a/b"], "invalid name 'a/b'"),
    ):
        bad = run_script("identity_registry.py", [*argv, *sd])
        assert bad.returncode == 2, (argv, bad.stderr)
        assert len(bad.stderr.splitlines()) == 1 and expect in bad.stderr


def test_script_shim_runs_from_a_checkout_without_install(state: StateDir) -> None:
    """`python3 -S` drops site-packages (and the editable install): the shim finds src/."""
    identities.create_identity(state, "runner", "a")
    proc = subprocess.run(
        [sys.executable, "-S", str(REPO_ROOT / "scripts" / "identity_registry.py"), "--list",
         "--json", "--state-dir", str(state.root)],
        capture_output=True, text=True, timeout=60, cwd=state.root.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["identities"][0]["agent_id"] == "runner-a"


def test_killed_holder_frees_the_identity(state: StateDir) -> None:
    """A real agent process registers itself, then dies: its identity can be taken over."""
    code = (
        "import os, sys, time\n"
        "from attractor.cli import main\n"
        "main(['identity', 'create', 'runner', 'a', '--pid', str(os.getpid()),"
        " '--state-dir', sys.argv[1]])\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(state.root)], stdout=subprocess.DEVNULL)
    try:
        retry_until(lambda: identities.current_epoch(state, "runner-a"), 20, what="registration")
        with pytest.raises(IdentityTakenError):
            identities.create_identity(state, "runner", "a")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert identities.create_identity(state, "runner", "a").epoch == 2
    finally:
        proc.kill()
        proc.wait()
