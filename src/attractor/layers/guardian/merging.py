"""The merge worker: one thread hands MERGE_READY branches to the merge queue, one at a time,
onto the tip the queue last left; a merged node is settled (its hook, its clean worktree).
"""

from __future__ import annotations

import dataclasses
import logging
import queue

from attractor import gitops
from attractor.engines import merge_queue
from attractor.errors import AttractorError
from attractor.layers.guardian.core import now_iso, runner_alive
from attractor.layers.guardian.target import TargetWatch
from attractor.states import HookPhase, NodeState, Outcome, SignalKind
from attractor.store import hooks, payloads, queue_hold
from attractor.store.checkpoint import Event

logger = logging.getLogger(__name__)


class MergeWorker(TargetWatch):
    """Hands merge-ready branches to the merge queue and settles merged nodes."""

    def start_merge(self, node: str, payload: payloads.MergeReady) -> None:
        with self.lock:
            if node in self.merges:
                return
            self.merges.add(node)
        self.merge_work.put((node, payload))

    def merge_loop(self) -> None:
        # one merge session for the run: while a gate runs, the queue takes the next merge-ready
        # node (`_upcoming`) and gets it ready on the commit under test, and starts its gate the
        # moment the current one lands; with nothing named yet but more on its way, it checks
        # out a spare merge worktree and keeps it for that merge
        self._taken: list[tuple[tuple[str, payloads.MergeReady] | None, bool]] = []
        session = merge_queue.MergeSession(more_coming=lambda: not self.merge_work.empty(),
                                           upcoming=self._upcoming)
        try:
            self._merge_items(session)
        finally:
            session.close()

    def _upcoming(self) -> merge_queue.Upcoming | None:
        """Called by the merge queue while a merge's gates run: the next merge-ready node, taken
        off the work queue now (the loop merges it next), marked merging, with its config."""
        with self.lock:
            if self._taken or self.stop_event.is_set():
                return None
            try:
                item = self.merge_work.get_nowait()
            except queue.Empty:
                return None
            if item is None or queue_hold.read(self.state) is not None:
                self._taken.append((item, False))
                return None
            self._taken.append((item, True))
        node, payload = item
        self.update_node(node, Event.MERGING, state=NodeState.MERGING)
        return merge_queue.Upcoming(payload, self._merge_config(node))

    def _merge_config(self, node: str) -> merge_queue.QueueConfig:
        gates = tuple(merge_queue.Gate(command=c, timeout=t) for _, c, t in self.validator_commands(node))
        return merge_queue.load_config(self.target_dir, target=self.cp.target_branch, extra_gates=gates,
                                       sender=self.cfg.agent_id)

    def _next_item(self) -> tuple[tuple[str, payloads.MergeReady] | None, bool]:
        """The node taken by `_upcoming` (and whether it is marked merging), else the next one."""
        with self.lock:
            if self._taken:
                return self._taken.pop(0)
        return self.merge_work.get(), False

    def _merge_items(self, session: merge_queue.MergeSession) -> None:
        while True:
            item, marked = self._next_item()
            if item is None:
                return
            node, payload = item
            try:
                self.wait_while_held()
                if self.stop_event.is_set():
                    continue
                with self.tip_lock:
                    self.check_target_tip()
                self.check_target_clean()
                self.wait_while_held()
                if self.stop_event.is_set():
                    continue
                if not marked:
                    self.update_node(node, Event.MERGING, state=NodeState.MERGING)
                config = self._merge_config(node)
                while True:
                    with self.tip_lock:
                        base = dataclasses.replace(config, expected_base=self.expected_tip)
                        outcome = merge_queue.handle_merge_ready(self.state, self.target_dir, payload, base,
                                                                 session=session)
                        if outcome.merged:
                            self.check_target_tip(after_merge=outcome.merged_sha)
                    if outcome.reason != "target_untrusted":
                        break
                    # the target moved outside the queue between the check and the merge
                    self.hold_queue(outcome.detail, outcome.target_sha, again=True)
                    self.wait_while_held()
                    if self.stop_event.is_set():
                        break
                if outcome.merged:
                    self.finish_codergen(node, NodeState.MERGED, merged_sha=outcome.merged_sha)
                else:
                    self.update_node(node, Event.MERGE_FAILED, state=NodeState.RUNNING, reason=outcome.summary())
            except Exception as exc:
                logger.exception("merge of %s", node)
                self.update_node(node, Event.MERGE_ERROR, state=NodeState.RUNNING, reason=str(exc))
                # the runner waits in merge_ready: tell it, so it retries or gives up
                self.send_runner(node, SignalKind.MERGE_FAILED, {
                    "entry_id": "", "branch": payload.branch, "reason": "error",
                    "target": self.cp.target_branch, "node": node, "detail": str(exc)[:2000]})
            finally:
                with self.lock:
                    self.merges.discard(node)

    def finish_codergen(self, node: str, state: NodeState, *, reason: str = "", merged_sha: str | None = None) -> None:
        with self.lock:
            if self.cp.nodes[node].finished:
                return
            if state is NodeState.MERGED:
                self._settle_merged_hook(node, merged_sha)
            outcome = Outcome.SUCCESS if state is NodeState.MERGED else Outcome.FAIL
            event = Event(state.value)  # merged, failed or blocked
            self.update_node(node, event, state=state, outcome=outcome, reason=reason, merged_sha=merged_sha,
                             finished_at=now_iso())
            for tool in self.pipeline.validators_of(node):
                if not self.cp.nodes[tool].finished:
                    tool_state = NodeState.DONE if outcome == Outcome.SUCCESS else NodeState.FAILED
                    self.update_node(tool, Event.VALIDATOR, state=tool_state,
                                     outcome=outcome, finished_at=now_iso())

    def _settle_merged_hook(self, node: str, sha: str | None) -> None:
        """The queue merged the node: make its hook say so even if its runner died before it
        heard MERGE_COMPLETE, and remove the worktree such a runner would have removed."""
        try:
            hook = hooks.read_hook(self.state, "runner", node, run_id=self.cfg.run_id)
            if hook.phase is HookPhase.MERGE_READY and sha:
                hooks.mark_merged(self.state, "runner", node, sha)
            if not runner_alive(self.state, node):
                path = self.layout.worktree(node)
                if path.exists() and gitops.is_clean(path):
                    gitops.remove_worktree(self.target_dir, path)
        except AttractorError as exc:
            logger.info("settling hook of %s: %s", node, exc)

    def finish_merged_hook(self, name: str, hook: hooks.Hook) -> None:
        """A hook that says merged counts only when its commit is on the target branch."""
        sha = hook.last_commit
        try:
            on_target = bool(sha) and gitops.is_ancestor(self.target_dir, str(sha), self.cp.target_branch)
        except AttractorError:
            on_target = False
        if on_target:
            self.finish_codergen(name, NodeState.MERGED, merged_sha=sha)
            return
        reason = f"its hook says merged {sha!r}, but that commit is not on {self.cp.target_branch}"
        self.alert("false_merge", reason, node=name)
        self.finish_codergen(name, NodeState.FAILED, reason=reason)
