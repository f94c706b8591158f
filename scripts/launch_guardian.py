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
    missing = _missing_packages()
    if missing:
        print(f"error: {sys.executable} lacks the Python package(s) {', '.join(missing)} that attractor needs; "
              f"install them with: {sys.executable} -m pip install {' '.join(missing)} "
              f"(or, from a checkout: pip install -e {Path(__file__).resolve().parent.parent})", file=sys.stderr)
        return 2
    args = sys.argv[1:] if argv is None else argv
    return attractor_main(["run", *args])


def _missing_packages() -> list[str]:
    """The packages of attractor's dependencies this interpreter cannot import (a run needs
    them all: better every name now than one at a time, deep inside a start)."""
    import importlib.util

    from attractor.errors import DEPENDENCY_PACKAGES

    return [package for module, package in DEPENDENCY_PACKAGES.items() if importlib.util.find_spec(module) is None]


if __name__ == "__main__":
    raise SystemExit(main())
