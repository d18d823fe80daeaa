"""The command line: ``main`` is the ``procdevices`` entry point.

It holds SIGINT, SIGTERM and SIGHUP (``interrupts.py``) before it imports the commands: a
Ctrl-C while they are still importing is then acted on once, by the command, instead of
ending in a KeyboardInterrupt traceback. So this module imports nothing heavy."""

from __future__ import annotations

import gc
import importlib

from procdevices.cli import interrupts


def main(argv: list[str] | None = None) -> int:
    # The cyclic collector is paused while the commands import: that makes modules and
    # classes, which live as long as the process, and the passes over them would find nothing
    # to free (~2.5% of `up`'s CPU before its first spawn, docs/performance.md). Frozen once
    # loaded, they are never walked again. (A caller that turned the collector off keeps it so.)
    collecting = gc.isenabled()
    gc.disable()
    held = interrupts.hold()
    commands = importlib.import_module("procdevices.cli.main")
    if collecting:
        gc.freeze()
        gc.enable()
    # Importing the submodule ``main`` rebinds this package's attribute of that name to it;
    # ``procdevices.cli.main`` stays the entry point.
    globals()["main"] = _entry
    code: int = commands.main(argv, held=held)
    return code


_entry = main

__all__ = ["main"]
