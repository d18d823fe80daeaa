"""Both control protocols' validation: any input is a request or a ProtocolError, never
anything else (property-based, with hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procdevices.control.protocol import (
    LOOP_BLOCKED,
    MAX_JSON_DEPTH,
    DeviceStats,
    ErrorCode,
    PingReply,
    ProtocolError,
    SupervisorCommand,
    parse_supervisor_request,
    supervisor_request,
)
from procdevices.errors import (
    ControlTimeout,
    DeviceNotRunning,
    RemoteError,
    UnsupportedOperation,
    error_code_of,
    exception_for,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
commands = st.sampled_from([c.value for c in SupervisorCommand]) | st.text(max_size=10) | json_values


def _parse(frame: bytes) -> None:
    try:
        request = parse_supervisor_request(frame)
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode)
        assert e.message and "\n" not in e.message
        return
    assert isinstance(request.command, SupervisorCommand)
    assert isinstance(request.args, dict)
    assert request.name is None or isinstance(request.name, str)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_request_or_a_protocol_error(frame: bytes) -> None:
    _parse(frame)


@settings(max_examples=300, deadline=None)
@given(commands, json_values, st.booleans())
def test_any_json_is_a_request_or_a_protocol_error(command: Any, args: Any, with_args: bool) -> None:
    body = {"command": command, "args": args} if with_args else {"command": command}
    _parse(json.dumps(body).encode())


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000 // 2])
def test_deep_nesting_is_refused_before_parsing(depth: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_supervisor_request(b"[" * depth + b"]" * depth)
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    name = "[" * 100 + '\\"' + "{" * 100
    request = parse_supervisor_request(json.dumps({"command": "status", "args": {"name": name}}).encode())
    assert request.name == name


def test_the_client_encoding_round_trips() -> None:
    request = parse_supervisor_request(supervisor_request(SupervisorCommand.STOP, name="broker"))
    assert (request.command, request.name) == (SupervisorCommand.STOP, "broker")
    assert parse_supervisor_request(supervisor_request(SupervisorCommand.DOWN)).args == {}


@pytest.mark.parametrize("body", [b'{"command":"down","args":{"name":"x"}}', b'{"command":"status","extra":1}'])
def test_unknown_arguments_and_keys_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="unknown"):
        parse_supervisor_request(body)


def test_errors_travel_as_codes_and_come_back_as_the_same_exceptions() -> None:
    for error in (UnsupportedOperation("x"), ControlTimeout("x"), DeviceNotRunning("x")):
        assert exception_for(error_code_of(error)) is type(error)
    assert exception_for(ErrorCode.BAD_REQUEST) is RemoteError
    assert exception_for(None) is RemoteError


def test_the_ping_reply_round_trips_and_reads_odd_fields_as_their_defaults() -> None:
    stats = DeviceStats(*range(1, 9))
    reply = PingReply(
        pid=42, paused=True, stopping=False, loop=LOOP_BLOCKED, blocked_for=0.7, blocked_side="out",
        probed=True, answered_ago=0.25, stats=stats,
    )  # fmt: skip
    wire = json.loads(json.dumps(reply.to_wire()))
    assert wire["stats"] == stats.as_dict() and wire["loop"] == "blocked"
    assert PingReply.from_wire(wire) == reply
    odd = {**wire, "pid": "42", "paused": 1, "blocked_for": True, "blocked_side": 3, "stats": {"front_msgs_in": 1}}
    assert PingReply.from_wire(odd) == PingReply(
        pid=0, paused=False, stopping=False, loop="blocked", probed=True, answered_ago=0.25
    )
    assert PingReply.from_wire({**wire, "stats": {**stats.as_dict(), "back_bytes_out": -1}}) == reply._replace(
        stats=None
    )
    not_replies: list[object] = [None, [], "running", {"pid": 1}, {"loop": 1}]
    for not_a_reply in not_replies:
        assert PingReply.from_wire(not_a_reply) is None
