"""`attractor logs`: one agent's log or a run's logs interleaved by time, read from the files the
layers write (`logs/<agent-id>.log`).

The scene's files are written by `logging.FileHandler` with the layers' format, at chosen times,
in a time zone half an hour off the hour (so local and UTC times cannot be confused); one test
reads the files of a real run of the scripted agent. `--follow` runs as a real process ended
with SIGINT."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor import clock, procs
from attractor.states import RunStatus
from attractor.store import checkpoint as cp_store
from attractor.store import identities
from attractor.store.checkpoint import Checkpoint, NodeProgress
from attractor.store.statedir import StateDir
from tests.chain_helpers import codergen, launch, module_steps, pipeline_file, run_id, tool
from tests.helpers import retry_until, run_cli

# the format of the guardian's and the runners' files (attractor.cli.layers._file_logging)
FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
HEADER = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ [A-Z]+ \S+: ")
RUN = "r1"
GUARDIAN = f"guardian-{RUN}"
PIDS = {GUARDIAN: 4100, "runner-impl_a": 4201, "orchestrator-impl_a": 4202, "runner-impl_b": 4301,
        "runner-impl_c": 4401, "runner-gone": 4501}


class Entry(NamedTuple):
    key: str
    at: float
    agent: str
    message: str
    level: int = logging.INFO
    crash: bool = False  # logged with the traceback of an exception, as logger.exception does


def log_record(entry: Entry) -> logging.LogRecord:
    exc_info = None
    if entry.crash:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("attractor.layers.runner" if entry.agent.startswith("runner") else "attractor.states",
                               entry.level, __file__, 1, entry.message, None, exc_info)
    record.created, record.msecs = entry.at, (entry.at - int(entry.at)) * 1000
    record.process = PIDS[entry.agent]
    return record


def lines_of(entry: Entry) -> list[str]:
    """The lines `entry` takes in its file, header first."""
    return logging.Formatter(FORMAT).format(log_record(entry)).split("\n")


def write_logs(state: Path, entries: list[Entry]) -> None:
    """Append `entries` to their agents' files through logging, as the layers do."""
    (state / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in entries:
        handler = logging.FileHandler(state / "logs" / f"{entry.agent}.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.handle(log_record(entry))
        handler.close()


class Scene(NamedTuple):
    state: Path
    base: float  # the run's first record, three hours ago
    entries: list[Entry]

    def of(self, *keys: str) -> list[tuple[str, list[str]]]:
        """The records `keys` as the output groups them: (agent, lines)."""
        found = {e.key: e for e in self.entries}
        return [(found[k].agent, lines_of(found[k])) for k in keys]


RUN_KEYS = ["g-start", "a-start", "o-start", "b-start", "g-spawned", "a-pane", "b-work", "a-crash", "g-failed",
            "b-late", "g-going"]


@pytest.fixture
def half_hour_zone() -> Iterator[None]:
    """Local time 5:30 ahead of UTC, here and in the processes the test starts."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "ATT-5:30"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture
def scene(state_dir: Path, tmp_path: Path, half_hour_zone: None) -> Scene:
    """Run r1 (nodes impl_a, impl_b, impl_c, a tool and the ends) after run r0 (node impl_a),
    with the files of r1's guardian, impl_a's runner and orchestrator, impl_b's runner, and an
    agent of no run (runner-gone); impl_a's runner file starts with its record of r0."""
    now = time.time()
    base = float(int(now) - 3 * 3600)
    state = StateDir(state_dir)

    def checkpoint(run: str, nodes: list[str], started: float, finished: float | None) -> None:
        kinds = {"start": "start", "exit": "exit", "check": "tool"}
        cp = Checkpoint(run_id=run, pipeline_name="p", pipeline_path=str(tmp_path / "p.dot"),
                        target_dir=str(tmp_path), target_branch="main", agent="scripted", agent_cmd=None,
                        max_agents=2, nodes={n: NodeProgress(n, kinds.get(n, "codergen")) for n in nodes},
                        status=RunStatus.FAILED if finished else RunStatus.RUNNING, started_at=clock.iso(started),
                        finished_at=clock.iso(finished) if finished else None)
        cp_store.write_checkpoint(state, cp)

    checkpoint("r0", ["start", "impl_a", "exit"], base - 200, base - 90)
    os.utime(cp_store.checkpoint_path(state, "r0"), (now - 7200, now - 7200))  # the older of the two
    checkpoint(RUN, ["start", "impl_a", "impl_b", "impl_c", "check", "exit"], base - 60, None)
    identities.create_identity(state, "guardian", RUN, session_id=RUN)
    identities.create_identity(state, "launcher", RUN, session_id=RUN)  # a member without a file
    entries = [
        Entry("gone", base - 150, "runner-gone", "a runner of no run left this"),
        Entry("a-r0", base - 100, "runner-impl_a", "runner impl_a: the earlier run"),
        Entry("g-start", base, GUARDIAN, "run r1 started"),
        Entry("a-start", base + 1, "runner-impl_a", "runner impl_a: started"),
        Entry("o-start", base + 1.25, "orchestrator-impl_a", "orchestrator impl_a: at work"),
        Entry("b-start", base + 1.5, "runner-impl_b", "runner impl_b: started"),
        Entry("g-spawned", base + 2, GUARDIAN, "both runners spawned"),
        Entry("a-pane", base + 3, "runner-impl_a", "runner impl_a: the agent's pane at its end (exit 2):\n"
              "error: script line 1: bad step\n\n  indented | with a bar\nPane is dead (status 2)",
              logging.WARNING),
        Entry("b-work", base + 3.25, "runner-impl_b", "runner impl_b: working"),
        Entry("a-crash", base + 4, "runner-impl_a", "runner impl_a ended with an error", logging.ERROR, crash=True),
        Entry("g-failed", base + 5, GUARDIAN, "node impl_a: running -> failed"),
        Entry("b-late", now - 20 * 60, "runner-impl_b", "runner impl_b: still working"),
        Entry("g-going", now - 10 * 60, GUARDIAN, "run r1 still going"),
    ]
    write_logs(state_dir, entries)
    return Scene(state_dir, base, entries)


def logs(scene: Scene, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["logs", "--state-dir", str(scene.state), *args])


def groups(out: str, *, named: bool = True) -> list[tuple[str, list[str]]]:
    """The records in `out` as (agent, lines); every line of a record must carry its agent."""
    found: list[tuple[str, list[str]]] = []
    for line in out.splitlines():
        agent, text = ("", line)
        if named:
            agent, bar, text = line.partition(" | ")
            assert bar, f"no agent before {line!r}"
            agent = agent.rstrip()
        if HEADER.match(text) or not found:
            found.append((agent, [text]))
        else:
            assert found[-1][0] == agent, f"{line!r} continues a record of {found[-1][0]}"
            found[-1][1].append(text)
    return found


def test_a_run_s_logs_interleave_by_time_with_the_agent_on_every_line(scene: Scene) -> None:
    result = logs(scene)
    assert result.returncode == 0 and not result.stderr, result.stderr
    # the records of r1 in time order across four files; impl_a's record of r0 and the agent of
    # no run are not r1's; each record has all its lines, right after its header
    assert groups(result.stdout) == scene.of(*RUN_KEYS)
    width = len("orchestrator-impl_c")  # the longest agent of the run: the names line up
    assert {line.index(" | ") for line in result.stdout.splitlines()} == {width}


def test_a_traceback_and_a_pane_dump_stay_whole_under_their_header(scene: Scene) -> None:
    result = logs(scene, "--lines", "6")
    [pane, work, crash] = groups(result.stdout)[:3]
    assert pane[0] == "runner-impl_a" and pane[1][1:] == ["error: script line 1: bad step", "",
                                                          "  indented | with a bar", "Pane is dead (status 2)"]
    assert work == scene.of("b-work")[0]
    assert crash[0] == "runner-impl_a" and crash[1][1] == "Traceback (most recent call last):"
    assert crash[1][-1] == "ZeroDivisionError: division by zero"


class Case(NamedTuple):
    test_id: str
    args: Callable[[Scene], list[str]]
    keys: list[str]
    named: bool = True


def iso_offset(ts: float) -> str:
    """`ts` in local time with its offset: 2026-12-02T06:34:23+05:30."""
    return datetime.fromtimestamp(ts).astimezone().isoformat()


CASES = [
    Case("lines", lambda s: ["--lines", "2"], ["b-late", "g-going"]),
    Case("lines-zero", lambda s: ["--lines", "0"], []),
    Case("since-age", lambda s: ["--since", "30m"], ["b-late", "g-going"]),
    Case("since-age-seconds", lambda s: ["--since", "900s"], ["g-going"]),
    Case("since-iso-utc", lambda s: ["--since", clock.iso(s.base + 3.1)], RUN_KEYS[6:]),
    Case("since-iso-offset", lambda s: ["--since", iso_offset(s.base + 3)], RUN_KEYS[5:]),
    Case("since-iso-local", lambda s: ["--since", datetime.fromtimestamp(s.base + 4.5).isoformat()], RUN_KEYS[8:]),
    Case("since-then-lines", lambda s: ["--since", "1d", "--lines", "1"], ["g-going"]),
    Case("node", lambda s: ["impl_a"], ["a-start", "o-start", "a-pane", "a-crash"]),
    Case("agent", lambda s: ["runner-impl_b"], ["b-start", "b-work", "b-late"], named=False),
    Case("guardian", lambda s: [GUARDIAN, "--lines", "3"], ["g-spawned", "g-failed", "g-going"], named=False),
    Case("agent-of-no-run", lambda s: ["runner-gone"], ["gone"], named=False),
    Case("node-of-an-earlier-run", lambda s: ["impl_a", "--run", "r0"], ["a-r0"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.test_id for c in CASES])
def test_selection_and_limits(scene: Scene, case: Case) -> None:
    result = logs(scene, *case.args(scene))
    assert result.returncode == 0 and not result.stderr, result.stderr
    want = [(agent if case.named else "", lines) for agent, lines in scene.of(*case.keys)]
    assert groups(result.stdout, named=case.named) == want


class BadCase(NamedTuple):
    test_id: str
    args: list[str]
    mentions: list[str]


BAD_CASES = [
    BadCase("unknown-agent", ["nope"], ["'nope'", GUARDIAN, "runner-impl_a", "orchestrator-impl_a", "runner-impl_b",
                                        "runner-gone", "nodes of run r1: impl_a, impl_b, impl_c"]),
    BadCase("tool-node", ["check"], ["'check'", "impl_a, impl_b, impl_c"]),
    BadCase("unknown-run", ["--run", "r9"], ["run 'r9' not found"]),
    BadCase("since-word", ["--since", "yesterday"], ["--since", "'yesterday'", "30s, 10m, 2h, 1d"]),
    BadCase("since-unit", ["--since", "10x"], ["--since", "'10x'"]),
    BadCase("since-negative", ["--since=-5m"], ["--since", "'-5m'"]),
    BadCase("lines-negative", ["--lines", "-1"], ["--lines", "-1"]),
    BadCase("lines-word", ["--lines", "many"], ["--lines", "'many'"]),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.test_id for c in BAD_CASES])
def test_bad_input_is_one_line_and_exit_2(scene: Scene, case: BadCase) -> None:
    result = logs(scene, *case.args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    for word in case.mentions:
        assert word in result.stderr


def test_json_prints_one_object_per_record_and_line(scene: Scene) -> None:
    result = logs(scene, "--json", "--since", clock.iso(scene.base + 2.5))
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(o["agent"], o["level"], o["pid"]) for o in objects] == [
        ("runner-impl_a", "WARNING", 4201), ("runner-impl_b", "INFO", 4301), ("runner-impl_a", "ERROR", 4201),
        (GUARDIAN, "INFO", 4100), ("runner-impl_b", "INFO", 4301), (GUARDIAN, "INFO", 4100)]
    pane, _, crash, failed, _, _ = objects
    assert pane["time"] == clock.iso(scene.base + 3) and pane["logger"] == "attractor.layers.runner"
    [logged] = [e.message for e in scene.entries if e.key == "a-pane"]
    assert pane["message"] == logged  # every line of it, without the header's prefix
    assert crash["message"].startswith("runner impl_a ended with an error\nTraceback (most recent call last):\n")
    assert crash["message"].endswith("ZeroDivisionError: division by zero")
    assert failed == {"time": clock.iso(scene.base + 5), "agent": GUARDIAN, "pid": 4100, "level": "INFO",
                      "logger": "attractor.states", "message": "node impl_a: running -> failed"}


def test_follow_prints_new_records_and_logs_that_appear_until_ctrl_c(scene: Scene, tmp_path: Path) -> None:
    out_path = tmp_path / "follow.out"
    with open(out_path, "w") as out, open(tmp_path / "follow.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "attractor", "logs", "--follow", "--lines", "2",
                                 "--state-dir", str(scene.state)], stdout=out, stderr=err, text=True)
    try:
        def shown() -> list[tuple[str, list[str]]]:
            text = out_path.read_text()
            return groups(text[:text.rfind("\n") + 1])  # whole lines only

        retry_until(lambda: shown() == scene.of("b-late", "g-going"), 15, what="the last two records")
        now = time.time()
        appended = [Entry("b-new", now, "runner-impl_b", "runner impl_b: a new record")]
        write_logs(scene.state, appended)
        retry_until(lambda: len(shown()) == 3, 10, what="the appended record")
        # a runner that starts after the command: its file is new; a record of several lines
        started = [Entry("c-new", now + 0.5, "runner-impl_c", "runner impl_c: started\n  and said more\n",
                         logging.WARNING),
                   Entry("c-next", now + 0.75, "runner-impl_c", "runner impl_c: next")]
        write_logs(scene.state, started)
        retry_until(lambda: len(shown()) == 5, 10, what="the new file's records")
        assert shown() == [*scene.of("b-late", "g-going"),
                           *Scene(scene.state, scene.base, appended + started).of("b-new", "c-new", "c-next")]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
    assert code == 130
    assert (tmp_path / "follow.err").read_text() == ""


def test_the_files_of_a_real_run(chain: tuple[Path, Path]) -> None:
    """A run of the scripted agent: one node merges, one dies at once (exit 2: its runner logs
    the pane at its end, a record of several lines)."""
    target, state = chain
    body = (codergen("good", module_steps("good", 1) + "commit good\nreport") + tool("check")
            + codergen("bad", "fail 2"))
    pipe = pipeline_file(target.parent, body, "  start -> good -> check -> exit\n  start -> bad -> exit\n")
    proc = launch(pipe, target, state)
    proc.communicate(timeout=120)
    rid = run_id(state)
    retry_until(lambda: not any(procs.pid_alive(json.loads(p.read_text()).get("pid"))
                                for p in (state / "identities").glob("*.json")), 20, what="the run's processes to end")
    files = {path.stem: path for path in (state / "logs").glob("*.log")}
    assert {f"guardian-{rid}", "runner-good", "runner-bad"} <= files.keys()

    result = run_cli(["logs", "--state-dir", str(state), "--lines", "100000"])
    assert result.returncode == 0, result.stderr
    found = groups(result.stdout)
    by_agent: dict[str, list[list[str]]] = {}
    for agent, lines in found:
        by_agent.setdefault(agent, []).append(lines)
    for agent in (f"guardian-{rid}", "runner-good", "runner-bad"):  # each file whole, in its order
        assert [line for lines in by_agent[agent] for line in lines] == files[agent].read_text().splitlines()
    stamps = [lines[0][:23] for _, lines in found]
    assert stamps == sorted(stamps)  # interleaved by time
    [pane] = [lines for agent, lines in found if agent == "runner-bad" and "pane at its end" in lines[0]]
    assert len(pane) > 1 and any(line.startswith("Pane is dead") for line in pane[1:])

    single = run_cli(["logs", "runner-good", "--state-dir", str(state), "--lines", "100000"])
    assert single.stdout == files["runner-good"].read_text()  # one agent: its lines as written


class BlockCase(NamedTuple):
    test_id: str
    ending: str  # what follows the last whole record


BLOCK_CASES = [
    BlockCase("newline", "\n"),
    BlockCase("unfinished-continuation", "\n  still being writ"),
    BlockCase("unfinished-header", "\n2026-12-01 19:04:23,203 7 INFO x.y: still being writ"),
]


@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c.test_id for c in BLOCK_CASES])
def test_reading_backwards_in_blocks_of_any_size_finds_what_reading_it_all_finds(
        case: BlockCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attractor.store import logfiles

    base = 1_800_000_000.0
    entries = [Entry(f"e{i}", base + i // 3 + (i % 3) * 0.25, "runner-impl_a", f"record {i}" + "\nmore" * (i % 4))
               for i in range(30)]
    text = "a line before any header\n" + "".join("\n".join(lines_of(e)) + "\n" for e in entries)
    path = tmp_path / "runner-impl_a.log"
    path.write_text(text.rstrip("\n") + case.ending)
    whole = path.read_bytes()
    done = whole.rfind(b"\n") + 1  # where the whole lines end
    finished = whole[:done].decode().split("\n")[:-1]
    unfinished = [whole[done:].decode()] if done < len(whole) else []
    everything = logfiles.parse_lines("a", finished + unfinished, leading=True, fallback=0.0)
    complete = logfiles.parse_lines("a", finished, leading=True, fallback=0.0)
    for block in (1, 5, 64, 1 << 20):
        monkeypatch.setattr(logfiles, "BLOCK", block)
        monkeypatch.setattr(logfiles, "MAX_BLOCK", 4 * block)
        for last in (None, 0, 1, 4, 31, 100):
            for since in (None, base + 2.25, base + 7, base + 99):
                for partial in (True, False):
                    got, offset = logfiles.read_tail(path, "a", last=last, since=since, partial=partial)
                    want = [r for r in (everything if partial else complete) if since is None or r.time >= since]
                    if last is not None:
                        want = want[-last:] if last else []
                    assert (got, offset) == (want, done), (block, last, since, partial)
