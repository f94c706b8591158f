"""The pipeline model, shared by the reader, the linter and the scheduler: node kinds, the frozen
`Node`, `Edge` and `Pipeline`, a lint finding (`Problem`) and the error that lists them
(`PipelineError`), and `topological_order`, the order every other part walks the graph in.

A `Problem`'s `where` names what it concerns: `node_where` and `edge_where` build the node and
edge forms.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from attractor.errors import UsageError

SCHEMA = 1
DEFAULT_MAX_RETRIES = 2


class NodeKind(enum.StrEnum):
    START = "start"
    EXIT = "exit"
    CODERGEN = "codergen"
    TOOL = "tool"
    CONDITIONAL = "conditional"


# -- problems --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One lint finding. `where` is `node 'x'`, `edge 'a -> b'`, `graph`, or `FILE[:LINE]`."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"where": self.where, "message": self.message}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Problem:
        return cls(where=str(data["where"]), message=str(data["message"]))


class PipelineError(UsageError):
    """A pipeline file with problems; `problems` lists every one of them."""

    def __init__(self, path: Path, problems: Iterable[Problem]) -> None:
        self.path = path
        self.problems = tuple(problems)
        count = len(self.problems)
        more = f"; run 'attractor pipeline lint {path}' to see all {count}" if count > 1 else ""
        first = self.problems[0] if self.problems else "unknown problem"
        super().__init__(f"pipeline {path}: {first}{more}")


def node_where(name: str) -> str:
    return f"node '{name}'"


def edge_where(src: str, dst: str) -> str:
    return f"edge '{src} -> {dst}'"


# -- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    name: str
    kind: NodeKind
    attrs: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.attrs.get("label") or self.name

    @property
    def prompt(self) -> str | None:
        return self.attrs.get("prompt")

    @property
    def agent(self) -> str | None:
        return self.attrs.get("agent")

    @property
    def script(self) -> str | None:
        return self.attrs.get("script")

    @property
    def command(self) -> str | None:
        return self.attrs.get("command")

    @property
    def timeout(self) -> float | None:
        value = self.attrs.get("timeout")
        return float(value) if value is not None else None

    @property
    def max_retries(self) -> int:
        return int(self.attrs.get("max_retries", DEFAULT_MAX_RETRIES))

    @property
    def priority(self) -> int:
        return int(self.attrs.get("priority", 0))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind.value, "attrs": dict(self.attrs)}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    condition: str | None = None  # "success" / "fail" on edges leaving a conditional

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "condition": self.condition}


@dataclass(frozen=True)
class Pipeline:
    name: str
    path: Path
    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    attrs: Mapping[str, str]
    validates: Mapping[str, str]  # tool node -> the codergen node it validates

    @property
    def label(self) -> str:
        return self.attrs.get("label") or self.name

    @property
    def goal(self) -> str:
        return self.attrs.get("goal", "")

    @property
    def max_agents(self) -> int | None:
        value = self.attrs.get("max_agents")
        return int(value) if value is not None else None

    @property
    def target(self) -> str | None:
        return self.attrs.get("target")

    @cached_property
    def start(self) -> str:
        return next(n for n, node in self.nodes.items() if node.kind is NodeKind.START)

    @cached_property
    def exit(self) -> str:
        return next(n for n, node in self.nodes.items() if node.kind is NodeKind.EXIT)

    def order_key(self, name: str) -> tuple[int, str]:
        return (-self.nodes[name].priority, name)

    @cached_property
    def _succ(self) -> dict[str, list[str]]:
        return _adjacency(self.nodes, ((e.src, e.dst) for e in self.edges), self.order_key)

    @cached_property
    def _pred(self) -> dict[str, list[str]]:
        return _adjacency(self.nodes, ((e.dst, e.src) for e in self.edges), self.order_key)

    def successors(self, name: str) -> list[str]:
        return list(self._succ[name])

    def predecessors(self, name: str) -> list[str]:
        return list(self._pred[name])

    def in_edges(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.dst == name]

    def codergen_nodes(self) -> list[str]:
        return [n for n in topological_order(self) if self.nodes[n].kind is NodeKind.CODERGEN]

    def validators_of(self, codergen: str) -> list[str]:
        """The tool nodes that validate `codergen`, in scheduling order."""
        return sorted((t for t, c in self.validates.items() if c == codergen), key=self.order_key)

    def validated_node(self, tool: str) -> str:
        return self.validates[tool]

    def to_json(self) -> dict[str, Any]:
        order = topological_order(self)
        return {
            "schema": SCHEMA,
            "name": self.name,
            "path": str(self.path),
            "attrs": dict(self.attrs),
            "nodes": [
                {
                    **self.nodes[n].to_json(),
                    "depends_on": self.predecessors(n),
                    **({"validates": self.validates[n]} if n in self.validates else {}),
                }
                for n in order
            ],
            "edges": [e.to_json() for e in self.edges],
        }


def _adjacency(
    nodes: Iterable[str], pairs: Iterable[tuple[str, str]], key: Any
) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in pairs:
        if b not in result[a]:
            result[a].append(b)
    for targets in result.values():
        targets.sort(key=key)
    return result


# -- order -----------------------------------------------------------------------------------


def topological_order(pipeline: Pipeline) -> list[str]:
    """Every node, each after all its predecessors; ties by priority (higher first), then name."""
    import heapq

    indegree = {n: len(pipeline.predecessors(n)) for n in pipeline.nodes}
    heap = [pipeline.order_key(n) for n, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, name = heapq.heappop(heap)
        order.append(name)
        for nxt in pipeline.successors(name):
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                heapq.heappush(heap, pipeline.order_key(nxt))
    if len(order) != len(pipeline.nodes):
        stuck = sorted(set(pipeline.nodes) - set(order))
        raise PipelineError(pipeline.path, [Problem(node_where(stuck[0]), "part of a cycle")])
    return order
