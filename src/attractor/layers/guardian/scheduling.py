"""Scheduling: which nodes are ready, which are skipped or blocked, and the start of a runner
for each ready node, paced so that a burst of nodes does not starve itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from attractor.engines.pipeline import NodeKind, PipelineError, node_states, save_snapshot, snapshot_path
from attractor.engines.pipeline import ScheduleState as Rule
from attractor.engines.pipeline.model import topological_order
from attractor.engines.pipeline.reload import STAGED_PREFIX, plan_reload
from attractor.engines.watch import count_starting
from attractor.errors import AlreadyExistsError
from attractor.layers.guardian.core import now_iso
from attractor.layers.guardian.merging import MergeWorker
from attractor.layers.runner import spawn_runner
from attractor.names import sha256_hex
from attractor.states import NodeState, Outcome
from attractor.store import checkpoint as cp_store
from attractor.store import payloads
from attractor.store.checkpoint import Event, NodeProgress

logger = logging.getLogger(__name__)


class Scheduling(MergeWorker):
    """Starts a runner for each ready node, up to max_agents, a few at a time, none while the
    run is paused."""

    _pause_seen: dict[str, object] | None = None
    _reloads: list[tuple[payloads.PipelineReload, str]]

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

    def queue_reload(self, p: payloads.PipelineReload, sender: str) -> str:
        """Called on the signal thread: the reload waits for the main loop, between two passes
        of the schedule, so the pipeline and the checkpoint never change under a pass."""
        with self.lock:
            self._reloads.append((p, sender))
        self.deaths.wake()
        return "queued for the next pass"

    def apply_reloads(self) -> None:
        with self.lock:
            pending, self._reloads = self._reloads, []
        for p, sender in pending:
            self.reload_pipeline(p, sender)

    def reload_pipeline(self, p: payloads.PipelineReload, sender: str) -> str:
        """Apply an edited pipeline to the live run: new nodes join, removed pending ones leave,
        changed pending ones start with their new attributes; nodes that started are never
        touched (`engines.pipeline.reload`). Trusts nothing the signal says: the staged bytes
        must be what the user's pipeline file holds now, and the guardian parses and lints them
        itself. Refused with an event (naming the bytes' SHA-256) when they are not, or when the
        result cannot run. The checkpoint is written before the pipeline files, and `rebuild`
        reconciles the two after a crash between them."""
        from attractor.engines.pipeline import load_pipeline

        run_dir = cp_store.run_dir(self.state, self.cfg.run_id)
        staged = Path(p.staged)

        def refuse(problem: str) -> str:
            cp_store.append_event(self.state, self.cfg.run_id, Event.PIPELINE_RELOAD_FAILED, problems=[problem],
                                  by=sender, source=p.source, sha256=p.sha256)
            logger.warning("pipeline reload refused: %s", problem)
            return f"refused: {problem}"

        if staged.parent != run_dir or not staged.name.startswith(STAGED_PREFIX):
            return refuse(f"staged file {staged} is not a staged pipeline of this run")
        try:
            try:
                data = staged.read_bytes()
                source = Path(self.cp.pipeline_source).read_bytes() if self.cp.pipeline_source else None
            except OSError as exc:
                return refuse(f"{exc.filename}: {exc.strerror}")
            if sha256_hex(data) != p.sha256:
                return refuse(f"{staged} changed after it was checked")
            if source is None or sha256_hex(source) != p.sha256:
                return refuse(f"the run's pipeline file {self.cp.pipeline_source} does not hold what was staged")
            try:
                edited = load_pipeline(staged)
            except PipelineError as exc:
                return refuse("; ".join(str(problem) for problem in exc.problems))
            with self.lock:
                states = {name: progress.state for name, progress in self.cp.nodes.items()}
                try:
                    plan = plan_reload(self.pipeline, edited, states)
                except PipelineError as exc:
                    return refuse("; ".join(str(problem) for problem in exc.problems))
                added = [NodeProgress(name=name, kind=plan.pipeline.nodes[name].kind) for name in plan.added]
                self.cp = self.cp.with_nodes(added, list(plan.dropped))
                cp_store.write_checkpoint(self.state, self.cp)
                copy = Path(self.cp.pipeline_path)
                save_snapshot(plan.pipeline, staged, fsync=True)  # the run's parse, tied to the edited bytes
                os.replace(snapshot_path(staged), snapshot_path(copy))
                os.replace(staged, copy)
                self.pipeline = replace(plan.pipeline, path=copy)
                self.order = topological_order(self.pipeline)
                cp_store.append_event(self.state, self.cfg.run_id, Event.PIPELINE_RELOADED, **plan.to_json(),
                                      by=sender, source=p.source)
        finally:
            for leftover in run_dir.glob(f"{STAGED_PREFIX}*"):
                leftover.unlink(missing_ok=True)  # taken or refused: the daemon stages anew
        logger.info("pipeline reloaded: %s", plan.to_json())
        return "reloaded" if not plan.empty else "reloaded: nothing the run had not started changed"

    def reconcile_nodes(self) -> None:
        """After a restart: the checkpoint's nodes and the pipeline's agree (a guardian killed
        between the two writes of a reload leaves them apart): a pipeline node the checkpoint
        lacks joins as pending, a pending node the pipeline lacks leaves."""
        with self.lock:
            missing = [name for name in self.pipeline.nodes if name not in self.cp.nodes]
            extra = [name for name, progress in self.cp.nodes.items()
                     if name not in self.pipeline.nodes and progress.state is NodeState.PENDING]
            if not missing and not extra:
                return
            added = [NodeProgress(name=name, kind=self.pipeline.nodes[name].kind) for name in missing]
            self.cp = self.cp.with_nodes(added, extra)
            cp_store.write_checkpoint(self.state, self.cp)
        logger.warning("checkpoint and pipeline disagreed after a restart: added %s, dropped %s", missing, extra)

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
