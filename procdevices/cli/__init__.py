"""The command line: ``main`` is the ``procdevices`` entry point."""

from procdevices.cli.main import main

__all__ = ["main"]
