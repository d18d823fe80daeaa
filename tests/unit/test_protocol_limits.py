"""Both control protocols at their limits, exactly at the edge and one past it (the request
id's length, an argument's length, the request's size and depth, an integer's type), and the
supervisor's ROUTER facing malformed replies from a device."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from procdevices.control.aclient import ControlRouter
from procdevices.control.protocol import (
    MAX_ARG_LENGTH,
    MAX_JSON_DEPTH,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_ID_BYTES,
    OK,
    Command,
    ErrorCode,
    ProtocolError,
    SupervisorCommand,
    encode,
    parse_device_request,
    parse_supervisor_request,
    request_id_of,
)


def test_the_limits_are_the_documented_ones() -> None:
    assert (MAX_REQUEST_ID_BYTES, MAX_ARG_LENGTH, MAX_JSON_DEPTH, MAX_REQUEST_BYTES) == (64, 4096, 16, 65536)


# -- a device's control socket ------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, MAX_REQUEST_ID_BYTES])
def test_a_request_id_of_1_to_64_bytes_is_answerable(length: int) -> None:
    request = parse_device_request([b"i" * length, Command.PING.value, b"{}"])
    assert request.request_id == b"i" * length and request.command is Command.PING


@pytest.mark.parametrize("length", [0, MAX_REQUEST_ID_BYTES + 1])
def test_a_request_id_empty_or_of_65_bytes_cannot_be_answered(length: int) -> None:
    frames = [b"i" * length, Command.PING.value, b"{}"]
    assert request_id_of(frames) is None  # the server has nothing to answer to: it stays silent
    with pytest.raises(ProtocolError) as caught:
        parse_device_request(frames)
    assert caught.value.code is ErrorCode.BAD_REQUEST and "1 to 64 bytes" in caught.value.message


def test_a_device_request_has_two_or_three_frames() -> None:
    assert parse_device_request([b"id", Command.PING.value]).payload is None
    with pytest.raises(ProtocolError, match="got 4"):
        parse_device_request([b"id", Command.PING.value, b"{}", b"extra"])
    with pytest.raises(ProtocolError, match="got 1"):
        parse_device_request([b"id"])


# -- the supervisor's socket --------------------------------------------------------------------


def supervisor(command: str, **args: Any) -> bytes:
    return json.dumps({"command": command, "args": args}).encode()


def test_an_argument_of_4096_characters_is_accepted_and_4097_refused() -> None:
    assert parse_supervisor_request(supervisor("status", name="n" * MAX_ARG_LENGTH)).name == "n" * MAX_ARG_LENGTH
    with pytest.raises(ProtocolError, match="status: name is longer than 4096") as caught:
        parse_supervisor_request(supervisor("status", name="n" * (MAX_ARG_LENGTH + 1)))
    assert caught.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(ProtocolError, match="reload: config is longer than 4096"):
        parse_supervisor_request(supervisor("reload", config="/" * (MAX_ARG_LENGTH + 1)))


@pytest.mark.parametrize("replicas", [True, False, 2.0, "2", [2]])
def test_a_non_integer_where_an_integer_is_required_is_refused(replicas: Any) -> None:
    with pytest.raises(ProtocolError, match="scale: replicas must be an integer") as caught:
        parse_supervisor_request(supervisor("scale", name="pipe", replicas=replicas))
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_an_integer_is_accepted_and_a_required_argument_is_required() -> None:
    request = parse_supervisor_request(supervisor("scale", name="pipe", replicas=2))
    assert request.command is SupervisorCommand.SCALE and request.args == {"name": "pipe", "replicas": 2}
    with pytest.raises(ProtocolError, match="scale: missing argument 'replicas'"):
        parse_supervisor_request(supervisor("scale", name="pipe"))


def test_a_request_of_exactly_the_size_limit_is_parsed_and_one_byte_more_refused() -> None:
    base = supervisor("status", name="")
    padded = base[:-2] + b" " * (MAX_REQUEST_BYTES - len(base)) + base[-2:]
    assert len(padded) == MAX_REQUEST_BYTES
    assert parse_supervisor_request(padded).command is SupervisorCommand.STATUS
    with pytest.raises(ProtocolError, match=f"is {MAX_REQUEST_BYTES + 1} bytes; at most {MAX_REQUEST_BYTES}"):
        parse_supervisor_request(padded + b" ")


def test_nesting_of_exactly_the_depth_limit_is_parsed_then_refused_one_deeper() -> None:
    def nested(depth: int) -> bytes:
        # {"command": "status", "args": {"name": null}} wrapped so the whole has ``depth`` levels.
        return b'{"command":"status","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    with pytest.raises(ProtocolError, match="unknown request keys"):  # parsed: refused for its key
        parse_supervisor_request(nested(MAX_JSON_DEPTH))
    with pytest.raises(ProtocolError, match=f"nests deeper than {MAX_JSON_DEPTH} levels"):
        parse_supervisor_request(nested(MAX_JSON_DEPTH + 1))


# -- the supervisor's ROUTER, reading what devices answer ------------------------------------------

Replies = list[tuple[bool, Any]]


def _into(replies: Replies) -> Callable[[bool, Any], None]:
    return lambda ok, body: replies.append((ok, body))


def test_malformed_replies_are_ignored_or_failed_and_the_connection_goes_on(
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    router = ControlRouter(zmq_ctx)
    device: zmq.Socket[bytes] = zmq_ctx.socket(zmq.ROUTER)
    device.linger = 0
    device.bind("inproc://limits-device")
    connection = router.connect("inproc://limits-device")
    replies: Replies = []
    try:
        connection.send(Command.PING, 0.0, 5.0, _into(replies))
        assert device.poll(5000)
        peer, request_id, _, _ = device.recv_multipart()
        # Not a reply of ours: too few frames, too many, an unknown id. Each is dropped.
        device.send_multipart([peer, request_id, OK])
        device.send_multipart([peer, request_id, OK, b"{}", b"extra"])
        device.send_multipart([peer, b"not-an-id", OK, b"{}"])
        # A reply of ours whose body is no JSON: that request fails, once, with the reason.
        device.send_multipart([peer, request_id, OK, b"{not json"])
        while len(replies) < 1:
            assert router.socket.poll(5000), "the malformed reply never arrived"
            router.on_readable()
        assert replies == [(False, {"error": replies[0][1]["error"], "code": ErrorCode.BAD_REQUEST.value})]
        assert "reply" in replies[0][1]["error"]
        assert connection.next_deadline() is None
        # The connection still works.
        connection.send(Command.PING, 0.0, 5.0, _into(replies))
        assert device.poll(5000)
        peer, request_id, _, _ = device.recv_multipart()
        device.send_multipart([peer, request_id, OK, encode({"loop": "running"})])
        while len(replies) < 2:
            assert router.socket.poll(5000)
            router.on_readable()
        assert replies[1] == (True, {"loop": "running"})
    finally:
        router.close()
