"""The supervisor's one ROUTER to every device's control socket, against real ZMQ sockets that
play the devices (no process is started)."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from procdevices.control.aclient import ControlRouter
from procdevices.control.protocol import OK, Command, ErrorCode, encode

Replies = list[tuple[bool, Any]]


def _device(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(endpoint)
    return sock


def _answer(device: zmq.Socket[bytes], body: Any) -> bytes:
    """Read one request, answer it with ``body``; returns the command."""
    assert device.poll(5000), "no request reached the device"
    peer, request_id, command, _ = device.recv_multipart()
    device.send_multipart([peer, request_id, OK, encode(body)])
    return command


def _into(replies: Replies) -> Callable[[bool, Any], None]:
    return lambda ok, body: replies.append((ok, body))


def _read_until(router: ControlRouter, replies: Replies, count: int) -> None:
    while len(replies) < count:
        assert router.socket.poll(5000), "no reply reached the supervisor"
        router.on_readable()


def test_each_reply_reaches_the_request_of_its_own_device(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    router = ControlRouter(zmq_ctx)
    devices = {name: _device(zmq_ctx, f"inproc://router-{name}") for name in ("a", "b")}
    replies: dict[str, Replies] = {"a": [], "b": []}
    connections = {name: router.connect(f"inproc://router-{name}") for name in devices}
    try:
        for name, connection in connections.items():
            connection.send(Command.PING, 0.0, 5.0, _into(replies[name]))
        # b answers first: order of answers must not matter.
        assert _answer(devices["b"], {"who": "b"}) == Command.PING.value
        assert _answer(devices["a"], {"who": "a"}) == Command.PING.value
        _read_until(router, replies["a"], 1)
        _read_until(router, replies["b"], 1)
        assert replies == {"a": [(True, {"who": "a"})], "b": [(True, {"who": "b"})]}
        assert all(c.next_deadline() is None for c in connections.values())
    finally:
        router.close()


def test_a_late_reply_after_its_deadline_is_dropped(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    router = ControlRouter(zmq_ctx)
    device = _device(zmq_ctx, "inproc://router-late")
    replies: Replies = []
    connection = router.connect("inproc://router-late")
    try:
        connection.send(Command.PING, 0.0, 1.0, lambda ok, body: replies.append((ok, body)))
        assert connection.next_deadline() == 1.0
        connection.expire(0.5)
        assert replies == []
        connection.expire(1.0)
        assert replies == [(False, {"error": "no answer before the deadline", "code": ErrorCode.TIMEOUT.value})]
        _answer(device, {"late": True})
        connection.send(Command.PING, 2.0, 1.0, lambda ok, body: replies.append((ok, body)))
        _answer(device, {"late": False})
        _read_until(router, replies, 2)
        assert replies[1] == (True, {"late": False})
    finally:
        router.close()


def test_a_device_and_its_successor_share_one_connection(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """A replaced device's successor has the same control endpoint: closing the old
    connection must not cut the new one."""
    router = ControlRouter(zmq_ctx)
    device = _device(zmq_ctx, "inproc://router-shared")
    old = router.connect("inproc://router-shared")
    new = router.connect("inproc://router-shared")
    replies: Replies = []
    try:
        assert old.routing_id == new.routing_id
        old.send(Command.STOP, 0.0, 5.0, lambda ok, body: replies.append((ok, body)))
        old.close()  # the pending STOP fails at once; the ZMQ connection stays for `new`
        assert replies == [(False, {"error": "the device stopped", "code": ErrorCode.NOT_RUNNING.value})]
        _answer(device, None)  # the old request's answer reaches nobody
        new.send(Command.PING, 0.0, 5.0, lambda ok, body: replies.append((ok, body)))
        _answer(device, {"new": True})
        _read_until(router, replies, 2)
        assert replies[1] == (True, {"new": True})
        new.close()
        assert router.connected() == [], "an endpoint nobody uses is dropped"
        third = router.connect("inproc://router-shared")  # a later device there: connected anew
        assert third.routing_id != new.routing_id
        third.send(Command.PING, 0.0, 5.0, lambda ok, body: replies.append((ok, body)))
        _answer(device, {"third": True})
        _read_until(router, replies, 3)
        assert replies[2] == (True, {"third": True})
    finally:
        router.close()


def test_a_device_that_stops_reading_fills_its_queue_and_says_so(short_tmp: Path) -> None:
    """No device behind the endpoint: requests queue up to the high-water mark, then each
    further one fails at once instead of vanishing."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ControlRouter(ctx)
    router.socket.sndhwm = 4
    replies: Replies = []
    try:
        connection = router.connect(f"ipc://{short_tmp}/nobody")
        for _ in range(5):
            connection.send(Command.PING, 0.0, 5.0, lambda ok, body: replies.append((ok, body)))
        assert replies[-1:] == [(False, {"error": "the device's control queue is full", "code": "timeout"})]
        assert len(replies) == 1
    finally:
        router.close()
        ctx.term()


def test_fail_all_answers_every_pending_request_once(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    router = ControlRouter(zmq_ctx)
    device = _device(zmq_ctx, "inproc://router-exit")
    connection = router.connect("inproc://router-exit")
    replies: Replies = []
    try:
        connection.send(Command.PING, 0.0, 5.0, lambda ok, body: replies.append((ok, body)))
        connection.send(Command.STATS, 0.0, 5.0, lambda ok, body: replies.append((ok, body)))
        connection.fail_all("the device exited")
        assert replies == [(False, {"error": "the device exited", "code": ErrorCode.NOT_RUNNING.value})] * 2
        _answer(device, {})
        _answer(device, {})
        # The answers of a process that is gone reach nobody.
        assert router.socket.poll(200)
        router.on_readable()
        assert len(replies) == 2 and connection.next_deadline() is None
    finally:
        router.close()


def test_closing_connections_while_answers_arrive_never_aborts(
    short_tmp: Path, helper_script: Callable[[str], str]
) -> None:
    """In a child process: what this guards against aborts the process (within a second or
    two when the router disconnected the endpoints it no longer needed)."""
    done = subprocess.run(
        [sys.executable, helper_script("router_release_churn.py"), str(short_tmp), "3"],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("survived")


def _reached(path: Path, within: float, router: ControlRouter) -> bool:
    """Whether anything connects to a unix socket listening at ``path`` within ``within``
    seconds (libzmq retries a lost ipc connection every 100 ms by default). Meanwhile the
    router is used as the event loop uses it (``ZMQ_EVENTS`` every turn): libzmq ends a
    disconnected pipe only as its socket processes commands, on such calls."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + within
    try:
        listener.bind(str(path))
        listener.listen(8)
        while (left := deadline - time.monotonic()) > 0:
            router.socket.get(zmq.EVENTS)
            if select.select([listener], [], [], min(left, 0.05))[0]:
                return True
        return False
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def test_a_removed_device_is_disconnected_and_never_tried_again(short_tmp: Path) -> None:
    """Issue: the endpoints of removed devices stayed connected, so the supervisor tried to
    reach every device a renaming reload ever removed, ten times a second each, for ever."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ControlRouter(ctx)
    path = short_tmp / "gone.sock"
    try:
        device = _device(ctx, f"ipc://{path}")
        connection = router.connect(f"ipc://{path}")
        replies: Replies = []
        connection.send(Command.PING, 0.0, 5.0, _into(replies))
        _answer(device, {})
        _read_until(router, replies, 1)
        device.close()  # the device process exits ...
        path.unlink(missing_ok=True)
        connection.close()  # ... and the supervisor forgets it
        assert not _reached(path, 1.0, router), "the supervisor still tries to reach a removed device"
        assert router.connected() == []
    finally:
        router.close()
        ctx.term()


def test_an_answer_read_ahead_defers_the_disconnect_until_it_is_read(short_tmp: Path) -> None:
    """ZMQ_EVENTS reads the first frame of a waiting answer ahead; disconnecting then would
    abort the process (fq.cpp: !_more). The disconnect waits for on_readable to read it."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ControlRouter(ctx)
    endpoint = f"ipc://{short_tmp}/late.sock"
    try:
        device = _device(ctx, endpoint)
        connection = router.connect(endpoint)
        connection.send(Command.PING, 0.0, 5.0, lambda ok, body: None)
        _answer(device, {})
        assert router.socket.poll(5000)  # the answer is waiting: read ahead by ZMQ_EVENTS
        connection.close()
        assert router.connected() == [endpoint], "disconnected with a message half read"
        router.on_readable()
        assert router.connected() == []
        device.close()
    finally:
        router.close()
        ctx.term()
