"""The user's daemon: one per user, it supervises the guardian of every live run of every
registered project and answers JSON-RPC 2.0 (`control/rpc.py`) on a Unix socket.

Files (the runtime directory is `$XDG_RUNTIME_DIR/attractor`, else `<config>/run`, mode 0700,
refused when another user owns it or others may write it):

    <runtime>/daemon.sock     the control socket, mode 0600
    <runtime>/daemon.lock     flock-held for the daemon's whole life (the kernel lets go when it
                              dies); holds {"pid", "pid_start", "started_at", "socket"} of the holder
    <logs>/daemon.log         what the daemon did (`$XDG_STATE_HOME/attractor/logs`, else
    <logs>/daemon.err         `~/.local/state/attractor/logs`); .err is its stderr

Supervision: every SCAN_INTERVAL seconds (and at once when a run is handed over) the daemon
lists the runs of every project whose checkpoint says `running` and gives each a watcher
thread. While a live launcher follows the run (`attractor run` in a terminal), the launcher
supervises and the watcher only waits; otherwise the watcher follows the run the way a launcher
does, by the same code, so a dead guardian is respawned with the same backoff and the same
limit, and resumes from the checkpoint. A run whose guardian died while no daemon ran is
resumed when the daemon starts; a run whose guardian is alive is adopted as it is. Stopping the
daemon leaves every guardian running.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from attractor import clock, procs
from attractor.control import rpc
from attractor.errors import AttractorError, BadInputError, NotFoundError, StateDirError, UsageError
from attractor.names import agent_id, validate_name
from attractor.states import IdentityStatus, NodeState, RunStatus
from attractor.store import atomic, identities, projects
from attractor.store import checkpoint as cp_store
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

SCAN_INTERVAL = 5.0
FOLLOWED_CHECK_INTERVAL = 2.0
RETRY_AFTER_ERROR = 5.0
STREAM_CHECK_INTERVAL = 1.0  # a stream with inotify looks at its client this often while quiet
STREAM_POLL_INTERVAL = 0.2  # without inotify, how often it reads the event log
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, with its terminating NUL
FINISHED_NODE_STATES = frozenset({NodeState.MERGED, NodeState.DONE, NodeState.SKIPPED})


# -- where things are -------------------------------------------------------------------------


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "attractor" if base else projects.config_dir() / "run"


def socket_path() -> Path:
    return runtime_dir() / "daemon.sock"


def lock_path() -> Path:
    return runtime_dir() / "daemon.lock"


def log_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser().absolute() / "attractor" / "logs"


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


def lock_holder() -> dict[str, Any] | None:
    """What the lock file says about the daemon holding it, or None when nobody holds it."""
    path = lock_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: someone is running
        else:
            return None
        try:
            data = json.loads(os.read(fd, 4096) or b"{}")
        except json.JSONDecodeError:
            data = {}
        return data if isinstance(data, dict) else {}
    finally:
        os.close(fd)


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


# -- watching runs ----------------------------------------------------------------------------


class _LogLines(io.StringIO):
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
    restarts: int = 0
    since: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.state_root), self.run_id)

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "state_dir": str(self.state_root), "run_id": self.run_id,
                "supervision": self.mode, "since": clock.iso(self.since)}


def _live_launcher(state: StateDir, run_id: str) -> identities.Identity | None:
    ident = identities.find(state, "launcher", run_id)
    if ident is None or ident.status is IdentityStatus.TERMINATED or ident.pid == os.getpid():
        return None
    return ident if ident.may_be_alive else None


def _tmux_socket(state: StateDir, cp: cp_store.Checkpoint) -> str:
    from attractor import tmux

    guardian = identities.find(state, "guardian", cp.run_id)
    if guardian is not None and guardian.tmux_socket:
        return guardian.tmux_socket
    return tmux.socket_name_for(Path(cp.target_dir))


# -- the daemon -------------------------------------------------------------------------------


class Daemon:
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

    # -- life ---------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the per-user lock (exit 1 naming the holder when another daemon has it)."""
        ensure_private(runtime_dir())
        path = lock_path()
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
            signal.signal(sig, lambda *_: self.stop())
        logger.info("daemon pid %s listening on %s", os.getpid(), self.socket_file)
        scanner = threading.Thread(target=self.scan_loop, name="scan", daemon=True)
        scanner.start()
        try:
            self.server.serve_forever()
        finally:
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
            key = (str(state.root), cp.run_id)
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
                    logger.info("%s run %s", prefix, cp.status)
                    return
                if _live_launcher(state, watcher.run_id) is not None:
                    watcher.mode = "followed-elsewhere"
                    self.stopping.wait(FOLLOWED_CHECK_INTERVAL)
                    continue
                watcher.mode = "supervising"
                gcfg = GuardianConfig(state=state, run_id=watcher.run_id, tmux_socket=_tmux_socket(state, cp),
                                      log_level=self.log_level)
                code = follow(state, watcher.run_id, gcfg, _LogLines(prefix), heartbeat=False, stop=self.stopping)
                cp = cp_store.read_checkpoint(state, watcher.run_id)
                if code != 0 and cp.status == RunStatus.RUNNING and not self.stopping.is_set():
                    watcher.mode = "gave-up"
                    with self.lock:
                        self.given_up.add(watcher.key)
                    logger.warning("%s the guardian keeps dying; not restarting it again (resume it with: "
                                   "attractor rpc run.resume '{\"run_id\": \"%s\"}')", prefix, watcher.run_id)
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

    # -- methods --------------------------------------------------------------------------------

    def methods(self) -> rpc.Methods:
        m = rpc.Methods()
        m.add("status", lambda p: self.status())
        m.add("daemon.stop", self.rpc_stop)
        m.add("projects.list", lambda p: [pr.to_json() for pr in projects.list_projects()])
        m.add("projects.add", self.rpc_project_add)
        m.add("projects.remove", lambda p: projects.remove_project(_text(p, "name")).to_json())
        m.add("runs.list", self.rpc_runs_list)
        m.add("runs.adopt", self.rpc_runs_adopt)
        m.add("run.stop", self.rpc_run_stop)
        m.add("run.resume", self.rpc_run_resume)
        m.add("queue.list", self.rpc_queue_list)
        m.add("run.start", self.rpc_run_start)
        m.add("run.pause", self.rpc_run_pause)
        m.add("run.unpause", self.rpc_run_unpause)
        m.add("agent.send", self.rpc_agent_send)
        m.add("agent.answer", self.rpc_agent_answer)
        m.add("agent.clear", self.rpc_agent_clear)
        m.add("events.subscribe", self.rpc_events_subscribe)
        return m

    def status(self) -> dict[str, Any]:
        with self.lock:
            watched = [w.to_json() for w in self.watchers.values() if w.thread is not None and w.thread.is_alive()]
        return {"running": True, "pid": os.getpid(), "started_at": clock.iso(self.started),
                "uptime_s": round(time.time() - self.started, 1), "socket": str(self.socket_file),
                "projects": [p.name for p in projects.list_projects()], "runs": watched}

    def rpc_stop(self, params: dict[str, Any]) -> dict[str, Any]:
        runs = _flag(params, "runs")
        threading.Timer(0.05, self.stop, kwargs={"runs": runs}).start()  # after this answer is written
        return {"stopping": True, "pid": os.getpid(), "runs": runs}

    def rpc_project_add(self, params: dict[str, Any]) -> dict[str, Any]:
        _only(params, "name", "path", "state_dir", "agent", "pipeline", "policy", "replace")
        policy = params.get("policy", {})
        if not isinstance(policy, dict):
            raise BadInputError("projects.add", "policy must be an object")
        project = projects.add_project(
            _text(params, "name"), Path(_text(params, "path")), state_dir=_opt_text(params, "state_dir"),
            agent=_opt_text(params, "agent"), pipeline=_opt_text(params, "pipeline"), policy=policy,
            replace=_flag(params, "replace"))
        self.wake.set()
        return project.to_json()

    def _state_of(self, params: dict[str, Any]) -> tuple[str, StateDir]:
        if "project" in params:
            project = projects.get_project(_text(params, "project"))
            return project.name, StateDir(project.state_path)
        if "state_dir" in params:
            path = Path(_text(params, "state_dir"))
            owner = next((p for p in projects.list_projects() if Path(p.state_path) == path), None)
            return (owner.name if owner else "-"), StateDir(path)
        raise BadInputError("params", "name the run's project (project) or its state directory (state_dir)")

    def rpc_runs_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        _only(params, "project", "all")
        wanted = _opt_text(params, "project")
        every = _flag(params, "all")
        with self.lock:
            watchers = {k: w.mode for k, w in self.watchers.items()}
        rows = []
        for project in projects.list_projects():
            if wanted and project.name != wanted:
                continue
            state = StateDir(project.state_path)
            for run_id in cp_store.list_runs(state) if state.runs.is_dir() else []:
                try:
                    cp = cp_store.read_checkpoint(state, run_id)
                except AttractorError:
                    continue
                if cp.status != RunStatus.RUNNING and not every:
                    continue
                guardian = identities.find(state, "guardian", run_id)
                done = sum(1 for n in cp.nodes.values() if n.state in FINISHED_NODE_STATES)
                rows.append({"project": project.name, "run_id": run_id, "status": str(cp.status),
                             "state_dir": str(state.root), "nodes_done": done, "nodes_total": len(cp.nodes),
                             "guardian_pid": guardian.pid if guardian else None,
                             "guardian_alive": bool(guardian and guardian.process_alive),
                             "supervision": watchers.get((str(state.root), run_id), "none")})
        return rows

    def rpc_runs_adopt(self, params: dict[str, Any]) -> dict[str, Any]:
        """A launcher hands its run over: the run's target becomes a project if it is none yet."""
        _only(params, "state_dir", "run_id", "target_dir")
        state = StateDir(Path(_text(params, "state_dir")))
        run_id = _text(params, "run_id")
        cp = cp_store.read_checkpoint(state, run_id)
        project = next((p for p in projects.list_projects() if Path(p.state_path) == state.root), None)
        if project is None:
            target = Path(cp.target_dir)
            explicit = None if state.root == target / ".claude" / "state" else str(state.root)
            name = _free_project_name(target.name)
            project = projects.add_project(name, target, state_dir=explicit)
            logger.info("registered project %s (%s) for run %s", name, target, run_id)
        with self.lock:
            self.given_up.discard((str(state.root), run_id))
        self.wake.set()
        return {"project": project.name, "run_id": run_id}

    def rpc_run_stop(self, params: dict[str, Any]) -> dict[str, Any]:
        from attractor.layers.stop import stop_run

        _only(params, "project", "state_dir", "run_id")
        name, state = self._state_of(params)
        return {"project": name, "lines": stop_run(state, _text(params, "run_id"))}

    def rpc_run_resume(self, params: dict[str, Any]) -> dict[str, Any]:
        """Supervise a run again that the daemon gave up on, or that stopped being watched."""
        _only(params, "project", "state_dir", "run_id")
        name, state = self._state_of(params)
        run_id = _text(params, "run_id")
        cp = cp_store.read_checkpoint(state, run_id)
        if cp.status != RunStatus.RUNNING:
            raise UsageError(f"run {run_id} is {cp.status}; start it again with: attractor run --resume {run_id} "
                             f"--target-dir {cp.target_dir}")
        with self.lock:
            self.given_up.discard((str(state.root), run_id))
        self.wake.set()
        return {"project": name, "run_id": run_id, "resumed": True}

    def _run_of(self, params: dict[str, Any], state: StateDir) -> str:
        given = _opt_text(params, "run_id")
        run_id = given or cp_store.latest_run(state)
        if run_id is None:
            raise NotFoundError("run", "(any)", f"no run in {state.root}")
        return validate_name(run_id, "run id")

    def rpc_run_start(self, params: dict[str, Any]) -> dict[str, Any]:
        """Start a run of a project, detached; the daemon supervises it from the start."""
        from attractor.layers.launcher import LaunchOptions, launch

        _only(params, "project", "pipeline", "agent", "agent_cmd", "max_agents", "target_branch")
        project = projects.get_project(_text(params, "project"))
        pipeline = _opt_text(params, "pipeline") or project.pipeline
        if pipeline is None:
            raise BadInputError("run.start", f"project {project.name!r} has no default pipeline; give one in "
                                "params.pipeline")
        path = Path(pipeline) if Path(pipeline).is_absolute() else Path(project.path) / pipeline
        max_agents = params.get("max_agents")
        if max_agents is not None and (not isinstance(max_agents, int) or isinstance(max_agents, bool)
                                       or max_agents < 1):
            raise rpc.RpcError(rpc.INVALID_PARAMS, "param 'max_agents' must be a positive integer")
        started: list[str] = []
        out = io.StringIO()
        agent = _opt_text(params, "agent") or project.agent
        opts = LaunchOptions(pipeline=path, target_dir=Path(project.path), agent=agent,
                             agent_cmd=_opt_text(params, "agent_cmd"), max_agents=max_agents, detach=True,
                             state_dir=project.state_dir, target_branch=_opt_text(params, "target_branch"),
                             log_level=self.log_level, on_detach=lambda root, run_id, _out: started.append(run_id))
        code = launch(opts, out)
        self.wake.set()
        return {"project": project.name, "run_id": started[0] if started else None, "exit_code": code,
                "output": out.getvalue().splitlines()}

    def rpc_run_pause(self, params: dict[str, Any]) -> dict[str, Any]:
        """No new agents in the run; the running ones go on."""
        _only(params, "project", "state_dir", "run_id", "by", "reason")
        name, state = self._state_of(params)
        run_id = self._run_of(params, state)
        changed = cp_store.pause_run(state, run_id, by=_opt_text(params, "by") or "rpc",
                                     reason=_opt_text(params, "reason") or "")
        return {"project": name, "run_id": run_id, "paused": True, "changed": changed}

    def rpc_run_unpause(self, params: dict[str, Any]) -> dict[str, Any]:
        _only(params, "project", "state_dir", "run_id", "by")
        name, state = self._state_of(params)
        run_id = self._run_of(params, state)
        changed = cp_store.unpause_run(state, run_id, by=_opt_text(params, "by") or "rpc")
        return {"project": name, "run_id": run_id, "paused": False, "changed": changed}

    def rpc_agent_send(self, params: dict[str, Any]) -> dict[str, Any]:
        """Queue a message for a node's live agent (the same delivery as `attractor agent send`)."""
        from attractor.engines.answers import queue_message

        _only(params, "project", "state_dir", "node", "text", "author")
        _, state = self._state_of(params)
        sent = queue_message(state, validate_name(_text(params, "node"), "node"), _text(params, "text"),
                             author=_opt_text(params, "author") or "rpc")
        return {"signal_id": sent.id, "to": sent.recipient}

    def rpc_agent_answer(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer the dialog a node's agent waits at: yes, no or always."""
        from attractor.engines.answers import answer

        _only(params, "project", "state_dir", "node", "reply")
        _, state = self._state_of(params)
        reply = _text(params, "reply")
        if reply not in ("yes", "no", "always"):
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"param 'reply' must be yes, no or always, not {reply!r}")
        result = answer(state, validate_name(_text(params, "node"), "node"), reply)
        return {"agent_id": result.agent_id, "chosen": result.chosen, "keys": list(result.keys),
                "question": result.question, "remembered": result.remembered}

    def rpc_agent_clear(self, params: dict[str, Any]) -> dict[str, Any]:
        """Lift an agent's quarantine (`role` and `name`), or end the escalation (`escalation`)."""
        from attractor.engines.supervision import clear_agent, clear_escalation

        _only(params, "project", "state_dir", "role", "name", "escalation")
        _, state = self._state_of(params)
        lines = []
        if params.get("role") is not None or params.get("name") is not None:
            lines.append(clear_agent(state.root, agent_id(_text(params, "role"), _text(params, "name"))))
        if _flag(params, "escalation"):
            lines.append(clear_escalation(state.root))
        if not lines:
            raise rpc.RpcError(rpc.INVALID_PARAMS, "give role and name, or escalation: true")
        return {"lines": lines}

    def rpc_events_subscribe(self, params: dict[str, Any]) -> rpc.Stream:
        """A stream of the run's events, each `{"project", "run_id", "id", "event"}` with `id` the
        event's line number: `after` (the last id a client saw) resumes without a gap or a repeat."""
        from attractor.store import wakeup

        _only(params, "project", "state_dir", "run_id", "after")
        name, state = self._state_of(params)
        run_id = self._run_of(params, state)
        after = params.get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise rpc.RpcError(rpc.INVALID_PARAMS, "param 'after' must be an event id (an integer >= 0)")
        cp_store.read_checkpoint(state, run_id)
        directory = cp_store.run_dir(state, run_id)
        tail = cp_store.EventTail(directory / "events.jsonl", after=after)

        def items() -> Iterator[dict[str, Any] | None]:
            wake = threading.Event()
            unwatch = wakeup.watch_directory(directory, wake, modified=True)
            try:
                while not self.stopping.is_set():
                    batch = tail.new_numbered()
                    for number, event in batch:
                        yield {"project": name, "run_id": run_id, "id": number, "event": event}
                    if not batch:
                        yield None
                        wake.wait(STREAM_CHECK_INTERVAL if unwatch is not None else STREAM_POLL_INTERVAL)
                        wake.clear()
            finally:
                wakeup.unwatch(unwatch)

        return rpc.Stream({"project": name, "run_id": run_id, "after": after}, "event", items())

    def rpc_queue_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        from attractor.store import merge_entries

        _only(params, "project", "state_dir")
        _, state = self._state_of(params)
        return [e.to_json() for e in merge_entries.list_entries(state)]


def _free_project_name(base: str) -> str:
    import re

    from attractor.names import NAME_PATTERN

    stem = re.sub(r"[^a-z0-9_.-]", "-", base.lower()).strip("-.") or "project"
    stem = stem if re.fullmatch(NAME_PATTERN, stem) else "project"
    name, n = stem[:60], 1
    while projects.project_file(name).exists():
        n += 1
        name = f"{stem[:56]}-{n}"
    return name


# -- params -----------------------------------------------------------------------------------


def _only(params: dict[str, Any], *allowed: str) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise rpc.RpcError(rpc.INVALID_PARAMS, f"unknown param(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _text(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise rpc.RpcError(rpc.INVALID_PARAMS, f"param {key!r} must be a non-empty string")
    return value


def _opt_text(params: dict[str, Any], key: str) -> str | None:
    return None if params.get(key) is None else _text(params, key)


def _flag(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise rpc.RpcError(rpc.INVALID_PARAMS, f"param {key!r} must be true or false")
    return value


# -- starting and stopping from the command line ----------------------------------------------


def setup_logging(level: str, quiet_stderr: bool = False) -> None:
    """The daemon's log file, beside whatever stderr the command line set up; `quiet_stderr`
    (a daemon whose stderr is daemon.err) leaves only warnings and errors to stderr."""
    if quiet_stderr:
        for existing in logging.getLogger().handlers:
            existing.setLevel(logging.WARNING)
    directory = ensure_private(log_dir())
    handler = logging.FileHandler(directory / "daemon.log")
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
    with open(directory / "daemon.err", "ab") as err, open(os.devnull, "rb") as devnull:
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


def stop_daemon(runs: bool, out: TextIO, timeout: float = 15.0) -> int:
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


def status_without_daemon() -> dict[str, Any]:
    return {"running": False, "socket": str(socket_path())}


def hand_over(state_root: Path, run_id: str, out: TextIO) -> bool:
    """Give a detached run to the user's daemon, when one runs: it supervises the guardian from
    then on (and registers the run's target as a project if it is none yet). With no daemon
    nothing changes: the run goes on, unsupervised until someone follows it."""
    import sys

    try:
        answer = rpc.call(socket_path(), "runs.adopt", {"state_dir": str(state_root), "run_id": run_id}, timeout=10.0)
    except rpc.DaemonNotRunningError:
        return False
    except AttractorError as exc:
        print(f"warning: the daemon did not take run {run_id}: {exc}", file=sys.stderr)
        return False
    print(f"the daemon supervises it (project {answer['project']})", file=out)
    return True
