"""`attractor identity …`: the identity registry from the command line.

`update-liveness` is a hot command (agents heartbeat with it): this module imports only argparse
at the top and the registry inside the functions.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attractor.cli import Parser, subparser
from attractor.cli._flags import add_json_option, add_state_dir_option, state_from
from attractor.cli._output import format_age, format_table, group_help, print_json, problems_json, report_problems
from attractor.cli.hot import record_line
from attractor.errors import EXIT_OK, BadInputError

if TYPE_CHECKING:
    from attractor.errors import CorruptStateError
    from attractor.store.identities import Identity

JSON_SCHEMA = 1  # schema of the envelopes `list --json` and `find-stale --json` print
DEFAULT_STALE_TIMEOUT = 60.0


def _identity_table(records: Sequence[Identity]) -> str:
    now = time.time()
    rows = [
        [r.agent_id, str(r.epoch), r.status.value, str(r.pid or "-"),
         format_age(r.heartbeat_age(now)), str(r.crash_count), r.pane_id or "-",
         r.session_id or "-", r.worktree or "-"]
        for r in records
    ]
    headers = ["AGENT", "EPOCH", "STATUS", "PID", "HEARTBEAT", "CRASHES", "PANE", "SESSION",
               "WORKTREE"]
    return format_table(headers, rows)


def _print_record(record: Identity, as_json: bool, verb: str) -> None:
    if as_json:
        print_json(record.to_json())
    else:
        print(record_line(verb, record.agent_id, record.status.value, record.epoch, record.pid))


# --------------------------------------------------------------------------- commands


def run_create(args: argparse.Namespace) -> int:
    from attractor.store import identities

    record = identities.create_identity(
        state_from(args), args.role, args.name,
        session_id=args.session_id,
        worktree=os.path.abspath(args.worktree) if args.worktree else None,
        pid=args.pid, tmux_socket=args.tmux_socket, tmux_session=args.tmux_session,
        pane_id=args.pane_id,
    )
    _print_record(record, args.json, "created")
    return EXIT_OK


def run_update_liveness(args: argparse.Namespace) -> int:
    from attractor.store import identities

    record = identities.update_liveness(state_from(args), args.role, args.name, pid=args.pid)
    _print_record(record, args.json, "heartbeat")
    return EXIT_OK


def run_update(args: argparse.Namespace) -> int:
    from attractor.store import identities

    fields = {
        key: getattr(args, key) for key in identities.UPDATABLE_FIELDS
        if getattr(args, key) is not None
    }
    if not fields:
        raise BadInputError("identity update", "give at least one of --pid, --pane-id, "
                            "--tmux-session, --tmux-socket, --worktree, --session-id")
    if "worktree" in fields:
        fields["worktree"] = os.path.abspath(fields["worktree"])
    record = identities.update_fields(state_from(args), args.role, args.name, **fields)
    _print_record(record, args.json, "updated")
    return EXIT_OK


def run_set_status(args: argparse.Namespace) -> int:
    from attractor.store import identities

    status = getattr(args, "status", None) or args.fixed_status
    record = identities.set_status(state_from(args), args.role, args.name, status, args.reason)
    _print_record(record, args.json, "marked")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    from attractor.store import identities

    record = identities.get(state_from(args), args.role, args.name)
    if args.json:
        print_json(record.to_json())
        return EXIT_OK
    fields = [
        ("agent", record.agent_id), ("epoch", str(record.epoch)),
        ("status", record.status.value), ("pid", str(record.pid or "-")),
        ("pid start", "-" if record.pid_start is None else f"{record.pid_start} (clock ticks since boot)"),
        ("heartbeat", f"{record.last_heartbeat} ({format_age(record.heartbeat_age())} ago)"),
        ("created", record.created_at), ("crashes", str(record.crash_count)),
        ("tmux", f"socket {record.tmux_socket or '-'}, session {record.tmux_session or '-'}, "
                 f"pane {record.pane_id or '-'}"),
        ("worktree", record.worktree or "-"), ("session id", record.session_id or "-"),
    ]
    print(format_table(["FIELD", "VALUE"], [list(f) for f in fields]))
    if record.history:
        print()
        rows = [[str(e.get("at")), str(e.get("from") or "new"), str(e.get("to")),
                 str(e.get("reason") or "")] for e in record.history]
        print(format_table(["AT", "FROM", "TO", "REASON"], rows))
    return EXIT_OK


def _listing(args: argparse.Namespace, stale_timeout: float | None) -> int:
    from attractor.store import identities

    problems: list[CorruptStateError] = []
    state = state_from(args)
    if stale_timeout is None:
        records = identities.list_identities(state, problems)
    else:
        records = identities.find_stale(state, stale_timeout, problems=problems)
    report_problems(problems)
    if args.json:
        envelope: dict[str, Any] = {
            "schema": JSON_SCHEMA,
            "identities": [r.to_json() for r in records],
            "problems": problems_json(problems),
        }
        if stale_timeout is not None:
            envelope["stale_timeout"] = stale_timeout
        print_json(envelope)
    elif records:
        print(_identity_table(records))
    else:
        print("no stale identities" if stale_timeout is not None else "no identities registered")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    return _listing(args, args.timeout if args.stale_only else None)


def run_find_stale(args: argparse.Namespace) -> int:
    return _listing(args, args.timeout)


# --------------------------------------------------------------------------- parser


def _role_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", metavar="ROLE", help="launcher, guardian, runner, orchestrator, …")
    parser.add_argument("name", metavar="NAME", help="the agent's name, e.g. the node: impl_auth")


def _common(parser: argparse.ArgumentParser) -> None:
    add_state_dir_option(parser)
    add_json_option(parser)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0 seconds")
    return value


def _pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive process id")
    return value


def _field_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid", type=_pid, help="the process holding the identity")
    parser.add_argument("--session-id", help="the agent CLI's session id")
    parser.add_argument("--worktree", metavar="DIR", help="the agent's git worktree")
    parser.add_argument("--tmux-session", metavar="NAME", help="tmux session of the agent")
    parser.add_argument("--tmux-socket", metavar="NAME", help="tmux socket name (-L)")
    parser.add_argument("--pane-id", metavar="%N", help="tmux pane id, e.g. %%12")


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    group = subparser(subparsers, "identity", "the identity registry: one record per agent",
                      "attractor identity list --stale-only --timeout 120")
    actions = group.add_subparsers(dest="identity_command", metavar="ACTION", parser_class=Parser)
    group.set_defaults(func=group_help(group))

    p = subparser(actions, "create", "register a new incarnation (epoch + 1) in status spawning",
                  "attractor identity create runner impl_auth --session-id s1 --worktree .")
    _role_name(p)
    _field_options(p)
    _common(p)
    p.set_defaults(func=run_create)

    p = subparser(actions, "update-liveness", "heartbeat: stamp the record, make it active",
                  "attractor identity update-liveness runner impl_auth")
    _role_name(p)
    p.add_argument("--pid", type=_pid, help="also record this pid")
    _common(p)
    p.set_defaults(func=run_update_liveness)

    p = subparser(actions, "update", "set pid, pane, tmux session/socket, worktree or session id",
                  "attractor identity update runner impl_auth --pane-id %12")
    _role_name(p)
    _field_options(p)
    _common(p)
    p.set_defaults(func=run_update)

    p = subparser(actions, "set-status", "move the record to STATUS (checked transition)",
                  "attractor identity set-status runner impl_auth stale --reason 'no heartbeat'")
    _role_name(p)
    p.add_argument("status", metavar="STATUS", help="spawning, active, stale, crashed, "
                   "respawning, terminated or quarantined")
    p.add_argument("--reason", default="", help="why (kept in the record's history)")
    _common(p)
    p.set_defaults(func=run_set_status)

    for status, text in (
        ("crashed", "mark the agent crashed (counts a crash)"),
        ("terminated", "mark the agent terminated (finished or stopped on purpose)"),
        ("respawning", "mark the agent respawning (starts the next epoch)"),
        ("quarantined", "mark the agent quarantined (no more respawns)"),
    ):
        p = subparser(actions, f"mark-{status}", text,
                      f"attractor identity mark-{status} runner impl_auth --reason '…'")
        _role_name(p)
        p.add_argument("--reason", default="", help="why (kept in the record's history)")
        _common(p)
        p.set_defaults(func=run_set_status, fixed_status=status)

    p = subparser(actions, "find-stale", "list live records whose heartbeat is older than SECONDS",
                  "attractor identity find-stale --timeout 120 --json")
    p.add_argument("--timeout", type=_seconds, required=True, metavar="SECONDS",
                   help="heartbeat age after which a record is stale")
    _common(p)
    p.set_defaults(func=run_find_stale)

    p = subparser(actions, "list", "list every identity record", "attractor identity list --json")
    p.add_argument("--stale-only", action="store_true", help="only stale records (see --timeout)")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_STALE_TIMEOUT, metavar="SECONDS",
                   help=f"staleness timeout for --stale-only (default {DEFAULT_STALE_TIMEOUT:g})")
    _common(p)
    p.set_defaults(func=run_list)

    p = subparser(actions, "show", "show one record with its history",
                  "attractor identity show runner impl_auth")
    _role_name(p)
    _common(p)
    p.set_defaults(func=run_show)

