"""Supervision in the loops: turn identity records and one batched tmux query into
observations, classify them (`supervision.classify`) and apply the respawn policy
(`supervision.Supervisor`). Used by the guardian (for runners), the runner (for its
orchestrator) and the launcher (for the guardian), so all three follow one rule.

Timing: at the loops' tick (0.2-0.25 s) a death is seen well within 1 s; a control process
whose heartbeat is older than 3 intervals (6 s) is stale and is ended so that it is respawned;
an agent whose pane has been quiet for `hung_after` (10 min) is hung and is ended likewise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal as signal_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attractor import clock, identities, procs
from attractor.errors import AttractorError, BadInputError
from attractor.prompts import PromptRule
from attractor.statedir import StateDir
from attractor.supervision import (
    Action,
    AgentObservation,
    Decision,
    Health,
    HealthReport,
    PolicyConfig,
    Supervisor,
    classify,
)
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
        pid=ident.pid, pid_alive=identities.pid_alive(ident.pid),
        pane_present=(pane is not None) if has_pane else True,
        pane_dead=bool(pane and pane.dead),
        last_heartbeat=clock.parse_iso(ident.last_heartbeat) if ident.last_heartbeat else None,
        last_pane_activity=pane.last_activity if pane is not None and pane.last_activity else None,
        pane_text_tail=pane_text,
    )


def end_process(pid: int | None, start: int | None, why: str) -> None:
    """End a stale or hung process by its recorded pid and start time, so the supervisor sees
    it dead; a pid that now belongs to another process is left alone."""
    if not pid or pid == os.getpid():
        return
    if procs.signal_if_same(pid, start, signal_module.SIGKILL):
        logger.warning("ended pid %s: %s", pid, why)
    else:
        logger.warning("pid %s is no longer the recorded process; not signalled (%s)", pid, why)


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

    def check(self, ident: identities.Identity, panes: Mapping[str, PaneInfo] | None,
              pane_text: str | None = None, exit_code: int | None = None) -> Verdict:
        now = clock.SYSTEM_CLOCK.time()
        agent = ident.agent_id
        age = now - clock.parse_iso(ident.created_at)
        if ident.pid is None and age > self.supervisor.config.startup_grace:
            # registered, but its spawner died before a process was recorded: it never started
            report = HealthReport(Health.DEAD, f"no process recorded {age:.1f}s after it was registered")
            return Verdict(report, self.record_death(ident, report.reason))
        report = classify(observe(ident, panes, pane_text), now, self.supervisor.config, self.rules)
        if report.health is Health.ALIVE:
            self.supervisor.record_healthy(agent)
        elif report.health in (Health.STALE, Health.HUNG):
            self.supervisor.record_unhealthy(agent)
            end_process(ident.pid, ident.pid_start, f"{agent} is {report.health.value}: {report.reason}")
        elif report.health is Health.BLOCKED:
            self.supervisor.record_unhealthy(agent)
        elif report.health is Health.DEAD:
            return Verdict(report, self.record_death(ident, report.reason, exit_code))
        return Verdict(report)

    def record_death(self, ident: identities.Identity, cause: str, exit_code: int | None = None) -> Decision:
        try:
            if ident.status in SUPERVISED:
                identities.mark_crashed(self.state, ident.role, ident.name, reason=cause)
        except AttractorError as exc:
            logger.info("%s", exc)
        decision = self.supervisor.record_death(ident.agent_id, cause, exit_code)
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
