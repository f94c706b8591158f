"""Test helpers: wait on real conditions, never bare sleeps; run the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent


def retry_until(predicate: Callable[[], T], seconds: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Call `predicate` until it returns something truthy; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what or predicate}")
        time.sleep(interval)
        last = predicate()
    return last


def run_cli(args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m attractor ARGS` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "attractor", *args],
        capture_output=True, text=True, env=env or os.environ.copy(), cwd=cwd, timeout=timeout,
        input=input_text,
    )


def run_script(script: str, args: Sequence[str], *, env: dict[str, str] | None = None,
               cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one of the `scripts/` shims as a real subprocess."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / script), *args],
        capture_output=True, text=True, env=env or os.environ.copy(), cwd=cwd, timeout=timeout,
    )


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None, branch: str = "main") -> Path:
    """A real git repository with one commit on `branch`, fixed author, no signing."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", branch, str(path)], check=True)
    for key, value in (("user.name", "Test Author"), ("user.email", "test@example.invalid"),
                       ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    for name, text in (files or {"README.md": "hello\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "--no-gpg-sign", "-m", "initial")
    return path


def commit_file(repo: Path, name: str, text: str, message: str = "") -> str:
    target = repo / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "--no-gpg-sign", "-m", message or f"edit {name}")
    return git(repo, "rev-parse", "HEAD")
