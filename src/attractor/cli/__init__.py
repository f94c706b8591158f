"""The `attractor` command: one argparse parser, one subcommand group per module in this package.

Each group module exports `add_parser(subparsers)` and `run(args) -> int`, and keeps its
top-level imports light: agents call `attractor signal send`, `identity update-liveness` and
`hook update-phase` many times an hour, so heavy libraries (libtmux, GitPython, pydot, watchdog)
are imported inside the functions that need them, never at module import.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from attractor import __version__
from attractor.errors import EXIT_USAGE, UsageError, error_handler

# Subcommand group modules, in the order `--help` lists them.
GROUPS = (
    "identity",
    "hook",
    "signal",
    "merge_queue",
    "pipeline",
    "run",
    "status",
    "agent",
    "layers",
    "demo",
)


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line (`error: …`) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (default: $ATTRACTOR_STATE_DIR, else <repo>/.claude/state)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_tmux_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tmux-socket",
        metavar="NAME",
        help="tmux socket name (-L); default: $ATTRACTOR_TMUX_SOCKET, else attractor-<project-hash>",
    )


def add_target_dir_option(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--target-dir",
        metavar="DIR",
        required=required,
        help="the git repository the agents work on (default: the current directory)",
    )


def subparser(
    subparsers: argparse._SubParsersAction[Parser], name: str, help_text: str, example: str = ""
) -> Parser:
    """Add a subcommand with a help text and an example shown under `--help`."""
    epilog = f"example:\n  {example}" if example else None
    parser: Parser = subparsers.add_parser(
        name, help=help_text, description=help_text, epilog=epilog, formatter_class=_Formatter
    )
    return parser


def state_dir_from(args: argparse.Namespace) -> Path:
    from attractor.statedir import resolve_state_path

    return resolve_state_path(getattr(args, "state_dir", None), getattr(args, "target_dir", None))


def build_parser() -> Parser:
    parser = Parser(
        prog="attractor",
        description="Run a pipeline of AI coding agents on one git repository.",
        formatter_class=_Formatter,
        epilog="example:\n  attractor run pipelines/demo.dot --target-dir /tmp/demo --agent scripted",
    )
    parser.add_argument("--version", action="version", version=f"attractor {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("ATTRACTOR_LOG_LEVEL", "WARNING"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level for stderr (default: WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for group in GROUPS:
        try:
            module = importlib.import_module(f"attractor.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name == f"attractor.cli.{group}":
                continue  # a group not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_box: list[argparse.Namespace] = []

    def _run() -> int:
        parser = build_parser()
        args = parser.parse_args(list(argv) if argv is not None else None)
        args_box.append(args)
        logging.basicConfig(
            level=getattr(logging, args.log_level),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        result: int = args.func(args)
        return result

    def _log_dir() -> Path | None:
        if not args_box:
            return None
        try:
            return state_dir_from(args_box[0]) / "logs"
        except Exception:
            return None

    return error_handler(_run, _log_dir)


def entry() -> None:
    raise SystemExit(main())
