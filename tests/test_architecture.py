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


# Each stdlib dataclass costs ~0.6 ms of exec() when its module is imported: with ~100 of
# them, that was 60 ms of a 420 ms start-up (issue 19). Value types are msgspec Structs,
# made in C; these keep a dataclass for what a Struct has no way to say.
DATACLASSES_KEPT = {
    "bot/audit/record.py": "AuditEntry caches its canonical JSON outside __init__ and eq",
    "bot/features/actions/prepared.py": "PreparedAction keeps its environment out of repr",
    "bot/features/alerts/silences.py": "Matcher caches its compiled regex outside eq",
}


def test_value_types_are_structs_not_dataclasses() -> None:
    using = {
        path.relative_to(ROOT).as_posix()
        for package in ("bot", "commands", "adapters")
        for path in (ROOT / package).rglob("*.py")
        if "@dataclass" in path.read_text("utf-8")
    }
    assert using == set(DATACLASSES_KEPT)
