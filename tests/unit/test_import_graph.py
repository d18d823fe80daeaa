"""The package's import graph: no import circle, and the bottom floor imports nothing above it.

Read from the source (ast), not by importing, so a circle that happens to import fine today
(thanks to import order or a late import inside a function) is still caught. Imports under
``if TYPE_CHECKING:`` never run, so they cannot make an import fail; they still tie modules
together, so a circle through them fails the test too (a type that a lower module needs
from a higher one is a protocol of its own, as devices/runnable.py is for runtime.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "procdevices"

# Leaf modules: everything else may lean on them, so they import nothing from procdevices.
LEAVES = {
    "procdevices.errorcodes",
    "procdevices.runlayout",
    "procdevices.exitcodes",
    "procdevices.supervisor.states",
}
# The bottom floor: may import leaves only.
BOTTOM_FLOOR = {"procdevices.errors": LEAVES}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str], *, typing_only: bool) -> set[str]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        # The longest known module the import names (``from a.b import c`` may mean a.b.c).
        while target and target not in modules:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        return target or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not typing_only:
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if (target := resolve(alias.name)) is not None:
                        found.add(target)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    target = resolve(f"{base}.{alias.name}") if base else None
                    if target is not None:
                        found.add(target)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


def import_graph(*, typing_only: bool = False) -> dict[str, set[str]]:
    """Module → the package modules it imports (``typing_only``: with the imports under
    ``if TYPE_CHECKING:`` too)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    # Extension modules (their .pyi stub stands for them) are modules too, and leaves.
    modules = set(paths) | {_module_name(p) for p in PACKAGE.rglob("*.pyi")}
    return {name: _imports(path, modules, typing_only=typing_only) for name, path in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_package_has_no_import_circle() -> None:
    found = [sorted(c) for c in circles(import_graph())]
    assert found == [], f"import circles: {found}"


def test_no_circle_through_typing_imports() -> None:
    found = [sorted(c) for c in circles(import_graph(typing_only=True))]
    assert found == [], f"import circles (counting TYPE_CHECKING imports): {found}"


def test_leaves_import_nothing_from_the_package() -> None:
    graph = import_graph()
    assert {leaf: graph[leaf] for leaf in LEAVES} == {leaf: set() for leaf in LEAVES}


def test_the_bottom_floor_imports_only_leaves() -> None:
    graph = import_graph()
    for module, allowed in BOTTOM_FLOOR.items():
        assert graph[module] <= allowed, f"{module} imports upward: {sorted(graph[module] - allowed)}"


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert circles({"a": {"b"}, "b": set()}) == []
