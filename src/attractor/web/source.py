"""Where the dashboard's data comes from: the state the command line reads, through the daemon's
socket when a daemon runs (the same methods `attractor status` asks), from the state files when
not. It knows the registered projects (`attractor daemon`'s registry) and the state directories
given on its command line.

A run is named by its id across every known state directory; `Source.find` says which one holds
it. The shapes are the command line's `--json` shapes: `report` is `attractor status --json`,
`queue` is `attractor merge-queue list --json`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor.errors import AttractorError, NotFoundError
from attractor.states import NodeState, RunStatus
from attractor.store import checkpoint as cp_store
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

FINISHED = frozenset({NodeState.MERGED, NodeState.DONE, NodeState.SKIPPED})


@dataclass(frozen=True)
class Place:
    """A state directory the dashboard shows, and the project it belongs to ("-" for none)."""

    project: str
    state: StateDir


class Source:
    def __init__(self, state_dirs: list[Path], *, use_daemon: bool = True, tmux_socket: str | None = None) -> None:
        self.extra = [p.resolve() for p in state_dirs]
        self.use_daemon = use_daemon
        self.tmux_socket = tmux_socket
        self._finished: dict[tuple[str, str], tuple[tuple[int, ...], dict[str, Any]]] = {}

    # --- where ---------------------------------------------------------------------------

    def places(self) -> list[Place]:
        from attractor.store import projects

        seen: dict[Path, Place] = {}
        problems: list[Any] = []
        for project in projects.list_projects(problems):
            root = project.state_path.resolve()
            seen.setdefault(root, Place(project.name, StateDir(root)))
        for root in self.extra:
            if root not in seen:
                owner = projects.find_project_by_state(root)
                seen[root] = Place(owner.name if owner else "-", StateDir(root))
        return list(seen.values())

    def find(self, run_id: str) -> Place:
        from attractor.names import validate_name

        validate_name(run_id, "run id")
        for place in self.places():
            if cp_store.checkpoint_path(place.state, run_id).is_file():
                return place
        raise NotFoundError("run", run_id, "not in any registered project or given state directory")

    # --- the daemon, when one runs -------------------------------------------------------

    def _ask(self, method: str, params: dict[str, Any]) -> Any:
        """The daemon's answer, or None when no daemon runs (then the caller reads the files)."""
        if not self.use_daemon:
            return None
        from attractor.control import client

        try:
            return client.call(client.socket_path(), method, params, timeout=30.0)
        except client.DaemonNotRunningError:
            return None

    def daemon_running(self) -> bool:
        return self._ask("status", {}) is not None

    # --- reads ---------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """Every run of every known place, newest first: its checkpoint's summary."""
        rows = []
        for place in self.places():
            if not place.state.runs.is_dir():
                continue
            for run_id in cp_store.list_runs(place.state):
                try:
                    cp = cp_store.read_checkpoint(place.state, run_id)
                except AttractorError as exc:
                    logger.debug("run %s unreadable: %s", run_id, exc)
                    continue
                states = [n.state for n in cp.nodes.values()]
                rows.append({
                    "project": place.project, "state_dir": str(place.state.root), "run_id": run_id,
                    "pipeline": cp.pipeline_name, "status": str(cp.status), "reason": cp.reason,
                    "started_at": cp.started_at, "updated_at": cp.updated_at, "finished_at": cp.finished_at,
                    "nodes_total": len(states), "nodes_done": sum(1 for s in states if s in FINISHED),
                    "merged": sum(1 for s in states if s == NodeState.MERGED),
                    "failed": sum(1 for s in states if s in (NodeState.FAILED, NodeState.BLOCKED)),
                    "running": cp.status == RunStatus.RUNNING,
                    "paused": cp_store.paused(place.state, run_id) is not None,
                })
        running = [r for r in rows if r["running"]]
        ended = [r for r in rows if not r["running"]]
        running.sort(key=lambda r: r["started_at"] or "", reverse=True)
        ended.sort(key=lambda r: r["started_at"] or "", reverse=True)
        return running + ended

    def report(self, run_id: str, *, reuse_finished: bool = False) -> dict[str, Any]:
        """`attractor status --json` of one run. With `reuse_finished`, the report of a run that
        has ended is kept and given again while its checkpoint and event log stay as they are
        (the overview and the costs read every run on each refresh)."""
        place = self.find(run_id)
        if reuse_finished:
            key = (str(place.state.root), run_id)
            stamp = _stamp(cp_store.run_dir(place.state, run_id))
            kept = self._finished.get(key)
            if kept is not None and kept[0] == stamp:
                return kept[1]
            fresh = self.report(run_id)
            if fresh["run"].get("status") != str(RunStatus.RUNNING):
                self._finished[key] = (stamp, fresh)
            return fresh
        params = {"state_dir": str(place.state.root), "run_id": run_id, "tmux_socket": self.tmux_socket,
                  "all_agents": False}
        answer = self._ask("run.status", params)
        if isinstance(answer, dict):
            report: dict[str, Any] = answer
        else:
            from attractor.layers.status import run_report

            report = run_report(place.state, run_id, tmux_socket=self.tmux_socket)
        report["project"] = place.project
        return report

    def queue(self) -> list[dict[str, Any]]:
        """`attractor merge-queue list --json` of every known place, each entry with its project."""
        from attractor.store import merge_entries

        rows: list[dict[str, Any]] = []
        for place in self.places():
            answer = self._ask("queue.list", {"state_dir": str(place.state.root)})
            if isinstance(answer, list):
                entries = answer
            else:
                entries = [e.to_json() for e in merge_entries.list_entries(place.state)] \
                    if place.state.root.is_dir() else []
            rows.extend({**e, "project": place.project, "state_dir": str(place.state.root)} for e in entries)
        return rows

    def events(self, run_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The run's events after id `after`, each `{"id", "event"}` (the daemon's stream shape)."""
        place = self.find(run_id)
        tail = cp_store.EventTail(cp_store.run_dir(place.state, run_id) / "events.jsonl", after=after)
        items = [{"id": number, "event": event} for number, event in tail.new_numbered()]
        return items[-limit:] if limit else items

    # --- actions -------------------------------------------------------------------------

    def act(self, run_id: str, action: str, params: dict[str, Any], by: str) -> dict[str, Any]:
        """Do an action on a run by the same code as the command line (`layers.actions`), in the
        daemon when one runs."""
        place = self.find(run_id)
        answer = self._ask("action", {"state_dir": str(place.state.root), "run_id": run_id, "action": action,
                                      "by": by, **params})
        if isinstance(answer, dict):
            return answer
        from attractor.layers import actions

        return actions.perform(place.state, action, by=by, run_id=run_id, tmux_socket=self.tmux_socket, **params)


def _stamp(directory: Path) -> tuple[int, ...]:
    """What changes when a run's checkpoint or event log does."""
    out: list[int] = []
    for name in ("checkpoint.json", "events.jsonl"):
        try:
            info = (directory / name).stat()
            out += [info.st_mtime_ns, info.st_size]
        except FileNotFoundError:
            out += [0, 0]
    return tuple(out)
