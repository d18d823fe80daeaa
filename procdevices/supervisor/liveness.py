"""What the liveness probes of a device's current process found, and when the next is due.

Owned by health.py: Health is the only one that tells a Liveness what a probe found, and
these methods are the only writers of its fields (a Child starts a fresh one for each new
process and schedules its first probe). Everything else only reads it.
"""

from __future__ import annotations

from typing import NamedTuple

from procdevices.supervisor import policy


class Blocked(NamedTuple):
    """The device's forwarding loop waits on a full peer (backpressure), as its last
    answered probe said."""

    side: str | None
    seconds: float


def next_slot(now: float, interval: float) -> float:
    """The next multiple of ``interval``: devices with the same probe interval are probed in
    one burst, so an idle supervisor wakes once per interval, not once per device."""
    return (int(now // interval) + 1) * interval


class Liveness:
    __slots__ = ("probe", "due", "in_flight", "blocked", "paused")

    def __init__(self) -> None:
        self.probe = policy.ProbeState()
        self.due: float | None = None  # when the next probe is due
        self.in_flight = False  # a PING is out and not answered yet
        self.blocked: Blocked | None = None
        self.paused = False  # as the process's last answered PING said

    def schedule(self, now: float, interval: float) -> None:
        self.due = next_slot(now, interval)

    def sent(self) -> None:
        self.in_flight = True

    def settled(self) -> None:
        """The PING in flight was answered, failed, or its process is gone."""
        self.in_flight = False

    def observed(self, *, paused: bool | None, blocked: Blocked | None) -> None:
        """What an answered PING reported (``paused`` None: it did not say)."""
        if paused is not None:
            self.paused = paused
        self.blocked = blocked

    def judged(self, probe: policy.ProbeState) -> None:
        self.probe = probe
