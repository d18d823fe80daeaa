"""The graceful end of a forwarding loop: deliver what is already queued inside the device.

libzmq's proxy returns from TERMINATE at once; whatever sits in the in socket's receive queue
would be dropped when the socket closes. After the proxy has returned, the worker thread owns
its sockets again and:

1. stops taking new input: for a one-way device (nothing ever goes back through ``in``) it
   unbinds and disconnects every endpoint of the in socket. libzmq keeps the messages already
   queued in the socket's pipes readable after an unbind (measured: 800 of 800, tcp and ipc),
   and a producer's own queue stays with the producer, for the next device on that endpoint.
   A two-way device (ROUTER/DEALER, XSUB/XPUB, ...) keeps its connections: replies need them.
2. moves every queued message to the other side, in both directions for a two-way device,
   until nothing has arrived for :data:`QUIET` seconds or the deadline passes;
3. returns, and the device closes its sockets with a bounded LINGER (``stop_linger``).

:class:`GracefulStop` is that stop path as ``Device`` runs it (a mixin: the LINGER cap
applied at setup, the drain, the bounded close); the functions below it are the drain.
This runs once per stop, never per message: the forwarding path is the loop's alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import zmq

if TYPE_CHECKING:
    from procdevices.devices.roles import SocketSetup

Socket = zmq.Socket[bytes]

# Nothing readable for this long after the input stopped: the queues are empty. Messages
# already queued are readable at once; this only lets libzmq finish its pipe bookkeeping.
QUIET = 0.01

_CANNOT_RECEIVE = frozenset({zmq.PUSH, zmq.PUB})
_CANNOT_SEND = frozenset({zmq.PULL, zmq.SUB})


class GracefulStop:
    """The end of a device's run after its loop returned from a stop: stop input, deliver
    what is queued, close every socket, all within ``stop_linger``. A mixin of ``Device``,
    which provides the sockets and the recorded setup it reads."""

    stop_linger: float | None = 1.0
    """Seconds a stopping device gives its queued messages: the drain of what is queued in
    its sockets and the LINGER of their close share this one deadline. Applied only on the
    stop path; ``None`` keeps each socket's own LINGER (with LINGER -1 and a peer that never
    connects, such a device never exits). Set it on the instance, or in a subclass's body."""

    steerable: ClassVar[bool]
    _sockets: list[Socket]
    _role_sockets: dict[str, Socket]
    # When a stop's drain and final LINGER must be over (monotonic); set when the loop ends.
    _stop_deadline: float | None = None

    if TYPE_CHECKING:  # provided by Device

        def _bound(self, role: str) -> list[str]: ...
        def _setup_of(self, role: str) -> SocketSetup: ...
        def _two_way(self) -> bool: ...

    def _relay_at_stop(self, source: Socket, frames: list[bytes]) -> list[bytes]:
        """What the drain at stop sends for ``frames`` read from ``source``: as libzmq's
        proxy would, the frames unchanged (a forwarding loop of another kind overrides it)."""
        return frames

    def _end_gracefully(self, loop_returned: bool) -> None:
        """After the loop ended (``loop_returned``: libzmq's loop returned from a stop):
        start the stop deadline; stop input and deliver what is queued."""
        deadline = time.monotonic() + (self.stop_linger if self.stop_linger is not None else 1.0)
        self._stop_deadline = deadline
        ins, outs = self._role_sockets.get("in"), self._role_sockets.get("out")
        if not loop_returned or not type(self).steerable or ins is None or outs is None:
            return
        two_way = self._two_way()
        if not two_way:
            stop_input(ins, self._bound("in"), self._setup_of("in").connects)
        try:
            result = drain(ins, outs, deadline, two_way=two_way, relay=self._relay_at_stop)
        except zmq.ZMQError as e:  # the context went away under us (a shutdown): nothing to save
            print(f"procdevices: {type(self).__name__}: drain at stop failed: {e}", file=sys.stderr, flush=True)
            return
        if result.forwarded or result.returned or not result.complete:
            print(f"procdevices: {type(self).__name__}: stop: {result.describe()}", file=sys.stderr, flush=True)

    def _bound_linger(self, sock: Socket) -> None:
        """Cap the socket's LINGER at ``stop_linger`` as soon as it is built. LINGER only acts
        when a socket closes, which a device does only when it stops, so this changes nothing
        before the stop. It cannot wait for the stop: when a stop has to shut the context
        down (a loop blocked in a send), libzmq refuses every setsockopt (ETERM) and a LINGER
        of -1 would keep the context, and the process, alive for ever."""
        if self.stop_linger is not None:
            sock.linger = min_linger(int(sock.linger), int(self.stop_linger * 1000))

    def _remaining_linger_ms(self) -> int | None:
        """What is left of the stop deadline, for the LINGER of the final close."""
        if self.stop_linger is None:
            return None
        deadline = self._stop_deadline
        remaining = self.stop_linger if deadline is None else deadline - time.monotonic()
        return max(0, int(remaining * 1000))

    def _close_sockets(self, linger_ms: int | None = None) -> None:
        """Close the sockets this device created: on the stop path with at most ``linger_ms``
        of LINGER (never more than the socket's own), else with each socket's own LINGER."""
        for s in self._sockets:
            if not s or s.closed:
                continue
            linger = None
            if linger_ms is not None:
                try:
                    linger = min_linger(int(s.linger), linger_ms)
                except zmq.ZMQError:
                    linger = None  # the context is terminating: LINGER was capped at setup
            s.close(linger=linger)


def min_linger(a: int, b: int) -> int:
    """The shorter of two LINGER values, where a negative one means for ever."""
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


def receives(socket_type: int) -> bool:
    return socket_type not in _CANNOT_RECEIVE


def sends(socket_type: int) -> bool:
    return socket_type not in _CANNOT_SEND


class DrainResult:
    """What a drain did (a plain class, not a dataclass: the device process imports this
    module, runtime.py says why)."""

    __slots__ = ("forwarded", "returned", "complete", "seconds")

    def __init__(self) -> None:
        self.forwarded = 0  # messages moved from in to out
        self.returned = 0  # messages moved from out back to in (two-way devices)
        self.complete = True  # False: the deadline passed with messages still queued or unsendable
        self.seconds = 0.0

    def describe(self) -> str:
        moved = f"forwarded {self.forwarded} message(s) still queued in the in socket"
        if self.returned:
            moved += f" and {self.returned} queued in the out socket"
        if not self.complete:
            moved += "; gave up at the stop deadline with more queued (the peer was not reading)"
        return f"{moved} in {self.seconds * 1000:.0f} ms"


def stop_input(ins: Socket, bound: list[str], connected: list[str]) -> None:
    """Unbind and disconnect every endpoint of the in socket (best effort: an endpoint that
    has gone already is not an error here)."""
    for endpoint in bound:
        try:
            ins.unbind(endpoint)
        except zmq.ZMQError:
            pass
    for endpoint in connected:
        try:
            ins.disconnect(endpoint)
        except zmq.ZMQError:
            pass


def drain(
    ins: Socket,
    outs: Socket,
    deadline: float,
    *,
    two_way: bool,
    relay: Callable[[Socket, list[bytes]], list[bytes]] | None = None,
) -> DrainResult:
    """Move what is queued in ``ins`` (and, for a two-way device, in ``outs``) to the other
    side until the queues stay empty for QUIET seconds or ``deadline`` (monotonic) passes.
    ``relay(source, frames)`` gives what to send for a message (a monitored queue swaps ids
    and copies it to its monitor)."""
    started = time.monotonic()
    result = DrainResult()
    poller = zmq.Poller()
    poller.register(ins, zmq.POLLIN)
    directions = [(ins, outs)]
    if two_way and outs is not ins:
        poller.register(outs, zmq.POLLIN)
        directions.append((outs, ins))
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            result.complete = not any(s.poll(0) for s, _ in directions)
            break
        ready = dict(poller.poll(max(1, int(min(remaining, QUIET) * 1000))))
        if not ready:
            break
        for source, target in directions:
            if source not in ready:
                continue
            frames = source.recv_multipart(zmq.NOBLOCK)
            if relay is not None:
                frames = relay(source, frames)
            if not _send_before(target, frames, deadline):
                result.complete = False
                result.seconds = time.monotonic() - started
                return result
            if source is ins:
                result.forwarded += 1
            else:
                result.returned += 1
    result.seconds = time.monotonic() - started
    return result


def _send_before(sock: Socket, frames: list[bytes], deadline: float) -> bool:
    while True:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(max(1, int(remaining * 1000)), zmq.POLLOUT):
                return False
