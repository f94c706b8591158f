"""`attractor agent`: the registry of agents with their supervision state, lifting quarantines
and escalations, answering an agent that needs a human and messages to a live agent.

    attractor agent list [--status S] [--role R] [--all] [--json]
                                                  every registered or supervised agent: its
                                                  status (down and evicted judged now), pid,
                                                  heartbeat, deaths, restarts, quarantine
    attractor agent clear ROLE NAME               lift a quarantine, reset the backoff
    attractor agent clear --escalation            resume respawns paused by an escalation
    attractor agent answer NODE yes|no|always     choose that option in the agent's dialog
    attractor agent send NODE TEXT                queue a message; delivered through the agent's
                                                  hooks, or typed in when it is idle
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Any

from attractor.cli import Parser, subparser
from attractor.cli._flags import (
    add_json_option,
    add_state_dir_option,
    add_tmux_socket_option,
    state_dir_from,
    state_from,
)
from attractor.cli._output import format_table, group_help, print_json, problems_json, report_problems

if TYPE_CHECKING:
    from attractor.engines.supervision import AgentSupervision, Escalation, Supervisor
    from attractor.errors import CorruptStateError
    from attractor.store.identities import RegistryEntry

# `list --json`: {schema, escalation, agents: [row], evicted_hidden, problems}. A row has the
# supervision fields (`_agent_row`; `state` is null when the agent never died, so the supervisor
# has no record of it) and the registry fields (`identities.RegistryEntry.to_json`; null when the
# agent has no identity record, except role and name, taken from the agent id when they can be).
LIST_SCHEMA = 1
_REGISTRY_FIELDS = ("role", "name", "status", "stored_status", "status_reason", "epoch", "pid",
                    "last_heartbeat", "heartbeat_age", "heartbeat_interval")


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    group = subparser(subparsers, "agent", "the agents: registry status and supervision; clear quarantines",
                      "attractor agent list --json")
    sub = group.add_subparsers(dest="agent_command", metavar="ACTION", parser_class=Parser)

    lister = subparser(sub, "list", "show every agent: status (down, evicted), heartbeat, deaths, quarantine",
                       "attractor agent list --status down --role runner")
    lister.add_argument("--status", action="append", metavar="STATUS",
                        help="only agents shown with STATUS (repeatable): a stored status (spawning, "
                             "active, stale, crashed, respawning, terminated, quarantined), down (no "
                             "heartbeat for 2 intervals, or its process gone) or evicted (3 intervals)")
    lister.add_argument("--role", action="append", metavar="ROLE",
                        help="only agents of ROLE (repeatable): launcher, guardian, runner, orchestrator, …")
    lister.add_argument("--all", action="store_true",
                        help="also show evicted agents (left out by default; kept on disk)")
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


def _agent_row(rec: AgentSupervision, sup: Supervisor, now: float, *, recorded: bool = True) -> dict[str, Any]:
    """The supervision fields of one agent; `recorded`: the supervisor has a record of it."""
    from attractor.clock import iso

    last = rec.deaths[-1] if rec.deaths else None
    state: str | None
    if not recorded:
        state = None
    elif rec.quarantined:
        state = "quarantined"
    elif not rec.awaiting_respawn:
        state = "running"
    elif sup.escalation() is not None and not sup.escalation_exempt(rec.agent_id):
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


def _registry_fields(agent: str, entry: RegistryEntry | None) -> dict[str, Any]:
    if entry is not None:
        data = entry.to_json()
        return {key: data[key] for key in _REGISTRY_FIELDS}
    from attractor.errors import InvalidNameError
    from attractor.names import split_agent_id

    fields: dict[str, Any] = dict.fromkeys(_REGISTRY_FIELDS)
    with contextlib.suppress(InvalidNameError):  # a supervised agent id of no known role
        fields["role"], fields["name"] = split_agent_id(agent)
    return fields


def _list_table(rows: list[dict[str, Any]], window: str) -> str:
    from attractor.cli._output import format_age

    header = ("AGENT", "STATE", window, "RESTARTS", "NEXT RESTART", "STATUS", "PID", "HEARTBEAT", "REASON")
    table = []
    for row in rows:
        next_at = row["next_restart_at"] if row["state"] in ("backoff", "paused") else "-"
        reason = (row["quarantine_reason"] or row["status_reason"]
                  or (row["last_death"] or {}).get("cause", ""))
        age = row["heartbeat_age"]
        table.append((row["agent_id"], row["state"] or "-", str(row["deaths_in_window"]),
                      str(row["restarts"]), next_at or "-", row["status"] or "-", str(row["pid"] or "-"),
                      "-" if age is None else format_age(age), reason))
    return format_table(header, table, strip=False)


def run_list(args: argparse.Namespace) -> int:
    from attractor.engines.supervision import AgentSupervision, Supervisor
    from attractor.names import validate_role
    from attractor.store import identities

    wanted = {identities.ShownStatus.from_text(text).value for text in args.status or ()}
    roles = {validate_role(role) for role in args.role or ()}
    state = state_from(args)
    sup = Supervisor(state.root)
    now = sup.clock.time()
    problems: list[CorruptStateError] = []
    entries = {e.record.agent_id: e for e in identities.registry_view(state, now, problems)}
    report_problems(problems)
    supervised = {rec.agent_id: rec for rec in sup.all_states()}
    rows = []
    for agent in sorted(entries.keys() | supervised.keys()):
        rec = supervised.get(agent)
        row = _agent_row(rec or AgentSupervision(agent), sup, now, recorded=rec is not None)
        rows.append(row | _registry_fields(agent, entries.get(agent)))
    rows = [r for r in rows if (not roles or r["role"] in roles) and (not wanted or r["status"] in wanted)]
    hidden = 0
    if not wanted and not args.all:  # asking for a status shows exactly that status
        hidden = sum(1 for r in rows if r["status"] == identities.ShownStatus.EVICTED.value)
        rows = [r for r in rows if r["status"] != identities.ShownStatus.EVICTED.value]
    escalation = sup.escalation()
    if args.json:
        print_json({"schema": LIST_SCHEMA, "escalation": _escalation_json(escalation), "agents": rows,
                    "evicted_hidden": hidden, "problems": problems_json(problems)})
        return 0
    if escalation is not None:
        print(f"ESCALATION: {escalation.reason} ({', '.join(escalation.agents)}); respawns "
              f"paused until {escalation.to_json()['until']} or 'attractor agent clear "
              "--escalation'")
    if rows:
        print(_list_table(rows, f"DEATHS/{sup.config.quarantine_window / 60:g}m"))
    elif wanted or roles:
        print("no agent matches " + " ".join(
            [f"--status {s}" for s in args.status or ()] + [f"--role {r}" for r in args.role or ()]))
    else:
        print("no agent is registered or supervised")
    if hidden:
        print(f"{hidden} evicted agent{'s' if hidden != 1 else ''} left out (no heartbeat for more than "
              f"{identities.EVICTED_AFTER_INTERVALS} intervals); --all shows them")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from attractor.errors import UsageError

    if args.role is None and not args.escalation:
        raise UsageError("agent clear: give ROLE NAME, or --escalation "
                         "(example: attractor agent clear runner impl_auth)")
    if args.role is not None and args.name is None:
        raise UsageError(f"agent clear: missing NAME after role {args.role!r} "
                         "(example: attractor agent clear runner impl_auth)")
    from attractor.layers import actions

    done = actions.perform(state_from(args), "clear", by=actions.who("cli"), role=args.role, name=args.name,
                           escalation=args.escalation)
    for line in done["lines"]:
        print(line)
    return 0


def run_answer(args: argparse.Namespace) -> int:
    from attractor.layers import actions
    from attractor.names import validate_name

    validate_name(args.node, "node")
    result = actions.perform(state_from(args), "answer", by=actions.who("cli"), node=args.node, reply=args.reply,
                             tmux_socket=args.tmux_socket)
    if args.json:
        print_json({k: result[k] for k in ("agent_id", "chosen", "keys", "question", "remembered")})
        return 0
    for line in result["lines"]:
        print(line)
    return 0


def run_send(args: argparse.Namespace) -> int:
    from attractor.layers import actions
    from attractor.names import validate_name

    validate_name(args.node, "node")
    sent = actions.perform(state_from(args), "send", by=actions.who("cli"), node=args.node, text=args.text,
                           author=args.author)
    if args.json:
        print_json({"signal_id": sent["signal_id"], "to": sent["to"]})
        return 0
    print(sent["lines"][0])
    return 0
    print(f"queued message {sent.id} for {sent.recipient}")
    return 0
