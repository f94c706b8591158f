"""The `attractor` command: one argparse parser, to which each module of this package adds its
commands. `GROUPS` maps the modules to the commands they add, in the order `--help` lists them:

    identity      attractor identity ACTION
    hook          attractor hook ACTION
    signal        attractor signal ACTION
    merge_queue   attractor merge-queue ACTION (also: attractor queue ACTION)
    pipeline      attractor pipeline ACTION
    run           attractor run
    status        attractor status, attractor stop
    agent         attractor agent ACTION
    agent_hook    attractor agent-hook EVENT
    layers        attractor guardian, runner, spawn-runner, spawn-orchestrator
    demo          attractor demo
    daemon        attractor daemon ACTION, attractor rpc
    dashboard     attractor dashboard

`build_parser` imports only the module whose command the command line names (all of them when
it names none, as for `attractor --help`) and calls its `add_parser(subparsers)`, which sets each
command's handler as `func`: a `run_<action>` function, or `_output.group_help` for a group
given no action. `main` calls `args.func(args)` inside `error_handler`, which maps exceptions to
exit codes; with no `func` (`attractor` alone, or `attractor merge-queue` with no action) it
prints the top-level help and exits 2. Shared options come from `_flags`; tables, `--json` and
help from `_output`.

`main` first offers the command line to `hot` (the hot commands' short path, which imports
neither argparse nor the stores); whatever `hot` does not take runs through `_parser` (the
argparse parser, `GROUPS`, and the stores). This package imports only `sys` at the top, and
`Parser`, `subparser`, `build_parser`, `GROUPS` and `state_dir_from` are loaded on first use.

The modules keep their top-level imports light: agents call `attractor signal send`,
`identity update-liveness` and `hook update-phase` many times an hour, so heavy modules
(pydot, watchdog, and the tmux and git doors) are imported inside the functions that need them,
never at module import.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from attractor.cli._flags import state_dir_from as state_dir_from
    from attractor.cli._parser import GROUPS as GROUPS
    from attractor.cli._parser import Parser as Parser
    from attractor.cli._parser import build_parser as build_parser
    from attractor.cli._parser import subparser as subparser

def main(argv: Sequence[str] | None = None) -> int:
    words = list(argv) if argv is not None else sys.argv[1:]
    from attractor.cli import hot

    code = hot.run(words)
    if code is not None:
        return code
    from attractor.cli import _parser

    return _parser.main(words)


def entry() -> None:
    raise SystemExit(main())


def run_flag_form(
    group: str, actions: dict[str, tuple[str, tuple[str, ...]]], argv: Sequence[str], prog: str
) -> int:
    """Translate the flag form the `scripts/` shims accept (`--update-liveness ROLE NAME …`)
    into `attractor GROUP ACTION ROLE NAME …` and run it. `actions` maps each action flag to
    its subcommand and the metavars of the values that follow it; every other argument is
    passed through after them (`--json`, `--state-dir DIR`, `--timeout S` …)."""
    from attractor.errors import EXIT_OK, EXIT_USAGE

    args = list(argv)
    usage = f"usage: {prog} {{{' | '.join(actions)}}} [options]"
    if not args or args[0] in ("-h", "--help"):
        print(usage, file=sys.stdout if args else sys.stderr)
        return EXIT_OK if args else EXIT_USAGE
    front: list[str] = []
    if args[0] == "--log-level" and len(args) > 1:
        front, args = args[:2], args[2:]
    elif args[0].startswith("--log-level="):
        front, args = args[:1], args[1:]
    found = [i for i, arg in enumerate(args) if arg in actions]
    if len(found) != 1:
        what = "no action given" if not found else "give only one action"
        print(f"error: {prog}: {what}; {usage[len('usage: '):]}", file=sys.stderr)
        return EXIT_USAGE
    index = found[0]
    action, metavars = actions[args[index]]
    values = args[index + 1 : index + 1 + len(metavars)]
    pairs = zip(values, metavars, strict=False)
    short = len(values) < len(metavars) or any(
        value.startswith("-") and meta != "TEXT" for value, meta in pairs
    )
    if short:
        print(f"error: {prog}: {args[index]} needs {' '.join(metavars)}", file=sys.stderr)
        return EXIT_USAGE
    rest = args[:index] + args[index + 1 + len(metavars) :]
    return main([*front, group, action, *values, *rest])


_LAZY = {"Parser": "attractor.cli._parser", "subparser": "attractor.cli._parser",
         "build_parser": "attractor.cli._parser", "GROUPS": "attractor.cli._parser",
         "state_dir_from": "attractor.cli._flags"}


def __getattr__(name: str) -> object:
    """`Parser`, `subparser`, `build_parser`, `GROUPS` and `state_dir_from`, imported on first use so
    that the hot commands never load argparse."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
