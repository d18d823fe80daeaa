"""What procdevices adds to pyzmq's devices: the control socket (stop, pause, resume, stats,
ping), the user's own ctrl socket kept working, and setup errors raised in the caller."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from support.devices import connect_pipe, recv_within

from procdevices import (
    ControlTimeout,
    DeviceNotRunning,
    DeviceSetupError,
    DeviceStartError,
    DeviceStats,
    ProcessDevice,
    ProcessMonitoredQueue,
    ProcessProxy,
    ProcessProxySteerable,
    ThreadDevice,
    ThreadMonitoredQueue,
    ThreadProxy,
    ThreadProxySteerable,
)
from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command, PingReply

pytestmark = pytest.mark.timeout(30)

# How long "nothing arrives" is watched for. Forwarding on loopback takes well under 1 ms.
QUIET_MS = 300

# libzmq 4.3.5 (the latest release) swaps PAUSE and RESUME in zmq_proxy_steerable; the fix
# (libzmq PR #4600) is only on master. The user's ctrl socket must see libzmq's behaviour.
LIBZMQ_SWAPS_PAUSE = zmq.zmq_version_info() <= (4, 3, 5)
USER_PAUSE = b"RESUME" if LIBZMQ_SWAPS_PAUSE else b"PAUSE"
USER_RESUME = b"PAUSE" if LIBZMQ_SWAPS_PAUSE else b"RESUME"

PROCESS_CLASSES = [ProcessDevice, ProcessProxy, ProcessProxySteerable, ProcessMonitoredQueue]


class OwnContextThreadMonitoredQueue(ThreadMonitoredQueue):
    context_factory = zmq.Context


# -- helpers -----------------------------------------------------------------------------------


def assert_quiet(sock: zmq.Socket[bytes]) -> None:
    assert not sock.poll(QUIET_MS), f"got {sock.recv_multipart()!r} while paused"


def new_device(cls: type[Any], in_type: int = zmq.PULL, out_type: int = zmq.PUSH) -> Any:
    if issubclass(cls, (ThreadDevice, ProcessDevice)) and not hasattr(cls, "bind_mon"):
        return cls(zmq.QUEUE, in_type, out_type)
    return cls(in_type, out_type)


@contextlib.contextmanager
def running(dev: Any) -> Iterator[Any]:
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


@contextlib.contextmanager
def pipeline(
    cls: type[Any], ctx: zmq.Context[Any], short_tmp: Path
) -> Iterator[tuple[Any, zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A running PULL->PUSH device of ``cls`` over ipc, with a connected PUSH and PULL."""
    dev = new_device(cls)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    with running(dev):
        push, pull = connect_pipe(ctx, dev)
        yield dev, push, pull


def ipc_path(endpoint: str) -> str:
    assert endpoint.startswith("ipc://"), endpoint
    return endpoint[len("ipc://") :]


# -- stop ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PROCESS_CLASSES, ids=lambda c: c.__name__)
def test_stop_exits_0_and_removes_ipc_files(cls: type[Any], short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    dev = new_device(cls)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    if hasattr(dev, "bind_mon"):
        dev.bind_mon(f"ipc://{short_tmp}/mon")
    dev.start()
    try:
        control = ipc_path(dev.control_endpoint)
        bound = [ipc_path(e) for role in dev.endpoints for e in dev.endpoints[role]]
        assert len(bound) == (3 if hasattr(dev, "bind_mon") else 2)
        assert os.path.exists(control)
        assert all(os.path.exists(p) for p in bound)
        push, pull = connect_pipe(zmq_ctx, dev)
        push.send(b"before stop")
        assert recv_within(pull) == [b"before stop"]
        assert dev.is_alive()
    finally:
        dev.stop(timeout=5)
    assert dev.exitcode == 0
    assert not dev.is_alive()
    assert dev.done is True
    assert not os.path.exists(control)
    assert not os.path.exists(os.path.dirname(control)), "the private control directory is left"
    assert [p for p in bound if os.path.exists(p)] == []


@pytest.mark.parametrize(
    "cls", [ThreadDevice, ThreadProxy, ThreadProxySteerable, OwnContextThreadMonitoredQueue], ids=lambda c: c.__name__
)
def test_stop_ends_thread_devices(cls: type[Any], short_tmp: Path) -> None:
    dev = new_device(cls)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.start()
    assert dev.launcher.is_alive()
    dev.stop(timeout=5)
    assert not dev.launcher.is_alive()
    assert dev.done is True
    assert not os.path.exists(f"{short_tmp}/in")


def test_control_before_start_raises_device_not_running() -> None:
    for dev in (ProcessDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH), ThreadProxy(zmq.PULL, zmq.PUSH)):
        for operation in (dev.stop, dev.ping, dev.pause, dev.stats):
            with pytest.raises(DeviceNotRunning):
                operation()


# pyzmq's background devices can be started again after they ended (each start() makes a new
# Thread or Process). Regression: a ProcessDevice once reused its first run's control endpoint,
# whose private directory stop() had removed, so the second start() failed (ENOENT).
@pytest.mark.parametrize(
    "cls",
    [ThreadDevice, ProcessDevice],
    ids=lambda c: c.__name__,
)
def test_start_again_after_stop(cls: type[Any], short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    dev = cls(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    # Several runs: a thread device binds the same inproc control name each time, which libzmq
    # once freed only when its reaper got to the closed socket (EADDRINUSE on a busy machine).
    for run in (b"first", b"second", b"third", b"fourth", b"fifth"):
        with running(dev):
            # Fresh peers for each run: a PUSH that was connected to the first run may not yet
            # have noticed that connection close, and would write into it (a lost message that
            # has nothing to do with the device: this test once failed that way).
            push = zmq_ctx.socket(zmq.PUSH)
            push.connect(f"ipc://{short_tmp}/in")
            pull = zmq_ctx.socket(zmq.PULL)
            pull.connect(f"ipc://{short_tmp}/out")
            push.send(run)
            assert recv_within(pull) == [run]
            push.close(linger=0)
            pull.close(linger=0)


def test_a_stuck_forwarding_loop_still_stops(zmq_ctx: zmq.Context[Any]) -> None:
    # A PUSH monitor socket without a peer blocks libzmq's proxy on the first message, control
    # socket included. stop() must fall back to shutting the device's context down.
    dev = ProcessProxy(zmq.PULL, zmq.PUSH, zmq.PUSH)
    for role in ("in", "out", "mon"):
        getattr(dev, f"bind_{role}")("tcp://127.0.0.1:*")
    dev.start()
    try:
        push, pull = connect_pipe(zmq_ctx, dev)
        push.send(b"stuck on the monitor")
        assert_quiet(pull)
        # The control thread answers; the loop is reported blocked. Both out and mon are PUSH
        # sockets whose send can block, so the side is not named.
        health = dev.health(timeout=0.3)
        assert (health["loop"], health["blocked_side"]) == ("blocked", None), health
        assert health["blocked_for"] >= 0.05
        with pytest.raises(ControlTimeout, match="blocked"):
            dev.stats(timeout=0.3)
    finally:
        dev.stop(timeout=5)
    assert dev.exitcode == 0


# Regression: a command on the user's ctrl socket that a stuck loop does not answer once raised
# ControlTimeout out of ControlServer._relay_user_command, killing the control thread: stop()
# then timed out and SIGKILLed the device.
def test_user_ctrl_command_to_a_stuck_loop_keeps_the_device_stoppable(zmq_ctx: zmq.Context[Any]) -> None:
    dev = ProcessProxySteerable(zmq.PULL, zmq.PUSH, zmq.PUSH, zmq.PAIR)
    for role in ("in", "out", "mon", "ctrl"):
        getattr(dev, f"bind_{role}")("tcp://127.0.0.1:*")
    dev.start()
    try:
        push, pull = connect_pipe(zmq_ctx, dev)
        ctrl = zmq_ctx.socket(zmq.PAIR)
        ctrl.connect(dev.endpoints["ctrl"][0])
        push.send(b"stuck on the monitor")
        assert_quiet(pull)
        ctrl.send(b"STATISTICS")  # the stuck proxy cannot answer (libzmq would not either)
        assert not ctrl.poll(1200)  # the relay gives up after 1 s
    finally:
        dev.stop(timeout=3)  # ControlTimeout (and SIGKILL) if the control path is broken
    assert dev.exitcode == 0


class ControlThreadEndsFirst(ProcessProxySteerable):
    """Forces one interleaving of a race (see the test below): the forwarding thread's clean-up
    waits until the control thread has ended. Module level, so that the spawned interpreter can
    import it. It reaches into the runtime (``finish``, ``_control_thread``, ``_wake``): if those
    change, the device fails to start and the test fails loudly with DeviceStartError."""

    def run_with(self, runtime: Any) -> None:
        finish = runtime.finish

        def control_thread_first() -> None:
            thread = runtime._control_thread
            if thread is not None:
                thread.join(1.0)
                # Let the wake socket notice that the control thread closed its peer.
                wake, deadline = runtime._wake, time.monotonic() + 1.0
                while not thread.is_alive() and wake.get(zmq.EVENTS) & zmq.POLLOUT:
                    if time.monotonic() > deadline:
                        break
                    wake.poll(5, zmq.POLLIN)
            finish()

        runtime.finish = control_thread_first
        super().run_with(runtime)


# Regression for a race (it hung about one stop in two under load): with a user ctrl socket, the
# context shutdown that breaks a stuck loop also ends the control thread (ContextTerminated on
# the ctrl socket it polls); DeviceRuntime.finish() then raised zmq.Again sending it the
# wake-up, skipped closing the sockets, and the context's term() hung until stop() SIGKILLed it.
def test_stuck_loop_with_a_user_ctrl_socket_stops_cleanly(zmq_ctx: zmq.Context[Any]) -> None:
    # The interleaving the subclass forces: the control thread has ended before the forwarding
    # thread finishes. Without a ctrl socket (test_a_stuck_forwarding_loop_still_stops) the
    # control thread does not see the shutdown and there is no race.
    dev = ControlThreadEndsFirst(zmq.PULL, zmq.PUSH, zmq.PUSH, zmq.PAIR)
    for role in ("in", "out", "mon", "ctrl"):
        getattr(dev, f"bind_{role}")("tcp://127.0.0.1:*")
    dev.start()
    try:
        push, pull = connect_pipe(zmq_ctx, dev)
        push.send(b"stuck on the monitor")
        assert_quiet(pull)
    finally:
        dev.stop(timeout=3)  # ControlTimeout (and SIGKILL) if the control path is broken
    assert dev.exitcode == 0


# -- pause / resume ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ProcessDevice, ThreadProxy, ProcessProxySteerable], ids=lambda c: c.__name__)
def test_pause_stops_traffic_and_resume_restarts_it(cls: type[Any], short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    with pipeline(cls, zmq_ctx, short_tmp) as (dev, push, pull):
        push.send(b"before")
        assert recv_within(pull) == [b"before"]
        dev.pause()
        assert dev.info()["paused"] is True
        push.send(b"while paused")
        assert_quiet(pull)
        dev.pause()  # twice is still paused, whatever libzmq's commands do
        assert_quiet(pull)
        # The counters answer while paused: the message waits, unread, in the in socket.
        assert dev.stats().front_msgs_in == 1
        dev.resume()
        assert dev.info()["paused"] is False
        assert recv_within(pull) == [b"while paused"]
        dev.resume()  # twice is still running
        push.send(b"after")
        assert recv_within(pull) == [b"after"]
        assert dev.stats().front_msgs_in == 3


def test_stop_while_paused(short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    with pipeline(ProcessProxy, zmq_ctx, short_tmp) as (dev, push, pull):
        dev.pause()
        push.send(b"never forwarded")
        assert_quiet(pull)
    assert dev.exitcode == 0


def test_pause_and_resume_answer_with_the_devices_ping_reply(short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    """A PAUSE or RESUME answers with the device's state once its loop took the command, as a
    PING reports it (the supervisor's `status` shows `paused` from it), not an echo of the
    request."""
    with pipeline(ProcessDevice, zmq_ctx, short_tmp) as (dev, push, pull):
        client = ControlClient(dev.control_endpoint)
        try:
            paused = PingReply.from_wire(client.request(Command.PAUSE, 2.0))
            assert paused is not None and (paused.paused, paused.loop, paused.pid) == (True, "running", dev.pid)
            push.send(b"while paused")
            assert_quiet(pull)
            resumed = PingReply.from_wire(client.request(Command.RESUME, 2.0))
            assert resumed is not None and (resumed.paused, resumed.loop) == (False, "running")
            assert recv_within(pull) == [b"while paused"]
        finally:
            client.close()


# -- stats and ping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls", [ProcessDevice, ThreadProxy, ThreadDevice, ProcessProxySteerable], ids=lambda c: c.__name__
)
def test_stats_count_exactly_what_was_sent(cls: type[Any], short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    with pipeline(cls, zmq_ctx, short_tmp) as (dev, push, pull):
        assert dev.stats() == DeviceStats()  # counters start at zero
        for i in range(10):
            push.send(bytes([i]) * 100)
        for i in range(10):
            assert recv_within(pull) == [bytes([i]) * 100]
        stats = dev.stats()
        assert isinstance(stats, DeviceStats)
        assert stats == DeviceStats(front_msgs_in=10, front_bytes_in=1000, back_msgs_out=10, back_bytes_out=1000)
        # Multipart: libzmq counts frames.
        for _ in range(4):
            push.send_multipart([b"a" * 10, b"b" * 20, b"c" * 30])
        for _ in range(4):
            assert recv_within(pull) == [b"a" * 10, b"b" * 20, b"c" * 30]
        stats = dev.stats()
        assert (stats.front_msgs_in, stats.front_bytes_in) == (22, 1240)
        assert (stats.back_msgs_out, stats.back_bytes_out) == (22, 1240)
        assert (stats.front_msgs_out, stats.back_msgs_in) == (0, 0)


def test_stats_count_both_directions(zmq_ctx: zmq.Context[Any]) -> None:
    dev = ThreadProxy(zmq.ROUTER, zmq.DEALER)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.bind_out("tcp://127.0.0.1:*")
    with running(dev):
        client = zmq_ctx.socket(zmq.REQ)
        client.connect(dev.endpoints["in"][0])
        worker = zmq_ctx.socket(zmq.REP)
        worker.connect(dev.endpoints["out"][0])
        client.send(b"question")
        assert recv_within(worker) == [b"question"]
        worker.send(b"answer!")
        assert recv_within(client) == [b"answer!"]
        stats = dev.stats()
    # Request: [routing id (5 bytes), empty delimiter, body]; the reply comes back the same way.
    assert (stats.front_msgs_in, stats.back_msgs_out) == (3, 3)
    assert (stats.back_msgs_in, stats.front_msgs_out) == (3, 3)
    assert stats.front_bytes_in == stats.back_bytes_out == 5 + len(b"question")
    assert stats.back_bytes_in == stats.front_bytes_out == 5 + len(b"answer!")


@pytest.mark.parametrize("cls", [ProcessDevice, ThreadProxy, ProcessMonitoredQueue], ids=lambda c: c.__name__)
def test_ping_returns_a_small_round_trip_time(cls: type[Any], short_tmp: Path) -> None:
    dev = new_device(cls)
    dev.bind_in(f"ipc://{short_tmp}/in")
    with running(dev):
        rtt = dev.ping()
        assert isinstance(rtt, float)
        assert 0 < rtt < 1.0
        assert dev.info()["pid"] == (dev.pid if cls in PROCESS_CLASSES else os.getpid())


# -- the user's own ctrl socket of a ProxySteerable --------------------------------------------


@pytest.mark.parametrize(("ctrl_type", "peer_type"), [(zmq.PAIR, zmq.PAIR), (zmq.REP, zmq.REQ)], ids=["PAIR", "REP"])
@pytest.mark.parametrize("cls", [ThreadProxySteerable, ProcessProxySteerable], ids=lambda c: c.__name__)
def test_user_ctrl_socket_works_as_in_pyzmq(
    cls: type[Any], ctrl_type: int, peer_type: int, zmq_ctx: zmq.Context[Any]
) -> None:
    dev = cls(zmq.PULL, zmq.PUSH, zmq.PUB, ctrl_type)
    for role in ("in", "out", "ctrl"):
        getattr(dev, f"bind_{role}")("tcp://127.0.0.1:*")
    dev.start()
    try:
        push, pull = connect_pipe(zmq_ctx, dev)
        ctrl = zmq_ctx.socket(peer_type)
        ctrl.connect(dev.endpoints["ctrl"][0])

        def command(cmd: bytes) -> list[bytes]:
            ctrl.send(cmd)
            return recv_within(ctrl)

        push.send(b"one")
        assert recv_within(pull) == [b"one"]
        frames = command(b"STATISTICS")
        assert len(frames) == 8
        assert all(len(f) == 8 for f in frames)
        counters = [struct.unpack("=Q", f)[0] for f in frames]
        assert counters[:2] == [1, 3]  # frontend: 1 message in, 3 bytes in
        assert counters[6:] == [1, 3]  # backend: 1 message out, 3 bytes out

        # libzmq's own command: on 4.3.5 RESUME is the one that pauses. Every command but
        # STATISTICS is answered with one empty frame.
        assert command(USER_PAUSE) == [b""]
        push.send(b"two")
        assert_quiet(pull)
        # procdevices' resume() resumes, whatever libzmq calls it.
        dev.resume()
        assert recv_within(pull) == [b"two"]
        dev.pause()
        push.send(b"three")
        assert_quiet(pull)
        dev.resume()
        assert recv_within(pull) == [b"three"]
        # And the user's "resume" resumes what the user paused.
        assert command(USER_PAUSE) == [b""]
        push.send(b"four")
        assert_quiet(pull)
        assert command(USER_RESUME) == [b""]
        assert recv_within(pull) == [b"four"]

        # TERMINATE over the user's ctrl socket ends the device, as it ends libzmq's proxy.
        assert command(b"TERMINATE") == [b""]
        dev.join(5)
        assert not dev.is_alive()
        if cls is ProcessProxySteerable:
            assert dev.exitcode == 0
    finally:
        dev.stop(timeout=5)


# -- setup errors are raised in the caller -------------------------------------------------------

BOTH_KINDS = [ThreadDevice, ProcessDevice]


def assert_no_worker_left(dev: Any) -> None:
    assert dev.launcher is not None
    assert not dev.launcher.is_alive()
    if isinstance(dev, ProcessDevice):
        assert dev.exitcode == 1


@pytest.mark.parametrize("role", ["in", "out"])
@pytest.mark.parametrize("cls", BOTH_KINDS, ids=lambda c: c.__name__)
def test_bind_conflict_raises_setup_error(cls: type[Any], role: str, zmq_ctx: zmq.Context[Any]) -> None:
    squatter = zmq_ctx.socket(zmq.PULL)
    port = squatter.bind_to_random_port("tcp://127.0.0.1")
    taken = f"tcp://127.0.0.1:{port}"
    dev = cls(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    free_role = "out" if role == "in" else "in"
    getattr(dev, f"bind_{free_role}")("tcp://127.0.0.1:*")
    getattr(dev, f"bind_{role}")(taken)
    with pytest.raises(DeviceSetupError) as excinfo:
        dev.start()
    error = excinfo.value
    assert error.role == role
    assert error.action.startswith("bind")
    assert error.target == taken
    assert error.address_in_use
    assert taken in str(error)
    assert "Address already in use" in str(error)
    assert str(error).startswith(f"{role} socket")
    assert_no_worker_left(dev)


@pytest.mark.parametrize("role", ["mon", "ctrl"])
def test_bind_conflict_on_mon_and_ctrl_names_the_role(role: str, zmq_ctx: zmq.Context[Any]) -> None:
    squatter = zmq_ctx.socket(zmq.PULL)
    port = squatter.bind_to_random_port("tcp://127.0.0.1")
    dev = ProcessProxySteerable(zmq.PULL, zmq.PUSH, zmq.PUB, zmq.PAIR)
    for other in ("in", "out", "mon", "ctrl"):
        address = f"tcp://127.0.0.1:{port}" if other == role else "tcp://127.0.0.1:*"
        getattr(dev, f"bind_{other}")(address)
    with pytest.raises(DeviceSetupError, match="Address already in use") as excinfo:
        dev.start()
    assert excinfo.value.role == role
    assert_no_worker_left(dev)


@pytest.mark.parametrize("action", ["bind", "connect"])
@pytest.mark.parametrize("cls", BOTH_KINDS, ids=lambda c: c.__name__)
def test_bad_endpoint_raises_with_reason(cls: type[Any], action: str) -> None:
    dev = cls(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    getattr(dev, f"{action}_out")("tcp://nonsense")
    with pytest.raises(DeviceSetupError) as excinfo:
        dev.start()
    error = excinfo.value
    assert (error.role, error.target) == ("out", "tcp://nonsense")
    assert error.action.startswith(action)
    assert error.errno == zmq.EINVAL
    assert "tcp://nonsense" in str(error)
    assert "Invalid argument" in str(error)
    assert_no_worker_left(dev)


@pytest.mark.parametrize("cls", BOTH_KINDS, ids=lambda c: c.__name__)
def test_rejected_sockopt_names_the_option(cls: type[Any]) -> None:
    dev = cls(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.setsockopt_out(zmq.SUBSCRIBE, b"topic")  # a PUSH has no subscriptions
    with pytest.raises(DeviceSetupError) as excinfo:
        dev.start()
    error = excinfo.value
    assert (error.role, error.action) == ("out", "setsockopt")
    assert "SUBSCRIBE" in str(error)
    assert "Invalid argument" in str(error)
    assert_no_worker_left(dev)


def test_setup_failure_releases_what_was_bound(zmq_ctx: zmq.Context[Any]) -> None:
    squatter = zmq_ctx.socket(zmq.PULL)
    port = squatter.bind_to_random_port("tcp://127.0.0.1")
    dev = ProcessDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    free_port = dev.bind_in_to_random_port("tcp://127.0.0.1")
    dev.bind_out(f"tcp://127.0.0.1:{port}")
    with pytest.raises(DeviceSetupError):
        dev.start()
    # The in socket had bound before the out bind failed; the device process is gone, and
    # its port with it.
    probe = zmq_ctx.socket(zmq.PULL)
    probe.bind(f"tcp://127.0.0.1:{free_port}")


# -- a device class the spawned interpreter cannot import ------------------------------------


def test_local_subclass_raises_device_start_error(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class LocalDevice(ProcessDevice):
        """Defined in a function: pickle cannot name it for a spawned interpreter."""

    # The private control directory is made with tempfile: keep it inside short_tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    dev = LocalDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    with pytest.raises(DeviceStartError, match="LocalDevice"):
        dev.start()
    assert not dev.is_alive()


# Regression: start() once made its private /tmp/pd-* directory before pickling the device and
# left it behind when pickling failed.
def test_unpicklable_device_leaves_no_control_directory(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class LocalDevice(ProcessDevice):
        pass

    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    dev = LocalDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    with pytest.raises(DeviceStartError):
        dev.start()
    assert os.listdir(short_tmp) == [], "the private control directory was left behind"


def test_class_only_in_unimportable_main_raises_device_start_error(
    helper_script: Callable[[str], str],
) -> None:
    # The helper is read from stdin: its __main__ has no file a spawned interpreter could run,
    # so the child dies before it can even report. start() must still raise.
    with open(helper_script("unimportable_main.py"), "rb") as source:
        done = subprocess.run([sys.executable, "-"], stdin=source, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    # DeviceExitedEarly: the DeviceStartError that says the process died without a report.
    assert result["error"] == "DeviceExitedEarly", result
    assert "importable" in result["message"]
    assert result["exitcode"] == 1
    assert result["control_dir_left"] is False
    assert result["alive"] == []
