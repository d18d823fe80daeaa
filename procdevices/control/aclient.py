"""Non-blocking client of a device's control socket, for the supervisor's event loop.

The blocking :class:`~procdevices.control.client.ControlClient` waits for each answer; this one
sends, returns at once and calls back when the answer, a deadline or the device's exit comes.
The loop polls :attr:`AsyncControl.pollable` and calls :meth:`AsyncControl.on_readable`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from procdevices.control.protocol import OK, Command, ErrorCode, ProtocolError, device_error, encode, loads_bounded

# (ok, body): body is the device's result, or an error payload {"error": ..., "code": ...}.
ReplyCallback = Callable[[bool, Any], None]


class ControlChannel(Protocol):
    """What the supervisor needs of a control connection (tests supply a fake)."""

    @property
    def pollable(self) -> Any: ...

    def send(self, command: Command, now: float, timeout: float, callback: ReplyCallback) -> None: ...

    def on_readable(self) -> None: ...

    def expire(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def fail_all(self, reason: str) -> None: ...

    def close(self) -> None: ...


class AsyncControl:
    """One DEALER connected to one device; every request carries an id and a deadline."""

    _ids = itertools.count(1)

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(endpoint)
        self._pending: dict[bytes, tuple[float, ReplyCallback]] = {}

    @property
    def pollable(self) -> zmq.Socket[bytes]:
        return self.socket

    def send(self, command: Command, now: float, timeout: float, callback: ReplyCallback) -> None:
        request_id = next(self._ids).to_bytes(8, "big")
        try:
            self.socket.send_multipart([request_id, command.value, encode(None)], zmq.NOBLOCK)
        except zmq.Again:
            # Its queue is full: the device has not read a request for a long while.
            callback(False, device_error(ErrorCode.TIMEOUT, "the device's control queue is full"))
            return
        self._pending[request_id] = (now + timeout, callback)

    def on_readable(self) -> None:
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            entry = self._pending.pop(frames[0], None) if len(frames) == 3 else None
            if entry is None:
                continue  # late (already timed out) or not a reply of ours
            try:
                body = loads_bounded(frames[2], "the device's reply")
            except ProtocolError as e:
                entry[1](False, device_error(e.code, e.message))
                continue
            entry[1](frames[1] == OK, body)

    def expire(self, now: float) -> None:
        for request_id, (deadline, callback) in list(self._pending.items()):
            if now >= deadline:
                del self._pending[request_id]
                callback(False, device_error(ErrorCode.TIMEOUT, "no answer before the deadline"))

    def next_deadline(self) -> float | None:
        return min((d for d, _ in self._pending.values()), default=None)

    def fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for _, callback in pending.values():
            callback(False, device_error(ErrorCode.NOT_RUNNING, reason))

    def close(self) -> None:
        self.fail_all("the device stopped")
        self.socket.close(linger=0)
