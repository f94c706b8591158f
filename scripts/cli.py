#!/usr/bin/env python3
"""The whole `attractor` command as a script, for checkouts where it is not installed:

    python3 scripts/cli.py merge-queue list
    python3 scripts/cli.py merge-queue process --all --gate 'pytest -q'

A thin shim: every argument goes to `attractor.cli.main`, so the two are the same command.
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
    return attractor_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
