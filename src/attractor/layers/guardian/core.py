"""The guardian's configuration, its start, and the state and bookkeeping every one of its
jobs shares: the checkpoint, the node records, signals to runners, alerts.
"""

from __future__ import annotations

import logging
import queue
import signal as signal_module
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor import clock, procs
from attractor.engines.pipeline import load_pipeline, topological_order
from attractor.engines.watch import Watch
from attractor.errors import AttractorError
from attractor.layers import layout
from attractor.layers.runner import RunnerConfig
from attractor.states import IdentityStatus, NodeState, SignalKind
from attractor.store import checkpoint as cp_store
from attractor.store import identities, payloads, signals
from attractor.store.checkpoint import Event
from attractor.store.statedir import StateDir
from attractor.tmux import PaneInfo, Tmux

logger = logging.getLogger(__name__)

# The loop sleeps on events (a runner's death by its pidfd, a node finished, a stop) and looks
# round every TICK while something is starting, dying or waiting out a backoff, every IDLE_TICK
# while every runner is up and watched.
TICK = 0.2
IDLE_TICK = 5.0
HEARTBEAT_INTERVAL = identities.GUARDIAN_HEARTBEAT_INTERVAL
OUTPUT_TAIL = 4000
TIP_CHECK_INTERVAL = 2.0
# The target's tip is read from git again when the files that hold the ref changed, and at least
# this often.
TIP_REFRESH_INTERVAL = 30.0
START_CEILING = 120.0  # seconds a live guardian process may take to become active
# The panes are asked of tmux (one batched query, one tmux client) at most this often while
# something is starting or dying, PANES_QUIET_INTERVAL while every runner is up and watched.
PANES_INTERVAL = 1.0
PANES_QUIET_INTERVAL = 10.0


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


class GuardianBase:
    """What every job of the guardian reads and writes; the jobs are the classes built on it."""

    def __init__(self, cfg: GuardianConfig) -> None:
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
        self._reloads: list[tuple[payloads.PipelineReload, str]] = []  # edits waiting for the main loop
        self.merges: set[str] = set()
        self.merge_work: queue.Queue[tuple[str, payloads.MergeReady] | None] = queue.Queue()
        self.pool = ThreadPoolExecutor(max_workers=max(1, self.cp.max_agents), thread_name_prefix="validate")
        self.runner_restarts: dict[str, int] = {}
        self.gate_pids: set[tuple[int, int | None]] = set()  # (pid, start time) of running gates

        self.order = topological_order(self.pipeline)
        self.watch = Watch(cfg.state)
        # the target's tip as the queue last left it: anything else found there is an alert
        self._expected_tip: str | None = None
        self.tip_lock = threading.Lock()  # held while the queue may move the target
        self.alerted_tips: set[str] = set()
        self.last_tip_check = 0.0
        self.panes: dict[str, PaneInfo] = {}  # the last batched answer of tmux, and when
        self.panes_at = 0.0
        self.deaths = procs.DeathWatch()  # the runners' processes, by pidfd; wakes the loop
        self.settled = False  # the last look found every runner up and watched

    # -- checkpoint --------------------------------------------------------------------------
    def update_node(self, name: str, event: Event = Event.NODE, **changes: Any) -> None:
        with self.lock:
            self.cp = self.cp.with_node(name, **changes)
            cp_store.write_checkpoint(self.state, self.cp)
            fields = {k: (v.value if isinstance(v, NodeState) else v) for k, v in changes.items()}
            cp_store.append_event(self.state, self.cfg.run_id, event, node=name, **fields)
            finished = self.cp.nodes[name].finished
        if finished:
            self.deaths.wake()  # a node that finished may let the schedule move: look at once

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

    def alert(self, alert: str, reason: str, **fields: Any) -> None:
        logger.error("guardian: ALERT (%s): %s", alert, reason)
        cp_store.append_event(self.state, self.cfg.run_id, Event.ALERT, alert=alert, reason=reason, **fields)

    def active_nodes(self) -> list[str]:
        with self.lock:
            return [n for n, p in self.cp.nodes.items()
                    if p.state in (NodeState.RUNNING, NodeState.VALIDATING, NodeState.MERGING)]

    # -- validation and merge ------------------------------------------------------------------
    def validator_commands(self, node: str) -> list[tuple[str, str, float]]:
        result = []
        for tool in self.pipeline.validators_of(node):
            tool_node = self.pipeline.nodes[tool]
            result.append((tool, tool_node.command or "true", tool_node.timeout or 600.0))
        return result


def runner_alive(state: StateDir, node: str) -> bool:
    ident = identities.find(state, "runner", node)
    return ident is not None and ident.may_be_alive


def now_iso() -> str:
    return clock.iso()

