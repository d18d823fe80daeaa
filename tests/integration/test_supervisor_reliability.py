"""The supervisor is never the reason a device stops: backpressure, signals and stuck queues,
with a real `up`, real device processes and real traffic."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest
import zmq
from support.cli import Up, connect, wait_gone, write_topology
from support.topologies import STREAMER

# out SNDHWM 100: below libzmq's burst of 1000, so a full consumer stops the loop inside a send
# (with larger queues backpressure may also show as "running" between bursts: docs/devices.md).
# Large messages, so that the kernel's socket buffers hold only a few of them either.
SLOW_CONSUMER = """\
[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://in.sock"] }
out = { bind = ["ipc://out.sock"], sockopts = { SNDHWM = 100 } }
"""

Ctx = zmq.Context[zmq.Socket[bytes]]
PADDING = b"." * 16 * 1024


@pytest.mark.timeout(120)
def test_a_consumer_that_stops_reading_for_30s_does_not_get_its_device_killed(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, SLOW_CONSUMER, pool_size=0)
    with Up(config) as up:
        before = up.wait_states({"pipe": "RUNNING"})["pipe"]
        consumer = zmq_ctx.socket(zmq.PULL)
        consumer.rcvhwm = 10
        consumer.connect(f"ipc://{short_tmp}/out.sock")
        producer = zmq_ctx.socket(zmq.PUSH)
        producer.sndhwm = 1000
        producer.connect(f"ipc://{short_tmp}/in.sock")
        sent = 0
        # Paused, the device lets its in queue fill up; resumed, it forwards a burst larger than
        # what its out socket and the consumer can take, and waits inside a send.
        assert up.cli("pause", "pipe").returncode == 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                producer.send(b"%08d" % sent + PADDING, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                # Full until the device takes more: 2 s without room means every queue is full.
                if producer.poll(2000, zmq.POLLOUT) == 0:
                    break
        assert sent > 1000, "the pipeline never filled up"
        assert up.cli("resume", "pipe").returncode == 0

        # 30 s without reading: far beyond the probe's 2 × 1 s hang budget.
        seen_blocked = []
        until = time.monotonic() + 30
        while time.monotonic() < until:
            now = up.devices()["pipe"]
            assert (now["state"], now["pid"], now["restarts"]) == ("RUNNING", before["pid"], 0), up.log_tail()
            if now["blocked"]:
                seen_blocked.append(now["blocked"])
        assert seen_blocked and seen_blocked[-1]["side"] == "out", seen_blocked
        assert seen_blocked[-1]["seconds"] > 10, seen_blocked
        assert "hung" not in up.log(), up.log_tail()

        # The consumer reads again: every message arrives, in order, and the device says so.
        for expected in range(sent):
            assert consumer.poll(10_000), f"message {expected} of {sent} never arrived"
            assert consumer.recv()[:8] == b"%08d" % expected
        up.wait_until(lambda: up.devices()["pipe"]["blocked"] is None, 10, "the device to say it flows again")
        assert up.devices()["pipe"]["pid"] == before["pid"]


@pytest.mark.timeout(60)
def test_a_terminal_hangup_kills_neither_up_nor_its_devices(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=1)
    with Up(config) as up:
        pid = up.wait_states({"pipe": "RUNNING"})["pipe"]["pid"]
        up.signal(signal.SIGHUP, group=True)  # what a closing terminal sends its session
        up.wait_until(lambda: "received SIGHUP" in up.log(), 10, "the supervisor to log the SIGHUP")
        assert up.running(), up.log_tail()
        assert psutil.Process(pid).is_running() and up.devices()["pipe"]["pid"] == pid
        assert (short_tmp / "in.sock").exists() and (short_tmp / "out.sock").exists()
        producer = connect(zmq_ctx, zmq.PUSH, f"ipc://{short_tmp}/in.sock")
        consumer = connect(zmq_ctx, zmq.PULL, f"ipc://{short_tmp}/out.sock")
        producer.send(b"still here")
        assert consumer.poll(10_000) and consumer.recv() == b"still here"


@pytest.mark.timeout(60)
def test_down_with_a_peer_that_never_connected_needs_no_signal(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=0)
    with Up(config) as up:
        up.wait_states({"pipe": "RUNNING"})
        producer = connect(zmq_ctx, zmq.PUSH, f"ipc://{short_tmp}/in.sock")
        for i in range(200):
            producer.send(b"queued %d" % i)  # nobody will ever read them
        started = time.monotonic()
        assert up.cli("down").returncode == 0
        took = time.monotonic() - started
        assert up.wait_exit() == 0
        log = up.log()
        assert "pipe: STOPPED (stopped through the control socket)" in log, up.log_tail()
        assert "SIGTERM" not in log and "SIGKILL" not in log, up.log_tail()
        assert took < 2.0 + 1.0, f"down took {took:.2f}s, more than stop_timeout"  # stop_timeout = 2 s


@pytest.mark.timeout(60)
def test_devices_stop_soon_after_their_supervisor_is_killed_whatever_their_queues_hold(
    short_tmp: Path, zmq_ctx: Ctx
) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=0)
    with Up(config) as up:
        device = psutil.Process(up.wait_states({"pipe": "RUNNING"})["pipe"]["pid"])
        producer = connect(zmq_ctx, zmq.PUSH, f"ipc://{short_tmp}/in.sock")
        for i in range(200):
            producer.send(b"queued %d" % i)
        up.signal(signal.SIGKILL)
        alive = wait_gone([device], 2.0 + 1.0)  # stop_timeout and a margin
        assert not alive, "the device outlived its supervisor by more than its stop timeout"
