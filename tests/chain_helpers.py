"""Builders for chain tests: a target repository, a pipeline file, and readers of run state."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO_ROOT, make_repo, run_cli

CHECK = "python3 -m unittest discover -s tests -t . -q"


def target_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "app", {
        "README.md": "app\n", "app/__init__.py": "", "tests/__init__.py": "",
        "tests/test_base.py": "import unittest\n\n\nclass Base(unittest.TestCase):\n"
                              "    def test_true(self):\n        self.assertTrue(True)\n",
    })


def dot_quote(text: str) -> str:
    """A DOT string: only `"` is escaped; real newlines stay (script steps are lines)."""
    return '"' + text.replace('"', '\\"') + '"'


def codergen(name: str, script: str, **attrs: Any) -> str:
    extra = "".join(f", {k}={dot_quote(v) if isinstance(v, str) else v}" for k, v in attrs.items())
    return f'  {name} [shape=box, prompt="work on {name}", script={dot_quote(script)}{extra}]\n'


def tool(name: str, command: str = CHECK) -> str:
    return f"  {name} [shape=parallelogram, command={dot_quote(command)}, timeout=60]\n"


def pipeline_file(tmp_path: Path, body: str, edges: str, name: str = "p") -> Path:
    path = tmp_path / f"{name}.dot"
    path.write_text(f"digraph {name} {{\n  start [shape=Mdiamond]\n  exit [shape=Msquare]\n{body}{edges}}}\n")
    return path


def module_steps(name: str, value: int) -> str:
    """A scripted step pair writing app/<name>.py and its test."""
    return (f"write app/{name}.py VALUE = {value}\\n\n"
            f"write tests/test_{name}.py import unittest\\n\\nfrom app.{name} import VALUE\\n\\n\\n"
            f"class T(unittest.TestCase):\\n    def test_value(self):\\n        self.assertEqual(VALUE, {value})\\n\n")


def launch(pipeline: Path, target: Path, state: Path, *extra: str, detach: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, str(REPO_ROOT / "scripts" / "launch_guardian.py"), str(pipeline),
            "--target-dir", str(target), "--state-dir", str(state), "--agent", "scripted", *extra]
    if detach:
        args.append("--detach")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def identity(state: Path, agent_id: str) -> dict[str, Any] | None:
    path = state / "identities" / f"{agent_id}.json"
    try:
        return read_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_id(state: Path) -> str | None:
    runs = state / "runs"
    found = sorted(p.name for p in runs.iterdir() if (p / "checkpoint.json").exists()) if runs.is_dir() else []
    return found[-1] if found else None


def checkpoint(state: Path) -> dict[str, Any]:
    rid = run_id(state)
    assert rid is not None
    return read_json(state / "runs" / rid / "checkpoint.json")


def events(state: Path) -> list[dict[str, Any]]:
    rid = run_id(state)
    assert rid is not None
    path = state / "runs" / rid / "events.jsonl"
    if not path.exists():  # the checkpoint is written before the first event
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done_signals(state: Path, agent_id: str) -> list[dict[str, Any]]:
    box = state / "signals" / agent_id / "done"
    if not box.is_dir():
        return []
    items = [read_json(p) for p in box.iterdir() if p.suffix == ".json"]
    return sorted(items, key=lambda s: s["id"])


def kill_everything(state: Path) -> None:
    """Kill every process the run recorded (used by fixtures so a failing test leaves nothing)."""
    ids = state / "identities"
    if not ids.is_dir():
        return
    for path in ids.glob("*.json"):
        try:
            pid = read_json(path).get("pid")
        except (OSError, ValueError):
            continue
        if pid and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def git_show(repo: Path, ref: str, path: str) -> str | None:
    out = subprocess.run(["git", "-C", str(repo), "show", f"{ref}:{path}"], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def run_detached(pipeline: Path, repo: Path, state_dir: Path) -> tuple[Any, str, str]:
    """`attractor run --detach` of `pipeline` on `repo` with the scripted agent: the state
    (a StateDir), the run id and what the command printed."""
    from attractor.store import checkpoint as cp_store
    from attractor.store.statedir import StateDir

    launched = run_cli(["run", str(pipeline), "--target-dir", str(repo), "--agent", "scripted", "--detach",
                        "--state-dir", str(state_dir)], timeout=120)
    assert launched.returncode == 0, launched.stderr
    state = StateDir(state_dir)
    run_id = cp_store.latest_run(state)
    assert run_id is not None
    return state, run_id, launched.stdout
