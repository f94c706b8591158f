"""Agent adapters: how each agent CLI is started in its pane.

An adapter turns a `LaunchContext` (node, worktree, prompt file, attempt, ids) into the argv that
runs in the orchestrator's tmux pane. `check()` fails before anything starts when the agent's
binary is missing. Built in: `scripted` (the real scripted program, no model), `claude`, `codex`,
`aider`, and `custom` for any CLI through a template (`--agent-cmd`), whose placeholders
`{prompt_file}`, `{worktree}`, `{node}`, `{agent_id}`, `{attempt}` are substituted per word, so a
value never splits into more words or reaches a shell.
"""

from __future__ import annotations

import shlex
import shutil
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from attractor.errors import BadInputError, MissingBinaryError, UnknownValueError

PLACEHOLDERS = ("prompt_file", "worktree", "node", "agent_id", "attempt")


@dataclass(frozen=True)
class LaunchContext:
    node: str
    worktree: Path
    prompt_file: Path
    attempt: int
    agent_id: str
    runner_id: str
    state_dir: Path
    script_file: Path | None = None


@dataclass(frozen=True)
class Agent:
    """One agent kind. `template` is an argv template; `binary` is what `check` looks for."""

    name: str
    template: tuple[str, ...]
    binary: str
    install_hint: str = ""

    def check(self) -> None:
        if shutil.which(self.binary) is None and not Path(self.binary).is_file():
            hint = self.install_hint or f"install {self.binary} or choose another --agent"
            raise MissingBinaryError(self.binary, hint)

    def argv(self, ctx: LaunchContext) -> list[str]:
        values = {
            "prompt_file": str(ctx.prompt_file),
            "worktree": str(ctx.worktree),
            "node": ctx.node,
            "agent_id": ctx.agent_id,
            "attempt": str(ctx.attempt),
            "script_file": str(ctx.script_file or ""),
            "python": sys.executable,
        }
        return [word.format_map(values) for word in self.template]


def _prompt_from_file(binary: str, *extra: str) -> tuple[str, ...]:
    # the prompt is read from its file by sh and handed over as ONE argument
    return ("sh", "-c", f'exec {binary} {" ".join(extra)} "$(cat "$0")"'.replace("  ", " "), "{prompt_file}")


BUILTIN: dict[str, Agent] = {
    "scripted": Agent(
        "scripted",
        ("{python}", "-m", "attractor.agents.scripted", "--script-file", "{script_file}",
         "--worktree", "{worktree}", "--node", "{node}", "--attempt", "{attempt}"),
        sys.executable,
    ),
    "claude": Agent("claude", _prompt_from_file("claude"), "claude",
                    "install Claude Code (npm install -g @anthropic-ai/claude-code)"),
    "codex": Agent("codex", _prompt_from_file("codex"), "codex", "install Codex CLI (npm install -g @openai/codex)"),
    "aider": Agent("aider", ("aider", "--yes-always", "--message-file", "{prompt_file}"), "aider",
                   "install aider (pip install aider-chat)"),
}


def custom_agent(template: str) -> Agent:
    """An agent from a `--agent-cmd` template such as `mycli --prompt-file {prompt_file}`."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise BadInputError("--agent-cmd", f"cannot split {template!r}: {exc}") from None
    if not words:
        raise BadInputError("--agent-cmd", "empty command")
    for word in words:
        for _, field, _, _ in string.Formatter().parse(word):
            if field is not None and field not in PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                raise BadInputError("--agent-cmd", f"unknown placeholder {{{field}}}; use {known}")
    return Agent("custom", tuple(words), words[0])


def resolve_agent(name: str | None, agent_cmd: str | None = None) -> Agent:
    if agent_cmd:
        return custom_agent(agent_cmd)
    name = name or "scripted"
    if name not in BUILTIN:
        raise UnknownValueError("agent", name, [*BUILTIN, "(or --agent-cmd TEMPLATE)"])
    return BUILTIN[name]
