"""The guardian's life: its signals, the rebuild after a restart, the main loop, and the end
of the run (clean worktrees of merged nodes removed before the run says it ended).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from attractor import gitops
from attractor.engines.space import DiskPatience
from attractor.errors import AttractorError, IdentityTakenError, LockTimeoutError, NoSpaceError
from attractor.layers import layout
from attractor.layers.guardian.core import (
    HEARTBEAT_INTERVAL,
    IDLE_TICK,
    TICK,
    TIP_CHECK_INTERVAL,
    now_iso,
    runner_alive,
)
from attractor.layers.guardian.supervising import Supervision
from attractor.layers.guardian.validation import Validation
from attractor.states import HookPhase, IdentityStatus, NodeState, RunStatus, SignalKind
from attractor.store import checkpoint as cp_store
from attractor.store import hooks, identities, locks, payloads, signals
from attractor.store.checkpoint import Checkpoint, Event

logger = logging.getLogger(__name__)


class Guardian(Supervision, Validation):
    """The guardian of one run: all its jobs, and the loop that drives them."""

    # -- signals -----------------------------------------------------------------------------
    def handle(self, sig: signals.Signal) -> str:
        if sig.kind is SignalKind.SHUTDOWN:
            self.stop_event.set()
            self.deaths.wake()  # the loop sees the stop at once
            return "stopping"
        p = sig.payload
        if isinstance(p, payloads.PipelineReload):
            return self.queue_reload(p, sig.sender)
        if not isinstance(p, (payloads.NodeImplComplete, payloads.MergeReady, payloads.OrchestratorStuck)):
            return f"ignored: {sig.kind.value} is not for the guardian"
        if p.node not in self.cp.nodes:
            return f"ignored: unknown node {p.node!r}"
        state = self.node_state(p.node)
        if state in (NodeState.MERGED, NodeState.FAILED, NodeState.BLOCKED, NodeState.DONE):
            return f"ignored: node is {state.value}"
        if isinstance(p, payloads.NodeImplComplete):
            self.start_validation(p.node, p.commit)
            return "validating"
        if isinstance(p, payloads.MergeReady):
            self.start_merge(p.node, p)
            return "merging"
        self.finish_codergen(p.node, NodeState.BLOCKED if p.quarantined else NodeState.FAILED, reason=p.reason)
        return "node blocked" if p.quarantined else "node failed"

    def rebuild(self) -> None:
        """After a restart: reconcile the checkpoint with the pipeline, hooks and live runners."""
        self.reconcile_nodes()
        self.sweep_validation_trees()
        for name in self.active_nodes():
            hook = hooks.find_hook(self.state, "runner", name, run_id=self.cfg.run_id)
            if hook is None:
                continue
            if hook.phase is HookPhase.MERGED:
                self.finish_merged_hook(name, hook)
            elif hook.phase in (HookPhase.IMPL_COMPLETE, HookPhase.VALIDATING):
                self.start_validation(name, hook.last_commit or "")
            elif hook.phase is HookPhase.MERGE_READY:
                node = self.pipeline.nodes[name]
                self.start_merge(name, payloads.MergeReady(
                    node=name, branch=self.layout.branch(name), commit=hook.last_commit or "",
                    owner=layout.runner_id(name), priority=node.priority))

    def finished(self) -> bool:
        """Nothing runs and nothing more can start. A paused run with pending nodes is not
        finished: they start when it is unpaused."""
        with self.lock:
            if self.active_nodes() or self.validations or self.merges:
                return False
            pending = any(p.state is NodeState.PENDING for p in self.cp.nodes.values())
            if pending and self._pause_seen is not None:
                return False
            return all(p.finished or p.state is NodeState.PENDING for p in self.cp.nodes.values())

    def finalize(self, stopped: bool) -> int:
        """Write the run's end. Before that, the clean worktrees of merged nodes are gone: a run
        that says it ended has cleaned up. Their runners remove them as they exit; the guardian
        waits a while for those runners, ends the sessions of any that linger and removes what
        is left itself (a merged node's commits are on its branch and on the target, and a clean
        worktree holds nothing else), so the outcome never depends on who got the CPU first."""
        with self.lock:
            merged = [n for n, p in self.cp.nodes.items() if p.state is NodeState.MERGED]
        trees = [n for n in merged if self.layout.worktree(n).exists()]
        for wait, end_sessions in ((10.0, True), (5.0, False)):
            deadline = time.monotonic() + wait
            while any(runner_alive(self.state, n) for n in trees) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not end_sessions or not any(runner_alive(self.state, n) for n in trees):
                break
            logger.warning("guardian: runners of merged nodes still running after %gs; ending their sessions", wait)
            self.cleanup_sessions()
        for name in trees:
            path = self.layout.worktree(name)
            try:
                if path.exists() and gitops.is_clean(path):
                    gitops.remove_worktree(self.target_dir, path)
            except AttractorError as exc:
                logger.warning("removing the worktree of merged node %s: %s", name, exc)
        with self.lock:
            if not stopped:  # a stopped run keeps its pending nodes for --resume
                for name, p in self.cp.nodes.items():
                    if p.state is NodeState.PENDING:
                        self.update_node(name, Event.BLOCKED, state=NodeState.BLOCKED, reason="not reached",
                                         finished_at=now_iso())
            exit_nodes = [n for n, node in self.pipeline.nodes.items() if node.kind == "exit"]
            ok = all(self.cp.nodes[n].state is NodeState.DONE for n in exit_nodes)
            failed = [n for n, p in self.cp.nodes.items() if p.state in (NodeState.FAILED, NodeState.BLOCKED)]
            status = RunStatus.STOPPED if stopped else (RunStatus.SUCCEEDED if ok else RunStatus.FAILED)
            reason = f"nodes that did not finish: {', '.join(failed)}" if failed else ""
            self.cp = self.cp.with_status(status, reason)
            cp_store.write_checkpoint(self.state, self.cp)
            cp_store.append_event(self.state, self.cfg.run_id, Event.RUN_FINISHED, status=status, reason=reason)
        cp_store.unpause_run(self.state, self.cfg.run_id, by="the run's end")  # a pause ends with its run
        return 0 if status == RunStatus.SUCCEEDED else 1

    def shutdown_runners(self) -> None:
        for name in self.active_nodes():
            try:
                self.send_runner(name, SignalKind.SHUTDOWN, {"reason": "run stopped"})
            except AttractorError as exc:
                logger.info("%s", exc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            alive = [n for n in self.active_nodes() if runner_alive(self.state, n)]
            if not alive:
                break
            time.sleep(0.05)
        self.cleanup_sessions()

    def cleanup_sessions(self) -> None:
        """Kill what is left of this run's runner and orchestrator sessions (a runner that died
        after its node was decided leaves its agent's kept dead pane behind)."""
        for role in ("runner", "orch"):
            try:
                self.tmux.kill_owned_sessions(self.layout.session_prefix(role))
            except AttractorError as exc:
                logger.info("%s", exc)
        for ident in identities.list_identities(self.state):
            if ident.role in ("runner", "orchestrator") and ident.name in self.cp.nodes \
                    and ident.status in (IdentityStatus.SPAWNING, IdentityStatus.ACTIVE, IdentityStatus.STALE,
                                         IdentityStatus.CRASHED, IdentityStatus.RESPAWNING) \
                    and not ident.may_be_alive:
                try:
                    identities.mark_terminated(self.state, ident.role, ident.name, reason="run ended")
                except AttractorError as exc:
                    logger.info("%s", exc)

    def run(self) -> int:
        """One guardian per state directory: `guardian.lock` is held while it runs (a process
        that dies lets go of it), and a second one names the live one."""
        self.state.ensure()
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(locks.file_lock(self.state.root / "guardian", timeout=0))
            except LockTimeoutError:
                live = identities.find_live(self.state, "guardian")
                raise IdentityTakenError(
                    live.agent_id if live else "guardian", live.pid if live else None,
                    f"tmux session {live.tmux_session if live else '?'}; one guardian per state directory") from None
            return self._run()
        raise AssertionError("unreachable")  # for mypy: ExitStack may swallow exceptions

    def _run(self) -> int:
        identities.create_identity(self.state, "guardian", self.cfg.run_id, pid=os.getpid(),
                                   session_id=self.cfg.run_id, worktree=str(self.target_dir),
                                   tmux_socket=self.cfg.tmux_socket, pane_id=os.environ.get("TMUX_PANE"),
                                   tmux_session=self.layout.guardian_session)
        identities.update_liveness(self.state, "guardian", self.cfg.run_id, pid=os.getpid())
        with self.lock:
            self.cp = self.cp.with_status(RunStatus.RUNNING)
            self.cp = Checkpoint(**{**self.cp.__dict__, "guardian_starts": self.cp.guardian_starts + 1})
            cp_store.write_checkpoint(self.state, self.cp)
        cp_store.append_event(self.state, self.cfg.run_id, Event.GUARDIAN_STARTED, pid=os.getpid(),
                              start=self.cp.guardian_starts)
        beating = threading.Event()

        def beat() -> None:
            while not beating.wait(HEARTBEAT_INTERVAL):
                with contextlib.suppress(AttractorError):
                    identities.update_liveness(self.state, "guardian", self.cfg.run_id, pid=os.getpid())

        heart = threading.Thread(target=beat, name="heartbeat", daemon=True)
        heart.start()
        consumer = signals.Consumer(self.state, self.cfg.agent_id, self.handle,
                                    current_epoch=lambda: identities.current_epoch(self.state, self.cfg.agent_id),
                                    rescan_interval=5.0)
        merger = threading.Thread(target=self.merge_loop, name="merge", daemon=True)
        merger.start()
        consumer.start()
        stopped = False
        patience = DiskPatience(self.cfg.agent_id)
        try:
            self.rebuild()
            while True:
                if self.stop_event.is_set():
                    stopped = True
                    break
                try:
                    self.apply_reloads()
                    self.schedule()
                    self.supervise()
                    self.schedule()  # what supervision just finished may make the exit ready
                    patience.ok()
                except NoSpaceError as exc:
                    self.stop_event.wait(patience.hit(exc))
                    continue
                if time.monotonic() - self.last_tip_check >= TIP_CHECK_INTERVAL and self.tip_lock.acquire(False):
                    self.last_tip_check = time.monotonic()
                    try:
                        self.check_target_tip()
                    except AttractorError as exc:
                        logger.info("checking the target tip: %s", exc)
                    finally:
                        self.tip_lock.release()
                if self.finished():
                    break
                if not self.stop_event.is_set():
                    self.deaths.wait(IDLE_TICK if self.settled else TICK)
        finally:
            consumer.stop()
            self.merge_work.put(None)
            self.deaths.close()
        if stopped:
            self.kill_gates()
        merger.join(timeout=30)
        self.pool.shutdown(wait=True)
        if stopped:
            self.shutdown_runners()
        code = self.finalize(stopped)
        self.cleanup_sessions()
        beating.set()
        identities.mark_terminated(self.state, "guardian", self.cfg.run_id, reason=f"run {self.cp.status}")
        return code
