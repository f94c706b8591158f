"""The daemon's supervision of runs: a watcher thread per live run of every registered project.

Every SCAN_INTERVAL seconds (and at once when the daemon is woken: a run handed over, a project
added) the daemon lists the runs whose checkpoint says `running` and gives each a watcher. While
a live launcher follows the run (`attractor run` in a terminal), the launcher supervises and the
watcher only looks again every FOLLOWED_CHECK_INTERVAL seconds; otherwise the watcher follows
the run with the launcher's own loop (`layers.launcher.follow`), so a dead guardian is respawned
with the same backoff and the same limit and resumes from the checkpoint. A watcher that saw the
guardian die too often gives up (`gave-up`) until `run.resume`.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attractor import clock
from attractor.control.reload import ReloadWatcher
from attractor.errors import AttractorError, BadInputError
from attractor.layers.launcher import Restarts
from attractor.states import IdentityStatus, RunStatus
from attractor.store import checkpoint as cp_store
from attractor.store import identities, projects
from attractor.store.statedir import StateDir

logger = logging.getLogger("attractor.control.daemon")

SCAN_INTERVAL = 5.0
FOLLOWED_CHECK_INTERVAL = 2.0
RETRY_AFTER_ERROR = 5.0


class LogLines(io.StringIO):
    """A text stream for the follower's progress lines: each goes to the log with its run."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.partial = ""

    def write(self, text: str) -> int:
        self.partial += text
        while "\n" in self.partial:
            line, self.partial = self.partial.split("\n", 1)
            if line.strip():
                logger.info("%s %s", self.prefix, line.strip())
        return len(text)


@dataclass
class Watcher:
    project: str
    state_root: Path
    run_id: str
    thread: threading.Thread | None = None
    mode: str = "starting"  # starting | supervising | followed-elsewhere | finished | gave-up | error
    restarts: Restarts = field(default_factory=Restarts)  # across every follow of the run
    since: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str]:
        return run_key(self.state_root, self.run_id)

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "state_dir": str(self.state_root), "run_id": self.run_id,
                "supervision": self.mode, "since": clock.iso(self.since)}


def run_key(state_root: Path, run_id: str) -> tuple[str, str]:
    """One key per run however its state directory was spelled (`../state`, a symlink)."""
    return (str(Path(state_root).resolve()), run_id)


LAUNCHER_SILENT_AFTER = 3 * identities.LAUNCHER_HEARTBEAT_INTERVAL


def live_launcher(state: StateDir, run_id: str) -> identities.Identity | None:
    """The launcher following the run, if one does: its process lives and it beat lately (one
    stopped with Ctrl-Z, or stuck writing to a full pipe, supervises nothing)."""
    ident = identities.find(state, "launcher", run_id)
    if ident is None or ident.status is IdentityStatus.TERMINATED or ident.pid == os.getpid():
        return None
    if not ident.may_be_alive or not ident.last_heartbeat:
        return None
    if time.time() - clock.parse_iso(ident.last_heartbeat) > LAUNCHER_SILENT_AFTER:
        return None
    return ident


def tmux_socket_of(state: StateDir, cp: cp_store.Checkpoint) -> str:
    from attractor import tmux

    guardian = identities.find(state, "guardian", cp.run_id)
    if guardian is not None and guardian.tmux_socket:
        return guardian.tmux_socket
    return tmux.socket_name_for(Path(cp.target_dir))


class DaemonState:
    """What the daemon's parts share (set up by `Daemon.__init__`)."""

    log_level: str
    started: float
    stopping: threading.Event
    wake: threading.Event
    watchers: dict[tuple[str, str], Watcher]
    given_up: set[tuple[str, str]]
    lock: threading.Lock
    socket_file: Path
    reloads: ReloadWatcher

    def stop(self, runs: bool = False) -> None:
        raise NotImplementedError


class Supervision(DaemonState):
    """Finds the live runs and keeps a watcher on each."""

    def scan_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.scan()
            except Exception:  # a bad project file or state directory never stops the daemon
                logger.exception("scan failed")
            self.wake.wait(SCAN_INTERVAL)
            self.wake.clear()

    def live_runs(self) -> list[tuple[projects.Project, StateDir, cp_store.Checkpoint]]:
        found = []
        problems: list[BadInputError] = []
        for project in projects.list_projects(problems):
            state = StateDir(project.state_path)
            if not state.runs.is_dir():
                continue
            for run_id in cp_store.list_runs(state):
                try:
                    cp = cp_store.read_checkpoint(state, run_id)
                except AttractorError as exc:
                    logger.warning("%s: %s", project.name, exc)
                    continue
                if cp.status == RunStatus.RUNNING:
                    found.append((project, state, cp))
        for problem in problems:
            logger.warning("%s", problem)
        return found

    def scan(self) -> None:
        for project, state, cp in self.live_runs():
            key = run_key(state.root, cp.run_id)
            self.reloads.track(state, cp)
            with self.lock:
                current = self.watchers.get(key)
                if key in self.given_up or (current is not None and current.thread is not None
                                            and current.thread.is_alive()):
                    continue
                watcher = Watcher(project.name, state.root, cp.run_id)
                watcher.thread = threading.Thread(target=self.watch, args=(watcher,), name=f"watch-{cp.run_id}",
                                                  daemon=True)
                self.watchers[key] = watcher
            logger.info("%s/%s: watching", project.name, cp.run_id)
            watcher.thread.start()

    def watch(self, watcher: Watcher) -> None:
        from attractor.layers.guardian import GuardianConfig
        from attractor.layers.launcher import follow

        state = StateDir(watcher.state_root)
        prefix = f"{watcher.project}/{watcher.run_id}:"
        while not self.stopping.is_set():
            try:
                cp = cp_store.read_checkpoint(state, watcher.run_id)
                if cp.status != RunStatus.RUNNING:
                    watcher.mode = "finished"
                    self.reloads.forget(state, watcher.run_id)
                    logger.info("%s run %s", prefix, cp.status)
                    return
                if live_launcher(state, watcher.run_id) is not None:
                    watcher.mode = "followed-elsewhere"
                    self.stopping.wait(FOLLOWED_CHECK_INTERVAL)
                    continue
                watcher.mode = "supervising"
                gcfg = GuardianConfig(state=state, run_id=watcher.run_id, tmux_socket=tmux_socket_of(state, cp),
                                      log_level=self.log_level)
                code = follow(state, watcher.run_id, gcfg, LogLines(prefix), heartbeat=False, stop=self.stopping,
                              restarts=watcher.restarts)
                cp = cp_store.read_checkpoint(state, watcher.run_id)
                if code != 0 and cp.status == RunStatus.RUNNING and not self.stopping.is_set():
                    watcher.mode = "gave-up"
                    with self.lock:
                        self.given_up.add(watcher.key)
                    logger.warning("%s the guardian keeps dying; not restarting it again (resume it with: "
                                   "attractor rpc run.resume '{\"project\": \"%s\", \"run_id\": \"%s\"}')",
                                   prefix, watcher.project, watcher.run_id)
                    return
            except AttractorError as exc:
                watcher.mode = "error"
                logger.warning("%s %s; trying again in %gs", prefix, exc, RETRY_AFTER_ERROR)
                self.stopping.wait(RETRY_AFTER_ERROR)
            except Exception:
                watcher.mode = "error"
                logger.exception("%s watcher failed; trying again in %gs", prefix, RETRY_AFTER_ERROR)
                self.stopping.wait(RETRY_AFTER_ERROR)

    def stop_all_runs(self) -> None:
        from attractor.layers.stop import stop_run

        for project, state, cp in self.live_runs():
            try:
                for line in stop_run(state, cp.run_id):
                    logger.info("%s/%s: %s", project.name, cp.run_id, line)
            except AttractorError as exc:
                logger.warning("%s/%s: not stopped: %s", project.name, cp.run_id, exc)
