"""The identity registry and hooks under stress, with real processes: 32 writers on one record
lose no update, writers SIGKILLed at random moments never leave a file that does not parse or
that is neither the old nor the new version, and the lock survives its holder's death."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attractor.errors import TransitionError
from attractor.states import HookPhase as P
from attractor.states import IdentityStatus as S
from attractor.store import atomic, hooks, identities
from attractor.store.statedir import StateDir

WRITERS = 32
ROUNDS = 12
KILLS = 200

FORK = multiprocessing.get_context("fork")


def _run_writers(target: Callable[..., None], root: Path, count: int = WRITERS) -> list[str]:
    """Start `count` forked processes that all begin at once; collect what each reports."""
    queue = FORK.Queue()
    start = FORK.Event()
    procs = [FORK.Process(target=target, args=(str(root), k, start, queue)) for k in range(count)]
    for proc in procs:
        proc.start()
    start.set()
    reported: list[str] = []
    for _ in procs:
        result = queue.get(timeout=120)
        assert not isinstance(result, BaseException), result
        reported += result
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return reported


def _identity_writer(root: str, k: int, start: Any, queue: Any) -> None:
    try:
        state = StateDir(Path(root))
        start.wait()
        won = []
        for i in range(ROUNDS):
            reason = f"p{k}-{i}"
            if i % 3 == 2:
                identities.update_liveness(state, "runner", "shared", pid=os.getpid())
                continue
            target = S.STALE if (i + k) % 2 else S.ACTIVE
            try:
                record = identities.set_status(state, "runner", "shared", target, reason)
            except TransitionError:
                continue
            if record.history[-1]["reason"] == reason:
                won.append(reason)
        queue.put(won)
    except BaseException as exc:
        queue.put(exc)


def test_32_processes_lose_no_identity_update(state_dir: Path) -> None:
    state = StateDir(state_dir)
    identities.create_identity(state, "runner", "shared")
    identities.update_liveness(state, "runner", "shared")
    won = _run_writers(_identity_writer, state_dir)
    record = identities.get(state, "runner", "shared")
    reasons = [h["reason"] for h in record.history if h["reason"].startswith("p")]
    assert len(won) > WRITERS  # the toggling really contended
    assert sorted(reasons) == sorted(won)  # every change that was reported made it to disk
    # and the history is a consistent chain of checked moves
    for before, after in zip(record.history, record.history[1:], strict=False):
        assert before["to"] == after["from"], (before, after)
    leftovers = [p.name for p in state.identities.iterdir()
                 if "corrupt" in p.name or ".tmp-" in p.name]
    assert leftovers == []


def _hook_writer(root: str, k: int, start: Any, queue: Any) -> None:
    try:
        state = StateDir(Path(root))
        start.wait()
        won = []
        for i in range(ROUNDS):
            note = f"p{k}-{i}"
            target = P.IMPL_COMPLETE if (i + k) % 2 else P.EXECUTING
            hook = hooks.update_phase(state, "runner", "shared", target, note=note)
            if hook.history[-1]["note"] == note:
                won.append(note)
        queue.put(won)
    except BaseException as exc:
        queue.put(exc)


def test_32_processes_lose_no_hook_update(state_dir: Path) -> None:
    state = StateDir(state_dir)
    hooks.create_hook(state, "runner", "shared", node="shared")
    hooks.update_phase(state, "runner", "shared", P.EXECUTING)
    won = _run_writers(_hook_writer, state_dir)
    hook = hooks.read_hook(state, "runner", "shared")
    notes = [h["note"] for h in hook.history if h["note"].startswith("p")]
    assert len(won) > WRITERS
    assert sorted(notes) == sorted(won)
    assert len(hook.history) == 2 + len(won)
    assert hook.attempts == sum(1 for h in hook.history if h["to"] == "executing")


def test_32_cli_processes_at_once(state_dir: Path) -> None:
    """Real `python -m attractor` processes, the way agents call the hot commands."""
    state = StateDir(state_dir)
    identities.create_identity(state, "runner", "a")
    hooks.create_hook(state, "runner", "a")
    env = {**os.environ, "ATTRACTOR_STATE_DIR": str(state_dir)}
    commands = []
    for k in range(WRITERS):
        if k % 2:
            commands.append(["identity", "update-liveness", "runner", "a", "--pid", str(1000 + k)])
        else:
            phase = "executing" if k % 4 == 0 else "failed"
            commands.append(["hook", "update-phase", "runner", "a", phase, "--note", f"c{k}"])
    procs = [subprocess.Popen([sys.executable, "-m", "attractor", *argv], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in commands]
    results = [(proc.wait(timeout=120), proc.stderr.read() if proc.stderr else "")
               for proc in procs]
    for proc in procs:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    # phase moves may be refused (executing <-> failed only one way at a time), nothing else
    assert all(code == 0 or (code == 2 and "illegal transition" in err) for code, err in results)
    assert all(code == 0 for (code, _), argv in zip(results, commands, strict=True)
               if argv[0] == "identity")
    record = identities.get(state, "runner", "a")
    assert record.status is S.ACTIVE and record.pid in range(1000, 1000 + WRITERS)
    hook = hooks.read_hook(state, "runner", "a")
    moved = {argv[-1] for (code, _), argv in zip(results, commands, strict=True)
             if argv[0] == "hook" and code == 0}
    notes = [h["note"] for h in hook.history[1:]]
    assert len(notes) == len(set(notes)) and set(notes) <= moved and notes
    for before, after in zip(hook.history, hook.history[1:], strict=False):
        assert before["to"] == after["from"]

# --------------------------------------------------------------------------- SIGKILL chaos


def _strict_read(path: Path, parse: Callable[[Any], Any]) -> Any:
    return parse(atomic.read_json_object(path, schema=1, move_corrupt=False))


def _fork_writer(loop: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # child: write until killed
        code = 0
        try:
            loop()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


def _kill_at_random(pid: int, rng: random.Random, read: Callable[[], None]) -> None:
    """Read the file continuously while the child writes, then SIGKILL it at a random moment."""
    deadline = time.monotonic() + rng.uniform(0.0005, 0.008)
    while time.monotonic() < deadline:
        read()
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_sigkilled_identity_writers_leave_old_or_new(state_dir: Path) -> None:
    state = StateDir(state_dir)
    identities.create_identity(state, "runner", "a", session_id="n0")
    path = state.identities / "runner-a.json"
    rng = random.Random(1234)

    def loop() -> None:
        while True:
            current = identities.get(state, "runner", "a")
            n = int((current.session_id or "n0")[1:])
            identities.update_fields(state, "runner", "a", session_id=f"n{n + 1}")
            identities.update_liveness(state, "runner", "a", pid=os.getpid())
            if n % 5 == 0:
                identities.mark_stale(state, "runner", "a", f"n{n}")

    last = 0

    def read() -> None:
        record = _strict_read(path, identities.Identity.from_json)
        assert int(record.session_id[1:]) >= last

    for _ in range(KILLS):
        _kill_at_random(_fork_writer(loop), rng, read)
        record = _strict_read(path, identities.Identity.from_json)
        counter = int(record.session_id[1:])
        assert counter >= last, "went back to an older version"
        last = counter
    assert last >= 10, "the killed writers hardly ever got an update through"
    names = os.listdir(state.identities)
    assert not [n for n in names if "corrupt" in n]
    # temp files of killed writers are swept by the next listing
    assert [r.agent_id for r in identities.list_identities(state)] == ["runner-a"]
    assert not [n for n in os.listdir(state.identities) if ".tmp-" in n]


def test_sigkilled_hook_writers_leave_old_or_new(state_dir: Path) -> None:
    state = StateDir(state_dir)
    hooks.create_hook(state, "runner", "a", instructions="0:" + ":0")
    path = state.hooks / "runner-a.json"
    rng = random.Random(4321)
    filler = "y" * 20000  # a big record widens the window a partial write could be seen in

    def loop() -> None:
        while True:
            current = hooks.read_hook(state, "runner", "a")
            n = int(current.resumption_instructions.split(":", 1)[0])
            hooks.update_resumption_instructions(state, "runner", "a", f"{n + 1}:{filler}:{n + 1}")
            phase = P.IMPL_COMPLETE if current.phase is P.EXECUTING else P.EXECUTING
            hooks.update_phase(state, "runner", "a", phase, note=f"n{n}", commit=f"{n + 1:07x}")

    last = 0

    def check(hook: hooks.Hook) -> int:
        head, *_, tail = hook.resumption_instructions.split(":")
        assert head == tail, "instructions torn between two versions"
        assert hook.attempts == sum(1 for h in hook.history if h["to"] == "executing")
        return int(head)

    def read() -> None:
        assert check(_strict_read(path, hooks.Hook.from_json)) >= last

    for _ in range(KILLS):
        _kill_at_random(_fork_writer(loop), rng, read)
        counter = check(_strict_read(path, hooks.Hook.from_json))
        assert counter >= last
        last = counter
    assert last >= 10
    assert not [n for n in os.listdir(state.hooks) if "corrupt" in n]
    assert len(hooks.list_hooks(state)) == 1
