"""Chaos soak: a pipeline of scripted nodes whose gates fail about 20 % of the time, while
runners, orchestrators and the guardian are SIGKILLed at random. When it ends:

- every commit on main passed the gates on exactly its tree;
- every node ended merged, or failed/blocked with a stated reason; none merged twice;
- no signal was lost: every MERGE_READY ended in MERGE_COMPLETE or MERGE_FAILED;
- every state file parses; no tmux pane, worktree or process is left over.

Longer on demand: ATTRACTOR_SOAK_NODES (default 10) and ATTRACTOR_SOAK_KILLS (default 30).
The figures are printed (run with -s to see them) and written to the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from tests.chain_helpers import (
    checkpoint,
    codergen,
    dot_quote,
    events,
    kill_everything,
    launch,
    module_steps,
    run_id,
)
from tests.helpers import retry_until

NODES = int(os.environ.get("ATTRACTOR_SOAK_NODES", "10"))
KILLS = int(os.environ.get("ATTRACTOR_SOAK_KILLS", "30"))
GUARDIAN_KILLS = max(3, KILLS // 8)
PER_AGENT_KILLS = 2
DEADLINE = float(os.environ.get("ATTRACTOR_SOAK_SECONDS", "240"))


def gate_command(log: Path) -> str:
    """Fails ~20 % of runs; logs the tree it judged, so main can be checked against it."""
    return (f"tree=$(git rev-parse 'HEAD^{{tree}}'); "
            f"if python3 -c 'import random, sys; sys.exit(random.random() < 0.2)'; "
            f"then echo \"$tree pass\" >> {log}; else echo \"$tree fail\" >> {log}; exit 1; fi")


def soak_pipeline(tmp: Path, log: Path) -> Path:
    lanes = 4
    body, edges = "", ""
    previous = ["start"] * lanes
    for i in range(NODES):
        name = f"n{i:02d}"
        lane = i % lanes
        body += codergen(name, module_steps(name, i) + "sleep 2.5\ncommit " + name + "\nreport", max_retries=6)
        body += f"  v{i:02d} [shape=parallelogram, command={dot_quote(gate_command(log))}, timeout=60]\n"
        edges += f"  {previous[lane]} -> {name} -> v{i:02d}\n"
        previous[lane] = f"v{i:02d}"
    edges += "".join(f"  {p} -> exit\n" for p in dict.fromkeys(previous))
    path = tmp / "soak.dot"
    path.write_text(f"digraph soak {{\n  graph [max_agents=4]\n  start [shape=Mdiamond]\n"
                    f"  exit [shape=Msquare]\n{body}{edges}}}\n")
    return path


def live_agents(state: Path) -> list[tuple[str, int]]:
    found = []
    for path in (state / "identities").glob("*.json"):
        try:
            ident = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if ident.get("role") in ("runner", "orchestrator", "guardian") and ident.get("pid") \
                and ident.get("status") == "active":
            found.append((ident["agent_id"], int(ident["pid"])))
    return found


def test_chaos_soak(tmp_path: Path, state_dir: Path, tmux_socket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.chain_helpers import target_repo

    monkeypatch.setenv("ATTRACTOR_POLICY", "escalation_cooldown=3,quarantine_deaths=8")
    target = target_repo(tmp_path)
    base = subprocess.run(["git", "-C", str(target), "rev-parse", "main"], capture_output=True,
                          text=True).stdout.strip()
    log = tmp_path / "gate.log"
    rng = random.Random(int(os.environ.get("ATTRACTOR_SOAK_SEED", "0")) or None)
    started = time.monotonic()
    proc = launch(soak_pipeline(tmp_path, log), target, state_dir)
    kills: list[dict[str, object]] = []
    per_agent: Counter[str] = Counter()
    try:
        rid = retry_until(lambda: run_id(state_dir), 20, what="run")
        while proc.poll() is None and time.monotonic() - started < DEADLINE:
            time.sleep(rng.uniform(0.1, 0.4))
            if len(kills) >= KILLS:
                continue
            choices = [(a, p) for a, p in live_agents(state_dir)
                       if per_agent[a] < (GUARDIAN_KILLS if a.startswith("guardian") else PER_AGENT_KILLS)]
            if not choices:
                continue
            agent, pid = rng.choice(choices)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            per_agent[agent] += 1
            kills.append({"agent": agent, "at": time.time()})
        out, err = proc.communicate(timeout=max(10, DEADLINE - (time.monotonic() - started)))
    finally:
        if proc.poll() is None:
            proc.kill()
        wall = time.monotonic() - started
        kill_everything(state_dir)
    assert proc.returncode in (0, 1), out + err
    cp = checkpoint(state_dir)
    assert cp["status"] in ("succeeded", "failed"), cp["status"]
    assert len(kills) >= min(KILLS, 30), f"only {len(kills)} kills happened"

    # every commit on main passed the gates on exactly its tree
    passed = {line.split()[0] for line in log.read_text().splitlines() if line.endswith(" pass")}
    first_parent = subprocess.run(["git", "-C", str(target), "rev-list", "--first-parent", f"{base}..main"],
                                  capture_output=True, text=True).stdout.split()
    for commit in first_parent:
        tree = subprocess.run(["git", "-C", str(target), "rev-parse", f"{commit}^{{tree}}"],
                              capture_output=True, text=True).stdout.strip()
        assert tree in passed, f"commit {commit} on main never passed the gates"

    # every node merged, or failed/blocked with a reason; none merged twice
    subjects = subprocess.run(["git", "-C", str(target), "log", "--format=%s", f"{base}..main"],
                              capture_output=True, text=True).stdout.splitlines()
    merged = [n for n, p in cp["nodes"].items() if p["kind"] == "codergen" and p["state"] == "merged"]
    for name, node in cp["nodes"].items():
        if node["kind"] != "codergen":
            continue
        assert node["state"] in ("merged", "failed", "blocked"), (name, node)
        if node["state"] != "merged":
            assert node["reason"], (name, node)
        assert subjects.count(name) <= 1, f"{name} landed more than once: {subjects}"
    entries = [json.loads(p.read_text()) for p in (state_dir / "merge-queue" / "entries").glob("*.json")]
    by_branch = Counter(e["branch"] for e in entries if e["state"] == "merged")
    assert all(count == 1 for count in by_branch.values()), by_branch

    # no signal lost: every MERGE_READY ended in MERGE_COMPLETE or MERGE_FAILED to its owner
    ready = []
    for path in (state_dir / "signals" / f"guardian-{rid}").glob("*/*.json"):
        sig = json.loads(path.read_text())
        if sig["kind"] == "MERGE_READY":
            ready.append(sig["payload"])
    answers: set[tuple[str, str]] = set()
    for path in (state_dir / "signals").glob("runner-*/*/*.json"):
        sig = json.loads(path.read_text())
        if sig["kind"] in ("MERGE_COMPLETE", "MERGE_FAILED"):
            answers.add((sig["recipient"], sig["payload"]["branch"]))
    for payload in ready:
        assert (payload["owner"], payload["branch"]) in answers, f"MERGE_READY for {payload['branch']} unanswered"

    # every state file parses; nothing left over
    for path in state_dir.rglob("*.json"):
        if ".corrupt-" not in path.name:
            json.loads(path.read_text())
    sessions = subprocess.run(["tmux", "-L", tmux_socket, "ls"], capture_output=True, text=True)
    assert not sessions.stdout.strip(), sessions.stdout
    worktrees = subprocess.run(["git", "-C", str(target), "worktree", "list", "--porcelain"],
                               capture_output=True, text=True).stdout
    assert worktrees.count("worktree ") == 1, worktrees
    for path in (state_dir / "identities").glob("*.json"):
        pid = json.loads(path.read_text()).get("pid")
        if pid:
            state = Path(f"/proc/{pid}/stat")
            assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z", path.name

    run_events = events(state_dir)
    died = [e for e in run_events if e["event"] == "runner_died"]
    figures = {
        "nodes": NODES, "kills": len(kills),
        "kills_by_role": dict(Counter(str(k["agent"]).split("-")[0] for k in kills)),
        "runner_respawns": sum(1 for e in run_events if e["event"] == "runner_respawn"),
        "guardian_starts": cp["guardian_starts"],
        "orchestrator_epochs": sum(json.loads(p.read_text())["epoch"]
                                   for p in (state_dir / "identities").glob("orchestrator-*.json")),
        "runner_deaths_detected": len(died),
        "merged": len(merged), "not_merged": NODES - len(merged),
        "gate_runs": len(log.read_text().splitlines()),
        "gate_failures": sum(1 for line in log.read_text().splitlines() if line.endswith(" fail")),
        "escalations": len(json.loads((state_dir / "supervision" / "escalation.json").read_text()).get("alerts", []))
        if (state_dir / "supervision" / "escalation.json").exists() else 0,
        "wall_seconds": round(wall, 1), "run_status": cp["status"],
    }
    (tmp_path / "soak-figures.json").write_text(json.dumps(figures, indent=2))
    print("\nchaos soak figures:", json.dumps(figures, sort_keys=True))
