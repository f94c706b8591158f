"""The registry view of identity records (`identities.judge`, `registry_view`): down and evicted
judged at read time from the heartbeat and the clock, and `attractor agent list` showing it, as
real processes over a real state directory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from attractor import clock, names
from attractor.engines.supervision import PolicyConfig, Supervisor
from attractor.states import IdentityStatus as S
from attractor.store import atomic, identities
from attractor.store.identities import ShownStatus as V
from attractor.store.statedir import StateDir
from tests.helpers import retry_until, run_cli

# the stored statuses reached from spawning through the checked moves
PATHS: dict[S, tuple[S, ...]] = {
    S.SPAWNING: (), S.ACTIVE: (S.ACTIVE,), S.STALE: (S.STALE,), S.CRASHED: (S.CRASHED,),
    S.RESPAWNING: (S.CRASHED, S.RESPAWNING), S.TERMINATED: (S.TERMINATED,),
    S.QUARANTINED: (S.QUARANTINED,),
}
SUPERVISION_FIELDS = {"agent_id", "state", "quarantined", "quarantine_reason", "quarantined_at",
                      "deaths_in_window", "consecutive_deaths", "restarts", "awaiting_respawn",
                      "next_restart_at", "healthy_since", "last_death"}
REGISTRY_FIELDS = {"role", "name", "status", "stored_status", "status_reason", "epoch", "pid",
                   "last_heartbeat", "heartbeat_age", "heartbeat_interval"}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def register(state: StateDir, role: str, name: str, status: S = S.ACTIVE, *, pid: int | None = None,
             age: float = 0.0) -> identities.Identity:
    """A record made by the registry's own functions, moved to `status` by checked moves, its
    heartbeat `age` seconds old (written back through the store as an older stamp)."""
    identities.create_identity(state, role, name, pid=pid)
    for step in PATHS[status]:
        if step is S.ACTIVE:
            identities.update_liveness(state, role, name)
        else:
            identities.set_status(state, role, name, step, "test")
    record = identities.get(state, role, name)
    if age:
        record = dataclasses.replace(record, last_heartbeat=clock.iso(time.time() - age))
        atomic.write_json_atomic(identities.path_for(state, role, name), record.to_json())
    return record


# --------------------------------------------------------------------------- the judgement


class Case(NamedTuple):
    test_id: str
    role: str
    status: S
    age: float  # heartbeat age in seconds at the moment judged
    process: str  # "none" (no pid recorded), "live" (this test's process) or "dead"
    shown: V
    reason: str  # a part of the reason given ("" : no reason)


CASES = [
    Case("fresh", "runner", S.ACTIVE, 0.5, "live", V.ACTIVE, ""),
    Case("future-stamp", "runner", S.ACTIVE, -30.0, "none", V.ACTIVE, ""),
    Case("just-under-2-intervals", "runner", S.ACTIVE, 9.9, "none", V.ACTIVE, ""),
    Case("just-over-2-intervals", "runner", S.ACTIVE, 10.1, "none", V.DOWN, "more than 2 x 5s"),
    Case("just-under-3-intervals", "runner", S.ACTIVE, 14.9, "none", V.DOWN, "no heartbeat for 14.9s (more than 2 x"),
    Case("just-over-3-intervals", "runner", S.ACTIVE, 15.1, "none", V.EVICTED, "more than 3 x 5s"),
    Case("spawning-is-judged", "guardian", S.SPAWNING, 10.1, "none", V.DOWN, "2 x 5s"),
    Case("stale-is-judged", "launcher", S.STALE, 15.1, "live", V.EVICTED, "3 x 5s"),
    Case("stale-fresh-shows-stale", "launcher", S.STALE, 1.0, "live", V.STALE, ""),
    Case("orchestrator-interval", "orchestrator", S.ACTIVE, 590.0, "none", V.ACTIVE, ""),
    Case("orchestrator-down", "orchestrator", S.ACTIVE, 605.0, "none", V.DOWN, "more than 2 x 300s"),
    Case("orchestrator-evicted", "orchestrator", S.ACTIVE, 905.0, "none", V.EVICTED, "3 x 300s"),
    Case("terminated-never-down", "runner", S.TERMINATED, 86400.0, "dead", V.TERMINATED, ""),
    Case("quarantined-never-down", "runner", S.QUARANTINED, 86400.0, "dead", V.QUARANTINED, ""),
    Case("crashed-never-down", "runner", S.CRASHED, 86400.0, "dead", V.CRASHED, ""),
    Case("respawning-never-down", "runner", S.RESPAWNING, 86400.0, "dead", V.RESPAWNING, ""),
    Case("dead-pid-fresh-is-down", "runner", S.ACTIVE, 0.5, "dead", V.DOWN, "is gone"),
    Case("dead-pid-spawning-is-down", "orchestrator", S.SPAWNING, 1.0, "dead", V.DOWN, "is gone"),
    Case("dead-pid-old-is-evicted", "runner", S.ACTIVE, 15.1, "dead", V.EVICTED, "is gone"),
    Case("no-interval-role-never-down-by-age", "user", S.ACTIVE, 86400.0, "live", V.ACTIVE, ""),
    Case("no-interval-role-dead-pid", "user", S.ACTIVE, 86400.0, "dead", V.DOWN, "is gone"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.test_id)
def test_judge(case: Case, state: StateDir) -> None:
    pid = {"none": None, "live": os.getpid(), "dead": dead_pid()}[case.process]
    record = register(state, case.role, "x", case.status, pid=pid)
    now = clock.parse_iso(record.last_heartbeat) + case.age
    entry = identities.judge(record, now, gone=identities.process_gone(record))
    assert entry.status is case.shown, entry.reason
    assert (case.reason in entry.reason) if case.reason else entry.reason == ""
    assert entry.heartbeat_age == pytest.approx(case.age)
    assert entry.interval == identities.HEARTBEAT_INTERVALS[case.role]
    if case.process == "dead" and case.status in identities.BEATING_STATUSES:
        assert f"pid {pid} is gone" in entry.reason
    # judging reads and writes nothing: the same record at the same moment, the same answer
    assert identities.get(state, case.role, "x") == record
    assert identities.judge(record, now, gone=identities.process_gone(record)) == entry


def test_every_role_has_an_interval_and_every_stored_status_can_be_shown() -> None:
    assert set(identities.HEARTBEAT_INTERVALS) == set(names.ROLES)
    assert {V.stored(s).value for s in S} == {s.value for s in S}
    assert {v.value for v in V} - {s.value for s in S} == {"down", "evicted"}
    # the supervisor judges each control process in the interval it beats by
    for role in ("launcher", "guardian", "runner"):
        assert PolicyConfig().heartbeat_for(role) == identities.HEARTBEAT_INTERVALS[role]
    assert PolicyConfig().heartbeat_for("merge-queue") == identities.CONTROL_HEARTBEAT_INTERVAL == max(
        identities.HEARTBEAT_INTERVALS[role] or 0.0 for role in ("launcher", "guardian", "runner"))
    assert PolicyConfig(heartbeat_interval=0.5).heartbeat_for("runner") == 0.5


def test_registry_view_checks_the_process_of_beating_records_only(state: StateDir) -> None:
    gone = dead_pid()
    register(state, "runner", "alive", pid=os.getpid())
    register(state, "runner", "lost", pid=gone)
    register(state, "runner", "done", S.TERMINATED, pid=gone)
    register(state, "runner", "quiet", age=10.5)
    view = {e.record.name: e for e in identities.registry_view(state)}
    assert {name: e.status for name, e in view.items()} == {
        "alive": V.ACTIVE, "done": V.TERMINATED, "lost": V.DOWN, "quiet": V.DOWN}
    assert view["lost"].to_json() | {"heartbeat_age": 0} == {
        "agent_id": "runner-lost", "role": "runner", "name": "lost", "status": "down",
        "stored_status": "active", "status_reason": f"pid {gone} is gone", "epoch": 1, "pid": gone,
        "last_heartbeat": view["lost"].record.last_heartbeat, "heartbeat_age": 0,
        "heartbeat_interval": 5.0}
    later = {e.record.name: e.status for e in identities.registry_view(state, now=time.time() + 3600)}
    assert later == {"alive": V.EVICTED, "done": V.TERMINATED, "lost": V.EVICTED, "quiet": V.EVICTED}


# --------------------------------------------------------------------------- attractor agent list


@pytest.fixture
def registry(state: StateDir) -> Iterator[dict[str, identities.Identity]]:
    """Records of every kind the listing tells apart, and one agent known only to the
    supervisor (it died; it has no identity record)."""
    made = {
        "orchestrator-fresh": register(state, "orchestrator", "fresh", pid=os.getpid()),
        "orchestrator-quiet": register(state, "orchestrator", "quiet", age=700),  # > 2 x 300 s
        "orchestrator-gone": register(state, "orchestrator", "gone", pid=dead_pid()),
        "runner-lost": register(state, "runner", "lost", age=3600),  # > 3 x 2 s
        "guardian-old": register(state, "guardian", "old", S.TERMINATED, age=86400),
        "launcher-held": register(state, "launcher", "held", S.QUARANTINED, age=86400),
    }
    Supervisor(state.root).record_death("runner-zz", "pid gone")
    yield made


def listing(*args: str) -> dict[str, Any]:
    result = run_cli(["agent", "list", "--json", *args])
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def shown(data: dict[str, Any]) -> dict[str, str | None]:
    return {row["agent_id"]: row["status"] for row in data["agents"]}


def test_agent_list_shows_down_and_leaves_evicted_out(registry: dict[str, identities.Identity]) -> None:
    data = listing()
    assert shown(data) == {
        "guardian-old": "terminated", "launcher-held": "quarantined", "orchestrator-fresh": "active",
        "orchestrator-gone": "down", "orchestrator-quiet": "down", "runner-zz": None}
    assert data["evicted_hidden"] == 1 and data["schema"] == 1 and data["problems"] == []
    rows = {row["agent_id"]: row for row in data["agents"]}
    assert all(set(row) == SUPERVISION_FIELDS | REGISTRY_FIELDS for row in rows.values())
    assert rows["orchestrator-quiet"]["stored_status"] == "active"
    assert "no heartbeat for 70" in rows["orchestrator-quiet"]["status_reason"]
    assert rows["orchestrator-gone"]["status_reason"] == f"pid {registry['orchestrator-gone'].pid} is gone"
    assert rows["orchestrator-fresh"]["heartbeat_interval"] == 300.0
    assert rows["orchestrator-fresh"]["state"] is None  # it never died: no supervision record
    assert rows["runner-zz"]["state"] == "respawn-due" and rows["runner-zz"]["role"] == "runner"

    everything = listing("--all")
    assert shown(everything)["runner-lost"] == "evicted" and everything["evicted_hidden"] == 0
    assert set(shown(everything)) == set(shown(data)) | {"runner-lost"}

    table = run_cli(["agent", "list"])
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["AGENT", "STATE", "DEATHS/10m", "RESTARTS", "NEXT", "RESTART", "STATUS",
                                "PID", "HEARTBEAT", "REASON"]
    cells = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert set(cells) == set(shown(data))
    assert cells["orchestrator-quiet"][5] == "down" and cells["orchestrator-fresh"][5] == "active"
    assert lines[-1] == "1 evicted agent left out (no heartbeat for more than 3 intervals); --all shows them"
    assert "runner-lost" not in table.stdout
    assert "runner-lost" in run_cli(["agent", "list", "--all"]).stdout


class Filter(NamedTuple):
    test_id: str
    args: list[str]
    agents: set[str]
    hidden: int


FILTERS = [
    Filter("status-down", ["--status", "down"], {"orchestrator-gone", "orchestrator-quiet"}, 0),
    Filter("status-evicted-needs-no-all", ["--status", "evicted"], {"runner-lost"}, 0),
    Filter("status-stored", ["--status", "terminated"], {"guardian-old"}, 0),
    Filter("status-active-is-the-shown-status", ["--status", "active"], {"orchestrator-fresh"}, 0),
    Filter("status-repeated", ["--status", "down", "--status", "quarantined"],
           {"orchestrator-gone", "orchestrator-quiet", "launcher-held"}, 0),
    Filter("role", ["--role", "runner"], {"runner-zz"}, 1),
    Filter("role-all", ["--role", "runner", "--all"], {"runner-zz", "runner-lost"}, 0),
    Filter("role-and-status", ["--role", "orchestrator", "--status", "down"], {"orchestrator-quiet",
                                                                              "orchestrator-gone"}, 0),
    Filter("nothing-matches", ["--role", "merge-queue"], set(), 0),
]


@pytest.mark.parametrize("case", FILTERS, ids=lambda c: c.test_id)
def test_agent_list_filters(case: Filter, registry: dict[str, identities.Identity]) -> None:
    data = listing(*case.args)
    assert set(shown(data)) == case.agents
    assert data["evicted_hidden"] == case.hidden
    table = run_cli(["agent", "list", *case.args])
    assert table.returncode == 0, table.stderr
    if not case.agents:
        assert table.stdout == f"no agent matches {' '.join(case.args)}\n"


class Bad(NamedTuple):
    test_id: str
    args: list[str]
    message: str


BAD = [
    Bad("unknown-status", ["--status", "dead"], "unknown status 'dead'; expected one of: spawning, active, "
        "stale, crashed, respawning, terminated, quarantined, down, evicted"),
    Bad("unknown-role", ["--role", "wizard"], "unknown role 'wizard'; expected one of: launcher"),
    Bad("status-without-value", ["--status"], "expected one argument"),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.test_id)
def test_agent_list_bad_input_is_one_line_exit_2_and_creates_nothing(case: Bad, state_dir: Path) -> None:
    for extra in ([], ["--json"]):
        result = run_cli(["agent", "list", *case.args, *extra])
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and case.message in result.stderr, result.stderr
        assert result.stdout == ""
    assert not state_dir.exists()


def test_agent_list_writes_no_record_and_find_stale_keeps_its_timeout(
        registry: dict[str, identities.Identity], state_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in (state_dir / "identities").glob("*.json")}
    assert listing("--all")["agents"]
    assert run_cli(["agent", "list"]).returncode == 0
    assert {p.name: p.read_bytes() for p in (state_dir / "identities").glob("*.json")} == before
    # find-stale: live records older than the timeout given, whatever the view shows
    stale = run_cli(["identity", "find-stale", "--timeout", "600", "--json"])
    assert stale.returncode == 0, stale.stderr
    assert [r["agent_id"] for r in json.loads(stale.stdout)["identities"]] == [
        "orchestrator-quiet", "runner-lost"]
    fresh = run_cli(["identity", "find-stale", "--timeout", "1000000", "--json"])
    assert json.loads(fresh.stdout)["identities"] == []


def test_a_real_process_that_dies_is_down_at_once(state: StateDir) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identities.create_identity(state, "runner", "work", pid=proc.pid)
        beat = run_cli(["identity", "update-liveness", "runner", "work", "--pid", str(proc.pid)])
        assert beat.returncode == 0, beat.stderr
        assert shown(listing()) == {"runner-work": "active"}
    finally:
        proc.kill()
        proc.wait()
    retry_until(lambda: not os.path.exists(f"/proc/{proc.pid}"), 5, what="the process gone")
    row = listing()["agents"][0]
    assert (row["status"], row["stored_status"]) == ("down", "active")
    assert row["status_reason"] == f"pid {proc.pid} is gone"
