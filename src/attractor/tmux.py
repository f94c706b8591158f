"""The one door to tmux: the project's own socket, sessions and panes attractor created, sanitised
`send-keys`, `capture-pane`, and one batched `list-panes -a` query for liveness.

Only this module runs tmux. Every call is one `tmux -L NAME <command>` process on the project's
socket, never the user's default server (no library: libtmux, used here before, ran the same
single command lines and cost each runner 6 MB). A failure becomes `TmuxError("tmux <command>:
<tmux's words>")`; a missing `tmux` binary becomes `MissingBinaryError`; a server that does not
answer within COMMAND_TIMEOUT seconds is a TmuxError too, never a hung control loop.

Ownership: a session created by `Tmux.new_session` carries the session option
`@attractor-owned 1`, and its first pane the pane option `@attractor-pane 1`. `kill_session`,
`kill_pane`, `respawn_pane` and `kill_owned_sessions` refuse (or skip) anything without the tag,
so a session the user made on the same socket, or a pane they split inside ours, is never touched.
attractor never kills a whole server: a server whose last session ends exits by itself.

Panes run their command as `/bin/sh -c 'exec <shlex.join(command)>'`, so the pane's pid is the
command's pid whatever the user's shell is. The pane's environment is the server's global
environment (fixed by whichever process started the server) plus `-e` variables: `new_session`
and `respawn_pane` therefore always pass `PATH` and every `ATTRACTOR_*` variable of the caller,
then `env` on top. Requires tmux >= 3.2 (`-e`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import shutil
import subprocess
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor import names
from attractor.errors import (
    BadInputError,
    InvalidNameError,
    MissingBinaryError,
    NotFoundError,
    TmuxError,
)
from attractor.names import NAME_RULE, validate_name

_KEY_NAME_RE = re.compile(r"[A-Za-z0-9]|Enter|Escape|Tab|Space|BSpace|Up|Down|Left|Right|[CM]-[a-z]")
logger = logging.getLogger(__name__)

ENV_TMUX_SOCKET = names.ENV_TMUX_SOCKET
SESSION_TAG = "@attractor-owned"
PANE_TAG = "@attractor-pane"
INSTALL_HINT = "install it with: apt-get install tmux"

_SOCKET_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_PANE_ID_RE = re.compile(r"%[0-9]+")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words tmux uses when there is no server to talk to, or one exiting after its last session
# ended ("no current target"): a query then means "nothing running".
_NO_SERVER = (
    "no server running",
    "error connecting to",
    "server exited unexpectedly",
    "no current target",
)
_SEP = "\x1f"  # unit separator between format fields; never in names we create
_PANE_FIELDS = (
    "pane_id",
    "pane_pid",
    "session_name",
    "window_id",
    "pane_dead",
    "pane_dead_status",
    "window_activity",
    PANE_TAG,
    "pane_current_command",  # last: free text
)
PANE_FORMAT = _SEP.join(f"#{{{field}}}" for field in _PANE_FIELDS)
# One argument of a tmux command line is kept well under the client's 16 KiB message limit.
SEND_CHUNK_BYTES = 4096
COMMAND_TIMEOUT = 30.0


def socket_name_for(project_dir: Path, explicit: str | None = None) -> str:
    """explicit > $ATTRACTOR_TMUX_SOCKET > `attractor-<10 hex of sha256(resolved project path)>`."""
    name = explicit or os.environ.get(ENV_TMUX_SOCKET)
    if not name:
        digest = names.sha256_hex(str(Path(project_dir).resolve()).encode())
        name = f"attractor-{digest[:10]}"
    return validate_socket_name(name)


def validate_socket_name(name: str) -> str:
    if not _SOCKET_RE.fullmatch(name):
        raise InvalidNameError(
            "tmux socket name", name, "use 1-100 characters from A-Z a-z 0-9 _ . - (no slash)"
        )
    return name


def validate_session_name(name: str) -> str:
    """A valid attractor name without '.': tmux silently turns '.' and ':' into '_'."""
    validate_name(name, "tmux session name")
    if "." in name:
        raise InvalidNameError("tmux session name", name, f"no '.' (tmux rewrites it); {NAME_RULE}")
    return name


def validate_pane_id(pane_id: str) -> str:
    if not isinstance(pane_id, str) or not _PANE_ID_RE.fullmatch(pane_id):
        raise InvalidNameError("tmux pane id", str(pane_id), "expected '%' and digits, like %12")
    return pane_id


def sanitize_text(text: str) -> str:
    """Drop control characters (escape, carriage return, DEL, C1 …) except newline and tab."""
    return "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc"
    )


def _arg(value: str) -> str:
    """Protect one argument of a tmux command line: tmux ends a command at an argument that
    ends in ';' unless the ';' is written as '\\;'."""
    return value[:-1] + "\\;" if value.endswith(";") else value


def _format_literal(value: str) -> str:
    """Escape '#' in an argument tmux expands as a format (start directories)."""
    return value.replace("#", "##")


def _chunks(text: str, limit: int = SEND_CHUNK_BYTES) -> list[str]:
    """Split `text` into pieces of at most `limit` UTF-8 bytes, never inside a character."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for ch in text:
        width = len(ch.encode())
        if size + width > limit and current:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += width
    if current:
        pieces.append("".join(current))
    return pieces


@dataclass(frozen=True)
class PaneInfo:
    """One pane as tmux reports it. `last_activity` is the window's last activity (epoch s)."""

    pane_id: str
    pane_pid: int
    session_name: str
    window_id: str
    dead: bool
    current_command: str
    last_activity: float
    created_by_attractor: bool
    dead_status: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PaneInfo:
        status = data.get("dead_status")
        return cls(
            pane_id=str(data["pane_id"]),
            pane_pid=int(data["pane_pid"]),
            session_name=str(data["session_name"]),
            window_id=str(data["window_id"]),
            dead=bool(data["dead"]),
            current_command=str(data["current_command"]),
            last_activity=float(data["last_activity"]),
            created_by_attractor=bool(data["created_by_attractor"]),
            dead_status=None if status is None else int(status),
        )

    @classmethod
    def parse(cls, line: str) -> PaneInfo | None:
        """One line of `PANE_FORMAT` output; None for a line that does not fit."""
        parts = line.split(_SEP, len(_PANE_FIELDS) - 1)
        if len(parts) != len(_PANE_FIELDS):
            return None
        pane_id, pid, session, window, dead, status, activity, tag, command = parts
        try:
            return cls(
                pane_id=pane_id,
                pane_pid=int(pid or 0),
                session_name=session,
                window_id=window,
                dead=dead == "1",
                current_command=command,
                last_activity=float(activity or 0),
                created_by_attractor=tag == "1",
                dead_status=int(status) if status else None,
            )
        except ValueError:
            return None


class NotOwnedError(TmuxError):
    """A session or pane attractor did not create: refused, never killed."""

    def __init__(self, operation: str, what: str) -> None:
        self.what = what
        super().__init__(
            f"tmux {operation}", f"{what} was not created by attractor; refusing to touch it"
        )


class Tmux:
    """The project's tmux server, addressed by socket name. Creating it starts nothing."""

    def __init__(self, socket_name: str) -> None:
        self.socket_name = validate_socket_name(socket_name)
        binary = shutil.which("tmux")
        if binary is None:
            raise MissingBinaryError("tmux", INSTALL_HINT)
        self._argv = [binary, f"-L{self.socket_name}"]

    def __repr__(self) -> str:
        return f"Tmux(socket_name={self.socket_name!r})"

    # -- the one place tmux is called ------------------------------------------------------

    def _cmd(self, *args: str) -> tuple[int, list[str], list[str]]:
        """Run one tmux command line on our socket; returns (returncode, stdout lines without the
        trailing empty ones, non-empty stderr lines)."""
        try:
            result = subprocess.run([*self._argv, *args], stdin=subprocess.DEVNULL, capture_output=True,
                                    encoding="utf-8", errors="backslashreplace", timeout=COMMAND_TIMEOUT)
        except FileNotFoundError:
            raise MissingBinaryError("tmux", INSTALL_HINT) from None
        except subprocess.TimeoutExpired:
            raise TmuxError(f"tmux {args[0]}", f"no answer from the server on socket {self.socket_name!r} "
                            f"within {COMMAND_TIMEOUT:g} s") from None
        logger.debug(
            "tmux %s -> %s", args[0], result.returncode,
            extra={"att_tmux_socket": self.socket_name, "att_tmux_args": args},
        )
        out = result.stdout.split("\n")
        while out and out[-1] == "":
            out.pop()
        return result.returncode, out, [line for line in result.stderr.split("\n") if line]

    def _run(self, *args: str) -> list[str]:
        """Like `_cmd` but a failure raises `TmuxError('tmux <command>: <stderr>')`."""
        code, out, err = self._cmd(*args)
        if code != 0:
            raise TmuxError(f"tmux {args[0]}", "\n".join(err) or f"exit status {code}")
        return out

    @staticmethod
    def _no_server(err: Sequence[str]) -> bool:
        return any(marker in line for line in err for marker in _NO_SERVER)

    @staticmethod
    def _env_args(env: Mapping[str, str] | None) -> list[str]:
        merged = {
            key: value
            for key, value in os.environ.items()
            if key == "PATH" or key.startswith("ATTRACTOR_")
        }
        merged.update(env or {})
        args: list[str] = []
        for key, value in sorted(merged.items()):
            if not _ENV_KEY_RE.fullmatch(key):
                raise BadInputError(f"environment variable {key!r}", "not a valid name")
            args += ["-e", _arg(f"{key}={value}")]
        return args

    @staticmethod
    def _shell_command(command: Sequence[str]) -> list[str]:
        if not command or not all(isinstance(part, str) for part in command):
            raise BadInputError("pane command", "expected a non-empty list of strings")
        return ["/bin/sh", "-c", _arg("exec " + shlex.join(command))]

    @staticmethod
    def _cwd_args(cwd: Path) -> list[str]:
        path = Path(cwd).absolute()
        if not path.is_dir():
            raise NotFoundError("directory", str(path), "a pane needs an existing directory")
        return ["-c", _arg(_format_literal(str(path)))]

    # -- sessions --------------------------------------------------------------------------

    def new_session(
        self,
        name: str,
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        width: int = 200,
        height: int = 50,
        keep_dead_panes: bool = False,
    ) -> PaneInfo:
        """Start a detached session running `command` in its one pane, tagged as ours.

        One tmux invocation: create, tag session and pane, and set `remain-on-exit` (on only with
        `keep_dead_panes`, so a dead pane stays for diagnosis and `respawn_pane`).
        """
        validate_session_name(name)
        target = f"={name}:"
        args = [
            "new-session", "-d", "-s", name, "-x", str(int(width)), "-y", str(int(height)),
            "-P", "-F", PANE_FORMAT,
            *self._cwd_args(cwd), *self._env_args(env), *self._shell_command(command),
            ";", "set-option", "-t", target, SESSION_TAG, "1",
            ";", "set-option", "-t", target, "destroy-unattached", "off",
            ";", "set-option", "-p", "-t", target, PANE_TAG, "1",
            ";", "set-option", "-w", "-t", target, "remain-on-exit",
            "on" if keep_dead_panes else "off",
        ]
        out = self._run(*args)
        info = PaneInfo.parse(out[0]) if out else None
        if info is None:
            raise TmuxError("tmux new-session", f"unexpected output {out!r}")
        logger.info(
            "tmux session %s started: pane %s pid %s", name, info.pane_id, info.pane_pid,
            extra={"att_tmux_session": name, "att_tmux_pane": info.pane_id},
        )
        return dataclasses.replace(info, created_by_attractor=True)

    def has_session(self, name: str) -> bool:
        validate_session_name(name)
        code, _out, _err = self._cmd("has-session", "-t", f"={name}")
        return code == 0

    def _sessions(self) -> dict[str, bool]:
        """Every session on the socket -> whether it carries our tag. Empty with no server."""
        fmt = f"#{{session_name}}{_SEP}#{{{SESSION_TAG}}}"
        code, out, err = self._cmd("list-sessions", "-F", fmt)
        if code != 0:
            if self._no_server(err):
                return {}
            raise TmuxError("tmux list-sessions", "\n".join(err))
        sessions: dict[str, bool] = {}
        for line in out:
            name, _, tag = line.partition(_SEP)
            sessions[name] = tag == "1"
        return sessions

    def list_owned_sessions(self) -> list[str]:
        """The sessions attractor created on this socket (tagged when made)."""
        return [name for name, owned in self._sessions().items() if owned]

    def list_sessions(self) -> list[str]:
        return sorted(self._sessions())

    def kill_session(self, name: str) -> None:
        """Kill a session attractor created; a missing one is a no-op; a foreign one is refused."""
        validate_session_name(name)
        owned = self._sessions().get(name)
        if owned is None:
            return
        if not owned:
            raise NotOwnedError("kill-session", f"session {name!r}")
        code, _out, err = self._cmd("kill-session", "-t", f"={name}")
        if code != 0 and not any("can't find session" in line for line in err):
            raise TmuxError("tmux kill-session", "\n".join(err))

    def kill_owned_sessions(self, prefix: str | None = None) -> list[str]:
        """Kill every session we created (whose name starts with `prefix`); others are left.

        Returns the names killed. The server exits by itself once it has no session left.
        """
        killed: list[str] = []
        for name, owned in sorted(self._sessions().items()):
            if owned and (prefix is None or name.startswith(prefix)):
                code, _out, err = self._cmd("kill-session", "-t", f"={name}")
                if code == 0:
                    killed.append(name)
                elif not any("can't find session" in line for line in err):
                    raise TmuxError("tmux kill-session", "\n".join(err))
        return killed

    def attach_command(self, target: str) -> str:
        """The shell command a user types to look at a session or pane."""
        return shlex.join(["tmux", "-L", self.socket_name, "attach", "-t", target])

    # -- panes -----------------------------------------------------------------------------

    def list_panes(self) -> list[PaneInfo]:
        """Every pane on the socket in ONE `list-panes -a` call; [] when no server runs."""
        code, out, err = self._cmd("list-panes", "-a", "-F", PANE_FORMAT)
        if code != 0:
            if self._no_server(err):
                return []
            raise TmuxError("tmux list-panes", "\n".join(err))
        panes = []
        for line in out:
            info = PaneInfo.parse(line)
            if info is None:
                logger.warning("tmux list-panes: unreadable line %r", line)
            else:
                panes.append(info)
        return panes

    def pane(self, pane_id: str) -> PaneInfo | None:
        """One pane by id (one tmux call), or None if it (or the server) is gone."""
        validate_pane_id(pane_id)
        code, out, _err = self._cmd("display-message", "-p", "-t", pane_id, PANE_FORMAT)
        if code != 0 or not out:
            return None
        info = PaneInfo.parse(out[0])
        # display-message falls back to another pane (or prints nothing) for a missing target
        return info if info is not None and info.pane_id == pane_id else None

    def _owned_pane(self, operation: str, pane_id: str) -> PaneInfo:
        info = self.pane(pane_id)
        if info is None:
            raise TmuxError(f"tmux {operation}", f"can't find pane: {pane_id}")
        if not info.created_by_attractor:
            raise NotOwnedError(operation, f"pane {pane_id}")
        return info

    def kill_pane(self, pane_id: str) -> None:
        """Kill a pane attractor created; a missing one is a no-op; a foreign one is refused."""
        validate_pane_id(pane_id)
        info = self.pane(pane_id)
        if info is None:
            return
        if not info.created_by_attractor:
            raise NotOwnedError("kill-pane", f"pane {pane_id}")
        code, _out, err = self._cmd("kill-pane", "-t", pane_id)
        if code != 0 and not any("can't find pane" in line for line in err):
            raise TmuxError("tmux kill-pane", "\n".join(err))

    def respawn_pane(
        self,
        pane_id: str,
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        kill: bool = False,
    ) -> PaneInfo:
        """Run `command` again in a pane of ours (a dead one; a live one only with `kill`).

        Dead panes survive only in sessions made with `keep_dead_panes=True`.
        """
        validate_pane_id(pane_id)
        self._owned_pane("respawn-pane", pane_id)
        args = [
            "respawn-pane", *(["-k"] if kill else []), "-t", pane_id,
            *self._cwd_args(cwd), *self._env_args(env), *self._shell_command(command),
            ";", "display-message", "-p", "-t", pane_id, PANE_FORMAT,
        ]
        out = self._run(*args)
        info = PaneInfo.parse(out[-1]) if out else None
        if info is None or info.pane_id != pane_id:
            raise TmuxError("tmux respawn-pane", f"unexpected output {out!r}")
        return info

    def send_keys(self, pane_id: str, text: str, *, enter: bool = True) -> None:
        """Type `text` into a pane literally: control characters (but newline and tab) are
        dropped, tmux key names and `#{…}` are not interpreted, long text goes in pieces."""
        validate_pane_id(pane_id)
        commands = [
            ["send-keys", "-t", pane_id, "-l", "--", _arg(piece)]
            for piece in _chunks(sanitize_text(text))
        ]
        if enter:
            enter_keys = ["send-keys", "-t", pane_id, "Enter"]
            if commands:
                commands[-1] += [";", *enter_keys]
            else:
                commands.append(enter_keys)
        for args in commands:
            self._run(*args)

    def send_key_names(self, pane_id: str, keys: Sequence[str]) -> None:
        """Press named keys (`Enter`, `Down`, `y`, `1` …) in a pane, e.g. to answer a known
        prompt. Only plain key names and single printable characters are accepted."""
        validate_pane_id(pane_id)
        for key in keys:
            if not _KEY_NAME_RE.fullmatch(key):
                raise BadInputError("key name", f"{key!r} is not a plain tmux key name")
        if keys:
            self._run("send-keys", "-t", pane_id, *keys)

    def paste_text(self, pane_id: str, text: str, *, enter: bool = True, settle: float = 0.3) -> None:
        """Paste `text` into a pane as one bracketed paste (`load-buffer` + `paste-buffer -p`),
        then press Enter after `settle` seconds: `send-keys` splits long text, and an Enter sent
        with a long paste is lost by CLIs that are still taking the paste in."""
        import os
        import tempfile
        import time

        validate_pane_id(pane_id)
        clean = sanitize_text(text)
        buffer = f"attractor-{os.getpid()}-{time.monotonic_ns()}"
        fd, path = tempfile.mkstemp(prefix="attractor-paste-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(clean)
            self._run("load-buffer", "-b", buffer, path, ";", "paste-buffer", "-p", "-d", "-b", buffer,
                      "-t", pane_id)
        finally:
            os.unlink(path)
        if enter:
            time.sleep(settle)
            self._run("send-keys", "-t", pane_id, "Enter")

    def capture_pane(self, pane_id: str, lines: int = 200) -> str:
        """The last `lines` lines of a pane's history and screen, wrapped lines joined."""
        validate_pane_id(pane_id)
        out = self._run("capture-pane", "-p", "-J", "-t", pane_id, "-S", f"-{max(int(lines), 0)}")
        return "\n".join(line.rstrip() for line in out)
