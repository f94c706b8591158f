"""Ending a run cleanly: `attractor stop`.

The guardian is asked first (SHUTDOWN); what is still alive after the timeout is ended by its
recorded pid (SIGTERM, then SIGKILL). Only tmux sessions attractor created for this run
(`att-<run>-…`, tagged as ours) and only recorded pids are touched. Worktrees of unmerged nodes
are removed only when clean; branches are always kept, so no work is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal as signal_module
import time
from pathlib import Path

from attractor import checkpoint as cp_store
from attractor import identities, signals
from attractor.errors import AttractorError, NotFoundError
from attractor.identities import pid_alive
from attractor.names import validate_name
from attractor.runner import worktree_path
from attractor.statedir import StateDir
from attractor.states import IdentityStatus, SignalKind

logger = logging.getLogger(__name__)


def _end_pid(pid: int, grace: float) -> None:
    for sig in (signal_module.SIGTERM, signal_module.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pid_alive(pid):
            return


def stop_run(state: StateDir, run_id: str | None, *, tmux_socket: str | None = None,
             timeout: float = 10.0) -> list[str]:
    from attractor import gitops
    from attractor.tmux import Tmux

    run_id = run_id or cp_store.latest_run(state)
    if run_id is None:
        raise NotFoundError("run", "(any)", f"no run in {state.root}")
    cp = cp_store.read_checkpoint(state, validate_name(run_id, "run id"))
    lines: list[str] = []
    guardian = None
    with contextlib.suppress(NotFoundError):
        guardian = identities.get(state, "guardian", run_id)
    if guardian is not None and pid_alive(guardian.pid):
        signals.send(state, SignalKind.SHUTDOWN, to=f"guardian-{run_id}", sender="user-cli",
                     payload={"reason": "attractor stop"})
        deadline = time.monotonic() + timeout
        while pid_alive(guardian.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(guardian.pid) and guardian.pid:
            _end_pid(guardian.pid, 2.0)
            lines.append(f"guardian pid {guardian.pid} did not stop in {timeout:g}s; ended it")
        else:
            lines.append(f"guardian pid {guardian.pid} stopped")
    sockets = {tmux_socket} if tmux_socket else set()
    live = (IdentityStatus.SPAWNING, IdentityStatus.ACTIVE, IdentityStatus.STALE)
    for ident in identities.list_identities(state):
        if ident.session_id != run_id or ident.role == "launcher":
            continue  # another run's, or the following launcher: it sees the run stopped and ends
        if ident.tmux_socket:
            sockets.add(ident.tmux_socket)
        if ident.status in live and ident.pid and pid_alive(ident.pid) and ident.pid != os.getpid():
            _end_pid(ident.pid, 1.0)
            lines.append(f"ended {ident.agent_id} (pid {ident.pid})")
        if ident.status in live or ident.status in (IdentityStatus.CRASHED, IdentityStatus.RESPAWNING):
            try:
                identities.mark_terminated(state, ident.role, ident.name, reason="attractor stop")
            except AttractorError as exc:
                logger.info("%s", exc)
    prefix = f"att-{run_id}-".replace(".", "_")
    for socket in sockets:
        try:
            lines += [f"killed tmux session {name}" for name in Tmux(socket).kill_owned_sessions(prefix)]
        except AttractorError as exc:
            lines.append(f"left tmux sessions on {socket}: {exc}")
    target = Path(cp.target_dir)
    for name in cp.nodes:
        path = worktree_path(target, name)
        if not path.exists():
            continue
        try:
            if gitops.is_clean(path):
                gitops.remove_worktree(target, path)
                lines.append(f"removed clean worktree {path} (branch kept)")
            else:
                lines.append(f"kept worktree {path}: it has uncommitted changes")
        except AttractorError as exc:
            lines.append(f"kept worktree {path}: {exc}")
    cp = cp_store.read_checkpoint(state, run_id)
    if cp.status == "running":
        cp_store.write_checkpoint(state, cp.with_status("stopped", "attractor stop"))
        cp_store.append_event(state, run_id, "run_stopped")
    lines.append(f"run {run_id} {cp_store.read_checkpoint(state, run_id).status}")
    return lines
