"""Prompts and role definitions of layer 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from attractor.errors import BadInputError
from attractor.layers.launch import build_prompt, load_role


def test_role_from_the_checkout_and_target_override(tmp_path: Path) -> None:
    role = load_role("orchestrator")
    assert role.meta["layer"] == 3 and "worktree" in role.body
    own = tmp_path / ".claude" / "agents"
    own.mkdir(parents=True)
    (own / "orchestrator.md").write_text("---\nname: orchestrator\nlayer: 3\n---\nHouse rules.\n")
    assert load_role("orchestrator", tmp_path).body == "House rules.\n"
    (own / "orchestrator.md").write_text("---\nname: [unclosed\n---\nx\n")
    with pytest.raises(BadInputError) as info:
        load_role("orchestrator", tmp_path)
    assert "orchestrator.md" in str(info.value)


def test_prompt_has_wisdom_first_task_and_exact_report_command() -> None:
    prompt = build_prompt(role=load_role("orchestrator"), node="impl", task="Add login", worktree=Path("/w"),
                          branch="attractor/r/impl", agent_id="orchestrator-impl", runner_id="runner-impl",
                          wisdom="## Resuming\nvalidation failed", goal="auth")
    assert prompt.startswith("## Resuming")
    assert "Add login" in prompt and "attractor/r/impl" in prompt
    assert "signal send ORCHESTRATOR_DONE --to runner-impl --from orchestrator-impl" in prompt
    assert "ORCHESTRATOR_STUCK" in prompt
