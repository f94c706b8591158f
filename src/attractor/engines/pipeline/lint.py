"""The checks behind `attractor pipeline lint`: what each node kind, edge and the graph may carry,
and a judge that reports every problem with the node or edge it concerns instead of stopping at
the first. A pipeline with no problems becomes the model (`check`, `load_pipeline`).

Checks of layers above this package join through `node_checks` (the scripted agent's check of a
`script`, in `cli/pipeline.py`).
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor.engines.pipeline.dot import RawDot, read_dot
from attractor.engines.pipeline.model import (
    SCHEMA,
    Edge,
    Node,
    NodeKind,
    Pipeline,
    PipelineError,
    Problem,
    edge_where,
    node_where,
)
from attractor.errors import UsageError
from attractor.names import NAME_RULE, sha256_hex, validate_name
from attractor.states import Outcome
from attractor.store import atomic

# -- what a pipeline may say -----------------------------------------------------------------

SHAPES: dict[str, NodeKind] = {
    "Mdiamond": NodeKind.START,
    "Msquare": NodeKind.EXIT,
    "box": NodeKind.CODERGEN,
    "parallelogram": NodeKind.TOOL,
    "diamond": NodeKind.CONDITIONAL,
}
SHAPE_HELP = (
    "Mdiamond (start), Msquare (exit), box (agent task), parallelogram (tool), "
    "diamond (conditional)"
)
COSMETIC = frozenset(
    {"label", "color", "fillcolor", "fontcolor", "fontname", "fontsize", "style", "tooltip",
     "penwidth"}
)
NODE_ATTRS: dict[NodeKind, frozenset[str]] = {
    NodeKind.START: frozenset({"shape"}),
    NodeKind.EXIT: frozenset({"shape"}),
    NodeKind.CODERGEN: frozenset(
        {"shape", "prompt", "agent", "script", "timeout", "max_retries", "priority", "allow", "model",
         "permission_timeout"}
    ),
    NodeKind.TOOL: frozenset({"shape", "command", "timeout", "validates", "max_retries"}),
    NodeKind.CONDITIONAL: frozenset({"shape"}),
}
EDGE_ATTRS = COSMETIC | {"condition"}
GRAPH_ATTRS = frozenset(
    {"label", "goal", "max_agents", "target", "rankdir", "fontname", "fontsize"}
)
CONDITIONS = {f"outcome={c}": c for c in (Outcome.SUCCESS, Outcome.FAIL)}
_BRANCH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")


# -- judging it ------------------------------------------------------------------------------


def _suggest(key: str, allowed: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"


def _check_int(value: str, minimum: int | None) -> str | None:
    try:
        number = int(value)
    except ValueError:
        return "an integer"
    if minimum is not None and number < minimum:
        return f"an integer >= {minimum}"
    return None


def _check_attr_values(name: str, kind: NodeKind, attrs: Mapping[str, str],
                       problems: list[Problem]) -> None:
    where = node_where(name)
    for key, minimum in (("max_retries", 0), ("priority", None)):
        if key in attrs and (want := _check_int(attrs[key], minimum)):
            problems.append(Problem(where, f"{key}={attrs[key]!r} is not {want}"))
    if "timeout" in attrs:
        try:
            seconds = float(attrs["timeout"])
            good = math.isfinite(seconds) and seconds > 0
        except ValueError:
            good = False
        if not good:
            problems.append(Problem(where, f"timeout={attrs['timeout']!r} is not a number of "
                                           "seconds > 0"))
    if "agent" in attrs:
        try:
            validate_name(attrs["agent"], "agent")
        except UsageError:
            problems.append(Problem(where, f"agent={attrs['agent']!r} is not a valid agent "
                                           f"name: {NAME_RULE}"))
    if kind is NodeKind.CODERGEN and not (attrs.get("prompt") or attrs.get("script")):
        problems.append(Problem(where, "an agent task (box) needs a prompt or a script"))
    if kind is NodeKind.TOOL and not attrs.get("command"):
        problems.append(Problem(where, "a tool node (parallelogram) needs a command"))


def _check_graph_attrs(attrs: Mapping[str, str], problems: list[Problem]) -> None:
    for key in attrs:
        if key not in GRAPH_ATTRS:
            problems.append(Problem("graph", f"unknown graph attribute {key!r}; "
                                             f"{_suggest(key, GRAPH_ATTRS)}"))
    if "max_agents" in attrs and (want := _check_int(attrs["max_agents"], 1)):
        problems.append(Problem("graph", f"max_agents={attrs['max_agents']!r} is not {want}"))
    target = attrs.get("target")
    if target is not None and (
        not _BRANCH_RE.fullmatch(target) or ".." in target or target.endswith((".lock", "/"))
    ):
        problems.append(Problem("graph", f"target={target!r} is not a valid branch name"))


def _reach(start: Iterable[str], adjacency: Mapping[str, Iterable[str]]) -> set[str]:
    seen = set(start)
    stack = list(seen)
    while stack:
        for nxt in adjacency.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _cycles(names: list[str], succ: Mapping[str, list[str]]) -> list[list[str]]:
    """One closed path per group of nodes that reach each other (a strongly connected part)."""
    after = {n: _reach(succ[n], succ) for n in names}  # reachable in one step or more
    cycles: list[list[str]] = []
    seen: set[str] = set()
    for name in sorted(names):
        if name in after[name] and name not in seen:
            members = {w for w in after[name] if name in after[w]}
            seen |= members
            cycles.append(_cycle_through(name, succ, members))
    return cycles


def _cycle_through(first: str, succ: Mapping[str, list[str]], members: set[str]) -> list[str]:
    """The shortest closed path first -> … -> first inside one strongly connected component."""
    parent: dict[str, str] = {}
    queue = deque([first])
    while queue:
        current = queue.popleft()
        for nxt in succ[current]:
            if nxt == first:
                path = [current]
                while path[-1] != first:
                    path.append(parent[path[-1]])
                return [*reversed(path), first]
            if nxt in members and nxt not in parent:
                parent[nxt] = current
                queue.append(nxt)
    raise AssertionError(f"no cycle through {first}")  # unreachable for a real component


def _nearest_codergen(tool: str, pred: Mapping[str, list[str]],
                      kinds: Mapping[str, NodeKind | None], key: Any) -> str | None:
    level, seen = [tool], {tool}
    while level:
        nxt = sorted({p for n in level for p in pred.get(n, ()) if p not in seen}, key=key)
        found = [p for p in nxt if kinds.get(p) is NodeKind.CODERGEN]
        if found:
            return found[0]
        seen.update(nxt)
        level = nxt
    return None


class _Judge:
    """Checks one raw DOT graph, collecting every problem instead of stopping at the first."""

    def __init__(self, raw: RawDot, problems: list[Problem]) -> None:
        self.raw = raw
        self.problems = problems
        self.names = list(raw.nodes)
        self.kinds: dict[str, NodeKind | None] = {}
        self.edges: list[Edge] = []
        self.validates: dict[str, str] = {}

    def report(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def of_kind(self, kind: NodeKind) -> list[str]:
        return [n for n in self.names if self.kinds[n] is kind]

    def order(self, name: str) -> tuple[int, str]:
        value = self.raw.nodes[name].get("priority", "0")
        return (-int(value) if _check_int(value, None) is None else 0, name)

    def judge(self) -> None:
        if self.raw.graph_type != "digraph":
            self.report("graph", f"a pipeline is a digraph, not a {self.raw.graph_type}")
        _check_graph_attrs(self.raw.graph_attrs, self.problems)
        for name, attrs in self.raw.nodes.items():
            self.kinds[name] = self.judge_node(name, attrs)
        for src, dst, attrs in self.raw.edges:
            self.judge_edge(src, dst, attrs)
        self.succ = {n: sorted({e.dst for e in self.edges if e.src == n}) for n in self.names}
        self.pred = {n: sorted({e.src for e in self.edges if e.dst == n}) for n in self.names}
        self.judge_ends()
        self.judge_conditionals()
        self.judge_validators()
        self.judge_paths()

    def judge_node(self, name: str, attrs: Mapping[str, str]) -> NodeKind | None:
        where = node_where(name)
        try:
            validate_name(name, "node name")
        except UsageError:
            self.report(where, f"invalid node name: {NAME_RULE}")
        shape = attrs.get("shape")
        if shape is None:
            self.report(where, f"no shape; set shape= to one of {SHAPE_HELP}")
            return None
        kind = SHAPES.get(shape)
        if kind is None:
            self.report(where, f"unknown shape {shape!r}; expected one of {SHAPE_HELP}")
            return None
        allowed = NODE_ATTRS[kind] | COSMETIC
        for key in attrs:
            if key not in allowed:
                self.report(where, f"unknown attribute {key!r} for a {kind.value} node; "
                                   f"{_suggest(key, allowed)}")
        _check_attr_values(name, kind, attrs, self.problems)
        return kind

    def judge_edge(self, src: str, dst: str, attrs: Mapping[str, str]) -> None:
        where = edge_where(src, dst)
        missing = [n for n in dict.fromkeys((src, dst)) if n not in self.raw.nodes]
        for name in missing:
            self.report(where, f"node '{name}' is not declared; declare it with a shape, "
                               f'e.g. {name} [shape=box, prompt="..."]')
        for key in attrs:
            if key not in EDGE_ATTRS:
                self.report(where, f"unknown edge attribute {key!r}; {_suggest(key, EDGE_ATTRS)}")
        condition: str | None = None
        from_conditional = self.kinds.get(src) is NodeKind.CONDITIONAL
        if "condition" in attrs:
            condition = CONDITIONS.get(re.sub(r"\s+", "", attrs["condition"]))
            if condition is None:
                self.report(where, f"condition={attrs['condition']!r}; expected "
                                   f"{' or '.join(CONDITIONS)}")
            elif not from_conditional and src in self.raw.nodes:
                self.report(where, "a condition only belongs on an edge leaving a conditional "
                                   "(diamond) node")
        elif from_conditional:
            self.report(where, f'an edge leaving a conditional needs condition="'
                               f'{" or ".join(CONDITIONS)}"')
        edge = Edge(src, dst, condition)
        if not missing and edge not in self.edges:
            self.edges.append(edge)

    def judge_ends(self) -> None:
        for label, shape, names in (
            ("start", "Mdiamond", self.of_kind(NodeKind.START)),
            ("exit", "Msquare", self.of_kind(NodeKind.EXIT)),
        ):
            if len(names) != 1:
                listed = f": {', '.join(names)}" if names else ""
                self.report("graph", f"{len(names)} {label} nodes{listed}; a pipeline needs "
                                     f"exactly one (shape={shape})")
        for name in self.of_kind(NodeKind.START):
            for src in self.pred[name]:
                self.report(edge_where(src, name), "the start node cannot have incoming edges")
        for name in self.of_kind(NodeKind.EXIT):
            for dst in self.succ[name]:
                self.report(edge_where(name, dst), "the exit node cannot have outgoing edges")

    def judge_conditionals(self) -> None:
        for name in self.of_kind(NodeKind.CONDITIONAL):
            conditions = {e.condition for e in self.edges if e.src == name}
            lacking = [f"outcome={c}" for c in (Outcome.SUCCESS, Outcome.FAIL)
                       if c not in conditions]
            if lacking:
                self.report(node_where(name), "a conditional needs an edge for each outcome; "
                                         f"missing: {', '.join(lacking)}")
            if len(self.pred[name]) != 1:
                self.report(node_where(name), "a conditional routes on the outcome of exactly one "
                                         f"predecessor; it has {len(self.pred[name])}")

    def judge_validators(self) -> None:
        for name in self.of_kind(NodeKind.TOOL):
            explicit = self.raw.nodes[name].get("validates")
            if explicit is None:
                nearest = _nearest_codergen(name, self.pred, self.kinds, self.order)
                if nearest is None:
                    self.report(node_where(name), "no agent task (box) node upstream to validate; "
                                             "add one or set validates=")
                else:
                    self.validates[name] = nearest
            elif self.kinds.get(explicit) is not NodeKind.CODERGEN:
                self.report(node_where(name), f"validates={explicit!r} is not an agent task (box) node")
            elif explicit not in _reach([name], self.pred):
                self.report(node_where(name), f"validates={explicit!r} is not upstream of this tool")
            else:
                self.validates[name] = explicit

    def judge_paths(self) -> None:
        starts, exits = self.of_kind(NodeKind.START), self.of_kind(NodeKind.EXIT)
        reachable = _reach(starts, self.succ)
        reaches_exit = _reach(exits, self.pred)
        trapped: set[str] = set()
        for cycle in _cycles(self.names, self.succ):
            text = " -> ".join(cycle)
            if exits and not set(cycle) & reaches_exit:
                trapped.update(cycle)
                self.report(node_where(cycle[0]), f"loop with no exit: {text} never reaches exit "
                                             f"'{exits[0]}'")
            else:
                self.report(edge_where(cycle[-2], cycle[-1]), f"cycle {text}: loops are not "
                            "supported; a failed node is retried through max_retries")
        for name in self.names:
            if starts and name not in reachable:
                self.report(node_where(name), f"not reachable from start '{starts[0]}'")
            elif exits and name not in reaches_exit and name not in trapped:
                self.report(node_where(name), f"no path to exit '{exits[0]}'")

    def pipeline(self, path: Path) -> Pipeline:
        nodes = {n: Node(n, self.kinds[n] or NodeKind.CODERGEN, dict(self.raw.nodes[n]))
                 for n in self.names}
        return Pipeline(self.raw.name, path, nodes, tuple(self.edges), dict(self.raw.graph_attrs),
                        dict(self.validates))


@dataclass(frozen=True)
class LintResult:
    """The pipeline (None when there are problems), every problem, and what the file declares."""

    pipeline: Pipeline | None
    problems: tuple[Problem, ...]
    node_count: int
    edge_count: int

    def to_json(self, path: Path) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "file": str(path),
            "ok": not self.problems,
            "nodes": self.node_count,
            "edges": self.edge_count,
            "problems": [p.to_json() for p in self.problems],
        }


# A check of one node's attributes from a layer above this module (the scripted agent's check
# of a `script`): called with the node's name and attributes, it returns the node's problems.
NodeCheck = Callable[[str, Mapping[str, str]], Iterable[Problem]]


def check(path: Path, node_checks: Iterable[NodeCheck] = ()) -> LintResult:
    """Read and judge the pipeline at `path` (pydot is imported here, not at module import);
    each of `node_checks` adds its problems for every declared node."""
    path = Path(path)
    problems: list[Problem] = []
    raw = read_dot(path, problems)
    if raw is None:
        return LintResult(None, tuple(problems), 0, 0)
    judge = _Judge(raw, problems)
    judge.judge()
    for node_check in node_checks:
        for name, attrs in raw.nodes.items():
            problems.extend(node_check(name, attrs))
    pipeline = None if problems else judge.pipeline(path)
    return LintResult(pipeline, tuple(problems), len(raw.nodes), len(judge.edges))


def lint(path: Path, node_checks: Iterable[NodeCheck] = ()) -> list[Problem]:
    """Every problem of the pipeline at `path`; empty when it is good."""
    return list(check(path, node_checks).problems)


def load_pipeline(path: Path, node_checks: Iterable[NodeCheck] = ()) -> Pipeline:
    """The pipeline at `path`, or `PipelineError` listing every problem.

    Without `node_checks`, a snapshot written by `save_snapshot` for exactly these bytes is
    taken instead of parsing the DOT again: a runner then never loads the DOT parser (about
    20 MB of memory per process)."""
    checks = tuple(node_checks)
    if not checks:
        cached = read_snapshot(Path(path))
        if cached is not None:
            return cached
    result = check(path, checks)
    if result.pipeline is None:
        raise PipelineError(Path(path), result.problems)
    return result.pipeline


SNAPSHOT_SCHEMA = "attractor.pipeline-snapshot/1"


def snapshot_path(path: Path) -> Path:
    return path.with_name(path.name + ".parsed.json")


def save_snapshot(pipeline: Pipeline, path: Path, *, fsync: bool = False) -> None:
    """Keep the parsed form of the pipeline file at `path` (which `pipeline` was read from)
    beside it, tied to the file's bytes by their SHA-256; `fsync` when it is the only record of
    what the run follows (after a reload kept nodes the file no longer has)."""
    data = {
        "schema": SNAPSHOT_SCHEMA,
        "source_sha256": sha256_hex(Path(path).read_bytes()),
        "name": pipeline.name,
        "attrs": dict(pipeline.attrs),
        "nodes": [{"name": n.name, "kind": n.kind.value, "attrs": dict(n.attrs)} for n in pipeline.nodes.values()],
        "edges": [e.to_json() for e in pipeline.edges],
        "validates": dict(pipeline.validates),
    }
    atomic.write_json_atomic(snapshot_path(Path(path)), data, fsync=fsync)


def read_snapshot(path: Path) -> Pipeline | None:
    """The pipeline kept by `save_snapshot` for the file's current bytes; None when there is
    none, it is for other bytes, or it does not read back (the caller parses the file)."""
    try:
        source = path.read_bytes()
        data = json.loads(snapshot_path(path).read_bytes())
        if not isinstance(data, dict) or data.get("schema") != SNAPSHOT_SCHEMA \
                or data.get("source_sha256") != sha256_hex(source):
            return None
        nodes = {str(n["name"]): Node(str(n["name"]), NodeKind(n["kind"]),
                                      {str(k): str(v) for k, v in n["attrs"].items()})
                 for n in data["nodes"]}
        edges = tuple(Edge(str(e["src"]), str(e["dst"]), None if e["condition"] is None else str(e["condition"]))
                      for e in data["edges"])
        return Pipeline(name=str(data["name"]), path=path, nodes=nodes, edges=edges,
                        attrs={str(k): str(v) for k, v in data["attrs"].items()},
                        validates={str(k): str(v) for k, v in data["validates"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
