"""Claude Code adapter (being written): argv, settings file, hooks, trust, usage, dialogs."""

from __future__ import annotations

from attractor.agents import Agent, _prompt_from_file

ADAPTER = Agent("claude", _prompt_from_file("claude"), "claude",
                "install Claude Code (npm install -g @anthropic-ai/claude-code)")
