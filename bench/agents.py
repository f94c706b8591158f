"""How fast each real agent CLI gets going and lands its work, printed as JSON (progress on stderr).

For each CLI (`--cli`, default every one installed: claude, codex, aider) it runs a one-node
pipeline `--repeat` times with `attractor run … --agent CLI` on a fresh repository and a fresh
HOME, against the scripted model server of tests/modelserver answering at once. The node's agent
writes one file, commits and reports (Aider reports by exiting with the commit). From the run's
own records:

    launch_to_first_tool_ms   the launcher's `launched` event -> the model server handing the
                              agent its first tool call (CLI start-up, dialogs, first request)
    report_to_merged_ms       the report (ORCHESTRATOR_DONE written, or Aider's exit seen by the
                              runner) -> the guardian's `merged` event (validation + merge queue)
    wall_s                    the whole `attractor run` process

Medians and min/max over the repeats; the load average beside them (the machine is shared).

Usage: .venv/bin/python bench/agents.py [--cli claude --cli codex] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.agent_bins import find_binary  # noqa: E402
from tests.modelserver.core import ModelServer, NodePlaybook, bash, report, say, write  # noqa: E402

PIPELINE = """digraph bench {
  start [shape=Mdiamond]
  exit [shape=Msquare]
  work [shape=box, prompt="Add app/work.py with VALUE = 1"]
  check [shape=parallelogram, command="python3 -c 'import app.work'"]
  start -> work -> check -> exit
}
"""


def env_for(cli: str, url: str, home: Path) -> dict[str, str]:
    binary = find_binary(cli)
    assert binary is not None
    env = {**os.environ, "HOME": str(home), "PATH": f"{binary.parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
    for var in ("TMUX", "TMUX_PANE", "ATTRACTOR_STATE_DIR", "ATTRACTOR_TMUX_SOCKET"):
        env.pop(var, None)
    if cli == "claude":
        env.update(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-ant-api03-scripted-0123456789abcdef",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1")
    elif cli == "codex":
        env.update(OPENAI_BASE_URL=url + "/v1", OPENAI_API_KEY="sk-scripted")
    else:
        metadata = home / "metadata.json"
        metadata.write_text(json.dumps({"openai/scripted": {
            "max_tokens": 4096, "max_input_tokens": 128000, "max_output_tokens": 4096, "input_cost_per_token": 2e-6,
            "output_cost_per_token": 8e-6, "litellm_provider": "openai", "mode": "chat"}}))
        env.update(OPENAI_API_BASE=url + "/v1", OPENAI_API_KEY="sk-scripted", AIDER_MODEL="openai/scripted",
                   AIDER_MODEL_METADATA_FILE=str(metadata))
    return env


def one_run(cli: str) -> dict[str, float]:
    from attractor import clock

    with tempfile.TemporaryDirectory(prefix=f"bench-{cli}-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        repo.mkdir()
        identity = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
                    "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
        for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "start"]):
            subprocess.run(["git", *args], cwd=repo, check=True, env={**os.environ, **identity})
        (repo / "app").mkdir()
        (root / "p.dot").write_text(PIPELINE)
        playbook = NodePlaybook({"work": [write("app/__init__.py", ""), write("app/work.py", "VALUE = 1\n"),
                                          bash("git add -A && git commit -q -m work"), report("work"), say("Done.")]})
        state = root / "state"
        with ModelServer(playbook) as server:
            started = time.time()
            done = subprocess.run([sys.executable, "-m", "attractor", "run", str(root / "p.dot"), "--target-dir",
                                   str(repo), "--state-dir", str(state), "--agent", cli, "--tmux-socket",
                                   f"bench-{os.getpid()}-{cli}"],
                                  env=env_for(cli, server.url, root), capture_output=True, text=True, timeout=600)
            wall = time.time() - started
            if done.returncode != 0:
                raise SystemExit(f"bench: {cli} run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
            tools = [r.at for r in server.recorded if r.action is not None and r.action.kind in ("bash", "write")]
        run_dir = next((state / "runs").iterdir())
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        launched = clock.parse_iso(next(e["at"] for e in events if e["event"] == "launched"))
        merged = clock.parse_iso(next(e["at"] for e in events if e["event"] == "merged"))
        validating = clock.parse_iso(next(e["at"] for e in events if e["event"] == "validating"))
        reports = [json.loads(p.read_text()) for p in (state / "signals" / "runner-work" / "done").glob("*.json")]
        done_at = [clock.parse_iso(r["created_at"]) for r in reports if r["kind"] == "ORCHESTRATOR_DONE"]
        reported = min(done_at) if done_at else validating  # Aider: the runner reports when it exits
        return {"launch_to_first_tool_ms": (min(tools) - launched) * 1000 if tools else float("nan"),
                "report_to_merged_ms": (merged - reported) * 1000, "wall_s": wall}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cli", action="append", choices=("claude", "codex", "aider"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    clis = args.cli or [c for c in ("claude", "codex", "aider") if find_binary(c) is not None]
    result: dict[str, Any] = {"repeat": args.repeat, "load_before": os.getloadavg()[0], "clis": {}}
    for cli in clis:
        runs = []
        for index in range(args.repeat):
            print(f"bench: {cli} run {index + 1}/{args.repeat}", file=sys.stderr)
            runs.append(one_run(cli))
        result["clis"][cli] = {key: summary([r[key] for r in runs]) for key in runs[0]}
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
