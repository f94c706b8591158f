"""The daemon as a service (control/service_files.py): the systemd unit checked by the real
`systemd-analyze verify`, the launchd property list read back with plistlib, and
`attractor daemon install|uninstall` run as real processes where `systemctl --user` reaches no
user manager (each test gets an empty runtime directory and no session bus, so a test never
installs anything into the developer's own user manager).

A test that needs systemd-analyze or systemctl skips with the reason when it is missing, except
under CI=true, where it fails."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.control import service_files
from attractor.control.daemon import log_dir
from attractor.control.service_files import UNIT_NAME, ServiceValueError, launchd_plist, systemd_unit
from attractor.errors import EXIT_USAGE
from tests.helpers import run_cli

DAEMON_ARGV = ["-m", "attractor", "daemon", "start", "--foreground"]
# what each of systemd's quoting rules would turn into a warning if the unit got it wrong:
# unbalanced quotes, an unknown C escape, an unknown specifier
AWKWARD_PATH = "/a b:/c\"d:/e%Zf:/g\\qh:/x'y$z:/usr/bin:/bin"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        reason = f"{name} is not installed (bash scripts/bootstrap.sh test installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true: nothing may skip)")
        pytest.skip(reason)
    return found


def _verify(unit: str, tmp_path: Path) -> str:
    """What the real `systemd-analyze --user verify` says about `unit`: '' when it finds nothing
    wrong. Unknown directives and bad values are warnings with exit status 0, so what it says
    counts as much as its exit status. Offline it needs a private XDG_RUNTIME_DIR (short: the
    user units that default.target pulls in put sockets there) and an ExecStart program that
    exists. Lines about other units installed on the machine are not ours to judge."""
    analyze = _binary("systemd-analyze")
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    unit_file = work / UNIT_NAME
    unit_file.write_text(unit, encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="att-") as runtime:
        os.chmod(runtime, 0o700)
        done = subprocess.run([analyze, "--user", "--man=no", "verify", str(unit_file)], capture_output=True,
                              text=True, env={**os.environ, "XDG_RUNTIME_DIR": runtime}, timeout=60, check=False)
    said = (done.stdout + done.stderr).strip()
    ours = "\n".join(line for line in said.splitlines() if UNIT_NAME in line)
    if ours or done.returncode == 0:
        return ours
    return said or f"exit status {done.returncode}"


def _no_user_manager(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a process that no user manager answers: an empty runtime directory,
    no session bus."""
    runtime = tmp_path / "empty-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    return {**env, "XDG_RUNTIME_DIR": str(runtime), **extra}


def _unit_for(env: dict[str, str]) -> str:
    """The unit `attractor daemon install` writes for a process with this environment."""
    return systemd_unit(sys.executable, env["PATH"], log_dir())


# -- the systemd unit -------------------------------------------------------------------------


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = systemd_unit(sys.executable, os.environ["PATH"], log_dir())
    assert _verify(unit, tmp_path) == ""
    lines = unit.splitlines()
    for line in ("Restart=on-failure", "RestartSec=5", "KillMode=process", "WantedBy=default.target",
                 f'Environment="PATH={os.environ["PATH"]}"',
                 f'ExecStart="{sys.executable}" -m attractor daemon start --foreground'):
        assert line in lines
    assert not any(line.startswith(("StandardOutput=", "StandardError=")) for line in lines)  # the journal


class Broken(NamedTuple):
    test_id: str
    good: str
    bad: str


BROKEN = [
    Broken("misspelt-directive", "RestartSec=", "RestratSec="),
    Broken("bad-restart-value", "Restart=on-failure", "Restart=sometimes"),
    Broken("missing-program", f'"{sys.executable}"', '"/nonexistent/bin/python"'),
    Broken("unescaped-percent", "PATH=", "PATH=/opt/%Z:"),
    Broken("unbalanced-quote", 'Environment="PATH=', 'Environment="PATH="'),
    Broken("unknown-section", "[Install]", "[Instal]"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c.test_id for c in BROKEN])
def test_verify_finds_a_broken_unit(case: Broken, tmp_path: Path) -> None:
    """The check above is evidence only if it fails for a unit that systemd would not run as
    written."""
    unit = systemd_unit(sys.executable, "/usr/bin:/bin", log_dir())
    assert case.good in unit
    assert _verify(unit.replace(case.good, case.bad, 1), tmp_path) != ""


class OddPath(NamedTuple):
    test_id: str
    directory: str
    path_env: str


ODD_PATHS = [
    OddPath("space", "my python env", "/usr/bin:/bin"),
    OddPath("percent", "100%h %%x", "/usr/bin:/opt/%n/bin"),
    OddPath("semicolon-and-hash", "a;b #c", "/usr/bin:/bin"),
    OddPath("unicode", "pythön ✓", "/usr/bin:/bin"),
    OddPath("awkward-PATH", "plain", AWKWARD_PATH),
]


@pytest.mark.parametrize("case", ODD_PATHS, ids=[c.test_id for c in ODD_PATHS])
def test_odd_paths_are_quoted_for_systemd(case: OddPath, tmp_path: Path) -> None:
    """systemd checks that the program it would run exists, under its name after unquoting and
    specifier expansion, so a path quoted wrongly is an error here, as is a PATH it cannot parse."""
    python = tmp_path / case.directory / "python"
    python.parent.mkdir()
    python.symlink_to(sys.executable)
    assert _verify(systemd_unit(str(python), case.path_env, tmp_path / "log dir"), tmp_path) == ""


class Refused(NamedTuple):
    test_id: str
    python: str
    path_env: str
    logs: str
    what: str
    systemd_only: bool  # a plist holds it


REFUSED = [
    Refused("newline-in-python", "/opt/py\nthon/bin/python", "/bin", "/logs", "the Python path", False),
    Refused("relative-python", "bin/python", "/bin", "/logs", "the Python path", False),
    Refused("unnormalized-python", "/opt/../usr/bin/python", "/bin", "/logs", "the Python path", False),
    Refused("quote-in-python", '/opt/"x"/python', "/bin", "/logs", "the Python path", True),
    Refused("backslash-in-python", "/opt/a\\b/python", "/bin", "/logs", "the Python path", True),
    Refused("dollar-in-python", "/opt/$HOME/python", "/bin", "/logs", "the Python path", True),
    Refused("newline-in-PATH", "/usr/bin/python3", "/bin\n/evil", "/logs", "PATH", False),
    Refused("nul-in-PATH", "/usr/bin/python3", "/bin\x00", "/logs", "PATH", False),
    Refused("not-utf8-PATH", "/usr/bin/python3", "/bin:/opt/\udcff", "/logs", "PATH", False),
    Refused("newline-in-log-dir", "/usr/bin/python3", "/bin", "/var/lo\ng", "the log directory", False),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c.test_id for c in REFUSED])
def test_values_that_would_break_the_file_are_refused(case: Refused) -> None:
    with pytest.raises(ServiceValueError) as refused:
        systemd_unit(case.python, case.path_env, Path(case.logs))
    message = str(refused.value)
    assert refused.value.exit_code == EXIT_USAGE and "\n" not in message and message.startswith(case.what)
    if case.systemd_only:
        document = plistlib.loads(launchd_plist(case.python, case.path_env, Path(case.logs)))
        assert document["ProgramArguments"][0] == case.python
    else:
        with pytest.raises(ServiceValueError):
            launchd_plist(case.python, case.path_env, Path(case.logs))


# -- the launchd property list ----------------------------------------------------------------


class PlistCase(NamedTuple):
    test_id: str
    python: str
    path_env: str
    logs: str


PLISTS = [
    PlistCase("plain", "/Users/me/.venv/bin/python", "/usr/bin:/bin", "/Users/me/.local/state/attractor/logs"),
    PlistCase("markup-and-spaces", "/Users/me/A & B <x>/bin/python", AWKWARD_PATH, "/Users/me/l'o\"g s"),
    PlistCase("unicode", "/Users/zoë/ü/bin/python", "/opt/✓:/bin", "/Users/zoë/logs"),
]


@pytest.mark.parametrize("case", PLISTS, ids=[c.test_id for c in PLISTS])
def test_the_plist_reads_back(case: PlistCase) -> None:
    data = launchd_plist(case.python, case.path_env, Path(case.logs))
    assert data.startswith(b"<?xml")
    document = plistlib.loads(data)
    output = str(Path(case.logs) / "daemon.err")
    assert document == {
        "Label": "dev.attractor.daemon",
        "ProgramArguments": [case.python, *DAEMON_ARGV],
        "EnvironmentVariables": {"PATH": case.path_env},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "AbandonProcessGroup": True,
        "StandardOutPath": output,
        "StandardErrorPath": output,
    }


# -- `attractor daemon install|uninstall` as a user runs them ---------------------------------


def test_install_without_a_user_manager_prints_the_unit_and_changes_nothing(tmp_path: Path) -> None:
    _binary("systemctl")
    env = _no_user_manager(tmp_path)
    result = run_cli(["daemon", "install"], env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: systemctl --user cannot reach a user manager (")
    assert f"save it as {service_files.unit_path()}" in result.stderr
    assert result.stdout == _unit_for(env)
    assert not (Path.home() / ".config" / "systemd").exists()


def test_install_without_systemctl_says_so(tmp_path: Path) -> None:
    bare = tmp_path / "bare bin"
    bare.mkdir()
    env = _no_user_manager(tmp_path, PATH=str(bare))
    result = run_cli(["daemon", "install"], env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: systemctl not found on PATH")
    assert result.stdout == _unit_for(env) and f'Environment="PATH={bare}"' in result.stdout
    assert not (Path.home() / ".config" / "systemd").exists()


class DryRun(NamedTuple):
    test_id: str
    xdg_config_home: str | None  # relative to the test's tmp_path


DRY_RUNS = [DryRun("home-config", None), DryRun("xdg-config-home", "my config")]


@pytest.mark.parametrize("case", DRY_RUNS, ids=[c.test_id for c in DRY_RUNS])
def test_dry_run_prints_the_unit_and_where_it_goes(case: DryRun, tmp_path: Path) -> None:
    extra = {"XDG_CONFIG_HOME": str(tmp_path / case.xdg_config_home)} if case.xdg_config_home else {}
    env = _no_user_manager(tmp_path, **extra)
    result = run_cli(["daemon", "install", "--dry-run"], env=env)
    assert result.returncode == 0, result.stderr
    config = tmp_path / case.xdg_config_home if case.xdg_config_home else Path.home() / ".config"
    destination = config / "systemd" / "user" / UNIT_NAME
    assert result.stderr.count("\n") == 1 and f"to {destination}, then run: " in result.stderr
    assert "systemctl --user daemon-reload && systemctl --user enable --now attractor.service" in result.stderr
    assert result.stdout == _unit_for(env)
    assert not (config / "systemd").exists() and not log_dir().exists()
    assert _verify(result.stdout, tmp_path) == ""


def test_uninstall_with_nothing_installed_succeeds_without_a_user_manager(tmp_path: Path) -> None:
    result = run_cli(["daemon", "uninstall"], env=_no_user_manager(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"no service installed: {service_files.unit_path()} does not exist\n"
    assert result.stderr == "" and not (Path.home() / ".config").exists()


def test_uninstall_without_a_user_manager_leaves_the_unit(tmp_path: Path) -> None:
    _binary("systemctl")
    unit = service_files.unit_path()
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\n")
    result = run_cli(["daemon", "uninstall"], env=_no_user_manager(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot reach a user manager" in result.stderr
    assert "nothing removed" in result.stderr and str(unit) in result.stderr
    assert unit.read_text() == "[Unit]\n"


@pytest.mark.parametrize("words", [["--dry-run"], []], ids=["dry-run", "install"])
def test_a_path_that_would_break_the_unit_is_refused(words: list[str], tmp_path: Path) -> None:
    env = _no_user_manager(tmp_path, PATH=f"/usr/bin\n[Service]\nExecStartPre=/bin/false:{os.environ['PATH']}")
    result = run_cli(["daemon", "install", *words], env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: PATH '/usr/bin\\n[Service]")
    assert result.stdout == "" and not (Path.home() / ".config").exists()
