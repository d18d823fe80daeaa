"""The runtime is passed in, never written from outside (issue 23): a device gets its
DeviceRuntime through ``run_with`` and hands it what it built through ``sockets_built``; no
module but runtime.py assigns a DeviceRuntime attribute. Counted from the source (ast)."""

from __future__ import annotations

import ast
from pathlib import Path

from support.astwrites import attribute_writes

PACKAGE = Path(__file__).resolve().parents[2] / "procdevices"
OWNER = PACKAGE / "devices" / "runtime.py"


def _runtime_writes(source: str) -> list[str]:
    def counts(sub: ast.Attribute) -> bool:
        base = ast.unparse(sub.value)
        return base in ("runtime", "self._runtime", "device._runtime") or base.endswith("._runtime")

    return list(attribute_writes(ast.parse(source), counts))


def test_no_module_but_runtime_py_writes_a_runtime_field() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{where}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != OWNER
        for where in _runtime_writes(path.read_text())
    ]
    assert found == [], "pass values to the runtime through its methods:\n  " + "\n  ".join(found)


def test_the_check_sees_a_write() -> None:
    assert _runtime_writes("runtime.tap_endpoint = tap\nself._runtime.user_ctrl = s\n") == [
        "1: runtime.tap_endpoint",
        "2: self._runtime.user_ctrl",
    ]
