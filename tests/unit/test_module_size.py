"""The supervisor's class module stays a module of decisions (issue 23): its helpers (the
start queue, the state file, the roster, readiness, signals, status) live beside it, and a
growing core.py is the sign that the next one should too."""

from __future__ import annotations

from pathlib import Path

import procdevices.supervisor.core as core

LIMIT = 350


def test_the_supervisors_class_module_stays_small() -> None:
    lines = len(Path(core.__file__).read_text().splitlines())
    assert lines <= LIMIT, f"procdevices/supervisor/core.py has {lines} lines (limit {LIMIT}): split out a helper"
