"""Reading a DOT file into `RawDot`: the graph's name and type, its attributes, the nodes it
declares (with the `node [...]` defaults in force where each is declared) and its edges (with the
`edge [...]` defaults), before any judgement. Subgraphs are walked in statement order; only the
top graph's `graph [...]` attributes count.

pydot (~110 ms of imports) is imported inside `read_dot`, never at module import, so commands
that never read a pipeline do not pay for it.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attractor.engines.pipeline.model import Problem

_PARSER_LOCK = threading.Lock()  # pydot's pyparsing grammar is not thread-safe


def _unquote(value: Any) -> str:
    """A pydot token as the user meant it: quotes removed, `\\"` unescaped."""
    text = "" if value is None else str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('\\"', '"')
    return text


@dataclass
class RawDot:
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


def _walk(graph: Any, raw: RawDot, node_defaults: dict[str, str], edge_defaults: dict[str, str],
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


def read_dot(path: Path, problems: list[Problem]) -> RawDot | None:
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
    raw = RawDot(name=_unquote(graph.get_name()) or path.stem, graph_type=graph.get_type())
    raw.graph_attrs.update({k: _unquote(v) for k, v in graph.get_attributes().items()})
    _walk(graph, raw, {}, {}, top=True)
    return raw
