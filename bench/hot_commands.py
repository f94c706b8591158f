"""Whole-process wall time of the hot commands, printed as JSON.

Agents call `attractor identity update-liveness`, `attractor hook update-phase` and
`attractor signal send` many times an hour, each a new process. This starts each one as a real
process (`python -m attractor …`, plus the `scripts/` shims) against a private state dir,
interleaved with a bare `python -c pass`, and reports median and p95 in milliseconds, and each
median as a ratio to bare python's median of the same run. Targets: <= 50 ms per hot command on
this machine, and each hot command <= 2.5 x bare python (`goal_met`, issue 13), side by side in
one run. The installed console script (`attractor …`, whose wrapper pip writes and which imports
`re` before attractor does) is timed too, for comparison; the goal is judged on the commands that
agents' prompts use (`python -m attractor`, the `scripts/` shims).

Two modes: `cached` is a normal install, where Python keeps compiled bytecode (here in a private
PYTHONPYCACHEPREFIX, so the checkout stays clean); `no_bytecode_cache` sets
PYTHONDONTWRITEBYTECODE=1, as some sandboxes do, so every run compiles attractor's modules again
(the standard library keeps its installed bytecode).

It also runs each hot command once and records which modules it imported (from sys.modules at
exit): the tmux and git doors (attractor.tmux, attractor.gitops), pydot and watchdog must not
be among them, or the run fails.

Usage: python bench/hot_commands.py [--runs N] > result.json
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

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("attractor.tmux", "attractor.gitops", "pydot", "watchdog", "yaml")
FORBIDDEN = ("attractor.tmux", "attractor.gitops", "pydot", "watchdog")
# the standard-library modules the hot commands' short path (cli/hot.py) keeps out of start-up
LEAN = ("logging", "dataclasses", "argparse", "pathlib", "typing", "enum", "re", "json", "inspect")
GOAL_RATIO = 2.5
CONSOLE_SCRIPT = "console script: identity update-liveness"


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _commands(state: Path) -> dict[str, list[str]]:
    py = sys.executable
    sd = ["--state-dir", str(state)]
    commands = {
        "python -c pass": [py, "-c", "pass"],
        "identity update-liveness": [py, "-m", "attractor", "identity", "update-liveness",
                                     "runner", "bench", *sd],
        "hook update-phase": [py, "-m", "attractor", "hook", "update-phase", "runner", "bench",
                              "{phase}", *sd],
        "scripts/identity_registry.py --update-liveness": [
            py, str(REPO / "scripts" / "identity_registry.py"), "--update-liveness", "runner",
            "bench", *sd],
        "scripts/hook_manager.py --update-phase": [
            py, str(REPO / "scripts" / "hook_manager.py"), "--update-phase", "runner", "bench",
            "{phase}", *sd],
    }
    try:
        import attractor.store.signals  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        commands["signal send"] = [py, "-m", "attractor", "signal", "send", "ORCHESTRATOR_DONE",
                                   "--to", "runner-bench", "--payload", '{"node": "bench"}', *sd]
    script = Path(py).parent / "attractor"
    if script.exists():
        commands[CONSOLE_SCRIPT] = [str(script), "identity", "update-liveness", "runner", "bench", *sd]
    return commands


_WRAP = """
import atexit, runpy, sys
out, target = sys.argv[1], sys.argv[2:]
def _record():
    loaded = sorted(sys.modules)  # before json, which the record itself needs
    import json
    open(out, "w").write(json.dumps(loaded))
atexit.register(_record)
if target[0] == "-m":
    sys.argv = [target[1], *target[2:]]
    runpy.run_module(target[1], run_name="__main__", alter_sys=True)
else:  # a script, run as `python SCRIPT` runs it (runpy.run_path would import pkgutil, typing, re)
    sys.argv = target
    sys.path[0] = __import__("os").path.dirname(target[0])
    with open(target[0]) as source:
        code = compile(source.read(), target[0], "exec")
    exec(code, {"__name__": "__main__", "__file__": target[0]})
"""


def _imported(argv: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    """Run `argv` (a `python …` command line) once and report what it imported."""
    subprocess.run([argv[0], "-c", _WRAP, str(out), *argv[1:]], env=env, capture_output=True,
                   check=True)
    modules = json.loads(out.read_text())
    return {
        "modules": len(modules),
        "heavy_imported": sorted(h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)),
        "lean_imported": sorted(m for m in LEAN if m in modules),
        "attractor_modules": [name for name in modules if name.startswith("attractor")],
    }


def _time(commands: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in commands}
    phases = ("impl_complete", "executing")
    for run in range(runs):
        for name, argv in commands.items():
            # alternate the phase so every update-phase is a real, fsynced move
            index = run * 2 + (1 if "hook_manager" in name else 0)
            concrete = [a.replace("{phase}", phases[index % 2]) for a in argv]
            start = time.perf_counter()
            proc = subprocess.run(concrete, env=env, capture_output=True)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed: {proc.stderr.decode().strip()}")
            times[name].append(elapsed)
    base = statistics.median(times["python -c pass"])
    result: dict[str, Any] = {
        name: {
            "median_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(_percentile(values, 95) * 1000, 1),
            "over_bare_python_ms": round((statistics.median(values) - base) * 1000, 1),
            "ratio_to_bare_python": round(statistics.median(values) / base, 2),
        }
        for name, values in times.items()
    }
    judged = [name for name in times if name not in ("python -c pass", CONSOLE_SCRIPT)]
    result["goal"] = f"each hot command <= {GOAL_RATIO} x bare python (median, this run)"
    result["goal_met"] = all(result[name]["ratio_to_bare_python"] <= GOAL_RATIO for name in judged)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="hot command start-up times")
    parser.add_argument("--runs", type=int, default=40, help="runs per command (default 40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="att-hot-") as tmp:
        state = Path(tmp) / "state"
        env = {**os.environ, "ATTRACTOR_STATE_DIR": str(state),
               "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache")}
        for key in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE"):
            env.pop(key, None)
        setup = [sys.executable, "-m", "attractor"]
        for argv in (["identity", "create", "runner", "bench"],
                     ["hook", "create", "runner", "bench"],
                     ["hook", "update-phase", "runner", "bench", "executing"]):
            subprocess.run([*setup, *argv], env=env, check=True, capture_output=True)
        commands = _commands(state)
        result: dict[str, Any] = {"python": sys.version.split()[0], "runs": args.runs,
                                  "cpus": os.cpu_count(), "target_ms": 50}
        result["cached"] = _time(commands, env, args.runs)
        sandbox = {key: value for key, value in env.items() if key != "PYTHONPYCACHEPREFIX"}
        result["no_bytecode_cache"] = _time(
            commands, {**sandbox, "PYTHONDONTWRITEBYTECODE": "1"}, max(5, args.runs // 2)
        )
        imports = {
            name: _imported([a.replace("{phase}", "failed") for a in argv], env,
                            Path(tmp) / "modules.json")
            for name, argv in commands.items() if name not in ("python -c pass", CONSOLE_SCRIPT)
        }
        result["imports"] = imports
    print(json.dumps(result, indent=2))
    bad = {name: sorted(set(info["heavy_imported"]) & set(FORBIDDEN))
           for name, info in imports.items()}
    bad = {name: mods for name, mods in bad.items() if mods}
    if bad:
        print(f"error: hot commands import heavy modules: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
