#!/usr/bin/env python3
"""Start one node's agent in a tmux pane in the node's worktree.

    python3 scripts/spawn_orchestrator.py --node impl_auth --run RUN_ID --pipeline p.dot --target-dir /tmp/app

A thin shim over `attractor spawn-orchestrator`, with the checks and the run id mapping of
`spawn_runner.py` (`--prd` is another name for `--run`; `PRD-TEST-001` is used as
`prd-test-001`, and a note says so).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from spawn_runner import run_shim  # the shim beside this one

    return run_shim("spawn-orchestrator", "orch", argv)


if __name__ == "__main__":
    raise SystemExit(main())
