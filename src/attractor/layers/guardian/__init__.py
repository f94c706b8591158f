"""Layer 1: the guardian owns one pipeline run.

It schedules ready nodes and spawns a runner for each (up to `max_agents`), runs the validation
commands of a node when its runner reports NODE_IMPL_COMPLETE, hands MERGE_READY branches to the
merge queue (whose MERGE_COMPLETE / MERGE_FAILED go straight to the runner), supervises its
runners, writes the checkpoint after every node change and ends the run when nothing more can
run. Restarted, it rebuilds its view from the checkpoint, the identity registry, the hooks and the
merge queue: live runners are re-adopted, merged nodes are never re-run, nothing merges twice.

One guardian per state directory: `guardian.lock` (an flock, released when the process dies) is
held for the guardian's whole life; a second guardian fails naming the live one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal as signal_module
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor import procs
from attractor.engines.gates import Gate, run_gate
from attractor.engines.space import DiskPatience
from attractor.errors import AttractorError, IdentityTakenError, LockTimeoutError, NoSpaceError
from attractor.layers import layout
from attractor.layers.runner import RunnerConfig, spawn_runner
from attractor.states import HookPhase, IdentityStatus, NodeState, Outcome, RunStatus, SignalKind
from attractor.store import checkpoint as cp_store
from attractor.store import hooks, identities, locks, payloads, signals
from attractor.store.checkpoint import Checkpoint, Event
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

TICK = 0.2
HEARTBEAT_INTERVAL = 2.0
OUTPUT_TAIL = 4000
TIP_CHECK_INTERVAL = 2.0
START_CEILING = 120.0  # seconds a live guardian process may take to become active


@dataclass(frozen=True)
class GuardianConfig:
    state: StateDir
    run_id: str
    tmux_socket: str
    log_level: str = "INFO"

    @property
    def agent_id(self) -> str:
        return layout.guardian_id(self.run_id)


def guardian_argv(cfg: GuardianConfig) -> list[str]:
    return [sys.executable, "-m", "attractor", "--log-level", cfg.log_level, "guardian", "--run", cfg.run_id,
            "--state-dir", str(cfg.state.root), "--tmux-socket", cfg.tmux_socket]


def spawn_guardian(cfg: GuardianConfig, target_dir: Path) -> identities.Identity:
    """Start the guardian in its own tmux session on the project's socket."""
    from attractor.tmux import Tmux

    tmux = Tmux(cfg.tmux_socket)
    name = layout.guardian_session(cfg.run_id)
    if tmux.has_session(name):
        tmux.kill_session(name)
    pane = tmux.new_session(name, guardian_argv(cfg), cwd=target_dir,
                            env=layout.layer_env(cfg.state, cfg.tmux_socket, cfg.agent_id))
    # A guardian that is starting is given time while its process lives (a loaded machine can
    # take long over the imports); one that died is reported at once, and one still not up
    # after START_CEILING is ended, so that no guardian runs behind a launch said to have failed.
    started = procs.start_time(pane.pane_pid)
    deadline = time.monotonic() + START_CEILING
    while time.monotonic() < deadline:
        ident = identities.find(cfg.state, "guardian", cfg.run_id)
        if ident is not None and ident.pid == pane.pane_pid and ident.status is IdentityStatus.ACTIVE:
            return ident
        if not procs.same_process(pane.pane_pid, started):
            break
        time.sleep(0.02)
    else:
        procs.signal_if_same(pane.pane_pid, started, signal_module.SIGTERM)
    log = cfg.state.logs / f"{cfg.agent_id}.log"
    raise AttractorError(f"the guardian of run {cfg.run_id} did not start; its log is {log}")


class Guardian:
    def __init__(self, cfg: GuardianConfig) -> None:
        from attractor.engines.pipeline import load_pipeline
        from attractor.tmux import Tmux

        self.cfg = cfg
        self.state = cfg.state
        self.cp = cp_store.read_checkpoint(cfg.state, cfg.run_id)
        self.pipeline = load_pipeline(Path(self.cp.pipeline_path))
        self.target_dir = Path(self.cp.target_dir)
        self.layout = layout.RunLayout(cfg.run_id, self.target_dir)
        self.tmux = Tmux(cfg.tmux_socket)
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.validations: set[str] = set()
        self.merges: set[str] = set()
        self.merge_work: queue.Queue[tuple[str, payloads.MergeReady] | None] = queue.Queue()
        self.pool = ThreadPoolExecutor(max_workers=max(1, self.cp.max_agents), thread_name_prefix="validate")
        self.runner_restarts: dict[str, int] = {}
        self.gate_pids: set[tuple[int, int | None]] = set()  # (pid, start time) of running gates
        from attractor.engines.pipeline import topological_order
        from attractor.engines.watch import Watch

        self.order = topological_order(self.pipeline)
        self.watch = Watch(cfg.state)
        # the target's tip as the queue last left it: anything else found there is an alert
        self._expected_tip: str | None = None
        self.tip_lock = threading.Lock()  # held while the queue may move the target
        self.alerted_tips: set[str] = set()
        self.last_tip_check = 0.0

    # -- the target branch: moved only by the queue -------------------------------------------
    @property
    def expected_tip(self) -> str | None:
        return self._expected_tip

    @expected_tip.setter
    def expected_tip(self, tip: str | None) -> None:
        """Where the queue last left the target; published for runners, which start new node
        branches from it (never from a target that a commit outside the queue polluted)."""
        from attractor.store import queue_hold

        if tip != self._expected_tip and tip is not None:
            try:
                queue_hold.write_trusted_tip(self.state, tip)
            except AttractorError as exc:
                logger.warning("publishing the trusted tip: %s", exc)
        self._expected_tip = tip

    def alert(self, alert: str, reason: str, **fields: Any) -> None:
        logger.error("guardian: ALERT (%s): %s", alert, reason)
        cp_store.append_event(self.state, self.cfg.run_id, Event.ALERT, alert=alert, reason=reason, **fields)

    def target_tip(self) -> str | None:
        from attractor import gitops

        return gitops.rev_parse(self.target_dir, f"refs/heads/{self.cp.target_branch}")

    def hold_queue(self, reason: str, found: str | None, *, again: bool = False) -> None:
        from attractor.store import queue_hold

        if found is not None and found in self.alerted_tips and not again:
            return
        if found is not None:
            self.alerted_tips.add(found)
        queue_hold.hold(self.state, reason, target=self.cp.target_branch, expected=self.expected_tip, found=found,
                        held_by=self.cfg.agent_id, repo=str(self.target_dir))
        self.alert("target_moved", f"{reason}; merging is held until a human runs: attractor merge-queue resume",
                   expected=self.expected_tip, found=found)

    def check_target_tip(self, *, after_merge: str | None = None) -> None:
        """The target must be where the queue put it. After a merge: exactly the merged commit.
        Between merges: unchanged since the queue last moved it."""
        from attractor.store import queue_hold

        tip = self.target_tip()
        if self.expected_tip is None and after_merge is None:
            self.expected_tip = self.known_tip(tip)
        if after_merge is None and tip is not None and tip != self.expected_tip \
                and queue_hold.read(self.state) is None and queue_hold.accepted_tip(self.state) == tip:
            self.expected_tip = tip  # a human resumed the queue at exactly this tip
            self.alerted_tips.discard(tip)
        if after_merge is not None:
            if tip != after_merge:
                self.hold_queue(f"after merging {after_merge[:12]} the tip of {self.cp.target_branch} is "
                                f"{(tip or 'missing')[:12]}", tip)
            self.expected_tip = tip
            return
        if self.expected_tip is None:
            self.expected_tip = tip
            return
        if tip != self.expected_tip and queue_hold.read(self.state) is None and tip not in self.alerted_tips:
            self.hold_queue(f"{self.cp.target_branch} moved from {self.expected_tip[:12]} to {(tip or 'nothing')[:12]} "
                            "outside the merge queue", tip)

    def check_target_clean(self) -> None:
        """A checked-out target with uncommitted changes would fail every merge (and burn the
        node's attempts): hold the queue with one alert until a human has cleaned it up."""
        from attractor import gitops
        from attractor.store import queue_hold

        dirty = gitops.dirty_checkout_of(self.target_dir, self.cp.target_branch)
        if dirty is None or queue_hold.read(self.state) is not None:
            return
        where, files = dirty
        reason = (f"{self.cp.target_branch} is checked out in {where} with uncommitted changes "
                  f"({', '.join(files[:5])}); commit or stash them")
        queue_hold.hold(self.state, reason, target=self.cp.target_branch, expected=self.expected_tip,
                        found=self.target_tip(), held_by=self.cfg.agent_id, repo=str(self.target_dir))
        self.alert("dirty_target", f"{reason}; merging is held until a human runs: attractor merge-queue resume")

    def known_tip(self, tip: str | None) -> str | None:
        """At start (a restarted guardian too): the tip is one the queue put there, or the tip
        of a launch of this run; else the last of those, so the check below raises the alert."""
        from attractor.store import merge_entries

        if tip is None:
            return None
        launched = [str(e.get("target_tip")) for e in cp_store.read_events(self.state, self.cfg.run_id)
                    if e.get("event") == "launched" and e.get("target_tip")]
        try:
            landed = {e.outcome.merged_sha for e in merge_entries.list_entries(self.state)
                      if e.outcome is not None and e.outcome.merged_sha}
        except AttractorError:
            landed = set()
        if tip in landed or tip in launched or not launched:
            return tip
        from attractor import gitops

        # the newest known tip the found one descends from: where the queue last left it
        best: str | None = None
        for candidate in {*landed, *launched}:
            if gitops.is_ancestor(self.target_dir, candidate, tip) and (
                    best is None or gitops.is_ancestor(self.target_dir, best, candidate)):
                best = candidate
        if best is not None:
            return best
        return launched[-1]

    def wait_while_held(self) -> None:
        """Block the merge worker while the queue is held (checked twice a second)."""
        from attractor.store import queue_hold

        announced = False
        while not self.stop_event.is_set():
            held = queue_hold.read(self.state)
            if held is None:
                if announced:
                    # the tip the human accepted when resuming; a commit after that is held again
                    accepted = queue_hold.accepted_tip(self.state) or self.target_tip()
                    logger.warning("guardian: the merge queue was resumed at %s", accepted)
                    self.expected_tip = accepted
                    self.alerted_tips.clear()
                return
            if not announced:
                logger.warning("guardian: merging is held: %s", held.reason)
                announced = True
            self.stop_event.wait(0.5)

    # -- checkpoint --------------------------------------------------------------------------
    def update_node(self, name: str, event: Event = Event.NODE, **changes: Any) -> None:
        with self.lock:
            self.cp = self.cp.with_node(name, **changes)
            cp_store.write_checkpoint(self.state, self.cp)
            fields = {k: (v.value if isinstance(v, NodeState) else v) for k, v in changes.items()}
            cp_store.append_event(self.state, self.cfg.run_id, event, node=name, **fields)

    def node_state(self, name: str) -> NodeState:
        with self.lock:
            return self.cp.nodes[name].state

    def runner_config(self, node: str) -> RunnerConfig:
        return RunnerConfig(state=self.state, run_id=self.cfg.run_id, node=node, target_dir=self.target_dir,
                            pipeline_path=Path(self.cp.pipeline_path), agent=self.cp.agent,
                            agent_cmd=self.cp.agent_cmd, tmux_socket=self.cfg.tmux_socket,
                            target_branch=self.cp.target_branch)

    def send_runner(self, node: str, kind: SignalKind, payload: dict[str, Any]) -> None:
        signals.send(self.state, kind, to=layout.runner_id(node), sender=self.cfg.agent_id, payload=payload)

    # -- validation and merge ------------------------------------------------------------------
    def validator_commands(self, node: str) -> list[tuple[str, str, float]]:
        result = []
        for tool in self.pipeline.validators_of(node):
            tool_node = self.pipeline.nodes[tool]
            result.append((tool, tool_node.command or "true", tool_node.timeout or 600.0))
        return result

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
            from attractor import gitops

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
        from attractor import gitops

        directory = layout.worktrees_dir(self.target_dir)
        for path in directory.glob(f"{layout.VALIDATION_PREFIX}*") if directory.is_dir() else []:
            with contextlib.suppress(AttractorError):
                gitops.remove_worktree(self.target_dir, path)

    def start_merge(self, node: str, payload: payloads.MergeReady) -> None:
        with self.lock:
            if node in self.merges:
                return
            self.merges.add(node)
        self.merge_work.put((node, payload))

    def merge_loop(self) -> None:
        from attractor.engines import merge_queue

        while True:
            item = self.merge_work.get()
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
                self.update_node(node, Event.MERGING, state=NodeState.MERGING)
                gates = tuple(merge_queue.Gate(command=c, timeout=t) for _, c, t in self.validator_commands(node))
                config = merge_queue.load_config(self.target_dir, target=self.cp.target_branch, extra_gates=gates,
                                                 sender=self.cfg.agent_id)
                while True:
                    with self.tip_lock:
                        base = dataclasses.replace(config, expected_base=self.expected_tip)
                        outcome = merge_queue.handle_merge_ready(self.state, self.target_dir, payload, base)
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
                             finished_at=_now())
            for tool in self.pipeline.validators_of(node):
                if not self.cp.nodes[tool].finished:
                    tool_state = NodeState.DONE if outcome == Outcome.SUCCESS else NodeState.FAILED
                    self.update_node(tool, Event.VALIDATOR, state=tool_state,
                                     outcome=outcome, finished_at=_now())

    def _settle_merged_hook(self, node: str, sha: str | None) -> None:
        """The queue merged the node: make its hook say so even if its runner died before it
        heard MERGE_COMPLETE, and remove the worktree such a runner would have removed."""
        try:
            hook = hooks.read_hook(self.state, "runner", node, run_id=self.cfg.run_id)
            if hook.phase is HookPhase.MERGE_READY and sha:
                hooks.mark_merged(self.state, "runner", node, sha)
            if not _runner_alive(self.state, node):
                from attractor import gitops

                path = self.layout.worktree(node)
                if path.exists() and gitops.is_clean(path):
                    gitops.remove_worktree(self.target_dir, path)
        except AttractorError as exc:
            logger.info("settling hook of %s: %s", node, exc)

    # -- signals -----------------------------------------------------------------------------
    def handle(self, sig: signals.Signal) -> str:
        if sig.kind is SignalKind.SHUTDOWN:
            self.stop_event.set()
            return "stopping"
        p = sig.payload
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

    # -- scheduling and supervision --------------------------------------------------------------
    def start_codergen(self, name: str) -> None:
        attempts = self.cp.nodes[name].attempts + 1
        self.update_node(name, Event.RUNNER_SPAWNED, state=NodeState.RUNNING, attempts=attempts,
                         started_at=self.cp.nodes[name].started_at or _now(),
                         branch=self.layout.branch(name))
        self.spawn_runner_or_fail(name)

    def spawn_runner_or_fail(self, name: str) -> bool:
        """Start the node's runner; a runner session name taken by a session attractor did not
        create fails the node with that reason (the real one), instead of a respawn loop."""
        from attractor.errors import AlreadyExistsError

        try:
            spawn_runner(self.runner_config(name), log_level=self.cfg.log_level)
        except AlreadyExistsError as exc:
            self.finish_codergen(name, NodeState.FAILED, reason=str(exc))
            return False
        return True

    def active_nodes(self) -> list[str]:
        with self.lock:
            return [n for n, p in self.cp.nodes.items()
                    if p.state in (NodeState.RUNNING, NodeState.VALIDATING, NodeState.MERGING)]

    def schedule(self) -> None:
        """Bring the checkpoint in line with the pipeline's rules and start ready nodes. Spawns
        are paced: while `max_starting` runners have not sent their first heartbeat no other one
        starts (a burst of nodes on a busy machine would otherwise starve itself)."""
        from attractor.engines.pipeline import NodeKind, node_states
        from attractor.engines.pipeline import ScheduleState as Rule
        from attractor.engines.watch import count_starting

        pace = max(1, self.watch.supervisor.config.max_starting)

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
                self.update_node(name, Event.DONE, state=NodeState.DONE, outcome=outcome, finished_at=_now())
            elif rule is Rule.SKIPPED:
                self.update_node(name, Event.SKIPPED, state=NodeState.SKIPPED, reason="branch not taken",
                                 finished_at=_now())
            elif rule is Rule.BLOCKED:
                failed = [p for p, n in self.cp.nodes.items() if n.outcome == Outcome.FAIL]
                self.update_node(name, Event.BLOCKED, state=NodeState.BLOCKED, outcome=Outcome.FAIL, finished_at=_now(),
                                 reason=f"upstream failed: {', '.join(failed)}" if failed else "upstream failed")
            elif rule is Rule.READY:
                if kind is NodeKind.EXIT:
                    self.update_node(name, Event.DONE, state=NodeState.DONE, outcome=Outcome.SUCCESS,
                                     finished_at=_now())
                elif len(self.active_nodes()) < self.cp.max_agents \
                        and count_starting(self.state, "runner", self.active_nodes()) < pace:
                    self.start_codergen(name)

    def _rule_outcome(self, name: str) -> str:
        """Outcome of a node the rules finished: a tool follows its codergen node, a conditional
        fails when a predecessor failed."""
        from attractor.engines.pipeline import NodeKind

        node = self.pipeline.nodes[name]
        if node.kind is NodeKind.TOOL:
            return self.cp.nodes[self.pipeline.validated_node(name)].outcome or Outcome.SUCCESS
        if node.kind is NodeKind.CONDITIONAL:
            preds = self.pipeline.predecessors(name)
            return Outcome.FAIL if any(self.cp.nodes[p].outcome == Outcome.FAIL for p in preds) else Outcome.SUCCESS
        return Outcome.SUCCESS

    def supervise(self) -> None:
        """Liveness of every runner from one batched tmux query and the recorded pids; dead
        runners are respawned by the policy (backoff, quarantine, escalation pause), paced like
        first starts. A runner that is still starting is judged by its start-up (see `watch`), and
        each death is recorded once, however many ticks see it."""
        from attractor.engines.supervision import Action, Health
        from attractor.engines.watch import SUPERVISED, count_starting

        active = self.active_nodes()
        if not active:
            return
        panes = {p.pane_id: p for p in self.tmux.list_panes()}
        for name in active:
            hook = hooks.find_hook(self.state, "runner", name, run_id=self.cfg.run_id)
            if hook is not None and hook.phase is HookPhase.MERGED:
                self.finish_merged_hook(name, hook)
                continue
            ident = identities.find(self.state, "runner", name)
            agent = layout.runner_id(name)
            if hook is not None and hook.phase is HookPhase.FAILED and self.between_attempts(name, hook):
                hook = None  # the runner died between closing one attempt and opening the next
            if hook is not None and hook.phase is HookPhase.FAILED and (ident is None or not ident.may_be_alive):
                note = str(hook.history[-1].get("note", "")) if hook.history else ""
                self.finish_codergen(name, NodeState.BLOCKED if hook.quarantined else NodeState.FAILED,
                                     reason=note or "the runner gave up")
                continue
            if self.watch.quarantined(agent):
                self.finish_codergen(name, NodeState.BLOCKED, reason=f"runner quarantined: "
                                     f"{self.watch.supervisor.state_of(agent).quarantine_reason}")
                continue
            if ident is not None and ident.status in SUPERVISED:
                verdict = self.watch.check(ident, panes)
                if verdict.report.health is not Health.DEAD:
                    continue
                decision = verdict.decision
                cp_store.append_event(self.state, self.cfg.run_id, Event.RUNNER_DIED, node=name,
                                      reason=verdict.report.reason)
            elif ident is not None and ident.status is IdentityStatus.TERMINATED:
                if hook is not None and hook.phase is HookPhase.FAILED and not self.between_attempts(name, hook):
                    note = hook.history[-1].get("note", "") if hook.history else ""
                    state = NodeState.BLOCKED if hook.quarantined else NodeState.FAILED
                    self.finish_codergen(name, state, reason=str(note))
                    continue
                decision = self.watch.record_death(ident, "runner exited before its node finished")
            elif ident is not None and ident.status is IdentityStatus.QUARANTINED:
                self.finish_codergen(name, NodeState.BLOCKED, reason=f"runner quarantined: "
                                     f"{self.watch.supervisor.state_of(agent).quarantine_reason}")
                continue
            else:
                decision = None  # crashed or respawning: waiting for its respawn time
            if decision is not None and decision.action is Action.QUARANTINE:
                self.finish_codergen(name, NodeState.BLOCKED, reason=f"runner quarantined: {decision.reason}")
                continue
            if not self.watch.may_respawn(agent):
                continue
            if count_starting(self.state, "runner", active) >= max(1, self.watch.supervisor.config.max_starting):
                continue  # paced like first starts: respawned on a later tick
            restarts = self.runner_restarts.get(name, 0) + 1
            self.runner_restarts[name] = restarts
            logger.warning("guardian: runner of %s is gone; respawning (restart %d)", name, restarts)
            cp_store.append_event(self.state, self.cfg.run_id, Event.RUNNER_RESPAWN, node=name, restart=restarts)
            if self.spawn_runner_or_fail(name):
                self.watch.respawned(agent)

    def between_attempts(self, name: str, hook: hooks.Hook) -> bool:
        """A hook the runner moved to failed only to close an attempt before opening the next
        (`attempt N ended: …`), with attempts left: the node is not over; its runner is respawned
        and opens the next attempt."""
        note = str(hook.history[-1].get("note", "")) if hook.history else ""
        node = self.pipeline.nodes.get(name)
        left = node is not None and hook.attempts < 1 + node.max_retries
        return left and note.startswith("attempt ") and " ended: " in note

    def finish_merged_hook(self, name: str, hook: hooks.Hook) -> None:
        """A hook that says merged counts only when its commit is on the target branch."""
        from attractor import gitops

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

    def rebuild(self) -> None:
        """After a restart: reconcile the checkpoint with hooks and live runners."""
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
        with self.lock:
            if self.active_nodes() or self.validations or self.merges:
                return False
            return all(p.finished or p.state is NodeState.PENDING for p in self.cp.nodes.values())

    def finalize(self, stopped: bool) -> int:
        """Write the run's end. Before that, the clean worktrees of merged nodes are gone: a run
        that says it ended has cleaned up. Their runners remove them as they exit; the guardian
        waits a while for those runners, ends the sessions of any that linger and removes what
        is left itself (a merged node's commits are on its branch and on the target, and a clean
        worktree holds nothing else), so the outcome never depends on who got the CPU first."""
        from attractor import gitops

        with self.lock:
            merged = [n for n, p in self.cp.nodes.items() if p.state is NodeState.MERGED]
        trees = [n for n in merged if self.layout.worktree(n).exists()]
        for wait, end_sessions in ((10.0, True), (5.0, False)):
            deadline = time.monotonic() + wait
            while any(_runner_alive(self.state, n) for n in trees) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not end_sessions or not any(_runner_alive(self.state, n) for n in trees):
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
                                         finished_at=_now())
            exit_nodes = [n for n, node in self.pipeline.nodes.items() if node.kind == "exit"]
            ok = all(self.cp.nodes[n].state is NodeState.DONE for n in exit_nodes)
            failed = [n for n, p in self.cp.nodes.items() if p.state in (NodeState.FAILED, NodeState.BLOCKED)]
            status = RunStatus.STOPPED if stopped else (RunStatus.SUCCEEDED if ok else RunStatus.FAILED)
            reason = f"nodes that did not finish: {', '.join(failed)}" if failed else ""
            self.cp = self.cp.with_status(status, reason)
            cp_store.write_checkpoint(self.state, self.cp)
            cp_store.append_event(self.state, self.cfg.run_id, Event.RUN_FINISHED, status=status, reason=reason)
        return 0 if status == RunStatus.SUCCEEDED else 1

    def shutdown_runners(self) -> None:
        for name in self.active_nodes():
            try:
                self.send_runner(name, SignalKind.SHUTDOWN, {"reason": "run stopped"})
            except AttractorError as exc:
                logger.info("%s", exc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            alive = [n for n in self.active_nodes() if _runner_alive(self.state, n)]
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
                                    rescan_interval=1.0)
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
                self.stop_event.wait(TICK)
        finally:
            consumer.stop()
            self.merge_work.put(None)
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

    def kill_gates(self) -> None:
        """End validation commands still running (each is its own process group)."""
        for pid, start in list(self.gate_pids):
            procs.signal_group_if_same(pid, start, signal_module.SIGKILL)


def _runner_alive(state: StateDir, node: str) -> bool:
    ident = identities.find(state, "runner", node)
    return ident is not None and ident.may_be_alive


def _now() -> str:
    from attractor import clock

    return clock.iso()



