"""Layer 0: validate a pipeline, register the launcher, start (or re-attach to) the guardian's
tmux session, then follow the run with a progress line per node change until it ends, or detach.

While following, the launcher supervises the guardian: a guardian that dies while the run is
still `running` is started again, and the new guardian resumes from the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from attractor import clock, gitops, procs
from attractor import tmux as tmux_mod
from attractor.agents import resolve_agent
from attractor.engines.gates import Gate, check_gate
from attractor.engines.pipeline import Pipeline, load_pipeline, read_snapshot, save_snapshot
from attractor.engines.space import DiskPatience
from attractor.engines.supervision import Health, Supervisor
from attractor.engines.watch import SUPERVISED, Watch, policy_from_env
from attractor.errors import (
    AlreadyExistsError,
    AttractorError,
    BadInputError,
    CorruptStateError,
    IdentityTakenError,
    MissingBinaryError,
    NoSpaceError,
    NotFoundError,
    UsageError,
)
from attractor.gitops import exclude_path
from attractor.layers import layout
from attractor.layers.guardian import GuardianConfig, spawn_guardian
from attractor.names import validate_name
from attractor.states import IdentityStatus, NodeState, RunStatus
from attractor.store import checkpoint as cp_store
from attractor.store import identities, locks, wakeup
from attractor.store.checkpoint import Checkpoint, Event, NodeProgress
from attractor.store.statedir import StateDir
from attractor.tmux import PaneInfo, Tmux, socket_name_for

logger = logging.getLogger(__name__)

# The follower sleeps on events: the run directory written (events, checkpoint), the guardian's
# death (a pidfd). It looks round every FOLLOW_INTERVAL while the guardian is starting, dying or
# not watched, every IDLE_FOLLOW_INTERVAL while it is up and watched.
FOLLOW_INTERVAL = 0.2
IDLE_FOLLOW_INTERVAL = 5.0
HEARTBEAT_INTERVAL = identities.LAUNCHER_HEARTBEAT_INTERVAL
# While the guardian's process lives, the follower asks tmux for the panes at most this often
# (a tmux client per question); at once when the process is gone.
PANES_INTERVAL = 1.0
PANES_QUIET_INTERVAL = 10.0
# a launch waits this long for another one in the same state directory to register its guardian
LAUNCH_LOCK_TIMEOUT = 60.0
MAX_GUARDIAN_RESTARTS = 10


@dataclass(frozen=True)
class LaunchOptions:
    pipeline: Path | None
    target_dir: Path
    agent: str | None = None
    agent_cmd: str | None = None
    max_agents: int | None = None
    detach: bool = False
    attach: bool = False
    resume: str | None = None
    state_dir: str | None = None
    tmux_socket: str | None = None
    target_branch: str | None = None
    log_level: str = "INFO"
    timeout: float | None = None
    # called with (state directory, run id, output) once a detached run is up: the command
    # line hands the run to the user's daemon through it, when one runs
    on_detach: Callable[[Path, str, TextIO], object] | None = None


def make_run_id(pipeline_name: str) -> str:
    base = "".join(c if c.isalnum() else "-" for c in pipeline_name.lower()).strip("-")[:30] or "run"
    return validate_name(f"{base}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid() % 1000:03d}", "run id")


def check_target(target_dir: Path, branch: str) -> None:
    if not target_dir.is_dir():
        raise BadInputError("--target-dir", f"{target_dir} is not a directory")
    try:
        tip = gitops.rev_parse(target_dir, f"refs/heads/{branch}")
    except gitops.NotAGitRepositoryError as exc:  # its text suggests --repo, which `run` does not have
        raise BadInputError("--target-dir", f"{target_dir}: {exc.problem}; pass --target-dir with the path "
                            "of a git checkout") from None
    if tip is None:
        raise BadInputError("--target-dir", f"{target_dir} has no branch {branch!r}; create it or pass --target BRANCH")
    dirty = gitops.dirty_checkout_of(target_dir, branch)
    if dirty is not None:
        where, files = dirty
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        raise BadInputError(f"--target-dir {where}", f"{branch} is checked out there with uncommitted changes "
                            f"({shown}); the merge queue could never land on it: commit or stash them first")


def check_agents(pipeline: Pipeline, agent: str | None, agent_cmd: str | None) -> str:
    name = agent or "scripted"
    resolve_agent(name, agent_cmd).check()
    for node in pipeline.nodes.values():
        if node.kind == "codergen":
            own = node.agent
            if own and not agent_cmd:
                resolve_agent(own).check()
            if (own or name) == "scripted" and not agent_cmd and node.script is None:
                raise BadInputError(f"node '{node.name}'", "the scripted agent needs a `script` attribute; "
                                    "add one or choose another --agent")
    return name


def check_commands(pipeline: Pipeline) -> None:
    """A validation command whose program does not exist is bad input, found before anything
    starts (the merge queue runs the same commands as its gates)."""
    for node in pipeline.nodes.values():
        if node.kind == "tool" and node.command:
            try:
                check_gate(Gate(node.command, node.timeout or 600.0))
            except UsageError as exc:
                raise BadInputError(f"node '{node.name}'", str(exc)) from None


def prepare(opts: LaunchOptions) -> tuple[StateDir, Checkpoint, str]:
    """Everything that can fail on bad input, before anything starts."""
    shutil.which("tmux") or _missing_tmux()
    policy_from_env()  # a bad $ATTRACTOR_POLICY is bad input, before anything starts
    target_dir = opts.target_dir.expanduser().resolve()
    state = StateDir.resolve(opts.state_dir, target_dir)
    socket = tmux_mod.socket_name_for(target_dir, opts.tmux_socket)
    if opts.resume:
        cp = cp_store.read_checkpoint(state, validate_name(opts.resume, "run id"))
        if cp.status == RunStatus.SUCCEEDED:
            return state, cp, socket
        pipeline = load_pipeline(Path(cp.pipeline_path))
        check_agents(pipeline, cp.agent, cp.agent_cmd)
        return state, reopen(cp), socket
    if opts.pipeline is None:
        raise UsageError("attractor run: a PIPELINE file is required unless --resume RUN_ID is given")
    pipeline = load_pipeline(opts.pipeline)
    branch = opts.target_branch or pipeline.target or "main"
    check_target(target_dir, branch)
    agent = check_agents(pipeline, opts.agent, opts.agent_cmd)
    check_commands(pipeline)
    if opts.max_agents is not None and opts.max_agents < 1:
        raise BadInputError("--max-agents", f"must be at least 1, got {opts.max_agents}")
    check_session_names(pipeline)
    run_id = make_run_id(pipeline.name)
    copy = cp_store.run_dir(state, run_id) / "pipeline.dot"
    nodes = {name: NodeProgress(name=name, kind=node.kind) for name, node in pipeline.nodes.items()}
    cp = Checkpoint(run_id=run_id, pipeline_name=pipeline.name, pipeline_path=str(copy), target_dir=str(target_dir),
                    pipeline_source=str(opts.pipeline.expanduser().resolve()),
                    target_branch=branch, agent=agent, agent_cmd=opts.agent_cmd,
                    max_agents=opts.max_agents or pipeline.max_agents or 4, nodes=nodes)
    return state, cp, socket


def check_guardian_session(socket: str, run_id: str) -> None:
    """The guardian's tmux session name is free, or a session attractor made (then the
    guardian's start replaces it); a session of someone else's by that name is refused."""
    name = layout.guardian_session(run_id)
    owned = Tmux(socket)._sessions().get(name)  # name -> carries our tag
    if owned is False:
        raise AlreadyExistsError("tmux session", name, f"on socket {socket}, not created by attractor; "
                                 "rename or end it, or choose another socket with --tmux-socket")


def check_node_worktrees(cp: Checkpoint) -> None:
    """Worktrees an earlier run left at this run's node paths must be clean (they are removed)."""
    for name, node in cp.nodes.items():
        tree = layout.worktree_path(Path(cp.target_dir), name)
        if node.kind == "codergen" and tree.exists() and not gitops.is_clean(tree):
            raise BadInputError(f"worktree {tree}", "has uncommitted changes from an earlier run; commit, "
                                "stash or remove it, or resume that run with --resume")


def _undo_launch(state: StateDir, cp: Checkpoint, previous: Checkpoint | None, exc: BaseException) -> None:
    """The guardian did not start: the checkpoint goes back to what it said (a resume), or the
    new run is recorded as failed with the reason; nothing is left saying `running`."""
    try:
        if previous is not None:
            cp_store.write_checkpoint(state, previous)
        else:
            cp_store.write_checkpoint(state, cp.with_status(RunStatus.FAILED, f"the guardian did not start: {exc}"))
        cp_store.append_event(state, cp.run_id, Event.LAUNCH_FAILED, reason=str(exc))
        identities.mark_terminated(state, "launcher", cp.run_id, reason="the guardian did not start")
    except AttractorError as undo:
        logger.warning("undoing the launch of %s: %s", cp.run_id, undo)


def reopen(cp: Checkpoint) -> Checkpoint:
    """A resumed run: merged and done nodes stay; failed and blocked ones (a quarantine since
    cleared, a stop, a red gate since fixed) are pending again."""
    for name, node in cp.nodes.items():
        if node.state in (NodeState.FAILED, NodeState.BLOCKED):
            cp = cp.with_node(name, state=NodeState.PENDING, outcome=None, reason="", finished_at=None)
    return cp.with_status(RunStatus.RUNNING)


def check_session_names(pipeline: Pipeline) -> None:
    """Node names that tmux would turn into the same session name (`a.b` and `a_b`)."""
    seen: dict[str, str] = {}
    for name in pipeline.nodes:
        key = layout.session_name("r", "runner", name)
        if key in seen:
            raise BadInputError(f"nodes '{seen[key]}' and '{name}'",
                                "tmux would give them the same session name ('.' becomes '_'); rename one")
        seen[key] = name


def retire_node_records(state: StateDir, cp: Checkpoint) -> None:
    """Before a new run: the hooks and supervision records of its node names belong to earlier
    runs; they are kept beside the data as `*.json.retired-<stamp>`. Clean worktrees they left
    are removed; a worktree with uncommitted changes stops the launch."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for name, node in cp.nodes.items():
        if node.kind != "codergen":
            continue
        runner, orchestrator = layout.runner_id(name), layout.orchestrator_id(name)
        for path in (state.hooks / f"{runner}.json", state.root / "supervision" / f"{runner}.json",
                     state.root / "supervision" / f"{orchestrator}.json"):
            if path.exists():
                os.replace(path, path.with_name(f"{path.name}.retired-{stamp}"))
        tree = layout.worktree_path(Path(cp.target_dir), name)
        if tree.exists():
            if not gitops.is_clean(tree):
                raise BadInputError(f"worktree {tree}", "has uncommitted changes from an earlier run; commit, "
                                    "stash or remove it, or resume that run with --resume")
            gitops.remove_worktree(Path(cp.target_dir), tree)


def _missing_tmux() -> bool:
    raise MissingBinaryError("tmux", "install it with: apt-get install tmux")


def launch(opts: LaunchOptions, out: TextIO = sys.stdout) -> int:

    if opts.attach and opts.pipeline is None and not opts.resume:
        state = StateDir.resolve(opts.state_dir, opts.target_dir.expanduser().resolve())
        live = identities.find_live(state, "guardian") if state.root.is_dir() else None
        if live is None:
            raise NotFoundError("live guardian", str(state.root),
                                "start a run with: attractor run PIPELINE --target-dir DIR")
        return attach(state, live, opts, out)
    state, cp, socket = prepare(opts)
    if cp.status == RunStatus.SUCCEEDED:
        print(f"run {cp.run_id} already succeeded; nothing to resume", file=out)
        return 0
    gcfg = GuardianConfig(state=state, run_id=cp.run_id, tmux_socket=socket, log_level=opts.log_level)
    # one launch at a time per state directory, from the live-guardian check until the new
    # guardian is registered: a concurrent second launch then finds it and names it
    state.ensure()
    with locks.file_lock(state.root / "launch", timeout=LAUNCH_LOCK_TIMEOUT):
        live = identities.find_live(state, "guardian")
        if live is not None and not (opts.attach or (opts.resume and live.name == cp.run_id)):
            raise IdentityTakenError(
                layout.guardian_id(live.name), live.pid,
                f"tmux session {live.tmux_session}; one guardian per state directory: follow it with "
                f"--attach, or stop it with: attractor stop {live.name}")
        guardian = None if live is not None else _start(opts, state, cp, socket, gcfg)
    if guardian is None:
        assert live is not None
        return attach(state, live, opts, out)
    print(f"run {cp.run_id}: guardian pid {guardian.pid} in tmux session {guardian.tmux_session} "
          f"(attach: tmux -L {socket} attach -t {guardian.tmux_session})", file=out, flush=True)
    pause = cp_store.paused(state, cp.run_id)
    if pause is not None:  # paused as it ended (a pause that raced the end): say so, never silently
        print(f"warning: run {cp.run_id} is paused (by {pause.get('by')} at {pause.get('at')}): no new agents "
              f"start until: attractor unpause {cp.run_id}", file=sys.stderr)
    if opts.detach:
        print(f"detached; follow with: attractor status --run {cp.run_id} --state-dir {state.root}", file=out)
        identities.mark_terminated(state, "launcher", cp.run_id, reason="detached")
        if opts.on_detach is not None:
            opts.on_detach(state.root, cp.run_id, out)
        return 0
    try:
        return follow(state, cp.run_id, gcfg, out, timeout=opts.timeout)
    except KeyboardInterrupt:
        print(f"\ndetached: run {cp.run_id} goes on; follow it with `attractor run --attach --target-dir "
              f"{cp.target_dir}`, stop it with `attractor stop {cp.run_id} --target-dir {cp.target_dir}`",
              file=sys.stderr)
        return 130
    finally:
        try:
            identities.mark_terminated(state, "launcher", cp.run_id, reason="follow ended")
        except AttractorError as exc:
            logger.info("%s", exc)


def _start(opts: LaunchOptions, state: StateDir, cp: Checkpoint, socket: str,
           gcfg: GuardianConfig) -> identities.Identity:
    """Write the run's state and start its guardian (under the launch lock). Every refusal
    comes before the first write, so a refused launch changes no state; a guardian that does
    not start leaves the checkpoint as it was (a resume) or `failed` (a new run)."""
    check_guardian_session(socket, cp.run_id)
    if not opts.resume:
        check_node_worktrees(cp)
    previous = cp_store.read_checkpoint(state, cp.run_id) if opts.resume else None
    exclude_path(Path(cp.target_dir), ".claude/")
    if not opts.resume:
        assert opts.pipeline is not None
        state.ensure("runs", cp.run_id)
        Path(cp.pipeline_path).write_text(opts.pipeline.read_text())
        retire_node_records(state, cp)
    if read_snapshot(Path(cp.pipeline_path)) is None:
        # the guardian and every runner read the parsed form: none of them loads the DOT parser
        save_snapshot(load_pipeline(Path(cp.pipeline_path)), Path(cp.pipeline_path))
    cp_store.write_checkpoint(state, cp)

    # where the target was when this launch started: the guardian trusts no other tip it finds
    # later unless the merge queue put it there
    tip = gitops.rev_parse(Path(cp.target_dir), f"refs/heads/{cp.target_branch}")
    cp_store.append_event(state, cp.run_id, Event.LAUNCHED, resume=bool(opts.resume), pid=os.getpid(), target_tip=tip)
    identities.create_identity(state, "launcher", cp.run_id, pid=os.getpid(), session_id=cp.run_id,
                               worktree=cp.target_dir, tmux_socket=socket)
    identities.update_liveness(state, "launcher", cp.run_id, pid=os.getpid())
    guardian = _guardian_alive(state, cp.run_id)
    if guardian is not None:
        return guardian
    try:
        return spawn_guardian(gcfg, Path(cp.target_dir))
    except BaseException as exc:
        _undo_launch(state, cp, previous, exc)
        raise


def attach(state: StateDir, live: identities.Identity, opts: LaunchOptions, out: TextIO) -> int:
    """Follow the run of a live guardian (and supervise it) instead of starting one."""
    socket = live.tmux_socket or socket_name_for(opts.target_dir.expanduser().resolve(), opts.tmux_socket)
    print(f"attaching to run {live.name}: guardian pid {live.pid} in tmux session {live.tmux_session}",
          file=out, flush=True)
    gcfg = GuardianConfig(state=state, run_id=live.name, tmux_socket=socket, log_level=opts.log_level)
    try:  # this process becomes the run's launcher, unless another live one already follows it
        identities.create_identity(state, "launcher", live.name, pid=os.getpid(), session_id=live.name,
                                   worktree=live.worktree, tmux_socket=socket)
        owner = True
    except IdentityTakenError:
        owner = False
    try:
        return follow(state, live.name, gcfg, out, timeout=opts.timeout, heartbeat=owner)
    except KeyboardInterrupt:
        print(f"\ndetached from run {live.name}; it goes on", file=sys.stderr)
        return 130
    finally:
        if owner:
            with contextlib.suppress(AttractorError):
                identities.mark_terminated(state, "launcher", live.name, reason="follow ended")


def _guardian_alive(state: StateDir, run_id: str) -> identities.Identity | None:
    ident = identities.find(state, "guardian", run_id)
    return ident if ident is not None and ident.may_be_alive else None


def describe_event(event: dict[str, object]) -> str | None:
    """One progress line for an event of events.jsonl, or None for events not worth a line."""
    kind = event.get("event")
    node = str(event.get("node", ""))
    reason = str(event.get("reason") or "").splitlines()[0][:100] if event.get("reason") else ""
    if kind == "runner_spawned":
        text = f"running (attempt {event.get('attempts', 1)})"
    elif kind == "validating":
        text = "validating" + (f" (attempt {event['attempts']})" if event.get("attempts") else "")
    elif kind == "validation":
        text = f"{event.get('tool')}: {'passed' if event.get('ok') else 'FAILED'}"
    elif kind == "validation_failed":
        text = "sent back to its agent with the validation output"
    elif kind == "merging":
        text = "in the merge queue"
    elif kind == "merged":
        text = f"merged {str(event.get('merged_sha') or '')[:10]}"
    elif kind in ("merge_failed", "merge_error"):
        text = f"merge failed: {reason}"
    elif kind in ("done", "skipped", "blocked", "failed", "validator"):
        text = str(event.get("state", kind)) + (f": {reason}" if reason else "")
    elif kind == "runner_respawn":
        text = f"runner died; started again (restart {event.get('restart')})"
    elif kind == "guardian_started" and int(str(event.get("start", 1))) > 1:
        return f"{'guardian':<20} started again (start {event.get('start')}); resuming from the checkpoint"
    else:
        return None
    return f"{node:<20} {text}"


@dataclass
class Restarts:
    """How often a follower started the guardian again; kept by a caller that follows the same
    run more than once (the daemon), so the limit holds across its calls."""

    count: int = 0


def follow(state: StateDir, run_id: str, gcfg: GuardianConfig, out: TextIO, timeout: float | None = None,
           heartbeat: bool = True, stop: threading.Event | None = None, restarts: Restarts | None = None) -> int:
    """Follow the run until it ends, restarting a dead guardian (at most MAX_GUARDIAN_RESTARTS
    times, counted in `restarts`); `stop` (the daemon's) ends the following early, with 0, and
    leaves the run as it is."""
    restarts = restarts if restarts is not None else Restarts()
    # the guardian is never quarantined: it is what resolves everything else; the launcher gives
    # up after MAX_GUARDIAN_RESTARTS instead
    watch = Watch(state, Supervisor(state, policy_from_env(quarantine_deaths=1_000_000)))
    tmux = Tmux(gcfg.tmux_socket)
    start = time.monotonic()
    tail = cp_store.EventTail(cp_store.run_dir(state, run_id) / "events.jsonl")
    tail.new_events()  # what happened before this launcher started is in `attractor status`
    known: Checkpoint | None = None
    known_file: tuple[int, int, int] | None = None

    def read() -> Checkpoint:
        """The checkpoint; while it is corrupt (moved aside, the guardian rewrites it on its
        next change) or missing after that, the last good version: the follower goes on. It is
        parsed again only when the file changed (every write replaces it: a new inode)."""
        nonlocal known, known_file
        try:
            st = cp_store.checkpoint_path(state, run_id).stat()
            file = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            file = None
        if known is not None and file is not None and file == known_file:
            return known
        try:
            known = cp_store.read_checkpoint(state, run_id)
            known_file = file
        except CorruptStateError as exc:
            if known is None:
                raise
            print(f"[{time.monotonic() - start:7.1f}s] warning: {exc}; following on", file=out, flush=True)
        except NotFoundError:
            if known is None:
                raise
        return known

    def show() -> None:
        for event in tail.new_events():
            line = describe_event(event)
            if line:
                print(f"[{time.monotonic() - start:7.1f}s] {line}", file=out, flush=True)

    deaths = procs.DeathWatch()
    run_dir = cp_store.run_dir(state, run_id)
    unwatch = wakeup.watch_directory(run_dir, deaths, modified=True) if run_dir.is_dir() else None
    events = unwatch is not None
    try:
        last_beat = 0.0
        panes: dict[str, PaneInfo] = {}
        panes_at = 0.0
        patience = DiskPatience(f"launcher-{run_id}")
        while True:
            cp = read()
            show()
            if cp.status != "running":
                break
            if stop is not None and stop.is_set():
                return 0
            now = time.monotonic()
            if heartbeat and now - last_beat > HEARTBEAT_INTERVAL:
                try:
                    identities.update_liveness(state, "launcher", run_id, pid=os.getpid())
                    patience.ok()
                except NoSpaceError as exc:  # the follower keeps following; the run goes on
                    time.sleep(patience.hit(exc))
                last_beat = now
            ident = identities.find(state, "guardian", run_id)
            settled = False
            if ident is not None and ident.status in SUPERVISED:
                watched = ident.status is IdentityStatus.ACTIVE and deaths.watch("guardian", ident.pid, ident.pid_start)
                quiet = PANES_QUIET_INTERVAL if watched else PANES_INTERVAL
                if not ident.process_alive or ident.pane_id not in panes or now - panes_at >= quiet:
                    panes, panes_at = {p.pane_id: p for p in tmux.list_panes()}, now
                verdict = watch.check(ident, panes)
                settled = watched and events and verdict.report.health is Health.ALIVE
                if verdict.report.health is Health.DEAD:
                    cp = read()
                    if cp.status != "running":
                        break
                    print(f"[{time.monotonic() - start:7.1f}s] guardian is gone ({verdict.report.reason})",
                          file=out, flush=True)
                    ident = identities.find(state, "guardian", run_id)
            if ident is not None and ident.status in (IdentityStatus.CRASHED, IdentityStatus.RESPAWNING) \
                    and watch.may_respawn(ident.agent_id):
                if restarts.count >= MAX_GUARDIAN_RESTARTS:
                    print(f"error: guardian died {restarts.count} times; giving up (resume later with: "
                          f"attractor run --resume {run_id})", file=sys.stderr)
                    return 1
                # another follower (a second `--attach`, the daemon) may be at the same point: the
                # launch lock makes one of them start it, and the other find it started
                with locks.file_lock(state.root / "launch", timeout=LAUNCH_LOCK_TIMEOUT):
                    again = identities.find(state, "guardian", run_id)
                    if again is None or again.epoch != ident.epoch or again.status not in (
                            IdentityStatus.CRASHED, IdentityStatus.RESPAWNING) or again.process_alive:
                        continue  # someone else started it meanwhile
                    restarts.count += 1
                    print(f"[{time.monotonic() - start:7.1f}s] starting the guardian again (restart "
                          f"{restarts.count})", file=out, flush=True)
                    spawn_guardian(gcfg, Path(cp.target_dir))
                watch.respawned(ident.agent_id)
                continue
            if timeout is not None and now - start > timeout:
                print(f"error: run {run_id} still running after {timeout:g}s; it goes on (attractor stop {run_id})",
                      file=sys.stderr)
                return 1
            interval = IDLE_FOLLOW_INTERVAL if settled else FOLLOW_INTERVAL
            if heartbeat:
                interval = min(interval, max(0.0, last_beat + HEARTBEAT_INTERVAL - time.monotonic()))
            deaths.wait(interval)
        show()
        print_summary(state, cp, out, time.monotonic() - start)
        return 0 if cp.status == RunStatus.SUCCEEDED else 1
    finally:
        wakeup.unwatch(unwatch)
        deaths.close()

def print_summary(state: StateDir, cp: Checkpoint, out: TextIO, wall: float | None = None) -> None:
    merged = [n for n in cp.nodes.values() if n.merged_sha]
    end = clock.parse_iso(cp.finished_at or cp.updated_at)
    elapsed = wall if wall is not None else end - clock.parse_iso(cp.started_at)
    print(f"\nrun {cp.run_id} {cp.status} in {elapsed:.1f}s"
          + (f": {cp.reason}" if cp.reason and cp.status != "succeeded" else ""), file=out)
    print(f"  {'node':<20} {'kind':<12} {'state':<10} {'attempts':>8}  merged", file=out)
    for node in cp.nodes.values():
        print(f"  {node.name:<20} {node.kind:<12} {node.state.value:<10} {node.attempts:>8}  "
              f"{(node.merged_sha or '')[:10]}", file=out)
    print(f"merges: {len(merged)} onto {cp.target_branch}", file=out)
    print(f"state:  {state.root}", file=out)
    print(f"events: {cp_store.run_dir(state, cp.run_id) / 'events.jsonl'}", file=out)
    print(f"logs:   {state.logs}", file=out)
