"""The caller's side of a device's control socket: what ``ping()``, ``health()``, ``stats()``,
``pause()``, ``resume()``, ``info()`` and ``stop()`` of a ``Device`` ask, and how.

Only callers of a device use it: ``Device`` imports this module when one of those methods is
first called, so the device process, which never calls them on itself, never loads it (nor
the control client behind it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command, DeviceStats
from procdevices.errors import ControlTimeout

# How long a stop waits for the answer to one STOP before it looks whether the device has
# ended anyway, and asks again. A running control loop answers in well under a millisecond.
STOP_ASK_EVERY = 0.02


class DeviceRemote:
    """One device's control socket at ``endpoint`` (an inproc one is reachable only through
    ``ctx``, the context of the runtime that bound it). :meth:`close` it when done."""

    def __init__(self, endpoint: str, ctx: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self._client = ControlClient(endpoint, ctx)

    def ping(self, timeout: float) -> float:
        started = time.perf_counter()
        self._client.request(Command.PING, timeout)
        return time.perf_counter() - started

    def health(self, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = self._client.request(Command.PING, timeout)
        return result

    def stats(self, timeout: float) -> DeviceStats:
        return DeviceStats(**self._client.request(Command.STATS, timeout))

    def pause(self, timeout: float) -> None:
        self._client.request(Command.PAUSE, timeout)

    def resume(self, timeout: float) -> None:
        self._client.request(Command.RESUME, timeout)

    def info(self, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = self._client.request(Command.INFO, timeout)
        return result

    def ask_to_stop(self, timeout: float) -> None:
        """One STOP, answered within ``timeout`` or ControlTimeout."""
        self._client.request(Command.STOP, timeout)

    def stop_until(self, ended: Callable[[], bool], deadline: float) -> None:
        """Ask to stop until the device answers, or ``ended()`` says it ended without an
        answer, or ``deadline`` (monotonic) passes; the caller then waits for the end."""
        while not ended():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                self._client.request(Command.STOP, min(STOP_ASK_EVERY, remaining))
                return
            except ControlTimeout:
                # Unanswered: when its caller terminated the device's context meanwhile, the
                # device ends without its control loop, which answers nothing. Look whether
                # it has ended, and ask again (STOP is idempotent) until the deadline.
                continue

    def close(self) -> None:
        self._client.close()
