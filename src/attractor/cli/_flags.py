"""The options many commands share (`--state-dir`, `--json`, `--tmux-socket`, `--target-dir`)
and the state directory they name.

Standard library only at import: the hot commands import this module; the state directory
module is imported when a command resolves its state.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attractor.store.statedir import StateDir

TMUX_SOCKET_HELP = "tmux socket name (-L); default: $ATTRACTOR_TMUX_SOCKET, else attractor-<project-hash>"


def add_state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (default: $ATTRACTOR_STATE_DIR, else <repo>/.claude/state)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_tmux_socket_option(parser: argparse.ArgumentParser, help_text: str = TMUX_SOCKET_HELP) -> None:
    parser.add_argument("--tmux-socket", metavar="NAME", help=help_text)


def add_target_dir_option(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--target-dir",
        metavar="DIR",
        required=required,
        help="the git repository the agents work on (default: the current directory)",
    )


def state_dir_from(args: argparse.Namespace, target_dir: Path | str | None = None) -> Path:
    """The state directory the command line names: `--state-dir`, else $ATTRACTOR_STATE_DIR,
    else under `target_dir` (default: `--target-dir`, else the enclosing repository)."""
    from attractor.store.statedir import resolve_state_path

    where = target_dir if target_dir is not None else getattr(args, "target_dir", None)
    return resolve_state_path(getattr(args, "state_dir", None), where)


def state_from(args: argparse.Namespace, target_dir: Path | str | None = None) -> StateDir:
    """`state_dir_from` opened as a `StateDir`."""
    from attractor.store.statedir import StateDir

    return StateDir(state_dir_from(args, target_dir))
