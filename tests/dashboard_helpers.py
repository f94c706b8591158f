"""A real `attractor dashboard` process and a headless chromium driven by Playwright, for the
browser tests, `scripts/dashboard_screenshots.py` and `bench/dashboard.py`.

The browser is the system's chromium (`chromium` or `chromium-browser` on PATH, or
$ATTRACTOR_CHROMIUM); Playwright's own browser downloads are never used. A test that needs it
calls `browser_or_skip()`: it skips with the reason when chromium or Playwright is missing,
except under CI (`CI=true`), where that fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--headless=new"]
VIEWPORT = {"width": 1280, "height": 860}

# Kept in the page before its own script runs: every `run-event` the page's EventSource gets,
# with the wall-clock time it arrived (performance.timeOrigin + now, in ms since the epoch), and
# every change of a node card's data-status with its time, so a test can say when the page
# changed and what it received, without racing the page.
PAGE_PROBE = """
(() => {
  const now = () => performance.timeOrigin + performance.now();
  window.__att = { events: [], opens: 0, errors: 0, statuses: [], swaps: 0 };
  const Native = window.EventSource;
  if (Native) {
    window.EventSource = function (url, options) {
      const source = new Native(url, options);
      source.addEventListener("open", () => { window.__att.opens += 1; });
      source.addEventListener("error", () => { window.__att.errors += 1; });
      source.addEventListener("run-event", (message) => {
        let data = {};
        try { data = JSON.parse(message.data); } catch (err) { data = {}; }
        window.__att.events.push({ id: data.id, run: data.run_id, event: (data.event || {}).event,
                                   node: (data.event || {}).node, last: message.lastEventId, t: now() });
      });
      return source;
    };
    window.EventSource.prototype = Native.prototype;
  }
  function cards(root) {
    const seen = {};
    for (const card of root.querySelectorAll(".card.node[data-node]")) seen[card.dataset.node] = card.dataset.status;
    return seen;
  }
  let before = {};
  function check() {
    const content = document.getElementById("content");
    if (!content) return;
    const after = cards(content);
    for (const [node, status] of Object.entries(after)) {
      if (before[node] !== status) window.__att.statuses.push({ node: node, status: status, t: now() });
    }
    before = after;
  }
  document.addEventListener("DOMContentLoaded", () => {
    check();
    const content = document.getElementById("content");
    if (content) new MutationObserver(() => { window.__att.swaps += 1; check(); })
      .observe(content, { childList: true, subtree: true, attributes: true, attributeFilter: ["data-status"] });
  });
})();
"""


def chromium_path() -> str | None:
    explicit = os.environ.get("ATTRACTOR_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "chromium not found on PATH (apt-get install chromium)"
    return None


def browser_or_skip() -> str:
    """The chromium path; skips the test when the browser cannot run (fails under CI=true)."""
    import pytest

    reason = missing_browser()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true: the browser tests must run)")
        pytest.skip(reason)
    path = chromium_path()
    assert path is not None
    return path


def launch_browser(playwright: Any, executable: str) -> Any:
    return playwright.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)


class Dashboard:
    """`attractor dashboard --port PORT` as a subprocess on one state directory."""

    def __init__(self, state: Path, *, port: int = 0, tmux_socket: str | None = None, token: str | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.state = state
        self.port = port
        self.given_token = token
        self.tmux_socket = tmux_socket
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.token = ""

    def start(self, timeout: float = 30.0) -> Dashboard:
        args = [sys.executable, "-m", "attractor", "dashboard", "--port", str(self.port), "--state-dir",
                str(self.state), "--no-daemon"]
        if self.tmux_socket:
            args += ["--tmux-socket", self.tmux_socket]
        if self.given_token:
            args += ["--token", self.given_token]
        errors = open(self.log, "a") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, text=True,
                                     env=self.env or os.environ.copy(), start_new_session=True)
        if self.log:
            errors.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"dashboard exited with {self.proc.wait()} before printing its URL")
            if line.startswith("attractor dashboard: "):
                break
        else:
            raise RuntimeError(f"dashboard printed no URL in {timeout}s")
        self.url = line.split(": ", 1)[1].strip()
        self.token = self.url.split("?token=", 1)[1]
        self.port = int(self.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        return self

    @property
    def base(self) -> str:
        return self.url.split("/?", 1)[0]

    def page_url(self, path: str) -> str:
        return f"{self.base}{path}?token={self.token}"

    def get(self, path: str) -> tuple[int, bytes, float]:
        """GET with the token header: status, body, seconds taken."""
        request = urllib.request.Request(self.base + path, headers={"X-Attractor-Token": self.token})
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, body, time.perf_counter() - began

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def isolated_env(root: Path, socket: str, author: str) -> dict[str, str]:
    """The environment of a bench or script run outside pytest: a private HOME (with the XDG
    directories under it), tmux socket and git author, and this checkout's sources first."""
    repo = Path(__file__).resolve().parent.parent
    drop = ("TMUX", "TMUX_PANE", "ATTRACTOR_STATE_DIR", "ATTRACTOR_POLICY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    home = root / "home"
    for sub in ("", "run", "config", "state"):
        (home / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    email = author.lower().replace(" ", "-") + "@example.invalid"
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"), XDG_CONFIG_HOME=str(home / "config"),
               XDG_STATE_HOME=str(home / "state"), ATTRACTOR_TMUX_SOCKET=socket, SHELL="/bin/sh",
               GIT_AUTHOR_NAME=author, GIT_AUTHOR_EMAIL=email, GIT_COMMITTER_NAME=author, GIT_COMMITTER_EMAIL=email,
               PYTHONPATH=str(repo / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""))
    return env


def end_tmux_server(socket: str) -> None:
    """Kill the private tmux server on `socket` and remove the socket file it leaves behind."""
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)
    leftover = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / socket
    leftover.unlink(missing_ok=True)


def event_lines(state: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's events.jsonl, each with its id (line number from 1)."""
    path = state / "runs" / run_id / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        out.append({**item, "id": number})
    return out


def epoch_ms(iso_stamp: str) -> float:
    from attractor import clock

    return clock.parse_iso(iso_stamp) * 1000.0
