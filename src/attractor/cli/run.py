"""`attractor run`: layer 0, the launcher."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attractor.cli import subparser
from attractor.cli._flags import add_state_dir_option, add_target_dir_option, add_tmux_socket_option


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", nargs="?", type=Path, help="the DOT pipeline to run")
    add_target_dir_option(parser)
    parser.add_argument("--agent", help="agent for codergen nodes: scripted, claude, codex, aider (default: scripted)")
    parser.add_argument("--agent-cmd", metavar="TEMPLATE",
                        help="any agent CLI, e.g. 'mycli --prompt-file {prompt_file}' "
                             "(placeholders: {prompt_file} {worktree} {node} {agent_id} {attempt})")
    parser.add_argument("--max-agents", type=int,
                        help="nodes running at once (default: the pipeline's max_agents, else 4)")
    parser.add_argument("--target", dest="target_branch", metavar="BRANCH", help="branch to merge onto (default: main)")
    parser.add_argument("--detach", action="store_true",
                        help="start the run and return at once (a running daemon takes it over)")
    parser.add_argument("--daemon", action="store_true",
                        help="hand the run to the user's daemon, starting one if none runs (implies --detach)")
    parser.add_argument("--attach", action="store_true",
                        help="if a guardian is already running in this state directory, follow its run")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue a run; merged nodes are not redone")
    parser.add_argument("--timeout", type=float, help="stop following after SECONDS (the run goes on)")
    add_state_dir_option(parser)
    add_tmux_socket_option(parser)


def options_from(args: argparse.Namespace) -> Any:
    from attractor.control.client import hand_over
    from attractor.layers.launcher import LaunchOptions

    return LaunchOptions(
        pipeline=args.pipeline, target_dir=Path(args.target_dir or "."), agent=args.agent, agent_cmd=args.agent_cmd,
        max_agents=args.max_agents, detach=args.detach, attach=args.attach, resume=args.resume,
        state_dir=args.state_dir,
        tmux_socket=args.tmux_socket, target_branch=args.target_branch,
        log_level=args.log_level if args.log_level != "WARNING" else "INFO", timeout=args.timeout,
        on_detach=hand_over)


def run_run(args: argparse.Namespace) -> int:
    import sys

    if getattr(args, "daemon", False):
        from attractor.control import client, daemon

        if client.lock_holder() is None:
            daemon.start_background(args.log_level if args.log_level != "WARNING" else "INFO", sys.stdout)
        args.detach = True

    from attractor.engines.pipeline import PipelineError
    from attractor.layers.launcher import launch

    try:
        return launch(options_from(args))
    except PipelineError as exc:
        # every problem on its own line, then the one-line error; nothing was started
        for problem in exc.problems:
            print(f"{exc.path}: {problem}", file=sys.stderr)
        raise


def add_parser(subparsers: Any) -> None:
    parser = subparser(subparsers, "run", "run a pipeline: start the guardian in tmux and follow the run",
                       "attractor run pipelines/demo.dot --target-dir ~/src/app --agent claude")
    add_run_options(parser)
    parser.set_defaults(func=run_run)
