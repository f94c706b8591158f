#!/usr/bin/env python3
"""Hooks in the flag form agents' prompts use, for example

    python3 scripts/hook_manager.py --update-phase runner impl_auth impl_complete --commit 1a2b3c4
    python3 scripts/hook_manager.py --read runner impl_auth --json
    python3 scripts/hook_manager.py --update-resumption runner impl_auth "fix tests/test_auth.py"

A thin shim: each flag becomes the matching `attractor hook …` command and runs the same code.
"""

from __future__ import annotations

import os
import sys

ACTIONS = {
    "--create": ("create", ("ROLE", "NAME")),
    "--read": ("read", ("ROLE", "NAME")),
    "--update-phase": ("update-phase", ("ROLE", "NAME", "PHASE")),
    "--update-resumption": ("update-resumption", ("ROLE", "NAME", "TEXT")),
    "--mark-merged": ("mark-merged", ("ROLE", "NAME")),
    "--wisdom": ("wisdom", ("ROLE", "NAME")),
    "--list": ("list", ()),
}


def main(argv: list[str] | None = None) -> int:
    try:
        from attractor.cli import run_flag_form
    except ModuleNotFoundError:  # run from a checkout without installing
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "src"))
        from attractor.cli import run_flag_form
    args = sys.argv[1:] if argv is None else argv
    return run_flag_form("hook", ACTIONS, args, "hook_manager.py")


if __name__ == "__main__":
    raise SystemExit(main())
