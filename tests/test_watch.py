"""watch: identity records + pane list -> health, recorded deaths and respawn decisions, on real
processes and a real state directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from attractor.engines.supervision import Action, Health, PolicyConfig, Supervisor
from attractor.engines.watch import Watch, policy_from_env
from attractor.errors import BadInputError
from attractor.store import identities
from attractor.store.statedir import StateDir
from tests.helpers import retry_until


def make_watch(state_dir: Path, **policy: float) -> Watch:
    state = StateDir(state_dir)
    return Watch(state, Supervisor(state, PolicyConfig(**policy)))  # type: ignore[arg-type]


def test_registered_but_never_started_is_dead_after_the_grace(state_dir: Path) -> None:
    watch = make_watch(state_dir, startup_grace=0.2)
    ident = identities.create_identity(watch.state, "runner", "ghost", session_id="r1")
    assert watch.check(ident, {}).report.health is not Health.DEAD  # inside the grace
    verdict = retry_until(lambda: (v := watch.check(identities.get(watch.state, "runner", "ghost"), {}))
                          .report.health is Health.DEAD and v, 5, what="dead")
    assert "no process recorded" in verdict.report.reason
    assert verdict.decision is not None and verdict.decision.action is Action.RESPAWN_NOW
    assert identities.get(watch.state, "runner", "ghost").status.value == "crashed"


def test_killed_process_is_dead_and_backoff_grows(state_dir: Path) -> None:
    watch = make_watch(state_dir, startup_grace=0.0, grace_min_dead=0.0)
    decisions = []
    for _ in range(3):
        proc = subprocess.Popen(["sleep", "30"])
        ident = identities.create_identity(watch.state, "orchestrator", "w", pid=proc.pid, session_id="r1")
        assert watch.check(ident, None).report.health is not Health.DEAD
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        verdict = watch.check(identities.get(watch.state, "orchestrator", "w"), None)
        assert verdict.report.health is Health.DEAD and verdict.decision is not None
        decisions.append(verdict.decision)
        watch.respawned("orchestrator-w")
    assert [d.action for d in decisions] == [Action.RESPAWN_NOW, Action.RESPAWN_AT, Action.RESPAWN_AT]
    assert 0.8 <= decisions[1].delay <= 1.2 and 1.6 <= decisions[2].delay <= 2.4


def test_do_not_retry_exit_code_quarantines(state_dir: Path) -> None:
    watch = make_watch(state_dir)
    ident = identities.create_identity(watch.state, "orchestrator", "x", pid=None, session_id="r1")
    decision = watch.record_death(ident, "exited", exit_code=78)
    assert decision.action is Action.QUARANTINE
    assert identities.get(watch.state, "orchestrator", "x").status.value == "quarantined"
    assert watch.quarantined("orchestrator-x") and not watch.may_respawn("orchestrator-x")


def test_stale_control_process_is_ended(state_dir: Path) -> None:
    watch = make_watch(state_dir, startup_grace=0.0, heartbeat_interval=0.05, stale_after_intervals=2)
    proc = subprocess.Popen(["sleep", "30"])
    try:
        identities.create_identity(watch.state, "runner", "slow", pid=proc.pid, session_id="r1")
        ident = identities.update_liveness(watch.state, "runner", "slow")  # started: judged by heartbeats
        verdict = retry_until(lambda: (v := watch.check(ident, None)).report.health is Health.STALE and v, 5,
                              what="stale")
        assert "heartbeat" in verdict.report.reason
        assert proc.wait(timeout=5) == -signal.SIGKILL  # ended, so that it is respawned
    finally:
        if proc.poll() is None:
            proc.kill()


def test_policy_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRACTOR_POLICY", "quarantine_deaths=8, escalation_cooldown=2.5")
    config = policy_from_env(max_delay=10)
    assert (config.quarantine_deaths, config.escalation_cooldown, config.max_delay) == (8, 2.5, 10)
    for bad in ("nope=1", "quarantine_deaths=x", "quarantine_deaths"):
        monkeypatch.setenv("ATTRACTOR_POLICY", bad)
        with pytest.raises(BadInputError) as info:
            policy_from_env()
        assert "ATTRACTOR_POLICY" in str(info.value)


def busy_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def test_a_starting_control_process_is_never_judged_by_a_heartbeat(state_dir: Path) -> None:
    # heartbeats every 10 ms, stale after 20 ms: a process that has not sent its first one is
    # still only starting, for as long as the start-up grace lasts
    watch = make_watch(state_dir, startup_grace=0.0, heartbeat_interval=0.01, stale_after_intervals=2,
                       startup_floor=600)
    proc = subprocess.Popen(["sleep", "30"])
    try:
        ident = identities.create_identity(watch.state, "runner", "slowstart", pid=proc.pid, session_id="r1")
        retry_until(lambda: ident.heartbeat_age() > 0.1, 5, what="heartbeat limit passed")
        verdict = watch.check(ident, None)
        assert verdict.report.health is Health.STARTING, verdict.report
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_past_the_grace_a_start_that_makes_progress_goes_on_and_one_that_stalls_is_ended(state_dir: Path) -> None:
    watch = make_watch(state_dir, startup_grace=0.0, startup_floor=0.05, startup_ceiling=0.05,
                       startup_stall=0.5, escalation_agents=0)
    busy, idle = busy_process(), subprocess.Popen(["sleep", "30"])
    try:
        working = identities.create_identity(watch.state, "runner", "working", pid=busy.pid, session_id="r1")
        stuck = identities.create_identity(watch.state, "runner", "stuck", pid=idle.pid, session_id="r1")
        verdict = retry_until(lambda: (v := watch.check(stuck, None)).report.health is Health.STALE and v, 10,
                              what="the stalled start-up is stale")
        assert "no progress" in verdict.report.reason
        assert idle.wait(timeout=5) == -signal.SIGKILL
        # the one burning CPU is past the same grace, and still starting
        again = watch.check(working, None)
        assert again.report.health is Health.STARTING and "making progress" in again.report.reason
        assert busy.poll() is None
        # its supervisor ended the stalled one while it started: a death, but not a crash that
        # counts toward an escalation (with escalation_agents=0 one counted death would start one)
        dead = watch.check(identities.get(watch.state, "runner", "stuck"), None)
        assert dead.report.health is Health.DEAD and dead.decision is not None
        assert dead.decision.action is Action.RESPAWN_NOW
        assert watch.supervisor.escalation() is None and watch.supervisor.alerts() == ()
        assert "while starting" in watch.supervisor.state_of("runner-stuck").deaths[-1].cause
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()


def test_start_up_times_are_measured_once_per_incarnation_and_set_the_grace(state_dir: Path) -> None:
    watch = make_watch(state_dir, startup_floor=1.0, startup_ceiling=50.0, startup_factor=2.0)
    supervisor = watch.supervisor
    assert supervisor.startup_grace("runner") == 1.0  # nothing measured: the floor
    proc = subprocess.Popen(["sleep", "30"])
    try:
        for name in ("a", "b"):
            identities.create_identity(watch.state, "runner", name, pid=proc.pid, session_id="r1")
            retry_until(lambda n=name: identities.get(watch.state, "runner", n).heartbeat_age() > 0.3, 5,
                        what="some start-up time")
            ident = identities.update_liveness(watch.state, "runner", name)
            for _ in range(3):
                watch.check(ident, None)
            Watch(watch.state, supervisor).check(ident, None)  # a restarted supervisor: no second sample
        samples = supervisor.startup_times().samples("runner")
        assert [(s.agent_id, s.epoch) for s in samples] == [("runner-a", 1), ("runner-b", 1)]
        assert all(0.3 <= s.seconds < 10 for s in samples)
        assert supervisor.startup_grace("runner") == max(1.0, 2.0 * max(s.seconds for s in samples))
        assert supervisor.startup_grace("guardian") == 1.0  # per layer
        for seconds in (100.0, 200.0):
            supervisor.record_startup("runner-c", int(seconds), seconds)
        assert supervisor.startup_grace("runner") == 50.0  # the ceiling
    finally:
        proc.kill()
        proc.wait()


def test_a_death_is_recorded_once_however_often_it_is_seen(state_dir: Path) -> None:
    watch = make_watch(state_dir)
    ident = identities.create_identity(watch.state, "runner", "gone", pid=None, session_id="r1")
    identities.mark_terminated(watch.state, "runner", "gone", reason="exit 0")
    ident = identities.get(watch.state, "runner", "gone")
    first = watch.record_death(ident, "runner exited before its node finished")
    for _ in range(10):  # every tick of the supervisor while the backoff runs
        again = watch.record_death(ident, "runner exited before its node finished")
        assert again.action is first.action
    assert len(watch.supervisor.state_of("runner-gone").deaths) == 1
    Watch(watch.state, watch.supervisor).record_death(ident, "seen by a restarted supervisor")
    assert len(watch.supervisor.state_of("runner-gone").deaths) == 1
    # the next incarnation's death is a new one
    watch.respawned("runner-gone")
    identities.create_identity(watch.state, "runner", "gone", pid=None, session_id="r1")
    identities.mark_terminated(watch.state, "runner", "gone", reason="exit 0")
    second = watch.record_death(identities.get(watch.state, "runner", "gone"), "exited again")
    assert len(watch.supervisor.state_of("runner-gone").deaths) == 2
    assert second.action is Action.RESPAWN_AT
