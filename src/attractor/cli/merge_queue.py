"""`attractor merge-queue …`: the merge queue from the command line.

Exit codes: 0 done (or nothing to do), 1 an entry failed (conflict, red gate, dirty target …),
2 bad input (unknown branch or entry, a gate whose program does not exist, not a git repo).
The queue and the git door are imported inside the commands, never when the CLI is built.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from attractor.cli import Parser, subparser
from attractor.cli._flags import add_json_option, add_state_dir_option, state_from
from attractor.cli._output import format_age, format_table, print_json
from attractor.errors import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from attractor.engines.merge_queue import Entry, Outcome, QueueConfig
    from attractor.gitops import GitRepo
    from attractor.store.statedir import StateDir

JSON_SCHEMA = 1  # schema of the envelopes printed by `list --json` and `process --json`


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    group = subparser(
        subparsers, "merge-queue", "queue branches and land them on the target branch, green",
        "attractor merge-queue process --all --gate 'pytest -q' --gate-timeout 900", aliases=("queue",),
    )
    commands = group.add_subparsers(dest="mq_command", metavar="COMMAND", parser_class=Parser)

    lst = subparser(commands, "list", "list the queue's entries, oldest first",
                    "attractor merge-queue list --json")
    _common(lst, json=True)
    lst.add_argument("--no-daemon", action="store_true", help="read the files even when a daemon runs")
    lst.set_defaults(func=run_list)

    enq = subparser(commands, "enqueue", "queue a branch (again: updates its entry)",
                    "attractor merge-queue enqueue attractor/run1/impl --owner runner-impl")
    enq.add_argument("branch", metavar="BRANCH")
    enq.add_argument("--owner", required=True, metavar="AGENT",
                     help="agent id that receives MERGE_COMPLETE / MERGE_FAILED")
    enq.add_argument("--node", metavar="NODE", help="pipeline node the branch belongs to")
    enq.add_argument("--priority", type=int, default=0, metavar="P", help="higher goes first")
    enq.add_argument("--sha", metavar="SHA", help="the commit that was validated (default: head)")
    _common(enq, json=True)
    enq.set_defaults(func=run_enqueue)

    proc = subparser(commands, "process",
                     "rebase, gate and land the next entry (--all: every one); exit 1 on a failure",
                     "attractor merge-queue process --all --gate 'make test' --gate-timeout 600")
    proc.add_argument("--all", action="store_true", help="process until the queue is empty")
    _config_options(proc)
    _common(proc, json=True)
    proc.set_defaults(func=run_process)

    ready = subparser(commands, "ready",
                      "act on a MERGE_READY by hand: enqueue BRANCH, process until it is decided",
                      "attractor merge-queue ready attractor/run1/impl --owner runner-impl")
    ready.add_argument("branch", metavar="BRANCH")
    ready.add_argument("--owner", required=True, metavar="AGENT")
    ready.add_argument("--node", default="", metavar="NODE")
    ready.add_argument("--priority", type=int, default=0, metavar="P")
    ready.add_argument("--sha", metavar="SHA", help="the validated commit (default: head)")
    _config_options(ready)
    _common(ready, json=True)
    ready.set_defaults(func=run_ready)

    drain = subparser(commands, "drain",
                      "handle every pending MERGE_READY signal in an inbox, one by one",
                      "attractor merge-queue drain guardian-run1 --gate 'pytest -q'")
    drain.add_argument("inbox", metavar="AGENT", help="the agent whose inbox holds MERGE_READY")
    _config_options(drain)
    _common(drain, json=True)
    drain.set_defaults(func=run_drain)

    status = subparser(commands, "status", "show one entry with its outcome and history",
                       "attractor merge-queue status 3f2a9c1b --json")
    status.add_argument("entry_id", metavar="ID")
    _common(status, json=True)
    status.set_defaults(func=run_status)

    remove = subparser(commands, "remove", "delete an entry that is not being processed",
                       "attractor merge-queue remove 3f2a9c1b")
    remove.add_argument("entry_id", metavar="ID")
    _common(remove)
    remove.set_defaults(func=run_remove)

    retry = subparser(commands, "retry", "put a failed entry back in the queue",
                      "attractor merge-queue retry 3f2a9c1b")
    retry.add_argument("entry_id", metavar="ID")
    _common(retry)
    retry.set_defaults(func=run_retry)

    hold = subparser(commands, "hold", "stop merging until 'resume' (the guardian holds the queue by itself "
                     "when the target moves outside it)", "attractor merge-queue hold 'release freeze'")
    hold.add_argument("reason", help="why merging stops")
    add_state_dir_option(hold)
    hold.set_defaults(func=run_hold)

    resume = subparser(commands, "resume", "lift a hold on the queue: merging goes on",
                       "attractor merge-queue resume")
    add_state_dir_option(resume)
    add_json_option(resume)
    resume.set_defaults(func=run_resume)


def _common(parser: argparse.ArgumentParser, json: bool = False) -> None:
    parser.add_argument("--repo", metavar="DIR", default=".",
                        help="the git repository (default: the current directory)")
    add_state_dir_option(parser)
    if json:
        add_json_option(parser)


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gate", action="append", metavar="CMD",
                        help="a gate shell command (repeatable; replaces the config file's gates)")
    parser.add_argument("--gate-timeout", type=float, metavar="S",
                        help="seconds before a gate's process group is killed (default: 600)")
    parser.add_argument("--target", metavar="BRANCH",
                        help="branch to land on (default: the config file's, else main)")
    parser.add_argument("--wait", type=float, metavar="S",
                        help="give up (exit 1) if the merge slot is still busy after S seconds")


def _open(args: argparse.Namespace) -> tuple[GitRepo, StateDir]:
    from attractor import gitops

    repo = gitops.open_repo(args.repo)
    return repo, state_from(args, target_dir=repo.root)


def _config(args: argparse.Namespace, repo: GitRepo) -> QueueConfig:
    from attractor.engines import merge_queue

    return merge_queue.load_config(repo, target=args.target, gates=args.gate,
                                   gate_timeout=args.gate_timeout)


def _age(stamp: str) -> str:
    from attractor.clock import parse_iso

    return format_age(time.time() - parse_iso(stamp))


def _describe(entry: Entry) -> str:
    if entry.claim is not None:
        alive = "alive" if entry.claim.alive() else "dead: the next process recovers it"
        return f"pid {entry.claim.pid} ({alive})"
    if entry.outcome is not None:
        out = entry.outcome
        return f"{(out.merged_sha or '')[:12]}" if out.merged else f"{out.reason}: {out.detail}"
    return ""


def run_list(args: argparse.Namespace) -> int:
    from attractor.engines import merge_queue

    _, state = _open(args)
    entries = None if args.no_daemon else _entries_from_daemon(state)
    if entries is None:
        entries = merge_queue.list_entries(state)
    if args.json:
        print_json({"schema": JSON_SCHEMA, "entries": [e.to_json() for e in entries]})
        return EXIT_OK
    if not entries:
        print("merge queue is empty")
        return EXIT_OK
    rows = [[e.id, e.state.value, str(e.priority), e.branch, e.owner, str(e.retries),
             _age(e.enqueued_at), _describe(e)] for e in entries]
    print(format_table(["ID", "STATE", "PRI", "BRANCH", "OWNER", "RETRIES", "AGE", "DETAIL"], rows))
    return EXIT_OK


def _entries_from_daemon(state: Any) -> list[Any] | None:
    """The queue as the daemon reads it (`queue.list`, the same store), or None with no daemon."""
    from attractor.control import client
    from attractor.store.merge_entries import Entry

    try:
        answer = client.call(client.socket_path(), "queue.list", {"state_dir": str(state.root)}, timeout=30.0)
    except client.DaemonNotRunningError:
        return None
    return [Entry.from_json(item) for item in answer]


def run_enqueue(args: argparse.Namespace) -> int:
    from attractor.engines import merge_queue

    repo, state = _open(args)
    entry = merge_queue.enqueue(state, repo, args.branch, owner=args.owner, node=args.node,
                                priority=args.priority, validated_sha=args.sha)
    if args.json:
        print_json(entry.to_json())
    else:
        print(f"{entry.id}  {entry.state.value}  {entry.branch}")
    return EXIT_OK


def _show_outcomes(args: argparse.Namespace, outcomes: list[Outcome]) -> int:
    failed = any(o.result.value == "failed" for o in outcomes)
    if args.json:
        print_json({"schema": JSON_SCHEMA, "outcomes": [o.to_json() for o in outcomes]})
        return EXIT_FAILURE if failed else EXIT_OK
    if not outcomes:
        print("nothing to process: the queue has no queued entry")
    for out in outcomes:
        print(f"{out.result.value:<8}  {out.entry_id or '-':<8}  {out.summary()}")
        if out.files and not out.merged:
            print(f"  files: {', '.join(out.files)}")
        if out.gate_output and out.reason != "conflict":
            lines = out.gate_output.splitlines()[-10:]
            print("\n".join(f"  | {line}" for line in lines))
    return EXIT_FAILURE if failed else EXIT_OK


def run_process(args: argparse.Namespace) -> int:
    from attractor.engines import merge_queue

    repo, state = _open(args)
    config = _config(args, repo)
    if args.all:
        outcomes = merge_queue.process_all(state, repo, config, wait=args.wait)
    else:
        one = merge_queue.process_next(state, repo, config, wait=args.wait)
        outcomes = [one] if one is not None else []
    return _show_outcomes(args, outcomes)


def run_ready(args: argparse.Namespace) -> int:
    from attractor import gitops
    from attractor.engines import merge_queue
    from attractor.errors import NotFoundError
    from attractor.store.payloads import MergeReady

    repo, state = _open(args)
    config = _config(args, repo)
    merge_queue.check_config(repo, config)
    if not gitops.branch_exists(repo, args.branch):
        raise merge_queue.UnknownBranchError(args.branch, repo.root)
    commit = gitops.rev_parse(repo, args.sha or f"refs/heads/{args.branch}")
    if commit is None:
        raise NotFoundError("commit", args.sha, f"no such commit in {repo.root}")
    payload = MergeReady(node=args.node, branch=args.branch, commit=commit, owner=args.owner,
                         priority=args.priority)
    outcome = merge_queue.handle_merge_ready(state, repo, payload, config, wait=args.wait)
    return _show_outcomes(args, [outcome])


def run_drain(args: argparse.Namespace) -> int:
    from attractor.engines import merge_queue
    from attractor.states import SignalKind
    from attractor.store import identities, signals

    repo, state = _open(args)
    config = _config(args, repo)
    merge_queue.check_config(repo, config)
    inbox = signals.Inbox(state, args.inbox)
    outcomes: list[Outcome] = []
    while (claim := inbox.claim_next([SignalKind.MERGE_READY])) is not None:
        if inbox.stale(claim.signal, identities.current_epoch(state, args.inbox)):
            inbox.complete(claim, "stale", "addressed to an earlier spawn epoch")
            continue
        try:
            outcome = merge_queue.handle_merge_ready(state, repo, claim.signal, config,
                                                     wait=args.wait)
        except BaseException:
            inbox.release(claim)
            raise
        inbox.complete(claim, outcome.result.value, outcome.summary())
        outcomes.append(outcome)
    return _show_outcomes(args, outcomes)


def run_status(args: argparse.Namespace) -> int:
    from attractor.engines import merge_queue

    _, state = _open(args)
    entry = merge_queue.get_entry(state, args.entry_id)
    if args.json:
        print_json(entry.to_json())
        return EXIT_OK
    fields = [("id", entry.id), ("state", entry.state.value), ("branch", entry.branch),
              ("owner", entry.owner), ("node", entry.node or "-"), ("priority", entry.priority),
              ("validated", entry.validated_sha or "(branch head)"),
              ("enqueued", f"{entry.enqueued_at} ({_age(entry.enqueued_at)} ago)"),
              ("attempts", entry.attempts), ("retries", entry.retries)]
    if entry.claim is not None:
        fields.append(("claim", _describe(entry)))
    if entry.outcome is not None:
        fields.append(("outcome", entry.outcome.summary()))
        if entry.outcome.files:
            fields.append(("files", ", ".join(entry.outcome.files)))
    for key, value in fields:
        print(f"{key + ':':<11}{value}")
    if entry.outcome is not None and entry.outcome.gate_output:
        print("output:")
        print("\n".join(f"  | {line}" for line in entry.outcome.gate_output.splitlines()))
    print("history:")
    print("\n".join(f"  {line}" for line in entry.history))
    return EXIT_OK


def run_remove(args: argparse.Namespace) -> int:
    from attractor.engines import merge_queue

    _, state = _open(args)
    entry = merge_queue.remove_entry(state, args.entry_id)
    print(f"removed {entry.id} ({entry.branch}, was {entry.state.value})")
    return EXIT_OK


def run_retry(args: argparse.Namespace) -> int:
    from attractor.engines import merge_queue

    _, state = _open(args)
    entry = merge_queue.retry_entry(state, args.entry_id)
    print(f"{entry.id}  {entry.state.value}  {entry.branch}")
    return EXIT_OK


def run_hold(args: argparse.Namespace) -> int:
    from attractor.store import queue_hold

    held = queue_hold.hold(state_from(args), args.reason, target="*", expected=None, found=None,
                           held_by="user-cli")
    print(f"merge queue held: {held.reason}; lift it with: attractor merge-queue resume")
    return EXIT_OK


def run_resume(args: argparse.Namespace) -> int:
    from attractor.store import queue_hold

    state = state_from(args)
    held = queue_hold.read(state)
    tip = None
    if held is not None and held.repo and held.target not in ("", "*", "?"):
        from attractor import gitops

        tip = gitops.rev_parse(held.repo, f"refs/heads/{held.target}")  # what the human accepts
    lifted = queue_hold.lift(state, tip)
    if args.json:
        print_json({"lifted": lifted.to_json() if lifted else None}, sort_keys=False)
    elif lifted is None:
        print("the merge queue was not held")
    else:
        print(f"hold lifted (was: {lifted.reason}); merging goes on")
    return EXIT_OK
