"""The hot commands' short path (cli/hot.py) against the full path (argparse and the stores), as
real processes on real files: the same files for the same inputs, the same refusal of bad
input, and none of the heavy standard-library modules at start-up.

A command line the short path does not take (here: one with `--log-level` in front) runs the
full path, so each case runs twice, in two state directories set up alike."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers import REPO_ROOT, run_cli

FULL = ["--log-level", "WARNING"]  # a global option: the short path leaves the command line alone
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_SIGNAL_ID = re.compile(r"\d{8}T\d{6}\.\d{9}Z-\d+-[0-9a-f]{8}")
_CORRUPT = re.compile(r"\.corrupt-[0-9T-]+")
_LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)


def _normal(text: str, state: Path) -> str:
    text = text.replace(str(state), "STATE")
    text = _SIGNAL_ID.sub("ID", _STAMP.sub("STAMP", text))
    return _LOG_TIME.sub("", _CORRUPT.sub(".corrupt-X", text))


def _tree(state: Path) -> dict[str, str]:
    """Every file under `state` (names and contents, times and ids replaced), with its mode."""
    files = {}
    for path in sorted(state.rglob("*")):
        if path.is_symlink() or path.is_file():
            mode = oct(path.lstat().st_mode & 0o777)
            content = "-> link" if path.is_symlink() else path.read_text()
            files[_normal(str(path.relative_to(state)), state)] = f"{mode} {_normal(content, state)}"
    return files


def _setup(state: Path) -> None:
    env = {**os.environ, "ATTRACTOR_STATE_DIR": str(state)}
    for argv in (["identity", "create", "runner", "impl"], ["identity", "update-liveness", "runner", "impl"],
                 ["hook", "create", "runner", "impl"], ["identity", "create", "orchestrator", "impl"]):
        assert run_cli(argv, env=env).returncode == 0


class Case(NamedTuple):
    test_id: str
    argv: list[str]


SAME_FILES = [
    Case("heartbeat", ["identity", "update-liveness", "runner", "impl"]),
    Case("heartbeat relative state dir", ["identity", "update-liveness", "runner", "impl", "--state-dir", "REL"]),
    Case("phase move", ["hook", "update-phase", "runner", "impl", "executing"]),
    Case("phase move with note and commit", ["hook", "update-phase", "runner", "impl", "executing",
                                             "--note", "agent started", "--commit=ABC123"]),
    Case("same phase again", ["hook", "update-phase", "runner", "impl", "spawned"]),
    Case("signal with payload", ["signal", "send", "ORCHESTRATOR_DONE", "--to", "orchestrator-impl",
                                 "--payload", '{"node": "impl", "summary": "d\\u00e9j\\u00e0 \\"vu\\""}']),
    Case("signal without payload, no identity", ["signal", "send", "SHUTDOWN", "--to", "guardian-main",
                                                 "--from", "runner-impl"]),
    Case("signal with a list", ["signal", "send", "MERGE_FAILED", "--to", "runner-impl", "--payload",
                                '{"entry_id": "e", "branch": "b", "reason": "conflict", "target": "main", '
                                '"files": ["a.py", "b.py"]}']),
]


def _twice(tmp_path: Path, argv: list[str], prepare: Callable[[Path], None] = _setup,
           ) -> tuple[tuple[subprocess.CompletedProcess[str], Path], tuple[subprocess.CompletedProcess[str], Path]]:
    results = []
    for label, front in (("short", []), ("full", FULL)):
        home = tmp_path / label
        state = home / "state"
        prepare(state)
        words = [word.replace("REL", "state") for word in argv]
        env = {**os.environ, "ATTRACTOR_STATE_DIR": str(state)}
        results.append((run_cli([*front, *words], env=env, cwd=home), state))
    return results[0], results[1]


@pytest.mark.parametrize("case", SAME_FILES, ids=[c.test_id for c in SAME_FILES])
def test_the_short_and_the_full_path_write_the_same_files(tmp_path: Path, case: Case) -> None:
    (short, short_state), (full, full_state) = _twice(tmp_path, case.argv)
    assert full.returncode == 0, full.stderr
    assert (short.returncode, short.stderr) == (0, "")
    assert _normal(short.stdout, short_state) == _normal(full.stdout, full_state)
    assert _tree(short_state) == _tree(full_state)


def _corrupt(relative: str, text: str) -> Callable[[Path], None]:
    def prepare(state: Path) -> None:
        _setup(state)
        (state / relative).write_text(text)
    return prepare


def _lock_link(relative: str) -> Callable[[Path], None]:
    def prepare(state: Path) -> None:
        _setup(state)
        lock = state / relative
        lock.unlink()
        lock.symlink_to(state / "nowhere")
    return prepare


def _edited(relative: str, copy_to: str | None = None, **fields: object) -> Callable[[Path], None]:
    """A record that parses but that its store refuses (written under `copy_to` if given)."""
    def prepare(state: Path) -> None:
        _setup(state)
        data = {**json.loads((state / relative).read_text()), **fields}
        (state / (copy_to or relative)).write_text(json.dumps(data))
    return prepare


class BadInput(NamedTuple):
    test_id: str
    argv: list[str]
    prepare: Callable[[Path], None]
    message: str


BAD = [
    BadInput("name with a slash", ["identity", "update-liveness", "runner", "a/b"], _setup, "invalid name 'a/b'"),
    BadInput("name with a quote", ["hook", "update-phase", "runner", "it's", "executing"], _setup,
             "invalid name \"it's\""),
    BadInput("recipient with a slash", ["signal", "send", "SHUTDOWN", "--to", "../x"], _setup,
             "invalid agent id '../x'"),
    BadInput("malformed JSON in the identity", ["identity", "update-liveness", "runner", "impl"],
             _corrupt("identities/runner-impl.json", '{"schema": 1,'), "not valid JSON"),
    BadInput("malformed JSON in the hook", ["hook", "update-phase", "runner", "impl", "executing"],
             _corrupt("hooks/runner-impl.json", "[1, 2"), "not valid JSON"),
    BadInput("a field of the wrong kind", ["identity", "update-liveness", "runner", "impl"],
             _corrupt("identities/runner-impl.json", json.dumps({"schema": 1, "role": "runner"})), "missing field"),
    BadInput("a bad pane id in the identity", ["identity", "update-liveness", "runner", "impl"],
             _edited("identities/runner-impl.json", pane_id="%x"), "'%x' is not valid"),
    BadInput("an uppercase name with a record there", ["identity", "update-liveness", "runner", "Impl"],
             _edited("identities/runner-impl.json", "identities/runner-Impl.json", name="Impl",
                     agent_id="runner-Impl"), "invalid name 'Impl'"),
    BadInput("stale lock (a symbolic link)", ["hook", "update-phase", "runner", "impl", "executing"],
             _lock_link("hooks/runner-impl.json.lock"), "the lock file is a symbolic link"),
    BadInput("illegal phase move", ["hook", "update-phase", "runner", "impl", "merged"], _setup,
             "illegal transition spawned -> merged"),
    BadInput("payload missing a field", ["signal", "send", "ORCHESTRATOR_DONE", "--to", "runner-impl"], _setup,
             "required field(s) node"),
    BadInput("payload not JSON", ["signal", "send", "ORCHESTRATOR_DONE", "--to", "runner-impl", "--payload",
                                  "{node: 1}"], _setup, "--payload: not valid JSON"),
]


@pytest.mark.parametrize("case", BAD, ids=[c.test_id for c in BAD])
def test_the_short_path_refuses_bad_input_as_the_full_path_does(tmp_path: Path, case: BadInput) -> None:
    (short, short_state), (full, full_state) = _twice(tmp_path, case.argv, case.prepare)
    assert short.returncode == full.returncode == 2, (short.stderr, full.stderr)
    assert short.stdout == full.stdout == ""
    errors = [line for line in short.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and case.message in errors[0]  # (a corrupt file is also logged as a warning)
    assert _normal(short.stderr, short_state) == _normal(full.stderr, full_state)
    assert _tree(short_state) == _tree(full_state)


_MODULES = """
import atexit, sys
def _record():
    loaded = sorted(sys.modules)
    import json
    print(json.dumps(loaded), file=sys.stderr)
atexit.register(_record)
target = sys.argv[1:]
if target[0] == "-m":
    import runpy
    sys.argv = target[1:]
    runpy.run_module("attractor", run_name="__main__", alter_sys=True)
else:
    sys.argv = target
    sys.path[0] = __import__("os").path.dirname(target[0])
    exec(compile(open(target[0]).read(), target[0], "exec"), {"__name__": "__main__", "__file__": target[0]})
"""
NOT_AT_START_UP = ("logging", "dataclasses", "argparse", "pathlib", "typing")
SCRIPTS = REPO_ROOT / "scripts"
HOT = [
    Case("identity update-liveness", ["-m", "attractor", "identity", "update-liveness", "runner", "impl"]),
    Case("hook update-phase", ["-m", "attractor", "hook", "update-phase", "runner", "impl", "executing",
                               "--commit", "abc123"]),
    Case("signal send", ["-m", "attractor", "signal", "send", "ORCHESTRATOR_DONE", "--to", "runner-impl",
                         "--payload", '{"node": "impl"}']),
    Case("identity_registry.py --update-liveness", [str(SCRIPTS / "identity_registry.py"), "--update-liveness",
                                                    "runner", "impl"]),
    Case("hook_manager.py --update-phase", [str(SCRIPTS / "hook_manager.py"), "--update-phase", "runner", "impl",
                                            "executing"]),
]


@pytest.mark.parametrize("case", HOT, ids=[c.test_id for c in HOT])
def test_a_hot_command_imports_no_heavy_standard_library_module(state_dir: Path, case: Case) -> None:
    _setup(state_dir)
    # the first signal creates the inbox's directories (the full path's work); later ones do not
    assert run_cli(["signal", "send", "SHUTDOWN", "--to", "runner-impl"]).returncode == 0
    proc = subprocess.run([sys.executable, "-c", _MODULES, *case.argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stderr.splitlines()[-1])
    assert [name for name in NOT_AT_START_UP if name in loaded] == []
    assert "attractor.cli.hot" in loaded
