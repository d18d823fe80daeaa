"""Client of the supervisor's control endpoint: one JSON request, one JSON reply."""

from __future__ import annotations

import json
from typing import Any

import zmq

from procdevices.control.client import private_context


class SupervisorUnreachable(Exception):
    pass


def call(endpoint: str, command: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Send ``command`` and return the reply object (``{"ok": bool, "result"|"error": ...}``)."""
    sock: zmq.Socket[bytes] = private_context().socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send(json.dumps({"command": command, "args": args or {}}).encode())
        if not sock.poll(int(timeout * 1000)):
            raise SupervisorUnreachable(f"no supervisor answered on {endpoint} within {timeout:.3g}s")
        reply: dict[str, Any] = json.loads(sock.recv())
        return reply
    finally:
        sock.close(linger=0)
