"""What the commands print: aligned tables for humans, `--json` documents, a group's help.

Every command module prints through these, so a table, a JSON document or the help of a group
given no action looks the same in every group. Standard library only: the hot commands import
this module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attractor.errors import EXIT_USAGE

if TYPE_CHECKING:
    import argparse

    from attractor.errors import CorruptStateError


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, strip: bool = True) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded, and with
    `strip` each line loses its trailing blanks (an empty last cell leaves none)."""
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers) - 1)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        line = "  ".join([*cells, str(row[-1])])
        lines.append(line.rstrip() if strip else line)
    return "\n".join(lines)


def format_age(seconds: float) -> str:
    if seconds < 0:
        return "future"
    if seconds < 90:
        return f"{seconds:.1f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def print_json(data: Any, *, sort_keys: bool = True) -> None:
    """The `--json` output: indented by two, keys sorted unless the document keeps its order."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def report_problems(problems: Sequence[CorruptStateError]) -> None:
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)


def problems_json(problems: Sequence[CorruptStateError]) -> list[dict[str, str | None]]:
    return [
        {"path": str(p.path), "problem": p.problem,
         "moved_to": str(p.moved_to) if p.moved_to else None}
        for p in problems
    ]


def group_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The handler of a command group given no action: its help on stderr, bad usage."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return show
