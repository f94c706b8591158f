"""Agent adapters: how each agent CLI is configured, started, heard from and billed.

An adapter turns a `LaunchContext` (node, worktree, prompt file, attempt, ids, the report and
heartbeat commands, the permission allow list) into a `Launch`: the argv that runs in the
orchestrator's tmux pane, the environment to add and to remove, after writing whatever settings
files the CLI reads (under the agent's own directory in the state directory). `check()` fails
before anything starts when the agent's binary is missing. `reports` says how the agent reports:
`command` (it runs attractor's report command itself) or `exit-with-commit` (done when the process
exits 0 with a new commit on the branch; the runner reports for it). `usage()` reads tokens and
cost from the CLI's own record. `dialogs` are the prompt rules (see `attractor.engines.prompts`) of the
dialogs this CLI may still show after it has been configured.

Built in: `scripted` (the real scripted program, no model), `claude`, `codex`, `aider` (one module
each beside this one, imported only when used), and `custom` for any CLI through a template
(`--agent-cmd`), whose placeholders `{prompt_file}`, `{worktree}`, `{node}`, `{agent_id}`,
`{attempt}` are substituted per word, so a value never splits into more words or reaches a shell.
"""

from __future__ import annotations

import shlex
import shutil
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attractor.errors import BadInputError, MissingBinaryError, UnknownValueError

if TYPE_CHECKING:
    from attractor.engines.prompts import PromptRule

PLACEHOLDERS = ("prompt_file", "worktree", "node", "agent_id", "attempt")


# Variables of an enclosing agent session that must not reach an agent we start (it would
# believe it runs nested inside that session).
ENCLOSING_SESSION_VARS = (
    "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT", "CLAUDE_PROJECT_DIR",
    "CLAUDE_ENV_FILE", "CLAUDE_CODE_SESSION_ID", "CODEX_SANDBOX", "CODEX_SANDBOX_NETWORK_DISABLED",
    "CODEX_THREAD_ID", "CODEX_CI", "AIDER_CHAT", "CLAUDE_CODE_CHILD_NOTES_DIR", "CLAUDE_CODE_CHILD_SESSION",
    "CLAUDE_CODE_MESSAGING_SOCKET", "CLAUDE_CODE_MESSAGING_TOKEN", "CLAUDE_CODE_SESSION_ATTENDED", "CLAUDE_PID",
    "CLAUDE_EFFORT",
)


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
    run_id: str = ""
    target_dir: Path | None = None      # the target repository's root (trusted as a whole)
    branch: str = ""
    target_branch: str = "main"
    agent_dir: Path | None = None       # private directory for this agent's files
    session_id: str = ""                # a UUID the CLI's session is started with (Claude Code)
    resume: bool = False                # resume `session_id` instead of starting it
    report_command: str = ""            # the exact command the prompt gives for reporting
    stuck_command: str = ""
    heartbeat_command: str = ""
    attractor: str = ""                 # how a shell calls attractor (`<python> -m attractor`)
    allow: tuple[str, ...] = ()         # commands the node may run without asking (prefixes)
    validation_commands: tuple[str, ...] = ()
    model: str = ""                     # the node's or user's model choice, when given


@dataclass(frozen=True)
class Launch:
    """What runs in the pane: argv, variables to set, variables to remove."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ENCLOSING_SESSION_VARS


@dataclass(frozen=True)
class Usage:
    """Tokens and cost of one agent session, as its CLI recorded them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    source: str = ""

    def to_json(self) -> dict[str, object]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_read_tokens": self.cache_read_tokens, "cache_write_tokens": self.cache_write_tokens,
                "cost_usd": self.cost_usd, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        cost = data.get("cost_usd")
        return cls(int(data.get("input_tokens") or 0), int(data.get("output_tokens") or 0),
                   int(data.get("cache_read_tokens") or 0), int(data.get("cache_write_tokens") or 0),
                   float(cost) if cost is not None else None, str(data.get("source") or ""))

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost_usd is None and other.cost_usd is None else \
            (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cache_read_tokens + other.cache_read_tokens,
                     self.cache_write_tokens + other.cache_write_tokens, cost, self.source or other.source)


REPORTS_BY_COMMAND = "command"
REPORTS_BY_EXIT = "exit-with-commit"


@dataclass(frozen=True)
class Agent:
    """One agent kind. `template` is an argv template; `binary` is what `check` looks for.

    Subclasses (one module per CLI) override `prepare`, `usage` and `dialogs`."""

    name: str
    template: tuple[str, ...]
    binary: str
    install_hint: str = ""
    reports: str = REPORTS_BY_COMMAND
    has_hooks: bool = False  # delivers messages and heartbeats through its own hooks

    def check(self) -> None:
        if shutil.which(self.binary) is None and not Path(self.binary).is_file():
            hint = self.install_hint or f"install {self.binary} or choose another --agent"
            raise MissingBinaryError(self.binary, hint)

    def prepare(self, ctx: LaunchContext) -> Launch:
        """Write the CLI's settings files for this agent and return what to run."""
        return Launch(self.argv(ctx))

    def usage(self, ctx: LaunchContext, session: dict[str, Any]) -> Usage | None:
        """Tokens and cost so far, from the CLI's own record. `session` holds what the agent's
        hooks recorded (e.g. `transcript_path`)."""
        return None

    def dialogs(self) -> tuple[PromptRule, ...]:
        return ()

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
}
# The real CLIs, each in its own module, imported only when chosen.
ADAPTER_MODULES = {"claude": "attractor.agents.claude", "codex": "attractor.agents.codex",
                   "aider": "attractor.agents.aider"}


def custom_agent(template: str) -> Agent:
    """An agent from a `--agent-cmd` template such as `mycli --prompt-file {prompt_file}`."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise BadInputError("--agent-cmd", f"cannot split {template!r}: {exc}") from None
    if not words:
        raise BadInputError("--agent-cmd", "empty command")
    for word in words:
        for _, name, _, _ in string.Formatter().parse(word):
            if name is not None and name not in PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                raise BadInputError("--agent-cmd", f"unknown placeholder {{{name}}}; use {known}")
    return Agent("custom", tuple(words), words[0])


def resolve_agent(name: str | None, agent_cmd: str | None = None) -> Agent:
    if agent_cmd:
        return custom_agent(agent_cmd)
    name = name or "scripted"
    if name in ADAPTER_MODULES:
        import importlib

        module = importlib.import_module(ADAPTER_MODULES[name])
        adapter: Agent = module.ADAPTER
        return adapter
    if name not in BUILTIN:
        raise UnknownValueError("agent", name, [*BUILTIN, *ADAPTER_MODULES, "(or --agent-cmd TEMPLATE)"])
    return BUILTIN[name]
