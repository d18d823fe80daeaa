"""One owner per fact: a Child's fields are written only by child.py, and its liveness's
only by liveness.py's methods (which health.py calls). Everything else asks them.

Counted from the source (ast): an assignment (``=``, ``+=``, annotated) to an attribute named
like a Child or Liveness field, on a variable that holds a Child (``child``, ``successor``,
``c``, or a parameter annotated ``Child``) or on a ``.liveness``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support.astwrites import attribute_writes

from procdevices.supervisor.child import Child
from procdevices.supervisor.liveness import Liveness

PACKAGE = Path(__file__).resolve().parents[2] / "procdevices"
OWNERS = {PACKAGE / "supervisor" / "child.py", PACKAGE / "supervisor" / "liveness.py"}
CHILD_FIELDS = set(Child.__slots__)
LIVENESS_FIELDS = set(Liveness.__slots__)
CHILD_NAMES = {"child", "successor", "c"}


def _child_params(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None and "Child" in ast.unparse(node.annotation):
            names.add(node.arg)
    return names


def writes(source: str) -> list[str]:
    tree = ast.parse(source)
    holders = CHILD_NAMES | _child_params(tree)

    def counts(sub: ast.Attribute) -> bool:
        base = sub.value
        on_child = isinstance(base, ast.Name) and base.id in holders and sub.attr in CHILD_FIELDS
        on_liveness = isinstance(base, ast.Attribute) and base.attr == "liveness" and sub.attr in LIVENESS_FIELDS
        return on_child or on_liveness

    return list(attribute_writes(tree, counts))


def test_no_child_field_is_written_outside_its_owners() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{where}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in OWNERS
        for where in writes(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "write through the Child's (or Liveness's) methods:\n" + "\n".join(found)


def test_the_count_sees_each_kind_of_write() -> None:
    source = """
def f(child, other, kid: Child):
    child.restart_after_stop = True
    successor.observer, x = None, 1
    kid.retry_at += 1.0
    child.liveness.paused = True
    other.state = 3          # not a Child
    child.whatever = 1       # not a field
"""
    assert writes(source) == [
        "3: child.restart_after_stop",
        "4: successor.observer",
        "5: kid.retry_at",
        "6: child.liveness.paused",
    ]
