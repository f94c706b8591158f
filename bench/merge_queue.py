"""Merge queue throughput and git overhead, printed as JSON.

Builds a repository of `--commits` commits over `--files` files (fast-import), queues
`--branches` branches (each one commit on the original tip, so all but the first need a rebase)
and processes them serially with one gate that sleeps `--gate-seconds` T and fails for a
fraction `--fail-fraction` p of the branches. The target is checked out in the repository's own
clean checkout, so every merge fast-forwards it there (the costlier path; `--detached-target`
measures the update-ref path).

Reports entries per minute and merges per minute against the 1/T limit, and per entry:
`git_ms` (rebase + swap: checking out the merge worktree, the rebase, the compare-and-swap of
the target and the fast-forward of its checkout) and `overhead_ms` (everything the queue adds
besides the gate: state writes, signals, worktree removal), median and p95. The full checkout
of the next entry's worktree runs in the background during the current gate, so it appears in
neither, except for the first entry. `fs_create_files_ms` is what this file system takes to
create as many small files as the tree has, before and after the run: the floor under a
checkout, and what other load on the machine inflates. Targets (issue 4): serial throughput
within 5 % of 1/T at p = 0; git overhead <= 60 ms p95 on 1,000 commits x 200 files.

Usage: python bench/merge_queue.py [--gate-seconds 1] [--fail-fraction 0] > result.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from attractor.engines import merge_queue as mq  # noqa: E402
from attractor.engines.gates import Gate  # noqa: E402
from attractor.store.statedir import StateDir  # noqa: E402

FAIL_MARKER = ".bench-fail"


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _git(repo: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True,
                          check=True)
    return done.stdout.decode().strip()


def build_repo(path: Path, commits: int, files: int) -> None:
    """`commits` commits on main, the first adding `files` files, each later one editing one."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.invalid"),
                       ("commit.gpgsign", "false")):
        _git(path, "config", key, value)
    contents = {f"src/file{i:03d}.txt": [f"file {i} line {n}\n" for n in range(20)]
                for i in range(files)}
    stream: list[bytes] = []
    stamp = 1_700_000_000
    for n in range(commits):
        stream.append(b"commit refs/heads/main\n")
        stream.append(f"committer Bench <bench@example.invalid> {stamp + n} +0000\n".encode())
        message = f"commit {n}\n".encode()
        stream.append(f"data {len(message)}\n".encode() + message)
        changed = list(contents) if n == 0 else [f"src/file{n % files:03d}.txt"]
        for name in changed:
            if n:
                contents[name][n % 20] = f"file {name} line {n % 20} edited in commit {n}\n"
            body = "".join(contents[name]).encode()
            stream.append(f"M 100644 inline {name}\ndata {len(body)}\n".encode() + body + b"\n")
    _git(path, "fast-import", "--quiet", data=b"".join(stream))
    _git(path, "reset", "-q", "--hard", "main")


def make_branches(repo: Path, count: int, failing: set[int]) -> list[str]:
    names = []
    for i in range(count):
        name = f"attractor/bench/node{i:02d}"
        _git(repo, "checkout", "-q", "-b", name, "main")
        (repo / f"feature{i:02d}.txt").write_text(f"feature {i}\n")
        _git(repo, "add", f"feature{i:02d}.txt")
        if i in failing:
            (repo / FAIL_MARKER).write_text("this branch fails its gate\n")
            _git(repo, "add", FAIL_MARKER)
        _git(repo, "commit", "-q", "-m", f"feature {i}")
        names.append(name)
    _git(repo, "checkout", "-q", "main")
    return names


def file_creation_ms(directory: Path, files: int, runs: int = 5) -> float:
    """Median time to create `files` small files in a fresh directory on this file system: the
    floor under any checkout of the tree, and what other load on the machine slows down."""
    times = []
    for run_index in range(runs):
        fresh = directory / f"fs-probe-{run_index}"
        started = time.monotonic()
        fresh.mkdir()
        for i in range(files):
            (fresh / f"f{i}.txt").write_text("x" * 400)
        times.append(1000 * (time.monotonic() - started))
        shutil.rmtree(fresh)
    return round(statistics.median(times), 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-mq-"))
    try:
        repo = work / "repo"
        started = time.monotonic()
        build_repo(repo, args.commits, args.files)
        rng = random.Random(args.seed)
        failing = set(rng.sample(range(args.branches), round(args.fail_fraction * args.branches)))
        branches = make_branches(repo, args.branches, failing)
        if args.detached_target:
            _git(repo, "checkout", "-q", "--detach")
        setup_s = time.monotonic() - started
        fs_before = file_creation_ms(work, args.files)
        state = StateDir(work / "state")
        for name in branches:
            mq.enqueue(state, repo, name, owner="runner-bench")
        gate = Gate(f"sleep {args.gate_seconds}; test ! -e {FAIL_MARKER}", args.gate_seconds + 60)
        config = mq.QueueConfig(gates=(gate,))
        started = time.monotonic()
        outcomes = mq.process_all(state, repo, config)
        wall = time.monotonic() - started
        fs_after = file_creation_ms(work, args.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    merged = [o for o in outcomes if o.merged]
    git_ms = [1000 * (o.timings.get("rebase", 0) + o.timings.get("swap", 0)) for o in merged]
    over_ms = [1000 * (o.timings["total"] - o.timings.get("gates", 0)) for o in outcomes]
    cleanup_ms = [1000 * o.timings.get("cleanup", 0) for o in outcomes]
    limit = 60.0 / args.gate_seconds
    entries_per_min = 60.0 * len(outcomes) / wall
    return {
        "schema": 1,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "git": _git(REPO, "--version")},
        "params": {"branches": args.branches, "gate_seconds": args.gate_seconds,
                   "fail_fraction": args.fail_fraction, "commits": args.commits,
                   "files": args.files, "target": "detached" if args.detached_target
                   else "checked out (clean)", "setup_s": round(setup_s, 2)},
        "results": {
            "entries": len(outcomes), "merged": len(merged), "failed": len(outcomes) - len(merged),
            "wall_s": round(wall, 3),
            "entries_per_min": round(entries_per_min, 2),
            "merges_per_min": round(60.0 * len(merged) / wall, 2),
            "limit_per_min": round(limit, 2),
            "throughput_vs_limit": round(entries_per_min / limit, 4),
            "git_ms": {"median": round(statistics.median(git_ms), 1),
                       "p95": round(_percentile(git_ms, 95), 1),
                       "max": round(max(git_ms), 1)} if git_ms else None,
            "overhead_ms": {"median": round(statistics.median(over_ms), 1),
                            "p95": round(_percentile(over_ms, 95), 1),
                            "max": round(max(over_ms), 1)},
            "fs_create_files_ms": {"before": fs_before, "after": fs_after},
            "worktree_removal_ms": {"median": round(statistics.median(cleanup_ms), 1),
                                    "p95": round(_percentile(cleanup_ms, 95), 1)},
        },
        "targets": {"throughput_within_5pct_at_p0": args.fail_fraction > 0
                    or entries_per_min / limit >= 0.95,
                    "git_p95_le_60ms": bool(git_ms) and _percentile(git_ms, 95) <= 60.0},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, default=20)
    parser.add_argument("--gate-seconds", type=float, default=1.0, help="T")
    parser.add_argument("--fail-fraction", type=float, default=0.0, help="p")
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--detached-target", action="store_true",
                        help="target not checked out: land with update-ref only")
    args = parser.parse_args()
    json.dump(run(args), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
