"""The daemon as a service of the user's service manager: `attractor daemon install|uninstall`.

Files written (and removed by uninstall), one per machine, mode 0644:

    Linux   $XDG_CONFIG_HOME/systemd/user/attractor.service     (else ~/.config/systemd/user/)
            a systemd user unit. install: `systemctl --user daemon-reload`, then
            `systemctl --user enable --now attractor.service`; uninstall:
            `systemctl --user disable --now attractor.service`, the file, `daemon-reload`
    macOS   ~/Library/LaunchAgents/dev.attractor.daemon.plist
            a launchd agent. install: `launchctl bootstrap gui/<uid> <plist>`, then
            `launchctl kickstart -k gui/<uid>/dev.attractor.daemon`; uninstall:
            `launchctl bootout gui/<uid>/dev.attractor.daemon`, the file

Both run `<this Python> -m attractor daemon start --foreground` with the installing user's PATH
(so tmux, git and the agent CLIs are found), restart it when it fails (not when it is stopped
with `attractor daemon stop`, which exits 0), and leave the guardians and their tmux servers
running when the daemon stops (`KillMode=process`, `AbandonProcessGroup`). Under systemd the
daemon's stdout and stderr go to the journal; under launchd to `<logs>/daemon.err`, where
`attractor daemon start` puts them too. Either way the daemon writes `<logs>/daemon.log` itself.

`systemd_unit` and `launchd_plist` are pure: they build the file from their arguments and refuse
(exit 2) a value that the file cannot hold as it is, such as a newline in a path. Nothing is
written or removed when the service manager is absent or does not answer (exit 1). Staleness:
none; a reinstall rewrites the file and restarts a running daemon with it.
"""

from __future__ import annotations

import logging
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from attractor.errors import AttractorError, ExternalCommandError, UsageError

logger = logging.getLogger(__name__)

UNIT_NAME = "attractor.service"
LABEL = "dev.attractor.daemon"
RESTART_SEC = 5
FILE_MODE = 0o644
COMMAND_TIMEOUT = 60.0
DAEMON_ARGS = ("-m", "attractor", "daemon", "start", "--foreground")
SYSTEMD, LAUNCHD = "systemd", "launchd"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,126}")
# systemd takes no quote, backslash or control character in an executable's name, and
# expands `$` in the command line (argv[0] included) but not in the path it executes
_NOT_IN_SYSTEMD_EXECUTABLE = "\"'\\$"


class ServiceValueError(UsageError):
    """A value the service file cannot hold as it is. Exit code 2."""

    def __init__(self, what: str, value: str, problem: str, fix: str) -> None:
        self.what = what
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{what} {value!r} {problem}; {fix}")


class NoServiceManagerError(AttractorError):
    """The service manager is absent or cannot be reached from here. Exit code 1."""

    def __init__(self, reason: str, consequence: str) -> None:
        self.reason = reason
        self.consequence = consequence
        super().__init__(f"{reason}; {consequence}")


# -- the files --------------------------------------------------------------------------------


def _check_text(what: str, value: str, where: str, fix: str) -> None:
    found = _CONTROL.search(value)
    if found:
        raise ServiceValueError(what, value, f"holds the control character {found.group()!r}, which would break "
                                f"the {where}", fix)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceValueError(what, value, f"is not valid UTF-8, which the {where} needs", fix) from None


def _check_python(python: str, where: str, forbidden: str = "") -> None:
    fix = "install with a Python at a plain absolute path (a virtualenv's bin/python will do)"
    _check_text("the Python path", python, where, fix)
    if not os.path.isabs(python) or os.path.normpath(python) != python:
        raise ServiceValueError("the Python path", python, f"is not a normalized absolute path, which the {where} "
                                "needs", fix)
    bad = sorted({c for c in python if c in forbidden})
    if bad:
        raise ServiceValueError("the Python path", python, f"holds {' '.join(bad)}, which the {where} cannot take "
                                "in the program it runs", fix)


def _check_common(path_env: str, log_dir: Path, where: str) -> None:
    _check_text("PATH", path_env, where, "install with a PATH that has none")
    _check_text("the log directory", str(log_dir), where, "set XDG_STATE_HOME to a plain path")
    if not log_dir.is_absolute():
        raise ServiceValueError("the log directory", str(log_dir), "is not absolute", "set XDG_STATE_HOME to an "
                                "absolute path")


def _systemd_word(value: str) -> str:
    """One word of a unit setting, double-quoted: backslash and quote escaped (systemd undoes C
    escapes inside quotes), `%` doubled (systemd expands specifiers)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def systemd_unit(python: str, path_env: str, log_dir: Path) -> str:
    """The systemd user unit that runs the daemon with `python`, the PATH `path_env`, and
    `log_dir` (named in a comment: the daemon finds its log directory itself)."""
    where = "systemd unit"
    _check_python(python, where, _NOT_IN_SYSTEMD_EXECUTABLE)
    _check_common(path_env, log_dir, where)
    command = " ".join([_systemd_word(python), *DAEMON_ARGS])
    return (
        "# The attractor daemon as a systemd user service: written by `attractor daemon install`,\n"
        "# removed by `attractor daemon uninstall`. Its stdout and stderr go to the journal\n"
        f"# (journalctl --user -u {UNIT_NAME}); the daemon's own log is\n"
        f"#   {log_dir}/daemon.log\n"
        "[Unit]\n"
        "Description=attractor daemon: supervises the runs of every registered project\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={command}\n"
        f"Environment={_systemd_word('PATH=' + path_env)}\n"
        "Restart=on-failure\n"
        f"RestartSec={RESTART_SEC}\n"
        "# only the daemon stops with the service: the guardians and their tmux servers go on\n"
        "KillMode=process\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_plist(python: str, path_env: str, log_dir: Path, label: str = LABEL) -> bytes:
    """The launchd agent (an XML property list) that runs the daemon with `python`, the PATH
    `path_env`, and its stdout and stderr appended to `log_dir`/daemon.err."""
    where = "launchd property list"
    _check_python(python, where)
    _check_common(path_env, log_dir, where)
    if not _LABEL_RE.fullmatch(label):
        raise ServiceValueError("the launchd label", label, "is not a reverse-DNS name",
                                "use letters, digits, dots and dashes, e.g. dev.attractor.daemon")
    output = str(log_dir / "daemon.err")
    document = {
        "Label": label,
        "ProgramArguments": [python, *DAEMON_ARGS],
        "EnvironmentVariables": {"PATH": path_env},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart on failure; `attractor daemon stop` exits 0
        "ThrottleInterval": RESTART_SEC,
        "AbandonProcessGroup": True,  # the guardians go on when the daemon stops
        "StandardOutPath": output,
        "StandardErrorPath": output,
    }
    return plistlib.dumps(document, fmt=plistlib.FMT_XML, sort_keys=False)


# -- this machine -----------------------------------------------------------------------------


def unit_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser().absolute() / "systemd" / "user" / UNIT_NAME


def plist_path(label: str = LABEL) -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{label}.plist"


def manager_for(platform: str | None = None) -> str:
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return SYSTEMD
    if platform == "darwin":
        return LAUNCHD
    raise NoServiceManagerError(f"no service manager for platform {platform!r} (install knows systemd on Linux "
                                "and launchd on macOS)", "run the daemon with: attractor daemon start")


def service_path(manager: str) -> Path:
    return unit_path() if manager == SYSTEMD else plist_path()


def _domain() -> str:
    return f"gui/{os.getuid()}"


@dataclass(frozen=True)
class ServiceFile:
    manager: str
    path: Path
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")

    @property
    def kind(self) -> str:
        return "systemd user unit" if self.manager == SYSTEMD else "launchd agent"

    @property
    def install_commands(self) -> list[list[str]]:
        if self.manager == SYSTEMD:
            return [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT_NAME]]
        return [["launchctl", "bootstrap", _domain(), str(self.path)],
                ["launchctl", "kickstart", "-k", f"{_domain()}/{LABEL}"]]


def service_for(manager: str) -> ServiceFile:
    """The service file for this user: this Python, this PATH, the daemon's log directory."""
    from attractor.control.client import log_dir

    path_env = os.environ.get("PATH", os.defpath)
    if manager == SYSTEMD:
        content = systemd_unit(sys.executable, path_env, log_dir()).encode("utf-8")
    else:
        content = launchd_plist(sys.executable, path_env, log_dir())
    return ServiceFile(manager, service_path(manager), content)


# -- the service manager ----------------------------------------------------------------------


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    logger.info("running %s", shlex.join(argv))
    try:
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ExternalCommandError(shlex.join(argv), f"no answer within {COMMAND_TIMEOUT:g}s") from None
    except OSError as exc:
        raise ExternalCommandError(shlex.join(argv), exc.strerror or str(exc)) from None


def _first_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return lines[0].strip() if lines else f"exit status {done.returncode}"


def _must(argv: list[str]) -> None:
    done = _run(argv)
    if done.returncode != 0:
        raise ExternalCommandError(shlex.join(argv), _first_line(done))


def manager_problem(manager: str) -> str | None:
    """Why the service manager cannot be used from here, or None when it can: its tool is not on
    PATH, or it does not answer (a container with no user manager, a session with no GUI domain)."""
    tool = "systemctl" if manager == SYSTEMD else "launchctl"
    if shutil.which(tool) is None:
        return f"{tool} not found on PATH"
    if manager == SYSTEMD:
        done = _run(["systemctl", "--user", "show-environment"])
        if done.returncode != 0:
            return f"systemctl --user cannot reach a user manager ({_first_line(done)})"
    else:
        done = _run(["launchctl", "print", _domain()])
        if done.returncode != 0:
            return f"launchctl cannot reach the {_domain()} domain ({_first_line(done)})"
    return None


def _write(service: ServiceFile) -> None:
    from attractor.store import atomic

    try:
        service.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes_atomic(service.path, service.content, mode=FILE_MODE)
    except OSError as exc:
        raise AttractorError(f"cannot write {service.path}: {exc.strerror or exc}") from None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def install(service: ServiceFile) -> list[str]:
    """Write the file and have the service manager start the daemon; the lines to print. Nothing
    is written when the manager cannot be used (NoServiceManagerError)."""
    problem = manager_problem(service.manager)
    if problem:
        then = " && ".join(shlex.join(argv) for argv in service.install_commands)
        raise NoServiceManagerError(problem, f"nothing installed; the {service.kind} is on stdout: save it as "
                                    f"{service.path}, then run: {then}")
    previous = _read(service.path)
    if service.manager == LAUNCHD:
        from attractor.control.client import log_dir
        from attractor.control.daemon import ensure_private

        ensure_private(log_dir())  # launchd opens daemon.err there and creates no directory
        gone = _run(["launchctl", "bootout", f"{_domain()}/{LABEL}"])  # loaded from an older file
        logger.info("bootout before bootstrap: %s", "done" if gone.returncode == 0 else _first_line(gone))
    _write(service)
    for argv in service.install_commands:
        _must(argv)
    if service.manager == SYSTEMD:
        if previous not in (None, service.content):
            _must(["systemctl", "--user", "try-restart", UNIT_NAME])  # a running daemon gets the new unit
        return [f"installed {service.path}; {UNIT_NAME} runs the daemon (systemctl --user status {UNIT_NAME}, "
                "attractor daemon status)",
                "it starts when you log in; to keep it running without a login session: loginctl enable-linger"]
    return [f"installed {service.path}; launchd runs the daemon as {_domain()}/{LABEL} (attractor daemon status)",
            "it starts when you log in"]


def uninstall(manager: str) -> list[str]:
    """Stop and remove the service; the lines to print. Nothing installed is not an error."""
    path = service_path(manager)
    if not (path.exists() or path.is_symlink()):
        return [f"no service installed: {path} does not exist"]
    problem = manager_problem(manager)
    if manager == SYSTEMD:
        stop = ["systemctl", "--user", "disable", "--now", UNIT_NAME]
    else:
        stop = ["launchctl", "bootout", f"{_domain()}/{LABEL}"]
    if problem:
        by_hand = " && ".join([shlex.join(stop), shlex.join(["rm", str(path)])])
        raise NoServiceManagerError(problem, f"nothing removed; to remove it by hand: {by_hand}")
    lines = []
    if manager == SYSTEMD:
        _must(stop)
    else:
        done = _run(stop)
        if done.returncode != 0:  # not loaded: there is nothing to stop
            lines.append(f"note: {shlex.join(stop)}: {_first_line(done)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise AttractorError(f"cannot remove {path}: {exc.strerror or exc}") from None
    if manager == SYSTEMD:
        _must(["systemctl", "--user", "daemon-reload"])
    return [*lines, f"removed {path}; the daemon service is stopped and will not start again"]
