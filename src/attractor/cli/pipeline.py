"""`attractor pipeline lint|show FILE`: check a DOT pipeline and show its scheduling order.

Besides the pipeline's own rules, a node's `script` is checked with the scripted agent's own
parser (`script_problems`), so a script the agent would refuse is a lint problem, not an agent
that exits in a pane nobody watches.

pydot is heavy (~110 ms of imports): it is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from attractor.cli import Parser, subparser
from attractor.cli._flags import add_json_option
from attractor.cli._output import format_table, group_help, print_json
from attractor.errors import EXIT_OK, EXIT_USAGE, UsageError

if TYPE_CHECKING:
    from attractor.engines.pipeline import Pipeline, Problem


def _escaped_step_re() -> re.Pattern[str]:
    from attractor.agents.scripted import VERBS

    # `\n` (not `\\n`) then what parse_script would read as a step: an attempt filter or a verb
    return re.compile(r"(?<!\\)\\n((?:@\d+\+? )?(?:" + "|".join(VERBS) + r"))(?= |\\n|$)")


def script_problems(name: str, attrs: Mapping[str, str]) -> list[Problem]:
    """The problems of node `name`'s `script` as the scripted agent reads it: what its parser
    refuses, and a `\\n` that joins what looks like two steps into one (steps are lines; `\\n`
    is a newline inside a step's text). In a script of several steps, the text of a write or
    append may hold such a line (a file's content); a script of one step may not."""
    from attractor.agents.scripted import parse_script
    from attractor.engines.pipeline import Problem

    script = attrs.get("script")
    if script is None:
        return []
    where = f"node '{name}'"
    try:
        steps = parse_script(script)
    except UsageError as exc:
        return [Problem(where, str(exc))]
    pattern = _escaped_step_re()
    problems = []
    for step in steps:
        if step.verb in ("write", "append") and len(steps) > 1:
            continue
        found = pattern.search(step.args)
        if found:
            problems.append(Problem(where, f"script line {step.line}: '\\n{found.group(1)}' is read as text of this "
                                           f"{step.verb} step, not as a new step; put each step on a line of its own"))
    return problems


def _problem_line(path: Path, problem: Problem) -> str:
    """`FILE: node 'x': message`; a problem already located in the file keeps its `FILE:LINE`."""
    if problem.where == str(path) or problem.where.startswith(f"{path}:"):
        return f"{problem.where}: {problem.message}"
    return f"{path}: {problem.where}: {problem.message}"


def run_lint(args: argparse.Namespace) -> int:
    from attractor.engines.pipeline import check

    path = Path(args.file)
    result = check(path, [script_problems])
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
    from attractor.engines.pipeline import NodeKind

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


def run_show(args: argparse.Namespace) -> int:
    from attractor.engines.pipeline import load_pipeline, topological_order

    pipeline = load_pipeline(Path(args.file), [script_problems])
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
    group.set_defaults(func=group_help(group))

    p = subparser(actions, "lint", "report every problem of a pipeline (exit 2 if any)",
                  "attractor pipeline lint pipelines/example-auth.dot --json")
    p.add_argument("file", metavar="FILE", help="the DOT pipeline")
    add_json_option(p)
    p.set_defaults(func=run_lint)

    p = subparser(actions, "show", "list the nodes in scheduling order with their dependencies",
                  "attractor pipeline show pipelines/example-auth.dot")
    p.add_argument("file", metavar="FILE", help="the DOT pipeline")
    add_json_option(p)
    p.set_defaults(func=run_show)
