"""Where source code assigns an attribute: the ground of the one-owner-per-fact tests
(a Child's fields, a device runtime's), counted from the source with ast."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator


def attribute_writes(tree: ast.AST, counts: Callable[[ast.Attribute], bool]) -> Iterator[str]:
    """``"LINE: target"`` for each assignment (``=``, ``+=``, annotated, tuple targets
    included) to an attribute that ``counts``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and counts(sub):
                    yield f"{node.lineno}: {ast.unparse(sub)}"
