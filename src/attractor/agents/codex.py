"""Codex CLI adapter (being written): argv, private CODEX_HOME, sandbox, hooks, usage, dialogs."""

from __future__ import annotations

from attractor.agents import Agent, _prompt_from_file

ADAPTER = Agent("codex", _prompt_from_file("codex"), "codex", "install Codex CLI (npm install -g @openai/codex)")
