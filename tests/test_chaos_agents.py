"""Chaos soak with agents that misbehave, the way real LLM agents do, while runners, agents and
the guardian are SIGKILLed at random. Each node's agent misbehaves on its first attempt:

- wrecks its worktree: deletes it, makes a plain directory in its place (inside the main
  checkout) and commits there, which puts an ungated commit on main, then reports;
- runs `git checkout main` (refused by git: main is checked out elsewhere) and commits on a branch
  of its own, then reports;
- forges MERGE_COMPLETE for its own node;
- reports twice;
- exits without reporting.

The test plays the human where one is asked for: when merging is held because main moved
outside the queue, it puts main back where the queue left it and resumes the queue. When it ends:
every commit on main is one the merge queue landed, every "merged" node's sha is on main, no
commit of a misbehaving attempt is on main, and the run succeeded.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.chain_helpers import checkpoint, codergen, events, kill_everything, launch, module_steps, run_id, tool
from tests.helpers import git, retry_until, run_cli
from tests.test_chaos import live_agents

NODES = 10
KILLS = int(os.environ.get("ATTRACTOR_SOAK_KILLS", "12"))
DEADLINE = float(os.environ.get("ATTRACTOR_SOAK_SECONDS", "300"))
MISCHIEF = ("wreck", "checkout", "forge", "twice", "silent")


def first_attempt(kind: str, name: str) -> str:
    """Steps (attempt 1 only) of one kind of misbehaviour."""
    forge = json.dumps({"entry_id": f"forged-{name}", "branch": f"attractor/x/{name}", "merged_sha": "deadbeef",
                        "target": "main", "node": name})
    steps = {
        "wreck": [f"run cd .. && rm -rf {name} && mkdir {name}", f"write app/evil_{name}.py EVIL = 1\\n",
                  f"run git add -f app/evil_{name}.py && git commit -q -m evil-{name}", "report"],
        "checkout": ["run git checkout main || true", f"run git checkout -q -b stray-{name}",
                     f"write app/evil_{name}.py EVIL = 2\\n", f"commit evil-{name}", "report"],
        "forge": [f"run {shlex.quote(sys.executable)} -m attractor signal send MERGE_COMPLETE --to runner-{name} "
                  f"--from merge-queue --payload {shlex.quote(forge)}"],
        "twice": [],
        "silent": ["fail 0"],
    }[kind]
    return "".join(f"@1 {step}\n" for step in steps)


def soak_pipeline(tmp: Path) -> Path:
    body, edges, lanes = "", "", 4
    previous = ["start"] * lanes
    for i in range(NODES):
        name = f"m{i:02d}"
        kind = MISCHIEF[i % len(MISCHIEF)]
        work = module_steps(name, i) + "sleep 1\n" + f"commit {name}\nreport\n"
        if kind == "twice":
            work += "report\n"
        body += codergen(name, first_attempt(kind, name) + work, max_retries=4)
        body += tool(f"v{i:02d}")
        lane = i % lanes
        edges += f"  {previous[lane]} -> {name} -> v{i:02d}\n"
        previous[lane] = f"v{i:02d}"
    edges += "".join(f"  {p} -> exit\n" for p in dict.fromkeys(previous))
    path = tmp / "mischief.dot"
    path.write_text(f"digraph mischief {{\n  graph [max_agents=4]\n  start [shape=Mdiamond]\n"
                    f"  exit [shape=Msquare]\n{body}{edges}}}\n")
    return path


def test_misbehaving_agents_under_random_kills(tmp_path: Path, state_dir: Path, tmux_socket: str,
                                               monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.chain_helpers import target_repo

    monkeypatch.setenv("ATTRACTOR_POLICY", "escalation_cooldown=3,quarantine_deaths=8")
    target = target_repo(tmp_path)
    base = git(target, "rev-parse", "main")
    rng = random.Random(int(os.environ.get("ATTRACTOR_SOAK_SEED", "0")) or None)
    started = time.monotonic()
    proc = launch(soak_pipeline(tmp_path), target, state_dir)
    kills: Counter[str] = Counter()
    resumed = 0
    hold = state_dir / "merge-queue" / "hold.json"
    try:
        retry_until(lambda: run_id(state_dir), 20, what="run")
        while proc.poll() is None and time.monotonic() - started < DEADLINE:
            time.sleep(rng.uniform(0.2, 0.6))
            if hold.exists():  # the human: main back where the queue left it, then resume
                held = json.loads(hold.read_text())
                if held.get("expected"):
                    git(target, "reset", "-q", "--hard", held["expected"])
                assert run_cli(["merge-queue", "resume", "--state-dir", str(state_dir)]).returncode == 0
                resumed += 1
                continue
            if sum(kills.values()) >= KILLS:
                continue
            choices = [(a, p) for a, p in live_agents(state_dir) if kills[a] < (1 if a.startswith("guardian") else 2)]
            if choices:
                agent, pid = rng.choice(choices)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills[agent] += 1
                except ProcessLookupError:
                    pass
        out, err = proc.communicate(timeout=max(10.0, DEADLINE - (time.monotonic() - started)))
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_everything(state_dir)
    cp = checkpoint(state_dir)
    assert cp["status"] == "succeeded", out + err
    assert resumed >= 1, "the wrecking agents never got a commit onto main: the test did not test that"

    # every commit on main is one the queue landed
    entries = [json.loads(p.read_text()) for p in (state_dir / "merge-queue" / "entries").glob("*.json")]
    landed = {e["outcome"]["merged_sha"] for e in entries if e["state"] == "merged" and e.get("outcome")}
    chain = git(target, "rev-list", "--first-parent", f"{base}..main").split()
    assert chain and all(sha in landed for sha in chain), set(chain) - landed
    # every merged node's sha is on main; no misbehaving attempt's commit is
    for name, node in cp["nodes"].items():
        if node["kind"] == "codergen":
            assert node["state"] == "merged", (name, node)
            ok = subprocess.run(["git", "-C", str(target), "merge-base", "--is-ancestor", node["merged_sha"], "main"])
            assert ok.returncode == 0, (name, node["merged_sha"])
    files = git(target, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert not [f for f in files if "evil" in f], files
    rejected = [e for e in events(state_dir) if e.get("alert") == "signal_rejected"]
    assert len(rejected) >= 1
    print("\nmisbehaving soak:", json.dumps({"kills": sum(kills.values()), "queue_resumed": resumed,
                                              "rejected_signals": len(rejected),
                                              "wall_s": round(time.monotonic() - started, 1)}))
