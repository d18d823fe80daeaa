"""No input on a device's control sockets can end its control loop, or disturb its traffic."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from support.devices import health_when, recv_within

from procdevices import ProcessProxySteerable
from procdevices.control.protocol import Command, ErrorCode, ProtocolError, parse_device_request

pytestmark = pytest.mark.timeout(60)

# Commands that are legitimate on the user's ctrl socket and would change the traffic.
_USER_CTRL_COMMANDS = {b"PAUSE", b"RESUME", b"TERMINATE"}


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_parse_device_request_raises_only_protocol_error(frames: list[bytes]) -> None:
    try:
        request = parse_device_request(frames)
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode)
        return
    assert isinstance(request.command, Command)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=64),
    st.sampled_from([c.value for c in Command]),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    ).map(lambda value: repr(value).encode()),
)
def test_parse_device_request_on_near_valid_requests(request_id: bytes, command: bytes, payload: bytes) -> None:
    # repr() of Python values is JSON-like but often not JSON: the parser must sort it out.
    try:
        request = parse_device_request([request_id, command, payload])
    except ProtocolError as e:
        assert e.code is ErrorCode.BAD_REQUEST
        return
    assert request.command.value == command and request.request_id == request_id


def malformed(rng: random.Random, i: int) -> list[bytes]:
    """Deterministic garbage for a device's control ROUTER: every shape the parser refuses."""
    request_id = i.to_bytes(8, "big")
    kind = i % 12
    if i == 5000:
        return [request_id, b"PING", b"x" * 300_000]  # over the socket's MAXMSGSIZE: disconnected
    if kind == 0:
        return [request_id, b"INFO", b"{"]
    if kind == 1:
        return [request_id]
    if kind == 2:
        return [b""]  # no request id: unanswerable
    if kind == 3:
        return [request_id, b"PING", b"x" * rng.randint(70_000, 100_000)]  # over MAX_REQUEST_BYTES
    if kind == 4:
        return [request_id, b"STATS", b"[" * 5000]
    if kind == 5:
        return [request_id, rng.randbytes(rng.randint(0, 20)), b"null"]
    if kind == 6:
        return [request_id] + [rng.randbytes(rng.randint(0, 8)) for _ in range(rng.randint(4, 40))]
    if kind == 7:
        return [b"i" * 65, b"PING", b""]  # request id too long
    if kind == 8:
        return [request_id, b"PING", rng.randbytes(rng.randint(1, 50))]
    if kind == 9:
        return [request_id, b"STOP\x00", b"{}"]
    if kind == 10:
        return [request_id, b"INFO", b"\xff\xfe\x00"]
    return [rng.randbytes(rng.randint(1, 64)) for _ in range(rng.randint(1, 5))]


def read_all(sock: zmq.Socket[bytes]) -> int:
    count = 0
    while sock.poll(0):
        sock.recv_multipart()
        count += 1
    return count


def test_fuzzing_both_control_sockets_leaves_the_device_forwarding(zmq_ctx: zmq.Context[Any]) -> None:
    total_messages = 3000
    garbage_count = 10_000
    dev = ProcessProxySteerable(zmq.PULL, zmq.PUSH, zmq.PUB, zmq.ROUTER)
    for role in ("in", "out", "ctrl"):
        getattr(dev, f"bind_{role}")("tcp://127.0.0.1:*")
    dev.start()
    try:
        pid = dev.pid
        assert dev.control_endpoint is not None
        push = zmq_ctx.socket(zmq.PUSH)
        push.connect(dev.endpoints["in"][0])
        pull = zmq_ctx.socket(zmq.PULL)
        pull.connect(dev.endpoints["out"][0])
        fuzz = zmq_ctx.socket(zmq.DEALER)
        fuzz.sndhwm = 0  # queue everything: the point is to flood
        fuzz.connect(dev.control_endpoint)
        user_fuzz = zmq_ctx.socket(zmq.DEALER)
        user_fuzz.sndhwm = 0
        user_fuzz.connect(dev.endpoints["ctrl"][0])
        received: list[bytes] = []
        consumer_error: list[BaseException] = []

        def consume() -> None:
            try:
                while len(received) < total_messages:
                    received.append(recv_within(pull, 10)[0])
            except BaseException as e:  # reported by the main thread
                consumer_error.append(e)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        rng = random.Random(20261202)
        answered = 0
        sent_data = 0
        for i in range(garbage_count):
            fuzz.send_multipart(malformed(rng, i))
            command = rng.randbytes(rng.randint(0, 12))
            if command not in _USER_CTRL_COMMANDS:
                user_fuzz.send_multipart(
                    [rng.randbytes(rng.randint(0, 4)) for _ in range(rng.randint(0, 3))] + [command]
                )
            if i % 3 == 0 and sent_data < total_messages:
                push.send(b"%d" % sent_data)
                sent_data += 1
            if i % 500 == 0:
                answered += read_all(fuzz)
                read_all(user_fuzz)
        while sent_data < total_messages:
            push.send(b"%d" % sent_data)
            sent_data += 1
        consumer.join(20)
        assert consumer_error == [] and not consumer.is_alive()
        assert received == [b"%d" % i for i in range(total_messages)]
        # Still the same process, answering every command, with exact counters.
        health = health_when(dev, "running")
        assert health["pid"] == pid == dev.pid, health
        assert dev.stats().front_msgs_in == total_messages
        answered += read_all(fuzz)
        assert answered > 0, "malformed requests with an id get an error answer"
        assert dev.is_alive()
    finally:
        dev.stop(timeout=5)
    assert dev.exitcode == 0
