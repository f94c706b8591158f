"""Signal delivery latency: from the moment a sender calls `signals.send` to the moment the
consumer's handler runs, with the consumer in a separate process.

Three modes: `events` (inotify through watchdog, the rescan timer set long enough never to fire
first), `rescan` (events off, delivery by the rescan timer alone), and `cli`: as `events`, but each
signal is sent the way agents send it, by an `attractor signal send` process, and timed from just
before that process starts (so it includes the process's start-up). Prints one JSON object:

    python bench/signals.py [--samples 300] [--rescan-interval 0.05] [--spacing 0.01]
                            [--mode events|rescan|cli|all] [--cli-samples 60]

Target (issue 3): p95 <= 5 ms with events on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

AGENT = "runner-bench"


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        return round(ordered[index] * 1000, 3)

    return {"p50_ms": rank(50), "p95_ms": rank(95), "p99_ms": rank(99), "max_ms": rank(100)}


def consume(args: argparse.Namespace) -> int:
    """The consumer process: handle `samples` signals, then print their latencies as JSON."""
    from attractor.store import signals
    from attractor.store.payloads import Respawn
    from attractor.store.statedir import StateDir

    latencies: list[float] = []
    finished = threading.Event()

    def handle(signal: signals.Signal) -> str:
        now = time.time()
        assert isinstance(signal.payload, Respawn)
        latencies.append(now - float(signal.payload.reason))
        if len(latencies) >= args.samples:
            finished.set()
        return "measured"

    consumer = signals.Consumer(
        StateDir(Path(args.state_dir)), AGENT, handle,
        use_events=args.use_events, rescan_interval=args.rescan_interval,
    )
    with consumer:
        signals.ensure_inbox(StateDir(Path(args.state_dir)), AGENT)
        print("ready", flush=True)
        if not finished.wait(timeout=args.samples * 2 + 30):
            print(json.dumps({"error": f"only {len(latencies)} signals handled"}), flush=True)
            return 1
    print(json.dumps(latencies), flush=True)
    return 0


def measure(mode: str, samples: int, rescan_interval: float, spacing: float) -> dict[str, Any]:
    from attractor.store import signals
    from attractor.store.statedir import StateDir

    with tempfile.TemporaryDirectory(prefix="attractor-bench-") as tmp:
        state = StateDir(Path(tmp) / "state")
        use_events = mode in ("events", "cli")
        interval = 60.0 if use_events else rescan_interval
        proc = subprocess.Popen(
            [sys.executable, __file__, "--consumer", "--state-dir", str(state.root),
             "--samples", str(samples), "--rescan-interval", str(interval),
             *(["--use-events"] if use_events else [])],
            stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{mode}: consumer did not start")
        time.sleep(0.2)  # let its watch settle before the first sample
        send_costs = []
        rng = random.Random(7)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")
               + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
        for _ in range(samples):
            start = time.time()
            if mode == "cli":
                subprocess.run([sys.executable, "-m", "attractor", "signal", "send", "RESPAWN", "--to", AGENT,
                                "--from", "guardian-bench", "--state-dir", str(state.root),
                                "--payload", json.dumps({"reason": repr(start)})],
                               check=True, stdout=subprocess.DEVNULL, env=env)
            else:
                signals.send(state, "RESPAWN", to=AGENT, sender="guardian-bench",
                             payload={"reason": repr(start)})
            send_costs.append(time.time() - start)
            time.sleep(rng.uniform(spacing / 2, spacing * 1.5))
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"{mode}: consumer failed: {out.strip()}")
        latencies = json.loads(out.strip().splitlines()[-1])
    result: dict[str, Any] = {"samples": len(latencies), **percentiles(latencies)}
    if not use_events:
        result["rescan_interval_s"] = rescan_interval
    result["send_process" if mode == "cli" else "send_call"] = percentiles(send_costs)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=300, help="signals per mode (default 300)")
    parser.add_argument("--rescan-interval", type=float, default=0.05,
                        help="rescan period in seconds for the rescan-only mode (default 0.05)")
    parser.add_argument("--spacing", type=float, default=0.01,
                        help="mean pause between sends in seconds (default 0.01)")
    parser.add_argument("--mode", choices=["events", "rescan", "cli", "both", "all"], default="all",
                        help="both: events and rescan; all: the three (default)")
    parser.add_argument("--cli-samples", type=int, default=60,
                        help="signals sent by `attractor signal send` processes in the cli mode (default 60)")
    parser.add_argument("--consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--use-events", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consumer:
        return consume(args)
    report: dict[str, Any] = {
        "bench": "signals send -> handler latency (consumer in another process)",
        "cpus": os.cpu_count(),
        "target": "events p95 <= 5 ms",
    }
    modes = {"both": ["events", "rescan"], "all": ["events", "rescan", "cli"]}.get(args.mode, [args.mode])
    for mode in modes:
        key = {"events": "events", "rescan": "rescan_only", "cli": "cli_process"}[mode]
        report[key] = measure(mode, args.cli_samples if mode == "cli" else args.samples, args.rescan_interval,
                              args.spacing)
    if "events" in report:
        report["target_met"] = report["events"]["p95_ms"] <= 5.0
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
