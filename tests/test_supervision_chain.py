"""Supervision in the running chain: real processes killed with real signals on a private tmux
socket. Each test SIGKILLs one layer mid-run and checks the run still ends right."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chain_helpers import (
    checkpoint,
    codergen,
    events,
    git_show,
    identity,
    launch,
    module_steps,
    pipeline_file,
    read_json,
    run_id,
    tool,
)
from tests.helpers import REPO_ROOT, retry_until, run_cli


def slow_node(name: str, value: int, seconds: float = 4) -> str:
    return codergen(name, module_steps(name, value) + f"sleep {seconds}\ncommit {name}\nreport") + tool(f"check_{name}")


def finish(proc: subprocess.Popen[str], seconds: float = 90) -> tuple[int, str]:
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out + err


def live_pid(state: Path, agent_id: str) -> int:
    def found() -> int | None:
        ident = identity(state, agent_id)
        if ident and ident.get("pid") and ident["status"] in ("spawning", "active"):
            try:
                os.kill(ident["pid"], 0)
                return int(ident["pid"])
            except ProcessLookupError:
                return None
        return None
    return retry_until(found, 20, what=f"live {agent_id}")


def test_killed_orchestrator_is_respawned_with_its_wisdom(chain: tuple[Path, Path]) -> None:
    target, state = chain
    proc = launch(pipeline_file(target.parent, slow_node("work", 3), "  start -> work -> check_work -> exit\n"),
                  target, state)
    first = live_pid(state, "orchestrator-work")
    os.kill(first, signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out
    ident = read_json(state / "identities" / "orchestrator-work.json")
    assert ident["epoch"] >= 2 and ident["crash_count"] >= 1
    assert git_show(target, "main", "app/work.py") == "VALUE = 3\n"
    prompt = sorted((state / "runs" / run_id(state) / "prompts").glob("work-*.md"))  # type: ignore[operator]
    assert prompt and "died before reporting" in prompt[-1].read_text()


def test_killed_runner_is_respawned_and_readopts_its_orchestrator(chain: tuple[Path, Path]) -> None:
    target, state = chain
    proc = launch(pipeline_file(target.parent, slow_node("work", 4, 5), "  start -> work -> check_work -> exit\n"),
                  target, state)
    orchestrator = live_pid(state, "orchestrator-work")
    runner = live_pid(state, "runner-work")
    os.kill(runner, signal.SIGKILL)
    new_runner = retry_until(lambda: live_pid(state, "runner-work") != runner and live_pid(state, "runner-work"),
                             10, what="new runner")
    assert new_runner != runner
    status = run_cli(["status", "--json", "--state-dir", str(state)])
    agents = {a["agent_id"]: a for a in json.loads(status.stdout)["agents"]}
    assert agents["runner-work"]["restarts"] == 1
    assert agents["orchestrator-work"]["health"] in ("starting", "alive")
    # the orchestrator was re-adopted, not replaced
    assert identity(state, "orchestrator-work")["pid"] == orchestrator  # type: ignore[index]
    code, out = finish(proc)
    assert code == 0, out
    assert read_json(state / "identities" / "orchestrator-work.json")["epoch"] == 1
    assert [e for e in events(state) if e["event"] == "runner_respawn"]
    assert git_show(target, "main", "app/work.py") == "VALUE = 4\n"


def test_killed_guardian_is_respawned_and_merged_nodes_are_not_rerun(chain: tuple[Path, Path]) -> None:
    target, state = chain
    body = slow_node("one", 1, 0) + slow_node("two", 2, 4)
    proc = launch(pipeline_file(target.parent, body, "  start -> one -> check_one -> two -> check_two -> exit\n"),
                  target, state)
    rid = retry_until(lambda: run_id(state), 10, what="run")
    retry_until(lambda: checkpoint(state)["nodes"]["one"]["state"] == "merged", 30, what="one merged")
    guardian = live_pid(state, f"guardian-{rid}")
    os.kill(guardian, signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out
    assert "starting the guardian again" in out
    assert checkpoint(state)["guardian_starts"] >= 2
    assert [e["node"] for e in events(state) if e["event"] == "runner_spawned"].count("one") == 1
    log = subprocess.run(["git", "-C", str(target), "log", "--format=%s", "main"], capture_output=True, text=True)
    assert log.stdout.count("one") == 1 and "two" in log.stdout


def test_second_guardian_is_refused_and_attach_follows(chain: tuple[Path, Path]) -> None:
    target, state = chain
    pipe = pipeline_file(target.parent, slow_node("work", 5, 4), "  start -> work -> check_work -> exit\n")
    proc = launch(pipe, target, state)
    rid = retry_until(lambda: run_id(state), 10, what="run")
    guardian = live_pid(state, f"guardian-{rid}")
    second = run_cli(["run", str(pipe), "--target-dir", str(target), "--state-dir", str(state)])
    assert second.returncode == 1
    assert f"pid {guardian}" in second.stderr and "--attach" in second.stderr
    assert second.stderr.count("\n") == 1
    attached = run_cli(["run", "--attach", "--target-dir", str(target), "--state-dir", str(state)], timeout=90)
    assert attached.returncode == 0, attached.stdout + attached.stderr
    assert f"attaching to run {rid}" in attached.stdout and "succeeded" in attached.stdout
    code, out = finish(proc)
    assert code == 0, out
    # the follower that attached did not take over the launcher's identity
    assert read_json(state / "identities" / f"launcher-{rid}.json")["pid"] == proc.pid
    nothing = run_cli(["run", "--attach", "--target-dir", str(target), "--state-dir", str(state)])
    assert nothing.returncode == 2 and "live guardian" in nothing.stderr


def test_do_not_retry_exit_quarantines_and_the_run_goes_on(chain: tuple[Path, Path]) -> None:
    target, state = chain
    body = (codergen("broken", "@1 fail 78\n" + module_steps("broken", 7) + "commit broken\nreport")
            + tool("check_broken")
            + codergen("fine", module_steps("fine", 6) + "commit fine\nreport") + tool("check_fine"))
    edges = "  start -> broken -> check_broken -> exit\n  start -> fine -> check_fine -> exit\n"
    code, out = finish(launch(pipeline_file(target.parent, body, edges), target, state))
    assert code == 1, out
    cp = checkpoint(state)
    assert cp["nodes"]["fine"]["state"] == "merged"
    assert cp["nodes"]["broken"]["state"] == "blocked"
    assert "quarantined" in cp["nodes"]["broken"]["reason"] and "exit code 78" in cp["nodes"]["broken"]["reason"]
    assert identity(state, "orchestrator-broken")["status"] == "quarantined"  # type: ignore[index]
    status = run_cli(["status", "--json", "--state-dir", str(state)])
    agents = {a["agent_id"]: a for a in json.loads(status.stdout)["agents"]}
    assert agents["orchestrator-broken"]["health"] == "quarantined"
    assert "exit code 78" in agents["orchestrator-broken"]["quarantine_reason"]
    listing = run_cli(["agent", "list", "--state-dir", str(state)])
    assert "quarantined" in listing.stdout
    cleared = run_cli(["agent", "clear", "orchestrator", "broken", "--state-dir", str(state)])
    assert cleared.returncode == 0, cleared.stderr
    assert identity(state, "orchestrator-broken")["status"] != "quarantined"  # type: ignore[index]
    # once cleared, resuming the run gives the blocked node another attempt
    resumed = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "launch_guardian.py"), "--resume",
                              str(run_id(state)), "--target-dir", str(target), "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=90)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert git_show(target, "main", "app/broken.py") == "VALUE = 7\n"


def test_stop_ends_a_run_and_keeps_the_work(chain: tuple[Path, Path], tmux_socket: str) -> None:
    target, state = chain
    pipe = pipeline_file(target.parent, slow_node("work", 8, 30), "  start -> work -> check_work -> exit\n")
    proc = launch(pipe, target, state)
    rid = retry_until(lambda: run_id(state), 10, what="run")
    orchestrator = live_pid(state, "orchestrator-work")
    stopped = subprocess.run([sys.executable, "-m", "attractor", "stop", rid, "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert stopped.returncode == 0, stopped.stderr
    finish(proc)
    assert checkpoint(state)["status"] == "stopped"
    with pytest.raises(ProcessLookupError):
        os.kill(orchestrator, 0)
    sessions = subprocess.run(["tmux", "-L", tmux_socket, "ls"], capture_output=True, text=True)
    assert not sessions.stdout.strip(), sessions.stdout
    branch = subprocess.run(["git", "-C", str(target), "branch", "--list", f"attractor/{rid}/work"],
                            capture_output=True, text=True)
    assert branch.stdout.strip()  # the branch is kept


def test_stop_then_resume_finishes_the_run(chain: tuple[Path, Path]) -> None:
    target, state = chain
    body = slow_node("first", 1, 6) + slow_node("second", 2, 0)
    pipe = pipeline_file(target.parent, body, "  start -> first -> check_first -> second -> check_second -> exit\n")
    proc = launch(pipe, target, state)
    rid = retry_until(lambda: run_id(state), 10, what="run")
    live_pid(state, "orchestrator-first")
    stopped = run_cli(["stop", rid, "--state-dir", str(state)], timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    finish(proc)
    assert checkpoint(state)["status"] == "stopped"
    resumed = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "launch_guardian.py"), "--resume", rid,
                              "--target-dir", str(target), "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=90)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert git_show(target, "main", "app/first.py") == "VALUE = 1\n"
    assert git_show(target, "main", "app/second.py") == "VALUE = 2\n"


def test_agent_blocked_at_a_trust_prompt_is_answered(chain: tuple[Path, Path]) -> None:
    target, state = chain
    script = ("ask Do you trust the files in this folder?\\n> 1. Yes, proceed\\n  2. No, exit\n"
              + module_steps("trusted", 5) + "commit trusted\nreport")
    pipe = pipeline_file(target.parent, codergen("trusted", script) + tool("check_trusted"),
                         "  start -> trusted -> check_trusted -> exit\n")
    code, out = finish(launch(pipe, target, state), 60)
    assert code == 0, out
    assert git_show(target, "main", "app/trusted.py") == "VALUE = 5\n"
    assert "answering prompt claude-trust" in (state / "logs" / "runner-trusted.log").read_text()


def test_a_dialog_after_a_quiet_spell_is_answered(chain: tuple[Path, Path]) -> None:
    # quiet for longer than the runner's ACTIVE_WINDOW: it asks tmux about the pane only when the
    # agent's terminal is written to again, and must still see the dialog and answer it
    target, state = chain
    script = ("sleep 14\nask Do you trust the files in this folder?\\n> 1. Yes, proceed\\n  2. No, exit\n"
              + module_steps("quiet", 8) + "commit quiet\nreport")
    pipe = pipeline_file(target.parent, codergen("quiet", script) + tool("check_quiet"),
                         "  start -> quiet -> check_quiet -> exit\n")
    code, out = finish(launch(pipe, target, state), 90)
    assert code == 0, out
    assert git_show(target, "main", "app/quiet.py") == "VALUE = 8\n"
    log = (state / "logs" / "runner-quiet.log").read_text().splitlines()

    def stamp(marker: str) -> datetime.datetime:
        line = next(line for line in log if marker in line)
        return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")

    shown = stamp("tmux session att-") + datetime.timedelta(seconds=14)  # the agent's pane, then its sleep
    # seen through the terminal's stamp, not at the next 30 s safety read (16 s after the dialog)
    assert (stamp("answering prompt claude-trust") - shown).total_seconds() < 10


def test_trust_menu_with_no_first_is_answered_by_choosing_yes(chain: tuple[Path, Path]) -> None:
    # Claude Code 2.1.x lists "No, exit" first and highlights it: Enter alone would refuse.
    target, state = chain
    script = ("menu Quick safety check: Is this a project you created or one you trust?|No, exit"
              "|Yes, I trust this folder\n" + module_steps("menu", 6) + "commit menu\nreport")
    pipe = pipeline_file(target.parent, codergen("menu", script) + tool("check_menu"),
                         "  start -> menu -> check_menu -> exit\n")
    code, out = finish(launch(pipe, target, state), 60)
    assert code == 0, out
    assert git_show(target, "main", "app/menu.py") == "VALUE = 6\n"
    log = (state / "logs" / "runner-menu.log").read_text()
    assert "answering prompt claude-trust by choosing 'Yes, I trust this folder' (Down Enter)" in log
    assert "chose: 'No, exit'" not in log


def test_a_dialog_without_the_wanted_option_needs_input(chain: tuple[Path, Path]) -> None:
    target, state = chain
    script = ("menu Do you trust the files in this folder?|No, exit|Ask me later\n"
              + module_steps("asked", 7) + "commit asked\nreport")
    pipe = pipeline_file(target.parent, codergen("asked", script) + tool("check_asked"),
                         "  start -> asked -> check_asked -> exit\n")
    proc = launch(pipe, target, state, detach=True)
    try:
        session = state / "agents" / "orchestrator-asked" / "session.json"

        def needs_input() -> dict[str, object] | None:
            if not session.exists():
                return None
            found = read_json(session).get("needs_input")
            return found if isinstance(found, dict) else None

        waiting = retry_until(needs_input, 30, what="needs-input recorded")
        assert waiting["rule"] == "claude-trust"
        assert waiting["options"] == ["No, exit", "Ask me later"]
        assert "Do you trust the files in this folder?" in str(waiting["message"])
        status = run_cli(["status", "--json", "--state-dir", str(state)])
        agents = json.loads(status.stdout)["agents"]
        mine = next(a for a in agents if a["agent_id"] == "orchestrator-asked")
        assert mine["needs_input"]["rule"] == "claude-trust"
        identity_now = identity(state, "orchestrator-asked")
        assert identity_now is not None and identity_now["status"] in ("spawning", "active")
    finally:
        run_cli(["stop", "--state-dir", str(state)], timeout=60)
        proc.wait(timeout=60)


def test_hung_agent_is_ended_and_respawned(chain: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    target, state = chain
    monkeypatch.setenv("ATTRACTOR_POLICY", "hung_after=1.5,startup_grace=2")
    marker = target.parent / "hung-once"
    script = (f"run test -e {marker} || {{ touch {marker}; sleep 600; }}\n"
              + module_steps("slowpoke", 4) + "commit slowpoke\nreport")
    pipe = pipeline_file(target.parent, codergen("slowpoke", script) + tool("check_slowpoke"),
                         "  start -> slowpoke -> check_slowpoke -> exit\n")
    code, out = finish(launch(pipe, target, state), 60)
    assert code == 0, out
    ident = read_json(state / "identities" / "orchestrator-slowpoke.json")
    assert ident["epoch"] == 2 and ident["crash_count"] == 1
    assert any("hung" in h.get("reason", "") or "not alive" in h.get("reason", "") for h in ident["history"])
    assert "is hung" in (state / "logs" / "runner-slowpoke.log").read_text()


def test_report_sent_while_the_runner_was_down_is_not_lost(chain: tuple[Path, Path]) -> None:
    target, state = chain
    marker = target.parent / "killed-once"
    runner_file = state / "identities" / "runner-relay.json"
    kill = (f"run test -e {marker} || {{ touch {marker}; kill -9 $(python3 -c "
            f"'import json; print(json.load(open(\"{runner_file}\"))[\"pid\"])'); }}")
    script = module_steps("relay", 3) + "commit relay\n" + kill + "\nreport"
    pipe = pipeline_file(target.parent, codergen("relay", script) + tool("check_relay"),
                         "  start -> relay -> check_relay -> exit\n")
    code, out = finish(launch(pipe, target, state), 60)
    assert code == 0, out
    assert marker.exists()
    assert git_show(target, "main", "app/relay.py") == "VALUE = 3\n"
    # the agent was not run again: its report, addressed to the dead runner, was acted on
    assert read_json(state / "identities" / "orchestrator-relay.json")["epoch"] == 1
    assert read_json(state / "identities" / "runner-relay.json")["epoch"] >= 2


def test_a_runner_killed_just_before_stop_is_not_quarantined_on_resume(chain: tuple[Path, Path]) -> None:
    # The killed runner's death and its stopped successor's end are two deaths; every tick the
    # resumed guardian sees the terminated runner during its backoff is the same one again.
    target, state = chain
    resumed_flag = target.parent / "resumed"  # the agent works slowly until the run is resumed
    script = module_steps("work", 9) + f"run [ -e {resumed_flag} ] || sleep 20\ncommit work\nreport"
    pipe = pipeline_file(target.parent, codergen("work", script) + tool("check_work"),
                         "  start -> work -> check_work -> exit\n")
    proc = launch(pipe, target, state)
    rid = retry_until(lambda: run_id(state), 10, what="run")
    runner = live_pid(state, "runner-work")
    live_pid(state, "orchestrator-work")
    os.kill(runner, signal.SIGKILL)
    retry_until(lambda: live_pid(state, "runner-work") != runner, 30, what="the runner respawned")
    stopped = run_cli(["stop", rid, "--state-dir", str(state)], timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    finish(proc)
    assert checkpoint(state)["status"] == "stopped"
    resumed_flag.touch()
    resumed = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "launch_guardian.py"), "--resume", rid,
                              "--target-dir", str(target), "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert checkpoint(state)["nodes"]["work"]["state"] == "merged"
    assert git_show(target, "main", "app/work.py") == "VALUE = 9\n"
    record = read_json(state / "supervision" / "runner-work.json")
    assert not record["quarantined"]
    keys = [d["key"] for d in record["deaths"]]
    assert len(keys) == len(set(keys)) <= 2, record["deaths"]


def cpu_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """Real CPU-bound processes to load the machine for the test, each in a session of its own
    like a user's other programs (with autogroup scheduling, processes of one session share one
    slice of the CPU)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(count)]


def test_twelve_nodes_at_once_on_a_loaded_machine_start_without_a_kill_or_an_escalation(
        chain: tuple[Path, Path]) -> None:
    target, state = chain
    names = [f"n{i:02d}" for i in range(12)]
    body = "".join(codergen(n, module_steps(n, i) + f"commit {n}\nreport") + tool(f"check_{n}")
                   for i, n in enumerate(names))
    edges = "".join(f"  start -> {n} -> check_{n} -> exit\n" for n in names)
    hogs = cpu_hogs(8 * (os.cpu_count() or 2))  # a busy machine: eight CPU-bound processes per core

    def started() -> bool:
        path = state / "supervision" / "startup.json"
        return path.exists() and len(read_json(path)["layers"].get("runner", [])) == len(names)

    try:
        proc = launch(pipeline_file(target.parent, body, edges), target, state, "--max-agents", "12")
        # the load lasts until every runner has started (what this test is about); the merges
        # after it run on a quiet machine
        retry_until(lambda: started() or proc.poll() is not None, 600, what="every runner started")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    code, out = finish(proc, 900)
    assert code == 0, out
    cp = checkpoint(state)
    assert all(cp["nodes"][n]["state"] == "merged" for n in names), out
    happened = events(state)
    assert [e for e in happened if e["event"] in ("runner_died", "runner_respawn")] == [], out
    for name in names:
        ident = read_json(state / "identities" / f"runner-{name}.json")
        assert ident["crash_count"] == 0 and ident["epoch"] == 1, ident["history"]
    escalation = state / "supervision" / "escalation.json"
    assert not escalation.exists() or read_json(escalation)["alerts"] == []
    log = (state / "logs" / f"guardian-{cp['run_id']}.log").read_text()
    assert " is stale" not in log and "ESCALATION" not in log
    # the start-ups were measured, per layer, once per incarnation
    startups = read_json(state / "supervision" / "startup.json")["layers"]["runner"]
    assert sorted(s["agent_id"] for s in startups) == sorted(f"runner-{n}" for n in names)
