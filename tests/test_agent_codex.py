# ruff: noqa: RUF001
"""The Codex CLI adapter: its settings files, argv, usage and dialogs; and the real `codex` TUI
in a real tmux pane, in a git worktree, against the scripted model server (Responses API)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.agents import LaunchContext, Usage, resolve_agent
from attractor.agents import codex as codex_mod
from attractor.agents.codex import CodexAdapter
from attractor.engines.prompts import PromptAction, match_prompt
from tests.helpers import git, make_repo, retry_until
from tests.modelserver.core import ModelServer, NodePlaybook, bash, say, write

PINNED = Path("/root/.cache/attractor-tools/node/node_modules/.bin/codex")
MODEL = "gpt-6.2-sol"  # a bundled model with no upgrade offer (gpt-5.5 shows "Meet GPT-6 Sol")


def codex_binary() -> str:
    """The real codex: on PATH, under $ATTRACTOR_TOOLS, or the pinned install; skipped when
    missing, except on CI, where a missing CLI fails the test."""
    tools = os.environ.get("ATTRACTOR_TOOLS")
    for candidate in (shutil.which("codex"), tools and str(Path(tools) / "node/node_modules/.bin/codex"),
                      str(PINNED)):
        if candidate and Path(candidate).is_file():
            return candidate
    if os.environ.get("CI") == "true":
        pytest.fail("codex is not installed (scripts/install_agent_clis.sh) and CI=true")
    pytest.skip("codex is not installed (scripts/install_agent_clis.sh)")


def context(tmp_path: Path, *, worktree: Path | None = None, target: Path | None = None, resume: bool = False,
            session_id: str = "", attractor: str = "", model: str = MODEL) -> LaunchContext:
    prompt = tmp_path / "prompt.md"
    if not prompt.exists():
        prompt.write_text("--starts like an option\n## Your task (node `n1`)\nWork.\n")
    root = target or tmp_path / "repo"
    return LaunchContext(node="n1", worktree=worktree or root / ".claude" / "worktrees" / "n1", prompt_file=prompt,
                         attempt=1, agent_id="orchestrator-n1", runner_id="runner-n1", state_dir=tmp_path / "state",
                         run_id="run1", target_dir=root, resume=resume, session_id=session_id,
                         attractor=attractor, model=model)


# --- settings files ----------------------------------------------------------------------------------

def test_private_home_trusts_the_root_and_lets_a_worktree_commit(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    ctx = context(tmp_path)
    launch = CodexAdapter("codex", ("codex",), "codex").prepare(ctx)
    home = tmp_path / "state" / "runs" / "run1" / "codex-home"
    assert launch.env["CODEX_HOME"] == str(home)
    assert (home.stat().st_mode & 0o777) == 0o700
    assert ((home / "config.toml").stat().st_mode & 0o777) == 0o600
    settings = tomllib.loads((home / "config.toml").read_text())
    assert settings["approval_policy"] == "never" and settings["sandbox_mode"] == "danger-full-access"
    # the root only: Codex applies a worktree's trust to the root of its repository
    assert settings["projects"] == {str((tmp_path / "repo").resolve()): {"trust_level": "trusted"}}
    assert settings["model"] == MODEL and settings["model_provider"] == "attractor-openai"
    provider = settings["model_providers"]["attractor-openai"]
    assert provider == {"name": provider["name"], "base_url": "http://127.0.0.1:9/v1", "env_key": "OPENAI_API_KEY",
                        "wire_api": "responses"}
    assert "sk-test" not in (home / "config.toml").read_text()
    assert settings["check_for_update_on_startup"] is False
    assert settings["features"] == {"in_app_updates": False, "daemon_auto_start": False}
    assert settings["analytics"] == {"enabled": False} and settings["feedback"] == {"enabled": False}


def test_a_worktree_outside_the_root_is_trusted_too(tmp_path: Path) -> None:
    ctx = context(tmp_path, worktree=tmp_path / "elsewhere" / "n1")
    projects = codex_mod.config(ctx, environ={}, user={})["projects"]
    assert set(projects) == {str((tmp_path / "repo").resolve()), str((tmp_path / "elsewhere" / "n1").resolve())}


def test_the_users_own_provider_and_acknowledged_notices_are_kept(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    user_home = Path(os.environ["HOME"]) / ".codex"
    user_home.mkdir()
    (user_home / "config.toml").write_text(
        'model = "gpt-5.5"\nmodel_provider = "corp"\nsandbox_mode = "read-only"\n'
        '[model_providers.corp]\nname = "Corp"\nbase_url = "https://llm.corp.invalid/v1"\nenv_key = "CORP_KEY"\n'
        '[model_providers.corp.http_headers]\n"X-Team" = "a b"\n'
        '[notice.model_migrations]\n"gpt-5.5" = "gpt-6-sol"\n'
        '[projects."/somewhere"]\ntrust_level = "trusted"\n')
    monkeypatch.delenv("CODEX_HOME", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ignored-here")
    settings = tomllib.loads(codex_mod.dump_toml(codex_mod.config(context(tmp_path, model=""))))
    assert settings["model"] == "gpt-5.5" and settings["model_provider"] == "corp"
    assert settings["model_providers"]["corp"]["http_headers"] == {"X-Team": "a b"}
    assert settings["notice"]["model_migrations"] == {"gpt-5.5": "gpt-6-sol"}
    assert settings["sandbox_mode"] == "danger-full-access"  # the user's sandbox is not ours
    assert "/somewhere" not in settings["projects"]


class ProviderCase(NamedTuple):
    test_id: str
    user_config: str
    environ: dict[str, str]
    provider: str | None
    base_url: str | None


PROVIDER_CASES = [
    ProviderCase("env-only", "", {"OPENAI_API_KEY": "k"}, "attractor-openai", "https://api.openai.com/v1"),
    ProviderCase("env-base-url", "", {"OPENAI_BASE_URL": "http://h/v1"}, "attractor-openai", "http://h/v1"),
    ProviderCase("user-base-url-and-env-key", 'openai_base_url = "http://u/v1"\n', {"OPENAI_API_KEY": "k"},
                 "attractor-openai", "http://u/v1"),
    ProviderCase("user-builtin-no-env", 'model_provider = "openai"\n', {}, "openai", None),
    ProviderCase("user-custom-wins", 'model_provider = "corp"\n[model_providers.corp]\nbase_url = "http://c/v1"\n',
                 {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://h/v1"}, "corp", "http://c/v1"),
]


@pytest.mark.parametrize("case", PROVIDER_CASES, ids=[c.test_id for c in PROVIDER_CASES])
def test_provider_choice(case: ProviderCase) -> None:
    settings = codex_mod.provider_settings(case.environ, tomllib.loads(case.user_config))
    assert settings.get("model_provider") == case.provider
    spec = settings.get("model_providers", {}).get(case.provider, {})
    assert spec.get("base_url") == case.base_url
    assert "openai_base_url" not in settings or case.provider == "openai"


def test_an_api_key_sign_in_is_brought_along_a_chatgpt_one_is_not(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("CODEX_HOME", raising=False)
    user_home = Path(os.environ["HOME"]) / ".codex"
    user_home.mkdir()
    home = tmp_path / "state" / "runs" / "run1" / "codex-home"
    (user_home / "auth.json").write_text('{"auth_mode": "apikey", "OPENAI_API_KEY": "sk-user"}')
    CodexAdapter("codex", ("codex",), "codex").prepare(context(tmp_path))
    assert json.loads((home / "auth.json").read_text())["OPENAI_API_KEY"] == "sk-user"
    assert ((home / "auth.json").stat().st_mode & 0o777) == 0o600
    (home / "auth.json").unlink()
    (user_home / "auth.json").write_text('{"auth_mode": "chatgpt", "tokens": {"refresh_token": "r"}}')
    CodexAdapter("codex", ("codex",), "codex").prepare(context(tmp_path))
    assert not (home / "auth.json").exists()


def test_hooks_call_attractor_agent_hook_for_each_event(tmp_path: Path) -> None:
    ctx = context(tmp_path, attractor="/py -m attractor")
    CodexAdapter("codex", ("codex",), "codex").prepare(ctx)
    data = json.loads((tmp_path / "state" / "runs" / "run1" / "codex-home" / "hooks.json").read_text())
    commands = {event: groups[0]["hooks"][0]["command"] for event, groups in data["hooks"].items()}
    assert commands["SessionStart"] == "/py -m attractor agent-hook session-start"
    assert commands["Stop"] == "/py -m attractor agent-hook stop"
    assert commands["PostToolUse"] == "/py -m attractor agent-hook post-tool-use"
    assert data["hooks"]["SessionEnd"][0]["hooks"][0]["timeout"] == 3  # Codex clamps (and warns) above 3 s


class ArgvCase(NamedTuple):
    test_id: str
    resume: bool
    session_id: str
    head: list[str]


ARGV_CASES = [
    ArgvCase("start", False, "", ["codex", "--no-daemon", "--dangerously-bypass-hook-trust", "--cd"]),
    ArgvCase("resume-recorded-session", True, "01a2-x", ["codex", "resume", "--no-daemon",
                                                         "--dangerously-bypass-hook-trust", "--cd"]),
    ArgvCase("resume-last-in-worktree", True, "", ["codex", "resume", "--last", "--no-daemon",
                                                   "--dangerously-bypass-hook-trust", "--cd"]),
]


def record_rollout(ctx: LaunchContext, session_id: str) -> Path:
    """A rollout file as Codex writes it for `session_id`, started in the context's worktree."""
    day = codex_mod.codex_home(ctx) / "sessions" / "2026" / "12" / "01"
    day.mkdir(parents=True, exist_ok=True)
    rollout = day / f"rollout-2026-12-01T11-18-55-{session_id}.jsonl"
    rollout.write_text(ROLLOUT.replace("CWD", str(ctx.worktree.resolve())))
    return rollout


@pytest.mark.parametrize("case", ARGV_CASES, ids=[c.test_id for c in ARGV_CASES])
def test_argv_runs_the_tui_with_the_prompt_as_one_argument(tmp_path: Path, case: ArgvCase) -> None:
    ctx = context(tmp_path, resume=case.resume, session_id=case.session_id)
    if case.resume:
        record_rollout(ctx, case.session_id or "01a23154-4478-7501-aa23-c201a61fc1e2")
    wrapped = CodexAdapter("codex", ("codex",), "/opt/bin/codex").command(ctx)
    assert wrapped[:4] == [sys.executable, "-m", "attractor.agents.codex", "--"]
    argv = wrapped[4:]
    assert argv[0] == "/opt/bin/codex"
    assert ["codex", *argv[1:len(case.head)]] == case.head
    assert argv[-1] == ctx.prompt_file.read_text()
    assert "exec" not in argv
    if case.session_id:
        assert argv[-2] == case.session_id
    elif not case.resume:
        assert argv[-2] == "--"  # a prompt starting with "-" is not an option


def test_a_session_codex_never_recorded_is_started_afresh(tmp_path: Path) -> None:
    ctx = context(tmp_path, resume=True, session_id="3f0c6a70-runner-made-up")
    argv = CodexAdapter("codex", ("codex",), "codex").codex_argv(ctx)
    assert "resume" not in argv and argv[-2] == "--"


def test_resolve_agent_gives_the_codex_adapter() -> None:
    agent = resolve_agent("codex")
    assert isinstance(agent, CodexAdapter) and agent.has_hooks


def unrecognized_settings(binary: str, home: Path) -> list[str]:
    """What `codex doctor --json` says Codex ignores in the config of `home`."""
    env = {**os.environ, "CODEX_HOME": str(home)}
    done = subprocess.run([binary, "doctor", "--json"], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    details = json.loads(done.stdout)["checks"]["config.load"]["details"]
    return [str(v) for v in details.values() if "unrecognized" in str(v) or "is ignored" in str(v)]


def test_real_codex_recognises_every_setting_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = codex_binary()
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    launch = CodexAdapter("codex", ("codex",), binary).prepare(context(tmp_path))
    home = Path(launch.env["CODEX_HOME"])
    assert unrecognized_settings(binary, home) == []
    # the check itself sees a setting this version does not know
    with (home / "config.toml").open("a") as handle:
        handle.write("\n[tui_from_the_future]\nenabled = true\n")
    assert unrecognized_settings(binary, home)


# --- usage ---------------------------------------------------------------------------------------

# Recorded from codex-cli 0.171.0 against the model server (1000 input tokens, 200 of them cached,
# 50 output per answer), trimmed: session_meta without base_instructions, the token counts.
ROLLOUT = "\n".join([
    '{"timestamp":"2026-12-01T11:18:56.004Z","ordinal":0,"type":"session_meta","payload":{"session_id":'
    '"01a23154-4478-7501-aa23-c201a61fc1e2","id":"01a23154-4478-7501-aa23-c201a61fc1e2","cwd":"CWD",'
    '"originator":"codex-tui","cli_version":"0.171.0","source":"cli","thread_source":"user","model_provider":"mock"}}',
    '{"timestamp":"2026-12-01T11:18:56.004Z","ordinal":1,"type":"event_msg","payload":{"type":"token_count",'
    '"info":null,"rate_limits":null}}',
    '{"timestamp":"2026-12-01T11:18:56.169Z","ordinal":13,"type":"event_msg","payload":{"type":"token_count",'
    '"info":{"total_token_usage":{"input_tokens":1000,"cached_input_tokens":200,"cache_write_input_tokens":0,'
    '"output_tokens":50,"reasoning_output_tokens":0,"total_tokens":1050},"last_token_usage":{"input_tokens":1000,'
    '"cached_input_tokens":200,"cache_write_input_tokens":0,"output_tokens":50,"reasoning_output_tokens":0,'
    '"total_tokens":1050},"last_usage_includes_reasoning":false,"model_context_window":258400},'
    '"rate_limits":{"limit_id":"codex","primary":null,"secondary":null}}}',
    '{"timestamp":"2026-12-01T11:18:56.353Z","ordinal":27,"type":"event_msg","payload":{"type":"token_count",'
    '"info":{"total_token_usage":{"input_tokens":4000,"cached_input_tokens":800,"cache_write_input_tokens":0,'
    '"output_tokens":200,"reasoning_output_tokens":0,"total_tokens":4200},"last_token_usage":{"input_tokens":1000,'
    '"cached_input_tokens":200,"cache_write_input_tokens":0,"output_tokens":50,"reasoning_output_tokens":0,'
    '"total_tokens":1050},"last_usage_includes_reasoning":false,"model_context_window":258400},'
    '"rate_limits":{"limit_id":"codex","primary":null,"secondary":null}}}',
    '{"timestamp":"2026-12-01T11:18:56.356Z","ordinal":28,"type":"event_msg","payload":{"type":"task_complete",'
    '"last_agent_message":"All done."}}',
    '{"timestamp":"2026-12-01T11:18:56.357Z","type":"event_msg","payload":{"type":"token_co',  # being written
]) + "\n"


def test_usage_is_the_last_token_count_of_the_rollout(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    rollout = record_rollout(ctx, "01a23154-4478-7501-aa23-c201a61fc1e2")
    expected = Usage(input_tokens=3200, output_tokens=200, cache_read_tokens=800, cache_write_tokens=0,
                     cost_usd=None, source=str(rollout))
    adapter = CodexAdapter("codex", ("codex",), "codex")
    assert adapter.usage(ctx, {"transcript_path": str(rollout)}) == expected
    assert adapter.usage(ctx, {"session_id": "01a23154-4478-7501-aa23-c201a61fc1e2"}) == expected
    assert adapter.usage(ctx, {}) == expected  # the newest rollout started in the worktree
    assert adapter.usage(ctx, {"session_id": "another"}) is None
    assert adapter.usage(context(tmp_path, worktree=tmp_path / "other"), {}) is None


# --- dialogs -------------------------------------------------------------------------------------

class DialogCase(NamedTuple):
    test_id: str
    screen: str
    rule: str
    action: PromptAction
    keys: tuple[str, ...]


# As codex-cli 0.171.0 rendered them (tmux capture-pane -p, blank lines dropped).
DIALOG_CASES = [
    DialogCase("folder-trust", """
  Folder access
  /var/tmp/cx1/repo/.claude/worktrees/n1

  Note: You’re in a subdirectory of a Git project. Trusting will apply to the repository root:
  /var/tmp/cx1/repo

  Trust this folder? Codex can read, edit, and run files here, subject to your permission settings.

› 1. Trust and continue
  2. Back to Agent Command Center

  enter continue · esc back
""", "codex-folder-trust", PromptAction.ANSWER, ("Enter",)),
    DialogCase("hooks-review", """
  Hooks need review
  11 hooks are new or changed.
  Hooks can run outside the sandbox after you trust them.
› 1. Review hooks
  2. Trust all and continue
  3. Continue without trusting (hooks won't run)
  enter confirm · esc skip
""", "codex-hooks-review", PromptAction.ANSWER, ("Down", "Enter")),
    DialogCase("model-migration", """
  Meet GPT-6 Sol
  Our latest Sol is more intelligent and more efficient so your usage limits go further.
› 1. Try new model
  2. Use existing model
  enter/esc confirm · ^c quit
""", "codex-model-migration", PromptAction.ANSWER, ("Down", "Enter")),
    DialogCase("sign-in", """
  Welcome to Codex, OpenAI's command-line coding agent
  Choose how you want to use Codex.
> 1. Sign in with ChatGPT
     Usage included with Plus, Pro, Business, and Enterprise plans
  2. Sign in with Device Code
     Sign in from another device with a one-time code
  3. Sign in another way
     Use an API key or another provider
  Press enter to continue
""", "codex-sign-in", PromptAction.NEEDS_INPUT, ()),
]


@pytest.mark.parametrize("case", DIALOG_CASES, ids=[c.test_id for c in DIALOG_CASES])
def test_dialogs_choose_their_option_by_text(case: DialogCase) -> None:
    found = match_prompt(case.screen, rules=CodexAdapter("codex", ("codex",), "codex").dialogs())
    assert found is not None
    assert (found.rule, found.action, found.keys) == (case.rule, case.action, case.keys)


# --- the real CLI ----------------------------------------------------------------------------------

HOOK_RECORDER = """\
import os, sys, time
event = sys.argv[-1]
data = sys.stdin.read()
path = os.path.join(sys.argv[1], f"{time.monotonic_ns()}-{event}.json")
with open(path, "w") as handle:
    handle.write(data)
"""


def tmux(socket: str, *args: str) -> str:
    done = subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, check=True, timeout=30)
    return done.stdout


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(children.get(current, []))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def worktree_repo(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A real repository and a worktree of it at `.claude/worktrees/n1` on attractor/run1/n1."""
    root = make_repo(tmp_path / "repo")
    (root / ".git" / "info" / "exclude").write_text(".claude/\n")
    worktree = root / ".claude" / "worktrees" / "n1"
    git(root, "worktree", "add", "-q", "-b", "attractor/run1/n1", str(worktree))
    yield root, worktree


class Pane(NamedTuple):
    socket: str
    name: str
    pid: int

    def screen(self) -> str:
        return tmux(self.socket, "capture-pane", "-p", "-t", self.name)

    def codex_processes(self) -> set[int]:
        return {pid for pid in descendants(self.pid) if "codex" in command_of(pid)}

    def kill(self) -> None:
        """Kill the pane's session and wait until no codex process of it is left."""
        processes = self.codex_processes()
        tmux(self.socket, "kill-session", "-t", self.name)
        retry_until(lambda: not [pid for pid in processes if alive(pid)], 20, 0.1,
                    what=f"codex processes {sorted(processes)} to exit after the pane was killed")


def start_codex(socket: str, name: str, adapter: CodexAdapter, ctx: LaunchContext,
                extra_env: dict[str, str] | None = None) -> Pane:
    """`prepare` the launch and run it in a new tmux session, as the runner does."""
    launch = adapter.prepare(ctx)
    env_args = [arg for key, value in {**(extra_env or {}), **launch.env}.items() for arg in ("-e", f"{key}={value}")]
    tmux(socket, "-f", "/dev/null", "new-session", "-d", "-s", name, "-x", "200", "-y", "50",
         "-c", str(ctx.worktree), *env_args, "env", *[f"-u{var}" for var in launch.unset], *launch.argv)
    return Pane(socket, name, int(tmux(socket, "display-message", "-p", "-t", name, "#{pane_pid}").strip()))


def hook_events(hook_dir: Path) -> list[tuple[str, dict[str, object]]]:
    """(event, stdin JSON) of every hook call recorded so far, in order."""
    found = []
    for path in sorted(hook_dir.iterdir()):
        try:
            found.append((path.stem.split("-", 1)[1], json.loads(path.read_text())))
        except ValueError:
            continue  # being written
    return found


def recording_hooks(tmp_path: Path) -> tuple[str, Path]:
    """An `attractor` stand-in for the hooks only: records each hook's stdin in a directory."""
    hook_dir = tmp_path / "hooks"
    hook_dir.mkdir()
    recorder = tmp_path / "recorder.py"
    recorder.write_text(HOOK_RECORDER)
    return f"{sys.executable} {recorder} {hook_dir}", hook_dir


def test_real_codex_commits_in_a_worktree_without_a_dialog(tmp_path: Path, tmux_socket: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          worktree_repo: tuple[Path, Path]) -> None:
    binary = codex_binary()
    root, worktree = worktree_repo
    attractor, hook_dir = recording_hooks(tmp_path)
    playbook = NodePlaybook({"n1": [
        write("notes.txt", "written by codex\n"),
        bash("git add notes.txt && git commit -q --no-gpg-sign -m 'codex: add notes'"),
        bash("git log --oneline -1 > last-commit.txt"),
        say("Committed."),
    ]})
    adapter = CodexAdapter("codex", ("codex",), binary)
    with ModelServer(playbook) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.delenv("CODEX_HOME", raising=False)
        ctx = context(tmp_path, worktree=worktree, target=root, attractor=attractor)
        ctx.prompt_file.write_text("## Your task (node `n1`)\nAdd notes.txt and commit it.\nAttempt: 1\n")
        pane = start_codex(tmux_socket, "codex", adapter, ctx)

        def committed() -> bool:
            return "codex: add notes" in git(root, "log", "--format=%s", "attractor/run1/n1")

        try:
            retry_until(committed, 60, 0.2, what="the commit on the worktree's branch")
            retry_until(lambda: "Committed." in pane.screen(), 60, 0.2, what="the end of the turn")
        except AssertionError:
            print(pane.screen())
            raise
        assert (worktree / "last-commit.txt").read_text().strip().endswith("codex: add notes")
        screen = pane.screen()
        assert match_prompt(screen, rules=adapter.dialogs()) is None, screen
        assert match_prompt(screen) is None, screen
        # the hooks fired with Codex's JSON on stdin
        retry_until(lambda: "stop" in [name for name, _ in hook_events(hook_dir)], 30, 0.2, what="the stop hook")
        events = dict(hook_events(hook_dir))
        start = events["session-start"]
        assert start["hook_event_name"] == "SessionStart" and start["source"] == "startup"
        assert Path(str(start["cwd"])) == worktree.resolve()
        assert events["post-tool-use"]["tool_name"] == "Bash"
        stop = events["stop"]
        assert stop["last_assistant_message"] == "Committed." and stop["session_id"] == start["session_id"]
        # usage from the rollout the hooks named: one token count per answer of the main thread
        answers = len([r for r in server.recorded if r.conversation is not None and r.conversation.node() == "n1"
                       and not r.body.get("text", {}).get("format")])
        usage = adapter.usage(ctx, {"transcript_path": start["transcript_path"]})
        assert usage is not None
        assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == \
            (800 * answers, 200 * answers, 50 * answers)
        assert not [r.path for r in server.recorded if r.conversation is None and r.path != "/v1/models"]
        assert pane.codex_processes(), "no codex process found under the pane"
        pane.kill()


@pytest.mark.parametrize("by_id", [True, False], ids=["resume-by-session-id", "resume-last"])
def test_real_codex_resumes_its_session_after_the_pane_is_killed(tmp_path: Path, tmux_socket: str,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  worktree_repo: tuple[Path, Path],
                                                                  by_id: bool) -> None:
    binary = codex_binary()
    root, worktree = worktree_repo
    attractor, hook_dir = recording_hooks(tmp_path)
    playbook = NodePlaybook({"n1": [
        bash("echo one > one.txt"),
        say("First turn over."),
        bash("echo two > two.txt && git add -A && git commit -q --no-gpg-sign -m 'codex: after resume'"),
        say("Second turn over."),
    ]})
    adapter = CodexAdapter("codex", ("codex",), binary)
    with ModelServer(playbook) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.delenv("CODEX_HOME", raising=False)
        ctx = context(tmp_path, worktree=worktree, target=root, attractor=attractor)
        ctx.prompt_file.write_text("## Your task (node `n1`)\nTwo files.\nAttempt: 1\n")
        pane = start_codex(tmux_socket, "first", adapter, ctx)
        retry_until(lambda: "First turn over." in pane.screen(), 60, 0.2, what="the first turn")
        session_id = str(dict(hook_events(hook_dir))["session-start"]["session_id"])
        pane.kill()

        # a prompt without a new task header: the playbook carries on from the turns already taken
        ctx.prompt_file.write_text("Carry on where you stopped.\n")
        resumed = context(tmp_path, worktree=worktree, target=root, attractor=attractor, resume=True,
                          session_id=session_id if by_id else "")
        pane = start_codex(tmux_socket, "second", adapter, resumed)
        try:
            retry_until(lambda: "codex: after resume" in git(root, "log", "--format=%s", "attractor/run1/n1"), 60,
                        0.2, what="the commit of the resumed session")
        except AssertionError:
            print(pane.screen())
            raise
        starts = [data for name, data in hook_events(hook_dir) if name == "session-start"]
        assert [s["source"] for s in starts] == ["startup", "resume"]
        assert {s["session_id"] for s in starts} == {session_id}
        assert match_prompt(pane.screen(), rules=adapter.dialogs()) is None
        # the resumed request carried the first process's turns
        assert "echo one > one.txt" in json.dumps(server.conversations("n1")[-1].raw["input"])
        pane.kill()


def test_real_codex_hooks_reach_attractor_agent_hook(tmp_path: Path, tmux_socket: str,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     worktree_repo: tuple[Path, Path]) -> None:
    """The real `attractor agent-hook` records Codex's own session id and rollout (what a respawn
    resumes and what usage is read from) and hears the end of the turn."""
    from attractor.store import agent_sessions
    from attractor.store.statedir import StateDir

    binary = codex_binary()
    root, worktree = worktree_repo
    playbook = NodePlaybook({"n1": [bash("echo work > work.txt"), say("Finished.")]})
    adapter = CodexAdapter("codex", ("codex",), binary)
    state = StateDir(tmp_path / "state")
    agent_sessions.start(state, "orchestrator-n1", run_id="run1", node="n1", cli="codex",
                         new_session_id=lambda: "runner-made-up-id")
    with ModelServer(playbook) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.delenv("CODEX_HOME", raising=False)
        ctx = context(tmp_path, worktree=worktree, target=root, attractor=f"{sys.executable} -m attractor")
        ctx.prompt_file.write_text("## Your task (node `n1`)\nWork.\nAttempt: 1\n")
        env = {"ATTRACTOR_STATE_DIR": str(state.root), "ATTRACTOR_AGENT_ID": "orchestrator-n1",
               "ATTRACTOR_RUNNER_ID": "runner-n1", "ATTRACTOR_NODE": "n1", "ATTRACTOR_RUN_ID": "run1",
               "PYTHONPATH": os.pathsep.join(sys.path)}
        pane = start_codex(tmux_socket, "codex", adapter, ctx, env)

        def stopped() -> bool:
            last = agent_sessions.read(state, "orchestrator-n1").last_event or {}
            return last.get("event") == "stop"

        try:
            retry_until(stopped, 60, 0.2, what="the Stop hook to reach attractor agent-hook")
        except AssertionError:
            print(pane.screen())
            raise
        record = agent_sessions.read(state, "orchestrator-n1")
        assert record.session_id != "runner-made-up-id"
        assert Path(record.transcript_path).name.endswith(f"-{record.session_id}.jsonl")
        assert not (state.root / "logs" / "agent-hook.log").exists()
        usage = adapter.usage(ctx, record.to_json())
        assert usage is not None and usage.output_tokens > 0
        pane.kill()


def test_real_codex_leaves_no_command_running_after_the_pane_is_killed(tmp_path: Path, tmux_socket: str,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       worktree_repo: tuple[Path, Path]) -> None:
    """A command the agent started (still running in Codex's terminal session) ends with the pane."""
    binary = codex_binary()
    root, worktree = worktree_repo
    marker = f"sleep {4000 + os.getpid() % 1000}"
    playbook = NodePlaybook({"n1": [bash(f"{marker}; echo slept"), say("Waited.")]})
    adapter = CodexAdapter("codex", ("codex",), binary)
    with ModelServer(playbook) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.delenv("CODEX_HOME", raising=False)
        ctx = context(tmp_path, worktree=worktree, target=root)
        ctx.prompt_file.write_text("## Your task (node `n1`)\nWait.\nAttempt: 1\n")
        pane = start_codex(tmux_socket, "codex", adapter, ctx)

        def sleepers() -> set[int]:
            return {pid for pid in descendants(1) if command_of(pid).strip() == marker and alive(pid)}

        running = retry_until(sleepers, 60, 0.2, what="the agent's command to start")
        tmux(tmux_socket, "kill-session", "-t", pane.name)
        try:
            retry_until(lambda: not [pid for pid in running if alive(pid)], 20, 0.1,
                        what=f"the agent's command {sorted(running)} to end with the pane")
        finally:
            for pid in running:
                if alive(pid):
                    os.kill(pid, 9)


def test_real_codex_runs_a_pipeline_node_end_to_end(chain: tuple[Path, Path], tmux_socket: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`attractor run --agent codex`: the runner starts Codex through this adapter, Codex does the
    node's work against the model server, commits, reports, and the branch merges."""
    from tests.chain_helpers import checkpoint as read_checkpoint
    from tests.chain_helpers import codergen, git_show, launch, module_steps, pipeline_file, tool
    from tests.modelserver.core import script_playbook

    binary = codex_binary()
    target, state = chain
    script = module_steps("feature", 7) + "commit add feature\nreport"
    pipe = pipeline_file(target.parent, codergen("impl", script) + tool("check"), "  start -> impl -> check -> exit\n")
    with ModelServer(script_playbook({"impl": script})) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.delenv("CODEX_HOME", raising=False)
        monkeypatch.setenv("PATH", f"{Path(binary).parent}{os.pathsep}{os.environ['PATH']}")
        user_config = Path(os.environ["HOME"]) / ".codex" / "config.toml"  # the user's model choice
        user_config.parent.mkdir()
        user_config.write_text(f'model = "{MODEL}"\n')
        proc = launch(pipe, target, state, "--agent", "codex")
        try:
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, out + err
        assert server.conversations("impl"), "codex never asked the model server"
    assert list(state.glob("runs/*/codex-home/sessions/*/*/*/rollout-*.jsonl")), "no Codex rollout in the run"
    assert git_show(target, "main", "app/feature.py") == "VALUE = 7\n"
    assert read_checkpoint(state)["nodes"]["impl"]["state"] == "merged"
