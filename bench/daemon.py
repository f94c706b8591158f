"""The user's daemon against the files: `status` over the socket against the same report read
from the files, and a killed guardian resumed by the daemon against one resumed by a foreground
launcher; printed as one JSON document (progress on stderr).

Isolation. Everything runs under a temporary HOME with XDG_RUNTIME_DIR, XDG_CONFIG_HOME and
XDG_STATE_HOME inside it (so the daemon's socket, lock, projects and logs are the bench's own,
never the user's), a private tmux socket `bench-daemon-<random>` handed to every process through
ATTRACTOR_TMUX_SOCKET, a fixed git author and committer, and ATTRACTOR_POLICY from --policy. The
bench's own process takes the same environment, so its in-process calls reach the same daemon.
At the end, also after a failure: the launcher's run is stopped (`attractor stop`), then
`attractor daemon stop --runs`; a daemon still holding the lock, and any process recorded in the
bench's state directories, is SIGKILLed (pid and start time checked), the tmux server of the
private socket is killed, any process left whose environment names that socket is SIGKILLed
(and listed under `cleanup.leftovers`, which should be empty), and the temp directory removed.

Setup. A finished run: a pipeline of two scripted nodes, run to the end in the foreground before
the daemon starts. Then `attractor daemon start`, and two live runs of `--live-nodes` scripted
nodes whose script is `sleep 900` (guardian, runners and orchestrators alive and idle):

    daemon    `attractor run P --detach` (handed to the daemon, which supervises its guardian)
    launcher  `attractor run P` in the foreground (the launcher follows it and supervises its
              guardian; the daemon does not know its project, so leaves it alone)

Part 1, `status`. For the finished run and for the daemon's live run (`live_run`), `--runs` rounds (after
`--warmup` untimed ones) each time, in an order rotated every round:

    socket               `rpc.call(socket, "run.status", {state_dir, run_id})` in this
                         process: one connection and round trip to the warm daemon, which
                         runs `run_report`
    files                `layers.status.run_report(StateDir(...), run_id)` in this process:
                         the same report from the files (both ask tmux for the panes once)
    process_daemon       `python -m attractor status --json --state-dir DIR` as a process while
                         the daemon runs: the command asks the daemon
    process_files        the same with `--no-daemon`: the command reads the files itself
    process_socket_only  a `python -c` process that imports only `attractor.control.rpc` and asks
                         the daemon for the same report: the least a client process needs

plus, once a round, the daemon's `status` method over the socket, a request for a method the
daemon does not have (`rpc_floor`: connect, one line each way, no method runs) and a `python -c
pass` process (the floor under every process figure). Reported: median, p95 (nearest rank), min
and max in ms; the ratios of the medians socket/files, process_daemon/process_files and
process_socket_only/process_files; `process_saved_ms` (files minus daemon, medians); whether the
socket, the files and the command gave the same report (heartbeat ages aside); and, from one run
of each command with sys.modules written at exit, how many modules each imported and which of
the heavier ones.

Part 2, guardian killed -> run resumed. `--kills` rounds; in each, the guardian of each live run
(the daemon's and the launcher's, alternating which goes first) is SIGKILLed, its pid taken from
the identity record `identities.find(state, "guardian", run_id)` and checked alive first. A kill
waits until the guardian it kills is `--grace` seconds old (past the start-up grace of the
supervision policy, 5 s, inside which a death is judged more slowly) and until the previous kill's
guardian is back. Figures, per kill, from the kill:

    detect_ms     the `crashed` transition in the guardian's identity history (the supervisor
                  saw the death)
    pid_seen_ms   the bench's 10 ms poll first sees a new pid recorded and alive (the guardian
                  usually records its pid with its first heartbeat: then it equals active_ms)
    active_ms     the same with status `active` (the new guardian's first heartbeat): the headline
    resumed_ms    the new `guardian_started` event (start n+1), written before its loop begins
    backoff_ms    the delay the supervision policy chose before the respawn

Default --policy is `base_delay=0`: without it, the second death of the same guardian within a
minute waits 1 s (+-20 %), the third 2 s and so on, and the figures would measure the backoff,
not the supervision; `--policy ''` keeps the library's defaults (see backoff_ms and
active_minus_backoff_ms). One follower restarts a guardian at most MAX_GUARDIAN_RESTARTS (10)
times before it gives up, so --kills is at most 10. The machine is shared: the load average is
reported at the start and the end.

Usage: .venv/bin/python bench/daemon.py [--runs 40] [--kills 6] [--live-nodes 2] [--policy base_delay=0]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _common import load, log
from _common import stats_ms as _stats_ms
from _common import wait_for as _wait_for

stats_ms = functools.partial(_stats_ms, digits=2)

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

POLL_S = 0.01
wait_for = functools.partial(_wait_for, interval=POLL_S)  # respawns are timed in ms: look often
RESPAWN_TIMEOUT_S = 30.0
MAX_KILLS = 10  # layers.launcher.MAX_GUARDIAN_RESTARTS: a follower gives up past it
DROP_ENV = ("TMUX", "TMUX_PANE", "ATTRACTOR_STATE_DIR", "ATTRACTOR_TMUX_SOCKET", "ATTRACTOR_POLICY",
            "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "PYTHONDONTWRITEBYTECODE")

FINISHED_PIPELINE = """digraph bench_finished {
  start [shape=Mdiamond]
  a [shape=box, prompt="a", script="write a.txt a
commit add a
report a done"]
  b [shape=box, prompt="b", script="write b.txt b
commit add b
report b done"]
  exit [shape=Msquare]
  start -> a -> exit
  start -> b -> exit
}
"""


def live_pipeline(name: str, nodes: int) -> str:
    lines = [f"digraph {name} {{\n  graph [max_agents={nodes}]\n  start [shape=Mdiamond]\n  exit [shape=Msquare]\n"]
    for i in range(1, nodes + 1):
        lines.append(f'  n{i} [shape=box, prompt="wait", script="sleep 900"]\n  start -> n{i} -> exit\n')
    lines.append("}\n")
    return "".join(lines)


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if not a.get("n") or not b.get("n") or not b["median"]:
        return None
    return round(float(a["median"]) / float(b["median"]), 3)


# --------------------------------------------------------------------------- the environment


def bench_env(work: Path, tmux_socket: str, policy: str) -> dict[str, str]:
    home = work / "home"
    dirs = {"XDG_RUNTIME_DIR": home / "run", "XDG_CONFIG_HOME": home / ".config",
            "XDG_STATE_HOME": home / ".local" / "state"}
    for path in (home, *dirs.values()):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env.update({k: str(v) for k, v in dirs.items()})
    env.update({"HOME": str(home), "SHELL": "/bin/sh", "ATTRACTOR_TMUX_SOCKET": tmux_socket,
                "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
                "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
                "GIT_CONFIG_NOSYSTEM": "1", "PYTHONPYCACHEPREFIX": str(work / "pycache")})
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if policy:
        env["ATTRACTOR_POLICY"] = policy
    return env


def take_env(env: dict[str, str]) -> None:
    """Give this process the bench's environment (its in-process calls find the bench's daemon)."""
    for key in DROP_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)


def attractor(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "attractor", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=env["HOME"])


def checked(result: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if result.returncode != 0:
        raise RuntimeError(f"{what} exited {result.returncode}: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result


def make_target(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.invalid"), ("commit.gpgsign", "false")):
        subprocess.run(["git", "-C", str(path), "config", key, value], check=True)
    (path / "README.md").write_text("bench target\n")
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "--no-gpg-sign", "-m", "start"], check=True)
    return path


# --------------------------------------------------------------------------- the runs


@dataclass
class Run:
    mode: str  # finished | daemon | launcher
    state: Path
    target: Path
    run_id: str = ""


def latest_run_id(state: Path) -> str | None:
    from attractor.store import checkpoint as cp_store
    from attractor.store.statedir import StateDir

    return cp_store.latest_run(StateDir(state)) if (state / "runs").is_dir() else None


def guardian(run: Run) -> Any:
    """The run's guardian identity, or None."""
    from attractor.store import identities
    from attractor.store.statedir import StateDir

    return identities.find(StateDir(run.state), "guardian", run.run_id)


def live_guardian(run: Run) -> Any:
    ident = guardian(run)
    return ident if ident is not None and ident.status.value == "active" and ident.process_alive else None


def start_live_runs(work: Path, env: dict[str, str], nodes: int, runs: list[Run],
                    launchers: list[subprocess.Popen[bytes]]) -> tuple[Run, Run]:
    """The two live runs; each run and the launcher go into `runs` and `launchers` as soon as
    they exist, so the cleanup finds them whatever fails after."""
    d, lr = (Run(mode, work / f"state-{mode}", make_target(work / f"target-{mode}")) for mode in ("daemon", "launcher"))
    runs += [d, lr]
    for run in (d, lr):
        (work / f"{run.mode}.dot").write_text(live_pipeline(f"bench_{run.mode}", nodes))
    out = checked(attractor(env, "run", str(work / "daemon.dot"), "--target-dir", str(d.target), "--agent",
                            "scripted", "--detach", "--state-dir", str(d.state)), "attractor run --detach")
    if "the daemon supervises it" not in out.stdout:
        raise RuntimeError(f"the detached run was not handed to the daemon: {out.stdout.strip()}")
    d.run_id = wait_for(lambda: latest_run_id(d.state), 30, "the detached run's checkpoint")
    argv = [sys.executable, "-m", "attractor", "run", str(work / "launcher.dot"), "--target-dir", str(lr.target),
            "--agent", "scripted", "--state-dir", str(lr.state), "--timeout", "1800"]
    with open(work / "launcher.out", "w") as sink:
        launchers.append(subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=env["HOME"],
                                          start_new_session=True))
    lr.run_id = wait_for(lambda: latest_run_id(lr.state), 30, "the foreground run's checkpoint")
    for run in (d, lr):
        wait_for(partial(live_guardian, run), 60, f"the {run.mode} run's guardian")
        wait_for(partial(every_agent_up, run, nodes), 60, f"every agent of the {run.mode} run")
    return d, lr


def every_agent_up(run: Run, nodes: int) -> bool:
    from attractor.store import identities
    from attractor.store.statedir import StateDir

    up = [i for i in identities.list_identities(StateDir(run.state))
          if i.session_id == run.run_id and i.role in ("runner", "orchestrator")
          and i.status.value == "active" and i.process_alive]
    return len(up) >= 2 * nodes


def daemon_supervises(run: Run) -> bool:
    from attractor.control import client, rpc

    status = rpc.call(client.socket_path(), "status", timeout=5.0)
    return any(r["run_id"] == run.run_id and r["supervision"] == "supervising" for r in status["runs"])


# --------------------------------------------------------------------------- part 1: status


SOCKET_ONLY_CLIENT = (
    "import json, sys\n"
    "from pathlib import Path\n"
    "from attractor.control import rpc\n"
    "report = rpc.call(Path(sys.argv[1]), 'run.status', {'state_dir': sys.argv[2], 'run_id': sys.argv[3]})\n"
    "sys.stdout.write(json.dumps(report, indent=2) + '\\n')\n"
)

WATCHED_MODULES = ("attractor.control.rpc", "attractor.control.daemon", "attractor.control.methods",
                   "attractor.control.watchers", "attractor.layers.status", "attractor.engines.supervision",
                   "attractor.tmux", "libtmux", "yaml")

MODULES_AT_EXIT = (
    "import atexit, json, runpy, sys\n"
    "dest = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(dest, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "runpy.run_module('attractor', run_name='__main__', alter_sys=True)\n"
)


def imported(env: dict[str, str], args: list[str], dest: Path) -> dict[str, Any]:
    checked(subprocess.run([sys.executable, "-c", MODULES_AT_EXIT, str(dest), *args], env=env, capture_output=True,
                           text=True, timeout=60, cwd=env["HOME"]), f"attractor {' '.join(args)}")
    modules = set(json.loads(dest.read_text()))
    return {"modules": len(modules), "attractor_modules": sum(1 for m in modules if m.startswith("attractor")),
            "of_these": [m for m in WATCHED_MODULES if m in modules]}


def floor(sock: Path) -> None:
    """One request the daemon answers without running anything: an unknown method."""
    from attractor.control import rpc

    try:
        rpc.call(sock, "bench.none")
    except rpc.RpcError as exc:
        if exc.code != rpc.METHOD_NOT_FOUND:
            raise
    else:
        raise RuntimeError("the daemon answered bench.none")


def comparable(report: Any) -> Any:
    data = json.loads(json.dumps(report, default=str))
    for agent in data.get("agents", []):
        agent.pop("heartbeat_age", None)
    return data


def time_status(env: dict[str, str], targets: list[Run], rounds: int, warmup: int, work: Path) -> dict[str, Any]:
    from attractor.control import client, rpc
    from attractor.layers.status import run_report
    from attractor.store.statedir import StateDir

    sock = client.socket_path()
    py = sys.executable
    ops: list[tuple[str, Callable[[], Any]]] = []

    def process(argv: list[str]) -> Callable[[], Any]:
        def go() -> Any:
            done = subprocess.run(argv, env=env, capture_output=True, cwd=env["HOME"])
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[1:])} exited {done.returncode}: {done.stderr.decode().strip()}")
            return done.stdout
        return go

    for run in targets:
        params = {"state_dir": str(run.state), "run_id": run.run_id}
        status_argv = [py, "-m", "attractor", "status", "--json", "--state-dir", str(run.state)]
        ops += [
            (f"{run.mode}.socket", partial(rpc.call, sock, "run.status", params)),
            (f"{run.mode}.files", partial(run_report, StateDir(run.state), run.run_id)),
            (f"{run.mode}.process_daemon", process(status_argv)),
            (f"{run.mode}.process_files", process([*status_argv, "--no-daemon"])),
            (f"{run.mode}.process_socket_only",
             process([py, "-c", SOCKET_ONLY_CLIENT, str(sock), str(run.state), run.run_id])),
        ]
    ops += [("daemon_status.socket", lambda: rpc.call(sock, "status")),
            ("rpc_floor.socket", lambda: floor(sock)),
            ("python -c pass", process([py, "-c", "pass"]))]
    times: dict[str, list[float]] = {name: [] for name, _ in ops}
    for index in range(warmup + rounds):
        shift = index % len(ops)
        for name, op in ops[shift:] + ops[:shift]:
            started = time.perf_counter()
            op()
            elapsed = 1000 * (time.perf_counter() - started)
            if index >= warmup:
                times[name].append(elapsed)
        if index >= warmup and (index - warmup + 1) % 5 == 0:
            log(f"  status round {index - warmup + 1}/{rounds} (load {load()})")
    result: dict[str, Any] = {"rounds": rounds, "warmup_rounds": warmup}
    for run in targets:
        figures = {kind: stats_ms(times[f"{run.mode}.{kind}"])
                   for kind in ("socket", "files", "process_daemon", "process_files", "process_socket_only")}
        served = rpc.call(sock, "run.status", {"state_dir": str(run.state), "run_id": run.run_id})
        local = run_report(StateDir(run.state), run.run_id)
        cli_served = json.loads(process([py, "-m", "attractor", "status", "--json", "--state-dir",
                                         str(run.state)])())
        same = comparable(served) == comparable(local) == comparable(cli_served)
        result["finished_run" if run.mode == "finished" else "live_run"] = {
            "run_id": run.run_id, "status": local["run"]["status"], "nodes": len(local["nodes"]),
            "agents": len(local["agents"]), "report_bytes": len(json.dumps(served)), **{
                f"{kind}_ms": value for kind, value in figures.items()},
            "socket_over_files": ratio(figures["socket"], figures["files"]),
            "socket_minus_files_ms": round(figures["socket"]["median"] - figures["files"]["median"], 2),
            "process_daemon_over_files": ratio(figures["process_daemon"], figures["process_files"]),
            "process_socket_only_over_files": ratio(figures["process_socket_only"], figures["process_files"]),
            "process_saved_ms": round(figures["process_files"]["median"] - figures["process_daemon"]["median"], 1),
            "same_answer": same,
        }
    result["daemon_status_socket_ms"] = stats_ms(times["daemon_status.socket"])
    result["rpc_floor_ms"] = stats_ms(times["rpc_floor.socket"])
    result["python_pass_ms"] = stats_ms(times["python -c pass"])
    state = str(targets[0].state)
    result["imports"] = {
        "process_daemon": imported(env, ["status", "--json", "--state-dir", state], work / "modules-daemon.json"),
        "process_files": imported(env, ["status", "--json", "--state-dir", state, "--no-daemon"],
                                  work / "modules-files.json"),
    }
    return result


# --------------------------------------------------------------------------- part 2: kills


@dataclass
class Kill:
    mode: str
    round: int
    old_pid: int
    new_pid: int | None = None
    detect_ms: float | None = None
    pid_seen_ms: float | None = None
    active_ms: float | None = None
    resumed_ms: float | None = None
    backoff_ms: float | None = None
    note: str = ""


def guardian_starts(run: Run) -> list[dict[str, Any]]:
    from attractor.store import checkpoint as cp_store
    from attractor.store.statedir import StateDir

    return [e for e in cp_store.read_events(StateDir(run.state), run.run_id) if e.get("event") == "guardian_started"]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kill_guardian(run: Run, index: int, grace: float) -> Kill:
    from attractor import clock

    before = wait_for(lambda: live_guardian(run), RESPAWN_TIMEOUT_S, f"a live {run.mode} guardian")
    time.sleep(max(0.0, clock.parse_iso(before.created_at) + grace - time.time()))
    before = live_guardian(run)
    if before is None or before.pid is None:
        raise RuntimeError(f"the {run.mode} run's guardian died before its kill")
    starts = len(guardian_starts(run))
    killed_at = time.time()
    os.kill(before.pid, signal.SIGKILL)
    kill = Kill(run.mode, index, before.pid)

    def ms(stamp: float) -> float:
        return round(1000 * (stamp - killed_at), 1)

    def back() -> bool:
        now = guardian(run)
        if now is None or now.pid in (None, before.pid) or not now.process_alive:
            return False
        if kill.pid_seen_ms is None:
            kill.pid_seen_ms, kill.new_pid = ms(time.time()), now.pid
        if now.status.value != "active":
            return False
        kill.active_ms = ms(time.time())
        return True

    try:
        wait_for(back, RESPAWN_TIMEOUT_S, f"the {run.mode} run's guardian back")
        started = wait_for(lambda: guardian_starts(run)[starts:], 10, "the new guardian_started event")
        kill.resumed_ms = ms(clock.parse_iso(started[0]["at"]))
    except TimeoutError as exc:
        kill.note = str(exc)
    ident = guardian(run)
    history = list(ident.history) if ident is not None else []
    crashed = [clock.parse_iso(h["at"]) for h in history
               if h.get("to") == "crashed" and clock.parse_iso(h["at"]) >= killed_at]
    kill.detect_ms = ms(crashed[0]) if crashed else None
    sup = read_json(run.state / "supervision" / f"guardian-{run.run_id}.json")
    deaths = sup.get("deaths") or []
    if deaths and clock.parse_iso(deaths[-1]["at"]) >= killed_at:
        planned = sup.get("next_restart_at")
        respawned = [clock.parse_iso(h["at"]) for h in history
                     if h.get("to") == "spawning" and clock.parse_iso(h["at"]) >= killed_at]
        if planned:
            kill.backoff_ms = round(1000 * max(0.0, clock.parse_iso(planned) - clock.parse_iso(deaths[-1]["at"])), 1)
        elif respawned:
            kill.backoff_ms = 0.0
    return kill


def time_kills(runs: list[Run], kills: int, grace: float) -> dict[str, Any]:
    done: list[Kill] = []
    for index in range(kills):
        for run in (runs if index % 2 == 0 else runs[::-1]):
            k = kill_guardian(run, index, grace)
            done.append(k)
            log(f"  kill {index + 1}/{kills} {run.mode:<8}: detect {k.detect_ms} ms, new pid seen {k.pid_seen_ms} "
                f"ms, active {k.active_ms} ms, resumed {k.resumed_ms} ms, backoff {k.backoff_ms} ms"
                + (f" [{k.note}]" if k.note else ""))
            if k.note:
                raise RuntimeError(f"{run.mode} guardian not back: {k.note}")
    result: dict[str, Any] = {}
    for run in runs:
        mine = [k for k in done if k.mode == run.mode]
        figures: dict[str, Any] = {"run_id": run.run_id, "kills": len(mine)}
        for key in ("detect_ms", "pid_seen_ms", "active_ms", "resumed_ms", "backoff_ms"):
            figures[key] = stats_ms([getattr(k, key) for k in mine if getattr(k, key) is not None], 1)
        figures["active_minus_backoff_ms"] = stats_ms([k.active_ms - k.backoff_ms for k in mine
                                                       if k.active_ms is not None and k.backoff_ms is not None], 1)
        result[run.mode] = figures
    d, lr = result.get("daemon", {}), result.get("launcher", {})
    if d and lr:
        result["daemon_over_launcher_active"] = ratio(d["active_ms"], lr["active_ms"])
    result["kills"] = [asdict(k) for k in done]
    return result


# --------------------------------------------------------------------------- cleanup


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Live processes (not this one) whose environment holds `marker`: the bench's children."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat[stat.rfind(")") + 2] in "ZX":
                    continue
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace").strip()))
    return found


def cleanup(env: dict[str, str], work: Path, tmux_socket: str, runs: list[Run],
            launchers: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    from attractor import procs
    from attractor.control import client
    from attractor.store import identities
    from attractor.store.statedir import StateDir

    report: dict[str, Any] = {}
    stopped_any = False
    for run in (r for r in runs if r.mode == "launcher" and r.run_id):
        with contextlib.suppress(Exception):
            stopped = attractor(env, "stop", run.run_id, "--state-dir", str(run.state), timeout=60)
            report["launcher_run_stop_exit"] = stopped.returncode
            stopped_any = stopped.returncode == 0
    for launcher in launchers:  # it ends by itself once its run is stopped
        try:
            launcher.wait(timeout=30 if stopped_any else 0.1)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)
        report["launcher_exit"] = launcher.returncode
    try:
        stopped = attractor(env, "daemon", "stop", "--runs", timeout=90)
        report["daemon_stop_exit"] = stopped.returncode
        if stopped.returncode != 0:
            report["daemon_stop_error"] = stopped.stderr.strip()[-500:]
    except Exception as exc:
        report["daemon_stop_error"] = str(exc)
    holder = client.lock_holder()
    if holder:
        report["daemon_killed"] = procs.signal_if_same(holder.get("pid"), holder.get("pid_start"), signal.SIGKILL)
    killed = []
    for run in runs:
        if not (run.state / "identities").is_dir():
            continue
        for ident in identities.list_identities(StateDir(run.state)):
            if ident.process_alive and procs.signal_if_same(ident.pid, ident.pid_start, signal.SIGKILL):
                killed.append(ident.agent_id)
    report["recorded_killed"] = killed
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], capture_output=True)
    socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
    (socket_dir / tmux_socket).unlink(missing_ok=True)
    leftovers = []
    for _ in range(3):
        found = processes_with(f"ATTRACTOR_TMUX_SOCKET={tmux_socket}")
        if not found:
            break
        for pid, cmd in found:
            leftovers.append(cmd[:200])
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    report["leftovers"] = leftovers
    shutil.rmtree(work, ignore_errors=True)
    report["temp_removed"] = not work.exists()
    return report


# --------------------------------------------------------------------------- main


def interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=40, help="timed status rounds (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed status rounds first (default 3)")
    parser.add_argument("--kills", type=int, default=6,
                        help=f"guardian kills per supervisor, at most {MAX_KILLS} (default 6)")
    parser.add_argument("--live-nodes", type=int, default=2, help="sleeping nodes per live run (default 2)")
    parser.add_argument("--grace", type=float, default=5.5,
                        help="age a guardian reaches before it is killed, in seconds (default 5.5)")
    parser.add_argument("--policy", default="base_delay=0",
                        help="ATTRACTOR_POLICY for everything the bench starts ('' keeps the defaults; "
                             "default base_delay=0: no backoff between kills)")
    parser.add_argument("--skip-status", action="store_true", help="leave out part 1")
    parser.add_argument("--skip-kills", action="store_true", help="leave out part 2")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or not 0 <= args.kills <= MAX_KILLS or args.live_nodes < 1:
        parser.error(f"--runs and --live-nodes must be at least 1, --kills between 0 and {MAX_KILLS}")
    if shutil.which("tmux") is None:
        print("error: tmux is not installed; install it with: apt-get install tmux", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # clean up on these too
        signal.signal(sig, interrupted)
    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    tmux_socket = f"bench-daemon-{secrets.token_hex(4)}"
    env = bench_env(work, tmux_socket, args.policy)
    take_env(env)
    started = time.monotonic()
    result: dict[str, Any] = {
        "schema": 1, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "params": {"runs": args.runs, "warmup": args.warmup, "kills": args.kills, "live_nodes": args.live_nodes,
                   "grace_s": args.grace, "policy": args.policy or "(library defaults)"},
        "load_before": load(),
    }
    runs: list[Run] = []
    launchers: list[subprocess.Popen[bytes]] = []
    code = 0
    try:
        from attractor.control import client

        log("a finished run (foreground, no daemon yet)")
        finished = Run("finished", work / "state-finished", make_target(work / "target-finished"))
        runs.append(finished)
        (work / "finished.dot").write_text(FINISHED_PIPELINE)
        checked(attractor(env, "run", str(work / "finished.dot"), "--target-dir", str(finished.target), "--agent",
                          "scripted", "--state-dir", str(finished.state), "--timeout", "120", timeout=180),
                "attractor run (finished)")
        finished.run_id = latest_run_id(finished.state) or ""
        log("starting the daemon")
        checked(attractor(env, "daemon", "start"), "attractor daemon start")
        holder = client.lock_holder() or {}
        result["daemon_pid"] = holder.get("pid")
        log("starting two live runs (detached to the daemon, and followed by a foreground launcher)")
        live_d, live_l = start_live_runs(work, env, args.live_nodes, runs, launchers)
        wait_for(lambda: daemon_supervises(live_d), 30, "the daemon to supervise the detached run", interval=0.1)
        if not args.skip_status:
            log(f"part 1: status, {args.runs} rounds")
            result["status"] = time_status(env, [finished, live_d], args.runs, args.warmup, work)
        if not args.skip_kills and args.kills:
            log(f"part 2: guardian kills, {args.kills} per supervisor")
            result["guardian_kill"] = time_kills([live_d, live_l], args.kills, args.grace)
            result["guardian_kill"]["daemon_still_supervising"] = daemon_supervises(live_d)
            result["guardian_kill"]["launcher_still_following"] = launchers[0].poll() is None
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"error: {result['error']}")
        out = work / "launcher.out"
        if out.exists():
            log("launcher output (tail):\n" + out.read_text(errors="replace")[-2000:])
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # let nothing cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        log("cleaning up")
        result["cleanup"] = cleanup(env, work, tmux_socket, runs, launchers)
    result["load_after"] = load()
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
