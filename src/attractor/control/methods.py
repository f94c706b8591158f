"""The daemon's JSON-RPC methods: each a function of the params object (`control/rpc.py` has
the wire format and the error codes). They run the same code as the command line: a run started,
paused or stopped here is the same as one started, paused or stopped with `attractor …`.

Params are named (an object); an unknown param, a missing one or one of the wrong type is
-32602 naming it. A project is named by `project` (its registered name) or by `state_dir`.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attractor import clock
from attractor.control import rpc
from attractor.control.watchers import DaemonState, run_key
from attractor.errors import AttractorError, BadInputError, NotFoundError, UsageError
from attractor.names import validate_name
from attractor.states import NodeState, RunStatus
from attractor.store import checkpoint as cp_store
from attractor.store import identities, projects
from attractor.store.statedir import StateDir

logger = logging.getLogger("attractor.control.daemon")

STREAM_CHECK_INTERVAL = 1.0  # a stream with inotify looks at its client this often while quiet
STREAM_POLL_INTERVAL = 0.2  # without inotify, how often it reads the event log
FINISHED_NODE_STATES = frozenset({NodeState.MERGED, NodeState.DONE, NodeState.SKIPPED})


class DaemonMethods(DaemonState):
    """The methods table and every method of it."""

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
        m.add("run.status", self.rpc_run_status)
        m.add("action", self.rpc_action)
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
            if not path.is_absolute():
                raise rpc.RpcError(rpc.INVALID_PARAMS, f"param 'state_dir' must be an absolute path, not {str(path)!r}")
            owner = projects.find_project_by_state(path)
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
                             "supervision": watchers.get(run_key(state.root, run_id), "none")})
        return rows

    def rpc_runs_adopt(self, params: dict[str, Any]) -> dict[str, Any]:
        """A launcher hands its run over: the run's target becomes a project if it is none yet."""
        _only(params, "state_dir", "run_id", "target_dir")
        state = StateDir(Path(_text(params, "state_dir")).resolve())
        run_id = validate_name(_text(params, "run_id"), "run id")
        cp = cp_store.read_checkpoint(state, run_id)
        project = projects.find_project_by_state(state.root)
        if project is None:
            target = Path(cp.target_dir)
            explicit = None if state.root == (target / ".claude" / "state").resolve() else str(state.root)
            name = _free_project_name(target.name)
            project = projects.add_project(name, target, state_dir=explicit)
            logger.info("registered project %s (%s) for run %s", name, target, run_id)
        with self.lock:
            self.given_up.discard(run_key(state.root, run_id))
        self.wake.set()
        return {"project": project.name, "run_id": run_id}

    def rpc_run_stop(self, params: dict[str, Any]) -> dict[str, Any]:
        _only(params, "project", "state_dir", "run_id", "by")
        name, _ = self._state_of(params)
        _text(params, "run_id")
        return {"project": name, **self._act(params, "stop")}

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
            self.given_up.discard(run_key(state.root, run_id))
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
                             state_dir=str(project.state_path), target_branch=_opt_text(params, "target_branch"),
                             log_level=self.log_level, on_detach=lambda root, run_id, _out: started.append(run_id))
        code = launch(opts, out)
        self.wake.set()
        return {"project": project.name, "run_id": started[0] if started else None, "exit_code": code,
                "output": out.getvalue().splitlines()}

    def rpc_run_pause(self, params: dict[str, Any]) -> dict[str, Any]:
        """No new agents in the run; the running ones go on."""
        _only(params, "project", "state_dir", "run_id", "by", "reason")
        name, state = self._state_of(params)
        done = self._act({**params, "run_id": self._run_of(params, state)}, "pause",
                         reason=_opt_text(params, "reason") or "")
        return {"project": name, "run_id": done["run_id"], "paused": True, "changed": done["changed"]}

    def rpc_run_unpause(self, params: dict[str, Any]) -> dict[str, Any]:
        _only(params, "project", "state_dir", "run_id", "by")
        name, state = self._state_of(params)
        done = self._act({**params, "run_id": self._run_of(params, state)}, "unpause")
        return {"project": name, "run_id": done["run_id"], "paused": False, "changed": done["changed"]}

    def _act(self, params: dict[str, Any], action: str, **fields: Any) -> dict[str, Any]:
        from attractor.layers import actions

        _, state = self._state_of(params)
        return actions.perform(state, action, by=_opt_text(params, "by") or actions.who("rpc"),
                               run_id=_opt_text(params, "run_id"), **fields)

    def rpc_agent_send(self, params: dict[str, Any]) -> dict[str, Any]:
        """Queue a message for a node's live agent (the same delivery as `attractor agent send`)."""
        _only(params, "project", "state_dir", "run_id", "node", "text", "author", "by")
        return self._act(params, "send", node=validate_name(_text(params, "node"), "node"), text=_text(params, "text"),
                         author=_opt_text(params, "author") or "rpc")

    def rpc_agent_answer(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer the dialog a node's agent waits at: yes, no or always."""
        _only(params, "project", "state_dir", "run_id", "node", "reply", "by")
        reply = _text(params, "reply")
        if reply not in ("yes", "no", "always"):
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"param 'reply' must be yes, no or always, not {reply!r}")
        return self._act(params, "answer", node=validate_name(_text(params, "node"), "node"), reply=reply)

    def rpc_agent_clear(self, params: dict[str, Any]) -> dict[str, Any]:
        """Lift an agent's quarantine (`role` and `name`), or end the escalation (`escalation`)."""
        _only(params, "project", "state_dir", "run_id", "role", "name", "escalation", "by")
        if params.get("role") is None and params.get("name") is None and not _flag(params, "escalation"):
            raise rpc.RpcError(rpc.INVALID_PARAMS, "give role and name, or escalation: true")
        return self._act(params, "clear", role=_opt_text(params, "role"), name=_opt_text(params, "name"),
                         escalation=_flag(params, "escalation"))

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

    def rpc_action(self, params: dict[str, Any]) -> dict[str, Any]:
        """A person's action on a run (`layers.actions.perform`, as the command line and the
        dashboard do it), recorded in the run's events with `by`."""
        from attractor.layers import actions

        _only(params, "project", "state_dir", "run_id", "action", "by", "node", "reply", "text", "role", "name",
              "escalation", "reason")
        action = _text(params, "action")
        if action not in actions.ACTIONS:
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"param 'action' must be one of {', '.join(actions.ACTIONS)}, "
                               f"not {action!r}")
        return self._act(params, action, node=_opt_text(params, "node"), reply=_opt_text(params, "reply"),
                         text=_opt_text(params, "text"), role=_opt_text(params, "role"),
                         name=_opt_text(params, "name"), escalation=_flag(params, "escalation"),
                         reason=_opt_text(params, "reason") or "")

    def rpc_run_status(self, params: dict[str, Any]) -> dict[str, Any]:
        """What `attractor status --json` prints, by the same code (`layers.status.run_report`)."""
        from attractor.layers.status import run_report

        _only(params, "project", "state_dir", "run_id", "tmux_socket", "all_agents")
        _, state = self._state_of(params)
        return run_report(state, _opt_text(params, "run_id"), tmux_socket=_opt_text(params, "tmux_socket"),
                          all_agents=_flag(params, "all_agents"))

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
