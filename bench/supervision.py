"""Supervision latency through the real chain: kill -> detected, kill -> new process running,
guardian kill -> run resumed; printed as JSON (progress on stderr).

Design. Each run is a separate `attractor run` (launcher, guardian, runners and scripted
orchestrators in tmux on a private socket `bench-<random>`, its own state directory and target
repository) of `--nodes` parallel codergen nodes whose script is `sleep 300`, so every layer is
alive and idle. Once every identity is past its start-up grace (5 s), the run takes kills one at
a time, each SIGKILL sent to the pid recorded in the identity, and the next kill only after the
previous agent is back (new pid alive, new epoch active):

    1. the runner of n1            (seen by the guardian, respawned by it)
    2. the orchestrator of n2      (seen by its runner, respawned by it)
    3. the runner or the orchestrator of n3, alternating between runs
    4. the guardian                (seen by the launcher, respawned by it; exempt from escalation)

Each of these agents is killed once, so its respawn is a first respawn (immediate by the policy,
no backoff); these four kills give the headline figures. Three different non-exempt agents per
state directory stay under the escalation threshold (more than 3 different agents dying within
60 s pauses respawns), so each run is cut after its kills with `attractor stop` and the next run
gets a fresh state directory. Two extra kills are reported apart:

    5. (unless --no-second-kill) the agent of kill 1 (even runs: runner-n1) or kill 2 (odd runs:
       orchestrator-n2) again, once its new incarnation is past the grace period: a second death
       waits for the backoff (1 s +-20 %), shown as `second_kill` with the delay the policy chose
    6. (unless --no-escalation-probe; last run only) the orchestrator of n4, a fourth different
       agent within 60 s: detected, but not respawned while the escalation it starts is active

Figures, per kill (wall-clock stamps; the records' ISO stamps have microseconds):
    detect_ms       kill -> the `crashed` transition in the agent's identity history (written by
                    the supervisor when it sees the death; for runners also `runner_died_ms`,
                    the guardian's event)
    spawning_ms     kill -> the new epoch's `spawning` record (identity created, pane not yet)
    running_ms      kill -> the new process's start time (from /proc/<pid>/stat, 10 ms ticks):
                    the new pid exists and runs
    active_ms       kill -> the new epoch's first heartbeat (`active`): the new process has
                    started Python, imported, and registered itself
    resumed_ms      guardian only: kill -> the `guardian_started` event with start >= 2, written
                    by the new guardian before it rebuilds its view and enters its loop
Targets (issue 6): detect <= 1000 ms, running <= 1500 ms, guardian resumed <= 5000 ms, judged on
the medians and listed with the p95s. The machine is shared: the load average is reported.

Usage: /tmp/v/bin/python bench/supervision.py [--runs 10] [--nodes 4] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import load, log, stats_ms, ts

REPO = Path(__file__).resolve().parent.parent
GRACE_S = 5.0  # supervision.PolicyConfig.startup_grace: a kill inside it is seen only later
POLL_S = 0.01
RECOVER_TIMEOUT_S = 20.0
TARGETS_MS = {"detect_ms": 1000, "running_ms": 1500, "resumed_ms": 5000}


def child_env() -> dict[str, str]:
    drop = ("TMUX", "TMUX_PANE", "ATTRACTOR_STATE_DIR", "ATTRACTOR_TMUX_SOCKET", "ATTRACTOR_POLICY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------- processes


def boot_offset() -> float:
    """Wall-clock time of boot, for /proc start times (ticks since boot)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start(pid: int) -> float | None:
    """Wall-clock start time of `pid` (10 ms resolution), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return boot_offset() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


# --------------------------------------------------------------------------- setup and cleanup


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def make_target(path: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.invalid"),
                       ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    (path / "README.md").write_text("bench target\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "start")


def node_name(i: int) -> str:
    return f"n{i}"


def pipeline_text(nodes: int) -> str:
    lines = [f"digraph supervision {{\n  graph [max_agents={nodes}]\n"
             "  start [shape=Mdiamond]\n  exit [shape=Msquare]\n"]
    for i in range(1, nodes + 1):
        name = node_name(i)
        lines.append(f'  {name} [shape=box, prompt="wait", script="sleep 300"]\n  start -> {name} -> exit\n')
    lines.append("}\n")
    return "".join(lines)


def recorded_pids(state: Path, marker: Path) -> list[int]:
    """Live pids the run recorded that are still ours (their command line names `marker`)."""
    pids = []
    for path in (state / "identities").glob("*.json") if (state / "identities").is_dir() else []:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            pid = json.loads(path.read_text()).get("pid")
            if isinstance(pid, int) and pid > 1 and pid != os.getpid() and str(marker) in cmdline(pid):
                pids.append(pid)
    return pids


def cleanup(state: Path, socket_name: str, marker: Path, launcher: subprocess.Popen[str] | None) -> None:
    """Kill this run's launcher (a process we started), its tmux server (our private socket)
    and any process it recorded."""
    if launcher is not None and launcher.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            launcher.wait(timeout=5)
    subprocess.run(["tmux", "-L", socket_name, "kill-server"], capture_output=True)
    socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
    (socket_dir / socket_name).unlink(missing_ok=True)
    for pid in recorded_pids(state, marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- reading the state


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def identity(state: Path, agent: str) -> dict[str, Any] | None:
    return read_json(state / "identities" / f"{agent}.json")


def run_id(state: Path) -> str | None:
    runs = state / "runs"
    found = sorted(p.name for p in runs.iterdir() if (p / "checkpoint.json").exists()) if runs.is_dir() else []
    return found[-1] if found else None


def events(state: Path, rid: str) -> list[dict[str, Any]]:
    path = state / "runs" / rid / "events.jsonl"
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def first_after(history: list[dict[str, Any]], to: str, after: float) -> float | None:
    for entry in history:
        if entry.get("to") == to and ts(entry["at"]) >= after:
            return ts(entry["at"])
    return None


def wait_for(predicate: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise TimeoutError(f"timed out after {seconds:g}s waiting for {what}")


# --------------------------------------------------------------------------- one kill


@dataclass
class Kill:
    run: int
    kind: str  # runner, orchestrator, guardian, escalation_probe
    agent: str
    killed_at: float
    old_pid: int
    new_pid: int | None = None
    detect_ms: float | None = None
    runner_died_ms: float | None = None
    spawning_ms: float | None = None
    running_ms: float | None = None
    pid_seen_ms: float | None = None  # the bench's own 10 ms poll saw the new pid alive
    active_ms: float | None = None
    resumed_ms: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def ms(stamp: float | None, since: float) -> float | None:
    return None if stamp is None else round(1000 * (stamp - since), 1)


def kill_agent(state: Path, rid: str, run: int, kind: str, agent: str, marker: Path,
               expect_respawn: bool = True, probe_s: float = 3.0) -> Kill:
    ident = identity(state, agent)
    if ident is None or not alive(ident.get("pid")):
        raise RuntimeError(f"{agent} has no live pid to kill: {ident and ident.get('status')}")
    pid0, epoch0 = int(ident["pid"]), int(ident["epoch"])
    if str(marker) not in cmdline(pid0):
        raise RuntimeError(f"{agent} pid {pid0} is not one of this bench's processes: {cmdline(pid0)!r}")
    starts0 = sum(1 for e in events(state, rid) if e.get("event") == "guardian_started")
    killed_at = time.time()
    os.kill(pid0, signal.SIGKILL)
    k = Kill(run=run, kind=kind, agent=agent, killed_at=killed_at, old_pid=pid0)

    def back() -> dict[str, Any] | None:
        now = identity(state, agent)
        if now is None or int(now["epoch"]) <= epoch0 or not now.get("pid") or now["pid"] == pid0:
            return None
        if k.pid_seen_ms is None and alive(now["pid"]):
            k.pid_seen_ms = ms(time.time(), killed_at)
            k.new_pid = int(now["pid"])
            started = process_start(k.new_pid)
            k.running_ms = ms(started, killed_at)
        if now["status"] != "active":
            return None
        if kind == "guardian" and sum(1 for e in events(state, rid)
                                      if e.get("event") == "guardian_started") <= starts0:
            return None
        return now

    if expect_respawn:
        try:
            wait_for(back, RECOVER_TIMEOUT_S, f"{agent} back")
        except TimeoutError as exc:
            k.note = str(exc)
    else:
        deadline = time.monotonic() + probe_s
        while time.monotonic() < deadline and back() is None:
            time.sleep(POLL_S)
        k.extra["respawned_within_probe"] = k.new_pid is not None
        k.extra["probe_s"] = probe_s
    final = identity(state, agent) or {}
    history = list(final.get("history", []))
    crashed = first_after(history, "crashed", killed_at)
    k.detect_ms = ms(crashed, killed_at)
    if crashed is not None:
        spawning = first_after(history, "spawning", crashed)
        k.spawning_ms = ms(spawning, killed_at)
        if spawning is not None:
            k.active_ms = ms(first_after(history, "active", spawning), killed_at)
    evs = events(state, rid)
    if kind.startswith("runner"):
        node = agent.split("-", 1)[1]
        died = [ts(e["at"]) for e in evs if e.get("event") == "runner_died" and e.get("node") == node
                and ts(e["at"]) >= killed_at]
        k.runner_died_ms = ms(died[0] if died else None, killed_at)
    if kind == "guardian":
        started = [ts(e["at"]) for e in evs if e.get("event") == "guardian_started" and int(e.get("start", 1)) >= 2
                   and ts(e["at"]) >= killed_at]
        k.resumed_ms = ms(started[0] if started else None, killed_at)
    return k


# --------------------------------------------------------------------------- one run


def run_once(work: Path, index: int, args: argparse.Namespace, probe: bool) -> tuple[list[Kill], dict[str, Any]]:
    target, state = work / f"target-{index}", work / f"state-{index}"
    make_target(target)
    pipe = work / f"supervision-{index}.dot"
    pipe.write_text(pipeline_text(args.nodes))
    socket_name = f"bench-{secrets.token_hex(4)}"
    argv = [sys.executable, "-m", "attractor", "run", str(pipe), "--target-dir", str(target),
            "--state-dir", str(state), "--agent", "scripted", "--tmux-socket", socket_name,
            "--max-agents", str(args.nodes), "--timeout", "600"]
    out_path = work / f"launcher-{index}.out"
    info: dict[str, Any] = {"run": index, "load_before": load()}
    kills: list[Kill] = []
    launcher: subprocess.Popen[str] | None = None
    started = time.monotonic()
    try:
        with open(out_path, "w") as out:
            launcher = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=child_env(),
                                        start_new_session=True)
        rid = wait_for(lambda: run_id(state), 30, "the run's checkpoint")
        agents = [f"guardian-{rid}"] + [f"{r}-{node_name(i)}" for i in range(1, args.nodes + 1)
                                        for r in ("runner", "orchestrator")]

        def all_up() -> bool:
            for agent in agents:
                ident = identity(state, agent)
                if ident is None or ident.get("status") != "active" or not alive(ident.get("pid")):
                    return False
            return True

        wait_for(all_up, 60, "every layer active")
        info["chain_up_s"] = round(time.monotonic() - started, 2)
        newest = max(ts(identity(state, a)["created_at"]) for a in agents)  # type: ignore[index]
        time.sleep(max(0.0, newest + GRACE_S + 0.5 - time.time()))
        third = "runner" if index % 2 == 0 else "orchestrator"
        plan = [("runner", "runner-n1"), ("orchestrator", "orchestrator-n2"),
                (third, f"{third}-n3"), ("guardian", f"guardian-{rid}")]
        for kind, agent in plan:
            time.sleep(args.settle)
            k = kill_agent(state, rid, index, kind, agent, work)
            log(f"  run {index}: {kind:<12} detect {k.detect_ms} ms, running {k.running_ms} ms, "
                f"active {k.active_ms} ms" + (f", resumed {k.resumed_ms} ms" if kind == "guardian" else "")
                + (f" [{k.note}]" if k.note else ""))
            kills.append(k)
        if args.second_kill:
            # the agent killed first in this run dies again once past its new grace period: its
            # second death waits for the backoff (base 1 s, +-20 %), not the immediate respawn
            kind2, agent2 = ("runner", "runner-n1") if index % 2 == 0 else ("orchestrator", "orchestrator-n2")
            created = ts(identity(state, agent2)["created_at"])  # type: ignore[index]
            time.sleep(max(args.settle, created + GRACE_S + 0.5 - time.time()))
            k = kill_agent(state, rid, index, f"{kind2}_second", agent2, work)
            sup = read_json(state / "supervision" / f"{agent2}.json") or {}
            if sup.get("next_restart_at") and sup.get("deaths"):
                k.extra["backoff_ms"] = round(1000 * (ts(sup["next_restart_at"]) - ts(sup["deaths"][-1]["at"])), 1)
            log(f"  run {index}: {kind2} again: detect {k.detect_ms} ms, running {k.running_ms} ms, "
                f"backoff {k.extra.get('backoff_ms')} ms" + (f" [{k.note}]" if k.note else ""))
            kills.append(k)
        if probe and args.nodes >= 4:
            time.sleep(args.settle)
            k = kill_agent(state, rid, index, "escalation_probe", "orchestrator-n4", work, expect_respawn=False,
                           probe_s=args.probe_seconds)
            esc = read_json(state / "supervision" / "escalation.json") or {}
            active = esc.get("active") or {}
            k.extra.update({"escalation_active": bool(active), "escalation_agents": active.get("agents"),
                            "paused_for_s": round(ts(active["until"]) - k.killed_at, 1) if active else None,
                            "alerts": len(esc.get("alerts") or [])})
            log(f"  run {index}: escalation probe: detect {k.detect_ms} ms, {k.extra}")
            kills.append(k)
        stop_started = time.monotonic()
        stopped = subprocess.run([sys.executable, "-m", "attractor", "stop", rid, "--state-dir", str(state),
                                  "--tmux-socket", socket_name], capture_output=True, text=True, env=child_env(),
                                 timeout=60)
        if stopped.returncode != 0:
            log(f"  run {index}: attractor stop exited {stopped.returncode}: {stopped.stderr.strip()}")
        launcher.wait(timeout=30)
        info["stop_s"] = round(time.monotonic() - stop_started, 2)
        info["launcher_exit"] = launcher.returncode
        cp = read_json(state / "runs" / rid / "checkpoint.json") or {}
        info["status"] = cp.get("status")
        info["guardian_starts"] = cp.get("guardian_starts")
    except Exception:
        log(out_path.read_text()[-3000:] if out_path.exists() else "(no launcher output)")
        raise
    finally:
        cleanup(state, socket_name, work, launcher)
    info["wall_s"] = round(time.monotonic() - started, 2)
    info["load_after"] = load()
    return kills, info


# --------------------------------------------------------------------------- summary


def summarize(kills: list[Kill]) -> dict[str, Any]:
    def figures(kind: str, keys: tuple[str, ...]) -> dict[str, Any]:
        chosen = [k for k in kills if k.kind == kind]
        out: dict[str, Any] = {"kills": len(chosen), "not_recovered": [k.note for k in chosen if k.note]}
        for key in keys:
            values = [getattr(k, key) for k in chosen if getattr(k, key) is not None]
            out[key] = stats_ms(values)
            if key in TARGETS_MS and values:
                out[key]["target"] = TARGETS_MS[key]
                out[key]["median_meets"] = statistics.median(values) <= TARGETS_MS[key]
                out[key]["p95_meets"] = out[key]["p95"] <= TARGETS_MS[key]
        return out

    common = ("detect_ms", "spawning_ms", "running_ms", "pid_seen_ms", "active_ms")
    result: dict[str, Any] = {
        "runner": figures("runner", (*common[:1], "runner_died_ms", *common[1:])),
        "orchestrator": figures("orchestrator", common),
        "guardian": figures("guardian", (*common, "resumed_ms")),
    }
    layer_kills = [k for k in kills if k.kind in ("runner", "orchestrator")]
    result["runner_and_orchestrator"] = {
        key: stats_ms([getattr(k, key) for k in layer_kills if getattr(k, key) is not None])
        for key in ("detect_ms", "running_ms", "active_ms")}
    seconds = [k for k in kills if k.kind.endswith("_second")]
    if seconds:
        second = {"note": "second death of the same agent: respawn waits for the backoff by design "
                          "(base 1 s +-20 %); the running target applies to first deaths only",
                  "kills": len(seconds), "agents": sorted({k.kind for k in seconds}),
                  "not_recovered": [k.note for k in seconds if k.note]}
        for key in ("detect_ms", "running_ms", "active_ms"):
            second[key] = stats_ms([getattr(k, key) for k in seconds if getattr(k, key) is not None])
        second["backoff_ms"] = stats_ms([k.extra["backoff_ms"] for k in seconds if "backoff_ms" in k.extra])
        second["running_minus_backoff_ms"] = stats_ms([
            k.running_ms - k.extra["backoff_ms"] for k in seconds
            if k.running_ms is not None and "backoff_ms" in k.extra])
        result["second_kill"] = second
    probes = [k for k in kills if k.kind == "escalation_probe"]
    if probes:
        result["escalation_probe"] = [{"detect_ms": p.detect_ms, **p.extra} for p in probes]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="separate runs, each with its own state dir (default 10)")
    parser.add_argument("--nodes", type=int, default=4, help="parallel nodes per run, at least 3 (default 4)")
    parser.add_argument("--concurrency", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds between one recovery and the next kill")
    parser.add_argument("--no-second-kill", dest="second_kill", action="store_false",
                        help="leave out the second kill of the first agent in each run")
    parser.add_argument("--no-escalation-probe", dest="probe", action="store_false",
                        help="leave out the fourth kill in the last run")
    parser.add_argument("--probe-seconds", type=float, default=3.0,
                        help="how long the escalation probe watches for a respawn (default 3)")
    parser.add_argument("--raw", action="store_true", help="include every kill's figures")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.nodes < 3 or args.concurrency < 1:
        parser.error("--runs and --concurrency must be at least 1, --nodes at least 3")
    if shutil.which("tmux") is None:
        print("error: tmux is not installed; install it with: apt-get install tmux", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-supervision-"))
    started = time.monotonic()
    result: dict[str, Any] = {
        "schema": 1, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "params": {"runs": args.runs, "nodes": args.nodes, "concurrency": args.concurrency, "settle_s": args.settle,
                   "kills_per_run": ["runner-n1", "orchestrator-n2", "runner-n3 (even runs) / orchestrator-n3 (odd)",
                                     "guardian", "second kill: runner-n1 (even) / orchestrator-n2 (odd), "
                                     "once past its new grace" if args.second_kill else "(no second kill)"],
                   "policy": "defaults (ATTRACTOR_POLICY unset)"},
    }
    kills: list[Kill] = []
    runs: list[dict[str, Any]] = []
    try:
        if args.concurrency == 1:
            for index in range(args.runs):
                log(f"run {index + 1}/{args.runs} (load {load()})")
                got, info = run_once(work, index, args, probe=args.probe and index == args.runs - 1)
                kills += got
                runs.append(info)
                log(f"  {info}")
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                futures = [pool.submit(run_once, work, i, args, args.probe and i == args.runs - 1)
                           for i in range(args.runs)]
                for future in futures:
                    got, info = future.result()
                    kills += got
                    runs.append(info)
                    log(f"  {info}")
        result["runs"] = runs
        result.update(summarize(kills))
        if args.raw:
            result["kills"] = [asdict(k) for k in kills]
        result["wall_s"] = round(time.monotonic() - started, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
