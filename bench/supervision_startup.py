"""Runner start-up under load: spawn -> first heartbeat of every runner of a run of `--nodes`
parallel nodes started at once, with `--hogs` CPU-bound processes (each in a session of its own)
running beside it; printed as JSON (progress on stderr).

Each run is a real `attractor run` of scripted nodes (write a module, commit, report, validated by
a tool node) on a private tmux socket, its own state directory and target repository. The figures
come from what the guardian measured and recorded (`supervision/startup.json`), so they are the
numbers that set the start-up grace; also reported: the grace that results, the run's wall time,
and the supervision events that must stay at zero under load (runners that died or were ended
while starting, escalations).

Usage: python bench/supervision_startup.py [--nodes 12] [--hogs 4] [--runs 1] > result.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import log

REPO = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def make_target(path: Path) -> None:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.invalid"), ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    (path / "app").mkdir()
    (path / "app" / "__init__.py").write_text("")
    (path / "tests").mkdir()
    (path / "tests" / "__init__.py").write_text("")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")


def pipeline_text(nodes: int) -> str:
    lines = ["digraph bench {", "  start [shape=Mdiamond]", "  exit [shape=Msquare]"]
    for i in range(nodes):
        name = f"n{i:02d}"
        script = f"write app/{name}.py VALUE = {i}\\n\ncommit {name}\nreport"
        lines.append(f'  {name} [shape=box, prompt="bench", script="{script}"]')
        lines.append(f'  check_{name} [shape=parallelogram, command="python3 -c pass", timeout=120]')
        lines.append(f"  start -> {name} -> check_{name} -> exit")
    return "\n".join([*lines, "}", ""])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * fraction + 0.999999) - 1))]


def one_run(nodes: int, hogs: int, work: Path) -> dict[str, Any]:
    from attractor.engines.supervision import Supervisor
    from attractor.engines.watch import policy_from_env
    from attractor.store.statedir import StateDir

    target, state = work / "app", work / "state"
    make_target(target)
    pipe = work / "bench.dot"
    pipe.write_text(pipeline_text(nodes))
    socket = f"bench-{secrets.token_hex(4)}"
    env = {**os.environ, "ATTRACTOR_TMUX_SOCKET": socket, "ATTRACTOR_STATE_DIR": str(state)}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(hogs)]
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "launch_guardian.py"), str(pipe),
                               "--target-dir", str(target), "--state-dir", str(state), "--agent", "scripted",
                               "--max-agents", str(nodes), "--tmux-socket", socket],
                              capture_output=True, text=True, env=env, timeout=1800)
    finally:
        wall = time.monotonic() - started
        for proc in busy:
            proc.kill()
            proc.wait()
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)
    supervisor = Supervisor(StateDir(state), policy_from_env())
    seconds = [s.seconds for s in supervisor.startup_times().samples("runner")]
    run_events: list[dict[str, Any]] = []
    for path in (state / "runs").glob("*/events.jsonl"):
        run_events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    logs = "".join(p.read_text(errors="replace") for p in (state / "logs").glob("guardian-*.log"))
    return {
        "exit_code": done.returncode,
        "wall_s": round(wall, 2),
        "runner_startup_s": {"n": len(seconds), "min": round(min(seconds), 3) if seconds else None,
                             "p50": round(percentile(seconds, 0.5), 3) if seconds else None,
                             "p95": round(percentile(seconds, 0.95), 3) if seconds else None,
                             "max": round(max(seconds), 3) if seconds else None},
        "runner_grace_s": round(supervisor.startup_grace("runner"), 3),
        "runners_died": sum(1 for e in run_events if e.get("event") == "runner_died"),
        "ended_while_starting": logs.count("while starting"),
        "stale_kills": logs.count(" is stale: "),
        "escalations": len(supervisor.alerts()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--hogs", type=int, default=4, help="CPU-bound processes running beside the run")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    result: dict[str, Any] = {"nodes": args.nodes, "hogs": args.hogs, "cpus": os.cpu_count(), "runs": []}
    for i in range(args.runs):
        log(f"run {i + 1}/{args.runs}: {args.nodes} nodes beside {args.hogs} CPU-bound processes")
        with tempfile.TemporaryDirectory(prefix="att-bench-") as tmp:
            result["runs"].append(one_run(args.nodes, args.hogs, Path(tmp)))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
