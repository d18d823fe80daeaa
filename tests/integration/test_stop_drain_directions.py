"""The drain at stop of a two-way device works in both directions (docs/devices.md, "A
graceful stop delivers what is queued inside"): requests queued in ``in`` reach the workers
(tests/integration/test_device_stopping.py), replies queued in ``out`` reach the clients, and a
monitored queue's drained copies carry the prefix of the side they came from."""

from __future__ import annotations

from typing import Any

import pytest
import zmq
from support.devices import recv_within

from procdevices import ThreadMonitoredQueue, ThreadProxy

pytestmark = pytest.mark.timeout(60)

QUEUED = 10


def _connect(ctx: zmq.Context[Any], kind: int, endpoint: str, identity: bytes | None = None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = ctx.socket(kind)
    if identity is not None:
        sock.identity = identity
    if kind == zmq.SUB:
        sock.subscribe(b"")
    sock.connect(endpoint)
    return sock


def test_a_two_way_device_delivers_queued_replies_at_stop(zmq_ctx: zmq.Context[Any]) -> None:
    dev = ThreadProxy(zmq.ROUTER, zmq.DEALER)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.bind_out("tcp://127.0.0.1:*")
    dev.start()
    try:
        worker = _connect(zmq_ctx, zmq.DEALER, dev.endpoints["out"][0])
        client = _connect(zmq_ctx, zmq.DEALER, dev.endpoints["in"][0])
        client.send(b"warm-up")
        envelope, body = recv_within(worker)
        assert body == b"warm-up"
        dev.pause()
        for i in range(QUEUED):
            worker.send_multipart([envelope, b"reply %d" % i])
        dev.stop(timeout=5)  # the replies wait in the device's out socket (or are on their way)
        got = [recv_within(client)[-1] for _ in range(QUEUED)]
        assert got == [b"reply %d" % i for i in range(QUEUED)]
    finally:
        if dev.is_alive():
            dev.stop(timeout=5)


def test_a_monitored_queue_drains_both_ways_with_the_prefix_of_each_side(
    mq_loop: str, zmq_ctx: zmq.Context[Any]
) -> None:
    dev = ThreadMonitoredQueue(zmq.ROUTER, zmq.DEALER, zmq.PUB, b"IN", b"OUT")
    for role in ("in", "out", "mon"):
        getattr(dev, f"bind_{role}")("tcp://127.0.0.1:*")
    dev.start()
    try:
        client = _connect(zmq_ctx, zmq.DEALER, dev.endpoints["in"][0], identity=b"client")
        worker = _connect(zmq_ctx, zmq.DEALER, dev.endpoints["out"][0])
        sub = _connect(zmq_ctx, zmq.SUB, dev.endpoints["mon"][0])
        for _ in range(200):  # the monitor SUB is a slow joiner: until a copy shows
            client.send(b"warm-up")
            assert recv_within(worker) == [b"client", b"warm-up"]
            if sub.poll(50):
                break
        else:
            pytest.fail("the monitor never showed a copy")
        while sub.poll(50):
            sub.recv_multipart()
        dev.pause()
        for i in range(QUEUED):
            client.send(b"request %d" % i)
            worker.send_multipart([b"client", b"reply %d" % i])
        dev.stop(timeout=5)
        requests = [recv_within(worker) for _ in range(QUEUED)]
        replies = [recv_within(client) for _ in range(QUEUED)]
        assert requests == [[b"client", b"request %d" % i] for i in range(QUEUED)]
        assert replies == [[b"reply %d" % i] for i in range(QUEUED)]
        copies = [recv_within(sub) for _ in range(2 * QUEUED)]
        assert sorted(c for c in copies if c[0] == b"IN") == sorted(
            [b"IN", b"client", b"request %d" % i] for i in range(QUEUED)
        )
        assert sorted(c for c in copies if c[0] == b"OUT") == sorted(
            [b"OUT", b"client", b"reply %d" % i] for i in range(QUEUED)
        )
    finally:
        if dev.is_alive():
            dev.stop(timeout=5)
