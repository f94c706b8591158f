"""Supervision of the runners: a dead or stale runner is respawned under the restart policy,
quarantined, or its node decided from what its hook says.
"""

from __future__ import annotations

import logging
import time

from attractor.engines.supervision import Action, Health
from attractor.engines.watch import SUPERVISED, count_starting
from attractor.layers import layout
from attractor.layers.guardian.core import PANES_INTERVAL, PANES_QUIET_INTERVAL
from attractor.layers.guardian.scheduling import Scheduling
from attractor.states import HookPhase, IdentityStatus, NodeState
from attractor.store import checkpoint as cp_store
from attractor.store import hooks, identities
from attractor.store.checkpoint import Event
from attractor.tmux import PaneInfo

logger = logging.getLogger(__name__)


class Supervision(Scheduling):
    """Watches the runners of the run."""

    def panes_for(self, ident: identities.Identity) -> dict[str, PaneInfo]:
        """Every pane of the socket, from one batched tmux query that is made again only when
        PANES_INTERVAL has passed (PANES_QUIET_INTERVAL while all is quiet), or when this runner's
        process is gone or its pane is not among those last seen (a new incarnation)."""
        now = time.monotonic()
        interval = PANES_QUIET_INTERVAL if self.settled else PANES_INTERVAL
        if not ident.process_alive or ident.pane_id not in self.panes or now - self.panes_at >= interval:
            self.panes = {p.pane_id: p for p in self.tmux.list_panes()}
            self.panes_at = now
        return self.panes

    def supervise(self) -> None:
        """Liveness of every runner from one batched tmux query and the recorded pids; dead
        runners are respawned by the policy (backoff, quarantine, escalation pause), paced like
        first starts. A runner that is still starting is judged by its start-up (see `watch`), and
        each death is recorded once, however many ticks see it."""
        active = self.active_nodes()
        settled = True
        try:
            for name in active:
                settled = self.supervise_node(name, active) and settled
        finally:
            self.settled = settled

    def supervise_node(self, name: str, active: list[str]) -> bool:
        """One runner; True when it is up, active and its death would wake the loop."""
        hook = hooks.find_hook(self.state, "runner", name, run_id=self.cfg.run_id)
        if hook is not None and hook.phase is HookPhase.MERGED:
            self.finish_merged_hook(name, hook)
            return False
        ident = identities.find(self.state, "runner", name)
        agent = layout.runner_id(name)
        if hook is not None and hook.phase is HookPhase.FAILED and self.between_attempts(name, hook):
            hook = None  # the runner died between closing one attempt and opening the next
        if hook is not None and hook.phase is HookPhase.FAILED and (ident is None or not ident.may_be_alive):
            note = str(hook.history[-1].get("note", "")) if hook.history else ""
            self.finish_codergen(name, NodeState.BLOCKED if hook.quarantined else NodeState.FAILED,
                                 reason=note or "the runner gave up")
            return False
        if self.watch.quarantined(agent):
            self.finish_codergen(name, NodeState.BLOCKED, reason=f"runner quarantined: "
                                 f"{self.watch.supervisor.state_of(agent).quarantine_reason}")
            return False
        if ident is not None and ident.status in SUPERVISED:
            watched = ident.status is IdentityStatus.ACTIVE and self.deaths.watch(
                name, ident.pid, ident.pid_start)
            verdict = self.watch.check(ident, self.panes_for(ident))
            if verdict.report.health is not Health.DEAD:
                return watched and verdict.report.health is Health.ALIVE
            decision = verdict.decision
            cp_store.append_event(self.state, self.cfg.run_id, Event.RUNNER_DIED, node=name,
                                  reason=verdict.report.reason)
        elif ident is not None and ident.status is IdentityStatus.TERMINATED:
            if hook is not None and hook.phase is HookPhase.FAILED and not self.between_attempts(name, hook):
                note = hook.history[-1].get("note", "") if hook.history else ""
                state = NodeState.BLOCKED if hook.quarantined else NodeState.FAILED
                self.finish_codergen(name, state, reason=str(note))
                return False
            decision = self.watch.record_death(ident, "runner exited before its node finished")
        elif ident is not None and ident.status is IdentityStatus.QUARANTINED:
            self.finish_codergen(name, NodeState.BLOCKED, reason=f"runner quarantined: "
                                 f"{self.watch.supervisor.state_of(agent).quarantine_reason}")
            return False
        else:
            decision = None  # crashed or respawning: waiting for its respawn time
        if decision is not None and decision.action is Action.QUARANTINE:
            self.finish_codergen(name, NodeState.BLOCKED, reason=f"runner quarantined: {decision.reason}")
            return False
        if not self.watch.may_respawn(agent):
            return False
        if count_starting(self.state, "runner", active) >= max(1, self.watch.supervisor.config.max_starting):
            return False  # paced like first starts: respawned on a later tick
        restarts = self.runner_restarts.get(name, 0) + 1
        self.runner_restarts[name] = restarts
        logger.warning("guardian: runner of %s is gone; respawning (restart %d)", name, restarts)
        cp_store.append_event(self.state, self.cfg.run_id, Event.RUNNER_RESPAWN, node=name, restart=restarts)
        if self.spawn_runner_or_fail(name):
            self.watch.respawned(agent)
        return False

    def between_attempts(self, name: str, hook: hooks.Hook) -> bool:
        """A hook the runner moved to failed only to close an attempt before opening the next
        (`attempt N ended: …`), with attempts left: the node is not over; its runner is respawned
        and opens the next attempt."""
        note = str(hook.history[-1].get("note", "")) if hook.history else ""
        node = self.pipeline.nodes.get(name)
        left = node is not None and hook.attempts < 1 + node.max_retries
        return left and note.startswith("attempt ") and " ended: " in note
