"""The dashboard in a real browser: headless chromium (the system's, driven by Playwright) on a
real `attractor dashboard --port 0` process, watching real runs (real tmux on the test's private
socket, real git, scripted agents).

Each test writes screenshots of the overview, the run's tree and its timeline to
$ATTRACTOR_SCREENSHOTS/<test> (default: the test's tmp_path/screenshots). Outside CI a missing
chromium or Playwright skips these tests with the reason; under CI=true it fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attractor.agents import Usage
from attractor.store import agent_sessions
from attractor.store.statedir import StateDir
from tests.chain_helpers import codergen, git_show, launch, module_steps, pipeline_file, run_id, tool
from tests.dashboard_helpers import (
    PAGE_PROBE,
    VIEWPORT,
    Dashboard,
    browser_or_skip,
    epoch_ms,
    event_lines,
    launch_browser,
)
from tests.helpers import REPO_ROOT, retry_until

DEMO = REPO_ROOT / "pipelines" / "demo.dot"

pytestmark = pytest.mark.timeout(150)

LATENCY_BOUND_MS = 1000.0
PERMISSION_MENU = ("menu Bash command\\n   pytest -q\\n\\nDo you want to proceed?"
                   "|Yes|No, and tell the agent what to do\n")
# the page's 5 s refresh timer, switched off where a test measures what the live stream alone does
NO_TIMER = """
(() => {
  const native = window.setInterval;
  window.setInterval = function (fn, ms, ...rest) { return ms === 5000 ? 0 : native(fn, ms, ...rest); };
})();
"""


@pytest.fixture
def chromium() -> str:
    return browser_or_skip()


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    root = os.environ.get("ATTRACTOR_SCREENSHOTS")
    path = Path(root) / request.node.name if root else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p, chromium)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def dashboard(chain: tuple[Path, Path], tmux_socket: str, tmp_path: Path) -> Iterator[Dashboard]:
    _, state = chain
    dash = Dashboard(state, tmux_socket=tmux_socket, log=tmp_path / "dashboard.log").start()
    yield dash
    dash.stop()


def _page(browser: Any, *scripts: str) -> Any:
    page = browser.new_page(viewport=VIEWPORT)
    for script in (PAGE_PROBE, *scripts):
        page.add_init_script(script)
    return page


def _open_live(page: Any, dash: Dashboard, path: str) -> None:
    page.goto(dash.page_url(path))
    page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=10_000)


def _screenshots(browser: Any, dash: Dashboard, run: str, shots: Path) -> None:
    """Overview, tree, timeline and costs as they are now, from a page of their own."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        for name, path in (("overview", "/"), ("tree", f"/runs/{run}/tree"), ("timeline", f"/runs/{run}/timeline"),
                           ("costs", "/costs")):
            page.goto(dash.page_url(path))
            page.wait_for_load_state("load")
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    finally:
        page.close()
    for name in ("overview", "tree", "timeline"):
        assert (shots / f"{name}.png").stat().st_size > 1000


def _finish(proc: subprocess.Popen[str], seconds: float = 90) -> tuple[int, str]:
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out + err


def _cards(page: Any) -> dict[str, str]:
    found: dict[str, str] = page.eval_on_selector_all(
        ".card.node[data-node]", "cards => Object.fromEntries(cards.map(c => [c.dataset.node, c.dataset.status]))")
    return found


def _first_event(state: Path, run: str, kind: str, node: str) -> dict[str, Any] | None:
    return next((e for e in event_lines(state, run) if e.get("event") == kind and e.get("node") == node), None)


def _latency_ms(page: Any, event: dict[str, Any], node: str, status: str) -> float:
    """From the event's line written (its `at`) to the page's first showing `node` as `status`."""
    changes = page.evaluate("window.__att.statuses")
    seen = [c["t"] for c in changes if c["node"] == node and c["status"] == status]
    assert seen, f"the page never showed {node} as {status}: {changes}"
    return float(seen[0]) - epoch_ms(event["at"])


def test_tree_shows_every_node_and_a_dialog_answered_from_the_page(
        chain: tuple[Path, Path], dashboard: Dashboard, browser: Any, shots: Path) -> None:
    """(a) every node has its card; (b) a card changes colour within 1 s of the event that
    changes it; (c) an agent at a dialog is needs-input, Yes on the page answers it, the agent
    goes on and the run finishes, and the log says the dashboard did it."""
    target, state = chain
    # the dialog comes once the rest of the run has gone quiet, so its event is the only news
    script = "sleep 5\n" + PERMISSION_MENU + module_steps("asks", 3) + "commit asks\nreport"
    body = (codergen("asks", script) + tool("check_asks")
            + codergen("other", module_steps("other", 4) + "commit other\nreport") + tool("check_other"))
    pipe = pipeline_file(target.parent, body, "  start -> asks -> check_asks -> exit\n"
                                              "  start -> other -> check_other -> exit\n")
    proc = launch(pipe, target, state)
    try:
        run = retry_until(lambda: run_id(state), 20, what="the run's checkpoint")
        page = _page(browser, NO_TIMER)
        _open_live(page, dashboard, f"/runs/{run}/tree")
        assert set(_cards(page)) == {"start", "asks", "check_asks", "other", "check_other", "exit"}
        for layer in ("launcher", "guardian"):
            _wait_js(page, f"!document.querySelector('.layer-card[data-agent={layer}]')"
                           ".textContent.includes('not registered')", 15, f"the {layer}'s card")

        page.wait_for_selector('.card.node[data-node="asks"][data-status="needs-input"]', timeout=30_000)
        waiting = _first_event(state, run, "needs_input", "asks")
        assert waiting is not None
        before = [e for e in event_lines(state, run) if e["id"] < waiting["id"]][-1]
        assert epoch_ms(waiting["at"]) - epoch_ms(before["at"]) > 2 * LATENCY_BOUND_MS, (before, waiting)
        assert _latency_ms(page, waiting, "asks", "needs-input") < LATENCY_BOUND_MS
        card = page.locator('.card.node[data-node="asks"]')
        assert "Do you want to proceed?" in card.locator(".question").inner_text()
        lines = card.locator(".agentline").all_inner_texts()
        assert [line.split(":", 1)[0].strip() for line in lines] == ["runner", "agent (scripted)"], lines
        _screenshots(browser, dashboard, run, shots)

        card.locator('button[data-action="answer"][data-reply="yes"]').click()
        page.wait_for_selector('.card.node[data-node="asks"]:not([data-status="needs-input"])', timeout=20_000)
        given = retry_until(lambda: _first_event(state, run, "input_given", "asks"), 10, what="input_given")
        assert _latency_ms(page, given, "asks", "working") < LATENCY_BOUND_MS

        code, out = _finish(proc)
        assert code == 0, out
        page.wait_for_selector('.card.node[data-node="asks"][data-status="done"]', timeout=10_000)
        merged = _first_event(state, run, "merged", "asks")
        assert merged is not None
        assert _latency_ms(page, merged, "asks", "done") < LATENCY_BOUND_MS
        latencies = {kind: round(_latency_ms(page, event, "asks", status), 1) for kind, event, status in (
            ("needs_input", waiting, "needs-input"), ("input_given", given, "working"), ("merged", merged, "done"))}
        (shots / "latency_ms.json").write_text(json.dumps(latencies) + "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert git_show(target, "main", "app/asks.py") == "VALUE = 3\n"
    actions = [e for e in event_lines(state, run) if e["event"] == "action"]
    assert [(a["action"], a["node"], a["reply"], a["ok"], a["chosen"]) for a in actions] == [
        ("answer", "asks", "yes", True, "Yes")]
    assert "@dashboard" in actions[0]["by"]
    assert set(_cards(page).values()) == {"done"}
    _screenshots(browser, dashboard, run, shots)


def test_pause_from_the_page_starts_no_new_agent_until_unpaused(
        chain: tuple[Path, Path], dashboard: Dashboard, browser: Any, shots: Path) -> None:
    """(d) three nodes, one agent at a time: paused while the first works, the first finishes
    and no other starts; unpaused, the rest run and the run succeeds."""
    target, state = chain
    gate = target.parent / "go"
    nodes = ("one", "two", "three")
    body = "".join(codergen(n, f"run while [ ! -e {gate} ]; do sleep 0.05; done\n" + module_steps(n, i)
                            + f"commit {n}\nreport") for i, n in enumerate(nodes, start=1))
    pipe = pipeline_file(target.parent, body, "".join(f"  start -> {n} -> exit\n" for n in nodes))
    proc = launch(pipe, target, state, "--max-agents", "1")
    try:
        run = retry_until(lambda: run_id(state), 20, what="the run's checkpoint")
        page = _page(browser)
        _open_live(page, dashboard, f"/runs/{run}/tree")
        retry_until(lambda: _spawned(state, run), 30, what="the first runner")
        page.locator('button[data-action="pause"]').click()
        page.wait_for_selector(".runbar .pill.paused", timeout=10_000)
        paused = retry_until(lambda: [e for e in event_lines(state, run) if e["event"] == "run_paused"], 10,
                             what="run_paused")
        assert "@dashboard" in paused[0]["by"]
        first = _spawned(state, run)
        assert len(first) == 1

        gate.touch()  # the first agent finishes and merges while the run is paused
        retry_until(lambda: [e for e in event_lines(state, run) if e["event"] == "merged"], 30, what="first merge")
        _stays(lambda: _spawned(state, run) == first, 3.0, what="no new runner while paused")
        statuses = _cards(page)
        assert statuses[first[0]] == "done"
        assert sorted(statuses[n] for n in nodes if n != first[0]) == ["queued", "queued"], statuses
        _screenshots(browser, dashboard, run, shots)

        page.locator('button[data-action="unpause"]').click()
        code, out = _finish(proc)
        assert code == 0, out
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
    assert sorted(_spawned(state, run)) == sorted(nodes)
    kinds = [e["event"] for e in event_lines(state, run)]
    assert kinds.index("run_paused") < kinds.index("run_unpaused")
    page.wait_for_function("[...document.querySelectorAll('.card.node')].every(c => c.dataset.status === 'done')",
                           timeout=10_000)  # the page follows to the end


def test_timeline_and_costs_fill_in_during_the_demo(
        chain: tuple[Path, Path], dashboard: Dashboard, browser: Any, shots: Path) -> None:
    """(e) the demo pipeline: each node gets its lane and bars on the live timeline (the failed
    first attempt of add_cli and its retry are marked); the costs page has the run's row at
    once,
    and per node the usage each agent's session record holds (the scripted agent reports none:
    the test records some, as an agent CLI's hooks would, while the agents work)."""
    target, state = chain
    usage = {node: Usage(input_tokens=1000 * i, output_tokens=100 * i, cost_usd=0.01 * i, source="test")
             for i, node in enumerate(("add_ops", "add_format", "add_cli"), start=1)}
    proc = launch(DEMO, target, state)
    try:
        run = retry_until(lambda: run_id(state), 20, what="the run's checkpoint")
        costs = _page(browser)
        costs.goto(dashboard.page_url("/costs"))
        assert costs.locator("svg.chart text", has_text=run).count() == 1  # the run's row, before any usage
        assert costs.locator("table.costs-nodes").count() == 0
        page = _page(browser)
        _open_live(page, dashboard, f"/runs/{run}/timeline")
        retry_until(lambda: _record_usage(state, run, usage), 60, what="every agent's session record")
        code, out = _finish(proc, 120)
        assert code == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
    page.wait_for_selector('.lane[data-node="add_cli"] .tbar.merging', timeout=10_000)
    lanes = page.eval_on_selector_all(".lane[data-node]", "ls => Object.fromEntries(ls.map(l => "
                                      "[l.dataset.node, [...l.querySelectorAll('.tbar')].map(b => b.classList[1])]))")
    assert {"add_ops", "add_format", "check_ops", "check_format", "add_cli", "check_cli"} <= set(lanes)
    for node in ("add_ops", "add_format", "add_cli"):  # the validators' work shows as the validating bars
        assert {"running", "validating", "merging"} <= set(lanes[node]), lanes
    assert lanes["add_cli"].count("validating") == 2  # its first attempt fails validation on purpose
    assert page.locator('.lane[data-node="add_cli"] .mark.failure').count() >= 1
    assert page.locator('.lane[data-node="add_cli"] .mark.retry').count() == 1

    costs.reload()
    rows = costs.eval_on_selector_all("table.costs-nodes tbody tr", "rs => rs.map(r => "
                                      "[...r.cells].map(c => c.textContent.trim()))")
    assert sorted(rows) == sorted([
        [run, "add_ops", "scripted", "1,000", "100", "1,100", "$0.0100"],
        [run, "add_format", "scripted", "2,000", "200", "2,200", "$0.0200"],
        [run, "add_cli", "scripted", "3,000", "300", "3,300", "$0.0300"]])
    assert costs.locator("svg.chart text", has_text="$0.0600 · 6,600 tok").count() == 1
    _screenshots(browser, dashboard, run, shots)


def _record_usage(state: Path, run: str, usage: dict[str, Usage]) -> bool:
    """Put each node's usage in its agent's session record once the runner has made it; True
    when every one holds it."""
    done = 0
    for node, numbers in usage.items():
        agent = f"orchestrator-{node}"
        session = agent_sessions.find(StateDir(state), agent)
        if session is None or session.run_id != run:
            continue
        if session.usage != numbers.to_json():
            agent_sessions.update(StateDir(state), agent, usage=numbers.to_json())
        done += 1
    return done == len(usage)


def test_a_dropped_stream_catches_up_with_no_event_twice(
        chain: tuple[Path, Path], dashboard: Dashboard, browser: Any, shots: Path, tmux_socket: str,
        tmp_path: Path) -> None:
    """(f) the dashboard stops while the page stays open; the run goes on and writes events
    meanwhile; a new dashboard on the same port: the page reconnects with its last event id and
    receives every event of the run exactly once."""
    target, state = chain
    gate = target.parent / "go"
    script = f"run while [ ! -e {gate} ]; do sleep 0.05; done\n" + module_steps("feature", 5) + "commit f\nreport"
    pipe = pipeline_file(target.parent, codergen("feature", script) + tool("check"),
                         "  start -> feature -> check -> exit\n")
    proc = launch(pipe, target, state)
    second: Dashboard | None = None
    try:
        run = retry_until(lambda: run_id(state), 20, what="the run's checkpoint")
        retry_until(lambda: _spawned(state, run), 30, what="the runner")
        page = _page(browser)
        _open_live(page, dashboard, f"/runs/{run}/tree")
        start = int(page.evaluate("document.body.dataset.cursor").rsplit(":", 1)[1])
        dashboard.stop()
        page.wait_for_function("document.getElementById('live').textContent === 'reconnecting'", timeout=10_000)
        before = len(event_lines(state, run))
        gate.touch()  # the agent finishes: runner, guardian and merge queue write their events
        code, out = _finish(proc)
        assert code == 0, out
        written = event_lines(state, run)
        assert len(written) > before + 3 and written[-1]["event"] == "run_finished"
        assert page.evaluate("window.__att.events.length") <= before - start  # nothing came while down

        second = Dashboard(state, port=dashboard.port, tmux_socket=tmux_socket, token=dashboard.token,
                           log=tmp_path / "dashboard2.log")  # the same address and token: the page's
        second.start()
        _wait_js(page, f"window.__att.events.length >= {len(written) - start}", 15, "the page to catch up")
        _wait_js(page, "document.getElementById('live').textContent === 'live'", 5, "the page to be live")
        _stays(lambda: page.evaluate("window.__att.events.length") == len(written) - start, 1.5,
               what="no event delivered twice")
        got = page.evaluate("window.__att.events")
        assert [e["id"] for e in got] == list(range(start + 1, len(written) + 1))
        assert [e["event"] for e in got] == [e["event"] for e in written[start:]]
        assert page.evaluate("window.__att.opens") >= 2
        assert page.evaluate("document.body.dataset.lastEventId") == f"{run}:{len(written)}"
        page.wait_for_selector('.card.node[data-node="feature"][data-status="done"]', timeout=10_000)
        _screenshots(browser, second, run, shots)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
        if second is not None:
            second.stop()


def _wait_js(page: Any, expression: str, seconds: float, what: str) -> None:
    """Wait for a JS expression in the page to hold; the failure shows what the page received."""
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_function(expression, timeout=seconds * 1000)
    except PageTimeout:
        seen = page.evaluate("({live: document.getElementById('live').textContent, att: window.__att, "
                             "last: document.body.dataset.lastEventId})")
        raise AssertionError(f"timed out after {seconds}s waiting for {what} ({expression}); the page: {seen}") \
            from None


def _spawned(state: Path, run: str) -> list[str]:
    return [e["node"] for e in event_lines(state, run) if e["event"] == "runner_spawned"]


def _stays(predicate: Any, seconds: float, what: str) -> None:
    """`predicate` holds the whole time (checked every 50 ms) for `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.05)
