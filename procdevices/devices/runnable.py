"""What a worker needs of a device: the type ``runtime.run_in_worker`` takes.

A protocol, not ``Device`` itself, so that runtime.py (which ``Device`` is built on) does not
name the class above it, even for the type checker: the device layer's import graph has no
circle, typing imports included (tests/unit/test_import_graph.py).
"""

from __future__ import annotations

from typing import Any, Protocol


class RunsInWorker(Protocol):
    """A device the worker hands its runtime and runs (``Device`` and every subclass)."""

    def run_with(self, runtime: Any) -> None:
        """Run with the worker's DeviceRuntime. Typed loosely: naming the class would import
        runtime.py, the one module that uses this protocol."""
        ...
