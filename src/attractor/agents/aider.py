"""Aider adapter: argv and environment, the files Aider writes, the git identity it commits with,
its usage record and its dialogs. Checked against aider 0.86.2 (the README's Aider section lists
the flags and what each avoids).

Aider does not run attractor's report command: it edits, commits and exits (`--message-file`),
so `reports` is exit-with-commit and the runner reports for it.

Flags, each for a reason seen on 0.86.2 with a fresh HOME:
- `--message-file PROMPT`: one message, then exit. `--yes-always`: every confirmation is answered
  (shell commands are refused by it, not run: they need an explicit yes).
- `--no-gitignore`: otherwise Aider adds `.aider*` to `.gitignore` and leaves it uncommitted
  (and asks first without `--yes-always`).
- `--map-tokens 0`: no repo map, hence no `.aider.tags.cache.v4/` in the worktree.
- `--input-history-file`, `--chat-history-file`, `--llm-history-file`, `--analytics-log`: the
  files Aider writes, moved from the worktree to the agent's directory (`<agent_dir>/aider-*`).
- `--no-analytics`: never asks to allow analytics and sends none (`--analytics-disable` would
  do the same but writes "permanently disabled" into the user's `~/.aider/analytics.json`);
  the analytics *log* is still written, locally, and is where usage is read from.
- `--no-check-update`, `--no-show-release-notes`: no PyPI request, no "what's new?" offer.
- `--no-show-model-warnings`: no "unknown context window" warning with its "Open documentation
  url?" offer for models Aider has no metadata for (a local OpenAI-compatible server).
- `--no-detect-urls`, `--disable-playwright`: a URL in the prompt is not scraped (with
  `--yes-always` Aider would fetch it, and offer to install Playwright).
- `--no-suggest-shell-commands`: the model is not asked for shell commands nobody will run.
- `--no-attribute-author`, `--no-attribute-committer`: the user's name as author and committer,
  not "Name (aider)" (the Co-authored-by trailer naming the model stays).
- `--model` when the node or the user chose one; otherwise Aider reads `AIDER_MODEL` (and every
  other `AIDER_*` variable), or picks one from the API keys in the environment.

Environment: `LITELLM_LOCAL_MODEL_COST_MAP=True` (litellm's documented switch: its bundled price
list instead of a download at import); `BROWSER=true` (Aider opens URLs with Python's
`webbrowser` after a yes; with no display that would start a console browser in the pane);
the git identity below. The model's endpoint and key come from the user's environment
(`OPENAI_API_BASE`/`OPENAI_BASE_URL`, `OPENAI_API_KEY`, ...) through the tmux server; the
endpoint variables are passed on explicitly, keys never are (a command line is visible to
`ps`).

Git identity. Aider checks `git config user.name`/`user.email` (which ignores GIT_AUTHOR_*) and,
when either is missing, writes "Your Name" / "you@example.com" into the repository's config, the
target repository's shared one for a worktree. So the user's identity (GIT_AUTHOR_* when set,
else `git config` as the target repository sees it) is given to git through `GIT_CONFIG_COUNT` /
`GIT_CONFIG_KEY_n` / `GIT_CONFIG_VALUE_n` (after any the user already has) and as
GIT_AUTHOR_*/GIT_COMMITTER_*. With no identity at all the launch is refused.

Usage. `<agent_dir>/aider-<attempt>.analytics.jsonl` holds one JSON object a line; events
`message_send` carry `prompt_tokens`, `completion_tokens` and `cost` (USD, 0 for a model
without prices) of each main-model message, exactly. The chat history's "Tokens: 1.2k sent,
41 received. Cost: $0.01 message, $0.02 session." lines round to hundreds and are read only
when the log is missing. Neither counts the weak model's commit-message request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attractor.agents import REPORTS_BY_EXIT, Agent, Launch, LaunchContext, Usage
from attractor.errors import BadInputError
from attractor.store.atomic import ensure_private_dir

if TYPE_CHECKING:
    from attractor.engines.prompts import PromptRule

logger = logging.getLogger(__name__)

BASE_FLAGS = (
    "--yes-always", "--no-gitignore", "--map-tokens", "0", "--no-check-update", "--no-analytics",
    "--no-show-release-notes", "--no-show-model-warnings", "--no-detect-urls", "--disable-playwright",
    "--no-suggest-shell-commands", "--no-attribute-author", "--no-attribute-committer",
    "--no-restore-chat-history",
)
# Non-secret variables that choose the model's endpoint: passed on explicitly.
ENDPOINT_VARS = ("OPENAI_API_BASE", "OPENAI_BASE_URL", "AIDER_MODEL", "AIDER_OPENAI_API_BASE")
FIXED_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "BROWSER": "true"}
# Keys Aider picks a default model from (aider/onboarding.py); with none of them and no model
# it would start an OpenRouter login in a browser, answered yes by --yes-always.
MODEL_KEY_VARS = ("OPENROUTER_API_KEY", "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "OPENAI_API_KEY",
                  "GEMINI_API_KEY", "VERTEXAI_PROJECT")

_TOKENS_RE = re.compile(
    r"Tokens: (?P<sent>[\d.]+k?) sent(?:, (?P<write>[\d.]+k?) cache write)?(?:, (?P<hit>[\d.]+k?) cache hit)?"
    r", (?P<received>[\d.]+k?) received\.(?:\s+Cost: \$(?P<cost>[\d.]+) message)?")


@dataclass(frozen=True)
class Identity:
    name: str
    email: str


def history_files(ctx: LaunchContext) -> dict[str, Path]:
    """The files Aider writes for this attempt, all under the agent's directory."""
    directory = agent_dir(ctx)
    stem = f"aider-{ctx.attempt}"
    return {
        "input": directory / "aider.input.history",
        "chat": directory / f"{stem}.chat.history.md",
        "llm": directory / f"{stem}.llm.history",
        "analytics": directory / f"{stem}.analytics.jsonl",
    }


def agent_dir(ctx: LaunchContext) -> Path:
    return ctx.agent_dir or ctx.state_dir / "agents" / ctx.agent_id


def _git_config(repo: Path, key: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "config", "--get", key], capture_output=True,
                             text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def user_identity(repo: Path, environ: dict[str, str] | None = None) -> Identity | None:
    """Who the user commits as: GIT_AUTHOR_* when set, else git's config as `repo` sees it."""
    env = os.environ if environ is None else environ
    name = env.get("GIT_AUTHOR_NAME") or _git_config(repo, "user.name")
    email = env.get("GIT_AUTHOR_EMAIL") or _git_config(repo, "user.email")
    return Identity(name, email) if name and email else None


def identity_env(identity: Identity, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Variables that make git (and Aider's `git config --get user.*`) see `identity`, keeping
    the user's own GIT_CONFIG_KEY_n entries before ours."""
    env = os.environ if environ is None else environ
    try:
        count = max(0, int(env.get("GIT_CONFIG_COUNT") or 0))
    except ValueError:
        count = 0
    out: dict[str, str] = {}
    for index in range(count):
        for part in ("KEY", "VALUE"):
            name = f"GIT_CONFIG_{part}_{index}"
            if name in env:
                out[name] = env[name]
    for offset, (key, value) in enumerate((("user.name", identity.name), ("user.email", identity.email))):
        out[f"GIT_CONFIG_KEY_{count + offset}"] = key
        out[f"GIT_CONFIG_VALUE_{count + offset}"] = value
    out["GIT_CONFIG_COUNT"] = str(count + 2)
    out["GIT_AUTHOR_NAME"] = identity.name
    out["GIT_AUTHOR_EMAIL"] = identity.email
    out["GIT_COMMITTER_NAME"] = env.get("GIT_COMMITTER_NAME") or identity.name
    out["GIT_COMMITTER_EMAIL"] = env.get("GIT_COMMITTER_EMAIL") or identity.email
    return out


def _parse_count(text: str | None) -> int:
    if not text:
        return 0
    return round(float(text[:-1]) * 1000) if text.endswith("k") else int(float(text))


def usage_from_analytics(path: Path) -> Usage | None:
    """Sum of the `message_send` events of an analytics log; None when there is no log."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    sent = received = 0
    cost = 0.0
    priced = False
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line being written
        if not isinstance(event, dict) or event.get("event") != "message_send":
            continue
        props = event.get("properties") or {}
        sent += int(props.get("prompt_tokens") or 0)
        received += int(props.get("completion_tokens") or 0)
        if isinstance(props.get("cost"), (int, float)) and props["cost"]:
            cost += float(props["cost"])
            priced = True
    return Usage(sent, received, cost_usd=cost if priced else None, source=str(path))


def usage_from_chat_history(path: Path) -> Usage | None:
    """Sum of the "Tokens: … sent, … received. Cost: $… message" lines (rounded by Aider)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    total = Usage(source=str(path))
    for found in _TOKENS_RE.finditer(text):
        cost = found.group("cost")
        total = total + Usage(_parse_count(found.group("sent")), _parse_count(found.group("received")),
                              _parse_count(found.group("hit")), _parse_count(found.group("write")),
                              float(cost) if cost is not None else None, str(path))
    return total


@dataclass(frozen=True)
class AiderAdapter(Agent):
    def prepare(self, ctx: LaunchContext) -> Launch:
        files = history_files(ctx)
        ensure_private_dir(agent_dir(ctx))
        repo = ctx.target_dir or ctx.worktree
        identity = user_identity(repo)
        if identity is None:
            raise BadInputError(
                "git identity", f"no user.name/user.email for {repo} (nor GIT_AUTHOR_NAME/EMAIL); aider would "
                "commit as 'Your Name' and write it into the repository's config: set git config user.name and "
                "user.email")
        if not ctx.model and not os.environ.get("AIDER_MODEL") and not any(os.environ.get(k) for k in MODEL_KEY_VARS):
            raise BadInputError(
                "aider model", "no model chosen (--model, AIDER_MODEL) and no API key in the environment; aider "
                "would start an OpenRouter login in a browser")
        argv = [self.binary, *BASE_FLAGS,
                "--input-history-file", str(files["input"]),
                "--chat-history-file", str(files["chat"]),
                "--llm-history-file", str(files["llm"]),
                "--analytics-log", str(files["analytics"])]
        if ctx.model:
            argv += ["--model", ctx.model]
        argv += ["--message-file", str(ctx.prompt_file)]
        env = dict(FIXED_ENV)
        env.update({k: os.environ[k] for k in ENDPOINT_VARS if os.environ.get(k)})
        env.update(identity_env(identity))
        logger.info("aider for %s commits as %s <%s>", ctx.node, identity.name, identity.email,
                    extra={"att_agent": ctx.agent_id})
        return Launch(argv, env)

    def usage(self, ctx: LaunchContext, session: dict[str, Any]) -> Usage | None:
        files = history_files(ctx)
        found = usage_from_analytics(files["analytics"])
        return found if found is not None else usage_from_chat_history(files["chat"])

    def dialogs(self) -> tuple[PromptRule, ...]:
        return aider_dialogs()


def aider_dialogs() -> tuple[PromptRule, ...]:
    """Aider's questions (`<question> (Y)es/(N)o[/(D)on't ask again] [Yes]:`), for a session that
    asks despite `--yes-always`; each is answered by its option's text. A match starts where the
    shared `aider-confirm` rule's does (the question is a look-behind), so with these rules placed
    before the shared table they win the tie."""
    from attractor.engines.prompts import PromptAction, PromptRule

    def rule(name: str, questions: tuple[str, ...], action: PromptAction, choose: str = "") -> PromptRule:
        behind = "|".join(f"(?<={re.escape(question)} )" for question in questions)
        pattern = re.compile(rf"(?:{behind})\(Y\)es/\(N\)o[^\n]*\[(?:Yes|No)\]:\s*$", re.MULTILINE | re.IGNORECASE)
        return PromptRule(name, pattern, action, f"Aider: {questions[0]}", choose)

    answer, ask = PromptAction.ANSWER, PromptAction.NEEDS_INPUT
    return (
        rule("aider-gitignore", ("to .gitignore (recommended)?",), answer, "No"),
        rule("aider-analytics", ("Allow collection of anonymous analytics to help improve aider?",), answer, "No"),
        rule("aider-open-url", ("Open documentation url for more info?", "Open URL for more info?",
                                "Open documentation about edit formats?",
                                "Would you like to see what's new in this version?"), answer, "No"),
        rule("aider-network", ("Login to OpenRouter or create a free account?", "Add URL to the chat?",
                               "Install playwright?"), answer, "No"),
        rule("aider-no-repo", ("No git repo found, create one to track aider's changes (recommended)?",), answer, "No"),
        rule("aider-edit", ("Create new file?", "Allow edits to file that has not been added to the chat?",
                            "Add file to the chat?", "Edit the files?"), answer, "Yes"),
        rule("aider-fix", ("Attempt to fix lint errors?", "Attempt to fix test errors?"), answer, "Yes"),
        rule("aider-ask", ("Run shell command?", "Run shell commands?", "Run pip install?", "Try to proceed anyway?",
                           "command output to the chat?"), ask),
    )

ADAPTER = AiderAdapter("aider", ("aider",), "aider", "install aider (pip install aider-chat), e.g. with "
                       "scripts/install_agent_clis.sh", reports=REPORTS_BY_EXIT)
