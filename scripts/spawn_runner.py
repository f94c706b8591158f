#!/usr/bin/env python3
"""Start one runner in tmux; it registers its identity and hook first and prints its pid,
session and state file.

    python3 scripts/spawn_runner.py --node impl_auth --prd PRD-TEST-001 --target-dir /tmp/app --pipeline p.dot

A thin shim over `attractor spawn-runner`; `--prd` is accepted as another name for `--run`.
The run id is taken as given: one that is not a valid attractor name (`PRD-TEST-001`) is used
as the name it maps to (`prd-test-001`), and a note on stderr says so. Before anything is
written, the run id, node, pipeline (the `--pipeline` file, else the run's copy
`runs/<run>/pipeline.dot`), the node's agent and the target repository and branch are checked;
bad input is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _options() -> argparse.ArgumentParser:
    """The options of the spawn commands this shim reads; everything else passes through."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run", "--prd", dest="run")
    parser.add_argument("--node")
    parser.add_argument("--pipeline")
    parser.add_argument("--target-dir")
    parser.add_argument("--target", default="main")
    parser.add_argument("--state-dir")
    parser.add_argument("--agent", default="scripted")
    parser.add_argument("--agent-cmd")
    return parser


def checked_args(args: Sequence[str], role: str) -> list[str]:
    """`args` with the run id mapped to a valid one, after every input of a runner (session
    `role`: "runner" or "orch") was checked; raises a UsageError naming the first bad one."""
    from attractor.cli import state_dir_from
    from attractor.cli.pipeline import script_problems
    from attractor.engines.pipeline import check_runner_inputs, run_id_for
    from attractor.errors import BadInputError

    known, rest = _options().parse_known_args(list(args))
    if known.run is None or known.node is None or "-h" in rest or "--help" in rest:
        return list(args)  # the command itself says what is missing, or shows its help
    run_id = run_id_for(known.run)
    from attractor.layers.layout import session_name

    target = Path(known.target_dir or ".").resolve()
    state_root = state_dir_from(known)
    pipeline_path = Path(known.pipeline).resolve() if known.pipeline else state_root / "runs" / run_id / "pipeline.dot"
    pipeline = check_runner_inputs(run_id, known.node, pipeline_path, target, known.target,
                                   session=session_name(run_id, role, known.node), node_checks=[script_problems])
    from attractor.agents import resolve_agent

    node = pipeline.nodes[known.node]
    agent_name = node.agent or known.agent
    resolve_agent(agent_name, known.agent_cmd).check()
    if agent_name == "scripted" and not known.agent_cmd and node.script is None:
        raise BadInputError(f"node '{node.name}'", "the scripted agent needs a `script` attribute; add one or "
                                                   "choose another --agent")
    if run_id != known.run:  # after the checks: an error stays one line
        print(f"note: run id {known.run!r} is used as {run_id!r} (run ids, branch and tmux session names take "
              "lowercase letters, digits and _ . -)", file=sys.stderr)
    given = {"--run": run_id, "--node": known.node, "--pipeline": known.pipeline, "--target-dir": known.target_dir,
             "--target": known.target, "--state-dir": known.state_dir, "--agent": known.agent,
             "--agent-cmd": known.agent_cmd}
    return [*(word for option, value in given.items() if value is not None for word in (option, value)), *rest]


def _attractor() -> tuple[Callable[[Sequence[str]], int], Callable[[Callable[[], int]], int]]:
    try:
        from attractor.cli import main as attractor_main
    except ModuleNotFoundError:  # run from a checkout without installing
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
        from attractor.cli import main as attractor_main
    from attractor.errors import error_handler

    return attractor_main, error_handler


def run_shim(command: str, role: str, argv: Sequence[str] | None) -> int:
    attractor_main, error_handler = _attractor()
    args = sys.argv[1:] if argv is None else list(argv)
    checked: list[str] = []

    def _check() -> int:
        checked.extend(checked_args(args, role))
        return 0

    code = error_handler(_check)
    return code if code else attractor_main([command, *checked])


def main(argv: Sequence[str] | None = None) -> int:
    return run_shim("spawn-runner", "runner", argv)


if __name__ == "__main__":
    raise SystemExit(main())
