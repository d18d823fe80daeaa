"""Device, ThreadDevice and ProcessDevice: pyzmq's API, with readiness and a control socket.

Drop-in for :mod:`zmq.devices.basedevice`: same constructors, methods and attributes. What
changes (see docs/devices.md):

- ``start()`` of a background device returns once its sockets are bound and connected, and
  raises :class:`~procdevices.errors.DeviceSetupError` in the caller when setup fails.
- Process devices always use multiprocessing's *spawn* method and a fresh ``zmq.Context``.
- Every device has a dedicated control socket: ``stop()``, ``pause()``, ``resume()``,
  ``stats()``, ``ping()``, ``info()``.
- A process device stops itself when its parent dies, even by SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import wait as wait_for
from typing import Any

import zmq
from zmq import ENOTSOCK, ETERM, PUSH, QUEUE, ZMQBindError, ZMQError

from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command, DeviceStats
from procdevices.devices import launch
from procdevices.devices import runtime as rt
from procdevices.errors import (
    ControlTimeout,
    DeviceError,
    DeviceNotRunning,
    DeviceStartError,
)

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]

# How many times _reserve_random_port draws again when it draws a port this device already
# reserved (the same bound as pyzmq's).
_RESERVE_DRAWS = 5


def _uses_proxy_control(run_device: Callable[..., None]) -> Callable[..., None]:
    """Marks a run_device that forwards with zmq_proxy_steerable on the runtime's control
    socket, so the control loop may steer it (pause, resume, stats, a probing ping)."""
    run_device._procdevices_steerable = True  # type: ignore[attr-defined]
    return run_device


class Device:
    """A 0MQ device to be run in the foreground (``start()`` blocks), as in pyzmq.

    Pass socket types, not sockets: ``Device(zmq.QUEUE, zmq.ROUTER, zmq.DEALER)``. Sockets
    are built in the thread or process that runs the device. ``out_type < 0`` means one
    socket that is proxied to itself.
    """

    context_factory: Callable[[], Context] = zmq.Context.instance

    daemon: bool
    done: bool
    device_type: int
    in_type: int
    out_type: int
    control_endpoint: str | None

    def __init__(self, device_type: int = QUEUE, in_type: int | None = None, out_type: int | None = None) -> None:
        self.device_type = device_type
        if in_type is None:
            raise TypeError("in_type must be specified")
        if out_type is None:
            raise TypeError("out_type must be specified")
        self.in_type = in_type
        self.out_type = out_type
        self._in_binds: list[str] = []
        self._in_connects: list[str] = []
        self._in_sockopts: list[tuple[int, Any]] = []
        self._out_binds: list[str] = []
        self._out_connects: list[str] = []
        self._out_sockopts: list[tuple[int, Any]] = []
        self._random_addrs: list[str] = []
        self.daemon = True
        self.done = False
        self._sockets: list[Socket] = []
        # Where the control socket binds; chosen at start when left None.
        self.control_endpoint = None
        self._runtime: rt.DeviceRuntime | None = None
        self._ready: rt.ReadyInfo | None = None
        self._client: ControlClient | None = None

    # -- recording socket setup (pyzmq API) -------------------------------------------------
    def bind_in(self, addr: str) -> None:
        """Enqueue ZMQ address for binding on in_socket."""
        self._in_binds.append(addr)

    def bind_in_to_random_port(self, addr: str, *args: int, **kwargs: int) -> int:
        """Reserve a random port on ``addr`` and enqueue it for binding on in_socket.

        Takes ``min_port``, ``max_port`` (exclusive) and ``max_tries`` like
        ``Socket.bind_to_random_port``; raises ``zmq.ZMQBindError`` when none is free.
        """
        port = self._reserve_random_port(addr, *args, **kwargs)
        self.bind_in(f"{addr}:{port}")
        return port

    def connect_in(self, addr: str) -> None:
        """Enqueue ZMQ address for connecting on in_socket."""
        self._in_connects.append(addr)

    def setsockopt_in(self, opt: int, value: Any) -> None:
        """Enqueue setsockopt(opt, value) for in_socket."""
        self._in_sockopts.append((opt, value))

    def bind_out(self, addr: str) -> None:
        """Enqueue ZMQ address for binding on out_socket."""
        self._out_binds.append(addr)

    def bind_out_to_random_port(self, addr: str, *args: int, **kwargs: int) -> int:
        """Like :meth:`bind_in_to_random_port`, for out_socket."""
        port = self._reserve_random_port(addr, *args, **kwargs)
        self.bind_out(f"{addr}:{port}")
        return port

    def connect_out(self, addr: str) -> None:
        """Enqueue ZMQ address for connecting on out_socket."""
        self._out_connects.append(addr)

    def setsockopt_out(self, opt: int, value: Any) -> None:
        """Enqueue setsockopt(opt, value) for out_socket."""
        self._out_sockopts.append((opt, value))

    def _reserve_random_port(self, addr: str, *args: int, **kwargs: int) -> int:
        # The port is only held while this throw-away socket lives: another process may take
        # it before the device binds. Drawing again avoids handing one device the same port
        # twice.
        with zmq.Context() as ctx, ctx.socket(PUSH) as binder:
            for _ in range(_RESERVE_DRAWS):
                port = binder.bind_to_random_port(addr, *args, **kwargs)
                if f"{addr}:{port}" not in self._random_addrs:
                    break
            else:
                raise ZMQBindError("Could not reserve random port.")
        self._random_addrs.append(f"{addr}:{port}")
        return port

    # -- in the worker ----------------------------------------------------------------------
    def _setup_sockets(self) -> tuple[Any, ...]:
        ctx: Context = self.context_factory()
        self._context = ctx
        bound = self._bound
        ins = self._new_socket(ctx, "in", self.in_type)
        if self.out_type < 0:
            outs = ins
        else:
            outs = self._new_socket(ctx, "out", self.out_type)
        # Sockopts before any bind or connect (IDENTITY must be), then binds, then connects.
        rt.apply_sockopts("in", ins, self._in_sockopts)
        rt.apply_sockopts("out", outs, self._out_sockopts)
        rt.bind_all("in", ins, self._in_binds, bound("in"))
        rt.bind_all("out", outs, self._out_binds, bound("out"))
        rt.connect_all("in", ins, self._in_connects)
        rt.connect_all("out", outs, self._out_connects)
        return ins, outs

    def _new_socket(self, ctx: Context, role: str, socket_type: int) -> Socket:
        sock = rt.make_socket(ctx, role, socket_type)
        self._sockets.append(sock)
        return sock

    def _bound(self, role: str) -> list[str]:
        return self._runtime.bound(role) if self._runtime is not None else []

    @_uses_proxy_control
    def run_device(self) -> None:
        """The runner method. Do not call it directly; call ``start()``."""
        ins, outs = self._setup_sockets()
        self._forward(ins, outs, None)

    def _forward(self, ins: Socket, outs: Socket, mons: Socket | None) -> None:
        runtime = self._runtime
        control = runtime.proxy_control if runtime is not None else None
        zmq.proxy_steerable(ins, outs, mons, control)

    def _close_sockets(self) -> None:
        """Close the sockets this device created, each with its own LINGER."""
        for s in self._sockets:
            if s and not s.closed:
                s.close()

    def run(self) -> None:
        """Run the device in this thread: build sockets, serve control, forward."""
        if self._runtime is None:
            self._runtime = rt.DeviceRuntime(
                self.control_endpoint or f"inproc://procdevices-control-{uuid.uuid4().hex}",
                rt.NullReporter(),
                whole_process=False,
                private_context=False,
            )
        runtime = self._runtime
        self.control_endpoint = runtime.control_endpoint
        steerable = getattr(type(self).run_device, "_procdevices_steerable", False)
        setup = self._setup_sockets

        def setup_then_report() -> tuple[Any, ...]:
            sockets = setup()
            self._attach_user_ctrl(runtime)
            runtime.sockets_built(self._context, steerable, self._describe)
            return sockets

        # Readiness is reported when the outermost _setup_sockets returns, so a subclass
        # whose run_device calls _setup_sockets itself is reported ready too.
        self._setup_sockets = setup_then_report  # type: ignore[method-assign]
        try:
            self.run_device()
        except ZMQError as e:
            if e.errno not in {ETERM, ENOTSOCK}:
                raise
        finally:
            del self._setup_sockets
            self.done = True
            runtime.finish()
            self._close_sockets()

    def _attach_user_ctrl(self, runtime: rt.DeviceRuntime) -> None:
        """Hook for ProxySteerable: hand the user's ctrl socket to the control loop."""

    def _describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "class": type(self).__name__,
            "in_type": self.in_type,
            "out_type": self.out_type,
            "endpoints": self._runtime.endpoints if self._runtime is not None else {},
        }

    def start(self) -> None:
        """Start the device. Override me in subclass for other launchers."""
        return self.run()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the device to finish, like Thread.join."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.001)

    # -- control ------------------------------------------------------------------------------
    @property
    def endpoints(self) -> dict[str, list[str]]:
        """The endpoints each socket role actually bound (a ``*`` port resolved)."""
        if self._ready is not None:
            return self._ready.endpoints
        return self._runtime.endpoints if self._runtime is not None else {}

    def _control(self) -> ControlClient:
        if self._client is None:
            if self.control_endpoint is None:
                raise DeviceNotRunning(f"{type(self).__name__} has not been started")
            self._client = ControlClient(self.control_endpoint, self._client_context())
        return self._client

    def _client_context(self) -> Context | None:
        # An inproc control socket is only reachable from the runtime's own context.
        return self._runtime.control_ctx if self._runtime is not None else None

    def ping(self, timeout: float = 1.0) -> float:
        """Round-trip time, in seconds, of a probe through the control socket into the
        forwarding loop. Raises ControlTimeout when the loop does not answer in time."""
        started = time.perf_counter()
        self._control().request(Command.PING, timeout)
        return time.perf_counter() - started

    def stats(self, timeout: float = 2.0) -> DeviceStats:
        """Message and byte counters of the forwarding loop since it started."""
        return DeviceStats(**self._control().request(Command.STATS, timeout))

    def pause(self, timeout: float = 2.0) -> None:
        """Stop forwarding; messages wait in the sockets' queues (up to their HWM)."""
        self._control().request(Command.PAUSE, timeout)

    def resume(self, timeout: float = 2.0) -> None:
        """Forward again after :meth:`pause`."""
        self._control().request(Command.RESUME, timeout)

    def info(self, timeout: float = 2.0) -> dict[str, Any]:
        result: dict[str, Any] = self._control().request(Command.INFO, timeout)
        return result

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the device to stop through its control socket and wait until it has."""
        deadline = time.monotonic() + timeout
        if not self.done:
            self._control().request(Command.STOP, timeout)
        self.join(max(0.0, deadline - time.monotonic()))
        if not self.done:
            raise ControlTimeout(f"{type(self).__name__} did not stop within {timeout:.3g}s")
        self._close_client()
        if self._runtime is not None and self._runtime.control_ctx is not None:
            self._runtime.control_ctx.term()

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __getstate__(self) -> dict[str, Any]:
        # What crosses to a spawned worker is the recorded setup, never live state.
        state = self.__dict__.copy()
        for runtime_only in ("launcher", "_runtime", "_ready", "_client", "_context", "_reporter", "_conn"):
            state.pop(runtime_only, None)
        state["_sockets"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime = None
        self._ready = None
        self._client = None


class BackgroundDevice(Device):
    """Base class for launching Devices in background processes and threads."""

    launcher: Any = None
    _launch_class: Any = None
    start_timeout: float = 30.0
    """Seconds ``start()`` waits for the device's sockets to be ready."""

    def start(self) -> None:
        raise NotImplementedError

    def join(self, timeout: float | None = None) -> None:
        if self.launcher is None:
            raise DeviceNotRunning(f"{type(self).__name__} has not been started")
        self.launcher.join(timeout=timeout)
        if not self.launcher.is_alive():
            self.done = True

    def is_alive(self) -> bool:
        return self.launcher is not None and bool(self.launcher.is_alive())


class ThreadDevice(BackgroundDevice):
    """A Device that will be run in a background Thread. See Device for details."""

    _launch_class = threading.Thread

    def start(self) -> None:
        reporter = rt.EventReporter()
        runtime = rt.DeviceRuntime(
            self.control_endpoint or f"inproc://procdevices-control-{uuid.uuid4().hex}",
            reporter,
            whole_process=False,
            private_context=self._owns_context(),
        )
        self.control_endpoint = runtime.control_endpoint
        self.done = False
        self.launcher = self._launch_class(
            target=_thread_main, args=(self, runtime), name=f"procdevices-{type(self).__name__}"
        )
        self.launcher.daemon = self.daemon
        self.launcher.start()
        if not reporter.event.wait(self.start_timeout):
            raise DeviceStartError(f"{type(self).__name__} was not ready within {self.start_timeout}s")
        if reporter.error is not None:
            self.launcher.join()
            raise reporter.error
        self._ready = reporter.info

    def _owns_context(self) -> bool:
        # Stopping a loop that has no control socket means shutting its context down,
        # which is only ours to do when nobody else uses it.
        return type(self).context_factory != zmq.Context.instance


def _thread_main(device: Device, runtime: rt.DeviceRuntime) -> None:
    rt.run_in_worker(device, runtime)


class ProcessDevice(BackgroundDevice):
    """A Device run in a background process started with the *spawn* method, so it never
    inherits the parent's threads, sockets or context. See Device for details."""

    _launch_class = multiprocessing.get_context("spawn").Process
    context_factory = zmq.Context

    def start(self) -> None:
        pickled = launch.pickle_device(self)
        cleanup_dir = None
        if self.control_endpoint is None or getattr(self, "_cleanup_dir", None):
            # A private directory, new for every run: only this user reaches the control
            # socket, and the directory goes with the run.
            cleanup_dir = tempfile.mkdtemp(prefix="pd-")
            self.control_endpoint = f"ipc://{cleanup_dir}/ctl"
        self._cleanup_dir = cleanup_dir
        self.done = False
        pending = launch.spawn_device(
            pickled,
            self.control_endpoint,
            label=type(self).__name__,
            daemon=self.daemon,
            cleanup_dir=cleanup_dir,
            process_class=self._launch_class,
        )
        self.launcher = pending.process
        try:
            if not wait_for(pending.waitables(), self.start_timeout):
                self._kill()
                raise DeviceStartError(
                    f"{type(self).__name__} was not ready within {self.start_timeout}s; killed it"
                )
            try:
                self._ready = pending.result()
            except DeviceError:
                self.launcher.join(5.0)
                self._cleanup()
                raise
        finally:
            pending.conn.close()

    def _client_context(self) -> Context | None:
        return None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop through the control socket; exit code 0. A device that has not exited
        within ``timeout`` is killed and ControlTimeout is raised."""
        if self.launcher is None:
            raise DeviceNotRunning(f"{type(self).__name__} has not been started")
        deadline = time.monotonic() + timeout
        try:
            if self.launcher.is_alive():
                self._control().request(Command.STOP, timeout)
            self.launcher.join(max(0.0, deadline - time.monotonic()))
        except ControlTimeout:
            pass
        finally:
            self._close_client()
        if self.launcher.is_alive():
            self._kill()
            raise ControlTimeout(f"{type(self).__name__} did not stop within {timeout:.3g}s; killed it")
        self.done = True
        self._cleanup()

    @property
    def pid(self) -> int | None:
        return self.launcher.pid if self.launcher is not None else None

    @property
    def exitcode(self) -> int | None:
        return self.launcher.exitcode if self.launcher is not None else None

    def _kill(self) -> None:
        self.launcher.kill()
        self.launcher.join(5.0)
        self._cleanup()

    def _cleanup(self) -> None:
        cleanup_dir: str | None = getattr(self, "_cleanup_dir", None)
        if cleanup_dir:
            shutil.rmtree(cleanup_dir, ignore_errors=True)


__all__ = ["Device", "ThreadDevice", "ProcessDevice"]
