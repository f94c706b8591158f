"""The processes of layers 1-3: `attractor guardian`, `attractor runner`, `attractor
spawn-runner`, `attractor spawn-orchestrator`. The guardian and runners are started in tmux by
attractor itself; the spawn commands start one layer by hand (also through `scripts/`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from attractor.cli import subparser
from attractor.cli._flags import add_state_dir_option, add_target_dir_option, add_tmux_socket_option, state_from
from attractor.cli._output import print_json


def _file_logging(state_root: Path, agent_id: str) -> None:
    from attractor.store.atomic import ensure_private_dir

    logs = ensure_private_dir(state_root / "logs")
    path = logs / f"{agent_id}.log"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))  # private, like all state
    os.chmod(path, 0o600)  # one made before logs were private
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))


def _socket(args: argparse.Namespace, project: Path) -> str:
    from attractor.tmux import socket_name_for

    return socket_name_for(project, args.tmux_socket)


def run_guardian(args: argparse.Namespace) -> int:
    from attractor.layers.guardian import Guardian, GuardianConfig

    state = state_from(args)
    cfg = GuardianConfig(state=state, run_id=args.run, tmux_socket=_socket(args, Path.cwd()), log_level=args.log_level)
    _file_logging(state.root, cfg.agent_id)
    try:
        return Guardian(cfg).run()
    except Exception:
        logging.getLogger("attractor.layers.guardian").exception("guardian %s ended with an error", args.run)
        raise


def _runner_config(args: argparse.Namespace) -> Any:
    from attractor.layers.runner import RunnerConfig

    target = Path(args.target_dir or ".").resolve()
    state = state_from(args)
    pipeline = Path(args.pipeline).resolve() if args.pipeline else state.runs / args.run / "pipeline.dot"
    return RunnerConfig(state=state, run_id=args.run, node=args.node, target_dir=target,
                        pipeline_path=pipeline, agent=args.agent or "scripted",
                        agent_cmd=args.agent_cmd, tmux_socket=_socket(args, target), target_branch=args.target)


def run_runner(args: argparse.Namespace) -> int:
    from attractor.layers.runner import Runner

    cfg = _runner_config(args)
    _file_logging(cfg.state.root, cfg.agent_id)
    try:
        return Runner(cfg).run()
    except Exception:
        logging.getLogger("attractor.layers.runner").exception("runner %s ended with an error", args.node)
        raise


def run_spawn_runner(args: argparse.Namespace) -> int:
    from attractor.engines.pipeline import check_runner_inputs
    from attractor.layers.layout import session_name
    from attractor.layers.runner import spawn_runner

    cfg = _runner_config(args)
    # everything checked before anything is written (the guardian checked its inputs at launch)
    check_runner_inputs(cfg.run_id, cfg.node, cfg.pipeline_path, cfg.target_dir, cfg.target_branch,
                        session=session_name(cfg.run_id, "runner", cfg.node))
    ident = spawn_runner(cfg, log_level=args.log_level if args.log_level != "WARNING" else "INFO")
    info = {"pid": ident.pid, "tmux_socket": cfg.tmux_socket, "tmux_session": ident.tmux_session,
            "pane_id": ident.pane_id, "state_file": str(cfg.state.identities / f"{cfg.agent_id}.json"),
            "hook_file": str(cfg.state.hooks / f"{cfg.agent_id}.json")}
    if args.json:
        print_json(info, sort_keys=False)
    else:
        for key, value in info.items():
            print(f"{key:<12} {value}")
    return 0


def run_spawn_orchestrator(args: argparse.Namespace) -> int:
    from attractor import gitops
    from attractor.layers.runner import Runner
    from attractor.store import hooks

    runner = Runner(_runner_config(args))
    hooks.create_hook(runner.state, "runner", args.node, node=args.node, run_id=args.run)
    gitops.exclude_path(runner.cfg.target_dir, ".claude/")
    gitops.ensure_worktree(runner.cfg.target_dir, runner.worktree, runner.branch, base=runner.cfg.target_branch)
    runner.spawn_orchestrator(args.attempt)
    ident = runner.orchestrator()
    assert ident is not None
    print(f"pid          {ident.pid}\ntmux_session {ident.tmux_session}\npane_id      {ident.pane_id}")
    return 0


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run id")
    parser.add_argument("--node", required=True, help="pipeline node name")
    parser.add_argument("--pipeline", help="the DOT pipeline file (default: the run's copy, runs/RUN/pipeline.dot)")
    add_target_dir_option(parser)
    parser.add_argument("--agent", default="scripted")
    parser.add_argument("--agent-cmd")
    parser.add_argument("--target", default="main", help="target branch (default: main)")
    add_state_dir_option(parser)
    add_tmux_socket_option(parser)


def add_parser(subparsers: Any) -> None:
    g = subparser(subparsers, "guardian", "layer 1: own a pipeline run (started by `attractor run`)",
                  "attractor guardian --run demo-20261124-010203-001 --state-dir /tmp/demo/.claude/state")
    g.add_argument("--run", required=True, help="run id")
    add_state_dir_option(g)
    add_tmux_socket_option(g)
    g.set_defaults(func=run_guardian)

    r = subparser(subparsers, "runner", "layer 2: own one node (started by the guardian)",
                  "attractor runner --run R --node impl_auth --pipeline p.dot --target-dir ~/src/app")
    _node_options(r)
    r.set_defaults(func=run_runner)

    s = subparser(subparsers, "spawn-runner", "start one runner in tmux; print its pid, session and state file",
                  "attractor spawn-runner --run R --node impl_auth --pipeline p.dot --target-dir ~/src/app")
    _node_options(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_spawn_runner)

    o = subparser(subparsers, "spawn-orchestrator", "start one node's agent in a tmux pane in its worktree",
                  "attractor spawn-orchestrator --run R --node impl_auth --pipeline p.dot --target-dir ~/src/app")
    _node_options(o)
    o.add_argument("--attempt", type=int, default=1)
    o.set_defaults(func=run_spawn_orchestrator)


