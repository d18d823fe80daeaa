"""How much of its ``start_timeout`` each starting device has used, counted in fair shares of
the machine.

``start_timeout`` is there to catch a start that hangs, not one that waits for a CPU. When
more devices are starting than there are CPUs, each gets about ``cpus / starting`` of one, so
a start that needs half a second of CPU takes ``starting / cpus`` times longer on the wall
clock: 32 devices starting on 2 CPUs, each 16 times longer. Measured on the wall clock, a
mass start on a busy machine killed devices that were merely slow (64 replicas at load ~14:
26 ``start_timeout`` kills, every device RUNNING in the end). So a starting device's clock
runs at ``min(1, cpus / starting)``: alone (or with at most ``cpus`` others) it is the wall
clock, and a hang is caught after ``start_timeout`` as before; in a crowd it runs slower,
as the start does, and speeds up as its neighbours become ready.

What it does not see: load from other programs (only its own starts are counted). The
clock advances on the supervisor's ticks; each interval is charged at the share of the
devices starting at its end (a device that became ready meanwhile no longer counts: the
others are charged a little more than their due, never less).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Starting(Protocol):
    """What the clock needs of a starting device."""

    @property
    def name(self) -> str: ...

    @property
    def spawned_at(self) -> float: ...


class StartClock:
    def __init__(self, cpus: int | None) -> None:
        self.cpus = max(1, cpus or 1)
        # (instance name, spawn time): one process's start → seconds of its start_timeout used
        self._used: dict[tuple[str, float], float] = {}
        self._at: float | None = None  # when the clock last advanced

    def share(self, starting: int) -> float:
        """The fraction of a CPU each of ``starting`` devices gets, at most 1."""
        return min(1.0, self.cpus / starting) if starting > 0 else 1.0

    def advance(self, now: float, starting: Sequence[Starting]) -> None:
        """Charge the time since the last call to every device in ``starting`` (each from its
        own spawn if later), at the share they each had; forget the devices not starting."""
        share = self.share(len(starting))
        used: dict[tuple[str, float], float] = {}
        for device in starting:
            since = device.spawned_at if self._at is None else max(self._at, device.spawned_at)
            key = (device.name, device.spawned_at)
            used[key] = self._used.get(key, 0.0) + max(0.0, now - since) * share
        self._used = used
        self._at = now

    def used(self, device: Starting) -> float:
        return self._used.get((device.name, device.spawned_at), 0.0)

    def deadline(self, device: Starting, budget: float, now: float, starting: int) -> float:
        """When ``device`` will have used ``budget`` if ``starting`` devices keep starting."""
        return now + max(0.0, budget - self.used(device)) / self.share(starting)
