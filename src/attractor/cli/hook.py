"""`attractor hook …`: hooks (phase, history, resumption instructions) from the command line.

`update-phase` is a hot command: this module imports only argparse at the top and the hook
store inside the functions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attractor.cli import Parser, subparser
from attractor.cli._flags import add_json_option, add_state_dir_option, state_from
from attractor.cli._output import format_table, group_help, print_json, problems_json, report_problems
from attractor.cli.hot import hook_line
from attractor.errors import EXIT_OK

if TYPE_CHECKING:
    from attractor.errors import CorruptStateError
    from attractor.store.hooks import Hook

JSON_SCHEMA = 1  # schema of the envelope `list --json` prints


def _one_line(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _print_hook(hook: Hook, as_json: bool, verb: str) -> None:
    if as_json:
        print_json(hook.to_json())
    else:
        print(hook_line(verb, hook.agent_id, hook.phase.value, hook.last_commit))


def run_create(args: argparse.Namespace) -> int:
    from attractor.store import hooks

    hook = hooks.create_hook(state_from(args), args.role, args.name, node=args.node,
                             instructions=args.instructions)
    _print_hook(hook, args.json, "hook")
    return EXIT_OK


def run_read(args: argparse.Namespace) -> int:
    from attractor.store import hooks

    hook = hooks.read_hook(state_from(args), args.role, args.name)
    if args.json:
        print_json(hook.to_json())
        return EXIT_OK
    fields = [
        ("hook", hook.agent_id), ("node", hook.node or "-"), ("phase", hook.phase.value),
        ("attempts", str(hook.attempts)), ("last commit", hook.last_commit or "-"),
        ("updated", hook.updated_at), ("created", hook.created_at),
        ("instructions", _one_line(hook.resumption_instructions) or "-"),
    ]
    print(format_table(["FIELD", "VALUE"], [list(f) for f in fields]))
    if hook.history:
        print()
        rows = [[str(e.get("at")), str(e.get("from") or "new"), str(e.get("to")),
                 str(e.get("commit") or "-"), _one_line(str(e.get("note") or ""))]
                for e in hook.history]
        print(format_table(["AT", "FROM", "TO", "COMMIT", "NOTE"], rows))
    return EXIT_OK


def run_update_phase(args: argparse.Namespace) -> int:
    from attractor.store import hooks

    hook = hooks.update_phase(state_from(args), args.role, args.name, args.phase, note=args.note,
                              commit=args.commit)
    _print_hook(hook, args.json, "hook")
    return EXIT_OK


def run_update_resumption(args: argparse.Namespace) -> int:
    from attractor.store import hooks

    text = sys.stdin.read() if args.text == "-" else args.text
    hook = hooks.update_resumption_instructions(state_from(args), args.role, args.name, text)
    _print_hook(hook, args.json, "instructions set for")
    return EXIT_OK


def run_mark_merged(args: argparse.Namespace) -> int:
    from attractor.store import hooks

    hook = hooks.mark_merged(state_from(args), args.role, args.name, args.commit)
    _print_hook(hook, args.json, "hook")
    return EXIT_OK


def run_wisdom(args: argparse.Namespace) -> int:
    from attractor.store import hooks

    hook = hooks.read_hook(state_from(args), args.role, args.name)
    sys.stdout.write(hooks.build_wisdom_prompt_block(hook))
    return EXIT_OK


def _hook_rows(records: Sequence[Hook]) -> list[list[str]]:
    return [[h.agent_id, h.node or "-", h.phase.value, str(h.attempts), h.last_commit or "-",
             h.updated_at] for h in records]


def run_list(args: argparse.Namespace) -> int:
    from attractor.store import hooks

    problems: list[CorruptStateError] = []
    records = hooks.list_hooks(state_from(args), problems)
    report_problems(problems)
    if args.json:
        envelope: dict[str, Any] = {
            "schema": JSON_SCHEMA,
            "hooks": [h.to_json() for h in records],
            "problems": problems_json(problems),
        }
        print_json(envelope)
    elif records:
        headers = ["AGENT", "NODE", "PHASE", "ATTEMPTS", "LAST COMMIT", "UPDATED"]
        print(format_table(headers, _hook_rows(records)))
    else:
        print("no hooks")
    return EXIT_OK


def _role_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", metavar="ROLE", help="runner or orchestrator (any known role)")
    parser.add_argument("name", metavar="NAME", help="the agent's name, e.g. the node: impl_auth")


def _common(parser: argparse.ArgumentParser, json_option: bool = True) -> None:
    add_state_dir_option(parser)
    if json_option:
        add_json_option(parser)


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    group = subparser(subparsers, "hook", "hooks: phase, history and resumption instructions",
                      "attractor hook update-phase runner impl_auth impl_complete --commit ab12")
    actions = group.add_subparsers(dest="hook_command", metavar="ACTION", parser_class=Parser)
    group.set_defaults(func=group_help(group))

    p = subparser(actions, "create", "create the hook in phase spawned (an existing one is kept)",
                  "attractor hook create runner impl_auth --node impl_auth")
    _role_name(p)
    p.add_argument("--node", help="the pipeline node this hook works on")
    p.add_argument("--instructions", default="", metavar="TEXT", help="initial instructions")
    _common(p)
    p.set_defaults(func=run_create)

    p = subparser(actions, "read", "show the hook and its phase history",
                  "attractor hook read runner impl_auth --json")
    _role_name(p)
    _common(p)
    p.set_defaults(func=run_read)

    p = subparser(actions, "update-phase", "move the hook to PHASE (checked; same phase: no-op)",
                  "attractor hook update-phase runner impl_auth executing --note 'agent started'")
    _role_name(p)
    p.add_argument("phase", metavar="PHASE", help="spawned, executing, impl_complete, validating, "
                   "merge_ready, merged or failed")
    p.add_argument("--note", default="", help="why (kept in the hook's history)")
    p.add_argument("--commit", metavar="SHA", help="the commit this phase refers to")
    _common(p)
    p.set_defaults(func=run_update_phase)

    p = subparser(actions, "update-resumption", "set the instructions the next session reads",
                  "attractor hook update-resumption runner impl_auth 'fix tests/test_auth.py'")
    _role_name(p)
    p.add_argument("text", metavar="TEXT", help="the instructions ('-' reads them from stdin)")
    _common(p)
    p.set_defaults(func=run_update_resumption)

    p = subparser(actions, "mark-merged", "merge_ready -> merged, recording the merged commit",
                  "attractor hook mark-merged runner impl_auth --commit 1a2b3c4")
    _role_name(p)
    p.add_argument("--commit", required=True, metavar="SHA", help="the merged commit")
    _common(p)
    p.set_defaults(func=run_mark_merged)

    p = subparser(actions, "wisdom", "print the block a respawned agent's prompt starts with",
                  "attractor hook wisdom orchestrator impl_auth")
    _role_name(p)
    _common(p, json_option=False)
    p.set_defaults(func=run_wisdom)

    p = subparser(actions, "list", "list every hook", "attractor hook list --json")
    _common(p)
    p.set_defaults(func=run_list)
