"""`attractor demo`: make a small demo repository and run `pipelines/demo.dot` on it end to end
with the scripted agent (no model, no network)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from attractor.cli import add_tmux_socket_option, subparser

DEMO_FILES = {
    "README.md": "# calc\n\nA small calculator package, built by an attractor pipeline.\n",
    "calc/__init__.py": '"""A small calculator package."""\n',
    "tests/__init__.py": "",
    "tests/test_package.py": (
        "import unittest\n\nimport calc\n\n\nclass PackageTest(unittest.TestCase):\n"
        "    def test_imports(self):\n        self.assertTrue(calc.__doc__)\n"
    ),
}


def default_pipeline() -> Path:
    from attractor.orchestrator import PACKAGE_CHECKOUT

    return PACKAGE_CHECKOUT / "pipelines" / "demo.dot"


def make_demo_repo(path: Path) -> None:
    from attractor.errors import BadInputError, MissingBinaryError

    if path.exists() and any(path.iterdir()):
        raise BadInputError("--dir", f"{path} is not empty; choose a new directory")
    path.mkdir(parents=True, exist_ok=True)

    def git(*args: str) -> None:
        try:
            subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise MissingBinaryError("git", "install it with: apt-get install git") from None

    git("init", "-q", "-b", "main")
    git("config", "user.name", "attractor demo")
    git("config", "user.email", "demo@attractor.invalid")
    git("config", "commit.gpgsign", "false")
    for name, text in DEMO_FILES.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git("add", "-A")
    git("commit", "-q", "-m", "Start the calc package")


def run_demo(args: argparse.Namespace) -> int:
    from attractor.launcher import LaunchOptions, launch

    pipeline = Path(args.pipeline) if args.pipeline else default_pipeline()
    target = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="attractor-demo-"))
    print(f"demo repository: {target}")
    make_demo_repo(target)
    code = launch(LaunchOptions(pipeline=pipeline, target_dir=target, agent="scripted",
                                max_agents=args.max_agents, tmux_socket=args.tmux_socket,
                                state_dir=str(target / ".claude" / "state"),
                                log_level=args.log_level if args.log_level != "WARNING" else "INFO"))
    log = subprocess.run(["git", "log", "--oneline", "--graph", "main"], cwd=target, capture_output=True, text=True)
    print(f"\ngit log main:\n{log.stdout.rstrip()}")
    tests = subprocess.run([sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", ".", "-q"],
                           cwd=target, capture_output=True, text=True)
    last = (tests.stderr.strip().splitlines() or ["(no output)"])[-1]
    print(f"tests on main: {last}")
    attractor = Path(sys.executable).parent / "attractor"
    command = str(attractor) if attractor.exists() else f"{sys.executable} -m attractor"
    print(f"look around: {command} status --target-dir {target}")
    return code if tests.returncode == 0 else 1


def add_parser(subparsers: Any) -> None:
    p = subparser(subparsers, "demo",
                  "create a demo repository and run pipelines/demo.dot on it with the scripted agent",
                  "attractor demo --dir /tmp/calc-demo")
    p.add_argument("--dir", help="where to create the demo repository (default: a new temporary directory)")
    p.add_argument("--pipeline", help="pipeline to run (default: pipelines/demo.dot)")
    p.add_argument("--max-agents", type=int, help="nodes running at once (default: 4)")
    add_tmux_socket_option(p)
    p.set_defaults(func=run_demo)
