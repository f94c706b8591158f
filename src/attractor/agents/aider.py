"""Aider adapter (being written): flags, history files, git identity, exit-with-commit, usage."""

from __future__ import annotations

from attractor.agents import Agent

ADAPTER = Agent("aider", ("aider", "--yes-always", "--message-file", "{prompt_file}"), "aider",
                "install aider (pip install aider-chat)")
