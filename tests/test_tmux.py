"""tmux.py against real tmux on the private socket the conftest gives each test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.errors import InvalidNameError, MissingBinaryError, NotFoundError, TmuxError
from attractor.tmux import NotOwnedError, PaneInfo, Tmux, sanitize_text, socket_name_for
from tests.helpers import retry_until


@pytest.fixture
def tmux(tmux_socket: str) -> Tmux:
    return Tmux(tmux_socket)


def _raw(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    """tmux itself, outside attractor: how a user would make a session on the same socket."""
    return subprocess.run(
        ["tmux", "-L", socket, *args], capture_output=True, text=True, check=False
    )


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# -- socket names ------------------------------------------------------------------------------


def test_socket_name_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTRACTOR_TMUX_SOCKET")
    default = socket_name_for(tmp_path)
    assert default.startswith("attractor-") and len(default) == len("attractor-") + 10
    assert socket_name_for(tmp_path / "." / "") == default  # resolved path
    assert socket_name_for(tmp_path / "other") != default
    monkeypatch.setenv("ATTRACTOR_TMUX_SOCKET", "from-env")
    assert socket_name_for(tmp_path) == "from-env"
    assert socket_name_for(tmp_path, "explicit") == "explicit"
    with pytest.raises(InvalidNameError, match="tmux socket name"):
        socket_name_for(tmp_path, "../escape")


def test_missing_tmux_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a private patch context: the conftest's teardown still needs tmux on PATH
    with monkeypatch.context() as patch, pytest.raises(MissingBinaryError) as info:
        patch.setenv("PATH", str(tmp_path))
        Tmux("anything")
    assert str(info.value) == (
        "required program 'tmux' not found; install it with: apt-get install tmux"
    )


# -- sessions ----------------------------------------------------------------------------------


def test_create_list_kill(tmux: Tmux, tmp_path: Path) -> None:
    assert tmux.list_panes() == []  # no server yet: empty, no exception
    assert tmux.list_sessions() == []
    first = tmux.new_session("runner-a", ["sleep", "60"], cwd=tmp_path)
    second = tmux.new_session("runner-b", ["sleep", "60"], cwd=tmp_path)
    assert first.created_by_attractor and first.pane_id.startswith("%") and first.pane_pid > 0
    assert first.session_name == "runner-a" and not first.dead
    assert tmux.has_session("runner-a") and not tmux.has_session("runner")  # exact names
    assert tmux.list_sessions() == ["runner-a", "runner-b"]
    panes = {p.pane_id: p for p in tmux.list_panes()}
    assert set(panes) == {first.pane_id, second.pane_id}
    assert panes[first.pane_id].pane_pid == first.pane_pid
    assert panes[first.pane_id].current_command == "sleep"  # exec'd: the pane pid is the command
    assert tmux.pane(first.pane_id) == panes[first.pane_id]
    assert tmux.pane("%9999") is None

    with pytest.raises(TmuxError) as info:
        tmux.new_session("runner-a", ["true"], cwd=tmp_path)
    assert str(info.value) == "tmux new-session: duplicate session: runner-a"

    tmux.kill_session("runner-a")
    tmux.kill_session("runner-a")  # missing: no-op
    assert not tmux.has_session("runner-a")
    assert [p.pane_id for p in tmux.list_panes()] == [second.pane_id]
    tmux.kill_pane(second.pane_id)
    assert tmux.list_panes() == []
    tmux.kill_pane(second.pane_id)  # missing: no-op


class BadSession(NamedTuple):
    test_id: str
    name: str


BAD_SESSIONS = [
    BadSession("dot-rewritten-by-tmux", "a.b"),
    BadSession("colon", "a:b"),
    BadSession("upper", "Runner"),
    BadSession("semicolon", "a;b"),
    BadSession("space", "a b"),
]


@pytest.mark.parametrize("case", BAD_SESSIONS, ids=[c.test_id for c in BAD_SESSIONS])
def test_bad_session_names(tmux: Tmux, tmp_path: Path, case: BadSession) -> None:
    with pytest.raises(InvalidNameError, match="tmux session name"):
        tmux.new_session(case.name, ["true"], cwd=tmp_path)
    assert tmux.list_sessions() == []


def test_missing_cwd_is_refused(tmux: Tmux, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="directory"):
        tmux.new_session("x", ["true"], cwd=tmp_path / "nope")
    assert tmux.list_sessions() == []


def test_never_touches_foreign_sessions(tmux: Tmux, tmux_socket: str, tmp_path: Path) -> None:
    ours = tmux.new_session("ours-1", ["sleep", "60"], cwd=tmp_path)
    assert _raw(tmux_socket, "new-session", "-d", "-s", "foreign", "sleep 60").returncode == 0
    # a pane the user splits inside our session is not ours either
    split = _raw(tmux_socket, "split-window", "-t", ours.pane_id, "-P", "-F", "#{pane_id}",
                 "sleep 60")
    user_pane = split.stdout.strip()

    owned = {p.pane_id: p.created_by_attractor for p in tmux.list_panes()}
    assert owned[ours.pane_id] and not owned[user_pane] and sum(owned.values()) == 1

    with pytest.raises(NotOwnedError) as info:
        tmux.kill_session("foreign")
    assert str(info.value) == (
        "tmux kill-session: session 'foreign' was not created by attractor; refusing to touch it"
    )
    with pytest.raises(NotOwnedError):
        tmux.kill_pane(user_pane)
    foreign_pane = next(p for p in tmux.list_panes() if p.session_name == "foreign")
    with pytest.raises(NotOwnedError):
        tmux.respawn_pane(foreign_pane.pane_id, ["true"], cwd=tmp_path, kill=True)

    assert tmux.kill_owned_sessions() == ["ours-1"]
    assert tmux.list_sessions() == ["foreign"]  # still there, server still up


def test_kill_owned_sessions_by_prefix(tmux: Tmux, tmp_path: Path) -> None:
    for name in ("run1-a", "run1-b", "run2-a"):
        tmux.new_session(name, ["sleep", "60"], cwd=tmp_path)
    assert tmux.kill_owned_sessions("run1-") == ["run1-a", "run1-b"]
    assert tmux.list_sessions() == ["run2-a"]


# -- commands, environment, directories reach the pane literally --------------------------------

HOSTILE = "; rm -rf / #{pane_id} $(echo no) `id` 'single' \"double\" C-c Enter \\; end;"


def test_command_env_and_cwd_arrive_literally(tmux: Tmux, tmp_path: Path) -> None:
    workdir = tmp_path / "dir #{pane_id} ##x;"
    workdir.mkdir()
    out = tmp_path / "out.txt"
    script = 'printf "%s|%s|%s|" "$1" "$ATT_VALUE" "$(pwd)" > "$2"; printf ok >> "$2"'
    tmux.new_session(
        "literal", ["/bin/sh", "-c", script, "sh", HOSTILE, str(out)],
        cwd=workdir, env={"ATT_VALUE": HOSTILE},
    )
    text = retry_until(lambda: _read(out).endswith("ok") and _read(out), what="pane output")
    assert text == f"{HOSTILE}|{HOSTILE}|{workdir}|ok"


def test_caller_attractor_env_is_passed(tmux: Tmux, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRACTOR_STATE_DIR", str(tmp_path / "state-x"))
    out = tmp_path / "env.txt"
    tmux.new_session("envs", ["/bin/sh", "-c", 'printf %s "$ATTRACTOR_STATE_DIR" > "$0"',
                              str(out)], cwd=tmp_path)
    assert retry_until(lambda: _read(out), what="env file") == str(tmp_path / "state-x")


class KeysCase(NamedTuple):
    test_id: str
    text: str


KEYS_CASES = [
    KeysCase("shell-injection", "; rm -rf / && echo pwned"),
    KeysCase("tmux-format", "#{pane_id} #{session_name} ##"),
    KeysCase("quotes", "it's \"quoted\" `tick` $HOME \\n"),
    KeysCase("key-names", "C-c C-d Enter Escape BSpace"),
    KeysCase("bare-key-name-c-c", "C-c"),
    KeysCase("bare-key-name-bspace", "BSpace"),
    KeysCase("trailing-semicolon", "stop;"),
    KeysCase("trailing-escaped-semicolon", "stop\\;"),
    KeysCase("lone-semicolon", ";"),
    KeysCase("looks-like-a-flag", "-l -t %0 -- x"),
    KeysCase("braces", "{"),
    KeysCase("unicode-and-tab", "héllo\t✓ 日本"),
    KeysCase("control-chars-stripped", "a\x03b\x04c\x1b[31md\re\x7f\x15f"),
    KeysCase("multi-line", "line one\nline two ;\nline three"),
]


@pytest.mark.parametrize("case", KEYS_CASES, ids=[c.test_id for c in KEYS_CASES])
def test_send_keys_arrive_literally(tmux: Tmux, tmp_path: Path, case: KeysCase) -> None:
    out = tmp_path / "typed.txt"
    pane = tmux.new_session("keys", ["/bin/sh", "-c", 'cat > "$0"', str(out)], cwd=tmp_path)
    tmux.send_keys(pane.pane_id, case.text)
    expected = sanitize_text(case.text) + "\n"
    assert retry_until(lambda: _read(out) == expected, seconds=5, what=f"cat to see {expected!r}")
    assert "\x03" not in expected and "\x1b" not in expected


def test_send_keys_long_text_in_pieces(tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "typed.txt"
    pane = tmux.new_session("long", ["/bin/sh", "-c", 'cat > "$0"', str(out)], cwd=tmp_path)
    # 40 000 characters (well past tmux's 16 KiB command limit), pieces end in ';' and 'é'
    line = "x" * 60 + "é;" + "#{pane_id};"
    text = "\n".join(f"{i:05d} {line}" for i in range(500))
    tmux.send_keys(pane.pane_id, text)
    assert retry_until(lambda: _read(out) == text + "\n", seconds=15, what="all the text")


def test_send_keys_without_enter_then_capture(tmux: Tmux, tmp_path: Path) -> None:
    pane = tmux.new_session("cap", ["/bin/sh", "-c", "printf 'hello\\nworld\\n'; exec cat"],
                            cwd=tmp_path)
    retry_until(lambda: "world" in tmux.capture_pane(pane.pane_id), what="printf output")
    tmux.send_keys(pane.pane_id, "typed #{pane_id}", enter=False)
    text = retry_until(lambda: "typed" in tmux.capture_pane(pane.pane_id) and
                       tmux.capture_pane(pane.pane_id), what="echo of typed text")
    assert text.splitlines()[:3] == ["hello", "world", "typed #{pane_id}"]
    assert tmux.capture_pane(pane.pane_id, lines=0).startswith("hello")
    with pytest.raises(TmuxError, match="tmux capture-pane: can't find pane: %9999"):
        tmux.capture_pane("%9999")
    with pytest.raises(InvalidNameError):
        tmux.send_keys("%1; kill-server", "x")


# -- liveness ----------------------------------------------------------------------------------


def test_dead_pane_detected_and_respawned(tmux: Tmux, tmp_path: Path) -> None:
    pane = tmux.new_session("dies", ["sleep", "60"], cwd=tmp_path, keep_dead_panes=True)
    os.kill(pane.pane_pid, signal.SIGKILL)
    dead = retry_until(lambda: (info := tmux.pane(pane.pane_id)) and info.dead and info,
                       what="pane marked dead")
    assert dead.created_by_attractor and tmux.has_session("dies")
    assert [p.dead for p in tmux.list_panes()] == [True]

    again = tmux.respawn_pane(pane.pane_id, ["sleep", "60"], cwd=tmp_path)
    assert again.pane_id == pane.pane_id and not again.dead and again.pane_pid != pane.pane_pid
    with pytest.raises(TmuxError, match=r"tmux respawn-pane: .*still active"):
        tmux.respawn_pane(pane.pane_id, ["true"], cwd=tmp_path)
    replaced = tmux.respawn_pane(pane.pane_id, ["sleep", "61"], cwd=tmp_path, kill=True)
    assert replaced.pane_pid != again.pane_pid


def test_exit_status_of_dead_pane(tmux: Tmux, tmp_path: Path) -> None:
    pane = tmux.new_session("exits", ["/bin/sh", "-c", "exit 3"], cwd=tmp_path,
                            keep_dead_panes=True)
    dead = retry_until(lambda: (info := tmux.pane(pane.pane_id)) and info.dead and info,
                       what="pane marked dead")
    assert dead.dead_status == 3


def test_dead_pane_goes_away_by_default(tmux: Tmux, tmp_path: Path) -> None:
    keep = tmux.new_session("keep", ["sleep", "60"], cwd=tmp_path)
    pane = tmux.new_session("gone", ["sleep", "60"], cwd=tmp_path)
    os.kill(pane.pane_pid, signal.SIGKILL)
    retry_until(lambda: tmux.pane(pane.pane_id) is None, what="pane to vanish")
    assert not tmux.has_session("gone")
    assert [p.pane_id for p in tmux.list_panes()] == [keep.pane_id]


def test_list_panes_is_one_tmux_call(tmp_path: Path, tmux_socket: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrap the real tmux binary in a script that logs each invocation, then execs tmux."""
    real = shutil.which("tmux")
    assert real
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    wrapper = bindir / "tmux"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    tmux = Tmux(tmux_socket)
    for index in range(5):
        tmux.new_session(f"s{index}", ["sleep", "60"], cwd=tmp_path)
    log.write_text("")
    panes = tmux.list_panes()
    calls = log.read_text().splitlines()
    assert len(panes) == 5
    assert len(calls) == 1 and "list-panes -a -F" in calls[0]


def test_pane_info_json_round_trip() -> None:
    info = PaneInfo("%3", 42, "s", "@1", True, "sleep", 1.5, True, dead_status=2)
    assert PaneInfo.from_json(info.to_json()) == info


# -- the agent's terminal: written to or not, without asking tmux ------------------------------


def test_a_panes_terminal_stamp_moves_on_a_write_after_quiet(tmux: Tmux, tmp_path: Path) -> None:
    """What the runner relies on to ask tmux only after an idle agent printed: the pane's pty
    stamp stays while nothing is written, and the first write 8 s or more after the stamp moves
    it (Linux keeps 8-second slots)."""
    from attractor import procs

    info = tmux.new_session("pty", ["sh", "-c", "sleep 9; echo woke; exec sleep 60"], cwd=tmp_path)
    # the pane's process has the pty on its standard streams once tmux's child set them up
    terminal = retry_until(lambda: procs.terminal_of(info.pane_pid), what="the pane's terminal")
    assert str(terminal).startswith("/dev/pts/")
    before = procs.written_stamp(terminal)
    assert before is not None
    time.sleep(4)
    assert procs.written_stamp(terminal) == before  # quiet: the stamp stays
    retry_until(lambda: "woke" in tmux.capture_pane(info.pane_id, 5), seconds=30, what="the pane to print")
    assert procs.written_stamp(terminal) != before
    # a process without a terminal has none
    plain = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    try:
        assert procs.terminal_of(plain.pid) is None
    finally:
        plain.kill()
        plain.wait()
    assert procs.terminal_of(None) is None
