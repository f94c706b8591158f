#!/usr/bin/env python3
"""The identity registry in the flag form agents' prompts use, for example

    python3 scripts/identity_registry.py --update-liveness runner impl_auth
    python3 scripts/identity_registry.py --create-identity runner a1 --session-id S --worktree W
    python3 scripts/identity_registry.py --find-stale --timeout 120 --json

A thin shim: each flag becomes the matching `attractor identity …` command and runs the same code.
"""

from __future__ import annotations

import os
import sys

ACTIONS = {
    "--create-identity": ("create", ("ROLE", "NAME")),
    "--update-liveness": ("update-liveness", ("ROLE", "NAME")),
    "--find-stale": ("find-stale", ()),
    "--mark-crashed": ("mark-crashed", ("ROLE", "NAME")),
    "--mark-terminated": ("mark-terminated", ("ROLE", "NAME")),
    "--mark-respawning": ("mark-respawning", ("ROLE", "NAME")),
    "--mark-quarantined": ("mark-quarantined", ("ROLE", "NAME")),
    "--list": ("list", ()),
    "--show": ("show", ("ROLE", "NAME")),
}


def main(argv: list[str] | None = None) -> int:
    try:
        from attractor.cli import run_flag_form
    except ModuleNotFoundError:  # run from a checkout without installing
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "src"))
        from attractor.cli import run_flag_form
    args = sys.argv[1:] if argv is None else argv
    return run_flag_form("identity", ACTIONS, args, "identity_registry.py")


if __name__ == "__main__":
    raise SystemExit(main())
