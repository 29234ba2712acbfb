"""engine/families imports in one direction: no cycle among its modules (imports inside functions and
under TYPE_CHECKING counted), no module imports the package itself (its __init__ imports the loaders)
or the tiny test models (engine/tiny*.py stay off the production path)."""

from __future__ import annotations

import ast
from pathlib import Path

FAMILIES_DIR = Path(__file__).resolve().parents[2] / "engine" / "families"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def family_modules() -> dict[str, Path]:
    return {f"engine.families.{p.stem}": p for p in FAMILIES_DIR.glob("*.py") if p.stem != "__init__"}


def import_graph() -> dict[str, set[str]]:
    modules = family_modules()
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                return stack[stack.index(other) :] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_families_modules_import_without_a_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one():
    graph = import_graph()
    graph["engine.families.base"] = graph["engine.families.base"] | {"engine.families.loading"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]


def test_no_module_imports_the_package_or_the_test_models():
    for name, path in family_modules().items():
        imported = imported_modules(path)
        assert "engine.families" not in imported, f"{name} imports the package engine.families (use engine.families.base)"
        tiny = sorted(m for m in imported if m.startswith("engine.tiny"))
        assert not tiny, f"{name} imports the test models {tiny}"
