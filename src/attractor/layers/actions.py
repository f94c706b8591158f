"""What a person does to a live run, from any front end: answer an agent's dialog, send it a
message, pause or unpause the run, stop it, clear a quarantine or the escalation.

`perform` is the one implementation the command line (`attractor agent answer|send|clear`,
`attractor pause|unpause|stop`), the daemon's methods and the dashboard call. Each action runs
the same engine code and is recorded in the run's event log as an `action` event naming who did
it (`by`: for instance `alice@cli`, `alice@dashboard(127.0.0.1)`), what, and how it went
(`ok`, and `detail` when it failed). An action that fails is recorded too, then its error is
raised again. Pause and unpause record themselves (`run_paused`, `run_unpaused` carry `by`).
"""

from __future__ import annotations

import getpass
from typing import Any

from attractor.errors import AttractorError, NotFoundError, UsageError
from attractor.names import agent_id, validate_name
from attractor.store import checkpoint as cp_store
from attractor.store.statedir import StateDir

ACTIONS = ("answer", "send", "pause", "unpause", "stop", "clear")
REPLIES = ("yes", "no", "always")


def who(front_end: str, where: str | None = None) -> str:
    """The `by` of an action: the user running this front end, and from where."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{front_end}" + (f"({where})" if where else "")


def run_of(state: StateDir, run_id: str | None) -> str:
    """The run named, else the latest; an error naming the state directory when there is none."""
    run_id = run_id or cp_store.latest_run(state)
    if run_id is None:
        raise NotFoundError("run", "(any)", f"no run in {state.root}")
    return validate_name(run_id, "run id")


def _node_run(state: StateDir, node: str, run_id: str | None) -> str | None:
    """The run a node's agent works for (its session record), else the run named or the latest."""
    from attractor.store import agent_sessions

    session = agent_sessions.find(state, agent_id("orchestrator", node))
    if run_id:
        return validate_name(run_id, "run id")
    if session is not None and session.run_id:
        return session.run_id
    return cp_store.latest_run(state)


def perform(state: StateDir, action: str, *, by: str, run_id: str | None = None, node: str | None = None,
            reply: str | None = None, text: str | None = None, role: str | None = None, name: str | None = None,
            escalation: bool = False, reason: str = "", author: str | None = None, tmux_socket: str | None = None,
            stop_timeout: float = 10.0) -> dict[str, Any]:
    """Do `action` and record it; returns what it did as a JSON object (`lines` for people)."""
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
    if action in ("pause", "unpause"):
        paused = run_of(state, run_id)
        if action == "pause":
            changed = cp_store.pause_run(state, paused, by=by, reason=reason)
            line = f"run {paused} paused: no new agents start; running ones go on" if changed \
                else f"run {paused} was already paused"
        else:
            changed = cp_store.unpause_run(state, paused, by=by)
            line = f"run {paused} unpaused: ready nodes start again" if changed else f"run {paused} was not paused"
        return {"action": action, "run_id": paused, "changed": changed, "lines": [line]}
    fields: dict[str, Any] = {}
    run: str | None
    if action in ("answer", "send"):
        if not node:
            raise UsageError(f"{action}: name the node whose agent it is for")
        node = validate_name(node, "node")
        fields["node"] = node
        run = _node_run(state, node, run_id)
    elif action == "stop":
        run = run_of(state, run_id)
    else:
        if role is None and not escalation:
            raise UsageError("clear: give ROLE NAME, or --escalation (example: attractor agent clear runner impl_auth)")
        if role is not None and name is None:
            raise UsageError(f"clear: missing NAME after role {role!r} "
                             "(example: attractor agent clear runner impl_auth)")
        run = run_id or (name if role == "guardian" else None) or cp_store.latest_run(state)
        if role is not None and name is not None:
            fields["agent"] = agent_id(role, name)
        if escalation:
            fields["escalation"] = True
    try:
        result = _do(state, action, run, author=author or by, node=node, reply=reply, text=text, role=role, name=name,
                     escalation=escalation, tmux_socket=tmux_socket, stop_timeout=stop_timeout)
    except AttractorError as exc:
        _record(state, run, action, by, ok=False, detail=str(exc), reply=reply, **fields)
        raise
    _record(state, run, action, by, ok=True, reply=reply, text=text, chosen=result.get("chosen"), **fields)
    return {"action": action, "run_id": run, **result}


def _do(state: StateDir, action: str, run: str | None, *, author: str, node: str | None, reply: str | None,
        text: str | None, role: str | None, name: str | None, escalation: bool, tmux_socket: str | None,
        stop_timeout: float) -> dict[str, Any]:
    if action == "answer":
        from attractor.engines.answers import answer

        if reply not in REPLIES:
            raise UsageError(f"answer must be one of {', '.join(REPLIES)}, got {reply!r}")
        assert node is not None
        done = answer(state, node, reply, tmux_socket=tmux_socket)
        return {"agent_id": done.agent_id, "chosen": done.chosen, "keys": list(done.keys),
                "question": done.question, "remembered": done.remembered,
                "lines": [f"{done.agent_id}: chose {done.chosen!r}"]
                + ([f"  remembered for this agent: {done.remembered}"] if done.remembered else [])}
    if action == "send":
        from attractor.engines.answers import queue_message

        assert node is not None
        sent = queue_message(state, node, text or "", author=author)
        return {"signal_id": sent.id, "to": sent.recipient, "lines": [f"queued message {sent.id} for {sent.recipient}"]}
    if action == "stop":
        from attractor.layers.stop import stop_run

        assert run is not None
        return {"lines": stop_run(state, run, tmux_socket=tmux_socket, timeout=stop_timeout)}
    from attractor.engines.supervision import clear_agent, clear_escalation

    lines = []
    if role is not None and name is not None:
        lines.append(clear_agent(state.root, agent_id(role, name)))
    if escalation:
        lines.append(clear_escalation(state.root))
    return {"lines": lines}


def _record(state: StateDir, run: str | None, action: str, by: str, **fields: Any) -> None:
    """The `action` event in the run's log (an action with no run, like clearing an escalation
    in a state directory without runs, has no log to go to)."""
    if run is None or not cp_store.run_dir(state, run).is_dir():
        return
    kept = {k: v for k, v in fields.items() if v is not None and v != ""}
    if isinstance(kept.get("text"), str):
        kept["text"] = kept["text"][:500]
    cp_store.append_event(state, run, cp_store.Event.ACTION, action=action, by=by, **kept)
