"""The Aider adapter: argv, files, identity, usage and dialogs; and the real aider CLI in a real
tmux pane, in a git worktree, against the scripted model server (chat-completions format)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.agents import REPORTS_BY_EXIT, LaunchContext, resolve_agent
from attractor.agents.aider import (
    ADAPTER,
    Identity,
    history_files,
    identity_env,
    usage_from_analytics,
    usage_from_chat_history,
    user_identity,
)
from attractor.engines.prompts import PROMPTS, PromptAction, match_prompt
from attractor.errors import BadInputError
from tests.agent_bins import agent_binary
from tests.helpers import git, make_repo, retry_until
from tests.modelserver import chat
from tests.modelserver.core import Conversation, Message, ModelServer, NodePlaybook, bash, report, say, write

# Trimmed from a real run of aider 0.86.2 (the test below, with prices in the model metadata).
ANALYTICS_LOG = """\
{"event": "launched", "properties": {}, "user_id": "u", "time": 1796124104}
{"event": "message_send_starting", "properties": {}, "user_id": "u", "time": 1796124106}
{"event": "message_send", "properties": {"main_model": "openai/REDACTED", "edit_format": "whole", \
"prompt_tokens": 1234, "completion_tokens": 41, "total_tokens": 1275, "cost": 0.002796, "total_cost": 0.002796}, \
"user_id": "u", "time": 1796124106}
{"event": "message_send", "properties": {"main_model": "openai/REDACTED", "edit_format": "whole", \
"prompt_tokens": 1300, "completion_tokens": 9, "total_tokens": 1309, "cost": 0.002672, "total_cost": 0.005468}, \
"user_id": "u", "time": 1796124107}
{"event": "exit", "properties": {"reason": "Completed --message-file"}, "user_id": "u", "time": 1796124107}
{"event": "message_se"""
CHAT_HISTORY = """\
#### ## Your task (node `n1`)
app/a.py
```
A = 1
```
> Tokens: 1.2k sent, 41 received. Cost: $0.0028 message, $0.0028 session.
> Create new file? (Y)es/(N)o [Yes]: y
> Commit 2f72ba5 feat: add app/a.py, b.txt
> Tokens: 2.3k sent, 1.1k cache write, 500 cache hit, 9 received. Cost: $0.01 message, $0.02 session.
"""
METADATA = {"openai/scripted": {"max_tokens": 4096, "max_input_tokens": 128000, "max_output_tokens": 4096,
                                "input_cost_per_token": 0.000002, "output_cost_per_token": 0.000008,
                                "litellm_provider": "openai", "mode": "chat"}}


def aider_binary() -> Path:
    """The real aider (see tests/agent_bins.py): skips when it is missing, fails under CI=true."""
    return agent_binary("aider")


def context(tmp_path: Path, **more: object) -> LaunchContext:
    fields: dict[str, object] = {"node": "n1", "worktree": tmp_path / "wt", "prompt_file": tmp_path / "prompt.md",
                                 "attempt": 2, "agent_id": "orchestrator-n1", "runner_id": "runner-n1",
                                 "state_dir": tmp_path / "state", "agent_dir": tmp_path / "state" / "agents" / "o",
                                 "target_dir": tmp_path / "target", "model": "openai/scripted"}
    fields.update(more)
    return LaunchContext(**fields)  # type: ignore[arg-type]


# --- the adapter ------------------------------------------------------------------------------


def test_argv_files_and_env(tmp_path: Path) -> None:
    make_repo(tmp_path / "target")
    ctx = context(tmp_path)
    launch = ADAPTER.prepare(ctx)
    argv = launch.argv
    assert resolve_agent("aider") is ADAPTER and ADAPTER.reports == REPORTS_BY_EXIT
    assert argv[0] == "aider" and argv[-2:] == ["--message-file", str(ctx.prompt_file)]
    for flag in ("--yes-always", "--no-gitignore", "--no-check-update", "--no-analytics", "--no-show-release-notes",
                 "--no-show-model-warnings", "--no-detect-urls", "--no-attribute-author", "--no-attribute-committer"):
        assert flag in argv
    assert argv[argv.index("--map-tokens") + 1] == "0"
    assert argv[argv.index("--model") + 1] == "openai/scripted"
    files = history_files(ctx)
    for flag, key in (("--input-history-file", "input"), ("--chat-history-file", "chat"),
                      ("--llm-history-file", "llm"), ("--analytics-log", "analytics")):
        path = Path(argv[argv.index(flag) + 1])
        assert path == files[key] and path.parent == ctx.agent_dir
    assert (ctx.agent_dir or Path()).is_dir() and oct((ctx.agent_dir or Path()).stat().st_mode)[-3:] == "700"
    assert files["chat"].name == "aider-2.chat.history.md"  # one set per attempt
    assert launch.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    # conftest's identity comes from GIT_AUTHOR_*; git and aider's `git config --get` both see it
    assert launch.env["GIT_AUTHOR_NAME"] == "Test Author"
    assert launch.env["GIT_CONFIG_COUNT"] == "2" and launch.env["GIT_CONFIG_VALUE_1"] == "test@example.invalid"
    assert not any(key.endswith("API_KEY") for key in launch.env)  # keys never reach a command line


def test_no_model_given_uses_aiders_own_choice_or_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_repo(tmp_path / "target")
    for key in ("AIDER_MODEL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY", "DEEPSEEK_API_KEY",
                "GEMINI_API_KEY", "VERTEXAI_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(BadInputError) as info:
        ADAPTER.prepare(context(tmp_path, model=""))
    assert "OpenRouter login" in str(info.value)
    monkeypatch.setenv("AIDER_MODEL", "openai/from-env")
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/v1")
    launch = ADAPTER.prepare(context(tmp_path, model=""))
    assert "--model" not in launch.argv  # aider reads AIDER_MODEL itself
    assert launch.env["AIDER_MODEL"] == "openai/from-env" and launch.env["OPENAI_API_BASE"] == "http://127.0.0.1:9/v1"


class IdentityCase(NamedTuple):
    test_id: str
    env: dict[str, str]
    config: dict[str, str]
    expected: Identity | None


IDENTITY_CASES = [
    IdentityCase("env-wins", {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@x.invalid"},
                 {"user.name": "Grace", "user.email": "grace@x.invalid"}, Identity("Ada", "ada@x.invalid")),
    IdentityCase("repo-config", {}, {"user.name": "Grace", "user.email": "grace@x.invalid"},
                 Identity("Grace", "grace@x.invalid")),
    IdentityCase("half-and-half", {"GIT_AUTHOR_NAME": "Ada"}, {"user.email": "grace@x.invalid"},
                 Identity("Ada", "grace@x.invalid")),
    IdentityCase("none", {}, {}, None),
]


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=[c.test_id for c in IDENTITY_CASES])
def test_user_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: IdentityCase) -> None:
    repo = make_repo(tmp_path / "target")
    git(repo, "config", "--unset", "user.name")
    git(repo, "config", "--unset", "user.email")
    for key, value in case.config.items():
        git(repo, "config", key, value)
    assert user_identity(repo, case.env) == case.expected


def test_missing_identity_is_refused_not_left_to_aider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "target")
    git(repo, "config", "--unset", "user.name")
    git(repo, "config", "--unset", "user.email")
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL"):
        monkeypatch.delenv(key)
    with pytest.raises(BadInputError) as info:
        ADAPTER.prepare(context(tmp_path))
    assert "Your Name" in str(info.value)


def test_identity_env_keeps_the_users_config_entries() -> None:
    env = identity_env(Identity("Ada", "ada@x.invalid"),
                       {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.pager", "GIT_CONFIG_VALUE_0": "cat",
                        "GIT_COMMITTER_NAME": "Bot"})
    assert env["GIT_CONFIG_COUNT"] == "3" and env["GIT_CONFIG_KEY_0"] == "core.pager"
    assert (env["GIT_CONFIG_KEY_1"], env["GIT_CONFIG_VALUE_1"]) == ("user.name", "Ada")
    assert (env["GIT_CONFIG_KEY_2"], env["GIT_CONFIG_VALUE_2"]) == ("user.email", "ada@x.invalid")
    assert env["GIT_COMMITTER_NAME"] == "Bot" and env["GIT_COMMITTER_EMAIL"] == "ada@x.invalid"


def test_usage_from_the_analytics_log_and_the_chat_history(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    log.write_text(ANALYTICS_LOG)
    found = usage_from_analytics(log)
    assert found is not None and (found.input_tokens, found.output_tokens) == (2534, 50)
    assert found.cost_usd == pytest.approx(0.005468)
    history = tmp_path / "h.md"
    history.write_text(CHAT_HISTORY)
    rounded = usage_from_chat_history(history)
    assert rounded is not None
    assert (rounded.input_tokens, rounded.output_tokens, rounded.cache_write_tokens, rounded.cache_read_tokens) == \
        (3500, 50, 1100, 500)
    assert rounded.cost_usd == pytest.approx(0.0128)
    assert usage_from_analytics(tmp_path / "missing") is None


def test_usage_prefers_the_log_and_falls_back_to_the_history(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    files = history_files(ctx)
    files["chat"].parent.mkdir(parents=True)
    files["chat"].write_text(CHAT_HISTORY)
    fallback = ADAPTER.usage(ctx, {})
    assert fallback is not None and fallback.source == str(files["chat"])
    files["analytics"].write_text(ANALYTICS_LOG)
    exact = ADAPTER.usage(ctx, {})
    assert exact is not None and exact.input_tokens == 2534 and exact.source == str(files["analytics"])


class DialogCase(NamedTuple):
    test_id: str
    screen: str
    rule: str
    action: PromptAction
    keys: tuple[str, ...]


# Question lines as aider 0.86.2 prints them (seen in the pane and the chat history).
DIALOG_CASES = [
    DialogCase("gitignore", "You can skip this check with --no-gitignore\n"
               "Add .aider* to .gitignore (recommended)? (Y)es/(N)o [Yes]:", "aider-gitignore",
               PromptAction.ANSWER, ("n", "Enter")),
    DialogCase("create-file", "app/a.py\nCreate new file? (Y)es/(N)o [Yes]:", "aider-edit",
               PromptAction.ANSWER, ("y", "Enter")),
    DialogCase("analytics", "Allow collection of anonymous analytics to help improve aider? (Y)es/(N)o [Yes]:",
               "aider-analytics", PromptAction.ANSWER, ("n", "Enter")),
    DialogCase("docs-url", "https://aider.chat/docs/llms/warnings.html\n"
               "Open documentation url for more info? (Y)es/(N)o/(D)on't ask again [Yes]:", "aider-open-url",
               PromptAction.ANSWER, ("n", "Enter")),
    DialogCase("shell", "pytest -q\nRun shell command? (Y)es/(N)o/(D)on't ask again [Yes]:", "aider-ask",
               PromptAction.NEEDS_INPUT, ()),
]


@pytest.mark.parametrize("case", DIALOG_CASES, ids=[c.test_id for c in DIALOG_CASES])
def test_dialogs_choose_by_text(case: DialogCase) -> None:
    found = match_prompt(case.screen, rules=(*ADAPTER.dialogs(), *PROMPTS))
    assert found is not None and (found.rule, found.action, found.keys) == (case.rule, case.action, case.keys)


# --- the chat wire format -----------------------------------------------------------------------


def conversation(system: str, *messages: Message) -> Conversation:
    return Conversation("chat", "openai/scripted", system, messages, (), False, {"messages": []})


def test_chat_renders_every_write_in_one_message_and_carries_on_from_its_marker() -> None:
    playbook = NodePlaybook({"n1": [write("a.py", "A = 1\n"), say("ignored"), write("b", "no newline")]},
                            closing="All done.")
    prompt = Message("user", "## Your task (node `n1`)\nwork")
    example = Message("assistant", "Ok, I will:\n\nshow_greeting.py\n```\nx\n```")  # aider's few-shot example
    system = "path/to/filename.js\n````\n// entire file content ...\n// ... goes in between\n````\n"
    with ModelServer(playbook) as server:
        action, text = chat.plan_answer(server, conversation(system, Message("user", "x"), example, prompt))
        assert action.kind == "write"
        assert text == "a.py\n````\nA = 1\n````\n\nignored\n\n(scripted model: next step 2)\n"
        _, again = chat.plan_answer(server, conversation(system, prompt, Message("assistant", text),
                                                         Message("user", "I added these files")))
        assert again == "b\n````\nno newline\n````\n\nAll done.\n\n(scripted model: next step 4)\n"


def test_chat_commit_message_and_side_requests() -> None:
    diffs = ("# Diffs:\nAdded app/a.py\ndiff --git a/app/a.py b/app/a.py\nnew file mode 100644\n"
             "diff --git a/README.md b/README.md\nindex 1..2\n")
    assert chat.commit_message(diffs) == "feat: update app/a.py, README.md"
    assert chat.commit_message("# Diffs:\nAdded x.py\n") == "feat: add x.py"
    with ModelServer(NodePlaybook({})) as server:
        conv = conversation("You are an expert software engineer that generates concise, one-line Git commit "
                            "messages based on the provided diffs.",
                            Message("user", "## Your task (node `n1`)\n# Diffs:\nAdded x.py\n"))
        assert chat.plan_answer(server, conv)[1] == "feat: add x.py"


# --- the real CLI ---------------------------------------------------------------------------------


def test_real_aider_writes_commits_as_the_user_and_leaves_a_clean_worktree(
        tmp_path: Path, state_dir: Path, tmux_socket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from attractor.layers.launch import (
        agent_launch,
        build_prompt,
        launch_context,
        load_role,
        with_env_removed,
        write_launch_files,
    )
    from attractor.layers.layout import agent_env
    from attractor.store.statedir import StateDir
    from attractor.tmux import Tmux

    binary = aider_binary()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aider").symlink_to(binary)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    # the user's identity only in the environment, as on a machine whose HOME has no git identity
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Ada Lovelace")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "ada@example.invalid")
    monkeypatch.delenv("GIT_COMMITTER_NAME")
    monkeypatch.delenv("GIT_COMMITTER_EMAIL")
    target = make_repo(tmp_path / "target", {"README.md": "hello\n"})
    git(target, "config", "--unset", "user.name")
    git(target, "config", "--unset", "user.email")
    branch = "attractor/r1/n1"
    worktree = tmp_path / "wt"
    git(target, "worktree", "add", "-q", "-b", branch, str(worktree), "main")
    metadata = tmp_path / "model-metadata.json"
    metadata.write_text(json.dumps(METADATA))
    monkeypatch.setenv("AIDER_MODEL_METADATA_FILE", str(metadata))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-scripted")

    # the steps steps_from_script makes of `write app/a.py …`, `write docs/b.md …`, `commit …`, `report`
    steps = [write("app/a.py", "A = 1\n"), write("docs/b.md", "# B\n\nbee\n"),
             bash("git add -A && git commit -q -m 'add two files'"), report()]
    state = StateDir(state_dir)
    state.ensure()
    prompt = build_prompt(role=load_role("orchestrator"), node="n1", task="Write app/a.py and docs/b.md.",
                          worktree=worktree, branch=branch, agent_id="orchestrator-n1", runner_id="runner-n1")
    prompt_file, _ = write_launch_files(state, "r1", "n1", 1, prompt, None)
    with ModelServer(NodePlaybook({"n1": steps})) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url + "/v1")
        ctx = launch_context(state, node="n1", worktree=worktree, prompt_file=prompt_file, attempt=1,
                             script_file=None, run_id="r1", target_dir=target, branch=branch,
                             agent_dir=state.root / "agents" / "orchestrator-n1", model="openai/scripted")
        launch = agent_launch(ADAPTER, ctx)
        env = agent_env(state, run_id="r1", node="n1", tmux_socket=tmux_socket)
        env.update(launch.env)
        tmux = Tmux(tmux_socket)
        # the exit status is also written to a file: tmux 3.3a here sometimes never reaps the first
        # pane of a new server, leaving #{pane_dead_status} empty
        status_file = tmp_path / "exit-status"
        argv = ["sh", "-c", '"$@"; code=$?; echo $code > "$0"; exit $code', str(status_file),
                *with_env_removed(launch.argv, launch.unset)]
        pane = tmux.new_session("att-aider-n1", argv, cwd=worktree, env=env, keep_dead_panes=True)

        def exited() -> str:
            info = tmux.pane(pane.pane_id)
            done = info is not None and info.dead and status_file.is_file()
            return status_file.read_text().strip() if done else ""

        try:
            status = retry_until(exited, 120, 0.2, what="aider to exit")
        finally:
            screen = tmux.capture_pane(pane.pane_id, 400)
        assert status == "0", screen
        recorded = list(server.recorded)

    # one new commit on the branch with exactly the two files, authored and committed by the user
    assert git(worktree, "rev-list", "--count", "main..HEAD") == "1", screen
    assert git(worktree, "show", "--name-only", "--format=", "HEAD").split() == ["app/a.py", "docs/b.md"]
    assert (worktree / "docs" / "b.md").read_text() == "# B\n\nbee\n"
    assert git(worktree, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s") == \
        "Ada Lovelace <ada@example.invalid>|Ada Lovelace <ada@example.invalid>|feat: add app/a.py, docs/b.md"
    # nothing left behind: no .gitignore change, no .aider* files, no "Your Name" in the repo's config
    assert git(worktree, "status", "--porcelain", "--ignored") == ""
    assert not list(worktree.glob(".aider*")) and not (worktree / ".gitignore").exists()
    assert subprocess.run(["git", "-C", str(target), "config", "--get", "user.name"],
                          capture_output=True, check=False).returncode == 1
    # nothing waited at a prompt: every question aider wrote down was answered by --yes-always
    history = history_files(ctx)["chat"].read_text()
    questions = [line for line in history.splitlines() if "(Y)es/(N)o" in line]
    assert questions and all(line.rstrip().endswith((": y", ": n")) for line in questions), questions
    assert match_prompt(screen, rules=(*ADAPTER.dialogs(), *PROMPTS)) is None, screen
    # one edit request, one commit message request; no route missing, no price list downloaded
    assert [r.path for r in recorded] == ["/v1/chat/completions"] * 2, [r.path for r in recorded]
    assert "raw.githubusercontent.com" not in screen and "pypi" not in screen.lower()
    # usage: aider's own counts (it estimates a streamed answer with its tokenizer), exact in the
    # analytics log and rounded in the chat history; priced from the metadata file
    used = ADAPTER.usage(ctx, {})
    assert used is not None and used.source == str(history_files(ctx)["analytics"])
    assert used.input_tokens > 0 and used.output_tokens > 0
    rounded = usage_from_chat_history(history_files(ctx)["chat"])
    assert rounded is not None and abs(rounded.input_tokens - used.input_tokens) <= 50
    assert rounded.output_tokens == used.output_tokens
    assert used.cost_usd == pytest.approx(used.input_tokens * 0.000002 + used.output_tokens * 0.000008)
