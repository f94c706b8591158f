"""`attractor agent-hook EVENT`: what an agent CLI's own hooks call (being written)."""

from __future__ import annotations

import argparse

from attractor.cli import Parser, subparser

EVENTS = ("session-start", "user-prompt-submit", "post-tool-use", "notification", "stop", "pre-compact",
          "session-end")


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    parser = subparser(subparsers, "agent-hook", "called by an agent CLI's hooks (reads the hook's JSON on stdin)",
                       "echo '{}' | attractor agent-hook post-tool-use")
    parser.add_argument("event", choices=EVENTS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return 0
