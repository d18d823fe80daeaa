"""Non-blocking client of the devices' control sockets, for the supervisor's event loop.

The blocking :class:`~procdevices.control.client.ControlClient` waits for each answer; this one
sends, returns at once and calls back when the answer, a deadline or the device's exit comes.

    Supervisor ──send()──► ControlConnection ─┐
    (one per device)                          ├─► ControlRouter: one ROUTER ──► device ROUTERs
                       callback ◄── reply ────┘        (connected to every control endpoint)

One ROUTER reaches every device rather than a DEALER each: the loop then waits on one socket
whatever the size of the topology, and a wake-up costs the same with 4 devices as with 256
(a poll over hundreds of ZMQ sockets costs ~0.2 ms of CPU per call, paid on every wake-up).
Each endpoint is connected once, under a routing id of its own (``ZMQ_CONNECT_ROUTING_ID``);
the pipe, and so the routing id, outlives restarts of the device behind it, as a DEALER's does.
An endpoint no device uses any more (the device was removed) is disconnected, at a moment
when libzmq can take it (``ControlRouter._release``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any, Protocol, cast

import zmq

from procdevices.control.protocol import OK, Command, ErrorCode, ProtocolError, device_error, encode, loads_bounded

# (ok, body): body is the device's result, or an error payload {"error": ..., "code": ...}.
ReplyCallback = Callable[[bool, Any], None]

# Most requests the supervisor sends have no arguments (ADOPT has): encode them once.
_NO_ARGS = encode(None)
# A request's frames are sent one by one with these flags as plain ints: send_multipart's
# IntFlag arithmetic (SNDMORE | flags, per frame) costs ~3 us a request, paid by every probe
# (256 devices probed each second: ~0.07 % of a core, of the idle supervisor's ~2 %).
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)

# Replies read per wake-up, so a device that floods its control socket cannot starve the rest
# of the loop (what is left is read on the next turn).
MAX_REPLIES_PER_WAKEUP = 1024


class ControlChannel(Protocol):
    """What the supervisor needs of one device's control connection (tests supply a fake)."""

    def send(
        self, command: Command, now: float, timeout: float, callback: ReplyCallback, payload: Any = None
    ) -> None: ...

    def expire(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def fail_all(self, reason: str) -> None: ...

    def close(self) -> None: ...


class ControlRouter:
    """One ROUTER connected to the control endpoint of every device; replies are matched to
    their request by its id (unique across devices)."""

    _ids = itertools.count(1)

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.socket.linger = 0
        # A full queue to one device must say so (EAGAIN), not drop the request silently.
        self.socket.router_mandatory = True
        self._routing_ids = (b"d%d" % n for n in itertools.count(1))  # never a leading zero byte
        # endpoint → (routing id, connections using it)
        self._endpoints: dict[str, tuple[bytes, int]] = {}
        # Endpoints no connection uses any more, disconnected at the first safe moment (see
        # _release): left connected, libzmq would try to reach each removed device for ever.
        self._idle: set[str] = set()
        self._waiting: dict[bytes, ControlConnection] = {}  # request id → its connection

    def connect(self, endpoint: str) -> ControlConnection:
        """A connection to the device at ``endpoint``. Two connections to one endpoint (a
        device and its successor) share the ZMQ connection: replies find their request by id."""
        self._idle.discard(endpoint)
        if endpoint in self._endpoints:
            routing_id, users = self._endpoints[endpoint]
        else:
            routing_id, users = next(self._routing_ids), 0
            self.socket.connect_routing_id = routing_id
            self.socket.connect(endpoint)
        self._endpoints[endpoint] = (routing_id, users + 1)
        return ControlConnection(self, endpoint, routing_id)

    def on_readable(self) -> None:
        for _ in range(MAX_REPLIES_PER_WAKEUP):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                self._disconnect_idle()  # nothing is half read now
                return
            # [routing id, request id, status, body]; anything else is not a reply of ours.
            if len(frames) == 4 and (connection := self._waiting.pop(frames[1], None)) is not None:
                connection.answered(frames[1], frames[2], frames[3])

    def _send(self, connection: ControlConnection, command: Command, payload: Any = None) -> bytes | None:
        request_id = next(self._ids).to_bytes(8, "big")
        args = _NO_ARGS if payload is None else encode(payload)
        send = self.socket.send
        try:
            # Only the first frame can fail (EAGAIN, EHOSTUNREACH): a ROUTER takes the rest of
            # a message whose first frame it took.
            send(connection.routing_id, _MORE)
            send(request_id, _MORE)
            send(command.value, _MORE)
            send(args, _LAST)
        except zmq.ZMQError:
            # EAGAIN: the device has not read a request for a long while; EHOSTUNREACH: no pipe.
            return None
        self._waiting[request_id] = connection
        return request_id

    def _forget(self, request_ids: list[bytes]) -> None:
        for request_id in request_ids:
            self._waiting.pop(request_id, None)

    def _release(self, endpoint: str) -> None:
        """The last user of an endpoint is gone (its device was removed): disconnect it, but
        only while nothing is half read. libzmq (4.3.5) aborts the whole process (``Assertion
        failed: !_more (src/fq.cpp:80)``) when a ROUTER's pipe is terminated while a message
        through it is half read, and asking ``ZMQ_EVENTS`` (the event loop does, every turn)
        reads the first frame of a waiting message ahead. So: at once if the socket has no
        input at all (then nothing was read ahead: that is what ``ZMQ_EVENTS`` answers), else
        when :meth:`on_readable` has read everything (``EAGAIN``), before anything else looks
        at the socket. A later device at the same endpoint is connected anew."""
        routing_id, users = self._endpoints[endpoint]
        self._endpoints[endpoint] = (routing_id, users - 1)
        if users > 1:
            return
        self._idle.add(endpoint)
        if not cast(int, self.socket.get(zmq.EVENTS)) & zmq.POLLIN:
            self._disconnect_idle()

    def _disconnect_idle(self) -> None:
        """Call only when no message is half read (see :meth:`_release`)."""
        for endpoint in self._idle:
            del self._endpoints[endpoint]
            with contextlib.suppress(zmq.ZMQError):  # the socket never reached it: nothing to end
                self.socket.disconnect(endpoint)
        self._idle.clear()

    def connected(self) -> list[str]:
        """The endpoints this router is connected to (or still trying to reach)."""
        return sorted(self._endpoints)

    def close(self) -> None:
        for connection in set(self._waiting.values()):
            connection.fail_all("the supervisor is stopping")
        self.socket.close(linger=0)


class ControlConnection:
    """One device's view of the router: its pending requests, each with a deadline."""

    def __init__(self, router: ControlRouter, endpoint: str, routing_id: bytes) -> None:
        self._router = router
        self.endpoint = endpoint
        self.routing_id = routing_id
        self._pending: dict[bytes, tuple[float, ReplyCallback]] = {}
        self._closed = False

    def send(self, command: Command, now: float, timeout: float, callback: ReplyCallback, payload: Any = None) -> None:
        if not self.try_send(command, now, timeout, callback, payload):
            callback(False, device_error(ErrorCode.TIMEOUT, "the device's control queue is full"))

    def try_send(
        self, command: Command, now: float, timeout: float, callback: ReplyCallback, payload: Any = None
    ) -> bool:
        """Queue the request; False (and no callback) when it cannot be: the queue is full,
        or the connection is not up yet (the caller may try again)."""
        request_id = None if self._closed else self._router._send(self, command, payload)
        if request_id is None:
            return False
        self._pending[request_id] = (now + timeout, callback)
        return True

    def answered(self, request_id: bytes, status: bytes, frame: bytes) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return  # late (already timed out)
        try:
            body = loads_bounded(frame, "the device's reply")
        except ProtocolError as e:
            entry[1](False, device_error(e.code, e.message))
            return
        entry[1](status == OK, body)

    def expire(self, now: float) -> None:
        late = [request_id for request_id, (deadline, _) in self._pending.items() if now >= deadline]
        self._router._forget(late)
        for request_id in late:
            _, callback = self._pending.pop(request_id)
            callback(False, device_error(ErrorCode.TIMEOUT, "no answer before the deadline"))

    def next_deadline(self) -> float | None:
        return min((d for d, _ in self._pending.values()), default=None)

    def fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        self._router._forget(list(pending))
        for _, callback in pending.values():
            callback(False, device_error(ErrorCode.NOT_RUNNING, reason))

    def close(self) -> None:
        self.fail_all("the device stopped")
        if not self._closed:
            self._closed = True
            self._router._release(self.endpoint)
