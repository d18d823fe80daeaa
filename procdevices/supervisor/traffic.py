"""A device's traffic over its whole supervised life, across restarts.

Each device process counts from zero (libzmq's proxy statistics start with the proxy). The
supervisor reads those counters on its probe tick and keeps, per device instance, what every
ended process had reported, so the totals it shows (and exports as Prometheus counters) never
go backwards when a device restarts. Rates are computed over the last few samples. Pure logic:
times are passed in.
"""

from __future__ import annotations

from collections import deque

COUNTERS = (
    "front_msgs_in",
    "front_bytes_in",
    "front_msgs_out",
    "front_bytes_out",
    "back_msgs_in",
    "back_bytes_in",
    "back_msgs_out",
    "back_bytes_out",
)
# Rates over this many samples (one per probe interval).
RATE_WINDOW = 5


def parse_counters(value: object) -> dict[str, int] | None:
    """The eight counters of a device's answer, or None when it is not that shape."""
    if not isinstance(value, dict):
        return None
    counters: dict[str, int] = {}
    for name in COUNTERS:
        number = value.get(name)
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            return None
        counters[name] = number
    return counters


class Traffic:
    """A device's counters across its processes: those of the ended ones, the current one's,
    and recent samples of the totals for the rates."""

    __slots__ = ("ended", "current", "samples")

    def __init__(self, ended: dict[str, int] | None = None) -> None:
        self.ended = dict.fromkeys(COUNTERS, 0) if ended is None else ended
        self.current = dict.fromkeys(COUNTERS, 0)
        self.samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=RATE_WINDOW)

    def observe(self, counters: dict[str, int], now: float) -> None:
        """The current process reported ``counters`` at ``now``."""
        if any(counters[k] < self.current[k] for k in COUNTERS):
            # Lower than before without an exit seen: the counters were reset under us
            # (e.g. a process we did not see end). Keep what was counted.
            self.process_ended()
        self.current = dict(counters)
        self.samples.append((now, self.totals()))

    def process_ended(self) -> None:
        """The process is gone: what it counted becomes part of the past."""
        self.ended = {k: self.ended[k] + self.current[k] for k in COUNTERS}
        self.current = dict.fromkeys(COUNTERS, 0)

    def totals(self) -> dict[str, int]:
        return {k: self.ended[k] + self.current[k] for k in COUNTERS}

    def summary(self) -> dict[str, dict[str, int] | dict[str, float]]:
        """What status and stats show: the totals, and the rates to the millisecond."""
        return {"totals": self.totals(), "rates": {k: round(v, 3) for k, v in self.rates().items()}}

    def rates(self) -> dict[str, float]:
        """Per-second rates over the samples kept; zeros until there are two."""
        if len(self.samples) < 2:
            return dict.fromkeys(COUNTERS, 0.0)
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        span = t1 - t0
        if span <= 0:
            return dict.fromkeys(COUNTERS, 0.0)
        return {k: (last[k] - first[k]) / span for k in COUNTERS}
