"""Ending a run cleanly: `attractor stop`.

The guardian is asked first (SHUTDOWN); what is still alive after the timeout is ended by its
recorded pid (SIGTERM, then SIGKILL), and only while that pid is still the recorded process (the
same start time, `procs.same_process`): a pid reused by an unrelated process, or recorded
without a start time, is reported and never signalled. Only tmux sessions attractor created for this run
(`att-<run>-…`, tagged as ours) and only recorded pids are touched. Worktrees of unmerged nodes
are removed only when clean; branches are always kept, so no work is lost.
"""

from __future__ import annotations

import logging
import os
import signal as signal_module
import time
from pathlib import Path

from attractor import procs
from attractor.errors import AttractorError, NotFoundError
from attractor.layers import layout
from attractor.names import validate_name
from attractor.states import IdentityStatus, RunStatus, SignalKind
from attractor.store import checkpoint as cp_store
from attractor.store import identities, signals
from attractor.store.checkpoint import Event
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)


def _end_process(pid: int, start: int, grace: float) -> None:
    """SIGTERM, then SIGKILL, the process `pid` started at `start`, never another one."""
    for sig in (signal_module.SIGTERM, signal_module.SIGKILL):
        if not procs.signal_if_same(pid, start, sig):
            return
        deadline = time.monotonic() + grace
        while procs.same_process(pid, start) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not procs.same_process(pid, start):
            return


def _not_ours(ident: identities.Identity) -> str | None:
    """Why the recorded pid of a live-looking record is not signalled, or None if it is the
    recorded process (or nothing has that pid)."""
    if ident.pid is None or not procs.pid_alive(ident.pid) or ident.process_alive:
        return None
    if ident.pid_start is None:
        return (f"left pid {ident.pid} of {ident.agent_id} alone: the record has no start time, so it "
                "cannot tell its process from a reused pid; end it by hand if it is the agent's")
    return (f"left pid {ident.pid} of {ident.agent_id} alone: it now belongs to another process "
            "(its start time differs from the recorded one)")


def stop_run(state: StateDir, run_id: str | None, *, tmux_socket: str | None = None,
             timeout: float = 10.0) -> list[str]:
    from attractor import gitops
    from attractor.tmux import Tmux

    run_id = run_id or cp_store.latest_run(state)
    if run_id is None:
        raise NotFoundError("run", "(any)", f"no run in {state.root}")
    cp = cp_store.read_checkpoint(state, validate_name(run_id, "run id"))
    lines: list[str] = []
    guardian = identities.find(state, "guardian", run_id)
    if guardian is not None and guardian.process_alive:
        assert guardian.pid is not None and guardian.pid_start is not None
        signals.send(state, SignalKind.SHUTDOWN, to=layout.guardian_id(run_id), sender="user-cli",
                     payload={"reason": "attractor stop"})
        deadline = time.monotonic() + timeout
        while guardian.process_alive and time.monotonic() < deadline:
            time.sleep(0.05)
        if guardian.process_alive:
            _end_process(guardian.pid, guardian.pid_start, 2.0)
            lines.append(f"guardian pid {guardian.pid} did not stop in {timeout:g}s; ended it")
        else:
            lines.append(f"guardian pid {guardian.pid} stopped")
    elif guardian is not None and (why := _not_ours(guardian)):
        lines.append(why)
    sockets = {tmux_socket} if tmux_socket else set()
    live = (IdentityStatus.SPAWNING, IdentityStatus.ACTIVE, IdentityStatus.STALE)
    for ident in identities.list_identities(state):
        if ident.session_id != run_id or ident.role == "launcher":
            continue  # another run's, or the following launcher: it sees the run stopped and ends
        if ident.tmux_socket:
            sockets.add(ident.tmux_socket)
        if ident.status in live and ident.pid != os.getpid():
            if ident.process_alive:
                assert ident.pid is not None and ident.pid_start is not None
                _end_process(ident.pid, ident.pid_start, 1.0)
                lines.append(f"ended {ident.agent_id} (pid {ident.pid})")
            elif why := _not_ours(ident):
                lines.append(why)
        if ident.status in live or ident.status in (IdentityStatus.CRASHED, IdentityStatus.RESPAWNING):
            try:
                identities.mark_terminated(state, ident.role, ident.name, reason="attractor stop")
            except AttractorError as exc:
                logger.info("%s", exc)
    prefix = layout.run_sessions_prefix(run_id)
    for socket in sockets:
        try:
            lines += [f"killed tmux session {name}" for name in Tmux(socket).kill_owned_sessions(prefix)]
        except AttractorError as exc:
            lines.append(f"left tmux sessions on {socket}: {exc}")
    target = Path(cp.target_dir)
    for name in cp.nodes:
        path = layout.worktree_path(target, name)
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
    if cp.status == RunStatus.RUNNING:
        cp_store.write_checkpoint(state, cp.with_status(RunStatus.STOPPED, "attractor stop"))
        cp_store.append_event(state, run_id, Event.RUN_STOPPED)
    lines.append(f"run {run_id} {cp_store.read_checkpoint(state, run_id).status}")
    return lines
