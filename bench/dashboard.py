"""The dashboard in a real browser: how soon an event shows in the page with 40 agents live, and
how long the agents' page takes to render a run of 200 nodes; printed as JSON (progress on
stderr).

Isolation. A temporary HOME with XDG_RUNTIME_DIR, XDG_CONFIG_HOME and XDG_STATE_HOME inside it,
a private tmux socket `bench-dash-<random>`, a fixed git author; every run has its own target
repository and state directory. The browser is the system's chromium, headless, driven by
Playwright (`tests/dashboard_helpers.py`). At the end, also after a failure: `attractor stop`,
the dashboard stopped, the tmux server of the socket killed, the temporary directory removed.

Part 1, event -> page (`live`). A real run of `--agents` (40) parallel scripted nodes whose
script is `sleep 900` (launcher, guardian, 40 runners and 40 agents in tmux), measured once every
runner and agent is active. `attractor dashboard --port 0` on its state directory; the run's
agents page is opened (`/runs/<run>/tree`) and the bench waits until its stream is live. Then
`--events` marker events (`action` events with `by: bench`, through `store.checkpoint.append_event`,
the writer every event goes through) are appended `--gap` seconds apart (+-30 % jitter). For each,
from the line's `at` (stamped as it is written) to:

    delivered_ms   the page's EventSource handler got it (the page script's own listener runs
                   right after and sets body.dataset.eventsSeen)
    visible_ms     body.dataset.eventsSeen names it (a MutationObserver on <body>, with
                   performance.timeOrigin + performance.now(), the same wall clock as `at`)
    refreshed_ms   the page content was swapped in from a fragment request that began after
                   the event arrived (the agents page re-rendered with the event in it)

Each: median, p95 (nearest rank), min, max. The page's fragment requests (`fragment_ms`: start to
response) and the server time of one tree render of the live run (`server_tree_ms`, GET with the
token header, `--rounds` times) are reported beside them.

Part 2, first render of 200 nodes (`big`). A real run of `--nodes` (200) parallel scripted
nodes with max-agents 2, stopped with `attractor stop` once both runners are active: a genuine
checkpoint of 200 nodes (2 stopped, the rest pending) and its state. A new dashboard; then
`--rounds` times, in a fresh page each: navigation start -> responseStart (`ttfb_ms`: the
server's render), -> DOMContentLoaded end (`dcl_ms`), -> load end (`load_ms`), and the number of
cards (must be 200 plus start and exit); and `--rounds` GETs of the page (`server_tree_ms`) and of
its `?fragment=1` (`server_fragment_ms`) outside the browser. The load average is reported at the
start and the end: the machine may be shared.

Usage: .venv/bin/python bench/dashboard.py [--agents 40] [--events 40] [--gap 0.3] [--nodes 200] [--rounds 15]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for entry in (REPO, REPO / "src"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from _common import load, log, stats_ms, wait_for  # noqa: E402
from tests.dashboard_helpers import (  # noqa: E402
    PAGE_PROBE,
    VIEWPORT,
    Dashboard,
    chromium_path,
    end_tmux_server,
    isolated_env,
    launch_browser,
    missing_browser,
)

# beside the page probe: when body.dataset.eventsSeen changes, when #content is swapped, and
# when each fragment request starts and ends (all in ms since the epoch)
BENCH_PROBE = """
(() => {
  const now = () => performance.timeOrigin + performance.now();
  window.__bench = { seen: [], swaps: [], fetches: [] };
  const nativeFetch = window.fetch;
  window.fetch = function (input, init) {
    const url = String(input && input.url ? input.url : input);
    if (!url.includes("fragment=1")) return nativeFetch.apply(this, arguments);
    const row = { start: now(), end: null };
    window.__bench.fetches.push(row);
    return nativeFetch.apply(this, arguments).then((r) => { row.end = now(); return r; });
  };
  document.addEventListener("DOMContentLoaded", () => {
    new MutationObserver(() => {
      window.__bench.seen.push({ n: Number(document.body.dataset.eventsSeen || 0), t: now() });
    }).observe(document.body, { attributes: true, attributeFilter: ["data-events-seen"] });
    new MutationObserver(() => { window.__bench.swaps.push(now()); })
      .observe(document.getElementById("content"), { childList: true });
  });
})();
"""


def make_target(path: Path, env: dict[str, str]) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    (path / "README.md").write_text("dashboard bench target\n")
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "-c", "commit.gpgsign=false", "commit", "-q", "-m", "start"], check=True,
                   env=env)


def pipeline_text(name: str, nodes: int) -> str:
    body = "".join(f'  n{i} [shape=box, prompt="wait", script="sleep 900"]\n  start -> n{i} -> exit\n'
                   for i in range(1, nodes + 1))
    return f"digraph {name} {{\n  start [shape=Mdiamond]\n  exit [shape=Msquare]\n{body}}}\n"


def active(state: Path, role: str) -> int:
    count = 0
    for path in (state / "identities").glob(f"{role}-*.json") if (state / "identities").is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            count += json.loads(path.read_text()).get("status") == "active"
    return count


class Run:
    """`attractor run` of N sleeping nodes, in the foreground (its launcher follows it)."""

    def __init__(self, work: Path, env: dict[str, str], socket: str, name: str, nodes: int, max_agents: int) -> None:
        self.env, self.socket, self.nodes, self.max_agents = env, socket, nodes, max_agents
        self.target, self.state = work / f"{name}-target", work / f"{name}-state"
        make_target(self.target, env)
        pipe = work / f"{name}.dot"
        pipe.write_text(pipeline_text(name, nodes))
        argv = [sys.executable, "-m", "attractor", "run", str(pipe), "--target-dir", str(self.target),
                "--state-dir", str(self.state), "--agent", "scripted", "--tmux-socket", socket,
                "--max-agents", str(max_agents), "--timeout", "3600"]
        self.launcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                         start_new_session=True)

    @property
    def run_id(self) -> str:
        return next((self.state / "runs").glob("*/checkpoint.json")).parent.name

    def wait_active(self) -> float:
        began = time.monotonic()
        wanted = min(self.nodes, self.max_agents)
        wait_for(lambda: active(self.state, "runner") >= wanted and active(self.state, "orchestrator") >= wanted,
                 60 + 3 * wanted, f"{wanted} runners and agents active")
        return round(time.monotonic() - began, 1)

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "attractor", "stop", "--state-dir", str(self.state),
                        "--tmux-socket", self.socket], capture_output=True, env=self.env, timeout=180)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.launcher.pid, 9)
        self.launcher.wait(timeout=10)


def server_times(dash: Dashboard, path: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        status, _, seconds = dash.get(path)
        assert status == 200, status
        out.append(seconds * 1000)
    return out


def live_part(browser: Any, work: Path, env: dict[str, str], socket: str, args: argparse.Namespace) -> dict[str, Any]:
    from attractor.store import checkpoint as cp_store
    from attractor.store.statedir import StateDir

    run = Run(work, env, socket, "live", args.agents, args.agents)
    dash: Dashboard | None = None
    try:
        up_s = run.wait_active()
        log(f"live: {args.agents} runners and agents active after {up_s}s")
        rid = run.run_id
        dash = Dashboard(run.state, tmux_socket=socket, env=env, log=work / "dashboard-live.log").start()
        page = browser.new_page(viewport=VIEWPORT)
        page.add_init_script(PAGE_PROBE)
        page.add_init_script(BENCH_PROBE)
        page.goto(dash.page_url(f"/runs/{rid}/tree"))
        page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=30_000)
        written = len((run.state / "runs" / rid / "events.jsonl").read_text().splitlines())
        page.wait_for_function(f"window.__att.events.length >= {written}", timeout=30_000)  # the replay, if any
        time.sleep(1.0)
        state = StateDir(run.state)
        markers: list[str] = []
        for i in range(args.events):
            marker = f"bench-{i}"
            cp_store.append_event(state, rid, cp_store.Event.ACTION, action="bench-marker", by="bench", detail=marker)
            markers.append(marker)
            time.sleep(args.gap * random.uniform(0.7, 1.3))
        lines = [json.loads(line) for line in (run.state / "runs" / rid / "events.jsonl").read_text().splitlines()]
        ids = {line.get("detail"): (number, line["at"]) for number, line in enumerate(lines, start=1)
               if line.get("event") == "action" and line.get("by") == "bench"}
        last_id = max(number for number, _ in ids.values())
        page.wait_for_function(f"window.__att.events.some(e => e.id >= {last_id})", timeout=30_000)
        time.sleep(1.5)  # the last refreshes
        att = page.evaluate("window.__att")
        bench = page.evaluate("window.__bench")
        from attractor import clock

        delivered, visible, refreshed = [], [], []
        for marker in markers:
            number, at = ids[marker]
            written_ms = clock.parse_iso(at) * 1000
            index = next(k for k, e in enumerate(att["events"]) if e["id"] == number)
            arrived = att["events"][index]["t"]
            delivered.append(arrived - written_ms)
            shown = next((s["t"] for s in bench["seen"] if s["n"] >= index + 1), None)
            if shown is not None:
                visible.append(shown - written_ms)
            began = next((f["start"] for f in bench["fetches"] if f["start"] >= arrived), None)
            swap = next((t for t in bench["swaps"] if began is not None and t >= began), None)
            if swap is not None:
                refreshed.append(swap - written_ms)
        fragment = [f["end"] - f["start"] for f in bench["fetches"] if f["end"] is not None]
        cards = page.locator(".card.node").count()
        page.close()
        tree_ms = server_times(dash, f"/runs/{rid}/tree", args.rounds)
        result = {"agents": args.agents, "chain_up_s": up_s, "cards": cards, "events": len(markers),
                  "gap_s": args.gap, "delivered_ms": stats_ms(delivered), "visible_ms": stats_ms(visible),
                  "refreshed_ms": stats_ms(refreshed), "fragment_ms": stats_ms(fragment),
                  "server_tree_ms": stats_ms(tree_ms)}
        log(f"live: visible median {result['visible_ms'].get('median')} ms, "
            f"p95 {result['visible_ms'].get('p95')} ms; refreshed median {result['refreshed_ms'].get('median')} ms")
        return result
    finally:
        if dash is not None:
            dash.stop()
        run.stop()


def big_part(browser: Any, work: Path, env: dict[str, str], socket: str, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(work, env, socket, "big", args.nodes, 2)
    try:
        up_s = run.wait_active()
    finally:
        run.stop()
    rid = run.run_id
    cp = json.loads((run.state / "runs" / rid / "checkpoint.json").read_text())
    log(f"big: run {rid} of {len(cp['nodes'])} nodes, {cp['status']}")
    dash = Dashboard(run.state, tmux_socket=socket, env=env, log=work / "dashboard-big.log").start()
    try:
        context = browser.new_context(viewport=VIEWPORT)
        context.new_page().goto(dash.page_url("/"))  # the token's cookie, once for the context
        ttfb, dcl, loaded, cards = [], [], [], set()
        for _ in range(args.rounds):
            fresh = context.new_page()
            fresh.goto(f"{dash.base}/runs/{rid}/tree", wait_until="load")
            timing = fresh.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0]; "
                                    "return [n.responseStart - n.startTime, n.domContentLoadedEventEnd - n.startTime, "
                                    "n.loadEventEnd - n.startTime]; })()")
            ttfb.append(timing[0])
            dcl.append(timing[1])
            loaded.append(timing[2])
            cards.add(fresh.locator(".card.node").count())
            fresh.close()
        context.close()
        tree_ms = server_times(dash, f"/runs/{rid}/tree", args.rounds)
        fragment_ms = server_times(dash, f"/runs/{rid}/tree?fragment=1", args.rounds)
        _, body, _ = dash.get(f"/runs/{rid}/tree")
    finally:
        dash.stop()
    result = {"nodes": len(cp["nodes"]), "status": cp["status"], "chain_up_s": up_s, "cards": sorted(cards),
              "html_kb": round(len(body) / 1024, 1), "ttfb_ms": stats_ms(ttfb), "dcl_ms": stats_ms(dcl),
              "load_ms": stats_ms(loaded), "server_tree_ms": stats_ms(tree_ms),
              "server_fragment_ms": stats_ms(fragment_ms)}
    log(f"big: DOMContentLoaded median {result['dcl_ms'].get('median')} ms, "
        f"server render median {result['server_tree_ms'].get('median')} ms")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.3)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    problem = missing_browser()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    socket = f"bench-dash-{secrets.token_hex(4)}"
    env = isolated_env(work, socket, author="Bench")
    for key in ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):  # this process's own calls too
        os.environ[key] = env[key]
    result: dict[str, Any] = {"load_start": load()}
    try:
        with sync_playwright() as p:  # a TimeoutError of wait_for ends the bench with its line
            browser = launch_browser(p, chromium_path())
            try:
                result["live"] = live_part(browser, work, env, socket, args)
                result["big"] = big_part(browser, work, env, socket, args)
            finally:
                browser.close()
    finally:
        end_tmux_server(socket)
        shutil.rmtree(work, ignore_errors=True)
    result["load_end"] = load()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except TimeoutError as exc:
        raise SystemExit(f"error: {exc}") from None
