"""Layer 2: the runner of one node.

It owns the node's worktree (`<target>/.claude/worktrees/<node>`, branch
`attractor/<run>/<node>`), its hook (`hooks/runner-<node>.json`) and its orchestrator, relays
signals between the orchestrator and the guardian, and moves the hook through
executing -> impl_complete -> (validating, set by the guardian) -> merge_ready -> merged, or
failed. It respawns an orchestrator that died before reporting, and after its own restart it
re-adopts a live orchestrator instead of starting a second one.

Signals handled (inbox `runner-<node>`): ORCHESTRATOR_DONE, ORCHESTRATOR_STUCK (from its agent);
VALIDATION_PASSED, VALIDATION_FAILED, SHUTDOWN, RESPAWN (from the guardian); MERGE_COMPLETE,
MERGE_FAILED (from the merge queue). Signals sent: NODE_IMPL_COMPLETE, MERGE_READY and, when the
node gives up, ORCHESTRATOR_STUCK to the guardian with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal as signal_module
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from attractor import clock, gitops, names, procs
from attractor.agents import REPORTS_BY_EXIT, LaunchContext, resolve_agent
from attractor.engines.answers import deliver_by_paste, remembered_allow
from attractor.engines.gates import summary_line
from attractor.engines.pipeline import load_pipeline
from attractor.engines.prompts import PROMPTS, PromptAction, PromptMatch, keys_to_choose, pane_tail
from attractor.engines.space import DiskPatience
from attractor.engines.supervision import Health
from attractor.engines.watch import SUPERVISED, Watch
from attractor.errors import AlreadyExistsError, AttractorError, NoSpaceError, NotFoundError
from attractor.layers import layout
from attractor.layers.launch import (
    agent_launch,
    build_prompt,
    launch_context,
    load_role,
    report_commands,
    with_env_removed,
    write_launch_files,
)
from attractor.states import HookPhase, IdentityStatus, MergeEntryState, SignalKind
from attractor.store import agent_sessions, hooks, identities, merge_entries, payloads, queue_hold, signals, wakeup
from attractor.store import checkpoint as cp_store
from attractor.store.checkpoint import Event
from attractor.store.payloads import P
from attractor.store.statedir import StateDir
from attractor.tmux import PaneInfo, Tmux

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = identities.RUNNER_HEARTBEAT_INTERVAL
# The loop sleeps on events: the agent's death (a pidfd), a write to the agent's terminal
# (inotify, see `TerminalBell`), a message for the agent or a signal handled, and the heartbeat.
# While the agent is up, its pidfd and its terminal watched and it printed nothing since the
# last look, the loop looks round (records and /proc only) every IDLE_CHECK_INTERVAL; after a
# look that found the agent printing, again after ACTIVE_CHECK_INTERVAL; without a terminal to
# watch every UNWATCHED_CHECK_INTERVAL; while something may soon need it (an agent starting or
# dying, a respawn waiting out its backoff, no pidfd) every CHECK_INTERVAL.
CHECK_INTERVAL = 0.25
IDLE_CHECK_INTERVAL = HEARTBEAT_INTERVAL
ACTIVE_CHECK_INTERVAL = 2.0
UNWATCHED_CHECK_INTERVAL = 2.0
PROMPT_CHECK_INTERVAL = 2.0
# The agent's pane is asked of tmux (a client process per question) at most every
# PANE_CHECK_INTERVAL while its window showed activity in the last ACTIVE_WINDOW seconds or its
# death would not wake the loop; at once when its process is gone. While it is quiet and
# watched, tmux is asked again as soon as the agent's terminal was written to (the pty's stamp,
# read without a process: after ACTIVE_WINDOW > 8 s of quiet the kernel moves it on the next
# write, see `procs.written_stamp`), else every QUIET_PANE_CHECK_INTERVAL (every
# NO_PTY_PANE_CHECK_INTERVAL when the agent has no pty to watch).
PANE_CHECK_INTERVAL = 1.0
QUIET_PANE_CHECK_INTERVAL = 30.0
NO_PTY_PANE_CHECK_INTERVAL = 5.0
ACTIVE_WINDOW = 10.0
# The screen is read only when the window showed activity since the last read (tmux's
# window_activity, whole seconds), while a dialog shows (an answer must be seen to work), and at
# least every QUIET_CAPTURE_INTERVAL for what activity does not show.
QUIET_CAPTURE_INTERVAL = 30.0
USAGE_INTERVAL = 15.0
MESSAGE_INTERVAL = 1.0  # the least time between two tries to type a waiting message
DEATH_TAIL_LINES = 50
# An answered dialog that still shows this long after the keys were sent was not answered: a
# human decides.
ANSWER_VERIFY_SECONDS = 6.0


def _secret(name: str) -> bool:
    return any(word in name.upper() for word in ("KEY", "TOKEN", "SECRET", "PASSWORD"))


@dataclass(frozen=True)
class RunnerConfig:
    state: StateDir
    run_id: str
    node: str
    target_dir: Path
    pipeline_path: Path
    agent: str
    agent_cmd: str | None
    tmux_socket: str
    target_branch: str = "main"

    @property
    def agent_id(self) -> str:
        return layout.runner_id(self.node)

    @property
    def orchestrator_id(self) -> str:
        return layout.orchestrator_id(self.node)

    @property
    def guardian_id(self) -> str:
        return layout.guardian_id(self.run_id)


def spawn_runner(cfg: RunnerConfig, *, log_level: str = "INFO") -> identities.Identity:
    """Start a runner in its own tmux session: identity and hook first, then the process.

    Returns the runner's identity record (pid, tmux session, pane)."""
    name = layout.session_name(cfg.run_id, "runner", cfg.node)
    tmux = Tmux(cfg.tmux_socket)
    if tmux.has_session(name) and name not in tmux.list_owned_sessions():
        raise AlreadyExistsError("tmux session", name, f"on socket {cfg.tmux_socket} was not created by attractor "
                                 "(a session of yours?); close or rename it, then resume the run")
    identities.create_identity(cfg.state, "runner", cfg.node, session_id=cfg.run_id,
                               worktree=str(layout.worktree_path(cfg.target_dir, cfg.node)),
                               tmux_socket=cfg.tmux_socket, tmux_session=name)
    hooks.create_hook(cfg.state, "runner", cfg.node, node=cfg.node, run_id=cfg.run_id)
    argv = [sys.executable, "-m", "attractor", "--log-level", log_level, "runner",
            "--run", cfg.run_id, "--node", cfg.node, "--target-dir", str(cfg.target_dir),
            "--pipeline", str(cfg.pipeline_path), "--state-dir", str(cfg.state.root),
            "--tmux-socket", cfg.tmux_socket, "--agent", cfg.agent, "--target", cfg.target_branch]
    if cfg.agent_cmd:
        argv += ["--agent-cmd", cfg.agent_cmd]
    if tmux.has_session(name):
        tmux.kill_session(name)
    pane = tmux.new_session(name, argv, cwd=cfg.target_dir, env=layout.layer_env(cfg.state, cfg.tmux_socket,
                                                                                  cfg.agent_id))
    return identities.update_fields(cfg.state, "runner", cfg.node, pid=pane.pane_pid, pane_id=pane.pane_id,
                                    tmux_session=name, tmux_socket=cfg.tmux_socket)


class TerminalBell:
    """Counts the writes to the agent's terminal (told by the inotify reader thread, see
    `wakeup.watch_writes`) and wakes the runner's loop on the first write after a look that
    found none, not on every write: a busy agent prints many times a second, and while it does
    the loop looks every ACTIVE_CHECK_INTERVAL."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.writes = 0
        self.armed = False
        self._wake = wake

    def set(self) -> None:
        self.writes += 1
        if self.armed:
            self.armed = False
            self._wake()


class Runner:
    def __init__(self, cfg: RunnerConfig) -> None:
        self.cfg = cfg
        self.state = cfg.state
        self.tmux = Tmux(cfg.tmux_socket)
        self.pipeline = load_pipeline(cfg.pipeline_path)
        if cfg.node not in self.pipeline.nodes:
            raise NotFoundError("node", cfg.node, f"not in pipeline {cfg.pipeline_path}")
        self.node = self.pipeline.nodes[cfg.node]
        self.agent = resolve_agent(self.node.agent or cfg.agent, cfg.agent_cmd)
        self.worktree = layout.worktree_path(cfg.target_dir, cfg.node)
        self.branch = layout.branch_name(cfg.run_id, cfg.node)
        self.max_attempts = 1 + self.node.max_retries
        self.lock = threading.RLock()
        self.finished = threading.Event()
        self.exit_code = 0

        # the agent's own dialogs first: on a tie, the earlier rule wins
        self.watch = Watch(self.state, rules=(*self.agent.dialogs(), *PROMPTS))
        self.last_capture = 0.0
        self.last_capture_wall = 0.0  # time.time() of the last read, against tmux's activity
        self.pty: Path | None = None  # the agent's terminal, whose stamp says it was written to
        self.pty_stamp: int | None = None  # that stamp (or the bell's count) when tmux was last asked
        self.bell_unwatch: Callable[[], None] | None = None
        self.bell_pty: Path | None = None  # the terminal the bell listens to
        self.writes_seen = 0  # the bell's count at the last look
        self.messages_waiting = False  # the last look left a message for the agent untyped
        self.last_pane: PaneInfo | None = None
        self.last_pane_at = 0.0
        self.last_pane_of = (0, "")  # (epoch, pane id) the cached pane belongs to
        self.deaths = procs.DeathWatch()  # the agent's process, by pidfd; wakes the loop
        self.bell = TerminalBell(self.deaths.wake)  # the writes to the agent's terminal
        self.inbox_unwatch: Callable[[], None] | None = None  # a message for the agent wakes the loop
        self.settled = False  # the last check found nothing that may need it soon
        self.agent_done = False  # the last check found the agent's part over
        self.dialog_showing = False  # the last capture showed a known dialog
        self.answered: dict[tuple[str, str], float] = {}
        self.launch_ctx: LaunchContext | None = None
        self.resumed_start: str | None = None  # ISO time of a start that resumed a session
        self.last_usage = 0.0
        self.last_delivery = 0.0
        self.role_allow = self._role_allow()

    # -- bookkeeping -------------------------------------------------------------------------
    def hook(self) -> hooks.Hook:
        return hooks.read_hook(self.state, "runner", self.cfg.node, run_id=self.cfg.run_id)

    def set_phase(self, phase: HookPhase, note: str = "", commit: str | None = None, *,
                  quarantined: bool = False) -> None:
        hooks.update_phase(self.state, "runner", self.cfg.node, phase, note=note, commit=commit,
                           quarantined=quarantined)

    def send_guardian(self, kind: SignalKind, payload: dict[str, object]) -> None:
        signals.send(self.state, kind, to=self.cfg.guardian_id, sender=self.cfg.agent_id, payload=payload)

    def heartbeat(self) -> None:
        identities.update_liveness(self.state, "runner", self.cfg.node, pid=os.getpid())

    # -- the orchestrator ----------------------------------------------------------------------
    def orchestrator(self) -> identities.Identity | None:
        return identities.find(self.state, "orchestrator", self.cfg.node)

    def orchestrator_alive(self) -> bool:
        ident = self.orchestrator()
        if ident is None or ident.status in (IdentityStatus.TERMINATED, IdentityStatus.CRASHED):
            return False
        if not ident.process_alive:
            return False
        if ident.pane_id:
            pane = self.tmux.pane(ident.pane_id)
            return pane is not None and not pane.dead
        return True

    def stop_orchestrator(self, reason: str) -> None:
        ident = self.orchestrator()
        if ident is None:
            return
        if ident.tmux_session:
            try:
                self.tmux.kill_session(ident.tmux_session)
            except AttractorError as exc:
                logger.warning("killing %s: %s", ident.tmux_session, exc)
        deadline = time.monotonic() + 2.0
        while ident.process_alive and time.monotonic() < deadline:
            time.sleep(0.02)
        # only the recorded process (pid and start time), never a pid reused since
        procs.signal_if_same(ident.pid, ident.pid_start, signal_module.SIGKILL)
        if ident.status not in (IdentityStatus.TERMINATED, IdentityStatus.QUARANTINED):
            try:
                identities.mark_terminated(self.state, "orchestrator", self.cfg.node, reason=reason)
            except AttractorError as exc:
                logger.info("orchestrator identity: %s", exc)

    def _role_allow(self) -> tuple[str, ...]:
        """Commands the node may run without asking: the node's `allow` attribute (comma
        separated) and the orchestrator role's `allow` list."""
        allowed = [part.strip() for part in (self.node.attrs.get("allow") or "").split(",") if part.strip()]
        try:
            meta_allow = load_role("orchestrator", self.cfg.target_dir).meta.get("allow") or []
        except AttractorError:
            meta_allow = []
        if isinstance(meta_allow, list):
            allowed += [str(item) for item in meta_allow if str(item).strip()]
        return tuple(dict.fromkeys(allowed))

    def validation_commands(self) -> tuple[str, ...]:
        commands = []
        for tool, validated in self.pipeline.validates.items():
            command = self.pipeline.nodes[tool].command if tool in self.pipeline.nodes else None
            if validated == self.cfg.node and command:
                commands.append(command)
        return tuple(commands)

    def branch_base(self) -> str:
        """Where a new node branch starts: the tip the guardian last saw the merge queue leave on
        the target (a commit that landed on the target outside the queue never gets into a node's
        branch), else the target branch."""
        tip = queue_hold.trusted_tip(self.state)
        if tip and gitops.rev_parse(self.cfg.target_dir, tip) and gitops.is_ancestor(
                self.cfg.target_dir, tip, self.cfg.target_branch):
            return tip
        return self.cfg.target_branch

    def ensure_own_worktree(self) -> str:
        """Check the node's worktree against git before an agent starts in it or its report is
        acted on, and repair what can be repaired without losing a commit: a missing worktree
        is recreated from the branch; a plain directory in its place (which would put the agent's
        commits on the checked-out target) is moved aside and the worktree recreated; a clean
        worktree on another branch is switched back. Returns "" when all is well (or repaired),
        else the reason the node cannot go on."""
        import shutil


        problem = gitops.worktree_problem(self.cfg.target_dir, self.worktree, self.branch)
        if problem is None:
            return ""
        logger.error("runner %s: ALERT: %s", self.cfg.node, problem)
        # an agent still at work would go on writing into whatever is there: it ends first
        self.stop_orchestrator("its worktree is broken")
        with contextlib.suppress(AttractorError):
            cp_store.append_event(self.state, self.cfg.run_id, Event.ALERT, node=self.cfg.node,
                                  alert="worktree", reason=problem)
        try:
            here = self.worktree.resolve()
            registered = any(tree.path.resolve() == here and not tree.prunable
                             for tree in gitops.list_worktrees(self.cfg.target_dir))
            if registered and self.worktree.is_dir():  # our worktree, on another branch
                current = gitops.current_branch(self.cfg.target_dir, cwd=self.worktree)
                if not gitops.is_clean(self.worktree):
                    if current is None:
                        return f"{problem}, with uncommitted changes on a detached HEAD; a human must look"
                    # kept where the agent put them, never lost: committed on the branch it switched to
                    gitops.commit_everything(self.worktree, f"attractor: uncommitted work found on {current}, "
                                             f"kept here; the node works on {self.branch}")
                    logger.warning("runner %s: committed the uncommitted work on %s to keep it", self.cfg.node,
                                   current)
                gitops.checkout_branch(self.worktree, self.branch)
                logger.warning("runner %s: switched the worktree back from %s to %s", self.cfg.node, current,
                               self.branch)
            else:
                if self.worktree.exists():
                    aside = self.worktree.with_name(f"{self.worktree.name}.stray-{time.strftime('%Y%m%dT%H%M%S')}")
                    shutil.move(str(self.worktree), str(aside))
                    logger.warning("runner %s: moved the stray directory aside to %s", self.cfg.node, aside)
                gitops.ensure_worktree(self.cfg.target_dir, self.worktree, self.branch, base=self.branch_base())
        except (AttractorError, OSError) as exc:
            return f"{problem}; repairing it failed: {exc}"
        again = gitops.worktree_problem(self.cfg.target_dir, self.worktree, self.branch)
        return again or ""

    def spawn_orchestrator(self, attempt: int, note: str = "") -> None:
        import uuid

        problem = self.ensure_own_worktree()
        if problem:
            self.fail(f"the worktree cannot be used: {problem}")
            return
        hook = self.hook()
        wisdom = hooks.build_wisdom_prompt_block(hook) if (attempt > 1 or note or len(hook.history) > 2) else ""
        if note and note not in wisdom:
            wisdom = f"{wisdom.rstrip()}\n\nWhy this agent was started again: {note}\n"
        prompt = build_prompt(
            role=load_role("orchestrator", self.cfg.target_dir), node=self.cfg.node,
            task=self.node.prompt or "", worktree=self.worktree, branch=self.branch,
            agent_id=self.cfg.orchestrator_id, runner_id=self.cfg.agent_id, wisdom=wisdom,
            goal=self.pipeline.goal, attempt=attempt,
        )
        prompt_file, script_file = write_launch_files(self.state, self.cfg.run_id, self.cfg.node, attempt,
                                                      prompt, self.node.script)
        session = agent_sessions.start(self.state, self.cfg.orchestrator_id, run_id=self.cfg.run_id,
                                       node=self.cfg.node, cli=self.agent.name,
                                       new_session_id=lambda: str(uuid.uuid4()))
        resume = bool(session.starts > 1 and session.resumable and session.session_id and self.agent.has_hooks)
        if session.starts > 1 and not resume:
            session = agent_sessions.update(self.state, self.cfg.orchestrator_id, session_id=str(uuid.uuid4()),
                                            transcript_path="", resumable=False) or session
        self.resumed_start = clock.iso() if resume else None
        ctx = launch_context(
            self.state, node=self.cfg.node, worktree=self.worktree, prompt_file=prompt_file, attempt=attempt,
            script_file=script_file, run_id=self.cfg.run_id, target_dir=self.cfg.target_dir, branch=self.branch,
            target_branch=self.cfg.target_branch,
            agent_dir=agent_sessions.agent_dir(self.state, self.cfg.orchestrator_id),
            session_id=session.session_id, resume=resume,
            allow=tuple(dict.fromkeys((*self.role_allow, *remembered_allow(self.state, self.cfg.orchestrator_id)))),
            validation_commands=self.validation_commands(),
            model=self.node.attrs.get("model") or os.environ.get(names.ENV_MODEL, ""))
        launch = agent_launch(self.agent, ctx)
        self.launch_ctx = ctx
        self.stop_orchestrator("replaced by a new attempt")
        name = layout.session_name(self.cfg.run_id, "orch", self.cfg.node)
        if self.tmux.has_session(name):
            self.tmux.kill_session(name)  # the dead pane of an earlier incarnation, kept for diagnosis
        created = identities.create_identity(self.state, "orchestrator", self.cfg.node, session_id=self.cfg.run_id,
                                             worktree=str(self.worktree), tmux_socket=self.cfg.tmux_socket,
                                             tmux_session=name)
        env = layout.agent_env(self.state, run_id=self.cfg.run_id, node=self.cfg.node,
                               tmux_socket=self.cfg.tmux_socket, target_branch=self.cfg.target_branch)
        env[names.ENV_AGENT_EPOCH] = str(created.epoch)  # hooks of an earlier incarnation are ignored
        # a secret the pane inherits anyway is not repeated on tmux's command line (`-e` shows in
        # `ps` and `tmux show-environment`)
        env.update({k: v for k, v in launch.env.items() if not (_secret(k) and os.environ.get(k) == v)})
        argv = with_env_removed(launch.argv, launch.unset)
        pane = self.tmux.new_session(name, argv, cwd=self.worktree, env=env, keep_dead_panes=True)
        identities.update_fields(self.state, "orchestrator", self.cfg.node, pid=pane.pane_pid,
                                 pane_id=pane.pane_id, tmux_session=name)
        self.answered.clear()
        logger.info("runner %s: orchestrator attempt %d in %s (pane %s pid %s)%s", self.cfg.node, attempt,
                    name, pane.pane_id, pane.pane_pid, f", resuming session {session.session_id}" if resume else "")

    # -- phases --------------------------------------------------------------------------------
    def start_attempt(self, note: str) -> None:
        """Enter executing (a new attempt) and start a fresh orchestrator."""
        hook = self.hook()
        if hook.phase is HookPhase.EXECUTING and hook.attempts >= 1:
            # the attempt under way ended (stuck, a report without a commit): close it as failed
            # so that the next one is counted
            self.set_phase(HookPhase.FAILED, note=f"attempt {hook.attempts} ended: {note[:150]}")
            hook = self.hook()
        if hook.phase is not HookPhase.EXECUTING:
            if note:
                hooks.update_resumption_instructions(self.state, "runner", self.cfg.node, note)
            self.set_phase(HookPhase.EXECUTING, note=note[:200])
            hook = self.hook()
        self.spawn_orchestrator(max(hook.attempts, 1), note)

    def retry_or_fail(self, what: str, detail: str) -> None:
        hook = self.hook()
        if hook.attempts >= self.max_attempts:
            summary, tail = summary_line(detail), detail[-300:]
            more = f"\n{tail}" if tail.strip() != summary else ""  # the first line says why; the tail shows it
            self.fail(f"{what} after {hook.attempts} attempt(s): {summary}{more}")
            return
        note = (f"Attempt {hook.attempts} ended with {what}. Fix it and commit again.\n"
                f"Output:\n{detail[-3000:]}")
        self.start_attempt(note)

    def fail(self, reason: str, *, quarantined: bool = False) -> None:
        """The node is over without a merge: failed, or blocked when its agent is quarantined."""
        logger.warning("runner %s: node %s: %s", self.cfg.node, "blocked" if quarantined else "failed", reason)
        if self.hook().phase not in (HookPhase.FAILED, HookPhase.MERGED):
            self.set_phase(HookPhase.FAILED, note=reason[:300], quarantined=quarantined)
        self.send_guardian(SignalKind.ORCHESTRATOR_STUCK, {"node": self.cfg.node, "reason": reason[:1000],
                                                           "quarantined": quarantined})
        self.stop_orchestrator("node failed")
        self.exit_code = 1
        self.finished.set()

    def resume(self) -> None:
        """Pick up wherever the hook says the node is (first start or after a restart)."""
        hook = self.hook()
        phase = hook.phase
        if phase is HookPhase.MERGED:
            self.finished.set()
        elif phase is HookPhase.FAILED:
            self.start_attempt("A previous attempt failed; the guardian restarted this node.")
        elif phase is HookPhase.SPAWNED:
            self.start_attempt("")
        elif phase is HookPhase.EXECUTING:
            if self.rescue_report():
                return
            if self.orchestrator_alive():
                logger.info("runner %s: re-adopting live orchestrator", self.cfg.node)
            else:
                self.spawn_orchestrator(max(hook.attempts, 1), "resumed after a restart")
        elif phase in (HookPhase.IMPL_COMPLETE, HookPhase.VALIDATING):
            self.send_guardian(SignalKind.NODE_IMPL_COMPLETE, {
                "node": self.cfg.node, "branch": self.branch, "commit": hook.last_commit or "",
                "worktree": str(self.worktree)})
        elif phase is HookPhase.MERGE_READY:
            self.send_merge_ready(hook.last_commit or "")

    def rescue_report(self) -> bool:
        """A report the current agent sent while this runner was down was addressed to the
        runner's previous epoch and recorded as stale; the agent's work is not stale, so act on
        it. Reports from earlier incarnations of the agent stay ignored."""
        current = self.orchestrator()
        if current is None:
            return False
        self.consumer.poll_once()  # what waits in new/ is handled (or found stale) first
        if self.hook().phase is not HookPhase.EXECUTING:
            return True
        for sig in reversed(signals.Inbox(self.state, self.cfg.agent_id).list("done")):
            if sig.kind is SignalKind.ORCHESTRATOR_DONE and (sig.outcome or "").startswith("stale") \
                    and sig.created_at >= current.created_at:
                logger.info("runner %s: acting on a report sent while the runner was down", self.cfg.node)
                self._handle(sig)
                return True
        return False

    def send_merge_ready(self, commit: str) -> None:
        self.send_guardian(SignalKind.MERGE_READY, {
            "node": self.cfg.node, "branch": self.branch, "commit": commit, "owner": self.cfg.agent_id,
            "priority": self.node.priority})

    # -- signals -------------------------------------------------------------------------------
    def handle(self, sig: signals.Signal) -> str:
        try:
            with self.lock:
                return self._handle(sig)
        finally:
            self.deaths.wake()  # the loop looks again at once

    # The signals a runner acts on, and the hook phases in which each one means something; in
    # any other phase the signal is recorded as ignored. None: every phase.
    HANDLED_IN: ClassVar[dict[SignalKind, tuple[HookPhase, ...] | None]] = {
        SignalKind.ORCHESTRATOR_DONE: (HookPhase.EXECUTING,),
        SignalKind.ORCHESTRATOR_STUCK: (HookPhase.EXECUTING,),
        SignalKind.VALIDATION_PASSED: (HookPhase.IMPL_COMPLETE, HookPhase.VALIDATING),
        SignalKind.VALIDATION_FAILED: (HookPhase.IMPL_COMPLETE, HookPhase.VALIDATING),
        SignalKind.MERGE_COMPLETE: None,  # checked against the queue's records instead
        SignalKind.MERGE_FAILED: (HookPhase.MERGE_READY,),
        SignalKind.SHUTDOWN: None,
        SignalKind.RESPAWN: None,
    }

    def _handlers(self) -> dict[SignalKind, Callable[[signals.Signal, HookPhase], str]]:
        return {
            SignalKind.ORCHESTRATOR_DONE: self._on_done,
            SignalKind.ORCHESTRATOR_STUCK: self._on_stuck,
            SignalKind.VALIDATION_PASSED: self._on_validation_passed,
            SignalKind.VALIDATION_FAILED: self._on_validation_failed,
            SignalKind.MERGE_COMPLETE: self._on_merge_complete,
            SignalKind.MERGE_FAILED: self._on_merge_failed,
            SignalKind.SHUTDOWN: self._on_shutdown,
            SignalKind.RESPAWN: self._on_respawn,
        }

    def _handle(self, sig: signals.Signal) -> str:
        handler = self._handlers().get(sig.kind)
        if handler is None:
            return f"ignored: {sig.kind.value} is not for a runner"
        if sig.kind in (SignalKind.ORCHESTRATOR_DONE, SignalKind.ORCHESTRATOR_STUCK):
            current = self.orchestrator()
            if current is not None and sig.created_at < current.created_at:
                logger.info("runner %s: %s from an earlier agent incarnation ignored", self.cfg.node, sig.kind.value)
                return "stale: sent by an earlier incarnation of the agent"
        phase = self.hook().phase
        phases = self.HANDLED_IN[sig.kind]
        if phases is not None and phase not in phases:
            return f"ignored: phase is {phase.value}"
        return handler(sig, phase)

    @staticmethod
    def _payload(sig: signals.Signal, cls: type[P]) -> P:
        return payloads.expect(sig.payload, cls, f"{sig.kind.value} signal {sig.id}")

    def _on_done(self, sig: signals.Signal, phase: HookPhase) -> str:
        return self.on_report(self._payload(sig, payloads.OrchestratorDone).summary)

    def _on_stuck(self, sig: signals.Signal, phase: HookPhase) -> str:
        self.retry_or_fail("the agent stuck", self._payload(sig, payloads.OrchestratorStuck).reason)
        return "stuck"

    def _on_validation_passed(self, sig: signals.Signal, phase: HookPhase) -> str:
        commit = self._payload(sig, payloads.ValidationPassed).commit
        self.set_phase(HookPhase.MERGE_READY, commit=commit or None)
        self.send_merge_ready(commit or self.hook().last_commit or "")
        return "merge_ready"

    def _on_validation_failed(self, sig: signals.Signal, phase: HookPhase) -> str:
        self.retry_or_fail("a validation failure", self._payload(sig, payloads.ValidationFailed).output)
        return "validation_failed"

    def _on_merge_complete(self, sig: signals.Signal, phase: HookPhase) -> str:
        merged = self._payload(sig, payloads.MergeComplete)
        problem = self.merge_claim_problem(merged.entry_id, merged.merged_sha)
        if problem:
            self.reject_signal(sig, problem)
            return f"rejected: {problem}"
        if phase is not HookPhase.MERGED:
            hooks.mark_merged(self.state, "runner", self.cfg.node, merged.merged_sha)
        # merged (by this signal, or already by the guardian): this runner's work is over
        self.record_usage()
        self.stop_orchestrator("node merged")
        self.finished.set()
        return "merged" if phase is not HookPhase.MERGED else "merged (the hook already said so)"

    def _on_merge_failed(self, sig: signals.Signal, phase: HookPhase) -> str:
        failed = self._payload(sig, payloads.MergeFailed)
        detail = "\n".join(filter(None, [
            f"merge failed: {failed.reason}", failed.detail,
            ("conflicting files: " + ", ".join(failed.files)) if failed.files else "", failed.gate_output]))
        self.retry_or_fail(f"a merge failure ({failed.reason})", detail)
        return "merge_failed"

    def _on_shutdown(self, sig: signals.Signal, phase: HookPhase) -> str:
        self.stop_orchestrator("shutdown")
        self.finished.set()
        return "shutdown"

    def _on_respawn(self, sig: signals.Signal, phase: HookPhase) -> str:
        if phase is HookPhase.EXECUTING:
            self.spawn_orchestrator(max(self.hook().attempts, 1), "respawn requested")
        return "respawned"

    def merge_claim_problem(self, entry_id: str, sha: str) -> str:
        """Why a MERGE_COMPLETE is not to be believed, or "": the queue's own entry must say it
        merged this branch at `sha`, and `sha` must be on the target branch."""
        try:
            entry = merge_entries.get_entry(self.state, entry_id) if entry_id else None
        except AttractorError:
            entry = None
        if entry is None:
            return f"no merge-queue entry {entry_id!r}"
        if entry.branch != self.branch or entry.state is not MergeEntryState.MERGED or entry.outcome is None \
                or entry.outcome.merged_sha != sha:
            return (f"the queue's entry {entry_id} says {entry.state.value} "
                    f"{(entry.outcome.merged_sha if entry.outcome else None)!r} for {entry.branch}, not merged {sha!r}")
        if not gitops.is_ancestor(self.cfg.target_dir, sha, self.cfg.target_branch):
            return f"{sha} is not on {self.cfg.target_branch}"
        return ""

    def reject_signal(self, sig: signals.Signal, problem: str) -> None:
        """A signal that does not hold against the ground truth: recorded and raised as an alert."""
        logger.error("runner %s: ALERT: rejected %s from %s: %s", self.cfg.node, sig.kind.value, sig.sender, problem)
        try:
            cp_store.append_event(self.state, self.cfg.run_id, Event.ALERT, node=self.cfg.node,
                                  alert="signal_rejected", kind=sig.kind.value, sender=sig.sender, reason=problem)
        except AttractorError as exc:
            logger.info("recording the alert: %s", exc)

    def on_report(self, summary: str) -> str:
        """The agent says its work is done: the branch must have a commit beyond the target."""
        problem = self.ensure_own_worktree()
        if problem:
            self.fail(f"the worktree cannot be used: {problem}")
            return "worktree broken"
        commit = gitops.rev_parse(self.cfg.target_dir, f"refs/heads/{self.branch}") or ""
        if not commit or not gitops.commits_between(self.cfg.target_dir, self.cfg.target_branch, commit):
            self.retry_or_fail("a report without a commit",
                               f"The branch {self.branch} has no commit beyond {self.cfg.target_branch}. "
                               "Commit your work (git add -A && git commit) before reporting.")
            return "no commit"
        agent_sessions.update(self.state, self.cfg.orchestrator_id, reported=True, needs_input=None)
        self.record_usage()
        self.set_phase(HookPhase.IMPL_COMPLETE, note=summary[:200], commit=commit)
        self.send_guardian(SignalKind.NODE_IMPL_COMPLETE, {
            "node": self.cfg.node, "branch": self.branch, "commit": commit, "worktree": str(self.worktree)})
        return "impl_complete"

    # -- the loop ------------------------------------------------------------------------------
    def agent_pane(self, ident: identities.Identity, watched: bool) -> PaneInfo | None:
        """The agent's pane as tmux last told it: asked again when the agent's process is gone,
        when the agent was replaced, or when its interval passed (see PANE_CHECK_INTERVAL)."""
        now = time.monotonic()
        of = (ident.epoch, ident.pane_id or "")
        last = self.last_pane
        if of != self.last_pane_of or self.pty is None:
            self.pty = procs.terminal_of(ident.pid)
            self.listen_to(self.pty)
        if self.bell_unwatch is not None:
            stamp: int | None = self.bell.writes
        else:
            stamp = procs.written_stamp(self.pty) if self.pty is not None else None
        interval = PANE_CHECK_INTERVAL
        if watched and last is not None and time.time() - last.last_activity > ACTIVE_WINDOW:
            if stamp is None:
                interval = NO_PTY_PANE_CHECK_INTERVAL
            elif stamp == self.pty_stamp:
                interval = QUIET_PANE_CHECK_INTERVAL  # nothing written since tmux was last asked
        if not ident.process_alive or of != self.last_pane_of or now - self.last_pane_at >= interval:
            self.last_pane = self.tmux.pane(ident.pane_id) if ident.pane_id else None
            self.last_pane_at, self.last_pane_of, self.pty_stamp = now, of, stamp
        return self.last_pane

    def listen_to(self, pty: Path | None) -> None:
        """Have the bell ring on writes to `pty`, the agent's terminal (None: to nothing)."""
        if pty == self.bell_pty and self.bell_unwatch is not None:
            return
        wakeup.unwatch(self.bell_unwatch)
        self.bell_unwatch, self.bell_pty = None, pty
        if pty is not None:
            self.bell_unwatch = wakeup.watch_writes(pty, self.bell)

    def listen_for_messages(self) -> None:
        """Wake the loop when a message for the agent arrives (typed in once the agent is idle)."""
        if self.inbox_unwatch is None:
            self.inbox_unwatch = wakeup.watch_directory(
                signals.ensure_inbox(self.state, self.cfg.orchestrator_id) / "new", self.deaths)

    def capture_due(self, pane: PaneInfo, now: float) -> bool:
        """Read the agent's screen now? At most every PROMPT_CHECK_INTERVAL: after the window
        showed activity since the last read, while a dialog shows, or QUIET_CAPTURE_INTERVAL
        after the last read."""
        if now - self.last_capture < PROMPT_CHECK_INTERVAL:
            return False
        if self.dialog_showing or now - self.last_capture >= QUIET_CAPTURE_INTERVAL:
            return True
        # activity is in whole seconds: the second of the last read counts as after it
        return pane.last_activity >= int(self.last_capture_wall)

    def check_orchestrator(self) -> None:
        """Supervise the orchestrator: death, hang and known prompts (see `watch`)."""
        self.settled = False
        with self.lock:
            if self.finished.is_set() or self.hook().phase is not HookPhase.EXECUTING:
                self.settled = True  # the agent's part is over: signals wake the loop
                self.agent_done = True  # and the bell is not armed again (it may come back to work)
                return
            self.agent_done = False
            ident = self.orchestrator()
        if ident is None:
            return
        agent = ident.agent_id
        if ident.status in SUPERVISED:
            watched = self.deaths.watch("agent", ident.pid, ident.pid_start)
            pane = self.agent_pane(ident, watched)
            gone = not ident.process_alive or pane is None or pane.dead
            if gone:
                # handle whatever it sent just before it exited, then look again
                self.consumer.poll_once()
                with self.lock:
                    if self.finished.is_set() or self.hook().phase is not HookPhase.EXECUTING:
                        return
                if self.exited_with_commit(ident, pane) or self.exited_without_report(ident, pane):
                    return
            text = None
            now = time.monotonic()
            if pane is not None and not pane.dead and self.capture_due(pane, now):
                self.last_capture, self.last_capture_wall = now, time.time()
                try:
                    text = self.tmux.capture_pane(pane.pane_id, 40)
                except AttractorError:
                    text = None
            if now - self.last_usage >= USAGE_INTERVAL:
                self.last_usage = now
                self.record_usage()
            if pane is not None and not pane.dead and now - self.last_delivery >= MESSAGE_INTERVAL:
                self.last_delivery = now
                try:
                    self.messages_waiting = deliver_by_paste(
                        self.state, agent, pane.pane_id, self.tmux, has_hooks=self.agent.has_hooks,
                        last_activity=pane.last_activity) > 0
                except AttractorError as exc:
                    logger.info("runner %s: delivering messages: %s", self.cfg.node, exc)
            panes = {pane.pane_id: pane} if pane is not None else {}
            with self.lock:
                again = self.orchestrator()
                if again is None or again.epoch != ident.epoch or self.hook().phase is not HookPhase.EXECUTING:
                    return  # replaced or finished meanwhile: this observation is out of date
                verdict = self.watch.check(ident, panes, text, exit_code=pane.dead_status if pane else None)
            health = verdict.report.health
            if health is Health.BLOCKED and verdict.report.prompt is not None:
                self.dialog_showing = True
                self.answer_prompt(ident, verdict.report.prompt, text or "")
            elif text is not None:
                self.dialog_showing = False
                self.clear_prompt_needs_input()
            if health is not Health.DEAD:
                self.settled = watched and health is Health.ALIVE
                return
            said = self.record_pane_at_death(ident, pane)
            logger.warning("runner %s: orchestrator dead: %s%s", self.cfg.node, verdict.report.reason,
                           f"; its pane said: {said}" if said else "")
            if verdict.decision is not None and verdict.decision.action.value == "quarantine":
                with self.lock:
                    self.fail(f"quarantined: {verdict.decision.reason}"
                              + (f"; the agent's last words: {said}" if said else "")
                              + f"; after fixing the cause, clear it with: attractor agent clear orchestrator "
                              f"{self.cfg.node}", quarantined=True)
                return
        elif ident.status is IdentityStatus.QUARANTINED or self.watch.quarantined(agent):
            with self.lock:
                self.fail(f"quarantined: {self.watch.supervisor.state_of(agent).quarantine_reason}; "
                          f"clear it with: attractor agent clear orchestrator {self.cfg.node}", quarantined=True)
            return
        if self.watch.may_respawn(agent):
            with self.lock:
                if self.finished.is_set() or self.hook().phase is not HookPhase.EXECUTING:
                    return
                self.spawn_orchestrator(max(self.hook().attempts, 1),
                                        "the previous agent process died before reporting")
                self.watch.respawned(agent)

    def exited_with_commit(self, ident: identities.Identity, pane: object) -> bool:
        """For an agent that reports by exiting (Aider): exit 0 with a new commit on the branch is
        its report; exit 0 without one is a report without a commit. True when handled."""
        if self.agent.reports != REPORTS_BY_EXIT or not isinstance(pane, PaneInfo) or not pane.dead:
            return False
        if pane.dead_status not in (0, None):
            return False  # None: tmux did not learn the status (seen with 3.3a); git decides
        self.record_pane_at_death(ident, pane)
        self.record_usage()
        with self.lock:
            if self.finished.is_set() or self.hook().phase is not HookPhase.EXECUTING:
                return True
            try:
                identities.mark_terminated(self.state, "orchestrator", self.cfg.node, reason="exited 0")
            except AttractorError as exc:
                logger.info("orchestrator identity: %s", exc)
            logger.info("runner %s: the agent exited 0; reporting for it", self.cfg.node)
            self.on_report(summary=f"{self.agent.name} exited 0")
        return True

    def exited_without_report(self, ident: identities.Identity, pane: object) -> bool:
        """An agent that reports by command and exited 0 without reporting ended its attempt on
        purpose: starting the same attempt again would do the same, so the next attempt starts,
        told why. True when handled."""
        if self.agent.reports == REPORTS_BY_EXIT or not isinstance(pane, PaneInfo) or not pane.dead:
            return False
        if pane.dead_status != 0:
            return False
        said = self.record_pane_at_death(ident, pane)
        with self.lock:
            if self.finished.is_set() or self.hook().phase is not HookPhase.EXECUTING:
                return True
            try:
                identities.mark_terminated(self.state, "orchestrator", self.cfg.node,
                                           reason="exited 0 without a report")
            except AttractorError as exc:
                logger.info("orchestrator identity: %s", exc)
            done, _ = report_commands(self.cfg.node, self.cfg.orchestrator_id, self.cfg.agent_id)
            self.retry_or_fail("the agent exiting without a report",
                               f"The agent exited (status 0) without reporting{f' ({said})' if said else ''}. "
                               f"Finish the work, commit it, and report with:\n    {done}")
        return True

    def record_pane_at_death(self, ident: identities.Identity, pane: object) -> str:
        """Keep the last lines of a dead agent's pane in the log and its session record; returns
        its last meaningful line (why it died, in its own words)."""
        if not isinstance(pane, PaneInfo):
            return ""
        try:
            text = pane_tail(self.tmux.capture_pane(pane.pane_id, DEATH_TAIL_LINES), DEATH_TAIL_LINES)
        except AttractorError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        meaningful = [line for line in lines if not line.startswith(("Pane is dead", "[exited"))]
        last = meaningful[-1][:300] if meaningful else ""
        if text.strip():
            logger.warning("runner %s: the agent's pane at its end (exit %s):\n%s", self.cfg.node,
                           pane.dead_status, text)
        agent_sessions.update(self.state, self.cfg.orchestrator_id, death={
            "at": clock.iso(), "exit_code": pane.dead_status, "pane_tail": agent_sessions.clip_tail(text),
            "last_line": last})
        if self.resumed_start is not None:
            session = agent_sessions.find(self.state, self.cfg.orchestrator_id)
            event = (session.last_event or {}) if session else {}
            event_at = str(event.get("at") or "")
            # nothing heard since the resumed start, or only its end (Claude Code fires SessionEnd
            # when "No conversation found with session ID"): resuming did not work
            if not event_at or event_at < self.resumed_start or str(event.get("event")) == "session-end" \
                    or "No conversation found" in text:
                # resuming did not get as far as the session's first hook: start fresh next time
                logger.warning("runner %s: resuming the agent's session failed; the next start is fresh",
                               self.cfg.node)
                agent_sessions.update(self.state, self.cfg.orchestrator_id, resumable=False)
        return last

    def record_usage(self) -> None:
        ctx = self.launch_ctx
        if ctx is None:
            return
        session = agent_sessions.find(self.state, self.cfg.orchestrator_id)
        try:
            usage = self.agent.usage(ctx, session.to_json() if session else {})
        except (OSError, ValueError, AttractorError) as exc:
            logger.info("runner %s: reading usage: %s", self.cfg.node, exc)
            return
        if usage is not None:
            agent_sessions.update(self.state, self.cfg.orchestrator_id, usage=usage.to_json())

    def clear_prompt_needs_input(self) -> None:
        session = agent_sessions.find(self.state, self.cfg.orchestrator_id)
        if session is not None and session.needs_input and session.needs_input.get("kind") == "prompt":
            agent_sessions.update(self.state, self.cfg.orchestrator_id, needs_input=None)

    def answer_prompt(self, ident: identities.Identity, prompt: object, text: str) -> None:
        assert isinstance(prompt, PromptMatch)
        key = (prompt.rule, prompt.line)
        now = time.monotonic()
        if prompt.action is PromptAction.ANSWER and prompt.keys and ident.pane_id:
            answered_at = self.answered.get(key)
            if answered_at is not None and now - answered_at < ANSWER_VERIFY_SECONDS:
                return  # answered a moment ago: give the agent time to move on
            if answered_at is None:
                self.answered[key] = now
                logger.warning("runner %s: answering prompt %s by choosing %r (%s)", self.cfg.node, prompt.rule,
                               prompt.choose, " ".join(prompt.keys))
                self.tmux.send_key_names(ident.pane_id, prompt.keys)
                return
            # the same dialog is still there after the answer: do not guess again
            prompt = dataclasses.replace(prompt, action=PromptAction.NEEDS_INPUT,
                                         reason=f"{prompt.reason}; still showing after choosing {prompt.choose!r}")
        if prompt.action is PromptAction.NEEDS_INPUT:
            session = agent_sessions.find(self.state, self.cfg.orchestrator_id)
            current = session.needs_input if session is not None else None
            if current is None or current.get("rule") != prompt.rule or current.get("line") != prompt.line:
                logger.warning("runner %s: the agent needs input (%s): %s", self.cfg.node, prompt.rule, prompt.reason)
                agent_sessions.update(self.state, self.cfg.orchestrator_id, needs_input={
                    "kind": "prompt", "rule": prompt.rule, "line": prompt.line, "message": prompt.question
                    or prompt.line, "options": list(prompt.options), "since": clock.iso()})
            self.deny_after_timeout(ident, prompt)
        elif key not in self.answered:
            self.answered[key] = now
            logger.warning("runner %s: agent blocked at a prompt (%s): %s", self.cfg.node,
                           prompt.action.value, prompt.reason)

    def deny_after_timeout(self, ident: identities.Identity, prompt: object) -> None:
        """The node's `permission_timeout` (seconds): a permission question nobody answered in
        that time is answered "No"."""
        assert isinstance(prompt, PromptMatch)
        limit = self.node.attrs.get("permission_timeout")
        session = agent_sessions.find(self.state, self.cfg.orchestrator_id)
        if not limit or session is None or not session.needs_input or not ident.pane_id:
            return
        since = clock.parse_iso(str(session.needs_input.get("since")))
        if clock.SYSTEM_CLOCK.time() - since < float(limit):
            return
        text = self.tmux.capture_pane(ident.pane_id, 40)
        keys = keys_to_choose(text, "No")
        if keys is None:
            return
        logger.warning("runner %s: nobody answered within %ss; choosing 'No'", self.cfg.node, limit)
        self.tmux.send_key_names(ident.pane_id, keys)
        agent_sessions.update(self.state, self.cfg.orchestrator_id, needs_input=None)

    def next_look(self) -> float:
        """Seconds until the loop looks round again (see IDLE_CHECK_INTERVAL); arms the bell when
        the loop may sleep until the agent prints."""
        if not self.settled:
            return CHECK_INTERVAL
        if self.agent_done:
            return IDLE_CHECK_INTERVAL
        if self.bell_unwatch is None:
            interval = UNWATCHED_CHECK_INTERVAL
        else:
            written, self.writes_seen = self.bell.writes != self.writes_seen, self.bell.writes
            interval = ACTIVE_CHECK_INTERVAL if written else IDLE_CHECK_INTERVAL
            if not written:
                self.bell.armed = True
                if self.bell.writes != self.writes_seen:  # a write came just before the arming
                    interval = ACTIVE_CHECK_INTERVAL
        if self.messages_waiting or self.dialog_showing:
            interval = min(interval, ACTIVE_CHECK_INTERVAL)
        return interval

    def _beat_until(self, done: threading.Event) -> None:
        while not done.wait(HEARTBEAT_INTERVAL):
            with contextlib.suppress(AttractorError):
                self.heartbeat()

    def run(self) -> int:
        try:
            identities.update_liveness(self.state, "runner", self.cfg.node, pid=os.getpid())
        except NotFoundError:
            identities.create_identity(self.state, "runner", self.cfg.node, pid=os.getpid(),
                                       session_id=self.cfg.run_id, worktree=str(self.worktree))
            identities.update_liveness(self.state, "runner", self.cfg.node, pid=os.getpid())
        # Setting up (the worktree, serialised with every other process's worktree changes, then
        # the first agent start) can take long on a loaded machine: beat meanwhile, so that the
        # guardian never takes a runner that is setting up for a stale one.
        set_up = threading.Event()
        threading.Thread(target=self._beat_until, args=(set_up,), name="setup-heartbeat", daemon=True).start()
        hooks.create_hook(self.state, "runner", self.cfg.node, node=self.cfg.node, run_id=self.cfg.run_id)
        try:
            gitops.exclude_path(self.cfg.target_dir, ".claude/")
            if self.worktree.exists() and gitops.worktree_problem(self.cfg.target_dir, self.worktree, self.branch):
                # a runner started again finds what its agent left: repaired (with an alert) or refused
                problem = self.ensure_own_worktree()
                if problem:
                    raise AttractorError(problem)
            else:
                gitops.ensure_worktree(self.cfg.target_dir, self.worktree, self.branch, base=self.branch_base())
        except AttractorError as exc:
            # respawning would fail the same way: give up with the reason, once
            set_up.set()
            self.fail(f"cannot prepare the worktree {self.worktree}: {exc}")
            identities.mark_terminated(self.state, "runner", self.cfg.node, reason="setup failed")
            return 1
        self.consumer = signals.Consumer(
            self.state, self.cfg.agent_id, self.handle,
            current_epoch=lambda: identities.current_epoch(self.state, self.cfg.agent_id),
            rescan_interval=5.0)
        self.listen_for_messages()
        try:
            with self.lock:
                # before the consumer's thread runs: a report sent while this runner was down
                # is found by `rescue_report` alone, not claimed by that thread meanwhile
                self.resume()
            self.consumer.start()
            set_up.set()  # from here the loop beats
            last_beat = 0.0
            patience = DiskPatience(self.cfg.agent_id)
            while not self.finished.is_set():
                now = time.monotonic()
                try:
                    if now - last_beat >= HEARTBEAT_INTERVAL:
                        self.heartbeat()
                        last_beat = now
                    self.check_orchestrator()
                    patience.ok()
                except NoSpaceError as exc:
                    self.finished.wait(patience.hit(exc))
                if self.finished.is_set():
                    break
                self.deaths.wait(min(self.next_look(), last_beat + HEARTBEAT_INTERVAL - time.monotonic()))
        finally:
            set_up.set()
            self.consumer.stop()
            wakeup.unwatch(self.inbox_unwatch)
            self.listen_to(None)
            self.deaths.close()
        if self.hook().phase is HookPhase.MERGED:
            try:
                gitops.remove_worktree(self.cfg.target_dir, self.worktree)
            except AttractorError as exc:
                logger.warning("removing worktree %s: %s", self.worktree, exc)
        try:
            identities.mark_terminated(self.state, "runner", self.cfg.node, reason=f"exit {self.exit_code}")
        except AttractorError as exc:
            logger.info("runner identity: %s", exc)
        return self.exit_code
