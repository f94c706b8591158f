"""Supervision in the loops: turn identity records and one batched tmux query into
observations, classify them (`supervision.classify`) and apply the respawn policy
(`supervision.Supervisor`). Used by the guardian (for runners), the runner (for its
orchestrator) and the launcher (for the guardian), so all three follow one rule.

Timing: the loops sleep on the pidfds of the processes they supervise (`procs.DeathWatch`), so a
death is seen when it happens, and look round every 0.2-0.25 s while something is starting or
dying, every 5 s while all is up (the runner also when its agent prints or gets a message); a
control process whose heartbeat is older than 3 of its role's intervals (15 s) is stale and is
ended so that it is respawned; an agent whose pane has been quiet for
`hung_after` (10 min) is hung and is ended likewise.

Start-up: a control process whose identity is still `spawning` has not sent a heartbeat yet and
is judged by its start-up instead (`supervision.classify`): the grace is measured from the
spawn -> first heartbeat times of its layer that this watch records (`Supervisor.record_startup`,
once per incarnation, read from the identity's history), and past the grace it must be making
progress (its CPU time advancing, or runnable). Ending such a process for staleness is not a
crash for the escalation rule: a loaded machine must not pause every respawn because its
processes start slowly. A death is recorded once per incarnation (`death_key`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal as signal_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attractor import clock, procs
from attractor.engines.prompts import PromptRule
from attractor.engines.supervision import (
    CONTROL_ROLES,
    Action,
    AgentObservation,
    Decision,
    Health,
    HealthReport,
    PolicyConfig,
    Supervisor,
    classify,
)
from attractor.errors import AttractorError, BadInputError
from attractor.store import identities
from attractor.store.statedir import StateDir
from attractor.tmux import PaneInfo

logger = logging.getLogger(__name__)

SUPERVISED = (identities.S.SPAWNING, identities.S.ACTIVE, identities.S.STALE)
POLICY_ENV = "ATTRACTOR_POLICY"


def policy_from_env(**overrides: float) -> PolicyConfig:
    """The supervision policy, with numbers overridden by `$ATTRACTOR_POLICY`
    (`name=value,name=value`, e.g. `escalation_cooldown=30,quarantine_deaths=8`) and then by
    `overrides`. A bad entry is a clear error naming it."""
    values: dict[str, float] = {}
    known = {f.name: f.type for f in dataclasses.fields(PolicyConfig)}
    for item in filter(None, (part.strip() for part in os.environ.get(POLICY_ENV, "").split(","))):
        key, sep, raw = item.partition("=")
        kind = known.get(key.strip())
        if not sep or kind not in ("float", "int"):
            numeric = ", ".join(k for k, t in known.items() if t in ("float", "int"))
            raise BadInputError(f"${POLICY_ENV} entry {item!r}", f"expected NAME=NUMBER with NAME one of: {numeric}")
        try:
            values[key.strip()] = int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise BadInputError(f"${POLICY_ENV} entry {item!r}", f"{raw!r} is not a number") from None
    values.update(overrides)
    return PolicyConfig(**values)  # type: ignore[arg-type]


def observe(ident: identities.Identity, panes: Mapping[str, PaneInfo] | None,
            pane_text: str | None = None) -> AgentObservation:
    """An observation from an identity record and the batched pane list (None: no pane check)."""
    pane = panes.get(ident.pane_id) if (panes is not None and ident.pane_id) else None
    has_pane = panes is not None and bool(ident.pane_id)
    return AgentObservation(
        agent_id=ident.agent_id, role=ident.role, spawned_at=clock.parse_iso(ident.created_at),
        pid=ident.pid, pid_alive=procs.pid_alive(ident.pid),
        pane_present=(pane is not None) if has_pane else True,
        pane_dead=bool(pane and pane.dead),
        last_heartbeat=clock.parse_iso(ident.last_heartbeat) if ident.last_heartbeat else None,
        last_pane_activity=pane.last_activity if pane is not None and pane.last_activity else None,
        pane_text_tail=pane_text,
    )


def death_key(ident: identities.Identity) -> str:
    """Names the death of this incarnation: the same dead process seen on many ticks, or by a
    restarted supervisor, is one death."""
    return f"{ident.epoch}:{ident.pid or '-'}:{ident.pid_start if ident.pid_start is not None else '-'}"


def first_heartbeat_after_spawn(ident: identities.Identity) -> float | None:
    """Seconds from this incarnation's registration to its first heartbeat (its move from
    spawning to active by a heartbeat, in the identity's history), or None if not found."""
    created = clock.parse_iso(ident.created_at)
    for entry in reversed(ident.history):
        if entry.get("to") == identities.S.SPAWNING.value:
            return None  # reached this incarnation's start without finding a heartbeat
        if entry.get("from") == identities.S.SPAWNING.value and entry.get("to") == identities.S.ACTIVE.value:
            try:
                return max(0.0, clock.parse_iso(str(entry.get("at"))) - created)
            except ValueError:
                return None
    return None


def cpu_progress(pid: int | None, start: int | None) -> tuple[int, bool] | None:
    """(CPU ticks used, runnable now) of the recorded process (its own and its reaped
    children's), or None when it is not that process or there is no /proc."""
    if not pid:
        return None
    try:
        raw = (procs.PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 1:].split()
    try:
        if start is not None and int(fields[19]) != start:
            return None
        return sum(int(f) for f in fields[11:15]), fields[0] == b"R"
    except (IndexError, ValueError):
        return None


def count_starting(state: StateDir, role: str, names: Sequence[str]) -> int:
    """How many of the `role` processes named are starting now: registered (spawning) and not
    known to be dead. Spawners pace themselves by this (`PolicyConfig.max_starting`)."""
    count = 0
    for name in names:
        try:
            ident = identities.find(state, role, name)
        except (AttractorError, ValueError):  # an odd name, a corrupt record: not starting
            continue
        if ident is not None and ident.status is identities.S.SPAWNING and (
                ident.pid is None or ident.may_be_alive):
            count += 1
    return count


def end_process(pid: int | None, start: int | None, why: str) -> None:
    """End a stale or hung process by its recorded pid and start time, so the supervisor sees
    it dead; a pid that now belongs to another process is left alone."""
    if not pid or pid == os.getpid():
        return
    if procs.signal_if_same(pid, start, signal_module.SIGKILL):
        logger.warning("ended pid %s: %s", pid, why)
    else:
        logger.warning("pid %s is no longer the recorded process; not signalled (%s)", pid, why)


def state_disk_full(state: StateDir) -> bool:
    """The state directory's file system has no block left for us (statvfs)."""
    try:
        vfs = os.statvfs(state.root)
    except OSError:
        return False
    return vfs.f_bavail == 0 or (vfs.f_favail == 0 and vfs.f_files > 0)


def health_of(ident: identities.Identity, panes: Mapping[str, PaneInfo] | None) -> HealthReport:
    """How an agent is doing now, by the same rules the loops use, without recording anything."""
    return classify(observe(ident, panes), clock.SYSTEM_CLOCK.time(), policy_from_env())


@dataclass
class Verdict:
    report: HealthReport
    decision: Decision | None = None  # set when a death was recorded by this check


class Watch:
    """Classify one agent per call and keep its identity and supervision records in step.

    Call `check` only for identities in a supervised status (spawning, active, stale): a death
    is recorded once, the identity moves to crashed (or quarantined), and the caller respawns
    when `may_respawn` says so, then calls `respawned`."""

    def __init__(self, state: StateDir, supervisor: Supervisor | None = None,
                 rules: Sequence[PromptRule] | None = None) -> None:
        self.state = state
        self.supervisor = supervisor or Supervisor(state, policy_from_env())
        self.rules = rules  # prompt rules (the agent's own dialogs first); None: the shared table
        self._startups_recorded: set[tuple[str, int]] = set()
        self._progress: dict[str, tuple[str, int, float]] = {}  # agent -> (death key, ticks, seen at)
        self._ended_starting: set[str] = set()  # death keys of processes ended while starting

    def check(self, ident: identities.Identity, panes: Mapping[str, PaneInfo] | None,
              pane_text: str | None = None, exit_code: int | None = None) -> Verdict:
        now = clock.SYSTEM_CLOCK.time()
        agent = ident.agent_id
        age = now - clock.parse_iso(ident.created_at)
        if ident.pid is None and age > self.supervisor.config.startup_grace:
            # registered, but its spawner died before a process was recorded: it never started
            report = HealthReport(Health.DEAD, f"no process recorded {age:.1f}s after it was registered")
            return Verdict(report, self.record_death(ident, report.reason))
        observation = observe(ident, panes, pane_text)
        starting = ident.role in CONTROL_ROLES and ident.status is identities.S.SPAWNING
        if starting:
            observation = dataclasses.replace(
                observation, starting=True, startup_grace=self.supervisor.startup_grace(ident.role),
                last_progress=self._last_progress(ident, now))
        elif ident.role in CONTROL_ROLES:
            self._note_startup(ident)
        report = classify(observation, now, self.supervisor.config, self.rules)
        if report.health is Health.STALE and state_disk_full(self.state):
            # a heartbeat that cannot be written is no sign of death: not judged while the state
            # directory's file system is full (the loops wait for space, see engines/space.py)
            report = HealthReport(Health.ALIVE, f"{report.reason}, but the state directory's disk is full")
        if report.health is Health.ALIVE:
            self.supervisor.record_healthy(agent)
        elif report.health in (Health.STALE, Health.HUNG):
            self.supervisor.record_unhealthy(agent)
            if starting:
                self._ended_starting.add(death_key(ident))
            end_process(ident.pid, ident.pid_start, f"{agent} is {report.health.value}: {report.reason}")
        elif report.health is Health.BLOCKED:
            self.supervisor.record_unhealthy(agent)
        elif report.health is Health.DEAD:
            return Verdict(report, self.record_death(ident, report.reason, exit_code))
        return Verdict(report)

    def _last_progress(self, ident: identities.Identity, now: float) -> float | None:
        """When the starting process was last seen making progress (CPU time advancing, or
        runnable), by this watch; None if it never was."""
        key = death_key(ident)
        seen = cpu_progress(ident.pid, ident.pid_start)
        last = self._progress.get(ident.agent_id)
        if last is not None and last[0] != key:
            last = None
        if seen is None:
            return last[2] if last is not None else None
        ticks, runnable = seen
        if last is None or ticks != last[1] or runnable:
            self._progress[ident.agent_id] = (key, ticks, now)
            return now
        return last[2]

    def _note_startup(self, ident: identities.Identity) -> None:
        """Record how long this incarnation took to send its first heartbeat, once."""
        mark = (ident.agent_id, ident.epoch)
        if mark in self._startups_recorded:
            return
        self._startups_recorded.add(mark)
        self._progress.pop(ident.agent_id, None)
        seconds = first_heartbeat_after_spawn(ident)
        if seconds is not None:
            try:
                self.supervisor.record_startup(ident.agent_id, ident.epoch, seconds)
            except AttractorError as exc:
                logger.info("recording the start-up of %s: %s", ident.agent_id, exc)

    def record_death(self, ident: identities.Identity, cause: str, exit_code: int | None = None) -> Decision:
        """Record the death of this incarnation of the agent, once however often it is seen."""
        try:
            if ident.status in SUPERVISED:
                identities.mark_crashed(self.state, ident.role, ident.name, reason=cause)
        except AttractorError as exc:
            logger.info("%s", exc)
        key = death_key(ident)
        escalate = key not in self._ended_starting
        if not escalate:
            cause = f"{cause} (ended by its supervisor while starting)"
        decision = self.supervisor.record_death(ident.agent_id, cause, exit_code, key=key, escalate=escalate)
        if decision.action is Action.QUARANTINE:
            try:
                identities.mark_quarantined(self.state, ident.role, ident.name, reason=decision.reason)
            except AttractorError as exc:
                logger.info("%s", exc)
        return decision

    def may_respawn(self, agent_id: str) -> bool:
        return self.supervisor.may_respawn(agent_id)

    def quarantined(self, agent_id: str) -> bool:
        return self.supervisor.state_of(agent_id).quarantined

    def respawned(self, agent_id: str) -> None:
        self.supervisor.record_respawn(agent_id)
