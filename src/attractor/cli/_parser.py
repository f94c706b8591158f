"""The argparse half of the `attractor` command (see `attractor.cli`): the parser, its help
formatter, and `main` for every command line the hot commands' short path (`hot`) leaves."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from attractor import __version__, names
from attractor.cli._flags import state_dir_from
from attractor.errors import EXIT_USAGE, UsageError, error_handler

# Subcommand group modules, in the order `--help` lists them, with the commands each adds. Only
# the module of the command being run is imported: the hot commands stay fast.
GROUPS: dict[str, tuple[str, ...]] = {
    "identity": ("identity",),
    "hook": ("hook",),
    "signal": ("signal",),
    "merge_queue": ("merge-queue", "queue"),
    "pipeline": ("pipeline",),
    "run": ("run",),
    "status": ("status", "stop", "pause", "unpause"),
    "logs": ("logs",),
    "agent": ("agent",),
    "agent_hook": ("agent-hook",),
    "layers": ("guardian", "runner", "spawn-runner", "spawn-orchestrator"),
    "demo": ("demo",),
    "daemon": ("daemon", "rpc"),
    "dashboard": ("dashboard",),
}
_OPTIONS_WITH_VALUE = frozenset({"--log-level"})


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, if any (skipping global options)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def _columns() -> int:
    """The terminal's width as argparse would find it ($COLUMNS, the terminal, else 80), without
    the `shutil` import argparse makes for it: 3 ms of every hot command, for a help text."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line (`error: …`) with exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def subparser(
    subparsers: argparse._SubParsersAction[Parser], name: str, help_text: str, example: str = "",
    aliases: Sequence[str] = (),
) -> Parser:
    """Add a subcommand with a help text and an example shown under `--help`."""
    epilog = f"example:\n  {example}" if example else None
    parser: Parser = subparsers.add_parser(
        name, help=help_text, description=help_text, epilog=epilog, formatter_class=_Formatter,
        aliases=list(aliases),
    )
    return parser


def build_parser(argv: Sequence[str] | None = None) -> Parser:
    parser = Parser(
        prog="attractor",
        description="Run a pipeline of AI coding agents on one git repository.",
        formatter_class=_Formatter,
        epilog="example:\n  attractor run pipelines/demo.dot --target-dir /tmp/demo --agent scripted",
    )
    parser.add_argument("--version", action="version", version=f"attractor {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get(names.ENV_LOG_LEVEL, "WARNING"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level for stderr (default: WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    word = _command_word(argv) if argv is not None else None
    groups = [g for g, commands in GROUPS.items() if word in commands] or list(GROUPS)
    for group in groups:
        importlib.import_module(f"attractor.cli.{group}").add_parser(subparsers)
    return parser


def main(words: list[str]) -> int:
    """The whole command line through argparse, inside `error_handler`."""
    args_box: list[argparse.Namespace] = []

    def _run() -> int:
        parser = build_parser(words)
        args = parser.parse_args(words)
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
