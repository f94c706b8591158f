"""The report of one run: what `attractor status` prints and `--json` gives, and what the
daemon's `run.status` answers (the same function, so both say the same).

It reads the checkpoint, the hooks, the identity registry, the supervision records, the agents'
session records and the merge queue, and asks tmux once for the panes (`list-panes -a`) to judge
each agent's health. It writes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from attractor.store.statedir import StateDir


def run_report(state: StateDir, run_id: str | None = None, *, tmux_socket: str | None = None,
               all_agents: bool = False) -> dict[str, Any]:
    """Everything `attractor status --json` shows of a run (default: the latest): its
    checkpoint, nodes with their hook phase and usage, agents with their health, the queue."""
    from attractor import clock
    from attractor.errors import NotFoundError
    from attractor.procs import pid_alive
    from attractor.store import checkpoint as cp_store
    from attractor.store import hooks, identities

    run_id = run_id or cp_store.latest_run(state)
    if run_id is None:
        raise NotFoundError("run", "(any)", f"no run in {state.root}; start one with: attractor run PIPELINE")
    cp = cp_store.read_checkpoint(state, run_id)
    now = time.time()
    problems: list[Any] = []
    hook_by_node = {h.name: h for h in hooks.list_hooks(state, problems)}
    from attractor.engines.supervision import Supervisor
    from attractor.engines.watch import SUPERVISED, health_of

    supervisor = Supervisor(state)
    records = identities.list_identities(state, problems)
    recorded = next((i.tmux_socket for i in records if i.role == "guardian" and i.name == run_id and i.tmux_socket),
                    None)
    panes = _panes(tmux_socket or recorded, cp)
    from attractor.store import agent_sessions

    agents = []
    usage_by_node: dict[str, dict[str, Any]] = {}
    for ident in records:
        if ident.session_id != run_id and not all_agents:
            continue  # another run's
        alive = pid_alive(ident.pid)
        socket = ident.tmux_socket
        sup = supervisor.state_of(ident.agent_id)
        if sup.quarantined or ident.status.value == "quarantined":
            health = "quarantined"
        elif ident.status in SUPERVISED:
            health = health_of(ident, panes).health.value
        else:
            health = ident.status.value
        session = agent_sessions.find(state, ident.agent_id) if ident.role == "orchestrator" else None
        if session is not None and session.run_id != run_id:
            session = None  # another run's record of this node name
        if session is not None and session.needs_input and health not in ("dead", "quarantined"):
            health = "needs-input"
        if session is not None and session.usage:
            usage_by_node[ident.name] = session.usage
        agents.append({
            "agent_id": ident.agent_id, "role": ident.role, "name": ident.name, "status": ident.status.value,
            "health": health, "restarts": sup.restarts,
            "next_restart": clock.iso(sup.next_restart_at) if sup.awaiting_respawn and sup.next_restart_at else None,
            "quarantine_reason": sup.quarantine_reason or None,
            "alive": alive, "pid": ident.pid, "epoch": ident.epoch, "crash_count": ident.crash_count,
            "heartbeat_age": round(now - clock.parse_iso(ident.last_heartbeat), 3) if ident.last_heartbeat else None,
            "tmux_session": ident.tmux_session, "pane_id": ident.pane_id,
            "attach": (f"tmux -L {socket} attach -t {ident.tmux_session}"
                       if socket and ident.tmux_session and alive else None),
            "cli": session.cli if session else None,
            "session_id": (session.session_id or None) if session else None,
            "needs_input": session.needs_input if session else None,
            "usage": session.usage if session else None,
            "last_words": (session.death or {}).get("last_line") if session and session.death else None,
        })
    nodes = []
    for name, node in cp.nodes.items():
        hook = hook_by_node.get(name)
        nodes.append({**node.to_json(), "phase": hook.phase.value if hook else None,
                      "usage": usage_by_node.get(name)})
    from attractor.store import merge_entries, queue_hold

    entries = [e.to_json() for e in merge_entries.list_entries(state)]

    held = queue_hold.read(state)
    run = {k: v for k, v in cp.to_json().items() if k != "nodes"}
    run["usage"] = _sum_usage(list(usage_by_node.values()))
    run["paused"] = cp_store.paused(state, run_id)
    return {"schema": 1, "run": run, "nodes": nodes, "queue_hold": held.to_json() if held else None,
            "agents": agents, "merge_queue": entries, "problems": [str(p) for p in problems],
            "state_dir": str(state.root)}


def _sum_usage(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not items:
        return None
    from attractor.agents import Usage

    total = Usage()
    for item in items:
        total = total + Usage.from_json(item)
    data = total.to_json()
    data["source"] = "sum of the nodes"
    return data


def _panes(socket: str | None, cp: Any) -> dict[str, Any] | None:
    """One batched pane query on the run's tmux socket; None when tmux cannot be asked."""
    from attractor.errors import AttractorError
    from attractor.tmux import Tmux, socket_name_for

    try:
        return {p.pane_id: p for p in Tmux(socket_name_for(Path(cp.target_dir), socket)).list_panes()}
    except AttractorError:
        return None
