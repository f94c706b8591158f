"""What idle agents cost: CPU and memory of attractor's own processes while N agents only sleep;
printed as JSON (progress on stderr).

Design. For each N of `--nodes` (default 1,10,40) a separate `attractor run` of N parallel
codergen nodes whose script is `sleep 900` (launcher, guardian, N runners and N scripted agents in
tmux on a private socket `idle-<random>`, its own state directory and target repository). Once
every runner and agent is active, the bench waits `--settle` seconds, then reads from
`/proc/<pid>/stat` the CPU time (user + system, and that of the children each process has reaped:
the tmux clients a runner starts are counted with it) of the launcher, the guardian and every
runner, and of the tmux server of the run's socket, twice, `--seconds` apart. The agents (`sleep`)
are not counted: they are what is supervised. RSS is VmRSS of `/proc/<pid>/status` at the end.

Figures, per N:
    control_cpu_s_per_min      launcher + guardian + runners, CPU seconds per minute of wall time
    per_agent_cpu_s_per_min    the same divided by N
    tmux_server_cpu_s_per_min  the tmux server of the run's socket
    cpu_s_per_min_by_role      launcher, guardian and runner (all runners together): their own CPU
                               and that of the helper processes (tmux clients, git) they reaped
    rss_mb                     launcher, guardian, runners (median, max, total)
    processes_started_per_min  new pids seen on the machine per minute while idle (tmux clients
                               and other helpers started by the control loops; other work on the
                               machine counts too, so run it on a quiet machine)
Goals (issue 13): control loops <= 0.1 CPU-s/min per idle agent, tmux server <= 0.05 per agent,
RSS <= 25 MB per runner. The load average is reported: the machine may be shared.

Usage: python bench/idle.py [--nodes 1,10,40] [--seconds 60] [--settle 10]
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
from pathlib import Path
from typing import Any

from _common import log

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
PID_MAX = int(Path("/proc/sys/kernel/pid_max").read_text())


def child_env() -> dict[str, str]:
    drop = ("TMUX", "TMUX_PANE", "ATTRACTOR_STATE_DIR", "ATTRACTOR_TMUX_SOCKET", "ATTRACTOR_POLICY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of `pid`, in seconds; None if it is gone."""
    split = cpu_split(pid)
    return None if split is None else sum(split)


def cpu_split(pid: int) -> tuple[float, float] | None:
    """(own utime + stime, reaped children's cutime + cstime) of `pid`, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = [int(f) for f in stat[stat.rfind(")") + 2:].split()[11:15]]
    return (fields[0] + fields[1]) / TICK, (fields[2] + fields[3]) / TICK


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def last_pid() -> int:
    """The most recently assigned pid on the machine (the fifth field of /proc/loadavg)."""
    return int(Path("/proc/loadavg").read_text().split()[4])


def make_target(path: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.invalid"), ("commit.gpgsign", "false")):
        subprocess.run(["git", "-C", str(path), "config", key, value], check=True)
    (path / "README.md").write_text("idle bench target\n")
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "start"], check=True)


def pipeline_text(nodes: int) -> str:
    body = "".join(f'  n{i} [shape=box, prompt="wait", script="sleep 900"]\n  start -> n{i} -> exit\n'
                   for i in range(1, nodes + 1))
    return (f"digraph idle {{\n  graph [max_agents={nodes}]\n  start [shape=Mdiamond]\n  exit [shape=Msquare]\n"
            f"{body}}}\n")


def identities(state: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in (state / "identities").glob("*.json") if (state / "identities").is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            found[path.stem] = json.loads(path.read_text())
    return found


def tmux_server_pid(socket_name: str) -> int | None:
    out = subprocess.run(["tmux", "-L", socket_name, "display-message", "-p", "#{pid}"],
                         capture_output=True, text=True)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


def measure(work: Path, nodes: int, seconds: float, settle: float) -> dict[str, Any]:
    target, state = work / f"target-{nodes}", work / f"state-{nodes}"
    make_target(target)
    pipe = work / f"idle-{nodes}.dot"
    pipe.write_text(pipeline_text(nodes))
    socket_name = f"idle-{secrets.token_hex(4)}"
    argv = [sys.executable, "-m", "attractor", "run", str(pipe), "--target-dir", str(target), "--state-dir",
            str(state), "--agent", "scripted", "--tmux-socket", socket_name, "--max-agents", str(nodes),
            "--timeout", "3600"]
    launcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
                                start_new_session=True)
    try:
        started = time.monotonic()
        while True:
            ids = identities(state)
            up = [i for i in ids.values()
                  if i.get("role") in ("runner", "orchestrator") and i.get("status") == "active"]
            if len(up) >= 2 * nodes:
                break
            if time.monotonic() - started > 60 + 3 * nodes:
                raise SystemExit(f"error: {nodes} nodes did not all start in time ({len(up)} of {2 * nodes} active)")
            time.sleep(0.5)
        up_s = round(time.monotonic() - started, 1)
        time.sleep(settle)
        ids = identities(state)
        control = {name: i["pid"] for name, i in ids.items()
                   if i.get("role") in ("launcher", "guardian", "runner") and isinstance(i.get("pid"), int)}
        control["launcher"] = launcher.pid
        server = tmux_server_pid(socket_name)
        before = {name: cpu_split(pid) for name, pid in control.items()}
        server_before = cpu_seconds(server) if server else None
        pid_before, t0 = last_pid(), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        pid_after = last_pid()
        after = {name: cpu_split(pid) for name, pid in control.items()}
        server_after = cpu_seconds(server) if server else None
        per_min = 60.0 / elapsed
        used = sum(sum(a) - sum(b) for n in control if (b := before[n]) is not None and (a := after[n]) is not None)
        runners = [rss_mb(pid) for name, pid in control.items() if name.startswith("runner-")]
        runner_rss = [r for r in runners if r is not None]
        by_role: dict[str, list[float]] = {}
        for name in control:
            b, a = before[name], after[name]
            if b is None or a is None:
                continue
            role = name.split("-")[0]
            own, kids = by_role.setdefault(role, [0.0, 0.0])
            by_role[role] = [own + (a[0] - b[0]) * per_min, kids + (a[1] - b[1]) * per_min]
        guardian = next((pid for name, pid in control.items() if name.startswith("guardian-")), None)
        result: dict[str, Any] = {
            "nodes": nodes, "chain_up_s": up_s, "measured_s": round(elapsed, 1),
            "control_cpu_s_per_min": round(used * per_min, 2),
            "per_agent_cpu_s_per_min": round(used * per_min / nodes, 3),
            "cpu_s_per_min_by_role": {role: {"own": round(own, 2), "children": round(kids, 2)}
                                      for role, (own, kids) in sorted(by_role.items())},
            "tmux_server_cpu_s_per_min": (round((server_after - server_before) * per_min, 2)
                                          if server_before is not None and server_after is not None else None),
            "processes_started_per_min": round(((pid_after - pid_before) % PID_MAX) * per_min),
            "rss_mb": {"launcher": rss_mb(launcher.pid), "guardian": rss_mb(guardian) if guardian else None,
                       "runner_median": statistics.median(runner_rss) if runner_rss else None,
                       "runner_max": max(runner_rss) if runner_rss else None,
                       "total": round(sum(r for r in (rss_mb(p) for p in control.values()) if r), 1)},
            "load_after": [round(x, 2) for x in os.getloadavg()],
        }
        log(f"  N={nodes}: {result['control_cpu_s_per_min']} CPU-s/min control "
            f"({result['per_agent_cpu_s_per_min']} per agent), tmux {result['tmux_server_cpu_s_per_min']}, "
            f"runner RSS {result['rss_mb']['runner_median']} MB")
        return result
    finally:
        subprocess.run([sys.executable, "-m", "attractor", "stop", "--state-dir", str(state),
                        "--tmux-socket", socket_name], capture_output=True, env=child_env(), timeout=120)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        subprocess.run(["tmux", "-L", socket_name, "kill-server"], capture_output=True)
        (Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / socket_name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,10,40", help="comma-separated numbers of idle nodes")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each measurement lasts")
    parser.add_argument("--settle", type=float, default=10.0, help="wait this long after all are up")
    args = parser.parse_args(argv)
    try:
        sizes = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        parser.error(f"--nodes: expected numbers like 1,10,40, got {args.nodes!r}")
    if shutil.which("tmux") is None or shutil.which("git") is None:
        print("error: bench/idle.py needs tmux and git on PATH", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="attractor-idle-"))
    try:
        results = [measure(work, n, args.seconds, args.settle) for n in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "idle", "cpus": os.cpu_count(), "python": sys.version.split()[0],
                      "seconds": args.seconds, "results": results,
                      "goals": {"per_agent_cpu_s_per_min": 0.1, "tmux_server_per_agent": 0.05,
                                "runner_rss_mb": 25}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
