"""Claude Code adapter: settings file, argv, pre-accepted first-run dialogs, usage, dialogs.

Files (checked against Claude Code 2.1.332; the README's Claude Code section says the same):

- `<agent_dir>/claude-settings.json` (ours, 0600, rewritten at every launch), passed with
  `--settings`: `permissions.defaultMode: "acceptEdits"` (2.1.332 defaults to auto mode, whose
  safety check runs on Anthropic's servers and stops every turn behind a gateway), `allow`
  rules `Bash(<prefix> *)` for git's non-destructive commands, attractor's report, stuck and
  heartbeat commands, the node's validation commands and extras; `deny` rules for pushing,
  merging, rebasing, checking out the target branch and hard resets; `hooks` calling
  `<attractor> agent-hook <event>` for SessionStart, UserPromptSubmit, PostToolUse,
  Notification, Stop, PreCompact and SessionEnd.
- `$CLAUDE_CONFIG_DIR/.claude.json`, else `$HOME/.claude.json` (Claude Code's own, which it
  rewrites while it runs): we merge only `hasCompletedOnboarding`, `theme` (when missing),
  `projects[<target root>].hasTrustDialogAccepted` and, when ANTHROPIC_API_KEY is set, the
  key's last 20 characters into `customApiKeyResponses.approved`, under `<file>.lock`,
  re-reading first and replacing atomically with the file's own mode. Trust of the target root
  covers its worktrees (`<target>/.claude/worktrees/<node>`).
- The transcript, `<config dir>/projects/<cwd with every non-alphanumeric character as '-'>/
  <session id>.jsonl` (the SessionStart hook reports its exact `transcript_path`): one JSON
  object a line; `type: "assistant"` lines carry `message.id`, `message.model` and
  `message.usage`, and a streamed message is written once per content block with the same id,
  so usage is counted once per id (the last line of that id wins).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attractor.agents import ENCLOSING_SESSION_VARS, Agent, Launch, LaunchContext, Usage, _prompt_from_file
from attractor.errors import BadInputError
from attractor.store import locks
from attractor.store.atomic import FILE_MODE, ensure_private_dir, write_bytes_atomic

if TYPE_CHECKING:
    from attractor.engines.prompts import PromptRule

logger = logging.getLogger(__name__)

SETTINGS_NAME = "claude-settings.json"

# Claude Code's hook events and the kebab-case names `attractor agent-hook` takes.
HOOK_EVENTS = (
    ("SessionStart", "session-start"), ("UserPromptSubmit", "user-prompt-submit"),
    ("PostToolUse", "post-tool-use"), ("Notification", "notification"), ("Stop", "stop"),
    ("PreCompact", "pre-compact"), ("SessionEnd", "session-end"),
)
HOOK_TIMEOUT_SECONDS = 30

# git subcommands an agent runs without asking (the read-only ones Claude Code allows anyway).
GIT_ALLOWED = ("add", "commit", "status", "diff", "log", "rev-parse", "show")

# Variables a Claude Code session gives its children (seen in 2.1.332's hook environment) besides
# the shared list: an agent started from inside a session must not inherit them.
CLAUDE_CHILD_VARS = (
    "CLAUDE_CODE_CHILD_NOTES_DIR", "CLAUDE_CODE_CHILD_SESSION", "CLAUDE_CODE_MESSAGING_SOCKET",
    "CLAUDE_CODE_MESSAGING_TOKEN", "CLAUDE_CODE_SESSION_ATTENDED", "CLAUDE_PID", "CLAUDE_EFFORT",
)

# Claude Code remembers an approved ANTHROPIC_API_KEY by its last 20 characters.
API_KEY_SUFFIX = 20

# USD per million tokens: (model id prefix, input, output, cache-read factor). Cache writes cost
# 1.25x input (the 5-minute cache Claude Code uses). Source: Anthropic's pricing page,
# https://platform.claude.com/docs/en/about-claude/pricing ("Model pricing", "Prompt caching");
# the claude-opus-5-5 row reproduces the cost Claude Code 2.1.332 itself records in its
# transcript's `cost-state` line to the micro-dollar. The longest matching prefix wins; a model
# not in the table has no cost.
PRICES: tuple[tuple[str, float, float, float], ...] = (
    ("claude-opus-5-5", 4.0, 20.0, 0.05), ("claude-opus-5", 5.0, 25.0, 0.1), ("claude-opus-4", 5.0, 25.0, 0.1),
    ("claude-opus-4-0", 15.0, 75.0, 0.1), ("claude-opus-4-1", 15.0, 75.0, 0.1), ("claude-3-opus", 15.0, 75.0, 0.1),
    ("claude-sonnet-5-5", 2.0, 10.0, 0.05), ("claude-sonnet-5", 2.0, 10.0, 0.1), ("claude-sonnet-4", 3.0, 15.0, 0.1),
    ("claude-3-7-sonnet", 3.0, 15.0, 0.1), ("claude-3-5-sonnet", 3.0, 15.0, 0.1),
    ("claude-haiku-4", 1.0, 5.0, 0.1), ("claude-3-5-haiku", 0.8, 4.0, 0.1), ("claude-3-haiku", 0.25, 1.25, 0.1),
)
CACHE_WRITE_FACTOR = 1.25

_MANGLE_RE = re.compile(r"[^A-Za-z0-9]")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# --- settings -------------------------------------------------------------------------------

def _bash(prefix: str) -> list[str]:
    """Rules matching `prefix` alone and followed by anything (2.1.332 syntax `Bash(p *)`)."""
    prefix = prefix.strip()
    return [f"Bash({prefix})", f"Bash({prefix} *)"] if prefix else []


def command_prefix(command: str) -> str:
    """The fixed part of a command the prompt gives: everything before its `--payload` (whose
    value the agent fills in)."""
    head, sep, _ = command.partition(" --payload")
    return head.strip() if sep else command.strip()


def permission_rules(ctx: LaunchContext) -> tuple[list[str], list[str]]:
    allow: list[str] = []
    for sub in GIT_ALLOWED:
        allow += _bash(f"git {sub}")
    for command in (ctx.report_command, ctx.stuck_command, ctx.heartbeat_command):
        if command:
            allow += _bash(command_prefix(command))
    if ctx.attractor:
        for sub in ("signal send", "identity update-liveness", "hook update-phase"):
            allow += _bash(f"{ctx.attractor} {sub}")
    for command in ctx.validation_commands:
        allow += _bash(command)
    for extra in ctx.allow:
        # an extra that is already a rule (`WebFetch`, `Read(./docs/**)`) is passed through
        allow += [extra] if re.fullmatch(r"[A-Z][A-Za-z0-9_]*(?:\(.*\))?", extra) else _bash(extra)
    target = ctx.target_branch or "main"
    deny: list[str] = []
    for prefix in ("git push", "git merge", "git rebase", f"git checkout {target}", f"git switch {target}",
                   "git reset --hard"):
        deny += _bash(prefix)
    return list(dict.fromkeys(allow)), list(dict.fromkeys(deny))


def settings(ctx: LaunchContext) -> dict[str, Any]:
    allow, deny = permission_rules(ctx)
    attractor = ctx.attractor or "attractor"
    hooks = {event: [{"hooks": [{"type": "command", "command": f"{attractor} agent-hook {name}",
                                 "timeout": HOOK_TIMEOUT_SECONDS}]}]
             for event, name in HOOK_EVENTS}
    return {"permissions": {"defaultMode": "acceptEdits", "allow": allow, "deny": deny}, "hooks": hooks}


# --- ~/.claude.json -------------------------------------------------------------------------

def config_dir(env: dict[str, str] | None = None) -> Path:
    """Where Claude Code keeps `projects/` (transcripts): `$CLAUDE_CONFIG_DIR` or `~/.claude`."""
    env = dict(os.environ) if env is None else env
    if env.get("CLAUDE_CONFIG_DIR"):
        return Path(env["CLAUDE_CONFIG_DIR"])
    return Path(env.get("HOME") or Path.home()) / ".claude"


def global_config_path(env: dict[str, str] | None = None) -> Path:
    """Claude Code's global config: `$CLAUDE_CONFIG_DIR/.claude.json`, else `$HOME/.claude.json`."""
    env = dict(os.environ) if env is None else env
    if env.get("CLAUDE_CONFIG_DIR"):
        return Path(env["CLAUDE_CONFIG_DIR"]) / ".claude.json"
    return Path(env.get("HOME") or Path.home()) / ".claude.json"


def _merge(data: dict[str, Any], trusted: list[Path], api_key: str | None) -> dict[str, Any]:
    data["hasCompletedOnboarding"] = True
    data.setdefault("theme", "dark")
    projects = data.get("projects")
    if not isinstance(projects, dict):
        projects = data["projects"] = {}
    for root in trusted:
        entry = projects.get(str(root))
        if not isinstance(entry, dict):
            entry = projects[str(root)] = {}
        entry["hasTrustDialogAccepted"] = True
    if api_key:
        responses = data.get("customApiKeyResponses")
        if not isinstance(responses, dict):
            responses = data["customApiKeyResponses"] = {}
        approved = responses.get("approved")
        if not isinstance(approved, list):
            approved = responses["approved"] = []
        rejected = responses.get("rejected")
        if not isinstance(rejected, list):
            responses["rejected"] = rejected = []
        suffix = api_key[-API_KEY_SUFFIX:]
        if suffix not in approved:
            approved.append(suffix)
        if suffix in rejected:
            rejected.remove(suffix)
    return data


def pre_accept(path: Path, trusted: list[Path], api_key: str | None = None) -> None:
    """Record in Claude Code's global config what its first-run dialogs would record: onboarding
    done, the folders trusted, the API key approved. Keeps every other key of the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locks.file_lock(path):
        try:
            raw = path.read_bytes()
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            raw, mode = b"", FILE_MODE
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise BadInputError(str(path), f"Claude Code's config is not valid JSON ({exc}); not touching it") from None
        if not isinstance(data, dict):
            raise BadInputError(str(path), "Claude Code's config is not a JSON object; not touching it")
        merged = _merge(data, trusted, api_key)
        write_bytes_atomic(path, (json.dumps(merged, indent=2) + "\n").encode(), fsync=True, mode=mode)


# --- usage ----------------------------------------------------------------------------------

def mangle(cwd: Path | str) -> str:
    """The name of a working directory's folder under `projects/`."""
    return _MANGLE_RE.sub("-", str(cwd))


def transcript_path(ctx: LaunchContext, session: dict[str, Any], env: dict[str, str] | None = None) -> Path:
    """The transcript the SessionStart hook reported, else where Claude Code puts it."""
    recorded = session.get("transcript_path")
    if isinstance(recorded, str) and recorded:
        return Path(recorded)
    session_id = str(session.get("session_id") or ctx.session_id)
    cwd = session.get("cwd") or ctx.worktree
    return config_dir(env) / "projects" / mangle(cwd) / f"{session_id}.jsonl"


def price(model: str) -> tuple[float, float, float] | None:
    """(input, output, cache-read factor) of `model`, or None when it is not in PRICES."""
    best: tuple[str, float, float, float] | None = None
    for row in PRICES:
        if model.startswith(row[0]) and (best is None or len(row[0]) > len(best[0])):
            best = row
    return best[1:] if best else None


@dataclass(frozen=True)
class _MessageUsage:
    model: str
    input_tokens: int
    output_tokens: int
    cache_read: int
    cache_write: int


def read_transcript_usage(path: Path) -> Usage:
    """Tokens and cost of every assistant message in a transcript, each message id once."""
    per_id: dict[str, _MessageUsage] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if '"usage"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                logger.warning("%s:%d: not JSON (a line being written?)", path, number)
                continue
            message = entry.get("message") if isinstance(entry, dict) else None
            if entry.get("type") != "assistant" or not isinstance(message, dict):
                continue
            usage = message.get("usage")
            if not isinstance(usage, dict):
                continue
            key = str(message.get("id") or entry.get("requestId") or entry.get("uuid") or number)
            per_id[key] = _MessageUsage(
                str(message.get("model") or ""), int(usage.get("input_tokens") or 0),
                int(usage.get("output_tokens") or 0), int(usage.get("cache_read_input_tokens") or 0),
                int(usage.get("cache_creation_input_tokens") or 0))
    total = Usage(source=str(path), cost_usd=0.0 if per_id else None)
    for item in per_id.values():
        rates = price(item.model)
        cost = None
        if rates is not None:
            inp, out, read = rates
            cost = (item.input_tokens * inp + item.output_tokens * out + item.cache_write * inp * CACHE_WRITE_FACTOR
                    + item.cache_read * inp * read) / 1_000_000
        part = Usage(item.input_tokens, item.output_tokens, item.cache_read, item.cache_write, cost, str(path))
        unknown = cost is None or total.cost_usd is None
        total = total + part
        if unknown:  # one message of an unknown model makes the total unknown
            total = Usage(total.input_tokens, total.output_tokens, total.cache_read_tokens,
                          total.cache_write_tokens, None, total.source)
    return total


# --- dialogs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dialog:
    """A dialog Claude Code 2.1.332 may still show, as rendered (texts copied from its pane).
    `choose` is the option chosen by its text; "" makes it a question for a human."""

    name: str
    regex: str
    description: str
    choose: str = ""


DIALOGS: tuple[Dialog, ...] = (
    # Shown when the folder is not trusted; the highlight starts on "No, exit".
    Dialog("claude-trust", r"Is this a project you created or one you trust\?|Yes, I trust this folder",
           "Claude Code folder trust dialog", "Yes, I trust this folder"),
    # Shown when ANTHROPIC_API_KEY is set and its suffix is not in customApiKeyResponses; the
    # highlight starts on "No (recommended)". The key is the user's own: attractor pre-approves it.
    Dialog("claude-api-key", r"Detected a custom API key in your environment|Do you want to use this API key\?",
           "Claude Code custom API key approval", "Yes"),
    # A tool call no allow rule covers ("Do you want to proceed?"): never answered by a control
    # loop; the agent needs input until a human answers (`attractor agent answer NODE yes|no|always`).
    Dialog("claude-permission", r"Do you want to (?:proceed|make this edit to|create|overwrite)[^\n?]*\?",
           "Claude Code permission prompt (outside the allow list)"),
    # Auto mode behind a gateway (only when defaultMode is left at auto, which attractor never
    # does): not a menu; a human decides.
    Dialog("claude-auto-mode-unchecked", r"Auto mode can't check actions in this session",
           "Claude Code auto mode without its server-side check"),
    # --dangerously-skip-permissions (never used by attractor; refused as root).
    Dialog("claude-bypass-accept", r"running in Bypass Permissions mode|Yes, I accept",
           "Claude Code bypass-permissions acknowledgement", "Yes, I accept"),
)


def dialog_rules() -> tuple[PromptRule, ...]:
    from attractor.engines.prompts import PromptAction, PromptRule

    return tuple(PromptRule(d.name, re.compile(d.regex, re.IGNORECASE | re.MULTILINE),
                            PromptAction.ANSWER if d.choose else PromptAction.NEEDS_INPUT, d.description, d.choose)
                 for d in DIALOGS)


# --- the adapter ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaudeAdapter(Agent):
    def prepare(self, ctx: LaunchContext) -> Launch:
        if ctx.agent_dir is None:
            raise BadInputError(f"agent '{ctx.agent_id}'", "Claude Code needs a private agent directory")
        if not _UUID_RE.match(ctx.session_id):
            raise BadInputError(f"agent '{ctx.agent_id}'", f"session id {ctx.session_id!r} is not a lower-case UUID")
        ensure_private_dir(ctx.agent_dir)
        settings_file = ctx.agent_dir / SETTINGS_NAME
        write_bytes_atomic(settings_file, (json.dumps(settings(ctx), indent=2) + "\n").encode(), fsync=False)
        trusted = [ctx.target_dir or ctx.worktree]
        pre_accept(global_config_path(), trusted, os.environ.get("ANTHROPIC_API_KEY"))
        # 2.1.332 refuses `--session-id` of a session that has a transcript ("Session ID ... is
        # already in use") and `--resume` of one that has none ("No conversation found with
        # session ID"): resumed only when asked and the transcript is there.
        # a session killed before its first answer has a transcript but no conversation: the runner
        # then asks for a fresh start (ctx.resume False, with a new session id)
        resume = ctx.resume and transcript_path(ctx, {}).is_file()
        if resume != ctx.resume:
            logger.info("claude session %s: %s (its transcript %s)", ctx.session_id,
                        "resuming" if resume else "starting afresh", "exists" if resume else "is missing")
        argv = [self.binary, "--settings", str(settings_file), "--resume" if resume else "--session-id",
                ctx.session_id]
        if ctx.model:
            argv += ["--model", ctx.model]
        prompt = ctx.prompt_file.read_text(encoding="utf-8")
        argv += ["--", prompt]
        return Launch(argv, env={"DISABLE_AUTOUPDATER": "1"}, unset=(*ENCLOSING_SESSION_VARS, *CLAUDE_CHILD_VARS))

    def usage(self, ctx: LaunchContext, session: dict[str, Any]) -> Usage | None:
        path = transcript_path(ctx, session)
        if not path.is_file():
            return None
        return read_transcript_usage(path)

    def dialogs(self) -> tuple[PromptRule, ...]:
        return dialog_rules()


def shell_words(argv: list[str]) -> str:
    """argv as one shell line (for logs and humans)."""
    return " ".join(shlex.quote(word) for word in argv)


ADAPTER = ClaudeAdapter("claude", _prompt_from_file("claude"), "claude",
                        "install Claude Code (npm install -g @anthropic-ai/claude-code)", has_hooks=True)
