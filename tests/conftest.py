"""Isolation for every test: a private HOME, /bin/sh, no inherited tmux, a private tmux socket
name, git identity fixed, and a guard that fails any test that forgets to choose its own state
directory (the default one would land in the developer's checkout)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from attractor.store.statedir import StateDir

GUARD_NAME = "UNCHOSEN-state-dir"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SHELL", "/bin/sh")
    monkeypatch.delenv("TMUX", raising=False)
    monkeypatch.delenv("TMUX_PANE", raising=False)
    for key in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):  # the daemon's files: under HOME
        monkeypatch.delenv(key, raising=False)
    for key, value in (
        ("GIT_AUTHOR_NAME", "Test Author"), ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
        ("GIT_COMMITTER_NAME", "Test Author"), ("GIT_COMMITTER_EMAIL", "test@example.invalid"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
    ):
        monkeypatch.setenv(key, value)
    socket = f"att-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("ATTRACTOR_TMUX_SOCKET", socket)
    guard = home / GUARD_NAME
    monkeypatch.setenv("ATTRACTOR_STATE_DIR", str(guard))
    monkeypatch.chdir(home)
    yield home
    # kill the private tmux server of this test, if one was started
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)
    # tmux leaves its socket file behind when the server exits
    leftover = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / socket
    with contextlib.suppress(OSError):
        leftover.unlink()
    if guard.exists():
        pytest.fail(
            "test wrote state to the default state directory; use the `state_dir` fixture "
            "or pass --state-dir"
        )


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state directory for this test, also exported as ATTRACTOR_STATE_DIR."""
    path = tmp_path / "state"
    monkeypatch.setenv("ATTRACTOR_STATE_DIR", str(path))
    return path


@pytest.fixture
def state(state_dir: Path) -> StateDir:
    """`state_dir` as a StateDir, created (0700) as any command that writes state would. A
    test about what creates the directory, or about nothing being created, starts from
    `state_dir` instead."""
    created = StateDir(state_dir)
    created.ensure()
    return created


@pytest.fixture
def tmux_socket() -> str:
    return os.environ["ATTRACTOR_TMUX_SOCKET"]


@pytest.fixture
def chain(tmp_path: Path, state_dir: Path, tmux_socket: str) -> Iterator[tuple[Path, Path]]:
    """A target repository and a state directory for a run of the chain; afterwards every
    process the run recorded and its tmux server are gone, even when the test failed."""
    from tests.chain_helpers import kill_everything, target_repo

    target = target_repo(tmp_path)
    yield target, state_dir
    kill_everything(state_dir)
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], capture_output=True, check=False)
