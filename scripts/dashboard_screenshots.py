"""Regenerate the dashboard's screenshots in docs/screenshots/ from a real run of the demo.

`attractor demo` (pipelines/demo.dot, scripted agents in tmux on a private socket) runs in a
temporary directory with a temporary HOME; `attractor dashboard --port 0` watches it and the
system's chromium (headless, driven by Playwright) takes:

    overview.png   the runs page once the demo has finished and a second run's agent asks a
                   question (it is stopped afterwards)
    tree.png       the run's agents while its nodes work
    timeline.png   the run's timeline once it has finished

Afterwards the dashboard is stopped, the private tmux server killed and the temporary directory
removed, also after a failure.

Usage: .venv/bin/python scripts/dashboard_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for entry in (REPO, REPO / "src"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from tests.dashboard_helpers import (  # noqa: E402
    VIEWPORT,
    Dashboard,
    chromium_path,
    end_tmux_server,
    isolated_env,
    launch_browser,
    missing_browser,
)

ASKING = (
    "digraph review {\n"
    "  start [shape=Mdiamond]\n"
    "  exit [shape=Msquare]\n"
    '  add_docs [shape=box, prompt="document calc", script="'
    "menu Bash command\\n   python3 -m pydoc calc > docs.txt\\n\\nDo you want to proceed?"
    "|Yes|No, and tell the agent what to do\n"
    "run python3 -m pydoc calc > docs.txt\ncommit Document calc\nreport\"]\n"
    '  add_tests [shape=box, prompt="more tests for calc", script="sleep 120\nreport"]\n'
    "  start -> add_docs -> exit\n"
    "  start -> add_tests -> exit\n"
    "}\n"
)


def _asking_pipeline(root: Path) -> Path:
    path = root / "review.dot"
    path.write_text(ASKING)
    return path


def wait(predicate: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"error: timed out after {seconds}s waiting for {what}")
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args(argv)
    problem = missing_browser()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="attractor-shots-"))
    socket = f"shots-{secrets.token_hex(4)}"
    env = isolated_env(root, socket, author="attractor demo")
    target = root / "demo"
    state = target / ".claude" / "state"
    demo = subprocess.Popen([sys.executable, "-m", "attractor", "demo", "--dir", str(target), "--tmux-socket", socket],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    dash: Dashboard | None = None
    try:
        wait(lambda: (state / "runs").is_dir() and any((state / "runs").glob("*/checkpoint.json")), 60,
             "the demo's run")
        run = next((state / "runs").glob("*/checkpoint.json")).parent.name
        dash = Dashboard(state, tmux_socket=socket, env=env, log=root / "dashboard.log").start()
        with sync_playwright() as p:
            browser = launch_browser(p, chromium_path())
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(dash.page_url(f"/runs/{run}/tree"))
            page.wait_for_selector('.card.node[data-status="working"]', timeout=60_000)
            page.wait_for_timeout(300)
            page.screenshot(path=str(args.out / "tree.png"), full_page=True)
            out, _ = demo.communicate(timeout=180)
            if demo.returncode != 0:
                print(out, file=sys.stderr)
                print(f"error: the demo exited with {demo.returncode}", file=sys.stderr)
                return 1
            page.goto(dash.page_url(f"/runs/{run}/timeline"))
            page.wait_for_selector('.lane[data-node="add_cli"] .tbar.merging', timeout=30_000)
            page.screenshot(path=str(args.out / "timeline.png"), full_page=True)
            # a second run on the demo's repository, one of whose agents asks a question: the
            # overview shows both runs and the agent that needs a human on top
            second = subprocess.Popen(
                [sys.executable, "-m", "attractor", "run", str(_asking_pipeline(root)), "--target-dir", str(target),
                 "--agent", "scripted", "--tmux-socket", socket], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                page.goto(dash.page_url("/"))
                page.wait_for_selector("li.waiting", timeout=60_000)
                page.wait_for_timeout(300)
                page.screenshot(path=str(args.out / "overview.png"), full_page=True)
            finally:
                subprocess.run([sys.executable, "-m", "attractor", "stop", "--target-dir", str(target),
                                "--tmux-socket", socket], env=env, capture_output=True, check=False, timeout=60)
                second.wait(timeout=60)
            browser.close()
        for name in ("overview", "tree", "timeline"):
            print(args.out / f"{name}.png")
        return 0
    finally:
        if dash is not None:
            dash.stop()
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        end_tmux_server(socket)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
