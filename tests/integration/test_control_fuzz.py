"""No input on a control socket can take the supervisor or a device's control plane down.

A real `up` with one streamer; traffic flows through it while thousands of malformed
messages arrive on ``supervisor.sock`` and on the device's own control socket. Afterwards the
supervisor is alive, the device has the same pid and no restart, and traffic still flows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import zmq
from support.cli import Up, connect, push_pull, write_topology
from support.topologies import STREAMER

# Exactly the requests that used to kill the supervisor, and their neighbours.
KNOWN_BAD_REQUESTS = [
    b'{"command":"status","args":[1]}',
    b'{"command":"status","args":"x"}',
    b'{"command":"status","args":true}',
    b'{"command":"status","args":1.5}',
    b'{"command":"status","args":5}',
    b'{"command":"status","args":["x"]}',
    b'{"command":"status","args":{"name":7}}',
    b'{"command":"status","args":{"nom":"x"}}',
    b'{"command":["status"]}',
    b'{"command":null}',
    b"[]",
    b"null",
    b"",
    b"\xff\xfe",
    b"{",
    b"[" * 30_000 + b"]" * 30_000,  # deep, but within the size limit: refused before json sees it
]

FUZZ_MESSAGES = 10_000
# Read-only commands only: a well-formed "stop" or "down" would rightly act.
HARMLESS_SUPERVISOR = ["status", "stats", "STATUS", "", "statuss", "\x1b[31m"]
HARMLESS_DEVICE = [b"PING", b"INFO", b"STATS", b"ping", b"", b"\x00" * 3, b"X" * 300]


def _junk(rng: random.Random) -> Any:
    choices: list[Any] = [
        None,
        True,
        1,
        -1,
        2**70,
        1.5,
        float("inf"),
        "",
        "x" * rng.randint(0, 400),
        [],
        {},
        [rng.random()],
        {"name": rng.choice([1, None, [], "x", "pipe" * 100])},
    ]
    return rng.choice(choices)


def supervisor_fuzz(rng: random.Random) -> list[bytes]:
    shape = rng.randrange(6)
    if shape == 0:
        return [rng.randbytes(rng.randint(0, 200))]
    if shape == 1:
        return [json.dumps(_junk(rng)).encode()]
    if shape == 2:
        body = {"command": rng.choice(HARMLESS_SUPERVISOR), "args": _junk(rng)}
        return [json.dumps(body).encode()]
    if shape == 3:
        return [json.dumps({"command": _junk(rng), rng.choice(["args", "x"]): _junk(rng)}).encode()]
    if shape == 4:  # more frames than a request has
        return [rng.randbytes(4) for _ in range(rng.randint(2, 5))]
    return [b"[" * rng.randint(17, 5000)]


def device_fuzz(rng: random.Random) -> list[bytes]:
    shape = rng.randrange(5)
    request_id = rng.choice([b"", b"i", rng.randbytes(8), b"x" * 65])
    if shape == 0:
        return [request_id]
    if shape == 1:
        return [request_id, rng.choice(HARMLESS_DEVICE)]
    if shape == 2:
        return [request_id, rng.choice(HARMLESS_DEVICE), rng.choice([b"{", b"\xff", b"[" * 100, rng.randbytes(30)])]
    if shape == 3:
        return [request_id, rng.choice(HARMLESS_DEVICE), json.dumps(_junk(rng)).encode()]
    return [request_id] + [rng.randbytes(3) for _ in range(rng.randint(3, 6))]


def _flood(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, messages: list[list[bytes]]) -> int:
    """Send every message from a DEALER, reading replies as they come; returns how many
    replies arrived (the caller checks the server stayed alive, not this count)."""
    sock = ctx.socket(zmq.DEALER)
    sock.sndhwm = sock.rcvhwm = 0
    sock.linger = 0
    sock.connect(endpoint)
    replies = 0
    try:
        for index, frames in enumerate(messages):
            # A DEALER talking to a REQ-style server prepends the empty delimiter itself.
            sock.send_multipart([b"", *frames] if endpoint.endswith("supervisor.sock") else frames)
            if index % 200 == 199:
                while sock.poll(0):
                    sock.recv_multipart()
                    replies += 1
        while sock.poll(500):
            sock.recv_multipart()
            replies += 1
    finally:
        sock.close(linger=0)
    return replies


def _only_answerable_requests_are_answered(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, rng: random.Random
) -> None:
    """Requests without a usable request id (empty, or longer than 64 bytes) cannot be
    answered: the device stays silent. A PING sent after them on the same connection is
    answered, and its reply is the first to arrive (a device answers in order)."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        for _ in range(200):
            frames = device_fuzz(rng)
            frames[0] = rng.choice([b"", b"x" * 65, b"y" * 1000])
            sock.send_multipart(frames)
        sock.send_multipart([b"marker", b"PING", b"{}"])
        assert sock.poll(10_000), "the device did not answer a valid PING"
        reply = sock.recv_multipart()
        assert reply[0] == b"marker", f"an unanswerable request got an answer: {reply!r}"
    finally:
        sock.close(linger=0)


def _ask(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, body: bytes) -> dict[str, Any] | None:
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        sock.send(body)
        if not sock.poll(5000):
            return None
        reply: dict[str, Any] = json.loads(sock.recv())
        return reply
    finally:
        sock.close(linger=0)


@pytest.mark.timeout(120)
def test_malformed_input_on_both_control_sockets_changes_nothing(
    short_tmp: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=0)
    supervisor_endpoint = f"ipc://{short_tmp}/run/supervisor.sock"
    device_endpoint = f"ipc://{short_tmp}/run/ctl/pipe.sock"
    with Up(config) as up:
        before = up.wait_states({"pipe": "RUNNING"})["pipe"]
        front, back = f"ipc://{short_tmp}/in.sock", f"ipc://{short_tmp}/out.sock"
        push_pull(zmq_ctx, front, back, [b"before-%d" % i for i in range(100)])

        for body in KNOWN_BAD_REQUESTS:
            reply = _ask(zmq_ctx, supervisor_endpoint, body)
            assert reply is not None, f"no answer to {body[:60]!r}\n{up.log_tail()}"
            assert reply["ok"] is False and reply["code"] in ("bad_request", "unknown_command"), reply
            assert "\n" not in reply["error"], reply
        # Larger than any request may be: libzmq drops that peer unread; the supervisor lives on.
        assert _ask(zmq_ctx, supervisor_endpoint, b"[" * 100_000 + b"]" * 100_000) is None
        assert up.running(), up.log_tail()

        rng = random.Random(20261202)
        _flood(zmq_ctx, supervisor_endpoint, [supervisor_fuzz(rng) for _ in range(FUZZ_MESSAGES)])
        _flood(zmq_ctx, device_endpoint, [device_fuzz(rng) for _ in range(FUZZ_MESSAGES)])
        _only_answerable_requests_are_answered(zmq_ctx, device_endpoint, rng)

        push_pull(zmq_ctx, front, back, [b"after-%d" % i for i in range(100)])
        after = up.devices()["pipe"]
        assert up.running(), up.log_tail()
        assert (after["state"], after["pid"], after["restarts"]) == ("RUNNING", before["pid"], 0), after
        stats = up.cli("stats", "pipe", "--json")
        assert stats.returncode == 0 and json.loads(stats.stdout)["pipe"]["front_msgs_in"] >= 200, stats
        assert "internal error" not in up.log(), up.log_tail()


def test_a_request_client_that_leaves_before_its_answer_does_no_harm(
    short_tmp: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=0)
    with Up(config) as up:
        up.wait_states({"pipe": "RUNNING"})
        for _ in range(50):
            sock = connect(zmq_ctx, zmq.DEALER, f"ipc://{short_tmp}/run/supervisor.sock")
            sock.send_multipart([b"", b'{"command":"stats"}'])
            sock.close(linger=0)
        assert up.cli("status").returncode == 0
        assert up.devices()["pipe"]["restarts"] == 0
