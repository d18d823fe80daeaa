"""Which queued devices start now, and when a start has taken too long.

A big topology does not spawn every device at once (policy.max_starting says why): at most
``max_starting`` are starting at a time, at most ``LAUNCHES_PER_TURN`` are launched per turn
of the loop (between launches the loop reads readiness reports and answers ``status``), first
come first started. Each start's ``start_timeout`` is counted in fair shares of the machine
(startclock.py): a crowd of starts is slow, not hung. Pure bookkeeping: the supervisor
(core.py) launches what :meth:`StartQueue.take` hands it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from procdevices.supervisor import policy
from procdevices.supervisor.child import Child
from procdevices.supervisor.startclock import StartClock
from procdevices.supervisor.states import State


class StartQueue:
    def __init__(self, max_starting: int, cpus: int | None) -> None:
        self.max_starting = max_starting
        self.clock = StartClock(cpus)
        self._waiting: deque[Child] = deque()

    def push(self, child: Child) -> None:
        self._waiting.append(child)  # first come, first started

    def discard(self, child: Child) -> None:
        if child in self._waiting:
            self._waiting.remove(child)

    def take(self, children: list[Child]) -> list[Child]:
        """The queued devices to launch now."""
        room = min(policy.LAUNCHES_PER_TURN, self.max_starting - len(starting(children)))
        chosen: list[Child] = []
        while len(chosen) < room and self._waiting:
            child = self._waiting.popleft()
            if child.state is State.QUEUED and child in children and child not in chosen:
                chosen.append(child)
        return chosen

    def advance(self, children: list[Child], now: float) -> None:
        self.clock.advance(now, starting(children))

    def late(self, child: Child, now: float) -> str:
        """Why ``child`` is past its start_timeout, counted in fair shares (only past it: at it
        is in time); "" while it is in time."""
        budget = child.config.start_timeout
        if self.clock.used(child) <= budget:
            return ""
        wall = now - child.spawned_at
        crowd = f" ({wall:.1f}s on the wall clock, starting beside others)" if wall > budget + 0.5 else ""
        return f"not ready within start_timeout {budget}s{crowd}"

    def next_deadline(self, children: list[Child], now: float) -> float | None:
        """``now`` when more devices may start at once; else the next start_timeout."""
        started = starting(children)
        if self._waiting and len(started) < self.max_starting:
            return now  # more devices to start: at once, after the events of this turn
        deadlines = [self.clock.deadline(c, c.config.start_timeout, now, len(started)) for c in started]
        return min(deadlines, default=None)


def starting(children: Iterable[Child]) -> list[Child]:
    """The devices whose process is starting (not those waiting for their turn)."""
    return [c for c in children if c.state is State.STARTING]
