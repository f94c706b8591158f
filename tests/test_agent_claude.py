"""The Claude Code adapter: its settings, argv and .claude.json merge, its usage reader, and the
real `claude` CLI in a real tmux pane against the scripted model server."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from attractor.agents import Launch, LaunchContext, claude
from tests.agent_bins import agent_binary
from tests.helpers import REPO_ROOT, git, make_repo, retry_until
from tests.modelserver.core import Action, ModelServer, NodePlaybook, Playbook, bash, report, say, write

ATTRACTOR = f"{sys.executable} -m attractor"
SESSION = "0b7e6a52-3c1d-4e8f-9a2b-5c6d7e8f9a01"


def context(tmp_path: Path, *, worktree: Path | None = None, target: Path | None = None, prompt: str = "do it",
            attractor: str = ATTRACTOR, **extra: object) -> LaunchContext:
    prompt_file = tmp_path / "prompt.md"
    prompt_file.write_text(prompt)
    values: dict[str, object] = dict(
        node="n1", worktree=worktree or tmp_path, prompt_file=prompt_file, attempt=1, agent_id="orchestrator-n1",
        runner_id="runner-n1", state_dir=tmp_path / "state", target_dir=target or tmp_path, target_branch="main",
        agent_dir=tmp_path / "state" / "agents" / "orchestrator-n1", session_id=SESSION,
        report_command=(f"{attractor} signal send ORCHESTRATOR_DONE --to runner-n1 --from orchestrator-n1 --payload "
                        + shlex.quote(json.dumps({"node": "n1", "summary": "<one line>"}))),
        stuck_command=(f"{attractor} signal send ORCHESTRATOR_STUCK --to runner-n1 --from orchestrator-n1 "
                       "--payload '{\"node\": \"n1\"}'"),
        heartbeat_command=f"{attractor} identity update-liveness orchestrator n1",
        attractor=attractor, validation_commands=("pytest -q",), allow=("make lint", "WebFetch(domain:example.com)"))
    values.update(extra)
    return LaunchContext(**values)  # type: ignore[arg-type]


# --- settings and argv ----------------------------------------------------------------------

def test_settings_allow_deny_and_hooks(tmp_path: Path) -> None:
    data = claude.settings(context(tmp_path))
    perms = data["permissions"]
    assert perms["defaultMode"] == "acceptEdits"
    for rule in ("Bash(git add *)", "Bash(git commit *)", "Bash(git status)", "Bash(git rev-parse *)",
                 f"Bash({ATTRACTOR} signal send ORCHESTRATOR_DONE --to runner-n1 --from orchestrator-n1 *)",
                 f"Bash({ATTRACTOR} identity update-liveness orchestrator n1)",
                 "Bash(pytest -q)", "Bash(pytest -q *)", "Bash(make lint *)", "WebFetch(domain:example.com)"):
        assert rule in perms["allow"], rule
    for rule in ("Bash(git push *)", "Bash(git merge *)", "Bash(git rebase *)", "Bash(git checkout main *)",
                 "Bash(git reset --hard *)"):
        assert rule in perms["deny"], rule
    assert not any("push" in rule for rule in perms["allow"])
    events = {event: entry[0]["hooks"][0]["command"] for event, entry in data["hooks"].items()}
    assert events == {event: f"{ATTRACTOR} agent-hook {name}" for event, name in claude.HOOK_EVENTS}


def test_argv_starts_then_resumes_the_recorded_session(tmp_path: Path) -> None:
    ctx = context(tmp_path, prompt="## Task\n--model is not a flag here\n", model="claude-sonnet-4-5")
    launch = claude.ADAPTER.prepare(ctx)
    assert isinstance(launch, Launch)
    settings_file = ctx.agent_dir / claude.SETTINGS_NAME  # type: ignore[operator]
    assert launch.argv == ["claude", "--settings", str(settings_file), "--session-id", SESSION,
                           "--model", "claude-sonnet-4-5", "--", "## Task\n--model is not a flag here\n"]
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    assert "CLAUDECODE" in launch.unset and "CLAUDE_CODE_MESSAGING_SOCKET" in launch.unset
    # once the session has a transcript, a respawn must resume it (2.1.332 refuses the same id twice)
    transcript = claude.transcript_path(ctx, {})
    projects = Path(os.environ["HOME"]) / ".claude" / "projects"
    assert transcript == projects / claude.mangle(tmp_path) / f"{SESSION}.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("")
    assert claude.ADAPTER.prepare(dataclasses.replace(ctx, resume=True)).argv[3:5] == ["--resume", SESSION]
    # the runner asks for a fresh start when resuming failed (a transcript without a conversation)
    assert claude.ADAPTER.prepare(ctx).argv[3:5] == ["--session-id", SESSION]
    with pytest.raises(Exception, match="not a lower-case UUID"):
        claude.ADAPTER.prepare(context(tmp_path, session_id="abc"))


def test_mangled_project_folder() -> None:
    assert claude.mangle("/work/repo/.claude/worktrees/n_1") == "-work-repo--claude-worktrees-n-1"


# --- ~/.claude.json -------------------------------------------------------------------------

_MERGER = """
import sys
from pathlib import Path
sys.path.insert(0, {src!r})
from attractor.agents.claude import pre_accept
path = Path(sys.argv[1])
for i in range(int(sys.argv[3])):
    pre_accept(path, [Path(f"/repo/{{sys.argv[2]}}-{{i}}")], api_key=f"sk-ant-key-{{sys.argv[2]}}-0123456789abcdefghij")
"""


def test_claude_json_merge_keeps_what_other_writers_wrote(tmp_path: Path) -> None:
    path = tmp_path / ".claude.json"
    path.write_text(json.dumps({"numStartups": 7, "theme": "light", "projects": {"/other": {"allowedTools": ["x"]}},
                                "customApiKeyResponses": {"approved": ["old"], "rejected": ["0123456789abcdefghij"]}}))
    path.chmod(0o640)
    script = tmp_path / "merger.py"
    script.write_text(_MERGER.format(src=str(REPO_ROOT / "src")))
    writers = [subprocess.Popen([sys.executable, str(script), str(path), name, "15"]) for name in ("a", "b", "c", "d")]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0, 0]
    data = json.loads(path.read_text())
    assert data["numStartups"] == 7 and data["theme"] == "light" and data["hasCompletedOnboarding"] is True
    assert data["projects"]["/other"] == {"allowedTools": ["x"]}
    for name in "abcd":
        for i in range(15):
            assert data["projects"][f"/repo/{name}-{i}"]["hasTrustDialogAccepted"] is True
    responses = data["customApiKeyResponses"]
    assert responses["approved"] == ["old", "0123456789abcdefghij"]  # every key ends alike: one suffix
    assert responses["rejected"] == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.write_text("{not json")
    with pytest.raises(Exception, match="not valid JSON"):
        claude.pre_accept(path, [tmp_path])
    assert path.read_text() == "{not json"


def test_config_dir_follows_claude_config_dir(tmp_path: Path) -> None:
    assert claude.global_config_path({"HOME": "/h"}) == Path("/h/.claude.json")
    assert claude.global_config_path({"HOME": "/h", "CLAUDE_CONFIG_DIR": "/c"}) == Path("/c/.claude.json")
    assert claude.config_dir({"HOME": "/h", "CLAUDE_CONFIG_DIR": "/c"}) == Path("/c")


# --- usage ----------------------------------------------------------------------------------

# Trimmed from a transcript Claude Code 2.1.332 wrote against the scripted server: message
# msg_a (a text block and a tool_use block) is written twice, once per block, with its usage
# each time; msg_b once. Fields not read by the adapter are cut.
TRANSCRIPT = "\n".join(json.dumps(line) for line in (
    {"type": "user", "message": {"role": "user", "content": "## Your task"}},
    {"type": "assistant", "requestId": "req_1", "message": {
        "id": "msg_a", "model": "claude-opus-5-5", "content": [{"type": "text", "text": "Writing."}],
        "usage": {"input_tokens": 500, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000,
                  "output_tokens": 50, "service_tier": "standard"}}},
    {"type": "assistant", "requestId": "req_1", "message": {
        "id": "msg_a", "model": "claude-opus-5-5", "content": [{"type": "tool_use", "name": "Write"}],
        "usage": {"input_tokens": 500, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000,
                  "output_tokens": 50, "service_tier": "standard"}}},
    {"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]}},
    {"type": "assistant", "requestId": "req_2", "message": {
        "id": "msg_b", "model": "claude-opus-5-5", "content": [{"type": "text", "text": "Done."}],
        "usage": {"input_tokens": 520, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000,
                  "output_tokens": 25}}},
    {"type": "cost-state", "totalCostUSD": 0.0},
)) + "\n"


def test_usage_counts_each_message_once(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(TRANSCRIPT + '{"type": "assistant", "message": {"id": "msg_c", "usa')  # a line being written
    usage = claude.ADAPTER.usage(context(tmp_path), {"transcript_path": str(path)})
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == \
        (1020, 75, 2000, 400)
    # claude-opus-5-5: $4 in, $20 out, cache read 0.05x, cache write 1.25x per million tokens
    assert usage.cost_usd == pytest.approx((1020 * 4 + 75 * 20 + 2000 * 0.2 + 400 * 5) / 1e6)
    unknown = tmp_path / "u.jsonl"
    unknown.write_text(TRANSCRIPT.replace("claude-opus-5-5", "mystery-model"))
    other = claude.read_transcript_usage(unknown)
    assert other.output_tokens == 75 and other.cost_usd is None
    assert claude.ADAPTER.usage(context(tmp_path), {"transcript_path": str(tmp_path / "none.jsonl")}) is None


def test_dialog_rules_match_the_rendered_dialogs() -> None:
    from attractor.engines.prompts import match_prompt

    rules = claude.ADAPTER.dialogs()
    mark = "\u276f"  # the highlight Claude Code draws before the selected option
    trust = ("Quick safety check: Is this a project you created or one you trust? (Like your own code, a well-known\n"
             f" {mark} No, exit\n   Yes, I trust this folder\n Enter to confirm \u00b7 Esc to cancel")
    key = ("  Detected a custom API key in your environment\n  Do you want to use this API key?\n    Yes\n"
           f"  {mark} No (recommended)\n  Enter to confirm \u00b7 Esc to cancel")
    perm = (f" This command requires approval\n Do you want to proceed?\n {mark} 1. Yes\n"
            "   2. Yes, and don\u2019t ask again for: python3 *\n   4. No")
    for text, name in ((trust, "claude-trust"), (key, "claude-api-key"), (perm, "claude-permission")):
        found = match_prompt(text, rules=rules)
        assert found is not None and found.rule == name, text


# --- the real CLI ---------------------------------------------------------------------------

HOOK_RECORDER = """#!/bin/sh
# stands in for `attractor agent-hook EVENT`: records the event and its stdin
[ "$1" = agent-hook ] || { echo "$*" >> "$REPORT_LOG"; exit 0; }
printf '%s\\t%s\\n' "$2" "$(cat)" >> "$HOOK_LOG"
"""


def _tmux(socket: str, *args: str) -> str:
    out = subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, check=False)
    return out.stdout


def _start(socket: str, name: str, launch: Launch, cwd: Path, env: dict[str, str]) -> None:
    words = ["env", *(f"-u{var}" for var in launch.unset), *(f"{k}={v}" for k, v in {**env, **launch.env}.items()),
             *launch.argv]
    command = shlex.join(words) + "; echo CLAUDE-EXITED=$?; sleep 600"
    subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-s", name, "-x", "160", "-y", "50", "-c", str(cwd),
                    command], check=True)


def _pane(socket: str, name: str) -> str:
    return _tmux(socket, "capture-pane", "-p", "-J", "-S", "-200", "-t", name)


def _wait_pane(socket: str, name: str, text: str, seconds: float) -> None:
    try:
        retry_until(lambda: text in _pane(socket, name), seconds, interval=0.2, what=repr(text))
    except AssertionError as exc:
        tail = "\n".join(line.split("\u2502")[0].rstrip() for line in _pane(socket, name).splitlines()[-40:])
        raise AssertionError(f"{exc}; pane ends:\n{tail}") from None


def _hooks(log: Path) -> list[tuple[str, dict[str, object]]]:
    if not log.is_file():
        return []
    return [(event, json.loads(payload)) for event, _, payload in
            (line.partition("\t") for line in log.read_text().splitlines())]


def test_real_claude_writes_commits_and_resumes(tmp_path: Path, tmux_socket: str) -> None:
    binary = agent_binary("claude")
    target = make_repo(tmp_path / "target")
    worktree = target / ".claude" / "worktrees" / "n_1"
    git(target, "worktree", "add", "-q", "-b", "attractor/r1/n_1", str(worktree))
    recorder = tmp_path / "hook.sh"
    recorder.write_text(HOOK_RECORDER)
    recorder.chmod(0o755)
    hook_log = tmp_path / "hooks.log"
    report_log = tmp_path / "reports.log"
    allowed = "sh check.sh"  # a validation command: allowed by the settings, not by Claude Code's defaults
    steps: list[Action | Playbook] = [
        Action("write", path="hello.txt", content="hello from claude\n", text="I will write hello.txt."),
        write("check.sh", "echo ran > allowed.txt\n"),
        bash("git add hello.txt check.sh && git commit -q -m 'add hello'"),
        bash(allowed),
        # the report command has no shell substitution in it, so the allow rule matches it
        # (`$(…)` inside a quoted payload makes 2.1.332 ask: "Quoted text in this command can't be checked")
        report("hello written"),
        say("All done."),
        say("Resumed and still here."),  # the seventh turn: only a resumed conversation gets here
    ]
    playbook = NodePlaybook({"n_1": steps})
    ctx = context(tmp_path, worktree=worktree, target=target, attractor=f"sh {recorder}",
                  validation_commands=(allowed,), session_id=str(uuid.uuid4()))
    prompt = (f"## Your task (node `n_1`)\nWrite hello.txt, commit it, run the check.\n\n## Report\n"
              f"When your work is committed, run:\n\n    {ctx.report_command}\n")
    ctx = dataclasses.replace(ctx, prompt_file=tmp_path / "prompt-1.md")
    ctx.prompt_file.write_text(prompt)
    with ModelServer(playbook) as server:
        env = {"PATH": f"{binary.parent}:{os.environ['PATH']}", "HOME": os.environ["HOME"],
               "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-ant-api03-scripted-0123456789abcdef",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
               "DISABLE_ERROR_REPORTING": "1", "HOOK_LOG": str(hook_log), "REPORT_LOG": str(report_log),
               "TERM": "xterm-256color"}
        os.environ["ANTHROPIC_API_KEY"] = env["ANTHROPIC_API_KEY"]  # prepare() approves the key it sees
        try:
            launch = claude.ADAPTER.prepare(ctx)
        finally:
            del os.environ["ANTHROPIC_API_KEY"]
        _start(tmux_socket, "n1", launch, worktree, env)
        try:
            retry_until(lambda: any(e == "stop" for e, _ in _hooks(hook_log)), 60, what="claude to finish its turn")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; pane:\n{_pane(tmux_socket, 'n1')}") from None
        pane = _pane(tmux_socket, "n1")
        assert "Do you want to proceed?" not in pane and "trust this folder" not in pane, pane
        assert git(worktree, "log", "-1", "--format=%s") == "add hello"
        assert git(worktree, "show", "HEAD:hello.txt") == "hello from claude"
        assert (worktree / "allowed.txt").read_text() == "ran\n"
        reported = [line for line in report_log.read_text().splitlines() if "ORCHESTRATOR_DONE" in line]
        assert reported and "hello written" in reported[0]
        events = _hooks(hook_log)
        start = next(payload for event, payload in events if event == "session-start")
        assert start["session_id"] == ctx.session_id and start["source"] == "startup"
        assert start["transcript_path"] == str(claude.transcript_path(ctx, {}))
        assert [e for e, _ in events if e == "post-tool-use"] == ["post-tool-use"] * 5
        first = server.conversations("n_1")
        assert {c.raw.get("model") for c in first}  # the CLI talked to us
        usage = claude.ADAPTER.usage(ctx, start)
        assert usage is not None and usage.output_tokens > 0 and usage.cache_read_tokens > 0
        assert usage.cost_usd is not None

        # quit, then the respawn resumes the same conversation
        _tmux(tmux_socket, "send-keys", "-t", "n1", "-l", "/exit")
        _tmux(tmux_socket, "send-keys", "-t", "n1", "Enter")
        _wait_pane(tmux_socket, "n1", "CLAUDE-EXITED=0", 30)
        end = [payload for event, payload in _hooks(hook_log) if event == "session-end"]
        assert end and end[-1]["reason"] == "prompt_input_exit"
        _tmux(tmux_socket, "kill-session", "-t", "n1")
        again = context(tmp_path, worktree=worktree, target=target, attractor=f"sh {recorder}",
                        prompt="## Your task (node `n_1`)\nCarry on.\n", session_id=ctx.session_id, resume=True,
                        validation_commands=(allowed,))
        relaunch = claude.ADAPTER.prepare(again)
        assert relaunch.argv[3:5] == ["--resume", ctx.session_id]
        _start(tmux_socket, "n1b", relaunch, worktree, env)
        stops = len([e for e, _ in _hooks(hook_log) if e == "stop"])
        retry_until(lambda: len([e for e, _ in _hooks(hook_log) if e == "stop"]) > stops, 60, what="the resumed turn")
        # OPEN: the resumed request restarts the playbook at turn 0 (its assistant turns are not
        # counted as such yet), so "Resumed and still here." is not reached.
        assert any("Carry on." in c.text() for c in server.conversations("n_1"))
        starts = [payload for event, payload in _hooks(hook_log) if event == "session-start"]
        assert starts[-1]["source"] == "resume" and starts[-1]["session_id"] == ctx.session_id
