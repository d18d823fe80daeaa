"""procdevices is a drop-in for pyzmq's zmq.devices: same names, constructors and attributes,
and every device class forwards like pyzmq's (in the spirit of pyzmq's test_device.py,
test_proxy_steerable.py and test_monitoredqueue.py)."""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.devices
from support.devices import health_when, recv_within

import procdevices
from procdevices import (
    Device,
    MonitoredQueue,
    ProcessDevice,
    ProcessMonitoredQueue,
    ProcessProxy,
    ProcessProxySteerable,
    Proxy,
    ProxySteerable,
    ThreadDevice,
    ThreadMonitoredQueue,
    ThreadProxy,
    ThreadProxySteerable,
)

pytestmark = pytest.mark.timeout(30)


class OwnContextThreadMonitoredQueue(ThreadMonitoredQueue):
    """libzmq's monitored_queue has no control socket: a thread one can only be stopped when it
    has a context of its own (the default, Context.instance, is shared with the program)."""

    context_factory = zmq.Context


DEVICE_CLASSES = [ThreadDevice, ProcessDevice]
PROXY_CLASSES = [ThreadProxy, ProcessProxy, ThreadProxySteerable, ProcessProxySteerable]
QUEUE_CLASSES = [OwnContextThreadMonitoredQueue, ProcessMonitoredQueue]
ALL_BACKGROUND = DEVICE_CLASSES + PROXY_CLASSES + QUEUE_CLASSES


# -- small helpers -----------------------------------------------------------------------------


def new_device(cls: type[Device], in_type: int = zmq.PULL, out_type: int = zmq.PUSH) -> Any:
    if issubclass(cls, (Proxy, ThreadProxy, ProcessProxy)):
        return cls(in_type, out_type)
    return cls(zmq.QUEUE, in_type, out_type)


@contextlib.contextmanager
def running(dev: Any) -> Iterator[Any]:
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


def address(transport: str, directory: Path, role: str) -> str:
    return "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{directory}/{role}"


# -- API compatibility -------------------------------------------------------------------------


def test_every_public_name_of_zmq_devices_exists() -> None:
    for name in zmq.devices.__all__:
        assert hasattr(procdevices, name), name
        assert name in procdevices.__all__, name


# Regression: procdevices.proxy was once the submodule procdevices/devices/proxy.py (importing
# it rebinds the package attribute), so procdevices.proxy(a, b) raised "'module' object is not
# callable". The submodules now carry pyzmq's names (proxydevice, ...).
@pytest.mark.parametrize(
    ("name", "pyzmq_function"),
    [
        ("device", zmq.device),
        ("proxy", zmq.proxy),
        ("proxy_steerable", zmq.proxy_steerable),
        ("monitored_queue", zmq.devices.monitored_queue),
    ],
)
def test_functions_are_pyzmqs(name: str, pyzmq_function: Any) -> None:
    assert name in procdevices.__all__
    assert getattr(procdevices, name) is pyzmq_function
    assert getattr(procdevices.devices, name) is pyzmq_function


@pytest.mark.parametrize("name", [n for n in zmq.devices.__all__ if inspect.isclass(getattr(zmq.devices, n))])
def test_public_methods_match_pyzmq(name: str) -> None:
    theirs, ours = getattr(zmq.devices, name), getattr(procdevices, name)
    for attr in dir(theirs):
        if attr.startswith("_") and attr != "__init__":
            continue
        assert hasattr(ours, attr), f"{name}.{attr} is missing"
        their_attr, our_attr = getattr(theirs, attr), getattr(ours, attr)
        if not inspect.isfunction(their_attr):
            continue
        their_sig, our_sig = inspect.signature(their_attr), inspect.signature(our_attr)
        assert list(our_sig.parameters) == list(their_sig.parameters), f"{name}.{attr}"
        assert [p.default for p in our_sig.parameters.values()] == [p.default for p in their_sig.parameters.values()], (
            f"{name}.{attr}"
        )


def test_class_hierarchy_mirrors_pyzmq() -> None:
    for kind in ("Proxy", "ProxySteerable", "MonitoredQueue"):
        assert issubclass(getattr(procdevices, kind), Device)
        assert issubclass(getattr(procdevices, "Thread" + kind), ThreadDevice)
        assert issubclass(getattr(procdevices, "Process" + kind), ProcessDevice)
    assert issubclass(ProxySteerable, Proxy)
    assert issubclass(MonitoredQueue, Proxy)


def test_context_factory() -> None:
    assert Device.context_factory == zmq.Context.instance
    assert ThreadDevice.context_factory == zmq.Context.instance
    assert ThreadProxy.context_factory == zmq.Context.instance
    for cls in (ProcessDevice, ProcessProxy, ProcessProxySteerable, ProcessMonitoredQueue):
        assert cls.context_factory is zmq.Context, cls


def test_device_attributes() -> None:
    for cls in (Device, ThreadDevice, ProcessDevice):
        dev = cls(zmq.FORWARDER, zmq.SUB, zmq.PUB)
        assert (dev.device_type, dev.in_type, dev.out_type) == (zmq.FORWARDER, zmq.SUB, zmq.PUB)
        assert dev.daemon is True
        assert dev.done is False
    assert Device(in_type=zmq.ROUTER, out_type=zmq.DEALER).device_type == zmq.QUEUE


def test_proxy_attributes() -> None:
    for cls in (Proxy, ThreadProxy, ProcessProxy):
        dev = cls(zmq.ROUTER, zmq.DEALER)
        assert (dev.in_type, dev.out_type, dev.mon_type) == (zmq.ROUTER, zmq.DEALER, zmq.PUB)
        assert dev.daemon is True
        assert cls(zmq.ROUTER, zmq.DEALER, zmq.PUSH).mon_type == zmq.PUSH
    for cls in (ProxySteerable, ThreadProxySteerable, ProcessProxySteerable):
        dev = cls(zmq.ROUTER, zmq.DEALER)
        assert (dev.mon_type, dev.ctrl_type) == (zmq.PUB, None)
        dev = cls(zmq.ROUTER, zmq.DEALER, zmq.PAIR, zmq.REP)
        assert (dev.mon_type, dev.ctrl_type) == (zmq.PAIR, zmq.REP)


def test_monitored_queue_attributes() -> None:
    for cls in (MonitoredQueue, ThreadMonitoredQueue, ProcessMonitoredQueue):
        dev = cls(zmq.ROUTER, zmq.DEALER)
        assert dev.mon_type == zmq.PUB
        assert (dev._in_prefix, dev._out_prefix) == (b"in", b"out")
        dev = cls(zmq.ROUTER, zmq.DEALER, zmq.PUB, b"A", b"B")
        assert (dev._in_prefix, dev._out_prefix) == (b"A", b"B")


def test_socket_types_are_required() -> None:
    with pytest.raises(TypeError, match="in_type"):
        Device(zmq.QUEUE)
    with pytest.raises(TypeError, match="out_type"):
        Device(zmq.QUEUE, zmq.PULL)
    for cls in (ThreadDevice, ProcessDevice):
        with pytest.raises(TypeError, match="out_type"):
            cls(zmq.QUEUE, zmq.PULL, None)
    missing: Any = None
    for proxy_cls in (Proxy, ThreadProxy, ProcessProxy, ProcessProxySteerable, ThreadMonitoredQueue):
        with pytest.raises(TypeError, match="in_type"):
            proxy_cls(missing, zmq.PUSH)
        with pytest.raises(TypeError, match="out_type"):
            proxy_cls(zmq.PULL, missing)


@pytest.mark.parametrize("cls", [MonitoredQueue, ThreadMonitoredQueue, ProcessMonitoredQueue])
def test_monitored_queue_prefix_must_be_bytes(cls: type[Any]) -> None:
    with pytest.raises(TypeError, match="in_prefix"):
        cls(zmq.PULL, zmq.PUSH, zmq.PUB, "in")
    with pytest.raises(TypeError, match="out_prefix"):
        cls(zmq.PULL, zmq.PUSH, zmq.PUB, b"in", "out")


# -- forwarding --------------------------------------------------------------------------------


def _subscribe(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(endpoint)
    return sub


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
@pytest.mark.parametrize("cls", ALL_BACKGROUND, ids=lambda c: c.__name__)
def test_forwards(cls: type[Any], transport: str, short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    dev = new_device(cls)
    dev.bind_in(address(transport, short_tmp, "in"))
    dev.bind_out(address(transport, short_tmp, "out"))
    monitored = hasattr(dev, "bind_mon")
    if monitored:
        dev.bind_mon(address(transport, short_tmp, "mon"))
    with running(dev):
        endpoints = dev.endpoints
        assert all(e.startswith(f"{transport}://") for role in endpoints for e in endpoints[role])
        push = zmq_ctx.socket(zmq.PUSH)
        push.connect(endpoints["in"][0])
        pull = zmq_ctx.socket(zmq.PULL)
        pull.connect(endpoints["out"][0])
        push.send_multipart([b"hello", b"world"])
        assert recv_within(pull) == [b"hello", b"world"]
        if not monitored:
            return
        # The monitor copy: a SUB misses what is published before its subscription arrives,
        # so send until one copy shows up (each message must still arrive at the back).
        prefix = [b"in"] if cls in QUEUE_CLASSES else []
        sub = _subscribe(zmq_ctx, endpoints["mon"][0])
        sent: list[bytes] = []
        deadline = time.monotonic() + 5
        while True:
            body = f"msg-{len(sent)}".encode()
            push.send(body)
            sent.append(body)
            assert recv_within(pull) == [body]
            if sub.poll(50):
                copy = sub.recv_multipart()
                break
            assert time.monotonic() < deadline, "no copy on the monitor socket"
        assert copy[:-1] == prefix
        assert copy[-1] in sent


@pytest.mark.parametrize("cls", QUEUE_CLASSES, ids=lambda c: c.__name__)
def test_monitored_queue_router_router_swaps_ids(cls: type[Any], zmq_ctx: zmq.Context[Any]) -> None:
    dev = cls(zmq.ROUTER, zmq.ROUTER, zmq.PUB, b"IN", b"OUT")
    for role in ("in", "out", "mon"):
        getattr(dev, f"bind_{role}")("tcp://127.0.0.1:*")
    with running(dev):
        sub = _subscribe(zmq_ctx, dev.endpoints["mon"][0])
        client = zmq_ctx.socket(zmq.DEALER)
        client.identity = b"client"
        client.connect(dev.endpoints["in"][0])
        worker = zmq_ctx.socket(zmq.DEALER)
        worker.identity = b"worker"
        worker.connect(dev.endpoints["out"][0])
        # A ROUTER drops what it cannot route yet: ask until the worker is known to the device.
        deadline = time.monotonic() + 5
        while True:
            client.send_multipart([b"worker", b"request"])
            if worker.poll(50):
                break
            assert time.monotonic() < deadline, "the request never reached the worker"
        assert worker.recv_multipart() == [b"client", b"request"]
        # Replies until the monitor has seen one (its subscription may still be in flight).
        deadline = time.monotonic() + 5
        while True:
            worker.send_multipart([b"client", b"reply"])
            assert recv_within(client) == [b"worker", b"reply"]
            copies = []
            while sub.poll(50):
                copies.append(sub.recv_multipart())
            if any(c[0] == b"OUT" for c in copies):
                break
            assert time.monotonic() < deadline, "no OUT copy on the monitor socket"
        out_copy = next(c for c in copies if c[0] == b"OUT")
        assert out_copy[-1] == b"reply"
        assert set(out_copy[1:3]) == {b"client", b"worker"}


# -- a single socket proxied to itself (out_type < 0) ----------------------------------------


@pytest.mark.parametrize("cls", DEVICE_CLASSES, ids=lambda c: c.__name__)
def test_rep_echo_server_bound(cls: type[Any], zmq_ctx: zmq.Context[Any]) -> None:
    dev = cls(zmq.QUEUE, zmq.REP, -1)
    dev.bind_in("tcp://127.0.0.1:*")
    with running(dev):
        req = zmq_ctx.socket(zmq.REQ)
        req.connect(dev.endpoints["in"][0])
        for body in (b"ping", b"pong"):
            req.send(body)
            assert recv_within(req) == [body]


@pytest.mark.parametrize("cls", DEVICE_CLASSES, ids=lambda c: c.__name__)
def test_rep_echo_server_connected(cls: type[Any], zmq_ctx: zmq.Context[Any]) -> None:
    req = zmq_ctx.socket(zmq.REQ)
    port = req.bind_to_random_port("tcp://127.0.0.1")
    dev = cls(zmq.QUEUE, zmq.REP, -1)
    # With out_type < 0, every *_out call applies to the one shared socket.
    dev.connect_out(f"tcp://127.0.0.1:{port}")
    with running(dev):
        # Single frames only: libzmq's proxy cannot send a part of a multipart request back
        # through a REP that has not received the last part (EFSM), in pyzmq too.
        for body in (b"one", b"two"):
            req.send(body)
            assert recv_within(req) == [body]


# -- reserving random ports ----------------------------------------------------------------------

# A wide range, so that parallel workers (and other programs) drawing from it at random
# rarely meet; pyzmq's bind_to_random_port draws again when a port is taken.
WIDE_RANGE = (20000, 30000)


def _free_port() -> int:
    """A port the kernel just chose for us and released (nobody else holds it right now)."""
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as probe:
        return probe.bind_to_random_port("tcp://127.0.0.1")


def test_bind_to_random_port_in_range() -> None:
    low, high = WIDE_RANGE
    dev = ProcessProxySteerable(zmq.PULL, zmq.PUSH, zmq.PUB, zmq.PAIR)
    ports = {
        "in": dev.bind_in_to_random_port("tcp://127.0.0.1", min_port=low, max_port=high),
        "out": dev.bind_out_to_random_port("tcp://127.0.0.1", min_port=low, max_port=high),
        "mon": dev.bind_mon_to_random_port("tcp://127.0.0.1", min_port=low, max_port=high),
        "ctrl": dev.bind_ctrl_to_random_port("tcp://127.0.0.1", low, high),
    }
    assert all(low <= p < high for p in ports.values()), ports
    assert len(set(ports.values())) == 4, "one device was given the same port twice"
    with running(dev):
        for role, port in ports.items():
            assert dev.endpoints[role] == [f"tcp://127.0.0.1:{port}"]


def test_random_port_range_exhausted() -> None:
    # A one-port range holding a port that is free: the first reservation takes it, and the
    # device remembers it, so a second must fail even though the throw-away socket released it.
    dev = ThreadDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    for _ in range(5):  # another process may take the free port first: draw another one
        port = _free_port()
        try:
            got = dev.bind_in_to_random_port("tcp://127.0.0.1", min_port=port, max_port=port + 1)
        except zmq.ZMQBindError:
            continue
        break
    else:
        pytest.fail("no free port could be reserved")
    assert got == port
    with pytest.raises(zmq.ZMQBindError):
        dev.bind_out_to_random_port("tcp://127.0.0.1", min_port=port, max_port=port + 1)
    assert dev.bind_out_to_random_port("tcp://127.0.0.1", *WIDE_RANGE) != port


# -- a foreground Device ---------------------------------------------------------------------------


def test_foreground_device_in_a_thread_stops(short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    dev = Device(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            dev.start()  # blocks until the device stops
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        push = zmq_ctx.socket(zmq.PUSH)
        push.connect(f"ipc://{short_tmp}/in")
        pull = zmq_ctx.socket(zmq.PULL)
        pull.connect(f"ipc://{short_tmp}/out")
        push.send(b"through")
        # A message through proves the device built its sockets and its control loop.
        assert recv_within(pull) == [b"through"]
        assert dev.stats().front_msgs_in == 1
    finally:
        dev.stop(timeout=5)
    thread.join(5)
    assert not thread.is_alive()
    assert errors == []
    assert dev.done is True


# -- the device layer's structure: roles, steerability, readiness ------------------------------


@pytest.mark.parametrize(
    ("cls", "roles"),
    [(Device, ["in", "out"]), (Proxy, ["in", "out", "mon"]), (ProxySteerable, ["in", "out", "mon", "ctrl"])],
)
def test_role_methods_are_real_documented_methods(cls: type[Any], roles: list[str]) -> None:
    assert list(cls.socket_roles) == roles
    for role in roles:
        for name, params in (
            (f"bind_{role}", ["self", "addr"]),
            (f"connect_{role}", ["self", "addr"]),
            (f"setsockopt_{role}", ["self", "opt", "value"]),
            (f"bind_{role}_to_random_port", ["self", "addr", "args", "kwargs"]),
        ):
            method = getattr(cls, name)
            assert inspect.isfunction(method), name
            assert method.__name__ == name
            assert list(inspect.signature(method).parameters) == params, name
            assert method.__doc__ and f"{role}_socket" in method.__doc__, name


def test_recorded_setup_is_per_role() -> None:
    dev = ProcessProxySteerable(zmq.ROUTER, zmq.DEALER, zmq.PUB, zmq.PAIR)
    dev.bind_in("tcp://127.0.0.1:1")
    dev.connect_out("tcp://127.0.0.1:2")
    dev.setsockopt_mon(zmq.SNDHWM, 5)
    dev.bind_ctrl("ipc:///x")
    assert dev._setup_of("in").binds == ["tcp://127.0.0.1:1"]
    assert dev._setup_of("out").connects == ["tcp://127.0.0.1:2"]
    assert dev._setup_of("mon").sockopts == [(zmq.SNDHWM, 5)]
    assert dev._setup_of("ctrl").binds == ["ipc:///x"]
    assert dev._setup_of("in").connects == [] and dev._setup_of("out").binds == []


class OwnLoopThreadDevice(ThreadDevice):
    """Runs a loop of its own: the control loop must not try to steer it. A context of its own,
    so that stop() may shut it down."""

    context_factory = zmq.Context

    def run_device(self) -> None:
        ins, outs = self._setup_sockets()
        zmq.proxy(ins, outs)


class DeclaredSteerableThreadDevice(ThreadDevice):
    steerable = True

    def run_device(self) -> None:
        ins, outs = self._setup_sockets()
        self._forward(ins, outs, None)


def test_steerability_is_declared_on_the_class() -> None:
    assert Device.steerable and ProcessProxySteerable.steerable
    for cls in (MonitoredQueue, ThreadMonitoredQueue, ProcessMonitoredQueue):
        assert cls.steerable is True, cls
    assert OwnLoopThreadDevice.steerable is False
    assert DeclaredSteerableThreadDevice.steerable is True


class ExtraSetupThreadDevice(ThreadDevice):
    """Overrides _setup_sockets pyzmq-style; readiness must wait for the override to finish."""

    built_extra = False

    def _setup_sockets(self) -> tuple[Any, ...]:
        sockets = super()._setup_sockets()
        self.built_extra = True
        return sockets


def test_ready_only_after_the_outermost_setup_returns(zmq_ctx: zmq.Context[Any]) -> None:
    dev = ExtraSetupThreadDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.bind_out("tcp://127.0.0.1:*")
    with running(dev):
        assert dev.built_extra is True
        assert "_setup_sockets" not in vars(dev), "a bound method was replaced on the instance"
        health_when(dev, "running")
        push = zmq_ctx.socket(zmq.PUSH)
        push.connect(dev.endpoints["in"][0])
        pull = zmq_ctx.socket(zmq.PULL)
        pull.connect(dev.endpoints["out"][0])
        push.send(b"x")
        assert recv_within(pull) == [b"x"]


def test_a_device_with_its_own_loop_answers_ping_and_refuses_pause(zmq_ctx: zmq.Context[Any]) -> None:
    dev = OwnLoopThreadDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    with running(dev):
        health = dev.health()
        assert (health["loop"], health["probed"]) == ("running", False)
        with pytest.raises(procdevices.UnsupportedOperation):
            dev.pause()
