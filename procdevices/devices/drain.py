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
3. returns, and the caller closes the sockets with a bounded LINGER (``stop_linger``).

This runs once per stop, never per message: the forwarding path is libzmq's alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

Socket = zmq.Socket[bytes]

# Nothing readable for this long after the input stopped: the queues are empty. Messages
# already queued are readable at once; this only lets libzmq finish its pipe bookkeeping.
QUIET = 0.01

_CANNOT_RECEIVE = frozenset({zmq.PUSH, zmq.PUB})
_CANNOT_SEND = frozenset({zmq.PULL, zmq.SUB})


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
