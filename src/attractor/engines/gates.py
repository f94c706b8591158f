"""Gates: shell commands that must pass before a commit lands (the merge queue runs them on the
exact tree it is about to put on the target; a validation node can run them in its worktree).

A gate runs with `/bin/sh -c` in its own session (`start_new_session=True`), so the gate and
everything it starts form one process group: past its timeout the whole group is killed with
SIGKILL, and whatever it left behind is killed when it ends. Output (stdout and stderr together)
goes to an anonymous temp file, never a pipe, so a grandchild that keeps the descriptor open
cannot hang us; only the tail is kept. `summary_line` picks the one line of that output that
says why a gate failed (the error or assertion, not a traceback's carets or a test count).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from attractor import procs
from attractor.errors import UsageError

DEFAULT_GATE_TIMEOUT = 600.0
OUTPUT_TAIL_LINES = 40
OUTPUT_TAIL_CHARS = 4000

# Words a POSIX shell runs itself: a gate starting with one needs no program on PATH.
SHELL_WORDS = frozenset([
    "!", ".", ":", "[", "{", "(", "alias", "bg", "break", "case", "cd", "command", "continue",
    "echo", "eval", "exec", "exit", "export", "false", "fc", "fg", "for", "getopts", "hash", "if",
    "jobs", "kill", "printf", "pwd", "read", "readonly", "return", "set", "shift", "test",
    "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "until", "wait",
    "while",
])


class GateCommandError(UsageError):
    def __init__(self, command: str, problem: str) -> None:
        self.command = command
        self.problem = problem
        super().__init__(f"gate {command!r}: {problem}")


@dataclass(frozen=True)
class Gate:
    command: str
    timeout: float = DEFAULT_GATE_TIMEOUT


@dataclass(frozen=True)
class GateRun:
    gate: Gate
    ok: bool
    timed_out: bool
    returncode: int | None
    output_tail: str
    seconds: float


def check_gate(gate: Gate) -> None:
    """Refuse (exit 2) a gate that cannot run: unparseable, empty, a non-positive timeout, or a
    program that is neither a shell builtin nor found on PATH. A relative path such as
    `./ci/test.sh` is looked up only when the gate runs, in the tree under test."""
    if not gate.timeout > 0:
        raise GateCommandError(gate.command, f"timeout must be positive, got {gate.timeout:g}")
    try:
        words = shlex.split(gate.command)
    except ValueError as exc:
        raise GateCommandError(gate.command, f"is not a valid shell command ({exc})") from None
    while words and "=" in words[0] and "/" not in words[0].split("=", 1)[0]:
        if "$(" in words[0] or "`" in words[0]:
            return  # an assignment from a command substitution: the shell decides at run time
        words = words[1:]  # leading VAR=value assignments
    if not words:
        raise GateCommandError(gate.command, "is empty")
    program = words[0]
    if program in SHELL_WORDS:
        return
    if "/" in program:
        if os.path.isabs(program) and not os.access(program, os.X_OK):
            raise GateCommandError(gate.command, f"{program} does not exist or is not executable")
        return
    if shutil.which(program) is None:
        raise GateCommandError(gate.command, f"program {program!r} not found on PATH")



def kill_session(sid: int, start: int | None) -> int:
    """SIGKILL every process of session `sid` (a gate's), provided its leader is the recorded
    process (`start`) or already gone (its children keep the session id, which no new process
    can take while they live). A live leader with another or an unknown start time is an
    unrelated process: nothing is signalled. Returns how many processes were signalled."""
    if procs.pid_alive(sid) and not procs.same_process(sid, start):
        return 0  # the pid now belongs to an unrelated process, or we cannot tell
    killed = 0
    for member in procs.session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member.pid, signal.SIGKILL)
            killed += 1
    return killed


def tail(data: bytes, lines: int = OUTPUT_TAIL_LINES, chars: int = OUTPUT_TAIL_CHARS) -> str:
    text = "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
    return text[-chars:]


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for `proc` at most `timeout` seconds. Popen.wait(timeout) polls with sleeps of up to
    50 ms; a pidfd becomes readable the moment the process exits."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd on this system: poll
        return proc.wait(timeout=timeout)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


class RunningGate:
    """A gate started by `start_gate` and not yet waited for: the merge queue starts the next
    entry's gate the moment the current entry lands, and waits for it later."""

    def __init__(self, gate: Gate, proc: subprocess.Popen[bytes], out: IO[bytes], started: float) -> None:
        self.gate = gate
        self.proc = proc
        self.out = out
        self.started = started  # time.monotonic() when it was started
        self.reaped = False

    @property
    def pid(self) -> int:
        """The gate's pid, which is also its process group and session id."""
        return self.proc.pid

    def finish(self) -> GateRun:
        """Wait for the gate (up to its timeout, counted from its start), kill what it left
        behind, and return its result."""
        timed_out = False
        returncode: int | None = None
        try:
            returncode = _wait(self.proc, max(0.0, self.gate.timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self.kill()
        self.out.seek(0)
        text = tail(self.out.read())
        self.out.close()
        if timed_out:
            note = f"[attractor: gate killed after its {self.gate.timeout:g}s timeout]"
            text = f"{text}\n{note}" if text else note
        ok = returncode == 0 and not timed_out
        return GateRun(self.gate, ok, timed_out, returncode, text, time.monotonic() - self.started)

    def kill(self) -> None:
        """SIGKILL the gate's process group and reap the gate, once (its output stays readable)."""
        if self.reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reaped = True

    def close(self) -> None:
        """Kill it if it still runs, and drop its output."""
        self.kill()
        self.out.close()


def start_gate(gate: Gate, cwd: Path, env: Mapping[str, str] | None = None) -> RunningGate:
    """Start one gate in `cwd` in a session of its own; `finish()` waits for it."""
    started = time.monotonic()
    out = tempfile.TemporaryFile()  # noqa: SIM115 - the RunningGate owns it until finish()
    try:
        proc = subprocess.Popen(
            gate.command, shell=True, cwd=cwd, env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    except BaseException:
        out.close()
        raise
    return RunningGate(gate, proc, out, started)


def run_gate(
    gate: Gate,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> GateRun:
    """Run one gate in `cwd`; `on_start(pid)` is called once it runs (the pid is also its
    process group and session id)."""
    running = start_gate(gate, cwd, env)
    try:
        if on_start is not None:
            on_start(running.pid)
    except BaseException:
        running.close()
        raise
    return running.finish()


# Lines of a test run's output that never say why it failed: carets and tildes under a
# traceback's expression (and difflib's `?   ^` hints), separators, unittest's counts and
# verdicts, pytest's session lines.
_NOISE_RE = re.compile(
    r"\??[\s^~+-]*"                             # blank, carets and tildes, `?   ^`
    r"|[-=_*]{3,}"                               # ----- / ===== separators
    r"|[-=_]{3,} .* [-=_]{3,}"                   # === 1 failed in 0.1s === / ___ test_x ___
    r"|Ran \d+ tests? in [\d.]+s"
    r"|OK(?: \(.*\))?"
    r"|FAILED \(.*\)"
)
# A line that names the failure: an exception (`ValueError: x`, `calc.ops.BoomError`), an
# assertion (`assert 1 == 2`, pytest's `E   AssertionError: …`), a tool's `error: …` or
# `fatal: …`, or a note of attractor's (`[attractor: gate killed after …]`).
_REASON_RE = re.compile(
    r"(?:E\s+)?(?:(?:[A-Za-z_]\w*\.)*(?:[A-Z]\w*)?(?:Error|Exception|Exit|Interrupt)(?::.*)?|assert\b.*)"
    r"|(?:error|fatal): .*"
    r"|\[attractor: .*\]"
)
SUMMARY_CHARS = 300


def summary_line(output: str) -> str:
    """The one line of a gate's `output` that says why it failed: the last error or assertion
    line (a note of attractor's, such as the timeout, wins), else the last line that is not
    noise (carets, separators, "Ran N tests", "OK", "FAILED (…)"); "" when there is none."""
    lines = [line.strip() for line in output.splitlines()]
    meaningful = [line for line in lines if not _NOISE_RE.fullmatch(line)]
    reasons = [line for line in meaningful if _REASON_RE.fullmatch(line)]
    notes = [line for line in reasons if line.startswith("[attractor: ")]
    chosen = (notes or reasons or meaningful or [""])[-1]
    if chosen.startswith("E ") and _REASON_RE.fullmatch(chosen):
        chosen = chosen[1:].lstrip()  # pytest's marker of the failing line
    return chosen if len(chosen) <= SUMMARY_CHARS else chosen[: SUMMARY_CHARS - 1] + "…"
