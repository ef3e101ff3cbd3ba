"""The tree is the architecture (docs/architecture.md): import-linter keeps the layers in
tests/run.sh; this keeps what its contracts do not say, counted as the layout issue
counted it: no module imports itself back through any chain (imports under
TYPE_CHECKING and inside functions included), and bot/ holds packages, not modules."""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the module graph: the groups of modules that import each
    other, directly or through others."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            groups.append(group)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles_anywhere() -> None:
    graph = grimp.build_graph("bot", "commands", "adapters", cache_dir=None)
    cycles = [sorted(group) for group in _strongly_connected(graph) if len(group) > 1]
    assert cycles == []


def test_bot_holds_layers_not_modules() -> None:
    loose = sorted(p.name for p in (ROOT / "bot").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"]
    layers = sorted(p.name for p in (ROOT / "bot").iterdir() if (p / "__init__.py").is_file())
    assert layers == [
        "app",
        "audit",
        "cluster",
        "delivery",
        "features",
        "kernel",
        "pipeline",
        "storage",
    ]
