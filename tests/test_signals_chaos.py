"""Signals under real concurrency and real crashes: many sender and consumer processes on one
inbox, senders SIGKILLed mid-write, a consumer SIGKILLed mid-handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from attractor.store import signals
from attractor.store.statedir import StateDir
from tests.helpers import retry_until

AGENT = "guardian-main"

CONSUMER = """
import os, sys, threading, time
from pathlib import Path
from attractor.store import signals
from attractor.store.statedir import StateDir

state, agent, work = StateDir(Path(sys.argv[1])), sys.argv[2], Path(sys.argv[3])
log = os.open(work / f"handled-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

def handle(signal):
    os.write(log, (signal.id + "\\n").encode())
    return f"handled by {os.getpid()}"

consumer = signals.Consumer(state, agent, handle, current_epoch=lambda: 1, rescan_interval=0.2)
consumer.start()
(work / f"ready-{os.getpid()}").touch()
while not (work / "stop").exists():
    time.sleep(0.02)
consumer.stop()
consumer.poll_once()
"""

SENDER = """
import os, sys, time
from pathlib import Path
from attractor.store import signals
from attractor.store.statedir import StateDir

state, agent, work = StateDir(Path(sys.argv[1])), sys.argv[2], Path(sys.argv[3])
count = int(sys.argv[4])
while not (work / "go").exists():
    time.sleep(0.001)
for i in range(count):
    s = signals.send(state, "SHUTDOWN", to=agent, sender="user-cli", epoch=1,
                     payload={"reason": f"{os.getpid()}-{i}"})
    print(s.id, flush=True)
"""

# Forks senders that write large signals in a loop and SIGKILLs each after a random delay.
KILLER = """
import os, random, signal, sys, time
from pathlib import Path
from attractor.store import signals
from attractor.store.statedir import StateDir

state, agent, rounds = StateDir(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
random.seed(int(sys.argv[4]))
output = "x" * 256 * 1024
box = state.signals / agent

def count(sub):
    try:
        return len(os.listdir(box / sub))
    except FileNotFoundError:
        return 0

done = 0
# at least `rounds` kills, and on until both outcomes happened (a signal delivered whole, a
# write cut short), however fast or slow the machine is
while done < rounds or not (count("new") and count("tmp")):
    if done >= 20 * rounds:
        break
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            while True:
                signals.send(state, "VALIDATION_FAILED", to=agent, sender="runner-r", epoch=1,
                             payload={"node": "n", "commit": "c", "output": output})
                os.write(write, b".")
        finally:
            os._exit(1)
    os.close(write)
    if done % 2:
        os.read(read, 1)  # this one is killed only after it delivered a signal: during a later write
    time.sleep(random.uniform(0, 0.006))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read)
    done += 1
print(done)
"""

HANGING_CONSUMER = """
import os, sys, threading, time
from pathlib import Path
from attractor.store import signals
from attractor.store.statedir import StateDir

state, agent, work = StateDir(Path(sys.argv[1])), sys.argv[2], Path(sys.argv[3])

def handle(signal):
    (work / "started").write_text(signal.id)
    time.sleep(600)
    return "never"

signals.Consumer(state, agent, handle, current_epoch=lambda: 1, rescan_interval=0.2).run(
    threading.Event())
"""


def spawn(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def names_in(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.exists() else []


def test_many_senders_and_consumers_handle_each_signal_exactly_once(
    state: StateDir, tmp_path: Path
) -> None:
    senders, per_sender, consumers = 32, 8, 4
    work = tmp_path / "work"
    work.mkdir()
    procs = [spawn(CONSUMER, state.root, AGENT, work) for _ in range(consumers)]
    try:
        retry_until(lambda: len(list(work.glob("ready-*"))) == consumers, 30,
                    what="consumers to start")
        send_procs = [spawn(SENDER, state.root, AGENT, work, per_sender) for _ in range(senders)]
        (work / "go").touch()
        sent: list[str] = []
        for proc in send_procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            sent.extend(out.split())
        total = senders * per_sender
        assert len(set(sent)) == total
        done = state.signals / AGENT / "done"
        retry_until(lambda: len(names_in(done)) == total, 60, what=f"{total} signals in done/")
    finally:
        (work / "stop").touch()
        for proc in procs:
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert [proc.returncode for proc in procs] == [0] * consumers, [p.stderr for p in procs]
    handled = Counter(
        line for log in work.glob("handled-*.log") for line in log.read_text().split()
    )
    assert set(handled) == set(sent)
    assert [sid for sid, n in handled.items() if n != 1] == []
    assert len([log for log in work.glob("handled-*.log") if log.stat().st_size]) >= 2
    inbox = signals.Inbox(state, AGENT)
    records = inbox.list("done")
    assert inbox.corrupt == [] and len(records) == len(sent)
    assert all(r.outcome and r.outcome.startswith("handled by ") for r in records)
    for box in ("tmp", "new", "cur"):
        assert names_in(state.signals / AGENT / box) == [], box


def test_sigkilled_senders_never_leave_a_partial_signal_in_new(state: StateDir) -> None:
    rounds = 300
    new = state.signals / AGENT / "new"
    problems: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def check_new() -> None:
        for name in names_in(new):
            if name in seen:
                continue
            seen.add(name)
            try:
                data = json.loads((new / name).read_bytes())
                record = signals.Signal.from_json(data)
                assert f"{record.id}.json" == name
            except Exception as exc:
                problems.append(f"{name}: {exc!r}")

    def reader() -> None:
        while not stop.is_set():
            check_new()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        killer = spawn(KILLER, state.root, AGENT, rounds, 1234)
        out, err = killer.communicate(timeout=120)
        assert killer.returncode == 0, err
        assert rounds <= int(out) < 20 * rounds, "the kills never produced both outcomes"
    finally:
        stop.set()
        thread.join()
    check_new()
    assert problems == []
    assert len(seen) > 0
    orphans = names_in(state.signals / AGENT / "tmp")
    # kills landed mid-write: their temp files are left behind, and never reached new/
    assert orphans, "no kill interrupted a write; the test did not exercise anything"
    assert not set(orphans) & seen
    assert signals.remove_orphan_tmp(state, AGENT) == len(orphans)
    assert names_in(state.signals / AGENT / "tmp") == []


def test_consumer_killed_mid_handling_is_swept_and_handled_once(
    state: StateDir, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc = spawn(HANGING_CONSUMER, state.root, AGENT, work)
    try:
        sent = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
        retry_until(lambda: (work / "started").exists(), 30, what="the consumer to start handling")
        assert (work / "started").read_text() == sent.id
        cur = state.signals / AGENT / "cur"
        (claim,) = names_in(cur)
        assert claim.split(".by-")[1].startswith(f"{proc.pid}-")
        assert signals.sweep_dead_claims(state, AGENT) == 0  # its claimer is alive
        os.kill(proc.pid, signal.SIGKILL)
        # unreaped, the killed consumer is a zombie: still dead as far as claims go
        retry_until(lambda: signals.sweep_dead_claims(state, AGENT) == 1, 10,
                    what="the dead consumer's claim to be swept")
    finally:
        proc.kill()
        proc.communicate()
    inbox = signals.Inbox(state, AGENT)
    assert [s.id for s in inbox.pending()] == [sent.id] and inbox.list("cur") == []
    handled: list[str] = []
    consumer = signals.Consumer(state, AGENT, lambda s: handled.append(s.id) or "ok",
                                current_epoch=lambda: 1)
    assert consumer.poll_once() == 1
    assert consumer.poll_once() == 0
    assert signals.sweep_dead_claims(state) == 0
    assert handled == [sent.id]
    assert [(s.id, s.outcome) for s in inbox.list("done")] == [(sent.id, "ok")]
