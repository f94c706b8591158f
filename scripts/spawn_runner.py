#!/usr/bin/env python3
"""Start one runner in tmux; it registers its identity and hook first and prints its pid,
session and state file.

    python3 scripts/spawn_runner.py --node impl_auth --prd RUN_ID --pipeline p.dot --target-dir /tmp/app

A thin shim over `attractor spawn-runner`; `--prd` is accepted as another name for `--run`.
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
    return attractor_main(["spawn-runner", *args])


if __name__ == "__main__":
    raise SystemExit(main())
