"""The import graph of parplan: no cycles, and dependencies that point one way (docs/architecture.md).

Every `import` and `from … import` in parplan/**/*.py counts, at module level, inside
functions and under `if TYPE_CHECKING:` alike. `from parplan.mip import solve_schedule`
imports the package parplan.mip (its __init__, which imports its submodules);
`from parplan.cli import chain` imports the submodule parplan.cli.chain. Names a module
looks up by string (`importlib.import_module`, the lazy attributes of parplan/__init__.py
and parplan/runtime/__init__.py) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "parplan"

# What each part of parplan may import (its first name under parplan; "parplan" is the
# package's own __init__). The same table, with reasons, is in docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "parplan": {"errors", "schedule"},
    "errors": set(),
    "budget": {"errors"},
    "sizes": set(),
    "io": {"errors"},
    "schedule": {"errors"},
    "trace": {"errors"},
    "zoo": {"errors"},
    "baselines": {"errors", "schedule"},
    "mip": {"errors", "budget", "schedule", "baselines"},
    "cost": {"errors", "schedule", "trace"},
    "plan": {"errors", "io", "schedule"},
    "compare": {"errors", "schedule", "baselines", "mip"},
    "runtime": {"errors", "io", "schedule", "baselines", "mip", "cost", "planner", "plan", "zoo"},
    "render": {"errors", "sizes", "schedule", "plan", "runtime"},
    "planner": {"errors", "budget", "sizes", "io", "schedule", "baselines", "mip", "cost", "trace", "zoo", "plan"},
    "cli": {"errors", "budget", "sizes", "io", "schedule", "baselines", "mip", "cost", "trace", "zoo", "plan", "compare",
            "runtime", "render", "planner"},
}
# Data modules: what they import (directly or through other modules) must not reach these.
DATA_MODULES = ("parplan.plan", "parplan.schedule.ir", "parplan.schedule.costs")
NOT_FROM_DATA = ("parplan.render", "parplan.runtime", "parplan.cli")

Edge = tuple[str, str, int]  # (imported module, file, line)


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every parplan/**/*.py (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules) -> list[str]:
    """The parplan modules one import statement loads (the deepest module each name resolves to)."""

    def deepest(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(node, ast.Import):
        return [deepest(a.name) for a in node.names if a.name.split(".")[0] == "parplan"]
    if node.level:  # relative: `from . import x` in package p, `from .. import x` one level up
        package = module if is_package else module.rpartition(".")[0]
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "parplan":
        return []
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else deepest(source) for a in node.names]


def import_graph() -> dict[str, dict[str, Edge]]:
    """module -> {imported module: (imported module, file, line of the first such import)}."""
    modules = _modules()
    graph: dict[str, dict[str, Edge]] = {}
    for module, path in modules.items():
        edges: dict[str, Edge] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, module, path.name == "__init__.py", modules):
                    if target is not None and target != module and target not in edges:
                        edges[target] = (target, str(path.relative_to(PACKAGE_ROOT.parent)), node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, Edge]]) -> list[str] | None:
    """One import cycle as [m0, m1, …, m0], or None (depth-first search, nodes in sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, {})):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def _describe(cycle: list[str], graph) -> str:
    return "\n".join(f"  {a} -> {b}  ({graph[a][b][1]}:{graph[a][b][2]})" for a, b in zip(cycle, cycle[1:]))


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "parplan"


def _reachable(graph, start: str) -> dict[str, list[str]]:
    """Every module `start` imports directly or through others -> one import chain to it."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        m = todo.pop()
        for n in sorted(graph[m]):
            if n not in chains:
                chains[n] = chains[m] + [n]
                todo.append(n)
    return chains


def test_the_graph_sees_imports_inside_functions_and_packages():
    graph = import_graph()
    assert "parplan.cost.measure" in graph["parplan.cli.profile"], sorted(graph["parplan.cli.profile"])  # in a function
    assert "parplan.mip" in graph["parplan.compare"], sorted(graph["parplan.compare"])  # `from parplan.mip import …`
    assert "parplan.mip.api" in graph["parplan.mip"], sorted(graph["parplan.mip"])  # a package imports its parts
    assert "parplan.cli.chain" in graph["parplan.cli"], sorted(graph["parplan.cli"])  # `from parplan.cli import chain`


def test_find_cycle_names_the_cycle():
    graph = {"a": {"b": ("b", "a.py", 1)}, "b": {"c": ("c", "b.py", 2)}, "c": {"a": ("a", "c.py", 3)}, "d": {}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ("b", "a.py", 1)}, "b": {}}) is None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, (
        f"import cycle among parplan's modules:\n{_describe(cycle, graph)}\n"
        f"move the shared piece to the module that owns it, or import a submodule instead of its package"
    )


def test_every_part_of_parplan_has_an_entry_in_the_table():
    parts = {_part(m) for m in import_graph()}
    assert parts == set(ALLOWED), f"not in ALLOWED: {sorted(parts - set(ALLOWED))}; gone: {sorted(set(ALLOWED) - parts)}"


def test_dependencies_point_one_way():
    graph = import_graph()
    wrong = [
        f"  {m} -> {n}  ({file}:{line})"
        for m in sorted(graph)
        for n, (_, file, line) in sorted(graph[m].items())
        if _part(n) != _part(m) and _part(n) not in ALLOWED[_part(m)]
    ]
    assert not wrong, (
        "imports the layering in docs/architecture.md does not allow:\n" + "\n".join(wrong)
        + "\nmove the code to the package that owns the concept, or change ALLOWED here and the table in "
          "docs/architecture.md together"
    )


@pytest.mark.parametrize("module", DATA_MODULES)
def test_data_modules_import_no_renderer_runtime_or_cli(module):
    chains = _reachable(import_graph(), module)
    # the chains that enter a forbidden package (not those that go on inside it)
    bad = sorted(" -> ".join(c) for c in chains.values()
                 if c[-1].startswith(NOT_FROM_DATA) and not c[-2].startswith(NOT_FROM_DATA))
    assert not bad, f"data module {module} must not import {', '.join(NOT_FROM_DATA)}; it reaches them by\n  " + (
        "\n  ".join(bad))


def test_only_the_cli_imports_the_cli():
    graph = import_graph()
    wrong = [
        f"  {m} -> {n}  ({file}:{line})"
        for m in sorted(graph) if _part(m) != "cli"
        for n, (_, file, line) in sorted(graph[m].items()) if _part(n) == "cli"
    ]
    assert not wrong, "the CLI is the top layer; these import it:\n" + "\n".join(wrong)


MAX_FUNCTION_LINES = 80  # a function a reader can take in at one sitting (docs/architecture.md)


def test_no_function_is_longer_than_a_sitting():
    long = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)
