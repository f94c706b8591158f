"""`attractor demo`: make an empty demo repository and run `pipelines/demo.dot` on it end to end
with the scripted agent (no model, no network), then run the pipeline's validation commands on
the repository's `main`."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from attractor.cli import subparser
from attractor.cli._flags import add_tmux_socket_option

# An empty project: the demo pipeline brings its package and tests, as it does on any repository.
DEMO_FILES = {
    "README.md": "# demo\n\nAn empty project; `attractor demo` runs pipelines/demo.dot on it, which adds a small\n"
                 "calculator package with its tests under calc/.\n",
}


def default_pipeline() -> Path:
    from attractor.layers.launch import PACKAGE_CHECKOUT

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
    git("commit", "-q", "-m", "Start an empty project")


def run_demo(args: argparse.Namespace) -> int:
    from attractor.layers.launcher import LaunchOptions, launch

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
    tests_ok = check_main(pipeline, target)
    attractor = Path(sys.executable).parent / "attractor"
    command = str(attractor) if attractor.exists() else f"{sys.executable} -m attractor"
    print(f"look around: {command} status --target-dir {target}")
    return code if tests_ok else 1


def check_main(pipeline_path: Path, target: Path) -> bool:
    """Run the pipeline's validation commands on the target's checkout of main and print one
    line for each: `tests on main: OK (COMMAND)`, or the line that says why it failed."""
    from attractor.engines.gates import Gate, run_gate, summary_line
    from attractor.engines.pipeline import NodeKind, load_pipeline

    pipeline = load_pipeline(pipeline_path)
    commands = dict.fromkeys(node.command for node in pipeline.nodes.values()
                             if node.kind is NodeKind.TOOL and node.command)
    if not commands:
        print("tests on main: none (the pipeline has no validation command)")
    ok = True
    for command in commands:
        result = run_gate(Gate(command, 120.0), target)
        last = (result.output_tail.strip().splitlines() or ["(no output)"])[-1]
        print(f"tests on main: {last if result.ok else 'FAILED: ' + summary_line(result.output_tail)} ({command})")
        ok = ok and result.ok
    return ok


def add_parser(subparsers: Any) -> None:
    p = subparser(subparsers, "demo",
                  "create a demo repository and run pipelines/demo.dot on it with the scripted agent",
                  "attractor demo --dir /tmp/calc-demo")
    p.add_argument("--dir", help="where to create the demo repository (default: a new temporary directory)")
    p.add_argument("--pipeline", help="pipeline to run (default: pipelines/demo.dot)")
    p.add_argument("--max-agents", type=int, help="nodes running at once (default: 4)")
    add_tmux_socket_option(p)
    p.set_defaults(func=run_demo)
