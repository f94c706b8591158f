#!/usr/bin/env python3
"""Layer 0: validate a pipeline, start the guardian in tmux and follow the run.

    python3 scripts/launch_guardian.py pipelines/demo.dot --target-dir /tmp/app --agent scripted

A thin shim over `attractor run` (same options).
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
    return attractor_main(["run", *args])


if __name__ == "__main__":
    raise SystemExit(main())
