"""The supervisor's event loop with real descriptors and ZMQ sockets, and a scripted
"supervised" side (no process is started)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import zmq

from procdevices.supervisor.loop import EventLoop

# Far enough that a loop which waits for its next deadline instead of acting fails the test.
FAR = 30.0


class _Until:
    """Supervised until ``done()`` says so, or a guard deadline passes (then the test fails)."""

    def __init__(self, done: Callable[[], bool], guard: float = 10.0) -> None:
        self.done = done
        self.give_up_at = time.monotonic() + guard
        self.ticks = 0

    def finished(self) -> bool:
        return self.done() or time.monotonic() > self.give_up_at

    def next_deadline(self, now: float) -> float:
        return min(now + FAR, self.give_up_at)

    def tick(self, now: float) -> None:
        self.ticks += 1

    def flush(self) -> None:
        pass


def _loop() -> EventLoop:
    return EventLoop(time.monotonic, lambda *args, **kwargs: None)


def _pair(ctx: zmq.Context[zmq.Socket[bytes]], name: str) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"inproc://{name}")
    b.connect(f"inproc://{name}")
    return a, b


def test_input_whose_wakeup_a_send_consumed_is_still_handled(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """A ZMQ socket's descriptor only signals "look at ZMQ_EVENTS", and any operation on the
    socket can consume that signal. Here the message is already waiting and the signal gone
    when the loop starts: the loop must still see the input at once, not at its next deadline."""
    mine, peer = _pair(zmq_ctx, "loop-consumed")
    peer.send(b"hello")
    assert mine.poll(5000)  # processes the socket's commands: its descriptor is now quiet
    got: list[bytes] = []
    loop = _loop()
    try:
        loop.watch(mine, lambda now: got.append(mine.recv()))
        started = time.monotonic()
        loop.run(_Until(lambda: bool(got)))
        assert got == [b"hello"]
        assert time.monotonic() - started < FAR / 3
    finally:
        loop.close()


def test_a_callback_that_sends_does_not_hide_the_answer(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """The supervisor sends probes from its callbacks on the very socket it reads answers from."""
    mine, peer = _pair(zmq_ctx, "loop-send")
    got: list[bytes] = []
    loop = _loop()

    def on_input(now: float) -> None:
        got.append(mine.recv())
        if len(got) < 50:
            peer.send(b"%d" % len(got))  # the answer is there before the next send below
            mine.send(b"probe")

    try:
        loop.watch(mine, on_input)
        peer.send(b"0")
        loop.run(_Until(lambda: len(got) == 50))
        assert got == [b"%d" % i for i in range(50)]
    finally:
        loop.close()


def test_plain_descriptors_and_unwatch() -> None:
    r, w = os.pipe()
    seen: list[bytes] = []
    loop = _loop()
    try:
        loop.watch(r, lambda now: seen.append(os.read(r, 10)))
        os.write(w, b"x")
        loop.run(_Until(lambda: bool(seen)))
        assert seen == [b"x"]
        loop.unwatch(r)
        loop.unwatch(r)  # twice is harmless
        os.write(w, b"y")  # nobody watches it any more: the loop waits for its guard
        waiting = _Until(lambda: False, guard=0.3)
        loop.run(waiting)
        assert seen == [b"x"]
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def test_a_descriptor_closed_while_watched_and_its_number_reused() -> None:
    """A process's descriptors can be closed before the loop hears of it; the number can
    then come back for another process and must be watched again without error."""
    r, w = os.pipe()
    loop = _loop()
    try:
        loop.watch(r, lambda now: None)
        os.close(r)
        os.close(w)
        r2, w2 = os.pipe()
        seen: list[bytes] = []
        loop.watch(r2, lambda now: seen.append(os.read(r2, 10)))
        os.write(w2, b"z")
        loop.run(_Until(lambda: bool(seen)))
        assert seen == [b"z"]
        os.close(r2)
        os.close(w2)
    finally:
        loop.close()


def test_a_failing_callback_is_logged_and_the_loop_goes_on(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    logged: list[str] = []
    loop = EventLoop(time.monotonic, lambda message, **kwargs: logged.append(message))
    mine, peer = _pair(zmq_ctx, "loop-bug")
    got: list[bytes] = []

    def buggy(now: float) -> None:
        got.append(mine.recv())
        if len(got) == 1:
            raise RuntimeError("a bug")

    try:
        loop.watch(mine, buggy)
        peer.send(b"1")
        peer.send(b"2")
        loop.run(_Until(lambda: len(got) == 2))
        assert got == [b"1", b"2"]
        assert len(logged) == 1 and "RuntimeError: a bug" in logged[0]
    finally:
        loop.close()
