"""The tap's capture copy runs only while a tap reader is connected (steering.CaptureSwitch):
without one the forwarding loop runs without libzmq's capture, a reader switches it on, the
last one leaving switches it off, and a switch (the proxy left with TERMINATE and entered
again on the same sockets) loses, duplicates and un-counts nothing, and keeps a pause."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from support.cli import wait_for

from procdevices import DeviceStats, ProcessDevice

Ctx = zmq.Context[zmq.Socket[bytes]]
Sock = zmq.Socket[bytes]

pytestmark = pytest.mark.timeout(120)

DEADLINE = 20.0
SWITCHES = 8


def _no_wait(seconds: float) -> None:
    """Each check below is a round trip to the device's control socket itself."""


@pytest.fixture
def streamer(short_tmp: Path) -> Iterator[ProcessDevice]:
    """A streamer process whose control socket is ``DIR/dev.sock``: its tap is ``DIR/dev.tap``
    with a capture socket of its own, as a supervised streamer has."""
    dev = ProcessDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    dev.control_endpoint = f"ipc://{short_tmp}/dev.sock"
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()
    assert dev.exitcode == 0


def tap_state(dev: ProcessDevice) -> dict[str, Any]:
    tap: dict[str, Any] = dev.info()["tap"]
    return tap


def wait_capture(dev: ProcessDevice, state: str, readers: int) -> None:
    wait_for(
        lambda: tap_state(dev)["capture"] == state and tap_state(dev)["readers"] == readers or None,
        DEADLINE,
        f"capture {state} with {readers} reader(s)",
        wake=_no_wait,
        detail=lambda: str(tap_state(dev)),
    )


def open_tap(ctx: Ctx, short_tmp: Path) -> Sock:
    sub: Sock = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    sub.connect(f"ipc://{short_tmp}/dev.tap")
    return sub


def pipe(ctx: Ctx, short_tmp: Path) -> tuple[Sock, Sock]:
    push: Sock = ctx.socket(zmq.PUSH)
    pull: Sock = ctx.socket(zmq.PULL)
    for sock in (push, pull):
        sock.linger = 0
    push.connect(f"ipc://{short_tmp}/in")
    pull.connect(f"ipc://{short_tmp}/out")
    return push, pull


def test_no_reader_no_capture_a_reader_switches_it_on_and_leaving_off(
    streamer: ProcessDevice, short_tmp: Path, zmq_ctx: Ctx
) -> None:
    assert tap_state(streamer)["capture"] == "off"
    assert tap_state(streamer)["readers"] == 0
    push, pull = pipe(zmq_ctx, short_tmp)
    for _ in range(2):
        sub = open_tap(zmq_ctx, short_tmp)
        wait_capture(streamer, "on", 1)
        second = open_tap(zmq_ctx, short_tmp)
        wait_capture(streamer, "on", 2)

        # Captured now: a message sent until the subscription has reached the tap shows there.
        def seen(sub: Sock = sub) -> bool:
            push.send(b"probe")
            assert pull.poll(5000), "the streamer did not forward"
            pull.recv()
            return sub.poll(100) != 0

        wait_for(seen, DEADLINE, "the tap to see traffic", wake=_no_wait)
        second.close(linger=0)
        wait_capture(streamer, "on", 1)  # one reader left: still captured
        sub.close(linger=0)
        wait_capture(streamer, "off", 0)


class SequencedPipe:
    """Sequence numbers through the streamer, as fast as it takes them, and a receiver that
    keeps up (a receiver that stops reading would hold the loop in a send, and with it every
    command to it, a switch's included), each in a thread."""

    def __init__(self, ctx: Ctx, short_tmp: Path) -> None:
        self.push, self.pull = pipe(ctx, short_tmp)
        self.sent = 0
        self.received: list[int] = []
        self.sending = threading.Event()
        self.receiving = threading.Event()
        self.progress = threading.Event()  # set on every message received
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._receive)]

    def _send(self) -> None:
        while self.sending.is_set():
            if self.push.poll(100, zmq.POLLOUT):
                self.push.send(b"%d" % self.sent)
                self.sent += 1

    def _receive(self) -> None:
        while self.receiving.is_set():
            if self.pull.poll(100):
                self.received.append(int(self.pull.recv()))
                self.progress.set()

    def __enter__(self) -> SequencedPipe:
        self.sending.set()
        self.receiving.set()
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        """Stop sending; wait until everything sent has come out (or the deadline)."""
        self.sending.clear()
        self.threads[0].join(10)
        deadline = time.monotonic() + DEADLINE
        while len(self.received) < self.sent and time.monotonic() < deadline:
            self.progress.wait(0.5)
            self.progress.clear()
        self.receiving.clear()
        self.threads[1].join(10)
        assert not self.pull.poll(200), "more messages than were sent"

    def __exit__(self, *exc: object) -> None:
        self.sending.clear()
        self.receiving.clear()
        for thread in self.threads:
            thread.join(10)


def test_traffic_through_repeated_switches_loses_duplicates_and_uncounts_nothing(
    streamer: ProcessDevice, short_tmp: Path, zmq_ctx: Ctx
) -> None:
    samples: list[DeviceStats] = []
    tapped: list[int] = []
    with SequencedPipe(zmq_ctx, short_tmp) as traffic:
        for _ in range(SWITCHES):
            sub = open_tap(zmq_ctx, short_tmp)
            wait_capture(streamer, "on", 1)
            samples.append(streamer.stats())
            # The tap shows the traffic, in order, while on.
            assert sub.poll(int(DEADLINE * 1000)), "the tap saw nothing while traffic flowed"
            while sub.poll(0):
                tapped.append(int(sub.recv()))
            sub.close(linger=0)
            wait_capture(streamer, "off", 0)
            samples.append(streamer.stats())
        traffic.finish()
    received = traffic.received
    assert traffic.sent > 0
    print(f"{traffic.sent} messages, {len(tapped)} tapped, {SWITCHES} switches on and off")
    assert received == list(range(traffic.sent))  # nothing lost, duplicated or reordered
    assert tapped == sorted(set(tapped)) and tapped
    final = streamer.stats()
    samples.append(final)
    for earlier, later in zip(samples, samples[1:], strict=False):
        assert all(b >= a for a, b in zip(earlier, later, strict=True)), (earlier, later)
    assert final.front_msgs_in == traffic.sent
    assert final.back_msgs_out == traffic.sent


def test_a_pause_survives_a_reader_coming_and_going(streamer: ProcessDevice, short_tmp: Path, zmq_ctx: Ctx) -> None:
    push, pull = pipe(zmq_ctx, short_tmp)
    streamer.pause()
    sub = open_tap(zmq_ctx, short_tmp)
    # The reader is counted, but a paused loop is not left: it switches when resumed.
    wait_for(lambda: tap_state(streamer)["readers"] == 1 or None, DEADLINE, "the reader counted", wake=_no_wait)
    push.send(b"held")
    assert not pull.poll(300), "a paused device forwarded after a tap reader came"
    assert streamer.health()["paused"] is True
    assert tap_state(streamer)["capture"] == "off"
    streamer.resume()
    assert pull.poll(5000) and pull.recv() == b"held"
    wait_capture(streamer, "on", 1)

    streamer.pause()
    sub.close(linger=0)
    wait_for(lambda: tap_state(streamer)["readers"] == 0 or None, DEADLINE, "the reader gone", wake=_no_wait)
    push.send(b"held again")
    assert not pull.poll(300), "a paused device forwarded after the last tap reader left"
    assert streamer.health()["paused"] is True
    streamer.resume()
    assert pull.poll(5000) and pull.recv() == b"held again"
    wait_capture(streamer, "off", 0)
    assert streamer.stats().front_msgs_in == 2


def test_a_device_with_a_pub_mon_socket_always_captures(short_tmp: Path, zmq_ctx: Ctx) -> None:
    """The mon socket's copy is the user's: it is never switched off."""
    from procdevices import ProcessProxy

    dev = ProcessProxy(zmq.PULL, zmq.PUSH, zmq.PUB)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    dev.bind_mon(f"ipc://{short_tmp}/mon")
    dev.control_endpoint = f"ipc://{short_tmp}/dev.sock"
    dev.start()
    try:
        assert dev.info()["tap"]["capture"] == "always"
    finally:
        dev.stop()
