"""Small helpers shared by the device-layer tests."""

from __future__ import annotations

from typing import Any

import zmq


def recv_within(sock: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes]:
    assert sock.poll(int(timeout * 1000)), f"nothing arrived within {timeout}s"
    return sock.recv_multipart()


def connect_pipe(ctx: zmq.Context[Any], dev: Any) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A PUSH into the device's first in endpoint and a PULL from its first out endpoint."""
    push = ctx.socket(zmq.PUSH)
    push.connect(dev.endpoints["in"][0])
    pull = ctx.socket(zmq.PULL)
    pull.connect(dev.endpoints["out"][0])
    return push, pull
