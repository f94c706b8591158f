"""Where the real agent CLIs are: on PATH, or where scripts/ installs the pinned versions.

A test that needs one calls `agent_binary(name)`: it skips with the reason when the CLI is
missing, except under CI (`CI=true`), where a missing CLI fails the test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# where scripts/install_agent_clis.sh puts them ($ATTRACTOR_TOOLS, default ~/.cache/attractor-tools)
TOOLS_DIR = Path(os.environ.get("ATTRACTOR_TOOLS") or Path.home() / ".cache" / "attractor-tools")
if not (TOOLS_DIR / "bin").is_dir():  # tests run with a private HOME: look where root's install went
    TOOLS_DIR = Path("/root/.cache/attractor-tools")
TOOLS_BIN = TOOLS_DIR / "bin"


def find_binary(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    candidate = TOOLS_BIN / name
    return candidate if candidate.exists() and os.access(candidate, os.X_OK) else None


def agent_binary(name: str) -> Path:
    """The CLI's path; skips the test when it is missing (fails under CI=true)."""
    found = find_binary(name)
    if found is None:
        reason = f"{name} not found on PATH nor in {TOOLS_BIN}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true: real-CLI tests must run)")
        pytest.skip(reason)
    return found
