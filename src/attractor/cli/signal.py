"""`attractor signal send|list|wait|sweep`: the signal inboxes from the command line.

`signal send` is a hot command (agents call it many times an hour, one process each): this
module imports only the standard library at top level, and `send` never loads watchdog.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from attractor import names
from attractor.cli import Parser, subparser
from attractor.cli._flags import add_json_option, add_state_dir_option, state_from
from attractor.cli._output import format_table, group_help, print_json, problems_json
from attractor.cli.hot import DEFAULT_SENDER
from attractor.errors import EXIT_OK, BadInputError

if TYPE_CHECKING:
    from attractor.store.signals import Signal

ENV_AGENT_ID = names.ENV_AGENT_ID
BOX_CHOICES = ("new", "cur", "done", "all")


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    group = subparser(
        subparsers, "signal", "send, list and wait for signals between agents",
        "attractor signal send ORCHESTRATOR_DONE --to runner-impl_auth "
        "--payload '{\"node\": \"impl_auth\"}'",
    )
    commands = group.add_subparsers(dest="signal_command", metavar="COMMAND", parser_class=Parser)

    send = subparser(
        commands, "send", "deliver one signal into an agent's inbox; prints the signal id",
        "attractor signal send VALIDATION_PASSED --to runner-impl_auth "
        "--payload '{\"node\": \"impl_auth\", \"commit\": \"abc123\"}'",
    )
    send.add_argument(
        "kind", metavar="KIND", help="signal kind, e.g. ORCHESTRATOR_DONE, MERGE_READY"
    )
    send.add_argument("--to", required=True, metavar="AGENT", help="recipient agent id")
    send.add_argument(
        "--from", dest="sender", metavar="SENDER",
        help=f"sender agent id (default: ${ENV_AGENT_ID}, else {DEFAULT_SENDER})",
    )
    send.add_argument("--payload", metavar="JSON", help="the kind's payload as a JSON object")
    send.add_argument(
        "--epoch", type=int, metavar="N",
        help="recipient spawn epoch the signal is for (default: its current one)",
    )
    add_state_dir_option(send)
    add_json_option(send)
    send.set_defaults(func=run_send)

    lst = subparser(
        commands, "list", "list signals in the inboxes",
        "attractor signal list --agent runner-impl_auth --box all",
    )
    lst.add_argument("--agent", metavar="AGENT", help="one agent's inbox (default: every inbox)")
    lst.add_argument(
        "--box", choices=BOX_CHOICES, default="new",
        help="new (pending), cur (claimed), done (handled) or all (default: new)",
    )
    add_state_dir_option(lst)
    add_json_option(lst)
    lst.set_defaults(func=run_list)

    wait = subparser(
        commands, "wait", "block until a signal arrives, claim it and print it (exit 1 on timeout)",
        "attractor signal wait --agent runner-impl_auth --kind MERGE_COMPLETE --kind MERGE_FAILED "
        "--timeout 600",
    )
    wait.add_argument("--agent", required=True, metavar="AGENT", help="whose inbox to wait on")
    wait.add_argument(
        "--kind", action="append", metavar="KIND", help="accept only this kind (repeatable)"
    )
    wait.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after SECONDS")
    add_state_dir_option(wait)
    add_json_option(wait)
    wait.set_defaults(func=run_wait)

    sweep = subparser(
        commands, "sweep",
        "return signals claimed by dead consumers to new/ and delete orphaned temp files",
        "attractor signal sweep --agent guardian-main",
    )
    sweep.add_argument("--agent", metavar="AGENT", help="one agent's inbox (default: every inbox)")
    add_state_dir_option(sweep)
    add_json_option(sweep)
    sweep.set_defaults(func=run_sweep)

    group.set_defaults(func=group_help(group))


def _parse_payload(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError("--payload", f"not valid JSON ({exc}); pass a JSON object") from None
    except RecursionError:
        raise BadInputError("--payload", "JSON nested too deeply; a payload is a flat object") from None
    if not isinstance(data, dict):
        raise BadInputError("--payload", f"expected a JSON object, got {type(data).__name__}")
    return data


def run_send(args: argparse.Namespace) -> int:
    from attractor.store import signals

    sender = args.sender or os.environ.get(ENV_AGENT_ID) or DEFAULT_SENDER
    signal = signals.send(
        state_from(args), args.kind, to=args.to, sender=sender,
        payload=_parse_payload(args.payload), epoch=args.epoch,
    )
    if args.json:
        print_json(signal.to_json())
    else:
        print(signal.id)
    return EXIT_OK


def _row(box: str, signal: Signal) -> list[str]:
    return [
        box, signal.recipient, signal.id, signal.kind.value, signal.sender,
        "-" if signal.epoch is None else str(signal.epoch), signal.outcome or "-",
    ]


def run_list(args: argparse.Namespace) -> int:
    from attractor.store import signals

    state = state_from(args)
    boxes = signals.BOXES if args.box == "all" else (args.box,)
    agents = [args.agent] if args.agent else signals.inbox_agents(state)
    entries: list[tuple[str, Signal]] = []
    corrupt: list[dict[str, str | None]] = []
    for agent in agents:
        inbox = signals.Inbox(state, agent)
        for box in boxes:
            entries.extend((box, s) for s in inbox.list(box))
        corrupt.extend(problems_json(inbox.corrupt))
    if args.json:
        print_json({
            "schema": 1,
            "signals": [{"box": box, **s.to_json()} for box, s in entries],
            "corrupt": corrupt,
        })
    else:
        header = ["BOX", "AGENT", "ID", "KIND", "FROM", "EPOCH", "OUTCOME"]
        print(format_table(header, [_row(box, s) for box, s in entries]))
        for item in corrupt:
            print(
                f"warning: corrupt signal file {item['path']}: {item['problem']}; "
                f"moved aside to {item['moved_to']}",
                file=sys.stderr,
            )
    return EXIT_OK


def run_wait(args: argparse.Namespace) -> int:
    from attractor.store import signals

    if args.timeout is not None and args.timeout < 0:
        raise BadInputError("--timeout", f"must be zero or more seconds, got {args.timeout:g}")
    kinds = signals.parse_kinds(args.kind)
    signal = signals.wait_for(state_from(args), args.agent, kinds=kinds, timeout=args.timeout)
    if args.json:
        print_json(signal.to_json())
    else:
        print(f"{signal.id} {signal.kind.value} from {signal.sender}: "
              f"{json.dumps(signal.payload.to_json(), sort_keys=True)}")
    return EXIT_OK


def run_sweep(args: argparse.Namespace) -> int:
    from attractor.store import signals

    state = state_from(args)
    returned = signals.sweep_dead_claims(state, args.agent)
    removed = signals.remove_orphan_tmp(state, args.agent)
    if args.json:
        print_json({"schema": 1, "returned": returned, "orphan_tmp_removed": removed})
    else:
        print(f"returned {returned} claim(s) of dead consumers to new/; "
              f"removed {removed} orphaned temp file(s)")
    return EXIT_OK
