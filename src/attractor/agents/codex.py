# ruff: noqa: RUF003
"""Codex CLI adapter (checked against codex-cli 0.171.0): a private CODEX_HOME per run, the TUI
in the pane, hooks into `attractor agent-hook`, usage from the rollout file.

Files (under the state directory; the directory is 0700, the files 0600, all rewritten at every
launch, so a change of settings reaches the next respawn):

    runs/<run-id>/codex-home/config.toml   Codex's own settings (CODEX_HOME points here)
    runs/<run-id>/codex-home/hooks.json    hooks calling `attractor agent-hook <event>`
    runs/<run-id>/codex-home/sessions/YYYY/MM/DD/rollout-<stamp>-<session-id>.jsonl
                                           written by Codex: the session's record (usage is read
                                           from its last `token_count` event)

`config.toml` carries:
- the model and provider: the user's own `~/.codex/config.toml` (`model`, `model_provider`,
  `model_providers`, `model_reasoning_effort`, and its `[notice]` table of acknowledged
  prompts); for the built-in `openai` provider with `OPENAI_API_KEY`/`OPENAI_BASE_URL` in the
  environment, a provider `attractor-openai` built from them (the key is read in the pane
  through `env_key`, never written to disk; a custom provider speaks plain HTTP, where the
  built-in one first tries a WebSocket); else the user's API-key sign-in (`auth.json` with
  `auth_mode: apikey`) is copied into the private home. A ChatGPT sign-in is not copied, so
  Codex shows its sign-in screen, which is needs-input;
- `approval_policy = "never"` and `sandbox_mode = "danger-full-access"`: `workspace-write`
  mounts `.git` read-only, and a worktree's git dir is `<root>/.git/worktrees/<name>`, outside
  the worktree, so `git commit` fails there with "Read-only file system";
- `[projects."<target root>"] trust_level = "trusted"`: without it 0.171 shows "Folder access …
  Trust this folder?", even with `--dangerously-bypass-approvals-and-sandbox`. Codex resolves a
  worktree to the repository root of its common git dir ("Trusting will apply to the repository
  root"), so trusting the root covers `<root>/.claude/worktrees/<node>`; a worktree outside the
  root is trusted as well;
- no update check (`check_for_update_on_startup`, `features.in_app_updates`), no analytics or
  feedback upload, no desktop notifications, no background daemon (`features.daemon_auto_start`,
  and `--no-daemon` on the command line).

The pane runs `python -m attractor.agents.codex -- codex …` (see `reap`): Codex starts the
agent's commands in sessions of their own with no terminal, so killing the pane (SIGHUP to its
process group, or to its session) ends Codex but not a command still running (a test server, a
`sleep`); the wrapper becomes their subreaper and ends them when Codex exits or the pane goes.

Hooks run only when trusted; a hook file written here is ours, so the launch passes
`--dangerously-bypass-hook-trust` (without it 0.171 stops at "Hooks need review"). Codex sends
Claude-Code-shaped JSON on the hook's stdin (see `HOOK_EVENTS`) and accepts an empty stdout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from attractor import procs
from attractor.agents import Agent, Launch, LaunchContext, Usage
from attractor.engines.prompts import PromptAction, PromptRule
from attractor.store.atomic import ensure_private_dir, write_bytes_atomic

logger = logging.getLogger(__name__)

PROVIDER_FROM_ENV = "attractor-openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Codex hook event -> `attractor agent-hook` event. Codex 0.171 has no Notification event; a
# PermissionRequest (an approval about to be asked) is what a human must see.
HOOK_EVENTS: dict[str, str] = {
    "SessionStart": "session-start",
    "UserPromptSubmit": "user-prompt-submit",
    "PostToolUse": "post-tool-use",
    "PermissionRequest": "notification",
    "Stop": "stop",
    "PreCompact": "pre-compact",
    "SessionEnd": "session-end",
}
HOOK_TIMEOUT = 30
SESSION_END_TIMEOUT = 3  # Codex clamps SessionEnd hooks to 3 s (and warns when asked for more)
# keys of the user's config.toml that say which model they use and how to reach it
USER_KEYS = ("model", "model_provider", "model_reasoning_effort", "model_reasoning_summary", "model_verbosity",
             "openai_base_url")
USER_TABLES = ("model_providers", "notice")

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# --- a small TOML writer (values are str, bool, int, float, lists and tables of those) -------------

def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_table(path: tuple[str, ...], table: Mapping[str, Any]) -> Iterator[str]:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    if path and (scalars or not tables):
        yield "[" + ".".join(_toml_key(p) for p in path) + "]"
    for key, value in scalars:
        yield f"{_toml_key(key)} = {_toml_value(value)}"
    if scalars:
        yield ""
    for key, value in tables:
        yield from _toml_table((*path, key), value)


def dump_toml(data: Mapping[str, Any]) -> str:
    return "\n".join(_toml_table((), data)).rstrip("\n") + "\n"


# --- settings --------------------------------------------------------------------------------------

def codex_home(ctx: LaunchContext) -> Path:
    return ctx.state_dir / "runs" / (ctx.run_id or "default") / "codex-home"


def user_config(home: Path | None = None) -> dict[str, Any]:
    """The model choice from the user's own Codex config (`$CODEX_HOME` or `~/.codex`)."""
    base = Path(os.environ["CODEX_HOME"]) if "CODEX_HOME" in os.environ and home is None else \
        (home or Path.home()) / ".codex"
    path = base / "config.toml"
    try:
        loaded = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        logger.warning("ignoring unreadable Codex config %s: %s", path, exc, extra={"att_agent": "codex"})
        return {}
    picked: dict[str, Any] = {k: loaded[k] for k in USER_KEYS if k in loaded}
    picked.update({k: loaded[k] for k in USER_TABLES if isinstance(loaded.get(k), dict)})
    return picked


def provider_settings(environ: Mapping[str, str], user: Mapping[str, Any]) -> dict[str, Any]:
    """Model and provider keys. A provider of the user's own (`model_provider` other than the
    built-in `openai`) is kept as it is. For the built-in provider, `OPENAI_API_KEY` or
    `OPENAI_BASE_URL` in the environment become the provider `attractor-openai` (the built-in one
    wants a sign-in in the private home, and tries a WebSocket first); without them the user's
    settings stay and `prepare` brings an API-key sign-in along."""
    settings = dict(user)
    if str(user.get("model_provider") or "openai") != "openai":
        return settings
    if not (environ.get("OPENAI_API_KEY") or environ.get("OPENAI_BASE_URL")):
        return settings
    base_url = environ.get("OPENAI_BASE_URL") or settings.pop("openai_base_url", None) or DEFAULT_BASE_URL
    settings.pop("openai_base_url", None)
    settings["model_provider"] = PROVIDER_FROM_ENV
    settings["model_providers"] = {**(settings.get("model_providers") or {}), PROVIDER_FROM_ENV: {
        "name": "OpenAI (from OPENAI_BASE_URL / OPENAI_API_KEY)",
        "base_url": base_url,
        "env_key": "OPENAI_API_KEY",
        "wire_api": "responses",
    }}
    return settings


def provider_env_key(table: Mapping[str, Any]) -> str | None:
    """The environment variable the chosen provider reads its key from, if any."""
    provider = table.get("model_provider")
    spec = (table.get("model_providers") or {}).get(provider) if provider else None
    key = spec.get("env_key") if isinstance(spec, dict) else None
    return str(key) if key else None


def api_key_sign_in(user_home: Path | None = None) -> bytes | None:
    """The user's `auth.json` when it holds an API-key sign-in (`auth_mode: apikey`), to copy into
    the private home. A ChatGPT sign-in is never copied: its refresh token rotates, and two homes
    refreshing it would sign each other out."""
    base = Path(os.environ["CODEX_HOME"]) if "CODEX_HOME" in os.environ and user_home is None else \
        (user_home or Path.home()) / ".codex"
    try:
        data = (base / "auth.json").read_bytes()
        loaded = json.loads(data)
    except (OSError, ValueError):
        return None
    if isinstance(loaded, dict) and loaded.get("auth_mode") == "apikey" and loaded.get("OPENAI_API_KEY"):
        return data
    return None


def trusted_roots(ctx: LaunchContext) -> list[Path]:
    root = (ctx.target_dir or ctx.worktree).resolve()
    roots = [root]
    worktree = ctx.worktree.resolve()
    if worktree != root and not worktree.is_relative_to(root):
        roots.append(worktree)
    return roots


def config(ctx: LaunchContext, environ: Mapping[str, str] | None = None,
           user: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The contents of the private config.toml, as a table."""
    env = os.environ if environ is None else environ
    settings = provider_settings(env, user_config() if user is None else user)
    if ctx.model:
        settings["model"] = ctx.model
    notice = dict(settings.pop("notice", {}) or {})
    notice["hide_full_access_warning"] = True
    providers = settings.pop("model_providers", None)
    table: dict[str, Any] = {
        **settings,
        "approval_policy": "never",
        "sandbox_mode": "danger-full-access",
        "check_for_update_on_startup": False,
        "analytics": {"enabled": False},
        "feedback": {"enabled": False},
        "features": {"in_app_updates": False, "daemon_auto_start": False},
        "notice": notice,
        "tui": {"notifications": False},
    }
    if providers:
        table["model_providers"] = providers
    table["projects"] = {str(root): {"trust_level": "trusted"} for root in trusted_roots(ctx)}
    return table


def attractor_command(ctx: LaunchContext) -> str:
    return ctx.attractor or f"{shlex.quote(sys.executable)} -m attractor"


def hooks(ctx: LaunchContext) -> dict[str, Any]:
    """hooks.json: every event calls `attractor agent-hook <event>` (stdin: Codex's JSON)."""
    command = attractor_command(ctx)
    table: dict[str, Any] = {}
    for codex_event, ours in HOOK_EVENTS.items():
        timeout = SESSION_END_TIMEOUT if codex_event == "SessionEnd" else HOOK_TIMEOUT
        table[codex_event] = [{"hooks": [{"type": "command", "command": f"{command} agent-hook {ours}",
                                          "timeout": timeout}]}]
    return {"hooks": table}


# --- usage ------------------------------------------------------------------------------------------

def rollout_files(home: Path) -> list[Path]:
    sessions = home / "sessions"
    if not sessions.is_dir():
        return []
    return sorted(sessions.glob("*/*/*/rollout-*.jsonl"), key=lambda p: p.name)


def session_cwd(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8") as handle:
            first = json.loads(handle.readline() or "{}")
    except (OSError, ValueError):
        return None
    payload = first.get("payload") if isinstance(first, dict) else None
    return str(payload.get("cwd")) if isinstance(payload, dict) and first.get("type") == "session_meta" else None


def find_rollout(home: Path, session: Mapping[str, Any], worktree: Path | None = None) -> Path | None:
    """The rollout of the session the hooks recorded (`transcript_path` or `session_id`); else the
    newest rollout started in `worktree`."""
    transcript = session.get("transcript_path")
    if transcript and Path(str(transcript)).is_file():
        return Path(str(transcript))
    files = rollout_files(home)
    session_id = str(session.get("session_id") or "")
    if session_id:
        named = [p for p in files if p.name.endswith(f"-{session_id}.jsonl")]
        return named[-1] if named else None
    if worktree is not None:
        wanted = str(worktree.resolve())
        for path in reversed(files):
            if session_cwd(path) == wanted:
                return path
    return None


def usage_from_rollout(path: Path) -> Usage | None:
    """Totals of the last `token_count` event: `info.total_token_usage` holds `input_tokens`
    (cached included), `cached_input_tokens`, `cache_write_input_tokens`, `output_tokens`
    (reasoning included), `reasoning_output_tokens`, `total_tokens`. `input_tokens` of the result
    is the uncached part, as Codex prints it ("input=3,200 (+ 800 cached)")."""
    total: dict[str, Any] | None = None
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if '"token_count"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line being written
                payload = record.get("payload") if isinstance(record, dict) else None
                if not isinstance(payload, dict) or payload.get("type") != "token_count":
                    continue
                info = payload.get("info")
                if isinstance(info, dict) and isinstance(info.get("total_token_usage"), dict):
                    total = info["total_token_usage"]
    except OSError:
        return None
    if total is None:
        return None
    cached = int(total.get("cached_input_tokens") or 0)
    return Usage(input_tokens=max(0, int(total.get("input_tokens") or 0) - cached),
                 output_tokens=int(total.get("output_tokens") or 0), cache_read_tokens=cached,
                 cache_write_tokens=int(total.get("cache_write_input_tokens") or 0), cost_usd=None,
                 source=str(path))


# --- dialogs -----------------------------------------------------------------------------------------

def _rule(name: str, regex: str, action: PromptAction, description: str, choose: str = "") -> PromptRule:
    return PromptRule(name, re.compile(regex, re.IGNORECASE | re.MULTILINE), action, description, choose)


# Seen rendered by 0.171.0. Configured away, listed in case.
DIALOGS: tuple[PromptRule, ...] = (
    # "Folder access … Trust this folder? …" / "› 1. Trust and continue" / "2. Back to Agent Command Center"
    _rule("codex-folder-trust", r"Trust this folder\?", PromptAction.ANSWER,
          "Codex folder trust (the target root is trusted in config.toml)", "Trust and continue"),
    # "Hooks need review" / "› 1. Review hooks" / "2. Trust all and continue" /
    # "3. Continue without trusting (hooks won't run)": the hooks are the ones we wrote.
    _rule("codex-hooks-review", r"^\s*Hooks need review", PromptAction.ANSWER,
          "Codex hook trust review (our own hooks.json)", "Trust all and continue"),
    # "Meet GPT-6 Sol …" / "› 1. Try new model" / "2. Use existing model": keep the chosen model.
    _rule("codex-model-migration", r"\b1\. Try new model$", PromptAction.ANSWER,
          "Codex model upgrade offer", "Use existing model"),
    # "Welcome to Codex … Choose how you want to use Codex." / "> 1. Sign in with ChatGPT" …
    _rule("codex-sign-in", r"Choose how you want to use Codex|Sign in with ChatGPT", PromptAction.NEEDS_INPUT,
          "Codex wants a sign-in (no provider or API key configured)"),
    # an update offer (update checks are off; a human decides whether to update)
    _rule("codex-update", r"Update available!|A new version of Codex is available", PromptAction.NEEDS_INPUT,
          "Codex update offer"),
)


# --- the adapter ----------------------------------------------------------------------------------

class CodexAdapter(Agent):
    """Codex CLI in its TUI: `codex [resume <id>] --no-daemon --dangerously-bypass-hook-trust
    --cd <worktree> -- <prompt>` with CODEX_HOME pointing at the run's private home."""

    def prepare(self, ctx: LaunchContext) -> Launch:
        home = ensure_private_dir(codex_home(ctx))
        table = config(ctx)
        write_bytes_atomic(home / "config.toml", dump_toml(table).encode(), fsync=False)
        write_bytes_atomic(home / "hooks.json", (json.dumps(hooks(ctx), indent=2) + "\n").encode(), fsync=False)
        env = {"CODEX_HOME": str(home)}
        key = provider_env_key(table)
        if key and key in os.environ:
            env[key] = os.environ[key]  # the provider reads its key in the pane
        elif str(table.get("model_provider") or "openai") == "openai":
            sign_in = api_key_sign_in()
            if sign_in is not None:
                write_bytes_atomic(home / "auth.json", sign_in, fsync=False)
        return Launch(self.command(ctx), env)

    def binary_path(self) -> str:
        return shutil.which(self.binary) or self.binary

    def command(self, ctx: LaunchContext) -> list[str]:
        """Start, or resume: the session the hooks recorded (`ctx.session_id`) when Codex has its
        rollout; else the newest session Codex recorded in this worktree (`resume --last` filters by
        working directory); else a fresh start (a session id Codex never saw would stop at an
        error)."""
        return [sys.executable, "-m", "attractor.agents.codex", "--", *self.codex_argv(ctx)]

    def codex_argv(self, ctx: LaunchContext) -> list[str]:
        prompt = ctx.prompt_file.read_text(encoding="utf-8")
        options = ["--no-daemon", "--dangerously-bypass-hook-trust", "--cd", str(ctx.worktree)]
        home = codex_home(ctx)
        if ctx.resume and ctx.session_id and find_rollout(home, {"session_id": ctx.session_id}) is not None:
            return [self.binary_path(), "resume", *options, ctx.session_id, prompt]
        if ctx.resume and find_rollout(home, {}, ctx.worktree) is not None:
            return [self.binary_path(), "resume", "--last", *options, prompt]
        return [self.binary_path(), *options, "--", prompt]

    def argv(self, ctx: LaunchContext) -> list[str]:
        return self.command(ctx)

    def usage(self, ctx: LaunchContext, session: dict[str, Any]) -> Usage | None:
        path = find_rollout(codex_home(ctx), session, ctx.worktree)
        return usage_from_rollout(path) if path is not None else None

    def dialogs(self) -> tuple[PromptRule, ...]:
        return DIALOGS


# --- the pane's process: Codex under a subreaper -------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36
REAP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for what Codex leaves behind


def _become_subreaper() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False  # not Linux: orphans go to init, as without the wrapper


def _descendants(root: int) -> list[int]:
    """Live processes below `root` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if name.isdigit():
            stat = procs.read_stat(int(name))
            if stat is not None and not stat.finished:
                children.setdefault(stat.ppid, []).append(stat.pid)
    found: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _end_descendants() -> None:
    for sig, wait in ((signal.SIGTERM, REAP_GRACE), (signal.SIGKILL, 1.0)):
        left = _descendants(os.getpid())
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
        deadline = time.monotonic() + wait
        while _descendants(os.getpid()) and time.monotonic() < deadline:
            _reap_zombies()
            time.sleep(0.05)
    _reap_zombies()


def reap(argv: Sequence[str]) -> int:
    """Run `argv` (Codex) as a child in the same process group and terminal, and end every
    process left below us when it exits or when the pane hangs up. Exit with its exit code."""
    import subprocess

    _become_subreaper()
    hung_up: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        hung_up.append(signum)

    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, on_signal)
    # Ctrl-C and friends are for Codex (it shares our terminal); a handler, not SIG_IGN, so the
    # child starts with the default disposition
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, lambda _s, _f: None)
    try:
        child = subprocess.Popen(list(argv))
    except OSError as exc:
        print(f"error: cannot start {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    code: int | None = None
    while code is None:
        try:
            code = child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if hung_up:
                # tmux signals the pane's process only: pass the hang-up on, as a shell would
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(hung_up[0])
                try:
                    code = child.wait(timeout=REAP_GRACE)
                except subprocess.TimeoutExpired:
                    child.kill()
                    code = child.wait()
    _end_descendants()
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m attractor.agents.codex -- CODEX [ARGS…]", file=sys.stderr)
        return 2
    return reap(args)


ADAPTER = CodexAdapter("codex", ("codex",), "codex", "install Codex CLI (npm install -g @openai/codex)",
                       has_hooks=True)


if __name__ == "__main__":
    raise SystemExit(main())
