"""supervisor.sock's request server, against real ZMQ clients (the supervisor behind it on the
fake harness): REQ clients ([empty, body]) and DEALER clients ([body], the two-frame form the
loop keeps accepting) are both answered, in the envelope they came with; anything else is not
answered at all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from support.fakes import Harness, topology

from procdevices.supervisor.loop import RequestServer

Ctx = zmq.Context[zmq.Socket[bytes]]


@pytest.fixture
def server(tmp_path: Path, zmq_ctx: Ctx) -> Iterator[RequestServer]:
    harness = Harness(topology({"pipe": {}}, tmp_path)).start()
    harness.ready("pipe")
    served = RequestServer(zmq_ctx, f"inproc://supervisor-{id(harness)}", harness.handlers, harness.log)
    try:
        yield served
    finally:
        served.close()


def _client(zmq_ctx: Ctx, server: RequestServer, kind: int) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq_ctx.socket(kind)
    sock.linger = 0
    sock.connect(server.socket.getsockopt_string(zmq.LAST_ENDPOINT))
    return sock


def _serve_until_answered(server: RequestServer, client: zmq.Socket[bytes]) -> list[bytes]:
    for _ in range(100):
        if server.socket.poll(50):
            server.on_readable(0.0)
        if client.poll(0):
            return client.recv_multipart()
    pytest.fail("no answer")


def _status(frame: bytes) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(frame)
    assert reply["ok"] is True, reply
    return reply


STATUS = json.dumps({"command": "status", "args": {"name": "pipe"}}).encode()


def test_a_req_client_is_answered(server: RequestServer, zmq_ctx: Ctx) -> None:
    client = _client(zmq_ctx, server, zmq.REQ)
    client.send(STATUS)
    (frame,) = _serve_until_answered(server, client)
    assert _status(frame)["result"]["devices"][0]["name"] == "pipe"


def test_a_dealer_client_sending_one_frame_is_answered_in_one_frame(server: RequestServer, zmq_ctx: Ctx) -> None:
    client = _client(zmq_ctx, server, zmq.DEALER)
    client.send(STATUS)  # [body]: no empty delimiter
    (frame,) = _serve_until_answered(server, client)
    assert _status(frame)["result"]["devices"][0]["state"] == "RUNNING"
    client.send_multipart([b"", STATUS])  # a DEALER speaking REQ's envelope gets it back
    empty, frame = _serve_until_answered(server, client)
    assert empty == b"" and _status(frame)


def test_a_request_of_more_frames_gets_no_answer(server: RequestServer, zmq_ctx: Ctx) -> None:
    client = _client(zmq_ctx, server, zmq.DEALER)
    client.send_multipart([b"", b"x", STATUS])  # not a request any reply could reach
    client.send(STATUS)  # then a good one: the first answer must be its
    reply = _serve_until_answered(server, client)
    assert len(reply) == 1 and _status(reply[0])
