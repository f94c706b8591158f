"""Answering an agent that needs a human, and messages to a live agent.

`answer` chooses an option of the menu the agent's pane shows, by its text: `yes` the first
option that is "Yes" or starts with "Yes", `no` the one that starts with "No", `always` the
"Yes, and don't ask again…" / "Yes, allow all…" one — and remembers the command for that agent, so
a respawned agent gets it in its allow list (`agents/<agent-id>/allow-always.txt`, one command
prefix per line). It checks that the pane changed after the keys, and records the answer as the
agent session's last event.

`queue_message` puts a MESSAGE signal in the agent's inbox. Delivery is the runner's job
(`deliver_by_paste`): through the agent's own hooks when it has them, else typed into the pane
with a bracketed paste once the agent is idle at its prompt and no dialog is open; a message is
delivered once (claimed, then recorded in `done/` with how it went).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from attractor import clock, names
from attractor.engines.prompts import find_option, keys_to_choose, match_prompt, pane_tail, question_above, read_menu
from attractor.errors import AttractorError, UsageError
from attractor.states import SignalKind
from attractor.store import agent_sessions, signals
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

ANSWERS = ("yes", "no", "always")
ALWAYS_FILE = "allow-always.txt"
# Option texts tried for each answer, in order (matched by `prompts.find_option`).
CHOICES = {
    "yes": ("Yes", "Yes, proceed", "Yes, continue", "Yes, I trust this folder", "Yes, I accept", "Y"),
    "no": ("No", "No, exit", "No, and tell", "N"),
    "always": ("Yes, and don't ask again", "Yes, allow all", "Yes, always", "Always", "D"),
}


class AnswerError(UsageError):
    def __init__(self, agent_id: str, problem: str) -> None:
        self.agent_id = agent_id
        self.problem = problem
        super().__init__(f"agent {agent_id}: {problem}")


@dataclass(frozen=True)
class Answered:
    agent_id: str
    chosen: str
    keys: tuple[str, ...]
    question: str
    remembered: str | None


def _keys_for(text: str, answer: str) -> tuple[str, tuple[str, ...]] | None:
    for choice in CHOICES[answer]:
        keys = keys_to_choose(text, choice)
        if keys is not None:
            options = read_menu(text)
            option = find_option(options, choice) if options else None
            return (option.text if option else choice), keys
    return None


def command_asked_about(question: str) -> str | None:
    """The command a permission question is about: the line under a "Bash command" header, or
    the `$ command` line of a Codex approval, or None."""
    rows = [row.strip() for row in question.splitlines() if row.strip()]
    for index, row in enumerate(rows):
        if row.lower() in ("bash command", "command") and index + 1 < len(rows):
            return rows[index + 1]
        if row.startswith("$ "):
            return row[2:].strip()
    return None


def remembered_allow(state: StateDir, agent_id: str) -> tuple[str, ...]:
    path = agent_sessions.agent_dir(state, agent_id) / ALWAYS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return ()
    return tuple(dict.fromkeys(line.strip() for line in lines if line.strip()))


def remember_allow(state: StateDir, agent_id: str, command: str) -> None:
    from attractor.store import atomic, locks

    directory = agent_sessions.ensure_agent_dir(state, agent_id)
    path = directory / ALWAYS_FILE
    with locks.file_lock(path):
        current = list(remembered_allow(state, agent_id))
        if command not in current:
            current.append(command)
            atomic.write_bytes_atomic(path, ("\n".join(current) + "\n").encode(), fsync=True)


def answer(state: StateDir, node: str, reply: str, *, tmux_socket: str | None = None,
           verify_seconds: float = 5.0) -> Answered:
    """Answer the dialog the agent of `node` shows. Raises AnswerError when there is none or
    it has no option for `reply`."""
    from attractor.store import identities
    from attractor.tmux import Tmux

    if reply not in ANSWERS:
        raise UsageError(f"answer must be one of {', '.join(ANSWERS)}, got {reply!r}")
    agent_id = names.agent_id("orchestrator", node)
    ident = identities.find(state, "orchestrator", node)
    if ident is None:
        raise AnswerError(agent_id, "no such agent; see 'attractor status'")
    if not ident.pane_id or not ident.tmux_socket:
        raise AnswerError(agent_id, "has no tmux pane recorded")
    tmux = Tmux(tmux_socket or ident.tmux_socket)
    pane = tmux.pane(ident.pane_id)
    if pane is None or pane.dead:
        raise AnswerError(agent_id, f"its pane {ident.pane_id} is gone; nothing to answer")
    text = tmux.capture_pane(ident.pane_id, 60)
    found = _keys_for(text, reply)
    if found is None:
        options = [o.text for o in read_menu(text)]
        if options:
            raise AnswerError(agent_id, f"the menu has no option for {reply!r} (options: {'; '.join(options)})")
        raise AnswerError(agent_id, "is not waiting at a menu or question; see its pane with: "
                          f"tmux -L {ident.tmux_socket} attach -t {ident.tmux_session}")
    chosen, keys = found
    question = question_above(text)
    remembered = None
    if reply == "always":
        remembered = command_asked_about(question)
        if remembered:
            remember_allow(state, agent_id, remembered)
    before = pane_tail(text)
    tmux.send_key_names(ident.pane_id, keys)
    deadline = time.monotonic() + verify_seconds
    while True:
        time.sleep(0.1)
        try:
            after = pane_tail(tmux.capture_pane(ident.pane_id, 60))
        except AttractorError:
            break  # the pane ended: it certainly changed
        if after != before:
            break
        if time.monotonic() > deadline:
            raise AnswerError(agent_id, f"chose {chosen!r} ({' '.join(keys)}) but the pane did not change")
    agent_sessions.record_event(state, agent_id, f"answered:{reply}", needs_input=None)
    logger.warning("agent %s: answered %r by choosing %r", agent_id, reply, chosen)
    return Answered(agent_id, chosen, keys, question, remembered)


def queue_message(state: StateDir, node: str, text: str, *, author: str = "user") -> signals.Signal:
    if not text.strip():
        raise UsageError("agent send: the message is empty")
    return signals.send(state, SignalKind.MESSAGE, to=names.agent_id("orchestrator", node), sender="user-cli",
                        payload={"text": text, "author": author})


_IDLE_SETTLE = 2.0


def deliver_by_paste(state: StateDir, agent_id: str, pane_id: str, tmux: object, *,
                     has_hooks: bool, last_activity: float | None) -> int:
    """Type queued messages into an idle agent's pane (bracketed paste + Enter). An agent with
    hooks takes them itself while it works; it is typed to only when its session says it ended its
    turn or waits at its prompt. Never while a dialog shows. Returns how many are still waiting
    (for a later try: the caller looks again soon while any are)."""
    from attractor.tmux import Tmux

    assert isinstance(tmux, Tmux)
    inbox = signals.Inbox(state, agent_id)
    waiting = len(inbox.pending([SignalKind.MESSAGE]))
    if not waiting:
        return 0
    if has_hooks:
        session = agent_sessions.find(state, agent_id)
        event = str((session.last_event or {}).get("event") or "") if session else ""
        if session is None or session.needs_input or not (event.startswith("stop") or session.idle_since):
            return waiting
    if last_activity is not None and time.time() - last_activity < _IDLE_SETTLE:
        return waiting  # still printing
    text = tmux.capture_pane(pane_id, 40)
    if match_prompt(text) is not None or read_menu(text):
        return waiting  # a dialog is open: typed text would be lost
    while (claim := inbox.claim_next([SignalKind.MESSAGE])) is not None:
        body = claim.signal.payload.to_json()
        message = f"[message from {body.get('author') or claim.signal.sender}] {body.get('text', '')}"
        try:
            tmux.paste_text(pane_id, message)
        except AttractorError as exc:
            inbox.release(claim)
            logger.warning("agent %s: typing a message failed: %s", agent_id, exc)
            return len(inbox.pending([SignalKind.MESSAGE]))
        inbox.complete(claim, "delivered", f"typed into pane {pane_id} at {clock.iso()}")
        agent_sessions.record_event(state, agent_id, "message-typed", idle_since=None)
    return 0
