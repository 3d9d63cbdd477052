"""The layout's rules (docs/architecture.md), checked on the source so that they cannot regress:
no import circles between bridge modules, no other module's private names, a ledger without
Flask or metrics, few modules at the top of bridge/ and few test files at the top of tests/."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import bridge

ROOT = Path(bridge.__file__).resolve().parent
TESTS = Path(__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = ["bridge", *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    module_name(path): path
    for path in ROOT.rglob("*.py")
    if "versions" not in path.relative_to(ROOT).parts  # Alembic's revisions are loaded by file
}


def runtime_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:` (annotations only, never imported)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str) -> dict[str, set[str]]:
    """The bridge modules `name` imports (anywhere, also inside functions), each with the names
    taken from it."""
    tree = ast.parse(MODULES[name].read_text())
    found: dict[str, set[str]] = {}
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in MODULES:
                    found.setdefault(submodule, set())
                elif node.module in MODULES:
                    found.setdefault(node.module, set()).add(alias.name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles() -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in GRAPH[node]:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_between_bridge_modules() -> None:
    assert cycles() == []


def test_the_cycle_finder_finds_a_circle() -> None:
    GRAPH["bridge.errors"]["bridge.config"] = set()
    GRAPH["bridge.config"]["bridge.errors"] = set()
    try:
        assert ["bridge.config", "bridge.errors"] in cycles()
    finally:
        del GRAPH["bridge.errors"]["bridge.config"]
        del GRAPH["bridge.config"]["bridge.errors"]


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_takes_another_modules_private_names() -> None:
    taken = []
    for name, imported in GRAPH.items():
        for source, names in imported.items():
            taken += [f"{name}: from {source} import {n}" for n in sorted(names) if private(n)]
        # `module._name` on a bridge module imported as a name (`from bridge.x import inbox`)
        tree = ast.parse(MODULES[name].read_text())
        aliases = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            for alias in node.names
            if f"{node.module}.{alias.name}" in MODULES
        }
        taken += [
            f"{name}: {node.value.id}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and private(node.attr)
        ]
    assert taken == []


def test_the_ledger_imports_neither_flask_nor_metrics() -> None:
    ledger = [name for name in MODULES if name.startswith("bridge.ledger")]
    assert len(ledger) >= 3
    for name in ledger:
        tree = ast.parse(MODULES[name].read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        from_bridge = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "bridge"
            for alias in node.names
        }
        assert not {m for m in imported if m.split(".")[0] in ("flask", "werkzeug")}, name
        assert "bridge.metrics" not in imported and "metrics" not in from_bridge, name


def bridge_modules_imported(name: str) -> set[str]:
    """Every module of ours `name` names in an import, runtime or annotation-only, as its
    dotted name (`from bridge import directus` is `bridge.directus`; relative ones resolved)."""
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            named.add(base)
            named |= {f"{base}.{alias.name}" for alias in node.names}
    return named & MODULES.keys()


def test_the_ledger_does_not_import_directus() -> None:
    """Dependencies point one way: the packages that apply the ledger's decisions (webhooks,
    refunds, jobs, web) and directus/ use the ledger; the ledger queues no Directus job itself
    (docs/architecture.md)."""
    # The finder finds such an import where there is one.
    assert "bridge.directus.alerts" in bridge_modules_imported("bridge.webhooks.apply")
    ledger = [name for name in MODULES if name.startswith("bridge.ledger")]
    assert len(ledger) >= 3
    found = [
        f"{name} imports {module}"
        for name in sorted(ledger)
        for module in sorted(bridge_modules_imported(name))
        if module == "bridge.directus" or module.startswith("bridge.directus.")
    ]
    assert found == []


def test_few_modules_at_the_top_of_bridge_and_few_test_files_at_the_top_of_tests() -> None:
    top = sorted(path.name for path in ROOT.glob("*.py"))
    assert len(top) <= 10, top
    top_tests = sorted(path.name for path in TESTS.glob("test_*.py"))
    assert len(top_tests) <= 12, top_tests
