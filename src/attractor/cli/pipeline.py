"""`attractor pipeline lint|show FILE`: check a DOT pipeline and show its scheduling order.

pydot is heavy (~110 ms of imports): it is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from attractor.cli import Parser, add_json_option, subparser
from attractor.cli.identity import format_table, print_json
from attractor.errors import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from attractor.pipeline import Pipeline, Problem


def _problem_line(path: Path, problem: Problem) -> str:
    """`FILE: node 'x': message`; a problem already located in the file keeps its `FILE:LINE`."""
    if problem.where == str(path) or problem.where.startswith(f"{path}:"):
        return f"{problem.where}: {problem.message}"
    return f"{path}: {problem.where}: {problem.message}"


def cmd_lint(args: argparse.Namespace) -> int:
    from attractor.pipeline import check

    path = Path(args.file)
    result = check(path)
    if args.json:
        print_json(result.to_json(path))
    elif result.problems:
        for problem in result.problems:
            print(_problem_line(path, problem), file=sys.stderr)
    else:
        print(f"ok: {result.node_count} nodes, {result.edge_count} edges")
    return EXIT_USAGE if result.problems else EXIT_OK


def _dependencies(pipeline: Pipeline, name: str) -> str:
    parts = [
        f"{edge.src}[{edge.condition}]" if edge.condition else edge.src
        for edge in sorted(pipeline.in_edges(name), key=lambda e: pipeline.order_key(e.src))
    ]
    return ", ".join(parts) or "-"


def _detail(pipeline: Pipeline, name: str, width: int = 60) -> str:
    from attractor.pipeline import NodeKind

    node = pipeline.nodes[name]
    if node.kind is NodeKind.CODERGEN:
        text = " ".join((node.prompt or "(scripted)").split())
        extras = [f"agent={node.agent}"] if node.agent else []
        if node.priority:
            extras.append(f"priority={node.priority}")
        extras.append(f"retries={node.max_retries}")
        text = text if len(text) <= width else text[: width - 1] + "…"
        return f"{text}  ({', '.join(extras)})"
    if node.kind is NodeKind.TOOL:
        return f"validates {pipeline.validated_node(name)}: {node.command}"
    if node.kind is NodeKind.CONDITIONAL:
        routes = [f"{e.condition} -> {e.dst}" for e in pipeline.edges if e.src == name]
        return "; ".join(sorted(routes))
    return ""


def cmd_show(args: argparse.Namespace) -> int:
    from attractor.pipeline import load_pipeline, topological_order

    pipeline = load_pipeline(Path(args.file))
    if args.json:
        print_json(pipeline.to_json())
        return EXIT_OK
    facts = [f"{len(pipeline.nodes)} nodes", f"{len(pipeline.edges)} edges"]
    facts += [f"{key}: {pipeline.attrs[key]}" for key in ("goal", "target", "max_agents")
              if key in pipeline.attrs]
    print(f"pipeline {pipeline.name} ({args.file}): {'; '.join(facts)}")
    rows = [
        [str(index), name, pipeline.nodes[name].kind.value, _dependencies(pipeline, name),
         _detail(pipeline, name)]
        for index, name in enumerate(topological_order(pipeline), start=1)
    ]
    print(format_table(["#", "NODE", "KIND", "DEPENDS ON", "DETAIL"], rows))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    group = subparser(subparsers, "pipeline", "check and show DOT pipelines",
                      "attractor pipeline lint pipelines/example-auth.dot")
    actions = group.add_subparsers(dest="pipeline_command", metavar="ACTION", parser_class=Parser)
    group.set_defaults(func=lambda args: _usage(group))

    p = subparser(actions, "lint", "report every problem of a pipeline (exit 2 if any)",
                  "attractor pipeline lint pipelines/example-auth.dot --json")
    p.add_argument("file", metavar="FILE", help="the DOT pipeline")
    add_json_option(p)
    p.set_defaults(func=cmd_lint)

    p = subparser(actions, "show", "list the nodes in scheduling order with their dependencies",
                  "attractor pipeline show pipelines/example-auth.dot")
    p.add_argument("file", metavar="FILE", help="the DOT pipeline")
    add_json_option(p)
    p.set_defaults(func=cmd_show)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Run the action parsed into `args` (the frame calls `args.func` directly)."""
    result: int = args.func(args)
    return result
