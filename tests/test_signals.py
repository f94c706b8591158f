from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from attractor.cli import main
from attractor.errors import (
    BadInputError,
    InvalidNameError,
    TimeoutExpiredError,
    UnknownValueError,
)
from attractor.states import SignalKind
from attractor.store import identities, signals, wakeup
from attractor.store.payloads import MergeReady, Shutdown
from attractor.store.statedir import StateDir
from tests.helpers import retry_until, run_cli

AGENT = "runner-impl_auth"
MERGE_READY = {
    "node": "impl_auth", "branch": "attractor/r1/impl_auth", "commit": "abc", "owner": AGENT,
}


def box_files(state: StateDir, box: str, agent: str = AGENT) -> list[str]:
    path = state.signals / agent / box
    return sorted(os.listdir(path)) if path.exists() else []


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# --------------------------------------------------------------------------- records


def test_record_round_trip_and_file_layout(state: StateDir) -> None:
    sent = signals.send(state, "MERGE_READY", to=AGENT, sender="guardian-main", payload=MERGE_READY,
                        epoch=4)
    assert sent.kind is SignalKind.MERGE_READY
    assert isinstance(sent.payload, MergeReady) and sent.payload.owner == AGENT
    assert box_files(state, "new") == [f"{sent.id}.json"]
    assert box_files(state, "tmp") == []
    path = state.signals / AGENT / "new" / f"{sent.id}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (state.signals / AGENT).stat().st_mode & 0o777 == 0o700
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["epoch"] == 4 and data["outcome"] is None
    assert signals.Signal.from_json(data) == sent
    _stamp, pid, rand = sent.id.split("-")
    assert int(pid) == os.getpid() and len(rand) == 8


class RecordCase(NamedTuple):
    test_id: str
    change: dict[str, Any]
    remove: str | None
    error: type[Exception]


RECORD_CASES = [
    RecordCase("unknown-field", {"extra": 1}, None, BadInputError),
    RecordCase("missing-field", {}, "sender", BadInputError),
    RecordCase("unknown-kind", {"kind": "LAUNCH_MISSILES"}, None, UnknownValueError),
    RecordCase("bad-schema", {"schema": 2}, None, BadInputError),
    RecordCase("bool-epoch", {"epoch": True}, None, BadInputError),
    RecordCase("bad-id", {"id": "../../x"}, None, BadInputError),
    RecordCase("bad-recipient", {"recipient": "a/b"}, None, InvalidNameError),
    RecordCase("payload-wrong-type", {"payload": {"reason": 3}}, None, BadInputError),
    RecordCase("bad-time", {"created_at": "yesterday"}, None, BadInputError),
]


@pytest.mark.parametrize("case", RECORD_CASES, ids=[c.test_id for c in RECORD_CASES])
def test_from_json_is_strict(state: StateDir, case: RecordCase) -> None:
    data = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1).to_json()
    data.update(case.change)
    if case.remove:
        del data[case.remove]
    with pytest.raises(case.error):
        signals.Signal.from_json(data)


def test_ids_sort_by_time(state: StateDir) -> None:
    sent = [
        signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1) for _ in range(20)
    ]
    assert [s.id for s in signals.Inbox(state, AGENT).pending()] == [s.id for s in sent]


# --------------------------------------------------------------------------- sending


class BadSend(NamedTuple):
    test_id: str
    kind: str
    to: str
    payload: Any
    error: type[Exception]


BAD_SENDS = [
    BadSend("slash", "SHUTDOWN", "runner-a/b", None, InvalidNameError),
    BadSend("dotdot", "SHUTDOWN", "..", None, InvalidNameError),
    BadSend("space", "SHUTDOWN", "runner-a b", None, InvalidNameError),
    BadSend("quote", "SHUTDOWN", "runner-a'b", None, InvalidNameError),
    BadSend("tmux-meta", "SHUTDOWN", "runner-a;b", None, InvalidNameError),
    BadSend("unknown-kind", "BOGUS", AGENT, None, UnknownValueError),
    BadSend("missing-required", "MERGE_READY", AGENT, None, BadInputError),
    BadSend("missing-one", "MERGE_READY", AGENT, {"node": "x"}, BadInputError),
    BadSend("unknown-field", "SHUTDOWN", AGENT, {"why": "x"}, BadInputError),
    BadSend("wrong-type", "VALIDATION_FAILED", AGENT,
            {"node": "n", "commit": "c", "attempt": "2"}, BadInputError),
    BadSend("payload-of-other-kind", "RESPAWN", AGENT, Shutdown(), BadInputError),
]


@pytest.mark.parametrize("case", BAD_SENDS, ids=[c.test_id for c in BAD_SENDS])
def test_bad_send_writes_nothing(state_dir: Path, case: BadSend) -> None:
    state = StateDir(state_dir)  # not created: a refused send must not create it
    with pytest.raises(case.error):
        signals.send(state, case.kind, to=case.to, sender="user-cli", payload=case.payload, epoch=1)
    assert not state.root.exists()


def test_send_defaults_payload_and_epoch_from_identity(state: StateDir) -> None:
    first = signals.send(state, SignalKind.SHUTDOWN, to=AGENT, sender="user-cli")
    assert first.epoch is None and first.payload == Shutdown()
    identities.create_identity(state, "runner", "impl_auth")
    identities.create_identity(state, "runner", "impl_auth")
    assert signals.send(state, "RESPAWN", to=AGENT, sender="guardian-main").epoch == 2
    (state.identities / f"{AGENT}.json").write_text("{ torn")
    assert signals.send(state, "RESPAWN", to=AGENT, sender="guardian-main").epoch is None


# --------------------------------------------------------------------------- the inbox


def test_claim_complete_release_and_boxes(state: StateDir) -> None:
    inbox = signals.Inbox(state, AGENT)
    assert inbox.claim_next() is None and inbox.list("new") == []
    shutdown = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
    merge = signals.send(state, "MERGE_READY", to=AGENT, sender="user-cli", payload=MERGE_READY,
                         epoch=1)
    claim = inbox.claim_next(kinds=["MERGE_READY"])
    assert claim is not None and claim.signal == merge
    assert [s.id for s in inbox.list("cur")] == [merge.id]
    assert f".by-{os.getpid()}-" in claim.path.name
    assert inbox.release(claim)
    assert not inbox.release(claim)
    assert [s.id for s in inbox.pending()] == [shutdown.id, merge.id]
    claim = inbox.claim_next()
    assert claim is not None and claim.signal.id == shutdown.id
    done = inbox.complete(claim, "shut down", "by request")
    assert (done.outcome, done.detail) == ("shut down", "by request")
    assert done.handled_at and done.handled_by and str(os.getpid()) in done.handled_by
    again = inbox.complete(claim, "other outcome")
    assert again.outcome == "shut down"  # idempotent: the first record stands
    assert [s.outcome for s in inbox.list("done")] == ["shut down"]
    assert inbox.list("cur") == [] and [s.id for s in inbox.pending()] == [merge.id]
    with pytest.raises(UnknownValueError):
        inbox.list("tmp")


def test_stale_rule(state: StateDir) -> None:
    inbox = signals.Inbox(state, AGENT)
    sig = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=2)
    assert inbox.stale(sig, 3)
    assert not inbox.stale(sig, 2) and not inbox.stale(sig, 1) and not inbox.stale(sig, None)
    unaddressed = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli")
    assert unaddressed.epoch is None and not inbox.stale(unaddressed, 5)


def test_already_done_is_never_handled_twice(state: StateDir) -> None:
    """A consumer that crashed after recording done/ but before removing its claim leaves the
    signal behind; once swept back into new/, it is dropped instead of handled again."""
    sig = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
    new_path = state.signals / AGENT / "new" / f"{sig.id}.json"
    leftover = new_path.read_bytes()
    handled: list[str] = []
    consumer = signals.Consumer(state, AGENT, lambda s: handled.append(s.id) or "ok",
                                current_epoch=lambda: 1)
    assert consumer.poll_once() == 1
    new_path.write_bytes(leftover)  # what the crash leaves behind, after the sweep
    assert consumer.poll_once() == 0
    assert handled == [sig.id]
    assert box_files(state, "new") == [] and box_files(state, "cur") == []
    assert [s.outcome for s in signals.Inbox(state, AGENT).list("done")] == ["ok"]


def test_corrupt_files_are_moved_aside_and_reported(state: StateDir) -> None:
    good = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
    new = state.signals / AGENT / "new"
    bad_json = new / "20200101T000000.000000000Z-1-deadbeef.json"
    bad_json.write_text('{"schema": 1, "id": ')
    unknown_kind = new / "20200101T000000.000000001Z-1-deadbeef.json"
    data = good.to_json() | {"id": unknown_kind.stem, "kind": "WHATEVER"}
    unknown_kind.write_text(json.dumps(data))
    cur_bad = state.signals / AGENT / "cur" / "20200101T000000.000000002Z-1-deadbeef.by-1-0.json"
    cur_bad.write_text("[]")
    inbox = signals.Inbox(state, AGENT)
    assert [s.id for s in inbox.list("new")] == [good.id]
    assert inbox.list("cur") == []
    assert sorted(e.path for e in inbox.corrupt) == sorted([bad_json, unknown_kind, cur_bad])
    assert "WHATEVER" in " ".join(str(e) for e in inbox.corrupt)
    moved = [n for n in os.listdir(new) if ".corrupt-" in n]
    assert len(moved) == 2 and all(n.startswith("20200101T") for n in moved)
    # a consumer meeting one keeps going
    bad_json.write_text("not json")
    handled: list[str] = []
    consumer = signals.Consumer(state, AGENT, lambda s: handled.append(s.id) or "ok",
                                current_epoch=lambda: 1)
    assert consumer.poll_once() == 1 and handled == [good.id]
    assert consumer.inbox.corrupt[0].path == bad_json


def _unreadable_entries(state: StateDir) -> dict[str, str]:
    """Names in new/ that look like signals but are no readable file, with what each is."""
    new = state.signals / AGENT / "new"
    entries = {
        "20200101T000000.000000010Z-1-00000001.json": "a directory",
        "20200101T000000.000000011Z-1-00000002.json": "dangling",
        "20200101T000000.000000012Z-1-00000003.json": "a symbolic link",
        "20200101T000000.000000013Z-1-00000004.json": "a named pipe",
    }
    names = list(entries)
    (new / names[0]).mkdir()
    (new / names[1]).symlink_to(new / "nowhere.json")
    target = state.root / "elsewhere.json"
    target.write_text("{}")
    (new / names[2]).symlink_to(target)
    os.mkfifo(new / names[3])  # opening it for reading would block forever
    return entries


def test_unreadable_inbox_entries_do_not_wedge_a_consumer(state: StateDir) -> None:
    good = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
    entries = _unreadable_entries(state)
    handled: list[str] = []
    consumer = signals.Consumer(state, AGENT, lambda s: handled.append(s.id) or "ok", current_epoch=lambda: 1)
    assert consumer.poll_once() == 1 and handled == [good.id]
    reported = {e.path.name: e for e in consumer.inbox.corrupt}
    assert set(reported) == set(entries)
    for name, what in entries.items():
        assert what in reported[name].problem, (name, reported[name].problem)
        moved = reported[name].moved_to
        assert moved is not None and os.path.lexists(moved) and moved.name.startswith(name + ".corrupt-")
    assert [n for n in box_files(state, "new") if ".corrupt-" not in n] == []
    assert (state.root / "elsewhere.json").read_text() == "{}"  # a link's target is never touched


def test_signal_list_reports_unreadable_entries(state: StateDir) -> None:
    good = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
    entries = _unreadable_entries(state)
    listed = run_cli(["signal", "list", "--agent", AGENT, "--json", "--state-dir", str(state.root)], timeout=20)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert [s["id"] for s in data["signals"]] == [good.id]
    assert sorted(Path(c["path"]).name for c in data["corrupt"]) == sorted(entries)
    assert all(c["moved_to"] for c in data["corrupt"])


# --------------------------------------------------------------------------- consumers


def test_consumer_records_stale_and_errors_and_keeps_going(
    state: StateDir, caplog: pytest.LogCaptureFixture
) -> None:
    old = signals.send(state, "RESPAWN", to=AGENT, sender="guardian-main", epoch=1)
    boom = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", payload={"reason": "boom"},
                        epoch=2)
    fine = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=2)
    seen: list[str] = []

    def handler(signal: signals.Signal) -> str:
        seen.append(signal.id)
        assert isinstance(signal.payload, Shutdown)
        if signal.payload.reason == "boom":
            raise RuntimeError("handler blew up")
        return "stopped"

    consumer = signals.Consumer(state, AGENT, handler, current_epoch=lambda: 2)
    assert consumer.poll_once() == 3
    assert seen == [boom.id, fine.id]  # the stale RESPAWN never reached the handler
    outcomes = {s.id: s.outcome for s in consumer.inbox.list("done")}
    assert outcomes == {
        old.id: "stale", boom.id: "error: RuntimeError: handler blew up", fine.id: "stopped",
    }
    assert "stale signal RESPAWN" in caplog.text and "handler failed" in caplog.text


def test_consumer_default_epoch_comes_from_the_identity(state: StateDir) -> None:
    identities.create_identity(state, "runner", "impl_auth")
    early = signals.send(state, "RESPAWN", to=AGENT, sender="guardian-main")
    identities.create_identity(state, "runner", "impl_auth")
    late = signals.send(state, "RESPAWN", to=AGENT, sender="guardian-main")
    assert (early.epoch, late.epoch) == (1, 2)
    handled: list[str] = []
    consumer = signals.Consumer(state, AGENT, lambda s: handled.append(s.id) or "ok")
    consumer.poll_once()
    assert handled == [late.id]


@pytest.mark.parametrize("use_events", [True, False], ids=["events", "rescan-only"])
def test_consumer_thread_delivers(state: StateDir, use_events: bool) -> None:
    """With events, the rescan timer is too long to matter: only inotify can deliver in time.
    Without events, the rescan alone must deliver."""
    handled: list[str] = []
    consumer = signals.Consumer(
        state, AGENT, lambda s: handled.append(s.id) or "ok", current_epoch=lambda: None,
        use_events=use_events, rescan_interval=60.0 if use_events else 0.1,
    )
    with consumer:
        retry_until(lambda: (state.signals / AGENT / "new").is_dir(), 5)
        sent = [signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
                for _ in range(3)]
        retry_until(lambda: len(handled) == 3, 5, what="consumer to handle 3 signals")
    assert handled == [s.id for s in sent]
    assert consumer._thread is None


def test_each_arrival_after_a_claim_wakes_the_consumer(state: StateDir) -> None:
    """Ping-pong: each signal is sent once the one before it was claimed and handled. The
    rescan timer is an hour, far past every round's deadline, so only the arrival itself can
    have woken the consumer in time."""
    handled: list[str] = []
    consumer = signals.Consumer(state, AGENT, lambda s: handled.append(s.id) or "ok",
                                current_epoch=lambda: None, rescan_interval=3600.0)
    with consumer:
        retry_until(lambda: (state.signals / AGENT / "new").is_dir(), 5)
        for n in range(1, 21):
            signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
            retry_until(lambda n=n: len(handled) == n, 10, interval=0.001, what=f"round {n}")


def test_claims_do_not_hold_back_the_next_wake_up(state: StateDir, tmp_path: Path) -> None:
    """Every claim renames a file out of new/. A watcher that holds such move-out events back
    (as watchdog's Observer does, 0.5 s each, and the events behind them with it) delays the
    wake-up for the next arrival. Every watch here is a callback on one shared inotify reader,
    which hands events on in the order they happened: so after a claim, a signal arriving in
    new/ and then a file arriving in another watched directory, the inbox's wake-up must have
    come by the time the other one has. No clock is read: a slow machine cannot fail this, nor
    a fast one hide a delay."""
    new = signals.ensure_inbox(state, AGENT) / "new"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inbox_woken, elsewhere_woken = threading.Event(), threading.Event()
    unwatch_inbox = wakeup.watch_directory(new, inbox_woken)
    assert unwatch_inbox is not None
    unwatch_elsewhere = wakeup.watch_directory(elsewhere, elsewhere_woken)
    assert unwatch_elsewhere is not None
    inbox = signals.Inbox(state, AGENT)
    try:
        signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
        for n in range(5):
            retry_until(inbox_woken.is_set, 10, what=f"the wake-up for signal {n}")
            inbox_woken.clear()
            claim = inbox.claim_next()
            assert claim is not None
            inbox.complete(claim, "ok")
            signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
            (elsewhere / f"{n}.json").write_text("{}")
            retry_until(elsewhere_woken.is_set, 10, what=f"the wake-up for file {n} elsewhere")
            elsewhere_woken.clear()
            assert inbox_woken.is_set(), f"round {n}: the arrival after a claim was held back"
    finally:
        unwatch_elsewhere()
        unwatch_inbox()


def test_observer_fallback_wakes_on_new_files(tmp_path: Path) -> None:
    """The watchdog Observer path used where the inotify reader is not available."""
    wake = threading.Event()
    unwatch = wakeup.watch_with_observer(tmp_path, wake)
    assert unwatch is not None
    try:
        (tmp_path / "x.tmp").write_text("{}")
        os.rename(tmp_path / "x.tmp", tmp_path / "x.json")
        retry_until(wake.is_set, 5, what="the observer to wake")
    finally:
        unwatch()


def test_poll_once_drains_after_the_loop_stopped(state: StateDir) -> None:
    handled: list[str] = []
    consumer = signals.Consumer(state, AGENT, lambda s: handled.append(s.id) or "ok",
                                current_epoch=lambda: None)
    consumer.start()
    consumer.stop()
    sent = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli")
    assert consumer.poll_once() == 1 and handled == [sent.id]


def test_a_handler_may_stop_its_own_consumer(state: StateDir) -> None:
    box: list[signals.Consumer] = []

    def handler(signal: signals.Signal) -> str:
        box[0].stop()
        return "stopping"

    consumer = signals.Consumer(state, AGENT, handler, current_epoch=lambda: None)
    box.append(consumer)
    consumer.start()
    thread = consumer._thread
    assert thread is not None
    signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli")
    thread.join(10)
    assert not thread.is_alive()
    assert [s.outcome for s in consumer.inbox.list("done")] == ["stopping"]


def test_consumer_run_with_outside_stop_event(state: StateDir) -> None:
    stop = threading.Event()
    handled: list[str] = []
    consumer = signals.Consumer(state, AGENT, lambda s: handled.append(s.id) or "ok",
                                current_epoch=lambda: None, rescan_interval=30.0)
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        retry_until(lambda: (state.signals / AGENT / "new").is_dir(), 5)
        signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli")
        retry_until(lambda: handled, 5)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


# --------------------------------------------------------------------------- wait_for


def test_wait_for_filters_and_times_out(state: StateDir) -> None:
    other = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
    complete = {"entry_id": "e1", "branch": "b", "merged_sha": "s", "target": "main"}
    stale = signals.send(state, "MERGE_COMPLETE", to=AGENT, sender="merge-queue-main", epoch=1,
                         payload=complete)
    with pytest.raises(TimeoutExpiredError):
        signals.wait_for(state, AGENT, kinds=["MERGE_COMPLETE", "MERGE_FAILED"], timeout=0.2,
                         current_epoch=lambda: 2)
    inbox = signals.Inbox(state, AGENT)
    assert [(s.id, s.outcome) for s in inbox.list("done")] == [(stale.id, "stale")]
    assert [s.id for s in inbox.pending()] == [other.id]

    def send_later() -> None:
        signals.send(state, "MERGE_FAILED", to=AGENT, sender="merge-queue-main", epoch=2,
                     payload={"entry_id": "e2", "branch": "b", "reason": "conflict", "target": "m"})

    timer = threading.Timer(0.2, send_later)
    timer.start()
    got = signals.wait_for(state, AGENT, kinds=[SignalKind.MERGE_FAILED], timeout=10,
                           current_epoch=lambda: 2, rescan_interval=30.0)
    timer.join()
    assert got.kind is SignalKind.MERGE_FAILED and got.outcome == "received"
    with pytest.raises(TimeoutExpiredError):
        signals.wait_for(state, AGENT, predicate=lambda s: s.sender == "nobody", timeout=0)
    assert signals.wait_for(state, AGENT, timeout=0).id == other.id


# --------------------------------------------------------------------------- sweeping


def test_sweep_returns_only_dead_claims(state: StateDir) -> None:
    live = signals.send(state, "SHUTDOWN", to=AGENT, sender="user-cli", epoch=1)
    dead = signals.send(state, "RESPAWN", to=AGENT, sender="user-cli", epoch=1)
    inbox = signals.Inbox(state, AGENT)
    live_claim = inbox.claim_next(kinds=["SHUTDOWN"])
    assert live_claim is not None
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    cur = state.signals / AGENT / "cur"
    os.rename(state.signals / AGENT / "new" / f"{dead.id}.json",
              cur / f"{dead.id}.by-{int(gone.stdout)}-0.json")
    assert signals.sweep_dead_claims(state, AGENT) == 1
    assert [s.id for s in inbox.pending()] == [dead.id]
    assert [s.id for s in inbox.list("cur")] == [live.id]
    assert signals.sweep_dead_claims(state) == 0
    # a reused pid with another start time is not the claimer
    os.rename(live_claim.path, cur / f"{live.id}.by-{os.getpid()}-1.json")
    assert signals.sweep_dead_claims(state) == 1


def test_remove_orphan_tmp(state: StateDir) -> None:
    signals.ensure_inbox(state, AGENT)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    tmp = state.signals / AGENT / "tmp"
    orphan = tmp / f"20200101T000000.000000000Z-{int(gone.stdout)}-deadbeef.json"
    orphan.write_text("{")
    mine = tmp / f"20200101T000000.000000000Z-{os.getpid()}-deadbeef.json"
    mine.write_text("{")
    assert signals.remove_orphan_tmp(state) == 1
    assert sorted(os.listdir(tmp)) == [mine.name]


# --------------------------------------------------------------------------- CLI in-process


def test_cli_send_list_wait_sweep(state_dir: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRACTOR_AGENT_ID", "orchestrator-impl_auth")
    assert main(["signal", "send", "ORCHESTRATOR_DONE", "--to", AGENT,
                 "--payload", '{"node": "impl_auth"}', "--epoch", "1"]) == 0
    sid = capsys.readouterr().out.strip()
    assert main(["signal", "send", "SHUTDOWN", "--to", AGENT, "--from", "guardian-main",
                 "--json"]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["sender"] == "guardian-main" and sent["kind"] == "SHUTDOWN"
    assert main(["signal", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["schema"] == 1 and listed["corrupt"] == []
    assert [(s["box"], s["id"], s["sender"]) for s in listed["signals"]] == [
        ("new", sid, "orchestrator-impl_auth"), ("new", sent["id"], "guardian-main")]
    assert main(["signal", "wait", "--agent", AGENT, "--kind", "ORCHESTRATOR_DONE", "--json"]) == 0
    waited = json.loads(capsys.readouterr().out)
    assert (waited["id"], waited["outcome"]) == (sid, "received")
    assert main(["signal", "wait", "--agent", AGENT, "--kind", "MERGE_FAILED",
                 "--timeout", "0.1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "timed out" in captured.err and AGENT in captured.err
    assert main(["signal", "list", "--agent", AGENT, "--box", "all"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["BOX", "AGENT", "ID", "KIND", "FROM", "EPOCH", "OUTCOME"]
    assert [line.split()[0] for line in table[1:]] == ["new", "done"]
    assert main(["signal", "sweep", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"schema": 1, "returned": 0,
                                                   "orphan_tmp_removed": 0}


class BadCli(NamedTuple):
    test_id: str
    argv: list[str]
    needle: str


BAD_CLI = [
    BadCli("bad-json", ["send", "SHUTDOWN", "--to", AGENT, "--payload", "{x"], "--payload"),
    BadCli("not-object", ["send", "SHUTDOWN", "--to", AGENT, "--payload", "[1]"], "JSON obj"),
    BadCli("payload-missing", ["send", "MERGE_READY", "--to", AGENT], "required field"),
    BadCli("unknown-kind", ["send", "LAUNCH", "--to", AGENT], "unknown signal kind 'LAUNCH'"),
    BadCli("lowercase-kind", ["send", "shutdown", "--to", AGENT], "unknown signal kind"),
    BadCli("traversal", ["send", "SHUTDOWN", "--to", "../etc"], "invalid agent id"),
    BadCli("bad-sender", ["send", "SHUTDOWN", "--to", AGENT, "--from", "a b"], "invalid agent id"),
    BadCli("tmux-meta", ["send", "SHUTDOWN", "--to", "runner-x;kill"], "invalid agent id"),
    BadCli("bad-epoch", ["send", "SHUTDOWN", "--to", AGENT, "--epoch", "x"], "--epoch"),
    BadCli("negative-epoch", ["send", "SHUTDOWN", "--to", AGENT, "--epoch", "-1"], "epoch"),
    BadCli("missing-to", ["send", "SHUTDOWN"], "--to"),
    BadCli("wait-bad-kind", ["wait", "--agent", AGENT, "--kind", "NOPE"], "unknown signal kind"),
    BadCli("wait-bad-agent", ["wait", "--agent", "A/B", "--timeout", "0"], "invalid agent id"),
    BadCli("list-bad-box", ["list", "--box", "tmp"], "--box"),
]


@pytest.mark.parametrize("case", BAD_CLI, ids=[c.test_id for c in BAD_CLI])
def test_cli_bad_input(state_dir: Path, capsys: pytest.CaptureFixture[str], case: BadCli) -> None:
    assert main(["signal", *case.argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert case.needle in captured.err
    assert tree(state_dir) == []


# --------------------------------------------------------------------------- CLI subprocess


def test_cli_subprocess_round_trip(state_dir: Path) -> None:
    env = os.environ | {"ATTRACTOR_STATE_DIR": str(state_dir)}
    sent = run_cli(["signal", "send", "VALIDATION_PASSED", "--to", AGENT, "--payload",
                    '{"node": "impl_auth", "commit": "abc"}'], env=env)
    assert sent.returncode == 0, sent.stderr
    sid = sent.stdout.strip()
    waited = run_cli(["signal", "wait", "--agent", AGENT, "--timeout", "5", "--json"], env=env)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["id"] == sid
    timeout = run_cli(["signal", "wait", "--agent", AGENT, "--timeout", "0.1"], env=env)
    assert timeout.returncode == 1 and timeout.stdout == ""
    assert timeout.stderr.startswith("error: timed out") and timeout.stderr.count("\n") == 1
    bad = run_cli(["signal", "send", "SHUTDOWN", "--to", AGENT, "--payload", "{"], env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    listed = run_cli(["signal", "list", "--box", "done", "--json"], env=env)
    assert [s["id"] for s in json.loads(listed.stdout)["signals"]] == [sid]


def test_cli_send_does_not_import_heavy_libraries(state_dir: Path) -> None:
    code = (
        "import sys\nfrom attractor.cli import main\n"
        f"assert main(['signal', 'send', 'SHUTDOWN', '--to', {AGENT!r}]) == 0\n"
        "heavy = sorted(({m.split('.')[0] for m in sys.modules} | set(sys.modules)) & {'watchdog', "
        "'attractor.tmux', 'attractor.gitops', 'pydot'})\nprint(heavy)\n"
    )
    env = os.environ | {"ATTRACTOR_STATE_DIR": str(state_dir)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.splitlines()[-1] == "[]"

