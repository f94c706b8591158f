"""Hot reload: the daemon watches each live run's pipeline file and its target's role definitions.

Pipeline: the file the run was started from (the checkpoint's `pipeline_source`). Whether it has
an edit to apply is judged from the ground truth, not from events: its bytes differ from the
run's copy (`runs/<run>/pipeline.dot`). An edit is taken once the file has been quiet for
DEBOUNCE seconds (an editor's burst of writes is one change), copied into the run's directory
as `pipeline.next-<stamp>.dot`, linted there (the same checks as `attractor run`) and, when
good, parsed beside it and handed to the guardian (PIPELINE_RELOAD), which applies it
(`engines.pipeline.reload`) and records `pipeline_reloaded`. A bad edit is recorded as
`pipeline_reload_failed` with every problem and changes nothing; the same bytes are not tried
again. An edit the guardian has not applied after RESEND_AFTER seconds (it was restarting, say)
is sent again, at most MAX_SENDS times. Edits made while no daemon ran are found on its start.

Roles: `<target>/.claude/agents/*.md`. Agents read their role file when they start, so an edit
needs no applying: the next agent started with it uses it. The daemon checks each edited file
and records `role_changed` (with the problem, if the file does not read) in each live run of
that target.

File-system events (inotify on the directories) wake the watcher; it also looks every
RESCAN_INTERVAL seconds, so a lost event only delays a reload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attractor import clock
from attractor.errors import AttractorError
from attractor.names import sha256_hex
from attractor.states import SignalKind
from attractor.store import checkpoint as cp_store
from attractor.store import signals, wakeup
from attractor.store.checkpoint import Event
from attractor.store.statedir import StateDir

logger = logging.getLogger("attractor.control.daemon")

DEBOUNCE = 0.5
RESCAN_INTERVAL = 2.0
RESEND_AFTER = 10.0
MAX_SENDS = 3
SENDER = "user-daemon"

FileStamp = tuple[int, int, int] | None


def _stamp(path: Path) -> FileStamp:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


@dataclass
class WatchedRun:
    """What the reload watcher knows of one live run."""

    state: StateDir
    run_id: str
    source: Path
    copy: Path
    target: Path
    stamp: FileStamp = None
    changed_at: float = 0.0
    dirty: bool = True  # look at the bytes once when first seen: an edit made while no daemon ran
    failed_sha: str | None = None
    sent_sha: str | None = None
    sent_at: float = 0.0
    sends: int = 0
    roles: dict[Path, FileStamp] = field(default_factory=dict)


class ReloadWatcher:
    """One thread for every live run: `track` a run, `forget` it, `stop` the thread."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.wake = threading.Event()
        self.runs: dict[tuple[str, str], WatchedRun] = {}
        self.lock = threading.Lock()
        self.watches: dict[Path, Callable[[], None]] = {}
        self.thread = threading.Thread(target=self.loop, name="reload", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def track(self, state: StateDir, cp: cp_store.Checkpoint) -> None:
        if not cp.pipeline_source:
            return  # a run started before checkpoints named their source: nothing to watch
        key = (str(state.root.resolve()), cp.run_id)
        source = Path(cp.pipeline_source)
        target = Path(cp.target_dir)
        with self.lock:
            if key in self.runs:
                return
            run = WatchedRun(state, cp.run_id, source, Path(cp.pipeline_path), target,
                             stamp=_stamp(source), changed_at=time.monotonic())
            run.roles = self._role_stamps(target)
            self.runs[key] = run
        for directory in (source.parent, target / ".claude" / "agents"):
            self._watch(directory)
        self.wake.set()

    def forget(self, state: StateDir, run_id: str) -> None:
        with self.lock:
            self.runs.pop((str(state.root.resolve()), run_id), None)

    def _watch(self, directory: Path) -> None:
        if directory in self.watches or not directory.is_dir():
            return
        stop = wakeup.watch_directory(directory, self.wake, modified=True)
        if stop is not None:
            self.watches[directory] = stop

    @staticmethod
    def _role_stamps(target: Path) -> dict[Path, FileStamp]:
        directory = target / ".claude" / "agents"
        try:
            return {path: _stamp(path) for path in sorted(directory.glob("*.md"))}
        except OSError:
            return {}

    def loop(self) -> None:
        try:
            while not self.stopping.is_set():
                self.wake.wait(RESCAN_INTERVAL)
                self.wake.clear()
                with self.lock:
                    runs = list(self.runs.values())
                wait = RESCAN_INTERVAL
                for run in runs:
                    try:
                        wait = min(wait, self.look(run))
                        self.look_at_roles(run)
                    except AttractorError as exc:
                        logger.warning("%s: reload: %s", run.run_id, exc)
                    except Exception:
                        logger.exception("%s: reload failed", run.run_id)
                if wait < RESCAN_INTERVAL:
                    self.stopping.wait(wait)
                    self.wake.set()
        finally:
            for stop in self.watches.values():
                wakeup.unwatch(stop)

    def look(self, run: WatchedRun) -> float:
        """Look at one run's pipeline file; the seconds until it wants another look."""
        now = time.monotonic()
        stamp = _stamp(run.source)
        if stamp != run.stamp:
            run.stamp, run.changed_at, run.dirty = stamp, now, True
        if not run.dirty:
            if run.sent_sha is not None and now - run.sent_at >= RESEND_AFTER:
                run.dirty = True  # sent, and not applied yet: look again
            else:
                return RESCAN_INTERVAL
        quiet = now - run.changed_at
        if quiet < DEBOUNCE:
            return DEBOUNCE - quiet
        run.dirty = False
        data, applied = _read(run.source), _read(run.copy)
        if data is None:
            return RESCAN_INTERVAL  # removed or unreadable: the run goes on as it is
        sha = sha256_hex(data)
        if applied is not None and sha256_hex(applied) == sha:
            run.sent_sha, run.sends = None, 0
            return RESCAN_INTERVAL
        if sha == run.failed_sha:
            return RESCAN_INTERVAL
        if sha == run.sent_sha:
            if now - run.sent_at < RESEND_AFTER:
                return RESEND_AFTER - (now - run.sent_at)
            if self.refused_by_guardian(run, sha):
                run.failed_sha, run.sent_sha = sha, None  # it said why, in the run's events
                return RESCAN_INTERVAL
            if run.sends >= MAX_SENDS:
                self.fail(run, sha, [f"the guardian did not apply it after {MAX_SENDS} tries; see its log"])
                return RESCAN_INTERVAL
        else:
            run.sends = 0
        try:
            self.stage_and_send(run, data, sha)
        except Exception:
            run.dirty, run.changed_at = True, now  # not handed over (a full disk, say): try again later
            raise
        return RESEND_AFTER

    @staticmethod
    def refused_by_guardian(run: WatchedRun, sha: str) -> bool:
        """Whether the guardian refused these bytes (its pipeline_reload_failed names them)."""
        return any(e.get("event") == Event.PIPELINE_RELOAD_FAILED and e.get("sha256") == sha
                   for e in cp_store.read_events(run.state, run.run_id))

    def fail(self, run: WatchedRun, sha: str, problems: list[str]) -> None:
        run.failed_sha, run.sent_sha = sha, None
        cp_store.append_event(run.state, run.run_id, Event.PIPELINE_RELOAD_FAILED, problems=problems, by=SENDER,
                              source=str(run.source), sha256=sha)
        logger.warning("%s: the edit of %s is not applied: %s", run.run_id, run.source, "; ".join(problems))

    def stage_and_send(self, run: WatchedRun, data: bytes, sha: str) -> None:
        from attractor.engines.pipeline import PipelineError, load_pipeline, save_snapshot
        from attractor.engines.pipeline.reload import STAGED_PREFIX
        from attractor.layers import layout
        from attractor.layers.launcher import check_agents, check_commands, check_session_names
        from attractor.store import atomic

        cp = cp_store.read_checkpoint(run.state, run.run_id)
        directory = cp_store.run_dir(run.state, run.run_id)
        staged = directory / f"{STAGED_PREFIX}{clock.iso().replace(':', '')}.dot"
        atomic.write_bytes_atomic(staged, data)
        try:
            edited = load_pipeline(staged)
            check_agents(edited, cp.agent, cp.agent_cmd)
            check_commands(edited)
            check_session_names(edited)
        except PipelineError as exc:
            staged.unlink(missing_ok=True)
            self.fail(run, sha, [str(problem) for problem in exc.problems])
            return
        except AttractorError as exc:
            staged.unlink(missing_ok=True)
            self.fail(run, sha, [str(exc)])
            return
        save_snapshot(edited, staged)
        signals.send(run.state, SignalKind.PIPELINE_RELOAD, to=layout.guardian_id(run.run_id), sender=SENDER,
                     payload={"staged": str(staged), "sha256": sha, "source": str(run.source)})
        run.sent_sha, run.sent_at, run.sends = sha, time.monotonic(), run.sends + 1
        logger.info("%s: sent the edit of %s to the guardian (try %d)", run.run_id, run.source, run.sends)

    def look_at_roles(self, run: WatchedRun) -> None:
        from attractor.layers.launch import load_role

        stamps = self._role_stamps(run.target)
        if stamps == run.roles:
            return
        changed = [path for path, stamp in stamps.items() if run.roles.get(path) != stamp]
        run.roles = stamps
        self._watch(run.target / ".claude" / "agents")
        for path in changed:
            role = path.stem
            try:
                load_role(role, run.target)
                problem = ""
            except AttractorError as exc:
                problem = str(exc)
            cp_store.append_event(run.state, run.run_id, Event.ROLE_CHANGED, role=role, path=str(path),
                                  ok=not problem, problem=problem or None)
            logger.info("%s: role %s changed%s", run.run_id, role, f" and does not read: {problem}" if problem else "")
