"""The bounded metrics server (httpserve.py) on real sockets: a capped number of connections,
each cut at its deadline, no accept while descriptors run short, and no spin meanwhile."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from procdevices.logs import Log
from procdevices.supervisor import httpserve


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"metric 1\n"]


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str, **_: Any) -> None:
        self.lines.append(message)


@pytest.fixture
def log() -> Lines:
    return Lines()


def serve(log: Log, free: Callable[[], int] = httpserve.free_descriptors) -> httpserve.BoundedServer:
    return httpserve.BoundedServer(httpserve.listen_tcp("127.0.0.1", 0), app, log, free=free)


@pytest.fixture
def server(log: Lines) -> Iterator[httpserve.BoundedServer]:
    s = serve(log)
    yield s
    s.close()


def connect(server: httpserve.BoundedServer) -> socket.socket:
    sock = socket.create_connection(server.listener.getsockname()[:2], timeout=10)
    return sock


def get(server: httpserve.BoundedServer) -> bytes:
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def wait(server: httpserve.BoundedServer, predicate: Callable[[int], bool], timeout: float) -> None:
    assert server.wait_connections(predicate, timeout), f"timed out; {server.connections} connections held"


def test_a_request_is_served(server: httpserve.BoundedServer) -> None:
    assert get(server).endswith(b"metric 1\n")


def test_a_dribbling_client_is_cut_at_the_deadline(
    server: httpserve.BoundedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserve, "DEADLINE", 0.5)
    monkeypatch.setattr(httpserve._Handler, "timeout", 30.0)  # only the deadline can end it
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nX-Slow: ")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server, with no response
        assert 0.3 < time.monotonic() - started < 3.0
    wait(server, lambda held: held == 0, 5)


def test_at_most_max_connections_are_held_the_rest_wait_in_the_backlog(server: httpserve.BoundedServer) -> None:
    idle = [connect(server) for _ in range(httpserve.MAX_CONNECTIONS + 8)]
    try:
        wait(server, lambda held: held == httpserve.MAX_CONNECTIONS, 5)
        # Woken by any accept: 0.3 s in which it could take one more than it should.
        assert not server.wait_connections(lambda held: held > httpserve.MAX_CONNECTIONS, 0.3)
        assert server.connections == httpserve.MAX_CONNECTIONS
    finally:
        for sock in idle:
            sock.close()
    assert get(server).endswith(b"metric 1\n")  # slots freed as the idle ones went


def test_short_of_descriptors_nothing_is_accepted_and_nothing_spins(log: Lines) -> None:
    spare = [0]
    server = serve(log, free=lambda: spare[0])
    try:
        with connect(server) as sock:  # completes in the kernel's backlog
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.settimeout(1.5)
            with pytest.raises(TimeoutError):
                sock.recv(4096)
            # One look per backoff, not a busy loop (a spin would count thousands).
            assert 1 <= server.refused <= 1.5 / httpserve.BACKOFF + 2, server.refused
            assert sum("not accepting connections" in line for line in log.lines) == 1, log.lines
            spare[0] = 10_000
            sock.settimeout(10)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert data.endswith(b"metric 1\n")  # the same connection, served once there is room
        assert "metrics: accepting connections again" in log.lines
    finally:
        server.close()
