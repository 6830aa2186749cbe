"""Imports point one way: no two adaptkit modules import each other (directly or around a longer cycle),
and the library never imports commands or the CLI. Read from the source with ast (nothing is imported)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adaptkit"
KNOWN_CYCLES: set[frozenset[str]] = set()


@functools.cache  # one parse of the package for both checks (they run in the fast loop)
def import_graph() -> dict[str, set[str]]:
    """Module -> the adaptkit modules it imports (anywhere in the file, lazy imports included)."""
    files = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (file, is_package)

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, (file, is_package) in files.items():
        targets = set()
        for node in _import_statements(ast.parse(file.read_text()).body):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}".rstrip(".")
                targets.update(known(f"{base}.{alias.name}") for alias in node.names)
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _import_statements(body: list) -> list:
    """Every import statement in a block and the blocks nested in it (functions, classes, if, try, with,
    ...): imports are statements, so expressions need no visit (a third of the time of ast.walk)."""
    found = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            nested = getattr(node, name, None)
            if isinstance(nested, list):
                found += _import_statements(nested)
    return found


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    assert set(cycles(import_graph())) <= KNOWN_CYCLES


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_library_and_io_do_not_import_upwards():
    graph = import_graph()  # read only: the cached graph is shared
    upward = []
    for module, targets in graph.items():
        if module.startswith(("adaptkit.cli", "adaptkit.commands", "adaptkit.plugins", "adaptkit.__main__")):
            continue
        for target in targets:
            if target.startswith(("adaptkit.cli", "adaptkit.commands", "adaptkit.plugins")):
                upward.append((module, target))
            elif module.startswith("adaptkit.io") and not target.startswith(("adaptkit.io", "adaptkit.errors")) and target != "adaptkit":
                upward.append((module, target))
    assert upward == []


def test_no_test_module_imports_another_test_module():
    """Helpers shared by test modules live in tests/helpers.py or conftest fixtures."""
    tests = Path(__file__).resolve().parent
    pattern = re.compile(r"^\s*(?:from|import)\s+(test_\w*)", re.MULTILINE)
    offenders = [(file.name, name) for file in sorted(tests.glob("test_*.py")) for name in pattern.findall(file.read_text())]
    assert offenders == []
