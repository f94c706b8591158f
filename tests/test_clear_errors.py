"""Faults that used to end in exit 3 (an "unexpected" traceback) are one-line errors naming
what is wrong: exit 2 for bad input, 1 for operational failures; a crash log never creates a
directory with another mode than 0700."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from attractor.errors import EXIT_BUG, error_handler
from tests.helpers import run_cli


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_a_deeply_nested_payload_is_bad_input(tmp_path: Path) -> None:
    state = tmp_path / "fresh" / "state"
    payload = "[" * 50_000 + "]" * 50_000
    result = run_cli(["signal", "send", "SHUTDOWN", "--to", "runner-x", "--payload", payload,
                      "--state-dir", str(state)])
    assert result.returncode == 2, result.stderr
    assert "--payload" in _one_error_line(result.stderr)
    assert not (tmp_path / "fresh").exists()  # nothing written, no crash log, no directories


def test_a_crash_log_creates_only_private_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "a" / "b" / "state" / "logs"
    old = os.umask(0o022)
    try:
        code = error_handler(lambda: int("not a number"), lambda: logs)
    finally:
        os.umask(old)
    assert code == EXIT_BUG
    assert "traceback in" in capsys.readouterr().err
    for directory in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "state", logs):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_lock_file_that_is_a_symlink_is_refused_with_its_path(state_dir: Path, tmp_path: Path) -> None:
    made = run_cli(["identity", "create", "runner", "x", "--state-dir", str(state_dir)])
    assert made.returncode == 0, made.stderr
    lock = state_dir / "identities" / "runner-x.json.lock"
    lock.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    lock.symlink_to(elsewhere)
    result = run_cli(["identity", "update-liveness", "runner", "x", "--state-dir", str(state_dir)])
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert str(lock) in line and "symbolic link" in line


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled to the last block."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as fh:
            while True:
                fh.write(b"x" * 4096)
                fh.flush()
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def test_a_full_disk_is_an_operational_error_naming_the_file(full_disk: Path) -> None:
    state = full_disk / "state"
    state.mkdir(mode=0o700)  # a directory costs no data block on tmpfs
    result = run_cli(["identity", "create", "runner", "x", "--state-dir", str(state)])
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert line.startswith("error: no space left on device writing "), line
    assert str(state / "identities") in line


def test_a_full_disk_while_sending_a_signal_names_the_file(full_disk: Path) -> None:
    state = full_disk / "state"
    state.mkdir(mode=0o700)
    result = run_cli(["signal", "send", "SHUTDOWN", "--to", "runner-x", "--state-dir", str(state)])
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert line.startswith("error: no space left on device writing "), line
    assert str(state / "signals" / "runner-x") in line


@pytest.mark.parametrize("args, words", [
    (["status", "--watch", "--json"], "--watch redraws a screen for people"),
    (["status", "--watch", "--interval", "0"], "0.1 to 3600"),
    (["status", "--watch", "--interval", "soon"], "0.1 to 3600"),
], ids=["watch-json", "interval-zero", "interval-word"])
def test_status_watch_refuses_what_it_cannot_do(tmp_path: Path, args: list[str], words: str) -> None:
    result = run_cli([*args, "--state-dir", str(tmp_path / "state")])
    assert result.returncode == 2
    assert words in _one_error_line(result.stderr)
