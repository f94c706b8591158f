"""The run checkpoint and event log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from attractor.errors import CorruptStateError, NotFoundError, TransitionError
from attractor.states import NodeState, RunStatus
from attractor.store import checkpoint as cp_store
from attractor.store.checkpoint import Checkpoint, Event, NodeProgress
from attractor.store.statedir import StateDir
from tests.helpers import retry_until, run_cli


def sample() -> Checkpoint:
    return Checkpoint(run_id="r1", pipeline_name="p", pipeline_path="/p.dot", target_dir="/t", target_branch="main",
                      agent="scripted", agent_cmd=None, max_agents=2,
                      nodes={"a": NodeProgress("a", "codergen"), "s": NodeProgress("s", "start")})


def test_roundtrip_and_checked_node_moves(state_dir: Path) -> None:
    state = StateDir(state_dir)
    cp = sample().with_node("a", state=NodeState.RUNNING, attempts=1)
    cp_store.write_checkpoint(state, cp)
    again = cp_store.read_checkpoint(state, "r1")
    assert again.nodes["a"].state is NodeState.RUNNING and again == cp
    with pytest.raises(TransitionError):
        again.with_node("a", state=NodeState.PENDING).with_node("a", state=NodeState.MERGED)
    assert cp_store.list_runs(state) == ["r1"] and cp_store.latest_run(state) == "r1"


def test_missing_and_corrupt(state_dir: Path) -> None:
    state = StateDir(state_dir)
    with pytest.raises(NotFoundError):
        cp_store.read_checkpoint(state, "nope")
    cp_store.write_checkpoint(state, sample())
    path = cp_store.checkpoint_path(state, "r1")
    path.write_text("{truncated")
    with pytest.raises(CorruptStateError) as info:
        cp_store.read_checkpoint(state, "r1")
    assert str(path) in str(info.value) and not path.exists()


def test_events_append_and_skip_a_torn_line(state_dir: Path) -> None:
    state = StateDir(state_dir)
    cp_store.append_event(state, "r1", Event.RUNNER_SPAWNED, node="a", state="running")
    cp_store.append_event(state, "r1", Event.RUN_STOPPED)
    with open(cp_store.run_dir(state, "r1") / "events.jsonl", "a") as fh:
        fh.write('{"at": "x", "ev')  # a writer killed mid-line
    assert [e["event"] for e in cp_store.read_events(state, "r1")] == ["runner_spawned", "run_stopped"]


def test_an_event_has_a_listed_name_and_its_listed_fields(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = StateDir(state_dir)
    with pytest.raises(ValueError, match="'node_exploded' is not a valid Event"):
        cp_store.append_event(state, "r1", "node_exploded")  # type: ignore[arg-type]
    assert not cp_store.run_dir(state, "r1").exists()
    # every field of a node's record may go with a node event; anything else is written, and logged
    node_fields = {f: None for f in NodeProgress.__dataclass_fields__ if f != "name"}
    cp_store.append_event(state, "r1", Event.MERGED, node="a", **node_fields)
    assert not caplog.records
    cp_store.append_event(state, "r1", Event.ALERT, alert="x", reason="y", colour="red")
    assert "not listed in EVENT_FIELDS: colour" in caplog.text
    assert cp_store.read_events(state, "r1")[-1]["colour"] == "red"


def test_every_event_has_its_fields_listed() -> None:
    assert set(cp_store.EVENT_FIELDS) == set(Event)


def test_a_run_status_is_one_of_the_run_statuses(state_dir: Path) -> None:
    state = StateDir(state_dir)
    cp_store.write_checkpoint(state, sample().with_status(RunStatus.SUCCEEDED))
    cp = cp_store.read_checkpoint(state, "r1")
    assert cp.status is RunStatus.SUCCEEDED
    data = json.loads(cp_store.checkpoint_path(state, "r1").read_text())
    assert data["status"] == "succeeded"


class CorruptCase(NamedTuple):
    test_id: str
    change: Callable[[dict[str, Any]], None]
    problem: str


CORRUPT_CASES = [
    CorruptCase("no-run-id", lambda d: d.pop("run_id"), "missing field(s) run_id"),
    CorruptCase("no-nodes", lambda d: d.pop("nodes"), "missing field(s) nodes"),
    CorruptCase("unknown-field", lambda d: d.update(extra=1), "unknown field(s) extra"),
    CorruptCase("status-type", lambda d: d.update(status=7), "field 'status' must be str"),
    CorruptCase("bad-status", lambda d: d.update(status="sleeping"), "status 'sleeping'"),
    CorruptCase("node-missing", lambda d: d["nodes"]["a"].pop("state"), "missing field(s) state"),
    CorruptCase("node-named", lambda d: d["nodes"]["a"].pop("kind"), "checkpoint node 'a': missing field(s) kind"),
    CorruptCase("node-attempts", lambda d: d["nodes"]["a"].update(attempts="2"), "'attempts' must be int"),
    CorruptCase("node-state", lambda d: d["nodes"]["a"].update(state="asleep"), "asleep"),
    CorruptCase("not-an-object", lambda d: d["nodes"].update(a=[]), "expected a JSON object"),
]


@pytest.mark.parametrize("case", CORRUPT_CASES, ids=[c.test_id for c in CORRUPT_CASES])
def test_a_checkpoint_with_missing_or_mistyped_fields_is_corrupt(state_dir: Path, case: CorruptCase) -> None:
    state = StateDir(state_dir)
    cp_store.write_checkpoint(state, sample())
    path = cp_store.checkpoint_path(state, "r1")
    data = json.loads(path.read_text())
    case.change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptStateError) as info:
        cp_store.read_checkpoint(state, "r1")
    assert case.problem in info.value.problem
    assert info.value.moved_to is not None and info.value.moved_to.exists() and not path.exists()


def test_a_missing_run_id_is_a_one_line_error_not_a_crash(state_dir: Path) -> None:
    state = StateDir(state_dir)
    cp_store.write_checkpoint(state, sample())
    path = cp_store.checkpoint_path(state, "r1")
    data = json.loads(path.read_text())
    del data["run_id"]
    path.write_text(json.dumps(data))
    result = run_cli(["status", "--run", "r1", "--state-dir", str(state_dir)])
    assert result.returncode == 2, result.stderr
    assert f"corrupt state file {path}" in result.stderr and "run_id" in result.stderr


def test_a_corrupt_checkpoint_is_moved_aside_under_its_lock(state_dir: Path) -> None:
    """While a writer holds the lock, a reader that found the file corrupt waits, reads the
    writer's good version, and moves nothing aside."""
    state = StateDir(state_dir)
    cp_store.write_checkpoint(state, sample())
    path = cp_store.checkpoint_path(state, "r1")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_REPAIR, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        read: list[Checkpoint | BaseException] = []

        def reader() -> None:
            try:
                read.append(cp_store.read_checkpoint(state, "r1"))
            except BaseException as exc:
                read.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        retry_until(lambda: not thread.is_alive() or _waits_on_lock(path), what="the reader to wait on the lock")
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        thread.join(30)
        assert read and isinstance(read[0], Checkpoint), read
        assert read[0].run_id == "r1"
        assert [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name] == []
    finally:
        holder.kill()
        holder.wait()


# Takes the checkpoint's lock, leaves a torn file, and repairs it when told to, then lets go.
HOLD_AND_REPAIR = """
import sys
from pathlib import Path
from attractor.store import locks
path = Path(sys.argv[1])
good = path.read_bytes()
with locks.file_lock(path):
    path.write_bytes(good[:10])
    print("holding", flush=True)
    sys.stdin.readline()
    path.write_bytes(good)
"""


def _waits_on_lock(path: Path) -> bool:
    """Some thread of this process has the lock file open (it queued on the lock)."""
    lock = str(path) + ".lock"
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _target(fd) == lock) > 0


def _target(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:
        return ""
