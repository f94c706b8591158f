"""pipeline.py: lint reports every problem where it is; good pipelines load; scheduling rules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.cli import main
from attractor.engines.pipeline import (
    NodeKind,
    Pipeline,
    PipelineError,
    ScheduleState,
    lint,
    load_pipeline,
    node_states,
    ready_nodes,
    topological_order,
)
from attractor.errors import EXIT_USAGE
from tests.helpers import REPO_ROOT, run_cli

EXAMPLE = REPO_ROOT / "pipelines" / "example-auth.dot"


def write(tmp_path: Path, body: str, name: str = "p.dot") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).strip() + "\n")
    return path


def dot(statements: str, header: str = "digraph p") -> str:
    """A pipeline with start, an agent task `a` and exit, plus `statements`."""
    return (
        f"{header} {{\n  start [shape=Mdiamond]\n  a [shape=box, prompt=\"do a\"]\n"
        f"  exit [shape=Msquare]\n{textwrap.indent(textwrap.dedent(statements).strip(), '  ')}\n}}"
    )


class Bad(NamedTuple):
    test_id: str
    text: str
    expected: dict[str, str]  # where -> a fragment of the message; exactly these places


BAD = [
    Bad("syntax-error", "digraph p {\n  start [shape=Mdiamond\n  a -> b\n}",
        {"FILE:2": "DOT syntax error at column 9"}),
    Bad("undirected",
        "graph p {\n start [shape=Mdiamond]\n exit [shape=Msquare]\n start -- exit\n}",
        {"graph": "a pipeline is a digraph, not a graph"}),
    Bad("two-graphs", "digraph a { x }\ndigraph b { y }", {"graph": "holds 2 graphs"}),
    Bad("no-start", "digraph p {\n a [shape=box, prompt=x]\n exit [shape=Msquare]\n a -> exit\n}",
        {"graph": "0 start nodes; a pipeline needs exactly one (shape=Mdiamond)"}),
    Bad("two-exits", dot("e2 [shape=Msquare]\nstart -> a -> exit\na -> e2"),
        {"graph": "2 exit nodes: exit, e2"}),
    Bad("unreachable", dot("island [shape=box, prompt=x]\nstart -> a -> exit\nisland -> exit"),
        {"node 'island'": "not reachable from start 'start'"}),
    Bad("dead-end", dot("dead [shape=box, prompt=x]\nstart -> a -> exit\na -> dead"),
        {"node 'dead'": "no path to exit 'exit'"}),
    Bad("edge-to-missing", dot("start -> a -> exit\na -> ghost"),
        {"edge 'a -> ghost'": "node 'ghost' is not declared"}),
    Bad("edge-from-missing", dot("start -> a -> exit\nghost -> a"),
        {"edge 'ghost -> a'": "node 'ghost' is not declared"}),
    Bad("unknown-shape", dot("x [shape=ellipse]\nstart -> a -> x -> exit"),
        {"node 'x'": "unknown shape 'ellipse'"}),
    Bad("no-shape", dot("x\nstart -> a -> x -> exit"), {"node 'x'": "no shape"}),
    Bad("unknown-attribute", dot("b [shape=box, prompt=x, promt=y]\nstart -> a -> b -> exit"),
        {"node 'b'": "unknown attribute 'promt' for a codergen node; did you mean 'prompt'?"}),
    Bad("attribute-of-other-kind", dot("start -> a -> exit\nstart [command=x]"),
        {"node 'start'": "unknown attribute 'command' for a start node"}),
    Bad("unknown-edge-attribute", dot("start -> a [weight=3]\na -> exit"),
        {"edge 'start -> a'": "unknown edge attribute 'weight'"}),
    Bad("unknown-graph-attribute", dot("start -> a -> exit\nagents=3"),
        {"graph": "unknown graph attribute 'agents'"}),
    Bad("codergen-without-prompt", dot("b [shape=box]\nstart -> a -> b -> exit"),
        {"node 'b'": "needs a prompt or a script"}),
    Bad("tool-without-command", dot("v [shape=parallelogram]\nstart -> a -> v -> exit"),
        {"node 'v'": "needs a command"}),
    Bad("bad-max-retries", dot("b [shape=box, prompt=x, max_retries=two]\nstart -> a -> b -> exit"),
        {"node 'b'": "max_retries='two' is not an integer"}),
    Bad("negative-max-retries",
        dot("b [shape=box, script=x, max_retries=-1]\nstart -> a -> b -> exit"),
        {"node 'b'": "max_retries='-1' is not an integer >= 0"}),
    Bad("bad-priority", dot("b [shape=box, prompt=x, priority=1.5]\nstart -> a -> b -> exit"),
        {"node 'b'": "priority='1.5' is not an integer"}),
    Bad("bad-timeout",
        dot("v [shape=parallelogram, command=t, timeout=soon]\nstart -> a -> v -> exit"),
        {"node 'v'": "timeout='soon' is not a number of seconds > 0"}),
    Bad("zero-timeout", dot("b [shape=box, prompt=x, timeout=0]\nstart -> a -> b -> exit"),
        {"node 'b'": "timeout='0'"}),
    Bad("bad-max-agents", dot("start -> a -> exit\nmax_agents=0"),
        {"graph": "max_agents='0' is not an integer >= 1"}),
    Bad("bad-target", dot('start -> a -> exit\ntarget="main..x"'),
        {"graph": "target='main..x' is not a valid branch name"}),
    Bad("bad-agent-name",
        dot('b [shape=box, prompt=x, agent="Claude Code"]\nstart -> a -> b -> exit'),
        {"node 'b'": "agent='Claude Code' is not a valid agent name"}),
    Bad("loop-with-no-exit",
        dot("l1 [shape=box, prompt=x]\nl2 [shape=box, prompt=x]\nstart -> a -> exit\n"
            "a -> l1 -> l2 -> l1"),
        {"node 'l1'": "loop with no exit: l1 -> l2 -> l1 never reaches exit 'exit'"}),
    Bad("cycle-with-exit", dot("b [shape=box, prompt=x]\nstart -> a -> b -> exit\nb -> a"),
        {"edge 'b -> a'": "cycle a -> b -> a: loops are not supported"}),
    Bad("self-loop", dot("start -> a -> exit\na -> a"), {"edge 'a -> a'": "cycle a -> a"}),
    Bad("exit-with-outgoing-edge", dot("z [shape=box, prompt=x]\nstart -> a -> exit -> z"),
        {"edge 'exit -> z'": "the exit node cannot have outgoing edges",
         "node 'z'": "no path to exit"}),
    Bad("conditional-without-fail",
        dot('c [shape=diamond]\nstart -> a -> c\nc -> exit [condition="outcome=success"]'),
        {"node 'c'": "missing: outcome=fail"}),
    Bad("conditional-edge-without-condition",
        dot('c [shape=diamond]\nb [shape=box, prompt=x]\nstart -> a -> c\n'
            'c -> exit [condition="outcome=success"]\nc -> b\nb -> exit'),
        {"edge 'c -> b'": "an edge leaving a conditional needs condition=",
         "node 'c'": "missing: outcome=fail"}),
    Bad("condition-on-plain-edge", dot('start -> a\na -> exit [condition="outcome=success"]'),
        {"edge 'a -> exit'": "a condition only belongs on an edge leaving a conditional"}),
    Bad("bad-condition-value",
        dot('c [shape=diamond]\nstart -> a -> c\nc -> exit [condition="outcome=success"]\n'
            'c -> exit [condition="outcome=maybe"]'),
        {"edge 'c -> exit'": "condition='outcome=maybe'", "node 'c'": "missing: outcome=fail"}),
    Bad("conditional-with-two-predecessors",
        dot('b [shape=box, prompt=x]\nc [shape=diamond]\nstart -> a -> c\nstart -> b -> c\n'
            'c -> exit [condition="outcome=success"]\nc -> exit [condition="outcome=fail"]'),
        {"node 'c'": "exactly one predecessor; it has 2"}),
    Bad("uppercase-name", dot("Impl [shape=box, prompt=x]\nstart -> a -> Impl -> exit"),
        {"node 'Impl'": "invalid node name"}),
    Bad("quoted-name-with-space",
        dot('"impl auth" [shape=box, prompt=x]\nstart -> a -> "impl auth" -> exit'),
        {"node 'impl auth'": "invalid node name"}),
    Bad("validates-not-codergen",
        dot("v [shape=parallelogram, command=t, validates=start]\nstart -> a -> v -> exit"),
        {"node 'v'": "validates='start' is not an agent task (box) node"}),
    Bad("validates-not-upstream",
        dot("b [shape=box, prompt=x]\nv [shape=parallelogram, command=t, validates=b]\n"
            "start -> a -> v -> exit\nstart -> b -> exit"),
        {"node 'v'": "validates='b' is not upstream of this tool"}),
    Bad("tool-with-nothing-to-validate",
        dot("v [shape=parallelogram, command=t]\nstart -> v -> a -> exit"),
        {"node 'v'": "no agent task (box) node upstream to validate"}),
]


@pytest.mark.parametrize("case", BAD, ids=[c.test_id for c in BAD])
def test_lint_names_each_problem(tmp_path: Path, case: Bad) -> None:
    path = write(tmp_path, case.text)
    problems = lint(path)
    expected = {where.replace("FILE", str(path)): text for where, text in case.expected.items()}
    assert {p.where for p in problems} == set(expected), problems
    for where, fragment in expected.items():
        assert any(fragment in p.message for p in problems if p.where == where), problems
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    assert info.value.problems == tuple(problems)
    assert info.value.exit_code == EXIT_USAGE


def test_lint_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, dot(
        "b [shape=box]\nx [shape=ellipse]\nv [shape=parallelogram]\n"
        "start -> a -> exit\na -> b -> exit\nstart -> x -> exit\na -> ghost\nstart -> v -> exit"
    ))
    wheres = [p.where for p in lint(path)]
    assert wheres == ["node 'b'", "node 'x'", "node 'v'", "edge 'a -> ghost'", "node 'v'"]


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.dot"
    assert [(p.where, p.message) for p in lint(missing)] == [
        (str(missing), "cannot read the pipeline: No such file or directory")
    ]
    binary = tmp_path / "binary.dot"
    binary.write_bytes(b"\xff\xfe\x00digraph")
    [problem] = lint(binary)
    assert problem.where == str(binary) and "cannot read the pipeline" in problem.message


# -- good pipelines -----------------------------------------------------------------------------

PARALLEL = """
digraph par {
  graph [goal="two in parallel", max_agents=2, target=main]
  start [shape=Mdiamond]
  left  [shape=box, prompt="left side", priority=1]
  right [shape=box, prompt="right side", priority=5, agent=claude, timeout=90, max_retries=0]
  check_left [shape=parallelogram, command="pytest -q tests/left"]
  join  [shape=box, script="write x\\ncommit"]
  check [shape=parallelogram, command="pytest -q", validates=join, timeout=30]
  exit  [shape=Msquare]
  start -> left -> check_left -> join
  start -> right -> join
  join -> check -> exit
}
"""

CONDITIONAL = """
digraph cond {
  start    [shape=Mdiamond]
  impl     [shape=box, prompt="try the fast way"]
  decide   [shape=diamond, label="did it work?"]
  polish   [shape=box, prompt="polish it"]
  fallback [shape=box, prompt="do it the slow way"]
  exit     [shape=Msquare]
  start -> impl -> decide
  decide -> polish   [condition="outcome=success"]
  decide -> fallback [condition="outcome = fail"]
  polish -> exit
  fallback -> exit
}
"""


def test_example_auth_loads() -> None:
    pipeline = load_pipeline(EXAMPLE)
    assert pipeline.name == "auth"
    assert topological_order(pipeline) == ["start", "impl_auth", "validate", "exit"]
    assert pipeline.nodes["impl_auth"].prompt == "Add login to app/auth.py with tests"
    assert pipeline.nodes["validate"].kind is NodeKind.TOOL
    assert pipeline.validated_node("validate") == "impl_auth"
    assert pipeline.validators_of("impl_auth") == ["validate"]
    assert pipeline.start == "start" and pipeline.exit == "exit"


def test_parallel_pipeline_model(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path, PARALLEL))
    assert (pipeline.goal, pipeline.max_agents, pipeline.target) == ("two in parallel", 2, "main")
    right = pipeline.nodes["right"]
    assert (right.agent, right.timeout, right.max_retries, right.priority) == ("claude", 90.0, 0, 5)
    assert pipeline.nodes["left"].max_retries == 2  # default
    assert pipeline.nodes["join"].script == "write x\\ncommit"  # DOT escapes other than \" stay
    assert pipeline.validates == {"check_left": "left", "check": "join"}
    assert pipeline.codergen_nodes() == ["right", "left", "join"]
    assert pipeline.predecessors("join") == ["right", "check_left"]  # priority first, then name
    assert pipeline.successors("start") == ["right", "left"]
    assert topological_order(pipeline) == [
        "start", "right", "left", "check_left", "join", "check", "exit"
    ]
    data = json.loads(json.dumps(pipeline.to_json()))
    assert [n["name"] for n in data["nodes"]][:2] == ["start", "right"]
    assert data["nodes"][-2]["validates"] == "join"


def test_dot_conveniences(tmp_path: Path) -> None:
    """Default statements, clusters, edges to a node group, quotes and multi-line values."""
    path = write(tmp_path, r'''
        digraph "conv" {
          start [shape=Mdiamond]
          node [shape=box]
          subgraph cluster_work {
            label="work"
            a [prompt="say \"hi\"
        on two lines"]
            b [prompt=b]
          }
          node [shape=Msquare]
          exit
          start -> {a b}
          a -> exit
          b -> exit
        }
    ''')
    pipeline = load_pipeline(path)
    assert pipeline.name == "conv"
    assert {n: node.kind.value for n, node in pipeline.nodes.items()} == {
        "start": "start", "a": "codergen", "b": "codergen", "exit": "exit"
    }
    assert pipeline.nodes["a"].prompt == 'say "hi"\non two lines'
    assert pipeline.successors("start") == ["a", "b"]


# -- scheduling ---------------------------------------------------------------------------------


def test_ready_nodes_progression_parallel(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, PARALLEL))
    assert ready_nodes(p, set(), set(), {}) == ["right", "left"]  # start is done at once
    assert ready_nodes(p, set(), {"right"}, {}) == ["left"]
    assert ready_nodes(p, {"right"}, {"left"}, {}) == []  # join waits for left (and its check)
    # a tool node is done with its codergen node: left done => check_left done => join ready
    assert ready_nodes(p, {"right", "left"}, set(), {}) == ["join"]
    states = node_states(p, {"right", "left"}, set(), {})
    assert states["check_left"] is ScheduleState.DONE and states["exit"] is ScheduleState.WAITING
    assert ready_nodes(p, {"right", "left", "join"}, set(), {}) == ["exit"]
    assert ready_nodes(p, {"right", "left", "join", "exit"}, set(), {}) == []


def test_failed_node_blocks_downstream(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, PARALLEL))
    states = node_states(p, {"right", "left"}, set(), {"left": "fail"})
    assert states["check_left"] is ScheduleState.BLOCKED
    assert states["join"] is ScheduleState.BLOCKED and states["exit"] is ScheduleState.BLOCKED
    assert ready_nodes(p, {"right", "left"}, set(), {"left": "fail"}) == []


@pytest.mark.parametrize(("outcome", "taken", "skipped"),
                         [("success", "polish", "fallback"), ("fail", "fallback", "polish")])
def test_conditional_routes_on_outcome(tmp_path: Path, outcome: str, taken: str,
                                       skipped: str) -> None:
    p = load_pipeline(write(tmp_path, CONDITIONAL))
    assert p.edges[-3].condition == "fail"  # "outcome = fail" normalised
    assert ready_nodes(p, set(), set(), {}) == ["impl"]
    assert ready_nodes(p, set(), {"impl"}, {}) == []
    states = node_states(p, {"impl"}, set(), {"impl": outcome})
    assert states["decide"] is ScheduleState.DONE
    assert states[taken] is ScheduleState.READY and states[skipped] is ScheduleState.SKIPPED
    assert ready_nodes(p, {"impl"}, set(), {"impl": outcome}) == [taken]
    # the exit waits only for the branch taken
    assert ready_nodes(p, {"impl", taken}, set(), {"impl": outcome}) == ["exit"]


def test_conditional_with_everything_skipped_upstream(tmp_path: Path) -> None:
    """Skipping propagates: a node reached only through a skipped node is skipped too."""
    path = write(tmp_path, CONDITIONAL.replace("fallback -> exit", "fallback -> more -> exit")
                 .replace("exit     [shape=Msquare]",
                          "exit [shape=Msquare]\n  more [shape=box, prompt=m]"))
    p = load_pipeline(path)
    states = node_states(p, {"impl"}, set(), {"impl": "success"})
    assert states["fallback"] is ScheduleState.SKIPPED and states["more"] is ScheduleState.SKIPPED
    assert ready_nodes(p, {"impl", "polish"}, set(), {"impl": "success"}) == ["exit"]


def test_topological_order_is_deterministic(tmp_path: Path) -> None:
    first = load_pipeline(write(tmp_path, PARALLEL, "one.dot"))
    shuffled = "\n".join(reversed(PARALLEL.strip().splitlines()[1:-1]))
    second = load_pipeline(write(tmp_path, "digraph par {\n" + shuffled + "\n}", "two.dot"))
    assert topological_order(first) == topological_order(second)
    assert isinstance(second, Pipeline)


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_lint_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "lint", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == "ok: 4 nodes, 3 edges\n" and err == ""

    bad = write(tmp_path,
                dot("x [shape=ellipse]\nstart -> a -> exit\na -> ghost\nstart -> x -> exit"))
    assert main(["pipeline", "lint", str(bad)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad}: node 'x': unknown shape 'ellipse'; expected one of Mdiamond (start), "
        "Msquare (exit), box (agent task), parallelogram (tool), diamond (conditional)",
        f"{bad}: edge 'a -> ghost': node 'ghost' is not declared; declare it with a shape, "
        'e.g. ghost [shape=box, prompt="..."]',
    ]

    assert main(["pipeline", "lint", "--json", str(bad)]) == EXIT_USAGE
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["schema"] == 1
    assert [p["where"] for p in data["problems"]] == ["node 'x'", "edge 'a -> ghost'"]

    syntax = write(tmp_path, "digraph p {\n  a [shape=box\n}", "syntax.dot")
    assert main(["pipeline", "lint", str(syntax)]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"{syntax}:2: DOT syntax error")


def test_cli_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "show", str(write(tmp_path, CONDITIONAL))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pipeline cond (")
    assert [line.split()[1] for line in lines[2:]] == [
        "start", "impl", "decide", "fallback", "polish", "exit"
    ]
    assert "decide[fail]" in lines[5] and "fail -> fallback; success -> polish" in lines[4]

    assert main(["pipeline", "show", "--json", str(EXAMPLE)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(n["name"], n["kind"], n["depends_on"]) for n in data["nodes"]] == [
        ("start", "start", []), ("impl_auth", "codergen", ["start"]),
        ("validate", "tool", ["impl_auth"]), ("exit", "exit", ["validate"]),
    ]

    bad = write(tmp_path, dot("start -> a -> exit\na -> ghost\na -> ghost2"), "bad.dot")
    assert main(["pipeline", "show", str(bad)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run 'attractor pipeline lint {bad}' to see all 2" in err


def test_cli_lint_subprocess(tmp_path: Path) -> None:
    bad = write(tmp_path, dot("start -> a -> exit\nb [shape=box]\na -> b -> exit"))
    result = run_cli(["pipeline", "lint", str(bad)])
    assert result.returncode == EXIT_USAGE and result.stdout == ""
    assert result.stderr == f"{bad}: node 'b': an agent task (box) needs a prompt or a script\n"


def test_cli_module_does_not_import_pydot() -> None:
    code = ("import sys, attractor.cli.pipeline; "
            "sys.exit(1 if {'pydot', 'pyparsing', 'attractor.tmux'} & set(sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- a scripted node's script, checked with the scripted agent's own parser ------------------------


class ScriptCase(NamedTuple):
    test_id: str
    script: str  # DOT text of the script attribute: a real line break separates steps
    fragment: str  # "" when the script is good


SCRIPTS = [
    ScriptCase("steps-joined-by-escaped-newline", "write a.py x = 1\\ncommit add a\\nreport",
               "script line 1: '\\ncommit' is read as text of this write step, not as a new step"),
    ScriptCase("escaped-newline-after-run", "run make\\nreport done",
               "script line 1: '\\nreport' is read as text of this run step"),
    ScriptCase("escaped-newline-before-a-filter", "commit x\\n@2+ report", "'\\n@2+ report'"),
    ScriptCase("unknown-verb", "write a.py x\ncomit add a\nreport", "script line 2: unknown step 'comit'"),
    ScriptCase("sleep-without-seconds", "sleep soon", "script line 1: sleep needs seconds, got 'soon'"),
    ScriptCase("write-without-path", "@2 write", "script line 1: write needs a PATH"),
    ScriptCase("good", "write a.py x = 1\\n\ncommit add a\nreport done", ""),
    ScriptCase("file-text-may-start-a-line-with-a-verb", "write README.md Usage:\\nrun make\\n\ncommit docs", ""),
    ScriptCase("escaped-backslash-then-n", "run printf '\\\\ncommit'", ""),
]


@pytest.mark.parametrize("case", SCRIPTS, ids=[c.test_id for c in SCRIPTS])
def test_lint_checks_a_script_as_the_scripted_agent_reads_it(tmp_path: Path, case: ScriptCase,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from attractor.cli.pipeline import script_problems

    path = write(tmp_path, dot(f'b [shape=box, script="{case.script}"]\nstart -> a -> b -> exit'))
    problems = lint(path, [script_problems])
    code = main(["pipeline", "lint", str(path)])
    err = capsys.readouterr().err
    if not case.fragment:
        assert problems == [] and code == 0, problems
        return
    assert [p.where for p in problems] == ["node 'b'"], problems
    assert case.fragment in problems[0].message, problems
    assert code == EXIT_USAGE and err == f"{path}: node 'b': {problems[0].message}\n"
    assert lint(path) == []  # the pipeline's own rules know nothing of the scripted agent


def test_show_refuses_a_pipeline_whose_script_the_agent_would_refuse(tmp_path: Path) -> None:
    path = write(tmp_path, dot('b [shape=box, script="crash now\nbogus"]\nstart -> a -> b -> exit'))
    result = run_cli(["pipeline", "show", str(path)])
    assert result.returncode == EXIT_USAGE
    assert result.stderr == f"error: pipeline {path}: node 'b': script line 2: unknown step 'bogus'; steps: " \
                            "write, append, run, commit, sleep, ask, menu, report, stuck, fail, hang, crash\n"


@pytest.mark.parametrize("name", ["demo.dot", "example-auth.dot"])
def test_shipped_pipelines_lint_clean(name: str) -> None:
    from attractor.cli.pipeline import script_problems

    assert lint(REPO_ROOT / "pipelines" / name, [script_problems]) == []


class RunIdCase(NamedTuple):
    test_id: str
    given: str
    expected: str


RUN_IDS = [
    RunIdCase("valid-unchanged", "demo-20261124-010203-001", "demo-20261124-010203-001"),
    RunIdCase("ticket", "PRD-TEST-001", "prd-test-001"),
    RunIdCase("spaces-and-slashes", "Team A/Sprint 3", "team-a-sprint-3"),
    RunIdCase("leading-punctuation", "--_x", "x"),
    RunIdCase("too-long", "A" * 70, "a" * 64),
    RunIdCase("nothing-left", "!!!", "!!!"),
]


@pytest.mark.parametrize("case", RUN_IDS, ids=[c.test_id for c in RUN_IDS])
def test_run_id_for(case: RunIdCase) -> None:
    from attractor.engines.pipeline import run_id_for

    assert run_id_for(case.given) == case.expected


# -- the parsed snapshot that runners read ------------------------------------------------------

_LOADS = """
import sys
from pathlib import Path
from attractor.engines.pipeline import load_pipeline
p = load_pipeline(Path(sys.argv[1]))
print(sorted(p.nodes), "pydot" in sys.modules)
"""


def _load_elsewhere(path: Path) -> str:
    return subprocess.run([sys.executable, "-c", _LOADS, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_snapshot_is_read_instead_of_parsing_and_only_for_the_same_bytes(tmp_path: Path) -> None:
    from attractor.engines.pipeline import load_pipeline, read_snapshot, save_snapshot, snapshot_path

    path = tmp_path / "pipeline.dot"
    path.write_bytes((REPO_ROOT / "pipelines" / "demo.dot").read_bytes())
    parsed = load_pipeline(path)
    assert read_snapshot(path) is None and _load_elsewhere(path).endswith("True")  # no snapshot: parsed
    save_snapshot(parsed, path)
    again = read_snapshot(path)
    assert again == parsed and list(again.nodes) == list(parsed.nodes)  # the same model, in order
    assert _load_elsewhere(path) == f"{sorted(parsed.nodes)} False"  # the DOT parser never loaded
    # an edited file is parsed again (its snapshot is for other bytes)
    text = path.read_text().rstrip()
    assert text.endswith("}")
    path.write_text(text[:-1] + '  extra [shape=box, prompt="x"]\n  start -> extra -> exit\n}\n')
    assert read_snapshot(path) is None
    assert "extra" in load_pipeline(path).nodes
    # a snapshot that does not read back is ignored, never trusted
    save_snapshot(load_pipeline(path), path)
    snapshot_path(path).write_text(json.dumps({**json.loads(snapshot_path(path).read_text()), "nodes": [{}]}))
    assert read_snapshot(path) is None and "extra" in load_pipeline(path).nodes
    snapshot_path(path).write_text("{not json")
    assert read_snapshot(path) is None and "extra" in load_pipeline(path).nodes
