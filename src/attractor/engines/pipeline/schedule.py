"""The scheduling rules as pure functions, and what a runner of one node needs before it starts.

Scheduling (`node_states`, `ready_nodes`): a node is ready when every active predecessor is done.
A tool node is run by the guardian together with its codergen node, so it is done when that node
is done. A conditional is done as soon as its predecessor is, and the edges whose condition does
not match the predecessor's outcome are inactive; a node whose incoming edges are all inactive is
skipped, and so are edges leaving it. A node downstream of a failed node (outcome "fail", not
through a conditional) is blocked. Order: higher `priority` first, then name. `ScheduleState` is
a node's state under these rules; the state a run records for a node is `states.NodeState`.

`check_runner_inputs` checks everything a runner of one node needs before anything of it is
written; `run_id_for` maps a user's id to a run id.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from attractor.engines.pipeline.lint import NodeCheck, load_pipeline
from attractor.engines.pipeline.model import (
    NodeKind,
    Pipeline,
    topological_order,
)
from attractor.errors import BadInputError, UsageError
from attractor.names import validate_name
from attractor.states import Outcome

# -- scheduling ------------------------------------------------------------------------------


class ScheduleState(enum.StrEnum):
    """A node's state under the scheduling rules; the state a run records for a node is
    `states.NodeState`."""

    DONE = "done"
    RUNNING = "running"
    READY = "ready"
    WAITING = "waiting"
    SKIPPED = "skipped"
    BLOCKED = "blocked"


def node_states(
    pipeline: Pipeline,
    done: set[str],
    running: set[str],
    outcomes: Mapping[str, str],
) -> dict[str, ScheduleState]:
    """The state of every node given what the guardian has finished, is running, and how it
    ended ("success" / "fail"; a done node without an outcome counts as a success)."""

    def outcome(name: str) -> str:
        if name in outcomes:
            return outcomes[name]
        if name in pipeline.validates:
            return outcomes.get(pipeline.validates[name], Outcome.SUCCESS)
        if pipeline.nodes[name].kind is NodeKind.CONDITIONAL:
            preds = pipeline.predecessors(name)
            fails = any(outcome(p) == Outcome.FAIL for p in preds)
            return Outcome.FAIL if fails else Outcome.SUCCESS
        return Outcome.SUCCESS

    states: dict[str, ScheduleState] = {}
    for name in topological_order(pipeline):
        node = pipeline.nodes[name]
        if node.kind is NodeKind.START or name in done:
            states[name] = ScheduleState.DONE
            continue
        edge_states = []
        for edge in pipeline.in_edges(name):
            src = states[edge.src]
            if src is ScheduleState.SKIPPED:
                edge_states.append("inactive")
            elif src is ScheduleState.BLOCKED:
                edge_states.append("blocked")
            elif src is not ScheduleState.DONE:
                edge_states.append("pending")
            elif pipeline.nodes[edge.src].kind is NodeKind.CONDITIONAL:
                edge_states.append("active" if edge.condition == outcome(edge.src) else "inactive")
            elif outcome(edge.src) == Outcome.FAIL and node.kind is not NodeKind.CONDITIONAL:
                edge_states.append("blocked")
            else:
                edge_states.append("active")
        if node.kind is NodeKind.TOOL:
            # run with its codergen node: follows that node's state once its own edges allow
            edge_states.append({
                ScheduleState.DONE: "active", ScheduleState.SKIPPED: "inactive",
                ScheduleState.BLOCKED: "blocked",
            }.get(states.get(pipeline.validates[name], ScheduleState.WAITING), "pending"))
        if "blocked" in edge_states:
            states[name] = ScheduleState.BLOCKED
        elif "pending" in edge_states:
            states[name] = ScheduleState.RUNNING if name in running else ScheduleState.WAITING
        elif "active" not in edge_states:
            states[name] = ScheduleState.SKIPPED
        elif node.kind in (NodeKind.CONDITIONAL, NodeKind.TOOL):
            states[name] = ScheduleState.DONE
        else:
            states[name] = ScheduleState.RUNNING if name in running else ScheduleState.READY
    return states


def ready_nodes(
    pipeline: Pipeline,
    done: set[str],
    running: set[str],
    outcomes: Mapping[str, str],
) -> list[str]:
    """Nodes the guardian should start now: agent tasks, and the exit once all is done.

    Never start, tool or conditional nodes: those are done by the rules above."""
    states = node_states(pipeline, done, running, outcomes)
    return [n for n in topological_order(pipeline) if states[n] is ScheduleState.READY]


# -- what a runner needs ---------------------------------------------------------------------

_NOT_IN_NAME_RE = re.compile(r"[^a-z0-9_.-]+")


def run_id_for(text: str) -> str:
    """The run id a user's id stands for (a ticket such as `PRD-TEST-001` becomes
    `prd-test-001`): lowercase, each run of other characters one `-`, leading `_.-` dropped,
    at most 64 characters. An id that is already valid is returned unchanged; one that maps to
    nothing is returned as given, for the name check to refuse it."""
    mapped = _NOT_IN_NAME_RE.sub("-", text.lower()).lstrip("_.-")[:64].rstrip("-")
    return mapped or text


def _run_copy(path: Path, run_id: str) -> bool:
    """Whether `path` is the run's own copy, `<state>/runs/<run>/pipeline.dot` (the default
    when no --pipeline is given)."""
    return path.name == "pipeline.dot" and path.parent.name == run_id and path.parent.parent.name == "runs"


def check_runner_inputs(run_id: str, node: str, pipeline_path: Path, target_dir: Path,
                        target_branch: str = "main", *, session: str | None = None,
                        node_checks: Iterable[NodeCheck] = ()) -> Pipeline:
    """Everything a runner of `node` needs, checked before any identity, hook or session is
    made: the run id and node name, its tmux `session` name (when given), the pipeline (it
    exists, loads with `node_checks`, and has `node` as an agent task) and the target (a git
    checkout with the branch `target_branch`). Returns the pipeline; raises a `UsageError`
    naming the option and the fix."""
    validate_name(run_id, "run id")
    validate_name(node, "node name")
    if session is not None:
        from attractor.tmux import validate_session_name

        try:
            validate_session_name(session)
        except UsageError as exc:
            why = f"{len(session)} characters, more than 64" if len(session) > 64 else str(exc)
            raise BadInputError("--run", f"run {run_id!r} and node {node!r} give the tmux session name "
                                f"{session!r} ({why}); use a shorter run id") from None
    path = Path(pipeline_path)
    if not path.exists():
        if _run_copy(path, run_id):
            raise BadInputError("--pipeline", f"no pipeline for run {run_id!r}: its copy {path} does not exist; "
                                "pass --pipeline FILE")
        raise BadInputError("--pipeline", f"{path} does not exist; pass the path of a DOT pipeline file")
    pipeline = load_pipeline(path, node_checks)
    tasks = ", ".join(pipeline.codergen_nodes()) or "none"
    if node not in pipeline.nodes:
        raise BadInputError("--node", f"node {node!r} is not in pipeline {path}; its agent tasks: {tasks}")
    if pipeline.nodes[node].kind is not NodeKind.CODERGEN:
        raise BadInputError("--node", f"node {node!r} of pipeline {path} is a {pipeline.nodes[node].kind.value} "
                            f"node; a runner runs an agent task (box): {tasks}")
    _check_target(Path(target_dir), target_branch)
    return pipeline


def _check_target(target_dir: Path, branch: str) -> None:
    from attractor import gitops

    if not target_dir.is_dir():
        raise BadInputError("--target-dir", f"{target_dir} is not a directory; pass the path of a git checkout")
    gitops.validate_branch_name(branch)
    try:
        tip = gitops.rev_parse(target_dir, f"refs/heads/{branch}")
    except gitops.NotAGitRepositoryError as exc:
        raise BadInputError("--target-dir", f"{target_dir}: {exc.problem}; pass --target-dir with the path "
                            "of a git checkout") from None
    if tip is None:
        raise BadInputError("--target", f"{target_dir} has no branch {branch!r}; create it or pass --target BRANCH")
