"""State-write costs, printed as JSON.

1. Atomic replace (temp file + os.replace, `atomic.write_bytes_atomic`) against a plain
   truncate-and-write of the same ~1 KB record, without fsync and with it (the atomic write then
   also fsyncs the directory), each rewriting its own file, in blocks that take turns; targets
   1.5x and 3.5x. Also the two interleaved write by write (see `replace_cost`), and the part of
   a record update's write that runs under the record's lock (`atomic.Replacement.commit`:
   write the staged temp file, rename it over the record).
2. Registry-update wait: N processes (1, 8, 32) update the SAME identity record at once. For
   each call we time the lock wait (entering `locks.file_lock`) and the whole update. Two
   loads: `burst` (every process updates back to back: the worst case, the lock is never free;
   `--rounds` rounds, the queue lock and a plain flock taking turns, medians over rounds) and
   `paced` (each process heartbeats every ~100 ms with jitter: still far above real agent
   rates, which are seconds apart). Target: p99 wait <= 20 ms at 32 processes.

Usage: python bench/state_writes.py [--quick] [--rounds N] > result.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from attractor.store import atomic, identities, locks
from attractor.store.statedir import StateDir


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _sample_record() -> bytes:
    record = identities.Identity(
        schema=1, role="runner", name="impl_auth", agent_id="runner-impl_auth", epoch=3,
        status=identities.S.ACTIVE, pid=4711, tmux_socket="attractor-0123abcd",
        tmux_session="att-run1-runner-impl_auth", pane_id="%12",
        worktree="/home/dev/src/app/.claude/worktrees/impl_auth", session_id="5f0c1e2a-3b4d",
        created_at="2026-01-01T00:00:00.000000Z", last_heartbeat="2026-01-01T00:00:00.000000Z",
        crash_count=1,
        history=tuple({"at": "2026-01-01T00:00:00.000000Z", "from": "spawning", "to": "active",
                       "reason": "heartbeat"} for _ in range(3)),
    )
    return atomic.dumps(record.to_json())


def replace_cost(directory: Path, rounds: int, fsync: bool, blocks: int = 10) -> dict[str, Any]:
    """A plain truncate-and-write against an atomic replace, each rewriting its own file again
    and again (the way a state file is written), the two taking turns block by block; medians
    of all writes and the ratio of each pair of blocks. Also the two interleaved write by
    write, which flatters the plain write: ext4 starts writing a truncated-and-rewritten file
    out when it is closed, and the next truncate of that file waits for that write-out, unless
    another write (the atomic one) happened in between."""
    data = _sample_record()
    paths = {name: directory / f"{name}.json" for name in ("plain", "atomic", "split", "mixed")}
    for path in paths.values():
        path.write_bytes(data)

    def plain(path: Path) -> None:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())

    def timed(write: Callable[[], None]) -> float:
        start = time.perf_counter()
        write()
        return time.perf_counter() - start

    def in_lock() -> float:  # only the part of a record update's write done under its lock
        with atomic.Replacement(paths["split"]) as new:
            return timed(lambda: new.commit(data, fsync=fsync))

    per_block = max(1, rounds // blocks)
    results: dict[str, list[float]] = {"plain": [], "atomic": [], "in_lock": []}
    ratios = []
    for _ in range(blocks):
        block_plain = [timed(lambda: plain(paths["plain"])) for _ in range(per_block)]
        block_atomic = [timed(lambda: atomic.write_bytes_atomic(paths["atomic"], data, fsync=fsync))
                        for _ in range(per_block)]
        results["in_lock"] += [in_lock() for _ in range(per_block)]
        ratios.append(round(statistics.median(block_atomic) / statistics.median(block_plain), 2))
        results["plain"] += block_plain
        results["atomic"] += block_atomic
    mixed_plain, mixed_atomic = [], []
    for _ in range(per_block * 2):
        mixed_plain.append(timed(lambda: plain(paths["mixed"])))
        mixed_atomic.append(timed(lambda: atomic.write_bytes_atomic(paths["atomic"], data, fsync=fsync)))
    plain_s, atomic_s = statistics.median(results["plain"]), statistics.median(results["atomic"])
    return {
        "bytes": len(data),
        "writes_each": len(results["plain"]),
        "plain_median_ms": _ms(plain_s),
        "atomic_median_ms": _ms(atomic_s),
        "ratio": round(atomic_s / plain_s, 2),
        "block_ratios": ratios,
        "target_ratio": 3.5 if fsync else 1.5,
        "record_update_in_lock_median_ms": _ms(statistics.median(results["in_lock"])),
        "record_update_in_lock_ratio": round(statistics.median(results["in_lock"]) / plain_s, 2),
        "interleaved_plain_median_ms": _ms(statistics.median(mixed_plain)),
        "interleaved_atomic_median_ms": _ms(statistics.median(mixed_atomic)),
        "interleaved_ratio": round(statistics.median(mixed_atomic) / statistics.median(mixed_plain), 2),
    }


def _worker(root: str, updates: int, pace: float, start_at: float, queue: Any, queued: bool) -> None:
    locks.QUEUED = queued  # False: the plain flock that locks.py falls back to
    state = StateDir(Path(root))
    waits: list[float] = []
    totals: list[float] = []
    original = locks.file_lock

    @contextlib.contextmanager
    def timed(path: Path, timeout: float = locks.DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        begin = time.perf_counter()
        with original(path, timeout):
            waits.append(time.perf_counter() - begin)
            yield

    identities.update_liveness(state, "runner", "shared")  # warm up: lazy imports, caches
    locks.file_lock = timed
    rng = random.Random(os.getpid())
    while time.time() < start_at:
        time.sleep(0.0005)
    for _ in range(updates):
        if pace:
            time.sleep(rng.uniform(0, 2 * pace))
        begin = time.perf_counter()
        identities.update_liveness(state, "runner", "shared")
        totals.append(time.perf_counter() - begin)
    queue.put((waits, totals))


def update_wait(root: Path, processes: int, updates: int, pace: float, queued: bool = True) -> dict[str, Any]:
    state = StateDir(root)
    identities.create_identity(state, "runner", "shared")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.3 + processes * 0.01
    procs = [ctx.Process(target=_worker, args=(str(root), updates, pace, start_at, queue, queued))
             for _ in range(processes)]
    began = time.perf_counter()
    for proc in procs:
        proc.start()
    waits: list[float] = []
    totals: list[float] = []
    for _ in procs:
        w, t = queue.get(timeout=300)
        waits += w
        totals += t
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - began
    return {
        "processes": processes,
        "updates": len(totals),
        "lock_wait_p50_ms": _ms(_percentile(waits, 50)),
        "lock_wait_p99_ms": _ms(_percentile(waits, 99)),
        "update_p50_ms": _ms(_percentile(totals, 50)),
        "update_p99_ms": _ms(_percentile(totals, 99)),
        "wall_s": round(elapsed, 2),
    }


def burst_rounds(base: Path, processes: int, updates: int, rounds: int) -> list[dict[str, Any]]:
    """Back-to-back updates, `rounds` times, the queue and a plain flock taking turns; the
    medians over rounds, with every round's p99."""
    runs: dict[str, list[dict[str, Any]]] = {"queue": [], "flock": []}
    for k in range(rounds):
        for lock, queued in (("queue", True), ("flock", False)):
            if queued and not locks.QUEUED:
                continue
            root = base / f"burst-{processes}-{lock}-{k}"
            runs[lock].append(update_wait(root, processes, updates, 0.0, queued))
    rows = []
    for lock, results in runs.items():
        if not results:
            continue
        rows.append({
            "processes": processes,
            "lock": lock,
            "rounds": len(results),
            "updates_per_round": results[0]["updates"],
            **{key: round(statistics.median(r[key] for r in results), 3)
               for key in ("lock_wait_p50_ms", "lock_wait_p99_ms", "update_p50_ms", "update_p99_ms")},
            "lock_wait_p99_ms_by_round": [r["lock_wait_p99_ms"] for r in results],
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the burst load (default 5)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    result: dict[str, Any] = {
        "lock": "queue (locks.file_lock)" if locks.QUEUED else "flock fallback (locks.file_lock)",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="att-bench-") as tmp:
        base = Path(tmp)
        result["replace_no_fsync"] = replace_cost(base, int(3000 * scale), fsync=False)
        result["replace_fsync"] = replace_cost(base, int(300 * scale), fsync=True)
        result["update_wait_burst"] = [
            row for n in (1, 8, 32)
            for row in burst_rounds(base, n, max(5, int(60 * scale)), max(1, args.rounds))
        ]
        result["update_wait_paced"] = [
            update_wait(base / f"paced-{n}", n, max(5, int(30 * scale)), 0.1) for n in (1, 8, 32)
        ]
    result["target_p99_wait_ms_at_32"] = 20
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
