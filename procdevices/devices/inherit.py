"""Listening sockets handed to a device process by its parent (libzmq's ``ZMQ_USE_FD``).

A supervisor that owns a device's listening sockets creates each once and hands a duplicate
to every generation of the device: a restart never meets "Address already in use", a client
that connects while the device restarts waits in the kernel's backlog instead of being
refused, and a ``tcp://...:*`` endpoint keeps its port.

:class:`InheritedFd` travels inside the job a worker receives. multiprocessing duplicates
the descriptor for the child as it pickles it — passed along at spawn, or through its
resource sharer to a warm worker that is already running — and the child gets a plain int.
"""

from __future__ import annotations

from multiprocessing import reduction
from typing import Any

# endpoint → the inherited listening descriptor, in this (device) process.
INHERITED: dict[str, int] = {}


class InheritedFd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _rebuild, (reduction.DupFd(self.fd),)


def _rebuild(duplicate: Any) -> int:
    fd: int = duplicate.detach()
    return fd


def adopt(listeners: dict[str, int] | None) -> None:
    """Called once by the worker with what its job carried (already plain ints)."""
    INHERITED.clear()
    INHERITED.update(listeners or {})
