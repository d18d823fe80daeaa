"""PING's view of the forwarding loop, state by state, against a scripted stand-in for libzmq's
loop (a REP socket that answers only when told to): running, blocked, dead, stopped."""

from __future__ import annotations

import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import zmq

from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command
from procdevices.control.server import PING_WAIT, WAKE_EXIT, WAKE_STOPPED, ControlServer, ControlTarget
from procdevices.control.steering import STATISTICS, ProxySteering
from procdevices.errors import ControlTimeout

pytestmark = pytest.mark.timeout(30)


class ScriptedLoop:
    """Answers the control loop's commands like libzmq's proxy, but only while ``answering``."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        self.rep: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        self.rep.linger = 0
        self.rep.bind(endpoint)
        self.answering = threading.Event()
        self.done = threading.Event()
        self.forwarded = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            if not self.answering.wait(0.01) or not self.rep.poll(10):
                continue
            command = self.rep.recv()
            if command == STATISTICS:
                self.rep.send_multipart([struct.pack("=Q", self.forwarded)] + [struct.pack("=Q", 0)] * 7)
            else:
                self.rep.send(b"")
        self.rep.close(linger=0)


@dataclass
class Harness:
    client: ControlClient
    loop: ScriptedLoop
    loop_thread_ends: threading.Event
    wake: zmq.Socket[bytes]
    server_thread: threading.Thread

    def ping(self) -> tuple[float, dict[str, Any]]:
        started = time.monotonic()
        health: dict[str, Any] = self.client.request(Command.PING, 1.0)
        return time.monotonic() - started, health


@pytest.fixture
def harness() -> Iterator[Harness]:
    ctx: zmq.Context[Any] = zmq.Context()
    name = uuid.uuid4().hex
    loop = ScriptedLoop(ctx, f"inproc://loop-{name}")
    steering = ProxySteering(ctx, f"inproc://loop-{name}")
    control: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    control.linger = 0
    control.bind(f"inproc://control-{name}")
    wake_rx: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
    wake_rx.linger = 0
    wake_rx.bind(f"inproc://wake-{name}")
    wake: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
    wake.linger = 0
    wake.connect(f"inproc://wake-{name}")
    loop_thread_ends = threading.Event()
    loop_thread = threading.Thread(target=loop_thread_ends.wait, daemon=True)  # the "forwarding thread"
    loop_thread.start()
    target = ControlTarget(steering=steering, info=dict, shutdown=None, loop_thread=loop_thread, blocked_side="out")
    server = ControlServer(target, control, wake_rx)
    server_thread = threading.Thread(target=server.serve, daemon=True)
    server_thread.start()
    client = ControlClient(f"inproc://control-{name}", ctx)
    try:
        yield Harness(client, loop, loop_thread_ends, wake, server_thread)
    finally:
        wake.send(WAKE_EXIT)
        server_thread.join(5)
        assert not server_thread.is_alive()
        loop.done.set()
        loop.thread.join(5)
        loop_thread_ends.set()
        client.close()
        for sock in (steering.socket, control, wake_rx, wake):
            sock.close(linger=0)
        ctx.term()


def test_running_when_the_loop_answers(harness: Harness) -> None:
    harness.loop.answering.set()
    pings = [harness.ping() for _ in range(5)]
    # On a busy machine a thread not scheduled for PING_WAIT reads as blocked for a moment:
    # most answers say running, and the best comes as soon as the loop answered.
    running = [health for _, health in pings if health["loop"] == "running"]
    assert len(running) >= 3, pings
    for health in running:
        assert (health["blocked_for"], health["blocked_side"], health["probed"]) == (None, None, True)
        assert health["answered_ago"] is not None and health["answered_ago"] < 1.0
    assert min(rtt for rtt, _ in pings) < PING_WAIT


def test_blocked_while_the_loop_does_not_answer_then_running_again(harness: Harness) -> None:
    rtt, health = harness.ping()
    assert (health["loop"], health["blocked_side"]) == ("blocked", "out")
    assert PING_WAIT <= rtt < 1.0
    assert health["blocked_for"] >= PING_WAIT
    # Later PINGs are answered without waiting for the loop, and the blocked time grows.
    pings = [harness.ping() for _ in range(5)]
    assert all(later["loop"] == "blocked" for _, later in pings)
    assert pings[-1][1]["blocked_for"] >= health["blocked_for"]
    assert min(rtt for rtt, _ in pings) < PING_WAIT
    # STATS says it cannot reach the counters, without waiting.
    started = time.monotonic()
    with pytest.raises(ControlTimeout, match="blocked"):
        harness.client.request(Command.STATS, 1.0)
    assert time.monotonic() - started < 1.0
    # The loop moves again: its old answer is collected, and PING says running.
    harness.loop.forwarded = 7
    harness.loop.answering.set()
    deadline = time.monotonic() + 5
    while harness.ping()[1]["loop"] != "running":
        assert time.monotonic() < deadline
    assert harness.client.request(Command.STATS, 1.0)["front_msgs_in"] == 7


def test_dead_when_the_forwarding_thread_is_gone(harness: Harness) -> None:
    harness.loop.answering.set()
    harness.loop_thread_ends.set()
    deadline = time.monotonic() + 5
    while harness.ping()[1]["loop"] != "dead":
        assert time.monotonic() < deadline


def test_stopped_once_the_worker_says_the_loop_returned(harness: Harness) -> None:
    harness.wake.send(WAKE_STOPPED)
    deadline = time.monotonic() + 5
    while harness.ping()[1]["loop"] != "stopped":
        assert time.monotonic() < deadline
    assert harness.server_thread.is_alive()  # still answering until the worker says exit


def test_ping_carries_the_loops_counters() -> None:
    import zmq

    from procdevices import ProcessDevice

    dev = ProcessDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
    port_in = dev.bind_in_to_random_port("tcp://127.0.0.1")
    port_out = dev.bind_out_to_random_port("tcp://127.0.0.1")
    dev.start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        push.connect(f"tcp://127.0.0.1:{port_in}")
        pull.connect(f"tcp://127.0.0.1:{port_out}")
        for i in range(5):
            push.send(b"x%d" % i)
        for _ in range(5):
            assert pull.poll(10_000)
            pull.recv()
        # Each PING asks the loop for its counters and carries the last ones it got.
        import time

        deadline, stats = time.monotonic() + 10.0, None
        while time.monotonic() < deadline:
            stats = dev.health()["stats"]
            if stats is not None and stats["back_msgs_out"] == 5:
                break
        assert stats is not None and stats["front_msgs_in"] == 5 and stats["back_msgs_out"] == 5, stats
    finally:
        dev.stop()
        ctx.destroy(linger=0)
