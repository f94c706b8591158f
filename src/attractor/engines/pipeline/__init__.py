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

Every element may also carry the cosmetic Graphviz attributes in `COSMETIC`. Graph attributes:
label, goal, max_agents, target (the branch to land on). Node names follow `names.validate_name`
so they can be file, tmux and branch names. `node [...]` / `edge [...]` default statements apply
to the statements after them, as in Graphviz. Pipelines are acyclic: a failed node is retried
through `max_retries`, not through a loop in the graph.

Scheduling (`node_states`, `ready_nodes`): a node is ready when every active predecessor is done.
A tool node is run by the guardian together with its codergen node, so it is done when that node
is done. A conditional is done as soon as its predecessor is, and the edges whose condition does
not match the predecessor's outcome are inactive; a node whose incoming edges are all inactive is
skipped, and so are edges leaving it. A node downstream of a failed node (outcome "fail", not
through a conditional) is blocked. Order: higher `priority` first, then name.

Checks of layers above this module join the lint through `node_checks` (the scripted agent's
check of a `script`, in `cli/pipeline.py`). `check_runner_inputs` checks everything a runner of
one node needs before anything of it is written; `run_id_for` maps a user's id to a run id.
"""

from __future__ import annotations

import enum
import math
import re
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from attractor.errors import BadInputError, UsageError
from attractor.names import NAME_RULE, validate_name

SCHEMA = 1
OUTCOME_SUCCESS = "success"
OUTCOME_FAIL = "fail"
DEFAULT_MAX_RETRIES = 2


class NodeKind(enum.StrEnum):
    START = "start"
    EXIT = "exit"
    CODERGEN = "codergen"
    TOOL = "tool"
    CONDITIONAL = "conditional"


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
CONDITIONS = {f"outcome={c}": c for c in (OUTCOME_SUCCESS, OUTCOME_FAIL)}
_BRANCH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
_PARSER_LOCK = threading.Lock()  # pydot's pyparsing grammar is not thread-safe


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


def _node(name: str) -> str:
    return f"node '{name}'"


def _edge(src: str, dst: str) -> str:
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


# -- reading DOT -----------------------------------------------------------------------------


def _unquote(value: Any) -> str:
    """A pydot token as the user meant it: quotes removed, `\\"` unescaped."""
    text = "" if value is None else str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('\\"', '"')
    return text


@dataclass
class _Raw:
    """What the DOT file says, before any judgement."""

    name: str = ""
    graph_type: str = "digraph"
    graph_attrs: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)  # declared, in order
    edges: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


def _endpoints(point: Any) -> list[str]:
    if isinstance(point, str):
        return [_unquote(point)]
    nodes = point.get("nodes", {}) if hasattr(point, "get") else {}
    return [_unquote(n) for n in nodes]


def _walk(graph: Any, raw: _Raw, node_defaults: dict[str, str], edge_defaults: dict[str, str],
          top: bool) -> None:
    statements: list[tuple[int, str, Any]] = []
    for item in graph.get_nodes():
        statements.append((item.obj_dict.get("sequence", 0), "node", item))
    for item in graph.get_edges():
        statements.append((item.obj_dict.get("sequence", 0), "edge", item))
    for item in graph.get_subgraphs():
        statements.append((item.obj_dict.get("sequence", 0), "subgraph", item))
    node_defaults, edge_defaults = dict(node_defaults), dict(edge_defaults)
    for _seq, what, item in sorted(statements, key=lambda s: s[0]):
        attrs = {k: _unquote(v) for k, v in item.get_attributes().items()}
        if what == "subgraph":
            _walk(item, raw, node_defaults, edge_defaults, top=False)
        elif what == "edge":
            merged = {**edge_defaults, **attrs}
            for src in _endpoints(item.get_source()):
                for dst in _endpoints(item.get_destination()):
                    raw.edges.append((src, dst, merged))
        elif item.get_name() == "node":
            node_defaults.update(attrs)
        elif item.get_name() == "edge":
            edge_defaults.update(attrs)
        elif item.get_name() == "graph":
            if top:
                raw.graph_attrs.update(attrs)
        else:
            name = _unquote(item.get_name())
            raw.nodes[name] = {**node_defaults, **raw.nodes.get(name, {}), **attrs}


def _read(path: Path, problems: list[Problem]) -> _Raw | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.append(Problem(str(path), f"cannot read the pipeline: {reason}"))
        return None
    import pyparsing

    with warnings.catch_warnings():  # pydot's grammar uses names pyparsing has deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        from pydot.dot_parser import GraphParser

    try:
        with _PARSER_LOCK:
            graphs = list(GraphParser.parser.parse_string(text, parse_all=True))
    except pyparsing.ParseBaseException as exc:
        detail = str(exc).split("  (at char")[0]
        problems.append(
            Problem(f"{path}:{exc.lineno}", f"DOT syntax error at column {exc.col}: {detail}")
        )
        return None
    if len(graphs) != 1:
        problems.append(Problem("graph", f"the file holds {len(graphs)} graphs; put exactly one "
                                         "digraph in a pipeline file"))
        return None
    graph = graphs[0]
    raw = _Raw(name=_unquote(graph.get_name()) or path.stem, graph_type=graph.get_type())
    raw.graph_attrs.update({k: _unquote(v) for k, v in graph.get_attributes().items()})
    _walk(graph, raw, {}, {}, top=True)
    return raw


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
    where = _node(name)
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

    def __init__(self, raw: _Raw, problems: list[Problem]) -> None:
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
        where = _node(name)
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
        where = _edge(src, dst)
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
                self.report(_edge(src, name), "the start node cannot have incoming edges")
        for name in self.of_kind(NodeKind.EXIT):
            for dst in self.succ[name]:
                self.report(_edge(name, dst), "the exit node cannot have outgoing edges")

    def judge_conditionals(self) -> None:
        for name in self.of_kind(NodeKind.CONDITIONAL):
            conditions = {e.condition for e in self.edges if e.src == name}
            lacking = [f"outcome={c}" for c in (OUTCOME_SUCCESS, OUTCOME_FAIL)
                       if c not in conditions]
            if lacking:
                self.report(_node(name), "a conditional needs an edge for each outcome; "
                                         f"missing: {', '.join(lacking)}")
            if len(self.pred[name]) != 1:
                self.report(_node(name), "a conditional routes on the outcome of exactly one "
                                         f"predecessor; it has {len(self.pred[name])}")

    def judge_validators(self) -> None:
        for name in self.of_kind(NodeKind.TOOL):
            explicit = self.raw.nodes[name].get("validates")
            if explicit is None:
                nearest = _nearest_codergen(name, self.pred, self.kinds, self.order)
                if nearest is None:
                    self.report(_node(name), "no agent task (box) node upstream to validate; "
                                             "add one or set validates=")
                else:
                    self.validates[name] = nearest
            elif self.kinds.get(explicit) is not NodeKind.CODERGEN:
                self.report(_node(name), f"validates={explicit!r} is not an agent task (box) node")
            elif explicit not in _reach([name], self.pred):
                self.report(_node(name), f"validates={explicit!r} is not upstream of this tool")
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
                self.report(_node(cycle[0]), f"loop with no exit: {text} never reaches exit "
                                             f"'{exits[0]}'")
            else:
                self.report(_edge(cycle[-2], cycle[-1]), f"cycle {text}: loops are not "
                            "supported; a failed node is retried through max_retries")
        for name in self.names:
            if starts and name not in reachable:
                self.report(_node(name), f"not reachable from start '{starts[0]}'")
            elif exits and name not in reaches_exit and name not in trapped:
                self.report(_node(name), f"no path to exit '{exits[0]}'")

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
    raw = _read(path, problems)
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
    """The pipeline at `path`, or `PipelineError` listing every problem."""
    result = check(path, node_checks)
    if result.pipeline is None:
        raise PipelineError(Path(path), result.problems)
    return result.pipeline


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


# -- scheduling ------------------------------------------------------------------------------


class NodeState(enum.StrEnum):
    DONE = "done"
    RUNNING = "running"
    READY = "ready"
    WAITING = "waiting"
    SKIPPED = "skipped"
    BLOCKED = "blocked"


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
        raise PipelineError(pipeline.path, [Problem(_node(stuck[0]), "part of a cycle")])
    return order


def node_states(
    pipeline: Pipeline,
    done: set[str],
    running: set[str],
    outcomes: Mapping[str, str],
) -> dict[str, NodeState]:
    """The state of every node given what the guardian has finished, is running, and how it
    ended ("success" / "fail"; a done node without an outcome counts as a success)."""

    def outcome(name: str) -> str:
        if name in outcomes:
            return outcomes[name]
        if name in pipeline.validates:
            return outcomes.get(pipeline.validates[name], OUTCOME_SUCCESS)
        if pipeline.nodes[name].kind is NodeKind.CONDITIONAL:
            preds = pipeline.predecessors(name)
            fails = any(outcome(p) == OUTCOME_FAIL for p in preds)
            return OUTCOME_FAIL if fails else OUTCOME_SUCCESS
        return OUTCOME_SUCCESS

    states: dict[str, NodeState] = {}
    for name in topological_order(pipeline):
        node = pipeline.nodes[name]
        if node.kind is NodeKind.START or name in done:
            states[name] = NodeState.DONE
            continue
        edge_states = []
        for edge in pipeline.in_edges(name):
            src = states[edge.src]
            if src is NodeState.SKIPPED:
                edge_states.append("inactive")
            elif src is NodeState.BLOCKED:
                edge_states.append("blocked")
            elif src is not NodeState.DONE:
                edge_states.append("pending")
            elif pipeline.nodes[edge.src].kind is NodeKind.CONDITIONAL:
                edge_states.append("active" if edge.condition == outcome(edge.src) else "inactive")
            elif outcome(edge.src) == OUTCOME_FAIL and node.kind is not NodeKind.CONDITIONAL:
                edge_states.append("blocked")
            else:
                edge_states.append("active")
        if node.kind is NodeKind.TOOL:
            # run with its codergen node: follows that node's state once its own edges allow
            edge_states.append({
                NodeState.DONE: "active", NodeState.SKIPPED: "inactive",
                NodeState.BLOCKED: "blocked",
            }.get(states.get(pipeline.validates[name], NodeState.WAITING), "pending"))
        if "blocked" in edge_states:
            states[name] = NodeState.BLOCKED
        elif "pending" in edge_states:
            states[name] = NodeState.RUNNING if name in running else NodeState.WAITING
        elif "active" not in edge_states:
            states[name] = NodeState.SKIPPED
        elif node.kind in (NodeKind.CONDITIONAL, NodeKind.TOOL):
            states[name] = NodeState.DONE
        else:
            states[name] = NodeState.RUNNING if name in running else NodeState.READY
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
    return [n for n in topological_order(pipeline) if states[n] is NodeState.READY]
