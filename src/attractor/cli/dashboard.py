"""`attractor dashboard`: the web dashboard of runs, agents, queue, costs and alerts.

Files, under `$XDG_STATE_HOME/attractor/` (mode 0600):
    dashboard.token   the random token, made on the first start and kept, so a page left open
                      goes on working when the dashboard restarts (`--new-token` makes another)
    dashboard.json    while it runs: `{"schema": 1, "url", "host", "port", "token", "pid",
                      "started_at"}`, so a script or a second shell can find it; removed when it
                      stops (if it is still this process's)
A token given with `--token` or $ATTRACTOR_DASHBOARD_TOKEN is used as it is and not kept.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from attractor.cli import subparser
from attractor.cli._flags import add_state_dir_option, add_target_dir_option, add_tmux_socket_option

DEFAULT_PORT = 8420
MIN_TOKEN = 16
TOKEN_ENV = "ATTRACTOR_DASHBOARD_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def info_path() -> Path:
    from attractor.store.userdirs import state_home

    return state_home() / "dashboard.json"


def kept_token(*, new: bool) -> str:
    """The token of `dashboard.token`, made (or made again, with `new`) when there is none fit."""
    import secrets

    from attractor.store.atomic import ensure_private_dir, write_bytes_atomic

    path = info_path().with_name("dashboard.token")
    if not new:
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            token = ""
        if len(token) >= MIN_TOKEN and token.isascii() and token.isprintable() and " " not in token:
            return token
    token = secrets.token_urlsafe(24)
    ensure_private_dir(path.parent)
    write_bytes_atomic(path, (token + "\n").encode())
    return token


def _places(args: argparse.Namespace) -> list[Path]:
    """The state directories named on the command line, or the one of the repository here (when
    it has one); the registered projects come on top."""
    from attractor.cli._flags import state_dir_from
    from attractor.names import ENV_STATE_DIR

    if args.state_dir or args.target_dir or os.environ.get(ENV_STATE_DIR):
        return [state_dir_from(args)]
    try:
        here = state_dir_from(args)
    except Exception:  # not in a repository: the registered projects alone
        return []
    return [here] if here.is_dir() else []


def run_dashboard(args: argparse.Namespace) -> int:
    from attractor import clock
    from attractor.errors import UsageError
    from attractor.store.atomic import ensure_private_dir, write_json_atomic

    token = args.token or os.environ.get(TOKEN_ENV) or ""
    host = args.host
    if host not in LOOPBACK and not host.startswith("127.") and not token:
        raise UsageError(f"dashboard: --host {host} would answer other machines; set a token first "
                         f"(--token or ${TOKEN_ENV}), or keep the default --host 127.0.0.1")
    if token and len(token) < MIN_TOKEN:
        raise UsageError(f"dashboard: the token is too short; give at least {MIN_TOKEN} characters")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"dashboard: --port {args.port} is not a TCP port (0 to 65535)")
    token = token or kept_token(new=args.new_token)
    from attractor.web.app import create_app, listen, serve
    from attractor.web.source import Source

    source = Source(_places(args), use_daemon=not args.no_daemon, tmux_socket=args.tmux_socket)
    app = create_app(source, token, host)
    sock = listen(host, args.port)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/?token={token}"
    path = info_path()
    ensure_private_dir(path.parent)
    info: dict[str, Any] = {"schema": 1, "url": url, "host": host, "port": port, "token": token, "pid": os.getpid(),
                            "started_at": clock.iso()}
    write_json_atomic(path, info)
    print(f"attractor dashboard: {url}", flush=True)
    print(f"  (the token is also in {path}; Ctrl-C stops)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        serve(app, sock)
    finally:
        _forget(path)
    return 0


def _forget(path: Path) -> None:
    """Remove the info file if it is still this process's (a second dashboard may have replaced it)."""
    import json

    try:
        if json.loads(path.read_bytes()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def add_parser(subparsers: Any) -> None:
    p = subparser(subparsers, "dashboard", "the web dashboard: runs, agents, timeline, queue, costs, alerts, live",
                  "attractor dashboard --open")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; another one needs --token)")
    p.add_argument("--open", action="store_true", help="open the URL in a browser")
    p.add_argument("--token", help=f"the access token (default: ${TOKEN_ENV}, else the one kept in the state "
                   "home, made at the first start)")
    p.add_argument("--new-token", action="store_true", help="make a new kept token (pages still open with "
                   "the old one stop working)")
    p.add_argument("--no-daemon", action="store_true", help="read the state files even when a daemon runs")
    add_target_dir_option(p)
    add_state_dir_option(p)
    add_tmux_socket_option(p)
    p.set_defaults(func=run_dashboard)
