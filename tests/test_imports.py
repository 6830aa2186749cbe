"""Imports point one way: no two adaptkit modules import each other (directly or around a longer cycle),
and the library never imports commands or the CLI. Read from the source with ast (nothing is imported)."""

from __future__ import annotations

import pytest
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adaptkit"
KNOWN_CYCLES: set[frozenset[str]] = set()


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
        for node in ast.walk(ast.parse(file.read_text())):
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


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_no_two_modules_import_each_other():
    assert set(cycles(import_graph())) <= KNOWN_CYCLES


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_library_and_io_do_not_import_upwards():
    graph = import_graph()
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
