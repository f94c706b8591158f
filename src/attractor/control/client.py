"""What a client of the daemon needs, and nothing more (the command line imports it on every
`attractor status`): where the daemon's files are, whether one holds the lock, and one JSON-RPC
call over its socket (the wire format is in `control/rpc.py`).

Paths: the runtime directory is `$XDG_RUNTIME_DIR/attractor`, else `<config>/run` (the config
directory is `store.userdirs.config_dir()`); it holds `daemon.sock`. The lock, `daemon.lock`, is
in `$XDG_STATE_HOME/attractor` (else `~/.local/state/attractor`), with the logs under `logs/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

from attractor.errors import EXIT_USAGE, AttractorError
from attractor.store import userdirs

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
OPERATION_FAILED = -32000

RECV_CHUNK = 65536


class RpcError(AttractorError):
    """An error answer: raised by a method to answer with `code`, and by `call` on receiving one."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.data = data
        super().__init__(message)
        if code in (INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, METHOD_NOT_FOUND):
            self.exit_code = EXIT_USAGE
        elif isinstance(data, dict) and isinstance(data.get("exit_code"), int):
            self.exit_code = data["exit_code"]

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class DaemonNotRunningError(AttractorError):
    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"no daemon answers on {path} ({problem}); start one with: attractor daemon start")


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "attractor" if base else userdirs.config_dir() / "run"


def socket_path() -> Path:
    return runtime_dir() / "daemon.sock"


def lock_path() -> Path:
    """One lock per user whatever $XDG_RUNTIME_DIR says (two shells with different ones must not
    start two daemons): in the state home, not the runtime directory."""
    return userdirs.state_home() / "daemon.lock"


def log_dir() -> Path:
    return userdirs.state_home() / "logs"


def lock_holder() -> dict[str, Any] | None:
    """What the lock file says about the daemon holding it, or None when nobody holds it."""
    path = lock_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: someone is running
        else:
            return None
        try:
            data = json.loads(os.read(fd, 4096) or b"{}")
        except json.JSONDecodeError:
            data = {}
        return data if isinstance(data, dict) else {}
    finally:
        os.close(fd)


def call(path: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """Send one request to the daemon at `path` and return its result; an error answer raises
    RpcError, no daemon there raises DaemonNotRunningError."""
    request = {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": 1}
    with connect(path, timeout) as sock:
        # it may have answered already (too many clients) and closed: then read that answer
        with contextlib.suppress(OSError):
            sock.sendall((json.dumps(request) + "\n").encode())
        try:
            answer = read_answer(sock, path)
        except OSError as exc:  # it closed on us (stopping, say): as good as none
            raise DaemonNotRunningError(path, exc.strerror or type(exc).__name__) from None
    if "error" in answer:
        error = answer["error"]
        data = error.get("data")
        if isinstance(data, dict) and data.get("busy") is True:  # a command falls back on the files
            raise DaemonNotRunningError(path, str(error.get("message", "busy")))
        raise RpcError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")), data)
    return answer.get("result")


def connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
        sock.close()
        raise DaemonNotRunningError(path, exc.strerror or type(exc).__name__) from None
    except OSError:
        sock.close()
        raise
    return sock


def read_answer(sock: socket.socket, path: Path) -> dict[str, Any]:
    buffer = b""
    while b"\n" not in buffer:
        try:
            chunk = sock.recv(RECV_CHUNK)
        except TimeoutError:
            raise DaemonNotRunningError(path, "no answer in time") from None
        if not chunk:
            raise DaemonNotRunningError(path, "the daemon closed the connection")
        buffer += chunk
    answer = json.loads(buffer.split(b"\n", 1)[0])
    if not isinstance(answer, dict):
        raise RpcError(INTERNAL_ERROR, f"unexpected answer {answer!r}"[:200])
    return answer


def status_without_daemon() -> dict[str, Any]:
    return {"running": False, "socket": str(socket_path())}


def hand_over(state_root: Path, run_id: str, out: TextIO) -> bool:
    """Give a detached run to the user's daemon, when one runs: it supervises the guardian from
    then on (and registers the run's target as a project if it is none yet). With no daemon
    nothing changes: the run goes on, unsupervised until someone follows it."""
    try:
        answer = call(socket_path(), "runs.adopt", {"state_dir": str(state_root), "run_id": run_id}, timeout=10.0)
    except DaemonNotRunningError:
        return False
    except AttractorError as exc:
        print(f"warning: the daemon did not take run {run_id}: {exc}", file=sys.stderr)
        return False
    print(f"the daemon supervises it (project {answer['project']})", file=out)
    return True
