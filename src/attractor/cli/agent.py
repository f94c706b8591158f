"""`attractor agent`: the supervision state of agents, lifting quarantines and escalations,
answering an agent that needs a human and messages to a live agent.

    attractor agent list [--json]                 deaths, restarts, next restart, quarantine
    attractor agent clear ROLE NAME               lift a quarantine, reset the backoff
    attractor agent clear --escalation            resume respawns paused by an escalation
    attractor agent answer NODE yes|no|always     choose that option in the agent's dialog
    attractor agent send NODE TEXT                queue a message; delivered through the agent's
                                                  hooks, or typed in when it is idle
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from attractor.cli import Parser, subparser
from attractor.cli._flags import (
    add_json_option,
    add_state_dir_option,
    add_tmux_socket_option,
    state_dir_from,
    state_from,
)
from attractor.cli._output import format_table, group_help, print_json

if TYPE_CHECKING:
    from attractor.engines.supervision import AgentSupervision, Escalation, Supervisor

LIST_SCHEMA = 1


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    group = subparser(subparsers, "agent", "supervision state of agents: list, clear quarantines",
                      "attractor agent list --json")
    sub = group.add_subparsers(dest="agent_command", metavar="ACTION", parser_class=Parser)

    lister = subparser(sub, "list", "show every supervised agent: deaths, restarts, quarantine",
                       "attractor agent list --json")
    add_state_dir_option(lister)
    add_json_option(lister)
    lister.set_defaults(func=run_list)

    clear = subparser(sub, "clear",
                      "lift an agent's quarantine (it is respawned) or end an escalation pause",
                      "attractor agent clear runner impl_auth")
    clear.add_argument("role", nargs="?", help="role of the agent (runner, orchestrator, …)")
    clear.add_argument("name", nargs="?", help="name of the agent (usually the node)")
    clear.add_argument("--escalation", action="store_true",
                       help="end the escalation that pauses all respawns")
    add_state_dir_option(clear)
    clear.set_defaults(func=run_clear)

    answer = subparser(sub, "answer",
                       "answer the dialog an agent waits at (a permission prompt shown as needs-input)",
                       "attractor agent answer impl_auth yes")
    answer.add_argument("node", help="the node whose agent asks")
    answer.add_argument("reply", choices=("yes", "no", "always"),
                        help="yes, no, or always (yes, and remember the command for this agent)")
    add_state_dir_option(answer)
    add_tmux_socket_option(answer, "tmux socket (default: the one recorded)")
    add_json_option(answer)
    answer.set_defaults(func=run_answer)

    send = subparser(sub, "send", "queue a message for a live agent (delivered once, through its hooks or "
                     "typed in when it is idle)", "attractor agent send impl_auth 'also update the README'")
    send.add_argument("node", help="the node whose agent gets the message")
    send.add_argument("text", help="the message")
    send.add_argument("--author", default="user", help="who the message is from (default: user)")
    add_state_dir_option(send)
    add_json_option(send)
    send.set_defaults(func=run_send)
    group.set_defaults(func=group_help(group))


def _supervisor(args: argparse.Namespace) -> Supervisor:
    from attractor.engines.supervision import Supervisor

    return Supervisor(state_dir_from(args))


def _agent_row(rec: AgentSupervision, sup: Supervisor, now: float) -> dict[str, Any]:
    from attractor.clock import iso

    last = rec.deaths[-1] if rec.deaths else None
    paused = sup.escalation() is not None and not sup.escalation_exempt(rec.agent_id)
    if rec.quarantined:
        state = "quarantined"
    elif not rec.awaiting_respawn:
        state = "running"
    elif paused:
        state = "paused"
    elif rec.next_restart_at is not None and rec.next_restart_at > now:
        state = "backoff"
    else:
        state = "respawn-due"
    return {
        "agent_id": rec.agent_id,
        "state": state,
        "quarantined": rec.quarantined,
        "quarantine_reason": rec.quarantine_reason,
        "quarantined_at": iso(rec.quarantined_at) if rec.quarantined_at else None,
        "deaths_in_window": rec.deaths_within(now, sup.config.quarantine_window),
        "consecutive_deaths": rec.consecutive_deaths,
        "restarts": rec.restarts,
        "awaiting_respawn": rec.awaiting_respawn,
        "next_restart_at": iso(rec.next_restart_at) if rec.next_restart_at else None,
        "healthy_since": iso(rec.healthy_since) if rec.healthy_since else None,
        "last_death": last.to_json() if last else None,
    }


def _escalation_json(esc: Escalation | None) -> dict[str, Any] | None:
    return esc.to_json() if esc else None


def run_list(args: argparse.Namespace) -> int:
    sup = _supervisor(args)
    now = sup.clock.time()
    rows = [_agent_row(rec, sup, now) for rec in sup.all_states()]
    escalation = sup.escalation()
    if args.json:
        print_json({"schema": LIST_SCHEMA, "escalation": _escalation_json(escalation), "agents": rows})
        return 0
    if escalation is not None:
        print(f"ESCALATION: {escalation.reason} ({', '.join(escalation.agents)}); respawns "
              f"paused until {escalation.to_json()['until']} or 'attractor agent clear "
              "--escalation'")
    if not rows:
        print("no supervised agent has died yet")
        return 0
    window = f"DEATHS/{sup.config.quarantine_window / 60:g}m"
    header = ("AGENT", "STATE", window, "RESTARTS", "NEXT RESTART", "REASON")
    table = []
    for row in rows:
        next_at = row["next_restart_at"] if row["state"] in ("backoff", "paused") else "-"
        reason = row["quarantine_reason"] or (row["last_death"] or {}).get("cause", "")
        table.append((row["agent_id"], row["state"], str(row["deaths_in_window"]),
                      str(row["restarts"]), next_at or "-", reason))
    print(format_table(header, table, strip=False))
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from attractor.engines.supervision import release_identity
    from attractor.errors import NotFoundError, UsageError
    from attractor.names import agent_id as make_agent_id

    if args.role is None and not args.escalation:
        raise UsageError("agent clear: give ROLE NAME, or --escalation "
                         "(example: attractor agent clear runner impl_auth)")
    if args.role is not None and args.name is None:
        raise UsageError(f"agent clear: missing NAME after role {args.role!r} "
                         "(example: attractor agent clear runner impl_auth)")
    ident = make_agent_id(args.role, args.name) if args.role is not None else None
    sup = _supervisor(args)
    if ident is not None and not sup.path_of(ident).exists():
        if release_identity(sup.state_root, ident):
            print(f"cleared {ident}: identity released from quarantine")
        else:
            raise NotFoundError("supervised agent", ident, "see 'attractor agent list'")
    elif ident is not None:
        before = sup.state_of(ident)
        sup.clear(ident)
        if before.quarantined:
            print(f"cleared {ident}: quarantine lifted ({before.quarantine_reason}); "
                  "it is respawned on the guardian's next tick")
        else:
            print(f"cleared {ident}: not quarantined; death counters reset")
    if args.escalation:
        ended = sup.clear_escalation()
        print("escalation cleared; respawns resume" if ended else "no active escalation")
    return 0


def run_answer(args: argparse.Namespace) -> int:
    from attractor.engines.answers import answer
    from attractor.names import validate_name

    validate_name(args.node, "node")
    result = answer(state_from(args), args.node, args.reply, tmux_socket=args.tmux_socket)
    if args.json:
        print_json({"agent_id": result.agent_id, "chosen": result.chosen, "keys": list(result.keys),
                    "question": result.question, "remembered": result.remembered})
        return 0
    print(f"{result.agent_id}: chose {result.chosen!r}")
    if result.remembered:
        print(f"  remembered for this agent: {result.remembered}")
    return 0


def run_send(args: argparse.Namespace) -> int:
    from attractor.engines.answers import queue_message
    from attractor.names import validate_name

    validate_name(args.node, "node")
    sent = queue_message(state_from(args), args.node, args.text, author=args.author)
    if args.json:
        print_json({"signal_id": sent.id, "to": sent.recipient})
        return 0
    print(f"queued message {sent.id} for {sent.recipient}")
    return 0
