"""Hot reload of a live run's pipeline: what an edited pipeline file changes, as a pure function.

`plan_reload(current, edited, states)` compares the pipeline the run follows with the edited one
(already linted) and the state of every node:

    added     in the edited pipeline only: scheduled like any pending node
    dropped   pending nodes the edit removed: gone from the run
    changed   pending nodes whose attributes the edit changed: they start with the new ones
    kept      nodes that have started (running, validating, merging) or finished, and that the
              edit changed or removed: they are never touched, and stay as they were

The pipeline to run from then on is the edited one, with every kept node (and the edges between
it and the nodes that remain) as it was. A plan whose pipeline has a cycle, or that would leave
a node with an edge to a node that no longer exists, is refused with the reason; the run then
goes on with the pipeline it had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attractor.engines.pipeline.model import Edge, Node, Pipeline, PipelineError, Problem, topological_order
from attractor.states import NodeState

# the daemon stages an edited pipeline as runs/<run>/<STAGED_PREFIX><stamp>.dot (with its parsed
# form beside it) for the guardian to apply
STAGED_PREFIX = "pipeline.next-"


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[str, ...]
    dropped: tuple[str, ...]
    changed: tuple[str, ...]
    kept: tuple[str, ...]
    pipeline: Pipeline
    edges_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.dropped or self.changed or self.edges_changed)

    def to_json(self) -> dict[str, Any]:
        return {"added": list(self.added), "dropped": list(self.dropped), "changed": list(self.changed),
                "kept": list(self.kept), "edges_changed": self.edges_changed}


def _same(a: Node, b: Node) -> bool:
    return a.kind is b.kind and dict(a.attrs) == dict(b.attrs)


def plan_reload(current: Pipeline, edited: Pipeline, states: Mapping[str, NodeState]) -> ReloadPlan:
    """What applying `edited` to a run following `current` does (see the module docstring);
    `states` is each node's state in the run's checkpoint. Raises PipelineError when the
    result is not a pipeline that can run."""
    def started(name: str) -> bool:
        return states.get(name, NodeState.PENDING) is not NodeState.PENDING

    nodes: dict[str, Node] = {}
    added, dropped, changed, kept = [], [], [], []
    for name, node in edited.nodes.items():
        if name not in current.nodes:
            added.append(name)
            nodes[name] = node
        elif started(name):
            nodes[name] = current.nodes[name]
            if not _same(node, current.nodes[name]):
                kept.append(name)
        else:
            nodes[name] = node
            if not _same(node, current.nodes[name]):
                changed.append(name)
    for name, node in current.nodes.items():
        if name in edited.nodes:
            continue
        if started(name):
            nodes[name] = node
            kept.append(name)
        else:
            dropped.append(name)
    kept_set = set(kept)
    began = {name for name in current.nodes if started(name)}
    edges = list(edited.edges)
    known = {(e.src, e.dst) for e in edges}
    # a node that started keeps the edges it started with: what it waited for, and what waits
    # for it (an edit that puts a new node before it contradicts that and is refused below)
    for edge in current.edges:
        if (edge.src in began or edge.dst in began) and edge.src in nodes and edge.dst in nodes \
                and (edge.src, edge.dst) not in known:
            edges.append(edge)
    problems = [Problem(f"edge '{e.src} -> {e.dst}'", "names a node the reload drops")
                for e in edges if e.src not in nodes or e.dst not in nodes]
    validates = {tool: codergen for tool, codergen in edited.validates.items() if tool in nodes}
    for tool, codergen in current.validates.items():
        if tool in kept_set:
            validates[tool] = codergen
    pipeline = Pipeline(name=edited.name, path=edited.path, nodes=nodes, edges=tuple(_unique(edges)),
                        attrs=dict(edited.attrs), validates=validates)
    if not problems:
        try:
            topological_order(pipeline)
        except PipelineError as exc:
            problems.extend(exc.problems)
    if problems:
        raise PipelineError(edited.path, problems)
    edges_changed = {(e.src, e.dst, e.condition) for e in pipeline.edges} != \
        {(e.src, e.dst, e.condition) for e in current.edges}
    return ReloadPlan(tuple(added), tuple(dropped), tuple(changed), tuple(sorted(kept)), pipeline, edges_changed)


def _unique(edges: list[Edge]) -> list[Edge]:
    seen: set[tuple[str, str, str | None]] = set()
    result = []
    for edge in edges:
        key = (edge.src, edge.dst, edge.condition)
        if key not in seen:
            seen.add(key)
            result.append(edge)
    return result
