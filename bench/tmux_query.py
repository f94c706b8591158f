"""Pane liveness: one batched `list-panes -a -F …` call against one `display-message` per pane.

Starts `--panes` sessions (each one `sleep` pane) on a private tmux socket, then times, over
`--rounds` rounds, (a) `Tmux.list_panes()` and (b) `Tmux.pane(id)` for every pane. Everything
it started is killed at the end, whatever happens. Prints one JSON object:

    python bench/tmux_query.py [--panes 20] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from attractor.tmux import Tmux


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        return round(ordered[index] * 1000, 3)

    return {"p50_ms": rank(50), "p95_ms": rank(95), "max_ms": rank(100)}


def measure(tmux: Tmux, pane_ids: list[str], rounds: int) -> dict[str, Any]:
    batched: list[float] = []
    per_pane: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        seen = tmux.list_panes()
        batched.append(time.perf_counter() - start)
        assert len(seen) == len(pane_ids), seen
        start = time.perf_counter()
        found = [tmux.pane(pane_id) for pane_id in pane_ids]
        per_pane.append(time.perf_counter() - start)
        assert all(found), found
    return {
        "batched_list_panes": {"tmux_calls": 1, **percentiles(batched)},
        "per_pane_queries": {"tmux_calls": len(pane_ids), **percentiles(per_pane)},
        "speedup_p50": round(sorted(per_pane)[len(per_pane) // 2]
                             / sorted(batched)[len(batched) // 2], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    tmux = Tmux(f"att-bench-{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            panes = [
                tmux.new_session(f"bench-{index}", ["sleep", "600"], cwd=Path(tmp))
                for index in range(args.panes)
            ]
            result = measure(tmux, [p.pane_id for p in panes], args.rounds)
        finally:
            tmux.kill_owned_sessions("bench-")
            # the server exits with its last session; tmux may leave the socket file behind
            socket = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
            if not tmux.list_sessions():
                (socket / tmux.socket_name).unlink(missing_ok=True)
    print(json.dumps({"bench": "tmux_query", "panes": args.panes, "rounds": args.rounds,
                      "cpus": os.cpu_count(), **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
