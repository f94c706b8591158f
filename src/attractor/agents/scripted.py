# ruff: noqa: RUF001, RUF002
"""The `scripted` agent: a real program that does a node's work from a script, without a model.

It runs in the node's worktree like any agent CLI, edits files, runs commands, commits, and
reports to its runner with ORCHESTRATOR_DONE, exactly as the prompt tells an LLM agent to. Knobs
make it fail, hang or crash so every supervision path can be exercised.

Script: one step per line (blank lines and lines starting with `#` are ignored). Inside an
argument `\\n` is a newline, `\\t` a tab, `\\\\` a backslash.

    write PATH TEXT      replace PATH (relative to the worktree) with TEXT
    append PATH TEXT     append TEXT to PATH
    run COMMAND          run a shell command in the worktree; a non-zero exit reports STUCK
    commit MESSAGE       `git add -A` and commit (nothing to commit is not an error)
    sleep SECONDS        wait
    ask TEXT             print TEXT as a prompt and wait for a line typed into the pane (how a
                         real agent CLI blocks at a trust or permission question)
    menu QUESTION|OPT1|OPT2…
                         draw a menu the way the agent CLIs do (numbered options, `❯` on the
                         highlighted one, which starts at OPT1), move with the arrow keys, choose
                         with Enter; an option starting with "No" ends the agent (exit 1, as
                         Claude Code does when its folder is not trusted)
    report [SUMMARY]     send ORCHESTRATOR_DONE with the HEAD commit (implicit at the end)
    stuck REASON         send ORCHESTRATOR_STUCK and stop
    fail [CODE]          exit with CODE (default 1) without reporting
    hang                 stop responding (sleep forever)
    crash                SIGKILL itself

A step may start with an attempt filter: `@2 STEP` runs on attempt 2 only, `@2+ STEP` on attempt
2 and later, `@-1 STEP` on attempt 1 only (same as `@1`).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attractor import names
from attractor.errors import BadInputError, UsageError, error_handler

VERBS = ("write", "append", "run", "commit", "sleep", "ask", "menu", "report", "stuck", "fail", "hang", "crash")
_FILTER_RE = re.compile(r"@(\d+)(\+)?$")


@dataclass(frozen=True)
class Step:
    verb: str
    args: str
    min_attempt: int = 1
    max_attempt: int | None = None
    line: int = 0

    def applies(self, attempt: int) -> bool:
        if attempt < self.min_attempt:
            return False
        return self.max_attempt is None or attempt <= self.max_attempt


def unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_script(text: str) -> list[Step]:
    """Parse a script; every problem names its line. Raises BadInputError."""
    steps: list[Step] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        min_attempt, max_attempt = 1, None
        head, _, rest = line.partition(" ")
        match = _FILTER_RE.fullmatch(head)
        if match:
            min_attempt = int(match.group(1))
            max_attempt = None if match.group(2) else min_attempt
            line = rest.strip()
            head, _, rest = line.partition(" ")
        verb, args = head, rest.strip()
        if verb not in VERBS:
            raise BadInputError(f"script line {number}", f"unknown step {verb!r}; steps: {', '.join(VERBS)}")
        if verb in ("write", "append") and not args.split(" ", 1)[0]:
            raise BadInputError(f"script line {number}", f"{verb} needs a PATH")
        if verb == "menu" and len([part for part in args.split("|") if part.strip()]) < 3:
            raise BadInputError(f"script line {number}", "menu needs QUESTION|OPTION|OPTION…")
        if verb in ("run", "ask") and not args:
            raise BadInputError(f"script line {number}", f"{verb} needs {'a COMMAND' if verb == 'run' else 'a TEXT'}")
        if verb == "sleep":
            try:
                float(args)
            except ValueError:
                raise BadInputError(f"script line {number}", f"sleep needs seconds, got {args!r}") from None
        if verb == "fail" and args and not args.isdigit():
            raise BadInputError(f"script line {number}", f"fail takes an exit code, got {args!r}")
        steps.append(Step(verb, args, min_attempt, max_attempt, number))
    return steps


def _safe_path(worktree: Path, rel: str) -> Path:
    path = (worktree / rel).resolve()
    if worktree.resolve() not in path.parents:
        raise BadInputError("script", f"path {rel!r} leaves the worktree")
    return path


class ScriptedAgent:
    def __init__(self, worktree: Path, node: str, attempt: int, agent_id: str, runner_id: str,
                 state_root: Path | None) -> None:
        self.worktree = worktree
        self.node = node
        self.attempt = attempt
        self.agent_id = agent_id
        self.runner_id = runner_id
        self.state_root = state_root

    def say(self, text: str) -> None:
        print(f"[scripted {self.node} attempt {self.attempt}] {text}", flush=True)

    def heartbeat(self) -> None:
        if self.state_root is None:
            return
        from attractor.names import split_agent_id
        from attractor.store import identities
        from attractor.store.statedir import StateDir

        try:
            role, name = split_agent_id(self.agent_id)
            identities.update_liveness(StateDir(self.state_root), role, name, pid=os.getpid())
        except Exception as exc:  # a heartbeat must never stop the work
            self.say(f"heartbeat failed: {exc}")

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=self.worktree, capture_output=True, text=True)

    def head(self) -> str | None:
        result = self.git("rev-parse", "HEAD")
        return result.stdout.strip() if result.returncode == 0 else None

    def send(self, kind: str, payload: dict[str, object]) -> None:
        if self.state_root is None:
            self.say(f"(no state dir) would send {kind} {payload}")
            return
        from attractor.store import signals
        from attractor.store.statedir import StateDir

        signals.send(StateDir(self.state_root), kind, to=self.runner_id, sender=self.agent_id, payload=payload)
        self.say(f"sent {kind} to {self.runner_id}")

    def run(self, steps: Sequence[Step]) -> int:
        self.heartbeat()
        reported = False
        for step in steps:
            if not step.applies(self.attempt):
                continue
            self.say(f"{step.verb} {step.args[:60]}")
            if step.verb in ("write", "append"):
                rel, _, text = step.args.partition(" ")
                path = _safe_path(self.worktree, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a" if step.verb == "append" else "w") as fh:
                    fh.write(unescape(text))
            elif step.verb == "run":
                result = subprocess.run(unescape(step.args), shell=True, cwd=self.worktree,
                                        capture_output=True, text=True)
                sys.stdout.write(result.stdout[-2000:] + result.stderr[-2000:])
                if result.returncode != 0:
                    reason = f"command failed ({result.returncode}): {step.args}"
                    self.send("ORCHESTRATOR_STUCK", {"node": self.node, "reason": reason})
                    return 1
            elif step.verb == "commit":
                self.git("add", "-A")
                status = self.git("status", "--porcelain")
                if status.stdout.strip():
                    message = unescape(step.args) or f"{self.node}: work"
                    result = self.git("commit", "-q", "--no-gpg-sign", "-m", message)
                    if result.returncode != 0:
                        reason = f"commit failed: {result.stderr.strip()}"
                        self.send("ORCHESTRATOR_STUCK", {"node": self.node, "reason": reason})
                        return 1
            elif step.verb == "sleep":
                time.sleep(float(step.args))
            elif step.verb == "ask":
                print(unescape(step.args), flush=True)
                try:
                    answer = sys.stdin.readline()
                except OSError:
                    answer = ""
                self.say(f"answered: {answer.strip()!r}")
            elif step.verb == "menu":
                question, *options = [part.strip() for part in unescape(step.args).split("|")]
                chosen = run_menu(question, options)
                self.say(f"chose: {chosen!r}")
                if chosen.lower().startswith("no"):
                    print("The agent didn't start because the answer was no.", flush=True)
                    return 1
            elif step.verb == "report":
                summary = unescape(step.args)
                self.send("ORCHESTRATOR_DONE", {"node": self.node, "commit": self.head(), "summary": summary})
                reported = True
            elif step.verb == "stuck":
                self.send("ORCHESTRATOR_STUCK", {"node": self.node, "reason": unescape(step.args)})
                return 1
            elif step.verb == "fail":
                return int(step.args or "1")
            elif step.verb == "hang":
                while True:
                    time.sleep(3600)
            elif step.verb == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            self.heartbeat()
        if not reported:
            self.send("ORCHESTRATOR_DONE", {"node": self.node, "commit": self.head(), "summary": "script finished"})
        self.say("done")
        return 0


def _draw_menu(question: str, options: Sequence[str], highlighted: int) -> None:
    sys.stdout.write("\x1b[2J\x1b[H" + question + "\r\n\r\n")
    for index, option in enumerate(options):
        marker = "❯" if index == highlighted else " "
        sys.stdout.write(f" {marker} {index + 1}. {option}\r\n")
    sys.stdout.write("\r\n Enter to confirm\r\n")
    sys.stdout.flush()


def run_menu(question: str, options: Sequence[str]) -> str:
    """A menu in raw mode: Up/Down move the highlight, Enter chooses. Off a terminal, a line
    with the option's number chooses."""
    import termios
    import tty

    if not sys.stdin.isatty():
        _draw_menu(question, options, 0)
        line = sys.stdin.readline().strip()
        return options[int(line) - 1] if line.isdigit() and 0 < int(line) <= len(options) else options[0]
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    highlighted = 0
    try:
        tty.setraw(fd)
        _draw_menu(question, options, highlighted)
        pending = b""
        while True:
            pending += os.read(fd, 16)
            while pending:
                if pending.startswith((b"\x1b[A", b"\x1bOA")):
                    highlighted, pending = max(0, highlighted - 1), pending[3:]
                elif pending.startswith((b"\x1b[B", b"\x1bOB")):
                    highlighted, pending = min(len(options) - 1, highlighted + 1), pending[3:]
                elif pending[:1] in (b"\r", b"\n"):
                    return options[highlighted]
                elif pending[:1] == b"\x1b" and len(pending) < 3:
                    break  # the rest of an escape sequence is on its way
                else:
                    pending = pending[1:]
            _draw_menu(question, options, highlighted)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sys.stdout.write("\r\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attractor-scripted", description="The scripted agent.")
    parser.add_argument("--script-file", type=Path, required=True)
    parser.add_argument("--worktree", type=Path, default=Path.cwd())
    parser.add_argument("--node", required=True)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--agent-id", default=os.environ.get(names.ENV_AGENT_ID, ""))
    parser.add_argument("--runner-id", default=os.environ.get(names.ENV_RUNNER_ID, ""))
    parser.add_argument("--state-dir", type=Path, default=os.environ.get(names.ENV_STATE_DIR))
    args = parser.parse_args(argv)

    def _run() -> int:
        try:
            text = args.script_file.read_text()
        except OSError as exc:
            raise UsageError(f"script file {args.script_file}: {exc.strerror}") from exc
        steps = parse_script(text)
        agent = ScriptedAgent(args.worktree, args.node, args.attempt,
                              args.agent_id or names.agent_id("orchestrator", args.node),
                              args.runner_id or names.agent_id("runner", args.node), args.state_dir)
        return agent.run(steps)

    return error_handler(_run)


if __name__ == "__main__":
    raise SystemExit(main())
