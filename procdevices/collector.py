"""Python's cyclic garbage collector while a process of procdevices starts.

A device process and the ``procdevices`` script spend their start importing modules and
building what they run: objects that live as long as the process. The collections that the
allocations trigger meanwhile walk all of them and find nothing to free. So both pause
collections until they are loaded (a device process: its device unpickled, runtime.process_main;
the script: its command table imported, cli.console), then freeze what exists (``gc.freeze``:
no collection walks it again) and let collections run again. A device's start takes ~4 % fewer
instructions, and 32 devices started at once the CPU of pyzmq's (docs/performance.md,
"Session 10"). The price: cycles made during the start are frozen with the rest and never
freed (~0.1 MiB per device).

The pause sets the first threshold to 0, which stops automatic collections, and leaves
``gc.isenabled()`` alone: a program that turns the collector off (a sitecustomize, the
device's module) keeps it off, and one that sets thresholds of its own meanwhile keeps them.
Imports nothing but ``gc``: a device process imports it before anything else.
"""

from __future__ import annotations

import gc

Thresholds = tuple[int, int, int]


def pause() -> Thresholds:
    """Stop automatic collections; what :func:`resume` needs to start them again."""
    thresholds = gc.get_threshold()
    gc.set_threshold(0)
    return thresholds


def resume(thresholds: Thresholds) -> None:
    """Freeze what exists now, and let collections run again with ``thresholds`` (those
    :func:`pause` returned), unless thresholds of someone else's were set meanwhile."""
    gc.freeze()
    if gc.get_threshold()[0] == 0:
        gc.set_threshold(*thresholds)
