"""Pipelines: a DOT digraph read with pydot into a frozen model, a linter that reports every
problem with the node or edge it concerns, and the scheduling rules as pure functions.

Node kinds, by shape:

    Mdiamond       start        exactly one; done as soon as the run starts
    Msquare        exit         exactly one; ready when everything upstream is done
    box            codergen     an agent task: prompt, agent, script, timeout, max_retries, priority
    parallelogram  tool         a command run in the worktree of the codergen node it validates
                                (`validates`, default: the nearest codergen predecessor): command,
                                timeout, validates, max_retries
    diamond        conditional  routes on the outcome of its one predecessor along the edges
                                `condition="outcome=success"` / `condition="outcome=fail"`

Every element may also carry the cosmetic Graphviz attributes in `lint.COSMETIC`. Graph attributes:
label, goal, max_agents, target (the branch to land on). Node names follow `names.validate_name`
so they can be file, tmux and branch names. `node [...]` / `edge [...]` default statements apply
to the statements after them, as in Graphviz. Pipelines are acyclic: a failed node is retried
through `max_retries`, not through a loop in the graph.

The modules, each importing only those listed before it:

    model      Node, Edge, Pipeline, NodeKind, Problem, PipelineError, topological_order
    dot        reading a DOT file into the statements it holds (pydot is imported only here,
               when a file is read)
    lint       the checks behind `attractor pipeline lint`; check, lint, load_pipeline
    schedule   the scheduling rules (ScheduleState, node_states, ready_nodes) and what a runner
               of one node needs (check_runner_inputs, run_id_for)

The names below are the package's interface; import them from here.
"""

from __future__ import annotations

from attractor.engines.pipeline.lint import (
    LintResult,
    NodeCheck,
    check,
    lint,
    load_pipeline,
    read_snapshot,
    save_snapshot,
    snapshot_path,
)
from attractor.engines.pipeline.model import (
    Edge,
    Node,
    NodeKind,
    Pipeline,
    PipelineError,
    Problem,
    topological_order,
)
from attractor.engines.pipeline.schedule import (
    ScheduleState,
    check_runner_inputs,
    node_states,
    ready_nodes,
    run_id_for,
)

__all__ = [
    "Edge",
    "LintResult",
    "Node",
    "NodeCheck",
    "NodeKind",
    "Pipeline",
    "PipelineError",
    "Problem",
    "ScheduleState",
    "check",
    "check_runner_inputs",
    "lint",
    "load_pipeline",
    "node_states",
    "read_snapshot",
    "ready_nodes",
    "run_id_for",
    "save_snapshot",
    "snapshot_path",
    "topological_order",
]
