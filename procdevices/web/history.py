"""Recent message rates per device, for the page's sparklines: one sample per ``status`` poll,
kept for ``WINDOW`` seconds, in the ``web`` process only (the supervisor keeps no history)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

# How far back a sparkline reaches.
WINDOW = 300.0


class RateHistory:
    """Per device: (time, frames in/s, frames out/s) samples of the last ``window`` seconds."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, float, float]]] = {}

    def add(self, now: float, rates: Mapping[str, Mapping[str, float]]) -> None:
        """One sample per device (``{"in": ..., "out": ...}``); devices that are gone are
        forgotten."""
        for device in list(self._samples):
            if device not in rates:
                del self._samples[device]
        for device, rate in rates.items():
            samples = self._samples.setdefault(device, deque())
            samples.append((now, rate["in"], rate["out"]))
            while samples and samples[0][0] < now - self.window:
                samples.popleft()

    def series(self, device: str, now: float) -> dict[str, list[float]]:
        """``{"t": seconds before now, "in": [...], "out": [...]}``, oldest first."""
        samples = self._samples.get(device, ())
        return {
            "t": [round(now - t, 1) for t, _, _ in samples],
            "in": [round(i, 1) for _, i, _ in samples],
            "out": [round(o, 1) for _, _, o in samples],
        }
