"""The layers' import rule (docs/architecture.md §1), read from the code's own imports.

Every import counts: at the top of a module, inside a function, and under
`if TYPE_CHECKING:` too (an annotation is a dependency as much as a call). The rule:

* `models`, `actions`, `queues`, `clients` and `migrations` never import `server`;
* `server.engine` never imports `server.api` or `server.ops`;
* `server.api` never imports `server.ops`;
* nothing outside `server.ops.cli` imports the CLI;
* and no module imports itself back through others: the import graph of the project's
  packages has no circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "actions", "queues", "clients", "migrations", "server")
# What each layer may not import (a prefix of a module name).
FORBIDDEN = {
    "models": ("server",),
    "actions": ("server",),
    "queues": ("server",),
    "clients": ("server",),
    "migrations": ("server",),
    "server.engine": ("server.api", "server.ops"),
    "server.api": ("server.ops",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imported_modules(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The project modules `path` imports when it runs (a `from X import name` counts as
    X.name when that is a module of the project, else as X)."""
    this = module_name(path)
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = this.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in known else base
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    for name in visit(ast.parse(path.read_text(), str(path))):
        if name.split(".")[0] in PACKAGES:
            yield name


def import_graph() -> dict[str, set[str]]:
    known = project_modules()
    return {
        name: {imported for imported in imported_modules(path, known) if imported in known}
        for name, path in known.items()
    }


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_layer_imports_a_layer_above_it() -> None:
    broken = [
        f"{importer} imports {imported}"
        for importer, imports in import_graph().items()
        for layer, forbidden in FORBIDDEN.items()
        if _within(importer, layer)
        for imported in imports
        if any(_within(imported, prefix) for prefix in forbidden)
    ]
    assert broken == []


def test_nothing_outside_the_cli_imports_it() -> None:
    broken = [
        f"{importer} imports {imported}"
        for importer, imports in import_graph().items()
        if not _within(importer, "server.ops.cli")
        for imported in imports
        if _within(imported, "server.ops.cli")
    ]
    assert broken == []


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    # Packages' __init__ modules import nothing of their children here, so a child's
    # edge to its package is not a circle; Tarjan's algorithm finds every other.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    assert circles == []


def test_the_rule_sees_the_imports_it_guards() -> None:
    """A check that finds nothing must be able to: the engine's service is known to
    import the live queues, the serving process the API, and the CLI (inside a
    function) the serving process."""
    graph = import_graph()
    assert "server.engine.live_queues" in graph["server.engine.service"]
    assert "server.api.app" in graph["server.ops.serve"]
    assert "server.ops.serve" in graph["server.ops.cli.serving"]
