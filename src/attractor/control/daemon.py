"""The user's daemon: one per user, it supervises the guardian of every live run of every
registered project and answers JSON-RPC 2.0 (`control/rpc.py`) on a Unix socket.

Files (the runtime directory is `$XDG_RUNTIME_DIR/attractor`, else `<config>/run`, mode 0700,
refused when another user owns it or others may write it):

    <runtime>/daemon.sock     the control socket, mode 0600
    <state>/daemon.lock       flock-held for the daemon's whole life (the kernel lets go when it
                              dies); holds {"pid", "pid_start", "started_at", "socket"} of the holder.
                              <state> is `$XDG_STATE_HOME/attractor`, else `~/.local/state/attractor`:
                              one lock per user whatever $XDG_RUNTIME_DIR a shell has
    <state>/logs/daemon.log   what the daemon did
    <state>/logs/daemon.err   its stderr

Its parts: this module has its life (the lock, the socket, start and stop from the command
line); `control/watchers.py` its supervision of runs (a watcher per live run, following it with
the launcher's own loop); `control/methods.py` its JSON-RPC methods. A run whose guardian died
while no daemon ran is resumed when the daemon starts; a run whose guardian is alive is adopted
as it is. Stopping the daemon leaves every guardian running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TextIO

from attractor import clock, procs
from attractor.control import rpc
from attractor.control.client import (
    lock_holder,
    lock_path,
    log_dir,
    runtime_dir,
    socket_path,
)
from attractor.control.methods import DaemonMethods
from attractor.control.reload import ReloadWatcher
from attractor.control.watchers import Supervision, Watcher
from attractor.errors import AttractorError, StateDirError, UsageError
from attractor.store import atomic, projects, wakeup

logger = logging.getLogger(__name__)

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, with its terminating NUL


# -- where things are -------------------------------------------------------------------------


def ensure_private(path: Path) -> Path:
    """`path` (and parents) as a private directory: 0700, ours, nobody else may write it."""
    try:
        return atomic.ensure_private_dir(path)
    except StateDirError as exc:
        raise StateDirError(path, exc.problem.replace("; use your own --state-dir", "; fix its owner")) from None


class DaemonRunningError(AttractorError):
    def __init__(self, pid: int | None, socket_file: str) -> None:
        self.pid = pid
        self.socket_file = socket_file
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a daemon is already running ({who}, socket {socket_file}); "
                         "stop it with: attractor daemon stop")


# -- the socket -------------------------------------------------------------------------------


def bind_socket(path: Path) -> socket.socket:
    """Listen on `path` (0600). A socket file there that accepts a connection is a running
    daemon (refused); one that accepts none is left over from a dead one and is removed."""
    ensure_private(path.parent)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UsageError(f"socket path {path} is {len(os.fsencode(path))} bytes, over the {MAX_SOCKET_PATH} a Unix "
                         "socket allows; set XDG_RUNTIME_DIR to a shorter directory")
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            logger.info("removing stale socket %s", path)
            path.unlink()
        else:
            raise DaemonRunningError(None, str(path))
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(128)
    return listener


# -- the daemon -------------------------------------------------------------------------------


class Daemon(Supervision, DaemonMethods):
    """The daemon: its life here, its supervision of runs in `control/watchers.py`, its methods
    in `control/methods.py`."""

    def __init__(self, log_level: str = "INFO") -> None:
        self.log_level = log_level
        self.started = time.time()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.watchers: dict[tuple[str, str], Watcher] = {}
        self.given_up: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.server: rpc.Server | None = None
        self.lock_fd = -1
        self.socket_file = socket_path()
        self.stop_runs_on_exit = False
        self.reloads = ReloadWatcher(self.stopping)

    # -- life ---------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the per-user lock (exit 1 naming the holder when another daemon has it)."""
        ensure_private(runtime_dir())
        path = lock_path()
        ensure_private(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = lock_holder() or {}
            raise DaemonRunningError(holder.get("pid"), str(holder.get("socket", self.socket_file))) from None
        me = {"pid": os.getpid(), "pid_start": procs.start_time(os.getpid()), "started_at": clock.iso(self.started),
              "socket": str(self.socket_file)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.lock_fd = fd

    def run(self) -> int:
        """Serve until stopped (SIGTERM, SIGINT or the `daemon.stop` method)."""
        self.acquire()
        listener = bind_socket(self.socket_file)
        self.server = rpc.Server(listener, self.methods())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # stop from a thread of its own: the handler may run while this thread holds a lock
            signal.signal(sig, lambda *_: threading.Thread(target=self.stop, name="stop", daemon=True).start())
        logger.info("daemon pid %s listening on %s", os.getpid(), self.socket_file)
        scanner = threading.Thread(target=self.scan_loop, name="scan", daemon=True)
        scanner.start()
        self.reloads.start()
        # a project file added, edited or removed by hand is seen at once, not at the next scan
        ensure_private(projects.config_dir())
        unwatch = wakeup.watch_directory(ensure_private(projects.projects_dir()), self.wake, modified=True)
        try:
            self.server.serve_forever()
        finally:
            wakeup.unwatch(unwatch)
            self.stopping.set()
            self.wake.set()
            if self.stop_runs_on_exit:
                self.stop_all_runs()
            with contextlib.suppress(FileNotFoundError):
                self.socket_file.unlink()
            logger.info("daemon pid %s stopped", os.getpid())
        return 0

    def stop(self, runs: bool = False) -> None:
        self.stop_runs_on_exit = self.stop_runs_on_exit or runs
        self.stopping.set()
        self.wake.set()
        if self.server is not None:
            self.server.stop()

    # -- supervision ----------------------------------------------------------------------------

# -- starting and stopping from the command line ----------------------------------------------


def setup_logging(level: str, quiet_stderr: bool = False) -> None:
    """The daemon's log file, beside whatever stderr the command line set up; `quiet_stderr`
    (a daemon whose stderr is daemon.err) leaves only warnings and errors to stderr."""
    if quiet_stderr:
        for existing in logging.getLogger().handlers:
            existing.setLevel(logging.WARNING)
    directory = ensure_private(log_dir())
    path = directory / "daemon.log"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))


def start_background(log_level: str, out: TextIO, timeout: float = 20.0) -> int:
    """Start the daemon as a process of its own (a new session, stdout and stderr to the log
    files) and wait until its socket answers."""
    import subprocess
    import sys

    holder = lock_holder()
    if holder is not None:
        raise DaemonRunningError(holder.get("pid"), str(holder.get("socket", socket_path())))
    directory = ensure_private(log_dir())
    err_fd = os.open(directory / "daemon.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    with os.fdopen(err_fd, "ab") as err, open(os.devnull, "rb") as devnull:
        argv = [sys.executable, "-m", "attractor", "--log-level", log_level, "daemon", "start", "--foreground",
                "--quiet-stderr"]
        child = subprocess.Popen(argv, stdin=devnull, stdout=err, stderr=err, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = (directory / "daemon.err").read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise AttractorError(f"the daemon exited at once ({child.returncode}): {tail[0]}")
        try:
            status = rpc.call(socket_path(), "status", timeout=2.0)
        except (rpc.DaemonNotRunningError, OSError):
            time.sleep(0.05)
            continue
        print(f"daemon pid {status['pid']} listening on {status['socket']}; logs in {directory}", file=out)
        return 0
    procs.signal_if_same(child.pid, procs.start_time(child.pid), signal.SIGTERM)
    raise AttractorError(f"the daemon did not answer on {socket_path()} within {timeout:g}s; "
                         f"see {directory}/daemon.err")


def stop_daemon(runs: bool, out: TextIO, timeout: float | None = None) -> int:
    timeout = timeout if timeout is not None else (180.0 if runs else 15.0)  # stopping runs takes a while each
    holder = lock_holder()
    if holder is None:
        print("no daemon is running", file=out)
        return 0
    pid, start = holder.get("pid"), holder.get("pid_start")
    try:
        rpc.call(socket_path(), "daemon.stop", {"runs": runs}, timeout=timeout)
    except (rpc.DaemonNotRunningError, OSError) as exc:
        if not isinstance(pid, int):
            raise AttractorError(f"the daemon holding {lock_path()} does not answer ({exc}) and names no pid") from None
        logger.info("daemon does not answer (%s); sending SIGTERM to pid %s", exc, pid)
        procs.signal_if_same(pid, start if isinstance(start, int) else None, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while lock_holder() is not None:
        if time.monotonic() > deadline:
            raise AttractorError(f"the daemon (pid {pid}) did not stop within {timeout:g}s")
        time.sleep(0.05)
    print(f"daemon pid {pid} stopped" + ("; its runs were stopped too" if runs else "; runs go on"), file=out)
    return 0


