#!/usr/bin/env python3
"""Start one node's agent in a tmux pane in the node's worktree.

    python3 scripts/spawn_orchestrator.py --node impl_auth --run RUN_ID --pipeline p.dot --target-dir /tmp/app

A thin shim over `attractor spawn-orchestrator`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    try:
        from attractor.cli import main as attractor_main
    except ModuleNotFoundError:  # run from a checkout without installing
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
        from attractor.cli import main as attractor_main
    args = sys.argv[1:] if argv is None else argv
    args = ["--run" if a == "--prd" else a for a in args]
    return attractor_main(["spawn-orchestrator", *args])


if __name__ == "__main__":
    raise SystemExit(main())
