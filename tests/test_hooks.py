"""Hooks: library, the wisdom block, `attractor hook …` in-process and as real processes, and
the `scripts/hook_manager.py` shim."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from attractor.cli import main
from attractor.errors import CorruptStateError, NotFoundError, TransitionError, UsageError
from attractor.states import HookPhase as P
from attractor.store import hooks
from attractor.store.statedir import StateDir
from tests.helpers import run_cli, run_script
from tests.test_identities import snapshot


def walk(state: StateDir, *phases: P, name: str = "impl_auth") -> hooks.Hook:
    hook = hooks.read_hook(state, "runner", name)
    for phase in phases:
        hook = hooks.update_phase(state, "runner", name, phase, note=f"to {phase.value}")
    return hook


# --------------------------------------------------------------------------- library


def test_create_and_keep_existing(state: StateDir) -> None:
    hook = hooks.create_hook(state, "runner", "impl_auth", node="impl_auth", instructions="go")
    path = state.hooks / "runner-impl_auth.json"
    assert (hook.phase, hook.attempts, hook.node) == (P.SPAWNED, 0, "impl_auth")
    assert hook.last_commit is None
    assert hook.history == ({"at": hook.created_at, "from": None, "to": "spawned",
                             "note": "created", "commit": None},)
    assert path.stat().st_mode & 0o777 == 0o600
    walk(state, P.EXECUTING)
    before = path.read_bytes()
    again = hooks.create_hook(state, "runner", "impl_auth", node="other", instructions="new")
    assert again.phase is P.EXECUTING and again.resumption_instructions == "go"
    assert path.read_bytes() == before
    assert hooks.Hook.from_json(json.loads(before)) == again


def test_phases_history_attempts_and_commits(state: StateDir) -> None:
    hooks.create_hook(state, "runner", "impl_auth")
    walk(state, P.EXECUTING)
    done = hooks.update_phase(state, "runner", "impl_auth", "impl_complete", note="tests pass",
                              commit="ABCDEF1")
    assert done.last_commit == "abcdef1" and done.history[-1]["commit"] == "abcdef1"
    walk(state, P.VALIDATING)
    back = hooks.update_phase(state, "runner", "impl_auth", P.EXECUTING, note="2 tests failed")
    assert back.attempts == 2 and back.last_commit == "abcdef1"
    walk(state, P.IMPL_COMPLETE, P.MERGE_READY)
    merged = hooks.mark_merged(state, "runner", "impl_auth", "1234567890abcdef")
    assert merged.phase is P.MERGED and merged.last_commit == "1234567890abcdef"
    assert [h["to"] for h in merged.history] == [
        "spawned", "executing", "impl_complete", "validating", "executing", "impl_complete",
        "merge_ready", "merged",
    ]
    assert merged.attempts == sum(1 for h in merged.history if h["to"] == "executing")


def test_same_phase_is_a_no_op(state: StateDir) -> None:
    hooks.create_hook(state, "runner", "a")
    walk(state, P.EXECUTING, name="a")
    path = state.hooks / "runner-a.json"
    before = path.read_bytes()
    assert hooks.update_phase(state, "runner", "a", "executing", note="again").attempts == 1
    assert path.read_bytes() == before
    # a new commit reported with the same phase is still worth keeping
    kept = hooks.update_phase(state, "runner", "a", "executing", commit="abcd")
    assert kept.last_commit == "abcd" and len(kept.history) == 2


def test_illegal_moves_name_current_and_allowed(state: StateDir) -> None:
    hooks.create_hook(state, "runner", "a")
    before = snapshot(state.root)
    with pytest.raises(TransitionError) as info:
        hooks.update_phase(state, "runner", "a", "merged")
    assert str(info.value) == ("hook runner-a: illegal transition spawned -> merged; "
                               "allowed from spawned: executing, failed")
    with pytest.raises(TransitionError):
        hooks.mark_merged(state, "runner", "a", "abcd")
    with pytest.raises(Exception, match="unknown phase 'done'"):
        hooks.update_phase(state, "runner", "a", "done")
    assert snapshot(state.root) == before
    walk(state, P.EXECUTING, P.IMPL_COMPLETE, P.MERGE_READY, P.MERGED, name="a")
    with pytest.raises(TransitionError, match=r"allowed from merged: none \(final state\)"):
        hooks.update_phase(state, "runner", "a", "executing")


def test_bad_values_change_nothing(state: StateDir) -> None:
    hooks.create_hook(state, "runner", "a")
    before = snapshot(state.root)
    for call in (
        lambda: hooks.update_phase(state, "runner", "a", "executing", commit="xyz"),
        lambda: hooks.update_phase(state, "runner", "a", "executing", commit="ab"),
        lambda: hooks.update_phase(state, "runner", "a", "executing", note="x\x00y"),
        lambda: hooks.update_resumption_instructions(state, "runner", "a", "x" * 70000),
        lambda: hooks.create_hook(state, "runner", "b", node="a/b"),
    ):
        with pytest.raises(UsageError):
            call()
    assert snapshot(state.root) == before


def test_missing_hook(state_dir: Path) -> None:
    state = StateDir(state_dir)  # not created: looking for a hook must not create it
    with pytest.raises(NotFoundError, match="hook create runner ghost"):
        hooks.read_hook(state, "runner", "ghost")
    with pytest.raises(NotFoundError):
        hooks.update_phase(state, "runner", "ghost", "executing")
    assert not state.root.exists()
    assert hooks.list_hooks(state) == []


def test_find_hook_is_none_for_a_missing_hook_or_another_runs(state: StateDir) -> None:
    assert hooks.find_hook(state, "runner", "a") is None
    made = hooks.create_hook(state, "runner", "a", run_id="r1")
    assert hooks.find_hook(state, "runner", "a") == made
    assert hooks.find_hook(state, "runner", "a", run_id="r1") == made
    assert hooks.find_hook(state, "runner", "a", run_id="r2") is None
    with pytest.raises(NotFoundError, match="belongs to run r1"):
        hooks.read_hook(state, "runner", "a", run_id="r2")


def test_resumption_instructions(state: StateDir) -> None:
    hooks.create_hook(state, "orchestrator", "n")
    hook = hooks.update_resumption_instructions(state, "orchestrator", "n", "fix test_login\n")
    assert hook.resumption_instructions == "fix test_login\n"
    assert hooks.read_hook(state, "orchestrator", "n") == hook


def test_corrupt_hooks_are_moved_aside(state: StateDir) -> None:
    hooks.create_hook(state, "runner", "good")
    good = (state.hooks / "runner-good.json").read_text()
    bad = {
        state.hooks / "runner-cut.json": good[:40],
        state.hooks / "runner-phase.json": good.replace('"phase": "spawned"', '"phase": "zzz"'),
        state.hooks / "runner-other.json": good,
        state.hooks / "runner-attempts.json": good.replace('"attempts": 0', '"attempts": -1'),
    }
    for path, text in bad.items():
        path.write_text(text)
    problems: list[CorruptStateError] = []
    assert [h.agent_id for h in hooks.list_hooks(state, problems)] == ["runner-good"]
    assert sorted(p.path for p in problems) == sorted(bad)
    assert all(p.moved_to is not None and p.moved_to.exists() for p in problems)
    (state.hooks / "runner-good.json").write_text("{}")
    with pytest.raises(CorruptStateError, match=r"runner-good\.json"):
        hooks.read_hook(state, "runner", "good")


# --------------------------------------------------------------------------- wisdom block


def fixed_hook(phase: str, history: list[tuple[str | None, str, str, str | None]],
               commit: str | None = "1a2b3c4", instructions: str = "", attempts: int = 1,
               ) -> hooks.Hook:
    entries: list[dict[str, Any]] = [
        {"at": f"2026-01-01T00:00:0{i}.000000Z", "from": f, "to": t, "note": n, "commit": c}
        for i, (f, t, n, c) in enumerate(history)
    ]
    return hooks.Hook.from_json({
        "schema": 1, "role": "orchestrator", "name": "impl_auth",
        "agent_id": "orchestrator-impl_auth", "node": "impl_auth", "phase": phase,
        "history": entries, "resumption_instructions": instructions, "last_commit": commit,
        "attempts": attempts, "updated_at": "2026-01-01T00:00:09.000000Z",
        "created_at": "2026-01-01T00:00:00.000000Z",
    })


def test_wisdom_block_after_a_failed_validation() -> None:
    hook = fixed_hook("executing", [
        (None, "spawned", "created", None),
        ("spawned", "executing", "", None),
        ("executing", "impl_complete", "login done", "1a2b3c4"),
        ("impl_complete", "validating", "", None),
        ("validating", "executing", "pytest: 2 failed: test_login_rejects_bad_password", None),
    ], instructions="Fix the two failing tests in tests/test_auth.py.", attempts=2)
    block = hooks.build_wisdom_prompt_block(hook)
    assert block == hooks.build_wisdom_prompt_block(hook)  # deterministic
    lines = block.splitlines()
    assert lines[0] == ("## Resuming orchestrator-impl_auth on node impl_auth: "
                        "read this before anything else")
    assert "- Last phase reached: executing (since 2026-01-01T00:00:04.000000Z)" in lines
    assert ("- Phases passed: spawned -> executing -> impl_complete -> validating -> executing"
            in lines)
    assert "- Last known commit: 1a2b3c4" in lines
    assert "- Attempts at executing so far: 2" in lines
    assert ("- Sent back to work from validating: pytest: 2 failed: "
            "test_login_rejects_bad_password") in lines
    assert "Do not start over" in block and "git status" in block
    instructions = lines.index("### Resumption instructions")
    assert lines[instructions + 1] == "Fix the two failing tests in tests/test_auth.py."
    assert "- 2026-01-01T00:00:02.000000Z executing -> impl_complete: commit 1a2b3c4; login done" \
        in lines
    assert lines[-1] == "## End of resumption notes; your task follows."


class PhaseCase(NamedTuple):
    test_id: str
    phase: str
    says: str


PHASE_CASES = [
    PhaseCase("spawned", "spawned", "Start the task from the beginning."),
    PhaseCase("executing", "executing", "finish the remaining work"),
    PhaseCase("impl_complete", "impl_complete", "Do not re-implement"),
    PhaseCase("validating", "validating", "validation runs"),
    PhaseCase("merge_ready", "merge_ready", "queued for merging"),
    PhaseCase("merged", "merged", "This node is finished."),
    PhaseCase("failed", "failed", "Do not repeat the approach that failed."),
]


@pytest.mark.parametrize("case", PHASE_CASES, ids=[c.test_id for c in PHASE_CASES])
def test_wisdom_block_for_every_phase(case: PhaseCase) -> None:
    hook = fixed_hook(case.phase, [(None, "spawned", "created", None),
                                   ("spawned", case.phase, "", None)])
    block = hooks.build_wisdom_prompt_block(hook)
    assert case.says in block
    for heading in ("### Already done", "### Skip", "### Do now", "### Resumption instructions"):
        assert heading in block
    assert "(none given)" in block


def test_wisdom_block_keeps_long_notes_short() -> None:
    history = [(None, "spawned", "created", None)] + [
        ("spawned" if i == 0 else "failed", "executing" if i % 2 == 0 else "failed",
         "gate output " + "x" * 5000, None) for i in range(20)
    ]
    block = hooks.build_wisdom_prompt_block(fixed_hook("failed", history, commit=None))
    assert "...(truncated)" in block and len(block) < 12000
    assert "(last 8 of 21)" in block
    assert "- Last known commit: none recorded" in block
    assert "git show" not in block


# --------------------------------------------------------------------------- CLI in-process


def test_cli_lifecycle(state_dir: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    sd = ["--state-dir", str(state_dir)]
    assert main(["hook", "create", "runner", "impl_auth", "--node", "impl_auth", *sd]) == 0
    assert capsys.readouterr().out == "hook runner-impl_auth: spawned\n"
    assert main(["hook", "update-phase", "runner", "impl_auth", "executing", "--note", "go",
                 *sd]) == 0
    assert main(["hook", "update-phase", "runner", "impl_auth", "impl_complete", "--commit",
                 "abc1234", *sd]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "hook runner-impl_auth: impl_complete, commit abc1234"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\nline two\n"))
    assert main(["hook", "update-resumption", "runner", "impl_auth", "-", *sd]) == 0
    assert capsys.readouterr().out == (
        "instructions set for runner-impl_auth: impl_complete, commit abc1234\n"
    )
    assert main(["hook", "read", "runner", "impl_auth", "--json", *sd]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["resumption_instructions"] == "from stdin\nline two\n"
    assert data["phase"] == "impl_complete" and data["schema"] == 1
    assert main(["hook", "update-phase", "runner", "impl_auth", "merge_ready", *sd]) == 0
    assert main(["hook", "mark-merged", "runner", "impl_auth", "--commit", "def5678", *sd]) == 0
    capsys.readouterr()
    assert main(["hook", "read", "runner", "impl_auth", *sd]) == 0
    human = capsys.readouterr().out
    assert "merged" in human and "def5678" in human and "NOTE" in human
    assert main(["hook", "wisdom", "runner", "impl_auth", *sd]) == 0
    assert "Last phase reached: merged" in capsys.readouterr().out
    assert main(["hook", "list", "--json", *sd]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["schema"] == 1 and listing["problems"] == []
    assert [h["phase"] for h in listing["hooks"]] == ["merged"]
    assert main(["hook", "list", *sd]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == [
        "AGENT", "NODE", "PHASE", "ATTEMPTS", "LAST", "COMMIT", "UPDATED"]


def test_cli_list_reports_corrupt_files(state: StateDir,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    hooks.create_hook(state, "runner", "a")
    (state.hooks / "runner-b.json").write_text('{"schema": 1')
    assert main(["hook", "list", "--json", "--state-dir", str(state.root)]) == 0
    captured = capsys.readouterr()
    assert [p["path"] for p in json.loads(captured.out)["problems"]] == [
        str(state.hooks / "runner-b.json")]
    assert captured.err.startswith(f"warning: corrupt state file {state.hooks / 'runner-b.json'}")


class BadCase(NamedTuple):
    test_id: str
    argv: list[str]
    expect: str


BAD_CASES = [
    BadCase("slash", ["create", "runner", "a/b"], "invalid name 'a/b'"),
    BadCase("dotdot", ["read", "runner", ".."], "invalid name '..'"),
    BadCase("space", ["create", "runner", "a b"], "invalid name"),
    BadCase("quote", ["update-phase", "runner", "a'b", "executing"], "invalid name"),
    BadCase("semicolon", ["create", "runner", "x;kill-server"], "invalid name"),
    BadCase("tmux-format", ["create", "runner", "#{session_name}"], "invalid name"),
    BadCase("node-meta", ["create", "runner", "b", "--node", "n;rm"], "invalid node"),
    BadCase("unknown-role", ["create", "boss", "a"], "unknown role 'boss'"),
    BadCase("unknown-phase", ["update-phase", "runner", "existing", "finished"],
            "unknown phase 'finished'; expected one of: spawned, executing"),
    BadCase("illegal-transition", ["update-phase", "runner", "existing", "merge_ready"],
            "illegal transition spawned -> merge_ready; allowed from spawned: executing, failed"),
    BadCase("mark-merged-early", ["mark-merged", "runner", "existing", "--commit", "abcd"],
            "spawned -> merged"),
    BadCase("mark-merged-no-commit", ["mark-merged", "runner", "existing"], "--commit"),
    BadCase("bad-commit", ["update-phase", "runner", "existing", "executing", "--commit", "HEAD"],
            "not a commit id"),
    BadCase("missing", ["update-phase", "runner", "ghost", "executing"],
            "hook 'runner-ghost' not found"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.test_id for c in BAD_CASES])
def test_cli_bad_input(case: BadCase, state: StateDir, capsys: pytest.CaptureFixture[str]) -> None:
    hooks.create_hook(state, "runner", "existing")
    before = snapshot(state.root)
    code = main(["hook", *case.argv, "--state-dir", str(state.root)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and case.expect in lines[0], lines
    assert snapshot(state.root) == before


# --------------------------------------------------------------------------- real processes


def test_subprocess_cli_and_shim(state_dir: Path) -> None:
    sd = ["--state-dir", str(state_dir)]
    assert run_script("hook_manager.py", ["--create", "runner", "impl_auth", *sd]).returncode == 0
    moved = run_cli(["hook", "update-phase", "runner", "impl_auth", "executing", *sd])
    assert moved.returncode == 0 and moved.stdout == "hook runner-impl_auth: executing\n"
    shim = run_script("hook_manager.py", ["--update-phase", "runner", "impl_auth",
                                          "impl_complete", "--commit", "abcd123", *sd])
    assert shim.returncode == 0, shim.stderr
    assert run_script("hook_manager.py", ["--update-resumption", "runner", "impl_auth",
                                          "- rerun the gate", *sd]).returncode == 0
    read = run_script("hook_manager.py", ["--read", "runner", "impl_auth", "--json", *sd])
    data = json.loads(read.stdout)
    assert (data["phase"], data["last_commit"]) == ("impl_complete", "abcd123")
    assert data["resumption_instructions"] == "- rerun the gate"
    wisdom = run_script("hook_manager.py", ["--wisdom", "runner", "impl_auth", *sd])
    assert wisdom.returncode == 0 and "- rerun the gate" in wisdom.stdout
    bad = run_script("hook_manager.py", ["--update-phase", "runner", "impl_auth", "merged", *sd])
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == ("error: hook runner-impl_auth: illegal transition impl_complete -> "
                          "merged; allowed from impl_complete: executing, failed, merge_ready, "
                          "validating\n")
    short = run_script("hook_manager.py", ["--update-phase", "runner", "impl_auth", *sd])
    assert short.returncode == 2 and "needs ROLE NAME PHASE" in short.stderr
