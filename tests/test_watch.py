"""watch: identity records + pane list -> health, recorded deaths and respawn decisions, on real
processes and a real state directory."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from attractor import identities
from attractor.errors import BadInputError
from attractor.statedir import StateDir
from attractor.supervision import Action, Health, PolicyConfig, Supervisor
from attractor.watch import Watch, policy_from_env
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
        ident = identities.create_identity(watch.state, "runner", "slow", pid=proc.pid, session_id="r1")
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
