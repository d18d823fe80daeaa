"""The command line: ``console`` is the ``procdevices`` script, ``main`` the same from Python.

It holds SIGINT, SIGTERM and SIGHUP (``interrupts.py``) before it imports the commands: a
Ctrl-C while they are still importing is then acted on once, by the command, instead of
ending in a KeyboardInterrupt traceback. So this module imports nothing heavy."""

from __future__ import annotations

import importlib
from types import ModuleType

from procdevices import collector
from procdevices.cli import interrupts


def main(argv: list[str] | None = None) -> int:
    """Run a command in this process (``argv``: ``sys.argv[1:]`` when None); its exit code."""
    held = interrupts.hold()
    code: int = _commands().main(argv, held=held)
    return code


def console() -> int:
    """The ``procdevices`` script and ``python -m procdevices``: :func:`main`, in a process of
    its own."""
    # Collections wait while the command table imports (procdevices/collector.py says why).
    # Only here: from Python, main() leaves its caller's collector and objects alone.
    paused = collector.pause()
    held = interrupts.hold()
    commands = _commands()
    collector.resume(paused)
    code: int = commands.main(None, held=held)
    return code


def _commands() -> ModuleType:
    """procdevices.cli.main, imported now."""
    commands = importlib.import_module("procdevices.cli.main")
    # Importing the submodule ``main`` rebinds this package's attribute of that name to it;
    # the attribute stays the function main.
    globals()["main"] = _entry
    return commands


_entry = main

__all__ = ["console", "main"]
