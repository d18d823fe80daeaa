"""Is a running device healthy? Liveness probes over its control socket, and its memory.

What counts as hung (see docs/reliability.md): the device does not answer a PING at all
for ``probe.failures`` probes in a row (a frozen process, a dead control thread), or it
answers that its forwarding loop is dead. A device whose loop waits on a full peer answers
``blocked``: that is backpressure, the device is alive and working, and it is shown as
blocked, never killed for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from procdevices.control.protocol import LOOP_BLOCKED, LOOP_DEAD, Command, PingReply
from procdevices.supervisor import policy
from procdevices.supervisor.child import Child
from procdevices.supervisor.liveness import Blocked
from procdevices.supervisor.states import State

KillUnhealthy = Callable[[Child, str], None]

# How long a forwarding loop must have waited in a send before status calls it blocked.
BLOCKED_SHOWN_AFTER = 0.5


def pause_answered(child: Child, body: Any) -> None:
    """The device answered a pause/resume with its PING reply once its loop took the command:
    its ``paused`` is read as every PING's is, and shown at once, so that `status` right after
    `pause` says paused. An answer that is not a PING reply says nothing about pausing."""
    reply = PingReply.from_wire(body)
    if reply is not None:
        child.liveness.observed(paused=reply.paused, blocked=child.liveness.blocked)


class Health:
    """Runs the periodic checks of each RUNNING child; calls ``kill`` with the reason when
    one must be replaced."""

    def __init__(self, kill: KillUnhealthy, clock: Callable[[], float]) -> None:
        self.kill = kill
        self.clock = clock
        # Told the round-trip time of every answered probe (metrics hang here).
        self.rtt_observers: list[Callable[[Child, float], None]] = []

    def check(self, child: Child, now: float) -> None:
        """Called when ``child.probe_due`` has come."""
        child.liveness.schedule(now, child.config.probe.interval)
        if self._over_memory(child):
            return
        if child.probe_in_flight or child.control is None:
            return
        child.liveness.sent()
        process = child.process
        child.control.send(
            Command.PING,
            now,
            child.config.probe.timeout,
            lambda ok, body: self._answered(child, process, ok, body, sent_at=now),
        )

    def _over_memory(self, child: Child) -> bool:
        limit = child.config.memory_limit
        if limit is None or child.process is None:
            return False
        rss = child.process.rss()
        if rss is not None and policy.memory_exceeded(rss, limit):
            self.kill(child, f"memory limit exceeded: rss {rss} > {limit} bytes")
            return True
        return False

    def _answered(self, child: Child, process: object, ok: bool, body: Any, *, sent_at: float) -> None:
        if child.process is not process:
            return  # an answer about a process that is gone; the new one gets its own probes
        child.liveness.settled()
        try:
            self._judge(child, ok, body)
        finally:
            # After the verdict: an observer (metrics) can never stand in its way.
            if ok:
                rtt = max(0.0, self.clock() - sent_at)
                for observe in self.rtt_observers:
                    observe(child, rtt)

    def _judge(self, child: Child, ok: bool, body: Any) -> None:
        if child.state is not State.RUNNING:
            return
        reply = PingReply.from_wire(body) if ok else None
        if reply is not None and reply.loop == LOOP_DEAD:
            # The process and its control thread live, but nothing forwards any more.
            self.kill(child, "hung: its forwarding loop has ended")
            return
        blocked = _blocked(reply) if reply is not None and reply.loop == LOOP_BLOCKED else None
        # A loop that waited a few tens of milliseconds on a busy machine is not worth a flag.
        shown = blocked if blocked is not None and blocked.seconds >= BLOCKED_SHOWN_AFTER else None
        # Every answered PING says whether the loop is paused: the device's word, not a guess
        # from the last pause/resume command (a restarted process is never paused).
        child.liveness.observed(paused=reply.paused if reply is not None else None, blocked=shown)
        if reply is not None and reply.stats is not None:
            child.traffic.observe(reply.stats.as_dict(), self.clock())
        probe, hung = policy.after_probe(child.probe, ok, child.config.probe.failures)
        child.liveness.judged(probe)
        if hung:
            self.kill(child, f"hung: {child.config.probe.failures} liveness probes unanswered")


def _blocked(reply: PingReply) -> Blocked:
    return Blocked(side=reply.blocked_side, seconds=reply.blocked_for or 0.0)
