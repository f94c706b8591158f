"""Detection: `classify` over observations, prompt recognition on realistic pane texts, reset-time
parsing, and `pid_alive` against real processes."""
# The pane texts keep the selection arrows the tools really draw.
# ruff: noqa: RUF001

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest

from attractor.engines.prompts import (
    DEFAULT_LIMIT_WAIT,
    RESET_MARGIN,
    PromptAction,
    keys_to_choose,
    match_prompt,
    parse_reset_time,
)
from attractor.engines.supervision import (
    AgentObservation,
    Health,
    PolicyConfig,
    classify,
)
from attractor.procs import pid_alive
from tests.helpers import retry_until

NOW = 1_800_000_000.0

TRUST_DIALOG = """\
╭──────────────────────────────────────────────────────────────────────╮
│                                                                      │
│ Do you trust the files in this folder?                               │
│                                                                      │
│ /tmp/work/.claude/worktrees/impl_auth                                │
│                                                                      │
│ Claude Code may read files in this folder. Reading untrusted files   │
│ may lead Claude Code to behave in unexpected ways.                   │
│                                                                      │
│ ❯ 1. Yes, proceed                                                    │
│   2. No, exit                                                        │
│                                                                      │
╰──────────────────────────────────────────────────────────────────────╯
   Enter to confirm · Esc to exit




"""

EDIT_PERMISSION = """\
● Update(app/auth.py)
  ⎿  Updated app/auth.py with 12 additions
╭──────────────────────────────────────────────────────────────────────╮
│ Edit file                                                            │
│ ╭──────────────────────────────────────────────────────────────────╮ │
│ │ 1  def login(user, password):                                     │ │
│ │ 2 +    return check(user, password)                               │ │
│ ╰──────────────────────────────────────────────────────────────────╯ │
│ Do you want to make this edit to auth.py?                            │
│ ❯ 1. Yes                                                             │
│   2. Yes, allow all edits during this session (shift+tab)            │
│   3. No, and tell Claude what to do differently (esc)                │
╰──────────────────────────────────────────────────────────────────────╯
"""

BASH_PERMISSION = """\
│ Bash command                                                         │
│                                                                      │
│   pytest -q tests/test_auth.py                                       │
│   Run the auth tests                                                 │
│                                                                      │
│ Do you want to proceed?                                              │
│ ❯ 1. Yes                                                             │
│   2. Yes, and don't ask again for pytest commands in /tmp/work       │
│   3. No, and tell Claude what to do differently (esc)                │
"""

CLAUDE_LIMIT_EPOCH = "> add tests for login\n\nClaude AI usage limit reached|1800007200\n"
CLAUDE_LIMIT_CLOCK = (
    "⎿  Claude usage limit reached. Your limit will reset at 3pm (America/New_York).\n\n"
    "     • /upgrade to increase your usage limit.\n"
)
CODEX_LIMIT = (
    "■ You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing) or try "
    "again in 1 hour 30 minutes.\n\n▌ Ask Codex to do anything\n"
)
API_429 = (
    "  ⎿  API Error (429 {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":"
    "\"Number of request tokens has exceeded your per-minute rate limit\"}}) · Retrying in 20 "
    "seconds… (attempt 2/10)\n"
)
CODEX_APPROVAL = """\
Would you like to run the following command?

  $ npm test

› 1. Yes, proceed (y)
  2. Yes, and don't ask again for this command (a)
  3. No, and tell Codex what to do differently (esc)

  Press enter to confirm or esc to cancel
"""
CODEX_OLD_APPROVAL = (
    "shell\n$ rm -rf build\n\nAllow command?\n\n  Yes (y)   No, provide feedback (n)\n"
)
AIDER_CONFIRM = "app/auth.py\nAdd file to the chat? (Y)es/(N)o/(D)on't ask again [Yes]: "
SSH_PASSPHRASE = "$ git push origin HEAD\nEnter passphrase for key '/root/.ssh/id_ed25519': "
GENERIC_YN = "Found 3 migrations.\nApply them now? (y/n) "
CODE_MENTIONING_LIMITS = """\
● Write(app/ratelimit.py)
  ⎿  Wrote 14 lines to app/ratelimit.py
     class RateLimiter:
         \"\"\"Token bucket; callers get HTTP 429 when empty.\"\"\"
         def rate_limit(self, key: str) -> bool:
             return self.bucket(key).take()
● Done. The rate limiter is in app/ratelimit.py.
"""
ANSWERED_YN = "Apply them now? (y/n) y\nApplied 3 migrations.\n$ "
SCROLLED_OFF = "Do you want to proceed?\n" + "".join(f"test line {i} ok\n" for i in range(40))
LIMIT_THEN_TRUST = CLAUDE_LIMIT_EPOCH + "\n$ claude\n" + TRUST_DIALOG
TRUST_THEN_LIMIT = TRUST_DIALOG + "> hi\n" + CLAUDE_LIMIT_EPOCH
ANSI_TRUST = (
    "\x1b[1mDo you trust the files in this folder?\x1b[0m\n\x1b[36m❯ 1. Yes, proceed\x1b[0m\n"
    "  2. No, exit\n"
)
# Claude Code 2.1.x: "No, exit" comes first and is highlighted; Enter alone would refuse.
TRUST_NO_FIRST = """\
 Accessing workspace:

 /tmp/work/.claude/worktrees/impl_auth

 Quick safety check: Is this a project you created or one you trust? (Like your own code, a well-known
 open source project, or work from your team). If not, take a moment to review what's in this folder first.

 ❯ 1. No, exit
   2. Yes, I trust this folder

 Enter to confirm · Esc to cancel
"""
TRUST_WITHOUT_YES = """\
 Do you trust the files in this folder?

 ❯ 1. No, exit
   2. Ask me later
"""


class PromptCase(NamedTuple):
    test_id: str
    text: str
    rule: str | None
    action: PromptAction | None = None
    keys: tuple[str, ...] = ()
    wait: float | None = None  # expected wait_until - NOW


PROMPT_CASES = [
    PromptCase("claude-trust", TRUST_DIALOG, "claude-trust", PromptAction.ANSWER, ("Enter",)),
    PromptCase("claude-trust-ansi", ANSI_TRUST, "claude-trust", PromptAction.ANSWER, ("Enter",)),
    PromptCase("claude-trust-no-first", TRUST_NO_FIRST, "claude-trust", PromptAction.ANSWER, ("Down", "Enter")),
    PromptCase("claude-trust-option-missing", TRUST_WITHOUT_YES, "claude-trust", PromptAction.NEEDS_INPUT),
    PromptCase("claude-edit", EDIT_PERMISSION, "claude-permission", PromptAction.NEEDS_INPUT),
    PromptCase("claude-bash", BASH_PERMISSION, "claude-permission", PromptAction.NEEDS_INPUT),
    PromptCase("claude-limit-epoch", CLAUDE_LIMIT_EPOCH, "usage-limit", PromptAction.WAIT,
               wait=7200 + RESET_MARGIN),
    PromptCase("codex-limit", CODEX_LIMIT, "usage-limit", PromptAction.WAIT,
               wait=5400 + RESET_MARGIN),
    PromptCase("api-429", API_429, "rate-limit", PromptAction.WAIT, wait=20 + RESET_MARGIN),
    PromptCase("codex-approval", CODEX_APPROVAL, "codex-approval", PromptAction.NEEDS_INPUT),
    PromptCase("codex-old-approval", CODEX_OLD_APPROVAL, "codex-approval", PromptAction.NEEDS_INPUT),
    PromptCase("aider", AIDER_CONFIRM, "aider-confirm", PromptAction.ANSWER, ("y", "Enter")),
    PromptCase("ssh-passphrase", SSH_PASSPHRASE, "credentials", PromptAction.ESCALATE),
    PromptCase("generic-yn", GENERIC_YN, "yes-no", PromptAction.ESCALATE),
    PromptCase("code-about-rate-limits", CODE_MENTIONING_LIMITS, None),
    PromptCase("answered-yn", ANSWERED_YN, None),
    PromptCase("scrolled-off", SCROLLED_OFF, None),
    PromptCase("empty", "\n\n\n", None),
    PromptCase("padded-screen", ANSI_TRUST + "\n" * 45, "claude-trust", PromptAction.ANSWER,
               ("Enter",)),
    PromptCase("latest-wins-trust", LIMIT_THEN_TRUST, "claude-trust", PromptAction.ANSWER,
               ("Enter",)),
    PromptCase("latest-wins-limit", TRUST_THEN_LIMIT, "usage-limit", PromptAction.WAIT,
               wait=7200 + RESET_MARGIN),
]


@pytest.mark.parametrize("case", PROMPT_CASES, ids=[c.test_id for c in PROMPT_CASES])
def test_match_prompt(case: PromptCase) -> None:
    found = match_prompt(case.text, NOW)
    if case.rule is None:
        assert found is None, found
        return
    assert found is not None
    assert (found.rule, found.action, found.keys) == (case.rule, case.action, case.keys)
    if case.wait is None:
        assert found.wait_until is None
    else:
        assert found.wait_until == pytest.approx(NOW + case.wait)
    assert found.line and found.line in case.text.replace("\x1b[1m", "").replace("\x1b[0m", "")


def test_limit_with_a_clock_time_waits_until_that_time_in_its_zone() -> None:
    found = match_prompt(CLAUDE_LIMIT_CLOCK, NOW)
    assert found is not None and found.action is PromptAction.WAIT
    zone = ZoneInfo("America/New_York")
    local = datetime.fromtimestamp(NOW, zone)
    reset = local.replace(hour=15, minute=0, second=0, microsecond=0)
    if reset <= local:
        reset += timedelta(days=1)
    assert found.wait_until == pytest.approx(reset.timestamp() + RESET_MARGIN)


def test_limit_without_a_reset_time_waits_the_default() -> None:
    found = match_prompt("Error: rate limit exceeded, slow down\n", NOW)
    assert found is not None and found.wait_until == NOW + DEFAULT_LIMIT_WAIT
    assert "no reset time" in found.reason


class ResetCase(NamedTuple):
    test_id: str
    text: str
    seconds: float | None


RESET_CASES = [
    ResetCase("epoch", "limit reached|1800000600", 600.0),
    ResetCase("minutes", "please try again in 15 minutes", 900.0),
    ResetCase("compound", "try again in 2 days 3 hours 5 minutes", 2 * 86400 + 3 * 3600 + 300),
    ResetCase("short-units", "retry after 1h 30m 10s", 5410.0),
    ResetCase("fraction", "Please try again in 6.5s.", 6.5),
    ResetCase("bare-number", "resets 3 soon", None),
    ResetCase("nothing", "usage limit reached", None),
]


@pytest.mark.parametrize("case", RESET_CASES, ids=[c.test_id for c in RESET_CASES])
def test_parse_reset_time(case: ResetCase) -> None:
    parsed = parse_reset_time(case.text, NOW)
    if case.seconds is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(NOW + case.seconds)


# --- classify -------------------------------------------------------------------------------

CFG = PolicyConfig()  # grace 5 s, heartbeat 5 s x 3, hung after 600 s


def obs(role: str = "orchestrator", age: float = 30.0, *, pid: int | None = 4242,
        pid_alive: bool = True, pane: bool = True, pane_dead: bool = False,
        heartbeat_age: float | None = None, activity_age: float | None = None,
        text: str | None = None) -> AgentObservation:
    return AgentObservation(
        agent_id=f"{role}-n", role=role, spawned_at=NOW - age, pid=pid, pid_alive=pid_alive,
        pane_present=pane, pane_dead=pane_dead,
        last_heartbeat=None if heartbeat_age is None else NOW - heartbeat_age,
        last_pane_activity=None if activity_age is None else NOW - activity_age,
        pane_text_tail=text,
    )


def starting(age: float, grace: float | None = None, *, progress_age: float | None = None,
             pid_alive: bool = True) -> AgentObservation:
    """A runner that has not sent its first heartbeat yet."""
    return dataclasses.replace(obs("runner", age, pid_alive=pid_alive), starting=True, startup_grace=grace,
                               last_progress=None if progress_age is None else NOW - progress_age)


class ClassifyCase(NamedTuple):
    test_id: str
    observation: AgentObservation
    health: Health
    reason: str


CLASSIFY_CASES = [
    ClassifyCase("starting", obs(age=2.0, activity_age=1.0), Health.STARTING, "grace"),
    ClassifyCase("starting-pid-and-pane-gone-too-early",
                 obs(age=0.5, pid_alive=False, pane=False), Health.STARTING, "within the 5s"),
    ClassifyCase("starting-only-pane-missing", obs(age=3.0, pane=False), Health.STARTING,
                 "pane missing"),
    ClassifyCase("starting-only-pid-gone", obs(age=3.0, pid_alive=False), Health.STARTING,
                 "not alive"),
    ClassifyCase("starting-unknown-pid-pane-gone", obs(age=3.0, pid=None, pane=False),
                 Health.STARTING, "grace"),
    ClassifyCase("starting-runner-no-heartbeat-yet", obs("runner", age=4.9), Health.STARTING,
                 "grace"),
    ClassifyCase("dead-in-grace-pid-and-pane-gone", obs(age=1.0, pid_alive=False, pane=False),
                 Health.DEAD, "in grace"),
    ClassifyCase("dead-in-grace-pane-dead", obs(age=2.0, pid_alive=False, pane_dead=True),
                 Health.DEAD, "pane dead"),
    ClassifyCase("dead-pid", obs(age=5.0, pid_alive=False), Health.DEAD, "pid 4242 not alive"),
    ClassifyCase("dead-pane-missing", obs(age=60.0, pane=False), Health.DEAD, "pane missing"),
    ClassifyCase("dead-pane-dead", obs(age=60.0, pane_dead=True), Health.DEAD, "pane dead"),
    ClassifyCase("dead-runner", obs("runner", pid_alive=False, heartbeat_age=0.1), Health.DEAD,
                 "not alive"),
    ClassifyCase("dead-beats-prompt", obs(pid_alive=False, text=TRUST_DIALOG), Health.DEAD,
                 "not alive"),
    ClassifyCase("alive-runner", obs("runner", heartbeat_age=15.0), Health.ALIVE, "heartbeat"),
    ClassifyCase("stale-runner", obs("runner", heartbeat_age=15.01), Health.STALE,
                 "last heartbeat 15.0s ago (> 15s)"),
    ClassifyCase("stale-guardian-never-beat", obs("guardian", age=15.5), Health.STALE,
                 "no heartbeat"),
    # still starting (no heartbeat of its own yet): judged by its start-up, never by a heartbeat
    ClassifyCase("starting-runner-past-the-heartbeat-limit", starting(40.0, 60.0), Health.STARTING, "grace 60s"),
    ClassifyCase("starting-runner-floor-without-measurements", starting(14.0), Health.STARTING, "grace 15s"),
    ClassifyCase("starting-runner-past-grace-making-progress", starting(90.0, 60.0, progress_age=2.0),
                 Health.STARTING, "making progress"),
    ClassifyCase("stale-start-without-progress", starting(90.0, 60.0, progress_age=31.0), Health.STALE,
                 "no progress for 31.0s"),
    ClassifyCase("stale-start-past-the-limit", starting(601.0, 60.0, progress_age=0.0), Health.STALE,
                 "still starting"),
    ClassifyCase("dead-while-starting", starting(40.0, pid_alive=False), Health.DEAD, "not alive"),
    ClassifyCase("runner-ignores-prompt-text", obs("runner", heartbeat_age=1.0, text=GENERIC_YN),
                 Health.ALIVE, "heartbeat"),
    ClassifyCase("alive-orchestrator", obs(activity_age=600.0), Health.ALIVE, "pane active"),
    ClassifyCase("hung-orchestrator", obs(age=1000.0, activity_age=600.5), Health.HUNG,
                 "no pane activity for 600s"),
    ClassifyCase("hung-never-active", obs(age=601.0), Health.HUNG, "no pane activity"),
    ClassifyCase("blocked-in-grace", obs(age=1.0, text=TRUST_DIALOG), Health.BLOCKED,
                 "trust"),
    ClassifyCase("blocked-rate-limit", obs(activity_age=3.0, text=API_429), Health.BLOCKED,
                 "rate limit"),
    ClassifyCase("blocked-beats-hung", obs(age=900.0, activity_age=800.0, text=BASH_PERMISSION),
                 Health.BLOCKED, "permission"),
    ClassifyCase("alive-with-harmless-text", obs(activity_age=1.0, text=CODE_MENTIONING_LIMITS),
                 Health.ALIVE, "pane active"),
]


@pytest.mark.parametrize("case", CLASSIFY_CASES, ids=[c.test_id for c in CLASSIFY_CASES])
def test_classify(case: ClassifyCase) -> None:
    report = classify(case.observation, NOW, CFG)
    assert report.health is case.health, report.reason
    assert case.reason in report.reason
    assert (report.prompt is not None) == (case.health is Health.BLOCKED)


def test_classify_blocked_carries_the_prompt() -> None:
    report = classify(obs(text=CODEX_APPROVAL), NOW, CFG)
    assert report.prompt is not None and report.prompt.action is PromptAction.NEEDS_INPUT
    assert report.prompt.options[0] == "Yes, proceed (y)"
    assert "npm test" in report.prompt.question


class MenuCase(NamedTuple):
    test_id: str
    text: str
    choose: str
    keys: tuple[str, ...] | None


MENU_CASES = [
    MenuCase("down-one", TRUST_NO_FIRST, "Yes, I trust this folder", ("Down", "Enter")),
    MenuCase("already-highlighted", TRUST_NO_FIRST, "No, exit", ("Enter",)),
    MenuCase("prefix", BASH_PERMISSION, "Yes, and don't ask again", ("Down", "Enter")),
    MenuCase("up-from-below", "  1. Yes\n  2. Maybe\n❯ 3. No\n", "Yes", ("Up", "Up", "Enter")),
    MenuCase("missing", TRUST_WITHOUT_YES, "Yes", None),
    MenuCase("letters", AIDER_CONFIRM, "Yes", ("y", "Enter")),
    MenuCase("letters-no", AIDER_CONFIRM, "No", ("n", "Enter")),
    MenuCase("no-menu", "just some output\n$ ", "Yes", None),
    MenuCase("numbers-not-a-menu", "Step 2. build\nStep 3. test\n", "Yes", None),
]


@pytest.mark.parametrize("case", MENU_CASES, ids=[c.test_id for c in MENU_CASES])
def test_keys_to_choose_reads_the_rendered_menu(case: MenuCase) -> None:
    assert keys_to_choose(case.text, case.choose) == case.keys


def test_classify_uses_the_configured_thresholds() -> None:
    config = PolicyConfig(startup_grace=0.0, heartbeat_interval=0.5, stale_after_intervals=2,
                          hung_after=5.0)
    assert classify(obs("runner", heartbeat_age=1.1), NOW, config).health is Health.STALE
    assert classify(obs(activity_age=5.1), NOW, config).health is Health.HUNG
    assert classify(obs(age=0.0, activity_age=0.0), NOW, config).health is Health.ALIVE


# --- real processes -------------------------------------------------------------------------


def test_pid_alive_and_classify_on_a_killed_sleep() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert pid_alive(proc.pid)
        spawned = time.time() - 10.0  # past the grace period
        observation = AgentObservation("runner-x", "runner", spawned, proc.pid,
                                       pid_alive(proc.pid), True, last_heartbeat=time.time())
        assert classify(observation, time.time(), CFG).health is Health.ALIVE
        os.kill(proc.pid, signal.SIGKILL)
        # our own child stays a zombie until reaped: still detected as dead
        retry_until(lambda: not pid_alive(proc.pid), 5.0, what="killed sleep seen dead")
        dead = dataclasses.replace(observation, pid_alive=pid_alive(proc.pid))
        report = classify(dead, time.time(), CFG)
        assert report.health is Health.DEAD and f"pid {proc.pid} not alive" in report.reason
    finally:
        proc.kill()
        # pid_alive did not reap it: the owner still gets the exit status
        assert proc.wait(5) == -signal.SIGKILL


def test_pid_alive_on_a_process_that_is_not_our_child() -> None:
    out = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True,
                         text=True, check=True, timeout=10)
    pid = int(out.stdout.strip())
    try:
        assert pid_alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
    retry_until(lambda: not pid_alive(pid), 5.0, what="orphaned sleep seen dead")


def test_pid_alive_on_a_zombie_whose_parent_does_not_reap() -> None:
    # sh starts a sleep, prints its pid, then becomes a `sleep` that never reaps it
    parent = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; exec sleep 60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert pid_alive(pid)
        # until sh has become the sleep, sh itself would reap the killed child
        retry_until(lambda: Path(f"/proc/{parent.pid}/comm").read_text().strip() == "sleep", 10,
                    what="sh to exec sleep")
        os.kill(pid, signal.SIGKILL)
        retry_until(lambda: not pid_alive(pid), 5.0, what="zombie grandchild seen dead")
        with open(f"/proc/{pid}/stat") as fh:  # still there, as a zombie
            assert fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        parent.kill()
        parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.parametrize("pid", [0, -1])
def test_pid_alive_rejects_non_pids(pid: int) -> None:
    assert not pid_alive(pid)


def test_pid_alive_on_ourselves() -> None:
    assert pid_alive(os.getpid())
