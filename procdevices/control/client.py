"""Blocking clients of both control protocols (see :mod:`procdevices.control.protocol`): a
device's control socket (:class:`ControlClient`) and the supervisor's endpoint
(:func:`call_supervisor`). The supervisor's own non-blocking client is in ``aclient``."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

import zmq

from procdevices.control.protocol import (
    OK,
    Command,
    SupervisorCommand,
    decode,
    encode,
    error_code,
    supervisor_request,
)
from procdevices.errors import ControlTimeout, exception_for

_context_lock = threading.Lock()
_context: tuple[int, zmq.Context[zmq.Socket[bytes]]] | None = None


def private_context() -> zmq.Context[zmq.Socket[bytes]]:
    """A context for control clients that is never the user's ``Context.instance()`` and is
    never inherited across a fork (a context must not be used in a forked child)."""
    global _context
    with _context_lock:
        if _context is None or _context[0] != os.getpid():
            _context = (os.getpid(), zmq.Context())
        return _context[1]


class ControlClient:
    """Sends one request at a time to a device's control socket. Thread-safe."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: str, ctx: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = ctx
        self._socket: zmq.Socket[bytes] | None = None
        self._lock = threading.Lock()

    def request(self, command: Command, timeout: float, payload: Any = None) -> Any:
        with self._lock:
            socket = self._connect()
            request_id = next(self._ids).to_bytes(8, "big")
            deadline_ms = max(1, int(timeout * 1000))
            # A DEALER whose peer has gone (a thread device's inproc control socket, closed as
            # the device ended) has nowhere to queue: a plain send would block for ever.
            try:
                if not socket.poll(deadline_ms, zmq.POLLOUT):
                    raise zmq.Again()
                socket.send_multipart([request_id, command.value, encode(payload)], zmq.NOBLOCK)
            except zmq.Again:
                raise ControlTimeout(f"{command.name} cannot be sent to {self.endpoint}: nobody is there") from None
            while socket.poll(deadline_ms):
                frames = socket.recv_multipart()
                if frames[0] != request_id:
                    continue  # a late answer to a request that already timed out
                status, body = frames[1], decode(frames[2])
                if status == OK:
                    return body
                message = body.get("error", body) if isinstance(body, dict) else body
                raise exception_for(error_code(body))(message)
            raise ControlTimeout(f"no answer to {command.name} from {self.endpoint} within {timeout:.3g}s")

    def _connect(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            ctx = self._ctx if self._ctx is not None else private_context()
            self._socket = ctx.socket(zmq.DEALER)
            self._socket.linger = 0
            self._socket.connect(self.endpoint)
        return self._socket

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None


class SupervisorUnreachable(Exception):
    """No supervisor answered on the endpoint in time."""


def call_supervisor(
    endpoint: str,
    command: SupervisorCommand,
    args: dict[str, Any] | None = None,
    timeout: float = 5.0,
    *,
    configure: Callable[[zmq.Socket[bytes]], None] | None = None,
) -> dict[str, Any]:
    """Send one request to a supervisor's control endpoint and return its reply object
    (``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ..., "code": ...}``).
    ``configure`` sets options before the connect (another host's CURVE keys)."""
    sock: zmq.Socket[bytes] = private_context().socket(zmq.REQ)
    sock.linger = 0
    try:
        if configure is not None:
            configure(sock)
        sock.connect(endpoint)
        sock.send(supervisor_request(command, **(args or {})))
        if not sock.poll(int(timeout * 1000)):
            raise SupervisorUnreachable(f"no supervisor answered on {endpoint} within {timeout:.3g}s")
        reply = decode(sock.recv())
        if not isinstance(reply, dict) or "ok" not in reply:
            raise SupervisorUnreachable(f"the answer on {endpoint} is not a supervisor's reply")
        return reply
    finally:
        sock.close(linger=0)
