"""Scheduling: which nodes are ready, which are skipped or blocked, and the start of a runner
for each ready node, paced so that a burst of nodes does not starve itself.
"""

from __future__ import annotations

import logging

from attractor.engines.pipeline import NodeKind, node_states
from attractor.engines.pipeline import ScheduleState as Rule
from attractor.engines.watch import count_starting
from attractor.errors import AlreadyExistsError
from attractor.layers.guardian.core import now_iso
from attractor.layers.guardian.merging import MergeWorker
from attractor.layers.runner import spawn_runner
from attractor.states import NodeState, Outcome
from attractor.store import checkpoint as cp_store
from attractor.store.checkpoint import Event

logger = logging.getLogger(__name__)


class Scheduling(MergeWorker):
    """Starts a runner for each ready node, up to max_agents, a few at a time, none while the
    run is paused."""

    _pause_seen: dict[str, object] | None = None

    # -- scheduling and supervision --------------------------------------------------------------
    def start_codergen(self, name: str) -> None:
        attempts = self.cp.nodes[name].attempts + 1
        self.update_node(name, Event.RUNNER_SPAWNED, state=NodeState.RUNNING, attempts=attempts,
                         started_at=self.cp.nodes[name].started_at or now_iso(),
                         branch=self.layout.branch(name))
        self.spawn_runner_or_fail(name)

    def spawn_runner_or_fail(self, name: str) -> bool:
        """Start the node's runner; a runner session name taken by a session attractor did not
        create fails the node with that reason (the real one), instead of a respawn loop."""
        try:
            spawn_runner(self.runner_config(name), log_level=self.cfg.log_level)
        except AlreadyExistsError as exc:
            self.finish_codergen(name, NodeState.FAILED, reason=str(exc))
            return False
        return True

    def schedule(self) -> None:
        """Bring the checkpoint in line with the pipeline's rules and start ready nodes. Spawns
        are paced: while `max_starting` runners have not sent their first heartbeat no other one
        starts (a burst of nodes on a busy machine would otherwise starve itself)."""
        pace = max(1, self.watch.supervisor.config.max_starting)
        pause = self.pause_state()

        with self.lock:
            done = {n for n, p in self.cp.nodes.items() if p.finished}
            running = set(self.active_nodes())
            outcomes = {n: p.outcome for n, p in self.cp.nodes.items() if p.outcome}
        rules = node_states(self.pipeline, done, running, outcomes)
        for name in self.order:
            rule = rules[name]
            progress = self.cp.nodes[name]
            if progress.state is not NodeState.PENDING:
                continue
            kind = self.pipeline.nodes[name].kind
            if rule is Rule.DONE:
                outcome = self._rule_outcome(name)
                self.update_node(name, Event.DONE, state=NodeState.DONE, outcome=outcome, finished_at=now_iso())
            elif rule is Rule.SKIPPED:
                self.update_node(name, Event.SKIPPED, state=NodeState.SKIPPED, reason="branch not taken",
                                 finished_at=now_iso())
            elif rule is Rule.BLOCKED:
                failed = [p for p, n in self.cp.nodes.items() if n.outcome == Outcome.FAIL]
                self.update_node(name, Event.BLOCKED, state=NodeState.BLOCKED, outcome=Outcome.FAIL,
                                 finished_at=now_iso(),
                                 reason=f"upstream failed: {', '.join(failed)}" if failed else "upstream failed")
            elif rule is Rule.READY:
                if kind is NodeKind.EXIT:
                    self.update_node(name, Event.DONE, state=NodeState.DONE, outcome=Outcome.SUCCESS,
                                     finished_at=now_iso())
                elif pause is not None:
                    continue  # paused: no new agent; the ones running go on
                elif len(self.active_nodes()) < self.cp.max_agents \
                        and count_starting(self.state, "runner", self.active_nodes()) < pace:
                    self.start_codergen(name)

    def pause_state(self) -> dict[str, object] | None:
        """The run's pause (a stat while there is none), logged once when it begins and ends."""
        pause = cp_store.paused(self.state, self.cfg.run_id)
        if (pause is None) != (self._pause_seen is None):
            if pause is None:
                logger.info("run %s unpaused: starting ready nodes again", self.cfg.run_id)
            else:
                logger.info("run %s paused by %s (%s): no new agents", self.cfg.run_id, pause.get("by"),
                            pause.get("reason") or "no reason given")
            self._pause_seen = pause
        return pause

    def _rule_outcome(self, name: str) -> str:
        """Outcome of a node the rules finished: a tool follows its codergen node, a conditional
        fails when a predecessor failed."""
        node = self.pipeline.nodes[name]
        if node.kind is NodeKind.TOOL:
            return self.cp.nodes[self.pipeline.validated_node(name)].outcome or Outcome.SUCCESS
        if node.kind is NodeKind.CONDITIONAL:
            preds = self.pipeline.predecessors(name)
            return Outcome.FAIL if any(self.cp.nodes[p].outcome == Outcome.FAIL for p in preds) else Outcome.SUCCESS
        return Outcome.SUCCESS
