"""What a set of modules imports, measured in a fresh isolated interpreter (``-I``: no
user site, no PYTHONPATH), so nothing the test process imported already hides a cost."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def probe(code: str, *args: str) -> Any:
    """What ``code`` prints as JSON, run with ``args`` in a fresh isolated interpreter."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, *args], capture_output=True, text=True, check=True, timeout=50
    )
    return json.loads(out.stdout)


def imported_by(names: list[str]) -> set[str]:
    """Every module in ``sys.modules`` once ``names`` are imported."""
    modules = set(probe(_PROBE, *names))
    assert set(names) <= modules  # the probe did import them
    return modules
