"""Monitored queues are steerable like every device: stop, pause, resume, stats and PING's
probe work for MonitoredQueue, ThreadMonitoredQueue (also on pyzmq's shared default context)
and ProcessMonitoredQueue, with pyzmq's monitor prefixes and ROUTER/ROUTER id swap; each test
once with the C loop and once with the Python loop (``mq_loop``). The loops' exact semantics,
side by side: tests/integration/test_mq_loops.py."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from support.cli import Up, describe, write_topology
from support.devices import health_when, recv_within

from procdevices import DeviceStats, MonitoredQueue, ProcessMonitoredQueue, ThreadMonitoredQueue
from procdevices.devices.monitoredqueuedevice import monitored_queue_steerable

pytestmark = pytest.mark.timeout(60)

QUIET_MS = 300
KINDS = ["foreground", "thread-shared-context", "process"]


def assert_quiet(sock: zmq.Socket[bytes]) -> None:
    assert not sock.poll(QUIET_MS), f"got {sock.recv_multipart()!r} while paused"


@contextlib.contextmanager
def monitored(kind: str, in_type: int, out_type: int, short_tmp: Path) -> Iterator[Any]:
    """A running monitored queue of ``kind`` with in, out and a PUB monitor bound over ipc,
    prefixes b"IN" / b"OUT"; stopped (and checked stopped) on exit."""
    cls = {
        "foreground": MonitoredQueue,
        "thread-shared-context": ThreadMonitoredQueue,
        "process": ProcessMonitoredQueue,
    }[kind]
    dev: Any = cls(in_type, out_type, zmq.PUB, b"IN", b"OUT")
    for role in ("in", "out", "mon"):
        getattr(dev, f"bind_{role}")(f"ipc://{short_tmp}/{role}")
    thread = None
    errors: list[BaseException] = []
    if kind == "foreground":

        def run() -> None:
            try:
                dev.start()  # blocks until the device stops
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
    else:
        dev.start()
    try:
        if kind != "foreground":
            health_when(dev, "running")
        # A foreground device reports no readiness: the traffic each test sends first proves it.
        yield dev
    finally:
        dev.stop(timeout=5)
    if thread is not None:
        thread.join(5)
        assert not thread.is_alive() and errors == []
    else:
        assert not dev.launcher.is_alive()
    assert dev.done is True
    if kind == "process":
        assert dev.exitcode == 0


def connect(ctx: zmq.Context[Any], kind: int, endpoint: str, identity: bytes | None = None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = ctx.socket(kind)
    if identity is not None:
        sock.identity = identity
    if kind == zmq.SUB:
        sock.subscribe(b"")
    sock.connect(endpoint)
    return sock


def watch(
    ctx: zmq.Context[Any], short_tmp: Path, push: zmq.Socket[bytes], pull: zmq.Socket[bytes]
) -> zmq.Socket[bytes]:
    """A monitor SUB that is known to be subscribed (PUB drops what comes before): messages
    are sent until a copy shows; their copies are read off."""
    sub = connect(ctx, zmq.SUB, f"ipc://{short_tmp}/mon")
    for _ in range(200):
        push.send(b"hello monitor")
        assert recv_within(pull) == [b"hello monitor"]
        if sub.poll(50):
            break
    else:
        pytest.fail("the monitor never showed a copy")
    while sub.poll(50):
        sub.recv_multipart()
    return sub


@pytest.mark.parametrize("kind", KINDS)
def test_pause_resume_stats_and_prefixes(kind: str, mq_loop: str, short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    with monitored(kind, zmq.PULL, zmq.PUSH, short_tmp) as dev:
        push = connect(zmq_ctx, zmq.PUSH, f"ipc://{short_tmp}/in")
        pull = connect(zmq_ctx, zmq.PULL, f"ipc://{short_tmp}/out")
        sub = watch(zmq_ctx, short_tmp, push, pull)
        before = dev.stats()
        assert before.front_msgs_in == before.back_msgs_out > 0

        push.send_multipart([b"two", b"frames"])
        assert recv_within(pull) == [b"two", b"frames"]
        assert recv_within(sub) == [b"IN", b"two", b"frames"], "pyzmq's prefix + message"

        dev.pause()
        assert dev.info()["paused"] is True and dev.health()["paused"] is True
        push.send(b"while paused")
        assert_quiet(pull)
        assert_quiet(sub)
        dev.pause()  # twice is still paused
        assert_quiet(pull)
        paused = dev.stats()  # answers while paused: the message waits, unread
        assert paused == DeviceStats(
            front_msgs_in=before.front_msgs_in + 2,
            front_bytes_in=before.front_bytes_in + 9,
            front_msgs_out=0,
            front_bytes_out=0,
            back_msgs_in=0,
            back_bytes_in=0,
            back_msgs_out=before.back_msgs_out + 2,
            back_bytes_out=before.back_bytes_out + 9,
        )
        dev.resume()
        assert dev.info()["paused"] is False
        assert recv_within(pull) == [b"while paused"]
        assert recv_within(sub) == [b"IN", b"while paused"]
        after = dev.stats()
        assert after.front_msgs_in == paused.front_msgs_in + 1
        assert after.front_bytes_in == paused.front_bytes_in + len(b"while paused")
        # PING's probe reads the loop's counters as well
        assert health_when(dev, "running")["stats"]["front_msgs_in"] == after.front_msgs_in


@pytest.mark.parametrize("kind", KINDS)
def test_router_router_swaps_ids_and_both_directions_are_prefixed(
    kind: str, mq_loop: str, short_tmp: Path, zmq_ctx: zmq.Context[Any]
) -> None:
    with monitored(kind, zmq.ROUTER, zmq.ROUTER, short_tmp) as dev:
        client = connect(zmq_ctx, zmq.DEALER, f"ipc://{short_tmp}/in", identity=b"client")
        worker = connect(zmq_ctx, zmq.DEALER, f"ipc://{short_tmp}/out", identity=b"worker")
        sub = connect(zmq_ctx, zmq.SUB, f"ipc://{short_tmp}/mon")
        # Until the worker is connected, a ROUTER drops what is addressed to it: retry.
        for _ in range(200):
            client.send_multipart([b"worker", b"job"])
            if worker.poll(50):
                break
        else:
            pytest.fail("the worker never got a job")
        assert worker.recv_multipart() == [b"client", b"job"]
        while worker.poll(50):
            worker.recv_multipart()
        for _ in range(200):  # the monitor SUB is a slow joiner too
            worker.send_multipart([b"client", b"done"])
            assert recv_within(client) == [b"worker", b"done"]
            if sub.poll(50):
                break
        # pyzmq's monitored_queue sends the monitor each message as forwarded (ids swapped),
        # behind the prefix of the side it came from.
        copies = {tuple(recv_within(sub))}
        while sub.poll(50):
            copies.add(tuple(sub.recv_multipart()))
        assert copies <= {(b"IN", b"worker", b"client", b"job"), (b"OUT", b"client", b"worker", b"done")}
        assert (b"OUT", b"client", b"worker", b"done") in copies
        stats = dev.stats()
        assert stats.back_msgs_in == stats.front_msgs_out > 0
        assert stats.front_msgs_in == stats.back_msgs_out > 0


def test_the_loop_as_a_function_answers_libzmqs_protocol(mq_loop: str, zmq_ctx: zmq.Context[Any]) -> None:
    """monitored_queue_steerable speaks libzmq's steerable protocol, PAUSE meaning pause."""
    base = "inproc://mq-fn"
    ins, outs, mon, ctrl = (zmq_ctx.socket(t) for t in (zmq.PULL, zmq.PUSH, zmq.PUB, zmq.REP))
    for sock, name in ((ins, "in"), (outs, "out"), (mon, "mon"), (ctrl, "ctrl")):
        sock.bind(f"{base}-{name}")
    push, pull, steer = (zmq_ctx.socket(t) for t in (zmq.PUSH, zmq.PULL, zmq.REQ))
    for sock, name in ((push, "in"), (pull, "out"), (steer, "ctrl")):
        sock.connect(f"{base}-{name}")
    loop = threading.Thread(target=monitored_queue_steerable, args=(ins, outs, mon, ctrl, b"i", b"o"))
    loop.start()

    def command(cmd: bytes) -> list[bytes]:
        steer.send(cmd)
        return recv_within(steer)

    try:
        push.send(b"a")
        assert recv_within(pull) == [b"a"]
        assert command(b"PAUSE") == [b""]
        push.send(b"b")
        assert_quiet(pull)
        assert command(b"RESUME") == [b""]
        assert recv_within(pull) == [b"b"]
        assert command(b"NONSENSE") == [b""]
        counters = command(b"STATISTICS")
        assert [int.from_bytes(f, sys.byteorder) for f in counters] == [2, 2, 0, 0, 0, 0, 2, 2]
    finally:
        assert command(b"TERMINATE") == [b""]
        loop.join(5)
    assert not loop.is_alive()


MONITORED_TOPOLOGY = """\
[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://pipe-in.sock"] }
out = { bind = ["ipc://pipe-out.sock"] }

[devices.audited]
kind = "monitored_queue"
in  = { bind = ["ipc://audited-in.sock"] }
out = { bind = ["ipc://audited-out.sock"] }
mon = { bind = ["ipc://audited-mon.sock"] }
"""


@pytest.mark.timeout(90)
def test_supervised_monitored_queue_is_steerable(mq_loop: str, short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    config = write_topology(short_tmp, MONITORED_TOPOLOGY)
    with Up(config) as up:
        up.wait_states()
        for args in (("stats",), ("stats", "--json")):
            every = up.cli(*args)
            assert every.returncode == 0, describe(every)
            assert "audited" in every.stdout, describe(every)
        for command in ("pause", "resume"):
            result = up.cli(command, "audited")
            assert result.returncode == 0, describe(result)
        client = connect(zmq_ctx, zmq.REQ, f"ipc://{short_tmp}/audited-in.sock")
        worker = connect(zmq_ctx, zmq.REP, f"ipc://{short_tmp}/audited-out.sock")
        client.send(b"question")
        worker.send_multipart(recv_within(worker))
        assert recv_within(client) == [b"question"]
        one = up.cli("stats", "audited", "--json")
        assert one.returncode == 0, describe(one)
        assert "front_msgs_in" in one.stdout and json.loads(one.stdout), describe(one)
        down = up.cli("down", timeout=20)
        assert down.returncode == 0, describe(down)
        up.assert_clean_stop(["pipe", "audited"])
