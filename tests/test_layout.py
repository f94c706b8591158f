"""The import graph of src/attractor points one way: down the tiers of DESIGN.md's module map.

Every module under src/attractor is parsed with `ast` (nothing is imported), and every import
counts: top-level, function-local, under TYPE_CHECKING, and `importlib.import_module("…")` with
a literal name. Tiers, lowest first: leaves (errors, names, clock, states, procs, the package
`__init__`) < doors (tmux, gitops) < store < engines < agents < layers < control < web < cli.
`__main__` is the `python -m attractor` entry point and sits with cli, whose `main` it calls.

A module may import from its own tier or lower ones, and the graph has no cycle. Edges that break
this today and need more than a move to fix are listed in ALLOWED_FOR_NOW with the reason; an
entry whose import is gone fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import attractor

PACKAGE = "attractor"
ROOT = Path(attractor.__file__).resolve().parent

TIERS = ("leaves", "doors", "store", "engines", "agents", "layers", "control", "web", "cli")
LEAVES = frozenset({"errors", "names", "clock", "states", "procs"})
DOORS = frozenset({"tmux", "gitops"})
FOLDERS = frozenset(TIERS[2:])

# (importer, imported) -> why it is still there; each is a separate piece of work.
ALLOWED_FOR_NOW: dict[tuple[str, str], str] = {
}


class Edge(NamedTuple):
    importer: str
    imported: str
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def tier_of(module: str) -> str | None:
    """The tier of a module of ours, or None when it has no room in the module map."""
    parts = module.split(".")[1:]
    if not parts:
        return "leaves"
    if parts == ["__main__"]:
        return "cli"
    if len(parts) == 1 and parts[0] in LEAVES:
        return "leaves"
    if len(parts) == 1 and parts[0] in DOORS:
        return "doors"
    if parts[0] in FOLDERS:
        return parts[0]
    return None


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _target(name: str, modules: frozenset[str]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(path: Path, importer: str, modules: frozenset[str]) -> list[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []

    def add(name: str, line: int) -> None:
        target = _target(name, modules)
        if target is not None and target != importer:
            edges.append(Edge(importer, target, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, importer, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value, node.lineno)
    return edges


def import_graph(root: Path = ROOT) -> tuple[frozenset[str], list[Edge]]:
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    modules = frozenset(paths)
    edges = [edge for name, path in paths.items() for edge in imports_of(path, name, modules)]
    return modules, edges


def find_cycles(modules: frozenset[str], pairs: set[tuple[str, str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module."""
    succ: dict[str, list[str]] = {m: sorted({b for a, b in pairs if a == m}) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(start: str) -> None:  # Tarjan's algorithm, iterative
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(succ[node]):
                work.append((node, i + 1))
                nxt = succ[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return [_cycle_in(component, succ) for component in components]


def _cycle_in(component: list[str], succ: dict[str, list[str]]) -> list[str]:
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in succ[node]:
            if nxt == start:
                return [*paths[node], start]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return component  # not reached: a component of two or more modules has a cycle


@functools.cache
def violations(root: Path = ROOT) -> tuple[list[str], list[str], list[str], list[str]]:
    """(modules without a room, upward imports, cycles, stale ALLOWED_FOR_NOW entries)."""
    modules, edges = import_graph(root)
    homeless = sorted(m for m in modules if tier_of(m) is None)
    pairs = {(e.importer, e.imported) for e in edges}
    live = pairs - set(ALLOWED_FOR_NOW)
    upward = sorted({
        f"{e.importer} ({tier_of(e.importer)}) imports {e.imported} ({tier_of(e.imported)}), line {e.line}"
        for e in edges
        if (e.importer, e.imported) in live and None not in (tier_of(e.importer), tier_of(e.imported))
        and TIERS.index(tier_of(e.importer) or "") < TIERS.index(tier_of(e.imported) or "")
    })
    cycles = [" -> ".join(cycle) for cycle in find_cycles(modules, live)]
    stale = sorted(f"{a} -> {b}" for a, b in set(ALLOWED_FOR_NOW) - pairs)
    return homeless, upward, cycles, stale


def _report(kind: int, title: str) -> None:
    found = violations()[kind]
    assert not found, f"{title}:\n  " + "\n  ".join(found)


def test_every_module_has_a_room() -> None:
    _report(0, "modules with no room in the module map (give them a folder or make them a leaf)")


def test_imports_point_down_the_tiers() -> None:
    _report(1, "imports from a higher tier")


def test_no_import_cycle() -> None:
    _report(2, "import cycles")


def test_allowed_for_now_is_still_needed() -> None:
    _report(3, "ALLOWED_FOR_NOW entries whose import is gone (remove them)")


def test_graph_sees_function_local_and_dynamic_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "store").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "store" / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from attractor.store import hooks\n")
    (pkg / "store" / "hooks.py").write_text(
        "import importlib\n\nfrom .. import errors\n\nimportlib.import_module('attractor.names')\n")
    (pkg / "names.py").write_text("")
    modules, edges = import_graph(pkg)
    pairs = {(e.importer, e.imported) for e in edges}
    assert pairs == {("attractor.errors", "attractor.store.hooks"), ("attractor.store.hooks", "attractor.errors"),
                     ("attractor.store.hooks", "attractor.names")}
    assert find_cycles(modules, pairs) == [["attractor.errors", "attractor.store.hooks", "attractor.errors"]]


# Libraries a long-lived layer must not load: the DOT parser (the launcher parses once), OpenSSL
# (3.6 MB for a digest now and then) and the git and tmux libraries the doors no longer use.
LAYER_FORBIDDEN = ("pydot", "pyparsing", "_hashlib", "git", "libtmux")


def test_the_long_lived_layers_load_only_what_they_use() -> None:
    code = ("import sys, attractor.layers.runner, attractor.layers.guardian\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({LAYER_FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
