"""`attractor dashboard` over HTTP, a real server process: the token and host rules, no action by
GET, escaping of untrusted text, actions recorded with who did them, the API in the command
line's shapes, and the live stream resuming from its last event id with no gap and no repeat.
(The pages in a real browser: tests/test_dashboard_browser.py.)"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from attractor.states import NodeState, RunStatus
from attractor.store import checkpoint as cp_store
from attractor.store.checkpoint import Checkpoint, Event, NodeProgress
from attractor.store.statedir import StateDir
from tests.chain_helpers import codergen, launch, module_steps, pipeline_file, read_json, tool
from tests.dashboard_http import dashboard, info_file, read_sse
from tests.helpers import make_repo, retry_until, run_cli

EVIL = "<script>alert(1)</script>"


def _run(where: StateDir, run_id: str = "r1", **node_changes: object) -> Checkpoint:
    state = where
    cp = Checkpoint(run_id=run_id, pipeline_name="p", pipeline_path="/p.dot", target_dir=str(state.root.parent),
                    target_branch="main", agent="scripted", agent_cmd=None, max_agents=2,
                    nodes={"a": NodeProgress("a", "codergen"), "start": NodeProgress("start", "start")})
    if node_changes:
        cp = cp.with_node("a", **node_changes)
    cp_store.write_checkpoint(state, cp)
    return cp


def test_every_request_needs_the_token(state: StateDir, _isolated_env: Path) -> None:
    _run(state)
    with dashboard("--state-dir", str(state.root), "--no-daemon") as d:
        assert d.get("/", token=False).status == 401
        assert d.get("/api/runs", token=False).status == 401
        assert d.get("/api/runs", headers={"X-Attractor-Token": "wrong" * 8}).status == 401
        assert d.get("/static/dashboard.js", token=False).status == 401
        assert d.get("/api/runs", token=False, headers={"Authorization": f"Bearer {d.token}"}).status == 200
        first = d.get(f"/runs/r1/tree?token={d.token}&x=1", token=False)
        assert first.status == 303 and first.headers["location"] == "/runs/r1/tree?x=1"  # the token leaves the URL
        cookie = first.headers["set-cookie"]
        assert f"attractor_token={d.token}" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        page = d.get("/runs/r1/tree", token=False, headers={"Cookie": f"attractor_token={d.token}"})
        assert page.status == 200 and 'data-node="a"' in page.text
        # a page from another name than loopback is refused (DNS rebinding)
        assert d.get("/api/runs", headers={"Host": f"attacker.example:{d.port}"}).status == 421
        info = json.loads(info_file(_isolated_env).read_text())
        assert info["token"] == d.token and info["port"] == d.port and info["pid"] == d.proc.pid
        assert stat.S_IMODE(info_file(_isolated_env).stat().st_mode) == 0o600
    assert not info_file(_isolated_env).exists()  # gone with the dashboard


def test_an_action_is_a_post_with_the_token_header(state: StateDir) -> None:
    _run(state, state=NodeState.RUNNING, attempts=1)
    with dashboard("--state-dir", str(state.root), "--no-daemon") as d:
        assert d.get("/api/runs/r1/actions/pause").status == 405  # no action by GET, token or not
        cookie_only = d.post("/api/runs/r1/actions/pause", token=False,
                             headers={"Cookie": f"attractor_token={d.token}"})
        assert cookie_only.status == 403 and "header" in cookie_only.json()["error"]
        other_site = d.post("/api/runs/r1/actions/pause", headers={"Origin": "http://evil.example"})
        assert other_site.status == 403
        assert cp_store.paused(state, "r1") is None
        assert d.post("/api/runs/r1/actions/explode").status == 404
        bad = d.post("/api/runs/r1/actions/pause", {"whatever": 1})
        assert bad.status == 400 and "whatever" in bad.json()["error"]
        done = d.post("/api/runs/r1/actions/pause", {"reason": "lunch"})
        assert done.status == 200, done.text
        assert done.json()["changed"] is True
        paused = cp_store.paused(state, "r1")
        assert paused is not None and "@dashboard(127.0.0.1)" in paused["by"] and paused["reason"] == "lunch"
        assert d.post("/api/runs/r1/actions/unpause").json()["changed"] is True
        wrong = d.post("/api/runs/r1/actions/answer", {"node": "a", "reply": "maybe"})
        assert wrong.status == 400 and "yes, no, always" in wrong.json()["error"]
    events = cp_store.read_events(state, "r1")
    assert [e["event"] for e in events] == ["run_paused", "run_unpaused", "action"]
    failed = events[-1]
    assert failed["action"] == "answer" and failed["ok"] is False and "@dashboard" in failed["by"]


def test_bad_names_and_numbers_are_clear_errors(state: StateDir) -> None:
    _run(state)
    with dashboard("--state-dir", str(state.root), "--no-daemon") as d:
        missing = d.get("/api/runs/nope")
        assert missing.status == 404 and "run 'nope' not found" in missing.json()["error"]
        quoted = d.get("/api/runs/a%22b/events")
        assert quoted.status == 400 and "run id" in quoted.json()["error"]
        assert d.get("/api/runs/r1/events?after=x").status == 400
        page = d.get("/runs/nope/tree")
        assert page.status == 404 and "not found" in page.text


def test_untrusted_text_is_escaped(state: StateDir) -> None:
    _run(state, state=NodeState.FAILED, attempts=1, branch=f"attractor/r1/{EVIL}", reason=f"gate said {EVIL}")
    cp_store.append_event(state, "r1", Event.ALERT, node="a", alert="gate", reason=EVIL)
    cp_store.append_event(state, "r1", Event.NEEDS_INPUT, node="a", message=f"Run {EVIL}?")
    with dashboard("--state-dir", str(state.root), "--no-daemon") as d:
        for path in ("/runs/r1/tree", "/runs/r1/timeline", "/alerts", "/"):
            page = d.get(path)
            assert page.status == 200, path
            assert EVIL not in page.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in d.get("/runs/r1/tree").text
        assert "&lt;script&gt;" in d.get("/alerts").text
        assert d.get("/api/runs/r1").json()["nodes"][0]["branch"].endswith(EVIL)  # JSON keeps the text itself


def test_the_api_says_what_the_command_line_says(state: StateDir, tmp_path: Path) -> None:
    _run(state, state=NodeState.RUNNING, attempts=1)
    repo = make_repo(tmp_path / "app")
    with dashboard("--state-dir", str(state.root), "--no-daemon") as d:
        api = d.get("/api/runs/r1").json()
        runs = d.get("/api/runs").json()
        queue = d.get("/api/queue").json()
    status = run_cli(["status", "--json", "--no-daemon", "--state-dir", str(state.root)])
    assert status.returncode == 0, status.stderr
    cli = json.loads(status.stdout)
    assert {k: v for k, v in api.items() if k != "project"} == cli
    assert [r["run_id"] for r in runs["runs"]] == ["r1"] and runs["runs"][0]["nodes_total"] == 2
    listed = run_cli(["merge-queue", "list", "--json", "--no-daemon", "--repo", str(repo), "--state-dir",
                      str(state.root)])
    assert listed.returncode == 0, listed.stderr
    assert queue == json.loads(listed.stdout)


def test_the_stream_resumes_after_its_last_event_id(state: StateDir) -> None:
    _run(state, state=NodeState.RUNNING, attempts=1)
    for n in range(5):
        cp_store.append_event(state, "r1", Event.ALERT, node="a", alert=f"first-{n}")
    with dashboard("--state-dir", str(state.root), "--no-daemon") as d:
        first = d.stream("/api/stream?run=r1&after=r1:2")
        got = read_sse(first, 3)
        first.close()
        assert [m["id"] for m in got] == ["r1:3", "r1:4", "r1:5"]
        assert all(m["event"] == "run-event" for m in got)
        for n in range(4):  # written while no one listens
            cp_store.append_event(state, "r1", Event.ALERT, node="a", alert=f"second-{n}")
        again = d.stream("/api/stream?run=r1&after=r1:0", headers={"Last-Event-ID": got[-1]["id"]})
        resumed = read_sse(again, 4)
        cp_store.append_event(state, "r1", Event.ALERT, node="a", alert="live")
        live = read_sse(again, 1)
        again.close()
        alerts = [json.loads(m["data"])["event"]["alert"] for m in resumed + live]
        assert alerts == ["second-0", "second-1", "second-2", "second-3", "live"]  # no gap, no repeat
        assert [m["id"] for m in resumed + live] == ["r1:6", "r1:7", "r1:8", "r1:9", "r1:10"]
        # the stream of every running run names each run in its ids
        every = d.stream("/api/stream?after=r1:9")
        message = read_sse(every, 1)[0]
        every.close()
        assert message["id"] == "r1:10" and json.loads(message["data"])["run_id"] == "r1"


def test_a_non_loopback_host_needs_a_token(state_dir: Path) -> None:
    refused = run_cli(["dashboard", "--host", "0.0.0.0", "--port", "0", "--state-dir", str(state_dir)])
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "set a token first" in refused.stderr
    short = run_cli(["dashboard", "--token", "abc", "--port", "0", "--state-dir", str(state_dir)])
    assert short.returncode == 2 and "too short" in short.stderr
    port = run_cli(["dashboard", "--port", "70000", "--state-dir", str(state_dir)])
    assert port.returncode == 2 and "not a TCP port" in port.stderr
    env = {**os.environ, "ATTRACTOR_DASHBOARD_TOKEN": "a-long-enough-token-1234"}
    proc = subprocess.Popen([sys.executable, "-m", "attractor", "dashboard", "--host", "0.0.0.0", "--port", "0",
                             "--state-dir", str(state_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("attractor dashboard: http://0.0.0.0:") and "token=a-long-enough-token-1234" in line
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_needs_input_agent_is_answered_and_recorded(chain: tuple[Path, Path]) -> None:
    """On a real run: the dialog's text (untrusted, from the pane) shows escaped, the answer from
    the dashboard goes through the same code as `attractor agent answer` and is recorded."""
    target, state_dir = chain
    script = (f"menu Bash command\\n   echo {EVIL}\\n\\nDo you want to proceed?|Yes|No, and tell the agent what to do\n"
              + module_steps("asks", 3) + "commit asks\nreport")
    pipe = pipeline_file(target.parent, codergen("asks", script) + tool("check_asks"),
                         "  start -> asks -> check_asks -> exit\n")
    proc = launch(pipe, target, state_dir)
    state = StateDir(state_dir)
    try:
        run_id = retry_until(lambda: cp_store.latest_run(state), 30, what="the run")
        retry_until(lambda: any(e["event"] == "needs_input" for e in cp_store.read_events(state, run_id)), 30,
                    what="the needs_input event")
        with dashboard("--state-dir", str(state_dir), "--no-daemon") as d:
            def waiting_card() -> str | None:
                text = d.get(f"/runs/{run_id}/tree").text
                return text if 'data-status="needs-input"' in text else None

            tree = retry_until(waiting_card, 30, what="the needs-input card")
            assert EVIL not in tree and "echo &lt;script&gt;alert(1)&lt;/script&gt;" in tree
            overview = d.get("/").text
            assert "Needs you (1)" in overview and EVIL not in overview
            answered = d.post(f"/api/runs/{run_id}/actions/answer", {"node": "asks", "reply": "yes"})
            assert answered.status == 200, answered.text
            assert answered.json()["chosen"] == "Yes"
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
    events = cp_store.read_events(state, run_id)
    action = next(e for e in events if e["event"] == "action")
    assert action["action"] == "answer" and action["reply"] == "yes" and action["chosen"] == "Yes"
    assert action["ok"] is True and "@dashboard(127.0.0.1)" in action["by"] and action["node"] == "asks"
    kinds = [e["event"] for e in events]
    assert kinds.index("needs_input") < kinds.index("input_given") < kinds.index("action")
    # the answer closed it, or the runner saw the dialog go first
    assert next(e for e in events if e["event"] == "input_given")["cause"] in ("answered:yes", "the dialog closed")
    assert read_json(state_dir / "agents" / "orchestrator-asks" / "session.json")["needs_input"] is None


def test_with_a_daemon_it_reads_and_acts_through_it(state: StateDir, tmp_path: Path) -> None:
    """A registered project shows without naming its state directory, the data and the actions
    come through the daemon, and an action is still recorded as the dashboard's."""
    from attractor.store import projects

    repo = make_repo(tmp_path / "app")
    # a run that has ended: the daemon leaves it alone (it would resume a running one)
    cp_store.write_checkpoint(state, _run(state).with_status(RunStatus.STOPPED))
    projects.add_project("app", repo, state_dir=str(state.root))
    started = run_cli(["daemon", "start"])
    assert started.returncode == 0, started.stderr
    try:
        with dashboard("--target-dir", str(tmp_path)) as d:  # a directory with no state of its own
            runs = d.get("/api/runs").json()
            assert runs["daemon"] is True
            assert [(r["project"], r["run_id"]) for r in runs["runs"]] == [("app", "r1")]
            assert [(p["project"], p["runs"]) for p in runs["projects"]] == [("app", 1)]
            assert d.get("/api/runs/r1").json()["project"] == "app"
            sent = d.post("/api/runs/r1/actions/send", {"node": "a", "text": "hello"})
            assert sent.status == 200, sent.text
            assert sent.json()["to"] == "orchestrator-a"
        action = cp_store.read_events(state, "r1")[-1]
        assert action["event"] == "action" and action["action"] == "send"
        assert "@dashboard(127.0.0.1)" in str(action["by"])
    finally:
        run_cli(["daemon", "stop", "--runs"], timeout=60)


def test_the_timeline_has_a_lane_per_working_node_with_its_bars_and_marks() -> None:
    from attractor.web import views

    def at(second: float) -> str:
        return f"2026-12-01T10:00:{second:06.3f}Z"

    report = {"run": {"run_id": "r1", "started_at": at(0), "finished_at": at(10)}, "project": "-",
              "nodes": [{"name": "start", "kind": "start"}, {"name": "a", "kind": "codergen"},
                        {"name": "check_a", "kind": "tool"}, {"name": "exit", "kind": "exit"}]}
    events = [{"id": i + 1, "event": e} for i, e in enumerate([
        {"at": at(1), "event": "runner_spawned", "node": "a", "attempts": 1},
        {"at": at(2), "event": "validating", "node": "a", "attempts": 1},
        {"at": at(3), "event": "validation", "node": "a", "tool": "check_a", "ok": False},
        {"at": at(3), "event": "validation_failed", "node": "a", "state": "running"},
        {"at": at(5), "event": "validating", "node": "a", "attempts": 2},
        {"at": at(6), "event": "validation", "node": "a", "tool": "check_a", "ok": True},
        {"at": at(6), "event": "merging", "node": "a"},
        {"at": at(8), "event": "merged", "node": "a"},
        {"at": at(8), "event": "validator", "node": "check_a", "outcome": "success"},
    ])]
    queue = [{"node": "a", "enqueued_at": at(6), "history": [f"{at(7)} queued -> processing: claimed by pid 1"]}]
    lanes = {lane["node"]: lane for lane in views.timeline(report, events, queue)["lanes"]}
    assert sorted(lanes) == ["a", "check_a"]  # start and exit do no work
    bars = [(b["phase"], b["seconds"], b["left"]) for b in lanes["a"]["bars"]]
    assert bars == [("running", 1.0, 10.0), ("validating", 1.0, 20.0), ("running", 2.0, 30.0),
                    ("validating", 1.0, 50.0), ("merging", 2.0, 60.0), ("queued", 1.0, 60.0)]
    assert [(m["kind"], m["left"]) for m in lanes["a"]["marks"]] == [
        ("failure", 30.0), ("retry", 50.0), ("passed", 60.0)]
    assert [m["kind"] for m in lanes["check_a"]["marks"]] == ["passed"]


def test_the_token_is_kept_across_restarts_until_a_new_one_is_asked_for(state: StateDir, _isolated_env: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _run(state)
    with dashboard("--state-dir", str(state.root), "--no-daemon") as first:
        token = first.token
    kept = info_file(_isolated_env).with_name("dashboard.token")
    assert kept.read_text().strip() == token and stat.S_IMODE(kept.stat().st_mode) == 0o600
    with dashboard("--state-dir", str(state.root), "--no-daemon") as again:
        assert again.token == token  # a page left open goes on working
    with dashboard("--state-dir", str(state.root), "--no-daemon", "--new-token") as renewed:
        assert renewed.token != token and renewed.get("/api/runs", headers={"X-Attractor-Token": token}).status == 401
    env_token = "from-the-environment-0123"
    monkeypatch.setenv("ATTRACTOR_DASHBOARD_TOKEN", env_token)
    with dashboard("--state-dir", str(state.root), "--no-daemon") as given:
        assert given.token == env_token
    assert kept.read_text().strip() == renewed.token  # a given token is not kept


def test_a_page_starts_its_stream_after_the_events_there_are(state: StateDir) -> None:
    _run(state, state=NodeState.RUNNING, attempts=1)
    for n in range(3):
        cp_store.append_event(state, "r1", Event.ALERT, node="a", alert=f"old-{n}")
    with dashboard("--state-dir", str(state.root), "--no-daemon") as d:
        assert 'data-cursor="r1:3"' in d.get("/runs/r1/tree").text  # no replay of the old ones
        assert 'data-cursor="r1:3"' in d.get("/").text
