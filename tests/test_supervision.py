"""The respawn policy on a fake clock: exact respawn times, jitter bounds, quarantine, reset
after stability, escalation pause, persistence across supervisors, corrupt files; and the
`attractor agent` commands."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from attractor.clock import FakeClock
from attractor.engines.supervision import (
    Action,
    Decision,
    PolicyConfig,
    Supervisor,
)
from attractor.store.statedir import StateDir
from tests.helpers import run_cli

NO_JITTER = PolicyConfig(jitter=0.0)
# Backoff without quarantine getting in the way, to reach the cap.
LONG_RUN = PolicyConfig(jitter=0.0, quarantine_deaths=1000)
EXPECTED_DELAYS = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def make(state_dir: Path, config: PolicyConfig = NO_JITTER, clock: FakeClock | None = None,
         seed: int = 0) -> tuple[Supervisor, FakeClock]:
    clock = clock or FakeClock()
    return Supervisor(state_dir, config, clock, random.Random(seed)), clock


def crash_loop(sup: Supervisor, clock: FakeClock, agent: str, deaths: int,
               life: float = 0.5) -> list[Decision]:
    """The agent dies, is respawned as soon as allowed, lives `life` seconds, dies again."""
    decisions = []
    for _ in range(deaths):
        decision = sup.record_death(agent, "pid gone")
        decisions.append(decision)
        if decision.action is Action.QUARANTINE:
            break
        clock.now = decision.at
        assert sup.due_respawns() == [agent]
        sup.record_respawn(agent)
        clock.advance(life)
    return decisions


def test_respawn_times_double_up_to_the_cap(state_dir: Path) -> None:
    sup, clock = make(state_dir, LONG_RUN)
    start = clock.now
    decisions = crash_loop(sup, clock, "runner-a", len(EXPECTED_DELAYS))
    assert [d.delay for d in decisions] == EXPECTED_DELAYS
    assert decisions[0].action is Action.RESPAWN_NOW
    assert all(d.action is Action.RESPAWN_AT for d in decisions[1:])
    # absolute times: each death happens 0.5 s after the previous respawn
    expected_at, t = [], start
    for delay in EXPECTED_DELAYS:
        expected_at.append(t + delay)
        t += delay + 0.5
    assert [d.at for d in decisions] == pytest.approx(expected_at)
    state = sup.state_of("runner-a")
    assert state.restarts == len(EXPECTED_DELAYS)
    assert state.consecutive_deaths == len(EXPECTED_DELAYS)


def test_not_due_before_the_backoff_time(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    sup.record_death("runner-a", "pid gone")
    sup.record_respawn("runner-a")
    second = sup.record_death("runner-a", "pid gone")
    assert second.delay == 1.0
    assert sup.due_respawns() == []
    assert not sup.may_respawn("runner-a")
    assert sup.next_due_at() == pytest.approx(second.at)
    clock.advance(0.999)
    assert sup.due_respawns() == []
    clock.advance(0.001)
    assert sup.due_respawns() == ["runner-a"]


def test_jitter_stays_within_twenty_percent(state_dir: Path) -> None:
    config = PolicyConfig(quarantine_deaths=1000)  # default jitter 0.2
    seen: dict[int, list[float]] = {}
    for seed in range(60):
        sup, clock = make(state_dir / str(seed), config, seed=seed)
        for index, decision in enumerate(crash_loop(sup, clock, "runner-a", 9)):
            seen.setdefault(index, []).append(decision.delay)
    assert seen[0] == [0.0] * 60  # the first respawn is immediate, no jitter
    for index in range(1, 9):
        raw = EXPECTED_DELAYS[index]
        low, high = raw * 0.8, min(raw * 1.2, 60.0)
        delays = seen[index]
        assert all(low <= d <= high for d in delays), (index, min(delays), max(delays))
        assert len(set(delays)) > 25  # really random (at the cap, half the draws clip to 60)
        if high > raw:  # both sides of the raw delay are used
            assert min(delays) < raw < max(delays)
        else:
            assert delays.count(60.0) > 10 and min(delays) < 50.0


def test_backoff_resets_after_sixty_seconds_healthy(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    crash_loop(sup, clock, "runner-a", 3)  # delays 0, 1, 2
    assert sup.state_of("runner-a").consecutive_deaths == 3
    for _ in range(59):
        sup.record_healthy("runner-a")
        clock.advance(1.0)
    # 59 s healthy: not yet
    assert sup.state_of("runner-a").consecutive_deaths == 3
    clock.advance(1.0)
    sup.record_healthy("runner-a")
    assert sup.state_of("runner-a").consecutive_deaths == 0
    assert sup.record_death("runner-a", "pid gone").action is Action.RESPAWN_NOW


def test_unhealthy_tick_restarts_the_healthy_period(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    crash_loop(sup, clock, "runner-a", 3)
    sup.record_healthy("runner-a")
    clock.advance(40)
    sup.record_unhealthy("runner-a")  # went stale for a while
    clock.advance(1)
    sup.record_healthy("runner-a")
    clock.advance(40)
    sup.record_healthy("runner-a")
    assert sup.state_of("runner-a").consecutive_deaths == 3
    assert sup.record_death("runner-a", "hung").delay == 4.0


def test_quarantine_at_the_fifth_death_within_ten_minutes(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    actions = []
    for _ in range(5):
        actions.append(sup.record_death("runner-a", "pid gone").action)
        sup.record_respawn("runner-a")
        clock.advance(149.0)  # 5 deaths over 596 s
    assert actions[:4] == [Action.RESPAWN_NOW] + [Action.RESPAWN_AT] * 3
    assert actions[4] is Action.QUARANTINE
    state = sup.state_of("runner-a")
    assert state.quarantined
    assert "5 deaths within 600s" in state.quarantine_reason
    clock.advance(3600)
    assert not sup.may_respawn("runner-a")
    assert sup.due_respawns() == []
    sup.record_healthy("runner-a")  # never lifts a quarantine
    assert sup.state_of("runner-a").quarantined


def test_no_quarantine_when_five_deaths_spread_over_eleven_minutes(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    actions = []
    for _ in range(5):
        actions.append(sup.record_death("runner-a", "pid gone").action)
        sup.record_respawn("runner-a")
        clock.advance(165.0)  # deaths at 0, 165, 330, 495, 660 s
    assert Action.QUARANTINE not in actions
    assert not sup.state_of("runner-a").quarantined


@pytest.mark.parametrize(("exit_code", "quarantined"), [(78, True), (2, True), (1, False),
                                                         (None, False), (137, False)])
def test_do_not_retry_exit_code_quarantines_at_once(state_dir: Path, exit_code: int | None,
                                                   quarantined: bool) -> None:
    sup, _ = make(state_dir)
    decision = sup.record_death("orchestrator-a", "exited", exit_code)
    assert (decision.action is Action.QUARANTINE) == quarantined
    assert sup.may_respawn("orchestrator-a") == (not quarantined)
    if quarantined:
        assert f"exit code {exit_code}" in sup.state_of("orchestrator-a").quarantine_reason


def test_do_not_retry_set_is_configurable(state_dir: Path) -> None:
    sup, _ = make(state_dir, PolicyConfig(do_not_retry_exit_codes=frozenset({42})))
    assert sup.record_death("runner-a", "exited", 78).action is Action.RESPAWN_NOW
    assert sup.record_death("runner-b", "exited", 42).action is Action.QUARANTINE


def test_clear_lifts_quarantine_and_makes_the_agent_due(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    crash_loop(sup, clock, "runner-a", 5)
    assert sup.state_of("runner-a").quarantined
    cleared = sup.clear("runner-a")
    assert not cleared.quarantined and cleared.deaths == () and cleared.consecutive_deaths == 0
    assert sup.due_respawns() == ["runner-a"]
    sup.record_respawn("runner-a")
    # the deaths before the clear no longer count: a new death starts from scratch
    assert sup.record_death("runner-a", "pid gone").action is Action.RESPAWN_NOW


def test_clear_releases_a_quarantined_identity(state_dir: Path) -> None:
    from attractor.store import identities

    state = StateDir(state_dir)
    identities.create_identity(state, "runner", "a")
    identities.set_status(state, "runner", "a", "quarantined", reason="5 deaths")
    sup, _ = make(state_dir)
    sup.record_death("runner-a", "exited", 78)
    sup.clear("runner-a")
    assert identities.get(state, "runner", "a").status.value == "respawning"


def test_seen_alive_after_a_death_no_longer_awaits_respawn(state_dir: Path) -> None:
    sup, _ = make(state_dir)
    sup.record_death("runner-a", "tmux query failed")
    sup.record_healthy("runner-a")  # it was alive after all: no second copy
    assert sup.due_respawns() == []


def test_escalation_pauses_all_respawns_with_one_alert(
        state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    sup, clock = make(state_dir)
    caplog.set_level(logging.WARNING, logger="attractor.engines.supervision")
    first = [sup.record_death(f"runner-{n}", "pid gone") for n in "abc"]
    assert [d.action for d in first] == [Action.RESPAWN_NOW] * 3
    clock.advance(59.0)
    fourth = sup.record_death("orchestrator-d", "pid gone")
    assert fourth.action is Action.PAUSED
    assert fourth.at == pytest.approx(clock.now + 120.0)
    more = [sup.record_death(f"runner-{n}", "pid gone") for n in "efg"]
    assert all(d.action is Action.PAUSED for d in more)
    assert sup.due_respawns() == []
    assert not sup.may_respawn("runner-a")
    # one alert: one log line, one record
    alerts = [r for r in caplog.records if "ESCALATION" in r.getMessage()]
    assert len(alerts) == 1
    data = json.loads((state_dir / "supervision" / "escalation.json").read_text())
    assert len(data["alerts"]) == 1
    assert data["alerts"][0]["agents"] == ["orchestrator-d", "runner-a", "runner-b", "runner-c"]
    # the guardian is exempt: it must come back to sort things out
    assert sup.record_death("guardian-main", "pid gone").action is Action.RESPAWN_NOW
    assert sup.may_respawn("guardian-main")
    # the cooldown lifts the pause
    clock.advance(119.9)
    assert sup.due_respawns() == ["guardian-main"]
    clock.advance(0.1)
    assert sup.escalation() is None
    assert len(sup.due_respawns()) == 8


def test_a_new_escalation_after_the_cooldown_raises_a_second_alert(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    for n in "abcd":
        sup.record_death(f"runner-{n}", "pid gone")
    clock.advance(120.0)
    assert sup.escalation() is None
    for n in "efg":
        assert sup.record_death(f"runner-{n}", "pid gone").action is Action.RESPAWN_NOW
    assert sup.record_death("runner-h", "pid gone").action is Action.PAUSED
    assert [a.agents for a in sup.alerts()] == [
        ("runner-a", "runner-b", "runner-c", "runner-d"),
        ("runner-e", "runner-f", "runner-g", "runner-h"),
    ]


def test_escalation_needs_four_distinct_agents_within_the_window(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    for _ in range(4):  # one agent dying repeatedly is not an escalation
        sup.record_death("runner-a", "pid gone")
        sup.record_respawn("runner-a")
    for n in "bc":
        sup.record_death(f"runner-{n}", "pid gone")
    clock.advance(60.0)  # runner-a..c deaths leave the 60 s window
    assert sup.record_death("runner-d", "pid gone").action is Action.RESPAWN_NOW
    assert sup.escalation() is None
    assert sup.alerts() == ()


def test_clear_escalation_resumes_and_forgets_the_recent_deaths(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    for n in "abcd":
        sup.record_death(f"runner-{n}", "pid gone")
    assert sup.escalation() is not None
    ended = sup.clear_escalation()
    assert ended is not None and ended.cleared_at == clock.now
    assert sup.due_respawns() == ["runner-a", "runner-b", "runner-c", "runner-d"]
    # one more death right after the clear does not re-trigger on the old deaths
    assert sup.record_death("runner-e", "pid gone").action is Action.RESPAWN_NOW
    assert len(sup.alerts()) == 1
    assert sup.alerts()[0].cleared_at is not None
    assert sup.clear_escalation() is None


def test_a_new_supervisor_continues_the_counts(state_dir: Path) -> None:
    clock = FakeClock()
    first, _ = make(state_dir, clock=clock)
    crash_loop(first, clock, "runner-a", 3)
    for n in "xyz":
        first.record_death(f"runner-{n}", "pid gone")
    # the guardian restarts: a new Supervisor over the same directory
    second, _ = make(state_dir, clock=clock)
    assert second.state_of("runner-a").consecutive_deaths == 3
    assert second.state_of("runner-a").restarts == 3
    clock.advance(1.0)
    decision = second.record_death("runner-a", "pid gone")
    # 4th death in a row would be 4 s, but 4 distinct agents died within 60 s: paused
    assert decision.action is Action.PAUSED
    assert second.state_of("runner-a").next_restart_at == pytest.approx(clock.now + 4.0, abs=1e-5)
    assert second.escalation() is not None
    third, _ = make(state_dir, clock=clock)
    clock.advance(1.0)
    assert third.record_death("runner-a", "pid gone").action is Action.QUARANTINE


def test_corrupt_agent_file_is_moved_aside_and_policy_starts_fresh(
        state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    sup, clock = make(state_dir)
    crash_loop(sup, clock, "runner-a", 3)
    path = state_dir / "supervision" / "runner-a.json"
    path.write_text('{"schema": 1, "agent_id": "runner-a", "deaths": [')
    fresh, _ = make(state_dir, clock=clock)
    decision = fresh.record_death("runner-a", "pid gone")
    assert decision.action is Action.RESPAWN_NOW
    assert fresh.state_of("runner-a").consecutive_deaths == 1
    assert len(fresh.problems) == 1 and fresh.problems[0].path == path
    assert len(list(path.parent.glob("runner-a.json.corrupt-*"))) == 1
    assert any("corrupt state file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", [
    "[]",
    '{"schema": 99}',
    '{"schema": 1, "agent_id": "runner-b", "deaths": "many"}',
    '{"schema": 1, "agent_id": "runner-b", "deaths": [], "consecutive_deaths": -1}',
], ids=["not-object", "other-schema", "deaths-not-list", "negative-count"])
def test_invalid_agent_records_are_moved_aside(state_dir: Path, content: str) -> None:
    sup, _ = make(state_dir)
    sup.record_death("runner-b", "pid gone")
    path = state_dir / "supervision" / "runner-b.json"
    path.write_text(content)
    assert sup.all_states() == []
    assert sup.state_of("runner-b").deaths == ()
    assert len(sup.problems) == 1
    assert not path.exists() and len(list(path.parent.glob("*.corrupt-*"))) == 1


def test_an_agent_record_with_an_unknown_field_or_another_agents_name_is_moved_aside(state_dir: Path) -> None:
    sup, _ = make(state_dir)
    sup.record_death("runner-b", "pid gone")
    path = state_dir / "supervision" / "runner-b.json"
    good = json.loads(path.read_text())
    for bad, problem in (({**good, "extra": 1}, "unknown field(s) extra"),
                         ({**good, "agent_id": "runner-a"}, "names 'runner-a', not the file name")):
        path.write_text(json.dumps(bad))
        fresh, _ = make(state_dir)
        assert fresh.state_of("runner-b").deaths == ()
        assert len(fresh.problems) == 1 and problem in fresh.problems[0].problem
        assert not path.exists()


def test_corrupt_escalation_file_never_crashes(state_dir: Path) -> None:
    sup, _ = make(state_dir)
    sup.record_death("runner-a", "pid gone")
    (state_dir / "supervision" / "escalation.json").write_text("garbage")
    assert sup.may_respawn("runner-a")
    assert sup.record_death("runner-b", "pid gone").action is Action.RESPAWN_NOW
    assert len(sup.problems) == 1


def test_records_hold_iso_times_and_schema(state_dir: Path) -> None:
    sup, _ = make(state_dir)
    sup.record_death("runner-a", "pid gone", 137)
    data = json.loads((state_dir / "supervision" / "runner-a.json").read_text())
    assert data["schema"] == 1
    assert data["deaths"][0]["at"].endswith("Z") and data["deaths"][0]["exit_code"] == 137
    assert (state_dir / "supervision").stat().st_mode & 0o777 == 0o700


# --- the CLI --------------------------------------------------------------------------------


def test_agent_list_on_a_missing_state_dir_creates_nothing(state_dir: Path) -> None:
    result = run_cli(["agent", "list", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"schema": 1, "escalation": None, "agents": [],
                                         "evicted_hidden": 0, "problems": []}
    assert not state_dir.exists()


def test_agent_list_and_clear(state_dir: Path) -> None:
    sup = Supervisor(state_dir)  # the real clock: the CLI runs in another process
    sup.record_death("orchestrator-impl_auth", "exited", 78)
    sup.record_death("runner-impl_db", "pid gone")
    sup.record_respawn("runner-impl_db")
    listed = run_cli(["agent", "list", "--json"])
    assert listed.returncode == 0, listed.stderr
    rows = {r["agent_id"]: r for r in json.loads(listed.stdout)["agents"]}
    assert rows["orchestrator-impl_auth"]["state"] == "quarantined"
    assert "exit code 78" in rows["orchestrator-impl_auth"]["quarantine_reason"]
    assert rows["runner-impl_db"] | {"last_death": None, "healthy_since": None} == {
        "agent_id": "runner-impl_db", "state": "running", "quarantined": False,
        "quarantine_reason": "", "quarantined_at": None, "deaths_in_window": 1,
        "consecutive_deaths": 1, "restarts": 1, "awaiting_respawn": False,
        "next_restart_at": rows["runner-impl_db"]["next_restart_at"], "healthy_since": None,
        "last_death": None,
        # the registry's fields: no identity record (the role and name come from the agent id)
        "role": "runner", "name": "impl_db", "status": None, "stored_status": None, "status_reason": None,
        "epoch": None, "pid": None, "last_heartbeat": None, "heartbeat_age": None, "heartbeat_interval": None}
    table = run_cli(["agent", "list"])
    assert table.stdout.splitlines()[0].split()[:3] == ["AGENT", "STATE", "DEATHS/10m"]
    assert "quarantined" in table.stdout

    cleared = run_cli(["agent", "clear", "orchestrator", "impl_auth"])
    assert cleared.returncode == 0, cleared.stderr
    assert "quarantine lifted" in cleared.stdout
    assert not sup.state_of("orchestrator-impl_auth").quarantined
    assert sup.due_respawns() == ["orchestrator-impl_auth"]


def test_agent_clear_bad_input_exits_2_and_changes_nothing(state_dir: Path) -> None:
    sup = Supervisor(state_dir)
    sup.record_death("runner-a", "exited", 78)
    before = {p.name: p.read_bytes() for p in (state_dir / "supervision").iterdir()}
    for args, expected in [
        (["agent", "clear", "runner", "nobody"], "supervised agent 'runner-nobody' not found"),
        (["agent", "clear", "wizard", "a"], "unknown role 'wizard'"),
        (["agent", "clear", "runner", "../a"], "invalid name"),
        (["agent", "clear"], "give ROLE NAME, or --escalation"),
    ]:
        result = run_cli(args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
        assert result.stdout == ""
    after = {p.name: p.read_bytes() for p in (state_dir / "supervision").iterdir()}
    assert after == before


def test_agent_clear_escalation(state_dir: Path) -> None:
    sup = Supervisor(state_dir)
    for n in "abcd":
        sup.record_death(f"runner-{n}", "pid gone")
    listed = run_cli(["agent", "list"])
    assert listed.stdout.startswith("ESCALATION: 4 agents died within 60s")
    result = run_cli(["agent", "clear", "--escalation"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "escalation cleared; respawns resume"
    assert sup.escalation() is None
    assert len(sup.due_respawns()) == 4


def test_a_death_seen_again_is_not_counted_again(state_dir: Path) -> None:
    sup, clock = make(state_dir)
    first = sup.record_death("runner-a", "runner exited", key="2:100:5")
    assert first.action is Action.RESPAWN_NOW
    sup.record_death("runner-a", "runner exited", key="3:101:6")  # a second death: backoff 1 s
    repeats = []
    for _ in range(20):  # every tick of the backoff sees the same dead incarnation
        clock.advance(0.2)
        repeats.append(sup.record_death("runner-a", "runner exited", key="3:101:6"))
    state = sup.state_of("runner-a")
    assert len(state.deaths) == 2 and state.consecutive_deaths == 2 and not state.quarantined
    assert repeats[0].action is Action.RESPAWN_AT and repeats[-1].action is Action.RESPAWN_NOW
    assert "already recorded" in repeats[0].reason
    # keys survive a new supervisor (the guardian restarted)
    again, _ = make(state_dir, clock=clock)
    again.record_death("runner-a", "runner exited", key="3:101:6")
    assert len(again.state_of("runner-a").deaths) == 2


def test_a_death_that_does_not_escalate_is_still_a_death(state_dir: Path) -> None:
    sup, _ = make(state_dir, PolicyConfig(jitter=0.0, escalation_agents=1))
    for name in "abc":
        decision = sup.record_death(f"runner-{name}", "ended while starting", escalate=False)
        assert decision.action is Action.RESPAWN_NOW
    assert sup.escalation() is None and sup.alerts() == ()
    assert all(len(sup.state_of(f"runner-{n}").deaths) == 1 for n in "abc")
    sup.record_death("runner-d", "pid gone")
    assert sup.record_death("runner-e", "pid gone").action is Action.PAUSED  # counted deaths still do


def test_the_start_up_grace_follows_the_measured_times_within_floor_and_ceiling(state_dir: Path) -> None:
    config = PolicyConfig(startup_floor=10.0, startup_ceiling=100.0, startup_factor=3.0, startup_percentile=0.95)
    sup, _ = make(state_dir, config)
    assert sup.startup_grace("runner") == 10.0
    for epoch, seconds in enumerate([1.0] * 18 + [5.0, 8.0], start=1):
        assert sup.record_startup("runner-n", epoch, seconds)
    assert not sup.record_startup("runner-n", 1, 99.0)  # once per incarnation
    assert sup.startup_grace("runner") == 15.0  # p95 of 20 samples is the 19th: 5 s, x3
    assert sup.startup_grace("launcher") == 10.0
    for epoch in range(21, 60):
        sup.record_startup("runner-n", epoch, 50.0)
    assert sup.startup_grace("runner") == 100.0
    assert len(sup.startup_times().samples("runner")) == 50  # the newest are kept
    data = json.loads((state_dir / "supervision" / "startup.json").read_text())
    assert data["schema"] == 1 and data["layers"]["runner"][-1]["epoch"] == 59
    assert sup.all_states() == []  # not an agent's record
