"""Hot reload of a live run's pipeline: the plan an edit makes (`engines.pipeline.reload`), from
real DOT files read by the real parser, and a real run under the daemon that takes an edit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.control import client
from attractor.engines.pipeline import PipelineError, load_pipeline
from attractor.engines.pipeline.reload import plan_reload
from attractor.states import NodeState
from attractor.store import checkpoint as cp_store
from attractor.store import identities
from attractor.store.statedir import StateDir
from tests.chain_helpers import run_detached
from tests.helpers import make_repo, retry_until, run_cli

BASE = """digraph p {
  start [shape=Mdiamond]
  a [shape=box, prompt="a"]
  b [shape=box, prompt="b"]
  exit [shape=Msquare]
  start -> a -> b -> exit
}
"""

P, R, M = NodeState.PENDING, NodeState.RUNNING, NodeState.MERGED


class PlanCase(NamedTuple):
    test_id: str
    edited: str
    states: dict[str, NodeState]
    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    prompt_of_a: str = "a"


PLAN_CASES = [
    PlanCase("nothing", BASE, {"a": R}),
    PlanCase("add-after-running", BASE.replace("start -> a -> b -> exit", "start -> a -> b -> exit\n  a -> c -> exit")
             .replace('  exit [', '  c [shape=box, prompt="c"]\n  exit ['), {"a": R}, added=("c",)),
    PlanCase("drop-pending", BASE.replace('  b [shape=box, prompt="b"]\n', "").replace("a -> b -> exit", "a -> exit"),
             {"a": R}, dropped=("b",)),
    PlanCase("change-pending", BASE.replace('prompt="b"', 'prompt="b2"'), {"a": R}, changed=("b",)),
    PlanCase("running-node-untouched", BASE.replace('prompt="a"', 'prompt="a2"'), {"a": R}, kept=("a",)),
    PlanCase("pending-node-changes", BASE.replace('prompt="a"', 'prompt="a2"'), {}, changed=("a",),
             prompt_of_a="a2"),
    PlanCase("merged-node-removed-stays", BASE.replace('  a [shape=box, prompt="a"]\n', "")
             .replace("start -> a -> b", "start -> b"), {"a": M}, kept=("a",)),
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=[c.test_id for c in PLAN_CASES])
def test_the_plan_of_an_edit(tmp_path: Path, case: PlanCase) -> None:
    (tmp_path / "old.dot").write_text(BASE)
    (tmp_path / "new.dot").write_text(case.edited)
    plan = plan_reload(load_pipeline(tmp_path / "old.dot"), load_pipeline(tmp_path / "new.dot"), case.states)
    assert (plan.added, plan.dropped, plan.changed, plan.kept) == (case.added, case.dropped, case.changed, case.kept)
    assert plan.pipeline.nodes["a"].prompt == case.prompt_of_a
    assert set(case.dropped).isdisjoint(plan.pipeline.nodes)
    assert set(case.added) <= set(plan.pipeline.nodes)
    for edge in plan.pipeline.edges:
        assert edge.src in plan.pipeline.nodes and edge.dst in plan.pipeline.nodes


def test_a_kept_node_brings_its_edges_and_an_order_it_contradicts_is_refused(tmp_path: Path) -> None:
    (tmp_path / "old.dot").write_text(BASE)
    removed = BASE.replace('  a [shape=box, prompt="a"]\n', "").replace("start -> a -> b", "start -> b")
    (tmp_path / "removed.dot").write_text(removed)
    plan = plan_reload(load_pipeline(tmp_path / "old.dot"), load_pipeline(tmp_path / "removed.dot"), {"a": M})
    assert {(e.src, e.dst) for e in plan.pipeline.edges} >= {("start", "a"), ("a", "b")}
    # a has started; the edit puts b before it: with a's own edge to b that is a cycle, refused
    swapped = BASE.replace("start -> a -> b -> exit", "start -> b -> a -> exit").replace('prompt="a"', 'prompt="a2"')
    (tmp_path / "swapped.dot").write_text(swapped)
    with pytest.raises(PipelineError, match="cycle"):
        plan_reload(load_pipeline(tmp_path / "old.dot"), load_pipeline(tmp_path / "swapped.dot"), {"a": R})


_LIVE = """digraph live {{
  start [shape=Mdiamond]
  a [shape=box, prompt="{prompt_a}", script="sleep 5
write a.txt a
commit add a
report a done"]
  {middle}
  exit [shape=Msquare]
  {edges}
}}
"""
_B = '''b [shape=box, prompt="b", script="write b.txt b
commit add b
report b done"]'''
_C = '''c [shape=box, prompt="c", script="sleep 4
write c.txt c
commit add c
report c done"]'''


def _detached_run(repo: Path, source: Path, state_dir: Path) -> tuple[StateDir, str]:
    """Start a run of `source` in the background; its state and id once node a runs."""
    state, run_id, _ = run_detached(source, repo, state_dir)
    retry_until(lambda: cp_store.read_checkpoint(state, run_id).nodes["a"].state is NodeState.RUNNING, 30)
    return state, run_id


def test_an_edit_of_a_live_run_is_linted_then_applied_by_the_daemon(tmp_path: Path, state_dir: Path) -> None:
    repo = make_repo(tmp_path / "app")
    source = tmp_path / "live.dot"
    source.write_text(_LIVE.format(prompt_a="a", middle=_B, edges="start -> a -> b -> exit"))
    assert run_cli(["daemon", "start"]).returncode == 0
    try:
        state, run_id = _detached_run(repo, source, state_dir)

        def events(kind: str) -> list[dict[str, object]]:
            return [e for e in cp_store.read_events(state, run_id) if e["event"] == kind]

        source.write_text("digraph live { a -> }\n")  # a bad edit: reported, nothing changes
        failed = retry_until(lambda: events("pipeline_reload_failed"), 30, what="the bad edit to be reported")
        assert failed[0]["problems"] and failed[0]["source"] == str(source)
        assert set(cp_store.read_checkpoint(state, run_id).nodes) == {"start", "a", "b", "exit"}
        # the good edit, written in bursts like an editor: b goes, c comes, a (running) is left alone
        edited = _LIVE.format(prompt_a="a, reworded", middle=_C, edges="start -> a -> c -> exit")
        for cut in (len(edited) // 3, 2 * len(edited) // 3, len(edited)):
            source.write_text(edited[:cut])
        reloaded = retry_until(lambda: events("pipeline_reloaded"), 30, what="the edit to be applied")
        assert len(reloaded) == 1, reloaded
        change = reloaded[0]
        assert (change["added"], change["dropped"], change["kept"]) == (["c"], ["b"], ["a"]), change
        # a role edited once c's agent is up: checked and recorded; the next agent would read it
        retry_until(lambda: identities.find(state, "orchestrator", "c") is not None, 30)
        roles = repo / ".claude" / "agents"
        roles.mkdir(parents=True, exist_ok=True)
        (roles / "orchestrator.md").write_text("---\nallow: [unclosed\n---\nDo the work.\n")
        role = retry_until(lambda: events("role_changed"), 30, what="the role edit to be noticed")
        assert role[0]["role"] == "orchestrator" and role[0]["ok"] is False and "YAML" in str(role[0]["problem"])
        retry_until(lambda: cp_store.read_checkpoint(state, run_id).status != "running", 90, interval=0.2)
        cp = cp_store.read_checkpoint(state, run_id)
        assert cp.status == "succeeded", cp.reason
        assert set(cp.nodes) == {"start", "a", "c", "exit"} and cp.nodes["c"].state is NodeState.MERGED
        subjects = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "main"], capture_output=True,
                                  text=True, check=True).stdout.splitlines()
        assert "add c" in subjects and "add b" not in subjects and subjects.count("add a") == 1
        status = json.loads(run_cli(["status", "--json", "--state-dir", str(state_dir)]).stdout)
        assert [n["name"] for n in status["nodes"] if n["name"] == "b"] == []
    finally:
        run_cli(["daemon", "stop", "--runs"], timeout=60)
        holder = client.lock_holder()
        assert holder is None, holder


def test_a_guardian_killed_between_the_two_writes_of_a_reload_is_reconciled_on_restart(
        tmp_path: Path, state_dir: Path) -> None:
    import os
    import signal

    from attractor.engines.pipeline import save_snapshot

    repo = make_repo(tmp_path / "app")
    source = tmp_path / "live.dot"
    source.write_text(_LIVE.format(prompt_a="a", middle="", edges="start -> a -> exit"))
    state, run_id = _detached_run(repo, source, state_dir)
    guardian = identities.find(state, "guardian", run_id)
    assert guardian is not None and guardian.pid is not None
    os.kill(guardian.pid, signal.SIGSTOP)
    # what a reload leaves when its guardian dies after replacing the pipeline files and before
    # the checkpoint: the run's copy has node c, the checkpoint does not
    cp = cp_store.read_checkpoint(state, run_id)
    copy = Path(cp.pipeline_path)
    copy.write_text(_LIVE.format(prompt_a="a", middle=_C, edges="start -> a -> exit\n  start -> c -> exit"))
    save_snapshot(load_pipeline(copy), copy)
    os.kill(guardian.pid, signal.SIGKILL)
    resumed = run_cli(["run", "--resume", run_id, "--target-dir", str(repo), "--state-dir", str(state_dir)],
                      timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    cp = cp_store.read_checkpoint(state, run_id)
    assert cp.status == "succeeded" and cp.nodes["c"].state is NodeState.MERGED, cp.nodes


_GATED = """digraph g {
  start [shape=Mdiamond]
  a [shape=box, prompt="a", script="@1 sleep 6
write a.txt a
commit add a
report a done"]
  t [shape=parallelogram, command="test -f ok.txt", max_retries=0]
  exit [shape=Msquare]
  start -> a -> t -> exit
}
"""


def test_a_forged_reload_that_would_turn_a_red_gate_green_is_refused(tmp_path: Path, state_dir: Path) -> None:
    # any process that can write the state directory can send a signal: the guardian applies
    # only what the user's pipeline file holds now, and parses it itself
    from attractor.engines.pipeline import save_snapshot
    from attractor.names import sha256_hex

    repo = make_repo(tmp_path / "app")
    source = tmp_path / "g.dot"
    source.write_text(_GATED)
    state, run_id = _detached_run(repo, source, state_dir)
    forged = _GATED.replace('command="test -f ok.txt"', 'command="true"')
    staged = cp_store.run_dir(state, run_id) / "pipeline.next-forged.dot"
    staged.write_text(forged)
    save_snapshot(load_pipeline(staged), staged)
    sent = run_cli(["signal", "send", "PIPELINE_RELOAD", "--to", f"guardian-{run_id}", "--from", "user-daemon",
                    "--payload", json.dumps({"staged": str(staged), "sha256": sha256_hex(forged.encode()),
                                             "source": str(source)}), "--state-dir", str(state_dir)])
    assert sent.returncode == 0, sent.stderr
    retry_until(lambda: cp_store.read_checkpoint(state, run_id).status != "running", 90, interval=0.2)
    refused = [e for e in cp_store.read_events(state, run_id) if e["event"] == "pipeline_reload_failed"]
    assert refused and "does not hold what was staged" in str(refused[0]["problems"]), refused
    assert not [e for e in cp_store.read_events(state, run_id) if e["event"] == "pipeline_reloaded"]
    assert cp_store.read_checkpoint(state, run_id).status == "failed"  # the gate stayed red
    subjects = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "main"], capture_output=True,
                              text=True, check=True).stdout.splitlines()
    assert "add a" not in subjects and not staged.exists()
