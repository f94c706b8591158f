"""`attractor daemon start|stop|status|logs` and `attractor rpc METHOD [JSON]`.

Exit codes: 0 done (and `status` with no daemon running: it says so), 1 a daemon is already
running or did not start or stop, 2 bad input (params that are not a JSON object, an unknown
method or bad params, as the daemon answers them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from attractor.cli import Parser, subparser
from attractor.cli._flags import add_json_option
from attractor.cli._output import format_age, format_table, group_help, print_json


def run_start(args: argparse.Namespace) -> int:
    from attractor.control import daemon

    level = args.log_level if args.log_level != "WARNING" else "INFO"
    if not args.foreground:
        return daemon.start_background(level, sys.stdout)
    daemon.setup_logging(level, quiet_stderr=args.quiet_stderr)
    return daemon.Daemon(log_level=level).run()


def run_stop(args: argparse.Namespace) -> int:
    from attractor.control import daemon

    return daemon.stop_daemon(args.runs, sys.stdout)


def run_status(args: argparse.Namespace) -> int:
    from attractor.control import client

    try:
        status: dict[str, Any] = client.call(client.socket_path(), "status", timeout=10.0)
    except client.DaemonNotRunningError:
        status = client.status_without_daemon()
    if args.json:
        print_json(status)
        return 0
    if not status["running"]:
        print(f"no daemon is running (socket {status['socket']}); start one with: attractor daemon start")
        return 0
    print(f"daemon pid {status['pid']}, up {format_age(status['uptime_s'])}, socket {status['socket']}")
    print(f"projects: {', '.join(status['projects']) or '(none)'}")
    if status["runs"]:
        rows = [[r["project"], r["run_id"], r["supervision"]] for r in status["runs"]]
        print(format_table(["PROJECT", "RUN", "SUPERVISION"], rows))
    else:
        print("no live runs")
    return 0


def run_logs(args: argparse.Namespace) -> int:
    import time

    from attractor.control import client

    path = client.log_dir() / ("daemon.err" if args.stderr_only else "daemon.log")
    if not path.exists():
        print(f"no log yet at {path}", file=sys.stderr)
        return 0
    with open(path, errors="replace") as log:
        lines = log.readlines()
        sys.stdout.writelines(lines[-args.lines:] if args.lines > 0 else [])
        sys.stdout.flush()
        while args.follow:
            line = log.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)
    return 0


def run_install(args: argparse.Namespace) -> int:
    import shlex

    from attractor.control import service_files

    service = service_files.service_for(service_files.manager_for())
    if args.dry_run:
        sys.stdout.write(service.text)
        then = " && ".join(shlex.join(argv) for argv in service.install_commands)
        print(f"dry run: nothing changed; install would write this {service.kind} to {service.path}, then run: "
              f"{then}", file=sys.stderr)
        return 0
    try:
        lines = service_files.install(service)
    except service_files.NoServiceManagerError:
        sys.stdout.write(service.text)  # to install by hand; the one-line reason goes to stderr
        raise
    print("\n".join(lines))
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    from attractor.control import service_files

    print("\n".join(service_files.uninstall(service_files.manager_for())))
    return 0


def run_rpc(args: argparse.Namespace) -> int:
    import json

    from attractor.control import client
    from attractor.errors import BadInputError

    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise BadInputError("rpc params", f"not JSON ({exc}); give an object, "
                            "e.g. '{\"project\": \"app\"}'") from None
    if not isinstance(params, dict):
        raise BadInputError("rpc params", "must be a JSON object of named values")
    print_json(client.call(client.socket_path(), args.method, params, timeout=args.timeout))
    return 0


def add_parser(subparsers: Any) -> None:
    group = subparser(subparsers, "daemon", "the user's daemon: supervises every registered project's runs",
                      "attractor daemon start && attractor daemon status")
    actions = group.add_subparsers(dest="daemon_command", metavar="ACTION", parser_class=Parser)
    group.set_defaults(func=group_help(group))

    p = subparser(actions, "start", "start the daemon (in the background unless --foreground)",
                  "attractor daemon start --foreground")
    p.add_argument("--foreground", action="store_true", help="run in this process (for systemd and launchd)")
    p.add_argument("--quiet-stderr", action="store_true",
                   help="only warnings and errors on stderr (the log file has everything)")
    p.set_defaults(func=run_start)

    p = subparser(actions, "stop", "stop the daemon; its runs go on unless --runs",
                  "attractor daemon stop --runs")
    p.add_argument("--runs", action="store_true", help="stop every live run of every project first")
    p.set_defaults(func=run_stop)

    p = subparser(actions, "status", "whether a daemon runs, its pid, uptime, socket, projects and runs",
                  "attractor daemon status --json")
    add_json_option(p)
    p.set_defaults(func=run_status)

    p = subparser(actions, "logs", "the daemon's log (the last lines; --follow for new ones)",
                  "attractor daemon logs --lines 50 --follow")
    p.add_argument("--lines", type=int, default=40, metavar="N", help="how many lines from the end (default 40)")
    p.add_argument("--stderr-only", action="store_true", help="its stderr only (crashes, warnings)")
    p.add_argument("--follow", action="store_true", help="go on printing new lines")
    p.set_defaults(func=run_logs)

    p = subparser(actions, "install", "install the daemon as a service: a systemd user unit (Linux) or a launchd "
                  "agent (macOS) that starts it at login and restarts it when it fails",
                  "attractor daemon install --dry-run > attractor.service")
    p.add_argument("--dry-run", action="store_true",
                   help="print the file on stdout and where it would go on stderr; change nothing")
    p.set_defaults(func=run_install)

    p = subparser(actions, "uninstall", "stop the daemon's service and remove its file (nothing installed: exit 0)",
                  "attractor daemon uninstall")
    p.set_defaults(func=run_uninstall)

    p = subparser(subparsers, "rpc", "send one JSON-RPC request to the daemon and print the result",
                  "attractor rpc runs.list '{\"project\": \"app\"}'")
    p.add_argument("method", metavar="METHOD", help="e.g. status, projects.list, runs.list, queue.list")
    p.add_argument("params", nargs="?", metavar="JSON", help="the params, a JSON object (default {})")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    p.set_defaults(func=run_rpc)
