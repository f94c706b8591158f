"""Validation: the validator nodes' commands run on a detached checkout of exactly the
commit a runner reported, and the verdict goes back to that runner.
"""

from __future__ import annotations

import contextlib
import logging
import signal as signal_module
from pathlib import Path

from attractor import gitops, procs
from attractor.engines.gates import Gate, run_gate
from attractor.errors import AttractorError
from attractor.layers import layout
from attractor.layers.guardian.core import OUTPUT_TAIL, GuardianBase
from attractor.states import HookPhase, NodeState, SignalKind
from attractor.store import checkpoint as cp_store
from attractor.store import hooks
from attractor.store.checkpoint import Event

logger = logging.getLogger(__name__)


class Validation(GuardianBase):
    """Runs the validators of a node on its reported commit."""

    def start_validation(self, node: str, commit: str) -> None:
        with self.lock:
            if node in self.validations:
                return
            self.validations.add(node)
        self.pool.submit(self._validate, node, commit)

    def _validate(self, node: str, commit: str) -> None:
        try:
            hook = hooks.read_hook(self.state, "runner", node, run_id=self.cfg.run_id)
            self.update_node(node, Event.VALIDATING, state=NodeState.VALIDATING, attempts=max(hook.attempts, 1))
            if hook.phase is HookPhase.IMPL_COMPLETE:
                hooks.update_phase(self.state, "runner", node, HookPhase.VALIDATING, note="guardian validates")

            # validate exactly what was committed, in a checkout of its own: whatever the agent
            # left uncommitted in its worktree neither helps nor hurts
            wt = self.validation_tree(node)
            if wt.exists():
                gitops.remove_worktree(self.target_dir, wt)
            gitops.add_detached_worktree(self.target_dir, wt, commit or self.layout.branch(node))
            outputs = []
            try:
                results = []
                for tool, command, timeout in self.validator_commands(node):
                    started: list[tuple[int, int | None]] = []

                    def on_start(pid: int, started: list[tuple[int, int | None]] = started) -> None:
                        started.append((pid, procs.start_time(pid)))
                        self.gate_pids.add(started[-1])

                    try:
                        result = run_gate(Gate(command, timeout), wt, on_start=on_start)
                    finally:
                        for gate in started:  # ended: a stop must never signal a group that is not a gate's
                            self.gate_pids.discard(gate)
                    results.append((tool, command, result.ok, result.output_tail))
                    if not result.ok:
                        break
            finally:
                gitops.remove_worktree(self.target_dir, wt)
            for tool, command, ok, out in results:
                outputs.append(f"$ {command}\n{out}")
                cp_store.append_event(self.state, self.cfg.run_id, Event.VALIDATION, node=node, tool=tool, ok=ok)
                if not ok:
                    attempt = hooks.read_hook(self.state, "runner", node, run_id=self.cfg.run_id).attempts
                    self.update_node(node, Event.VALIDATION_FAILED, state=NodeState.RUNNING)
                    self.send_runner(node, SignalKind.VALIDATION_FAILED, {
                        "node": node, "commit": commit, "output": "\n".join(outputs)[-OUTPUT_TAIL:],
                        "attempt": attempt})
                    return
            self.send_runner(node, SignalKind.VALIDATION_PASSED,
                             {"node": node, "commit": commit, "output": "\n".join(outputs)[-OUTPUT_TAIL:]})
        except Exception as exc:
            logger.exception("validation of %s", node)
            # the runner waits in impl_complete: tell it, so it retries or gives up
            with contextlib.suppress(AttractorError):
                self.update_node(node, Event.VALIDATION_FAILED, state=NodeState.RUNNING, reason=str(exc))
            with contextlib.suppress(AttractorError):
                self.send_runner(node, SignalKind.VALIDATION_FAILED, {
                    "node": node, "commit": commit, "output": f"validation could not run: {exc}"})
        finally:
            with self.lock:
                self.validations.discard(node)

    def validation_tree(self, node: str) -> Path:
        return self.layout.validation_tree(node)

    def sweep_validation_trees(self) -> None:
        """Checkouts a killed guardian left behind while validating."""
        directory = layout.worktrees_dir(self.target_dir)
        for path in filter(layout.is_validation_tree, directory.iterdir() if directory.is_dir() else []):
            with contextlib.suppress(AttractorError):
                gitops.remove_worktree(self.target_dir, path)

    def kill_gates(self) -> None:
        """End validation commands still running (each is its own process group)."""
        for pid, start in list(self.gate_pids):
            procs.signal_group_if_same(pid, start, signal_module.SIGKILL)
