"""What the supervision policy costs a guardian tick, printed as JSON.

1. `record_death` (read, decide, atomic write with fsync, escalation bookkeeping).
2. One tick over N live agents that have died before: `record_healthy` for each (the no-change
   path: a stat, a cache hit, no write) plus one `due_respawns()`.
3. `classify` of one observation with a pane text of 200 lines (prompt matching included), and
   `match_prompt` alone on the same text.
4. `attractor agent list --json` as a whole process.

Usage: python bench/supervision_policy.py [--agents 50] [--samples 200] > result.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attractor.clock import FakeClock
from attractor.engines.prompts import match_prompt
from attractor.engines.supervision import AgentObservation, PolicyConfig, Supervisor, classify


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 4),
            "p95_ms": round(p95 * 1000, 4), "n": len(ordered)}


def timed(func: Callable[[], Any], samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        func()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    result: dict[str, Any] = {"agents": args.agents, "samples": args.samples}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        clock = FakeClock()
        config = PolicyConfig(quarantine_deaths=10**9, escalation_agents=10**9)
        sup = Supervisor(state, config, clock, random.Random(1))
        names = [f"runner-n{i}" for i in range(args.agents)]

        def one_death() -> None:
            sup.record_death(random.choice(names), "bench")
            clock.advance(0.01)

        result["record_death"] = stats(timed(one_death, args.samples))
        for name in names:
            sup.record_respawn(name)
            sup.record_healthy(name)

        def tick() -> None:
            for name in names:
                sup.record_healthy(name)
            sup.due_respawns()

        result["tick_all_agents"] = stats(timed(tick, args.samples))

        text = "\n".join(f"● line {i}: editing app/module_{i}.py" for i in range(190))
        text += "\n│ Do you want to proceed?\n│ ❯ 1. Yes\n│   2. No\n" + "\n" * 8  # noqa: RUF001
        now = time.time()
        observation = AgentObservation("orchestrator-x", "orchestrator", now - 100, os.getpid(),
                                       True, True, last_pane_activity=now, pane_text_tail=text)
        result["classify_200_line_pane"] = stats(
            timed(lambda: classify(observation, now, config), args.samples))
        result["match_prompt_200_line_pane"] = stats(
            timed(lambda: match_prompt(text, now), args.samples))

        env = dict(os.environ, ATTRACTOR_STATE_DIR=str(state))
        cli = [sys.executable, "-m", "attractor", "agent", "list", "--json"]
        result["agent_list_process"] = stats(timed(
            lambda: subprocess.run(cli, env=env, check=True, capture_output=True), 15))
        bare = [sys.executable, "-c", "pass"]
        result["bare_python_process"] = stats(timed(
            lambda: subprocess.run(bare, check=True, capture_output=True), 15))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
