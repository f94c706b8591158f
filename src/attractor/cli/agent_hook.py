"""`attractor agent-hook EVENT`: what an agent CLI's own hooks call, with the hook's JSON on stdin.

Claude Code (and CLIs with the same hook protocol) run this from the settings attractor writes
for each agent. The agent is named by the pane's environment (ATTRACTOR_STATE_DIR,
ATTRACTOR_AGENT_ID, ATTRACTOR_RUNNER_ID, ATTRACTOR_NODE, ATTRACTOR_RUN_ID). What each event does:

    session-start       record the CLI's session id and transcript path; print queued messages
                        (and, after a compaction or resume, the node's wisdom block) — the CLI
                        adds what a SessionStart hook prints to the model's context
    user-prompt-submit  deliver queued messages; the agent no longer waits for input
    post-tool-use       heartbeat; the agent no longer waits for input
    notification        `permission_prompt` → needs-input with the message; `idle_prompt` → idle
    stop                queued messages are delivered by sending the agent back to work; when the
                        node has not been reported, the agent is sent back with the exact report
                        command, at most twice, then reported stuck
    pre-compact         save progress (commits so far) into the hook's resumption instructions
    session-end         record the reason

A hook must never break the agent: any failure is logged to `logs/agent-hook.log` and the command
exits 0 with no output. It is a hot command: no tmux or git door, pydot or watchdog.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from typing import Any

from attractor import names
from attractor.cli import Parser, subparser

EVENTS = ("session-start", "user-prompt-submit", "post-tool-use", "notification", "stop", "pre-compact",
          "session-end")
MAX_STOP_BLOCKS = 2
STDIN_LIMIT = 4 * 1024 * 1024


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    parser = subparser(subparsers, "agent-hook", "called by an agent CLI's hooks (reads the hook's JSON on stdin)",
                       "echo '{\"session_id\": \"…\"}' | attractor agent-hook post-tool-use")
    parser.add_argument("event", choices=EVENTS)
    parser.set_defaults(func=run_agent_hook)


class _Env:
    def __init__(self) -> None:
        from attractor.store.statedir import StateDir

        env = os.environ
        self.state = StateDir.resolve(env.get(names.ENV_STATE_DIR))
        self.agent_id = env.get(names.ENV_AGENT_ID, "")
        self.runner_id = env.get(names.ENV_RUNNER_ID, "")
        self.node = env.get(names.ENV_NODE, "")
        self.run_id = env.get(names.ENV_RUN_ID, "")
        epoch = env.get(names.ENV_AGENT_EPOCH, "")
        self.epoch = int(epoch) if epoch.isdigit() else None

    def current(self) -> bool:
        """This hook comes from the agent's current incarnation (a hook of a process the runner
        has replaced, which may still fire while it is being ended, is not acted on)."""
        if self.epoch is None:
            return True
        from attractor.store import identities

        return identities.current_epoch(self.state, self.agent_id) == self.epoch


def run_agent_hook(args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.read(STDIN_LIMIT) if not sys.stdin.isatty() else ""
        data: Any = json.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            data = {}
        env = _Env()
        if not env.agent_id or not env.node or not env.current():
            return 0  # not an agent attractor started, or one that has been replaced: nothing to do
        out = HANDLERS[args.event](env, data)
        if out:
            sys.stdout.write(out if out.endswith("\n") else out + "\n")
            sys.stdout.flush()
    except Exception as exc:  # a hook never breaks the agent
        _log_failure(args.event, exc)
    return 0


def _log_failure(event: str, exc: BaseException) -> None:
    try:
        from attractor import clock
        from attractor.store.statedir import StateDir

        logs = StateDir.resolve(os.environ.get(names.ENV_STATE_DIR)).ensure("logs")
        with open(logs / "agent-hook.log", "a", encoding="utf-8") as fh:
            fh.write(f"{clock.iso()} {os.environ.get('ATTRACTOR_AGENT_ID', '?')} {event}: "
                     f"{type(exc).__name__}: {exc}\n")
    except Exception:
        pass


# --------------------------------------------------------------------------- helpers


def _sessions() -> Any:
    from attractor.store import agent_sessions

    return agent_sessions


def _heartbeat(env: _Env) -> None:
    from attractor.errors import AttractorError
    from attractor.store import identities

    with contextlib.suppress(AttractorError):
        identities.update_liveness(env.state, "orchestrator", env.node)


def take_messages(env: _Env, via: str) -> list[str]:
    """Claim every queued MESSAGE of the agent's inbox, oldest first, and record them delivered."""
    from attractor.states import SignalKind
    from attractor.store import signals

    inbox = signals.Inbox(env.state, env.agent_id)
    texts: list[str] = []
    while True:
        claim = inbox.claim_next([SignalKind.MESSAGE])
        if claim is None:
            return texts
        body = claim.signal.payload.to_json()
        author = str(body.get("author") or claim.signal.sender)
        texts.append(f"[message from {author}] {body.get('text', '')}")
        inbox.complete(claim, "delivered", f"through the agent's {via} hook")


def _messages_block(texts: list[str]) -> str:
    if not texts:
        return ""
    return "Messages for you from attractor (act on them):\n" + "\n".join(texts)


def reported(env: _Env) -> bool:
    """The node was reported: its hook moved past executing, or a report from this agent waits in
    the runner's inbox (sent, not yet handled)."""
    from attractor.errors import AttractorError
    from attractor.states import HookPhase, SignalKind
    from attractor.store import hooks, signals

    try:
        if hooks.read_hook(env.state, "runner", env.node, run_id=env.run_id or None).phase is not HookPhase.EXECUTING:
            return True
    except AttractorError:
        return True  # no hook: nothing to remind about
    if not env.runner_id:
        return True
    inbox = signals.Inbox(env.state, env.runner_id)
    kinds = (SignalKind.ORCHESTRATOR_DONE, SignalKind.ORCHESTRATOR_STUCK)
    for box in ("new", "cur"):
        for sig in inbox.list(box):
            if sig.kind in kinds and sig.sender == env.agent_id:
                return True
    return False


def report_commands(env: _Env) -> tuple[str, str]:
    from attractor.layers.launch import report_commands as build

    return build(env.node, env.agent_id, env.runner_id)


# --------------------------------------------------------------------------- the events


def on_session_start(env: _Env, data: dict[str, Any]) -> str:
    sessions = _sessions()
    source = str(data.get("source") or "startup")
    fields: dict[str, Any] = {"idle_since": None, "needs_input": None, "resumable": True}
    if data.get("session_id"):
        fields["session_id"] = str(data["session_id"])
    if data.get("transcript_path"):
        fields["transcript_path"] = str(data["transcript_path"])
    sessions.record_event(env.state, env.agent_id, f"session-start:{source}", **fields)
    _heartbeat(env)
    parts = []
    if source in ("compact", "resume", "clear"):
        from attractor.errors import AttractorError
        from attractor.store import hooks

        try:
            hook = hooks.read_hook(env.state, "runner", env.node, run_id=env.run_id or None)
            wisdom = hooks.build_wisdom_prompt_block(hook)
        except AttractorError:
            wisdom = ""
        done, stuck = report_commands(env)
        parts.append(wisdom.strip())
        parts.append(f"When your work is committed, report with:\n    {done}\nIf you are stuck:\n    {stuck}")
    parts.append(_messages_block(take_messages(env, "SessionStart")))
    return "\n\n".join(p for p in parts if p)


def on_user_prompt_submit(env: _Env, data: dict[str, Any]) -> str:
    _sessions().record_event(env.state, env.agent_id, "user-prompt-submit", idle_since=None, needs_input=None)
    _heartbeat(env)
    return _messages_block(take_messages(env, "UserPromptSubmit"))


def on_post_tool_use(env: _Env, data: dict[str, Any]) -> str:
    sessions = _sessions()
    current = sessions.find(env.state, env.agent_id)
    if current is not None and (current.needs_input is not None or current.idle_since is not None):
        sessions.record_event(env.state, env.agent_id, "post-tool-use", needs_input=None, idle_since=None)
    _heartbeat(env)
    return ""


def on_notification(env: _Env, data: dict[str, Any]) -> str:
    from attractor import clock

    kind = str(data.get("notification_type") or "")
    message = str(data.get("message") or "")[:2000]
    lowered = message.lower()
    sessions = _sessions()
    if kind == "permission_prompt" or (not kind and "permission" in lowered):
        sessions.record_event(env.state, env.agent_id, "notification:permission", needs_input={
            "kind": "permission", "message": message, "since": clock.iso()})
    elif kind == "idle_prompt" or (not kind and "waiting for your input" in lowered):
        sessions.record_event(env.state, env.agent_id, "notification:idle", idle_since=clock.iso())
    else:
        sessions.record_event(env.state, env.agent_id, f"notification:{kind or 'other'}")
    return ""


def on_stop(env: _Env, data: dict[str, Any]) -> str:
    sessions = _sessions()
    messages = take_messages(env, "Stop")
    if messages:
        sessions.record_event(env.state, env.agent_id, "stop:messages", needs_input=None)
        return json.dumps({"decision": "block", "reason": _messages_block(messages)})
    if reported(env):
        sessions.record_event(env.state, env.agent_id, "stop", needs_input=None, reported=True)
        return ""
    current = sessions.find(env.state, env.agent_id)
    blocks = current.stop_blocks if current is not None else 0
    done, stuck = report_commands(env)
    if blocks >= MAX_STOP_BLOCKS:
        from attractor.states import SignalKind
        from attractor.store import signals

        reason = f"the agent ended its turn {blocks + 1} times without reporting"
        signals.send(env.state, SignalKind.ORCHESTRATOR_STUCK, to=env.runner_id, sender=env.agent_id,
                     payload={"node": env.node, "reason": reason})
        sessions.record_event(env.state, env.agent_id, "stop:stuck", needs_input=None, reported=True)
        return ""
    sessions.record_event(env.state, env.agent_id, "stop:reminded", needs_input=None, stop_blocks=blocks + 1)
    reason = ("You have not reported this node yet, so attractor cannot validate or merge your work. "
              "If your work is committed, run exactly:\n    " + done + "\n"
              "If you cannot finish, run:\n    " + stuck)
    return json.dumps({"decision": "block", "reason": reason})


def on_pre_compact(env: _Env, data: dict[str, Any]) -> str:
    from attractor import clock
    from attractor.errors import AttractorError
    from attractor.store import hooks

    trigger = str(data.get("trigger") or "auto")
    cwd = str(data.get("cwd") or os.getcwd())
    try:
        target = os.environ.get(names.ENV_TARGET_BRANCH, "main")
        log = subprocess.run(["git", "log", "--oneline", "-n", "20", f"{target}..HEAD", "--"],
                             cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--short"], cwd=cwd, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        log, status = "", ""
    text = (f"The agent's context was compacted ({trigger}) at {clock.iso()}.\n"
            f"Commits on the branch so far:\n{log or '(none)'}\n"
            f"Uncommitted changes:\n{status or '(none)'}\n")
    with contextlib.suppress(AttractorError):
        hooks.update_resumption_instructions(env.state, "runner", env.node, text)
    _sessions().record_event(env.state, env.agent_id, f"pre-compact:{trigger}")
    return ""


def on_session_end(env: _Env, data: dict[str, Any]) -> str:
    reason = str(data.get("reason") or "other")[:200]
    _sessions().record_event(env.state, env.agent_id, "session-end", end_reason=reason)
    return ""


HANDLERS = {
    "session-start": on_session_start,
    "user-prompt-submit": on_user_prompt_submit,
    "post-tool-use": on_post_tool_use,
    "notification": on_notification,
    "stop": on_stop,
    "pre-compact": on_pre_compact,
    "session-end": on_session_end,
}
