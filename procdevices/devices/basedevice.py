"""Device, ThreadDevice and ProcessDevice: pyzmq's API, with readiness and a control socket.

Drop-in for :mod:`zmq.devices.basedevice`: same constructors, methods and attributes. What
changes (see docs/devices.md):

- ``start()`` of a background device returns once its sockets are bound and connected, and
  raises :class:`~procdevices.errors.DeviceSetupError` in the caller when setup fails.
- Process devices always use multiprocessing's *spawn* method and a fresh ``zmq.Context``.
- Every device has a dedicated control socket: ``stop()``, ``pause()``, ``resume()``,
  ``stats()``, ``ping()``, ``info()``.
- A process device stops itself when its parent dies, even by SIGKILL.

The class composes one module per job: the recorded setup (roles.py: ``RecordedSetup`` and
pyzmq's recording methods), the graceful stop (drain.py: ``GracefulStop``), the tap
(tapsocket.py: ``Tapped``), the caller's side of the control socket (remote.py, loaded only
by callers), and the worker's runtime (runtime.py). What stays here is pyzmq's API, the build
of the sockets in the worker and the launch of a background device.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import zmq
from zmq import ENOTSOCK, ETERM, QUEUE, ZMQError

from procdevices.control.steering import PAUSE, RESUME, PauseCommands
from procdevices.devices import cloop, contexts, drain
from procdevices.devices import runtime as rt
from procdevices.devices.drain import GracefulStop
from procdevices.devices.roles import RecordedSetup, role_methods
from procdevices.devices.tapsocket import Tapped
from procdevices.errors import ControlTimeout, DeviceError, DeviceNotRunning, DeviceStartError

if TYPE_CHECKING:
    from procdevices.control.protocol import DeviceStats
    from procdevices.devices.remote import DeviceRemote

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]

# Socket types whose send blocks at the high-water mark (the others drop, or cannot send).
_BLOCKING_SEND = frozenset({zmq.PUSH, zmq.DEALER, zmq.PAIR, zmq.REQ})


def _reports_ready(setup: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], tuple[Any, ...]]:
    """Readiness is reported when the outermost ``_setup_sockets`` returns: a subclass may
    override it (pyzmq style, calling super() and adding sockets) or call it from its own
    ``run_device``, and the device is still ready only once all its sockets are built.
    Applied at class creation (see ``Device.__init_subclass__``), never to a live object."""

    @functools.wraps(setup)
    def setup_then_report(self: Device) -> tuple[Any, ...]:
        self._setup_depth += 1
        try:
            sockets = setup(self)
        finally:
            self._setup_depth -= 1
        if self._setup_depth == 0:
            self._sockets_ready()
        return sockets

    setup_then_report._reports_ready = True  # type: ignore[attr-defined]
    return setup_then_report


class Device(RecordedSetup, GracefulStop, Tapped):
    """A 0MQ device to be run in the foreground (``start()`` blocks), as in pyzmq.

    Pass socket types, not sockets: ``Device(zmq.QUEUE, zmq.ROUTER, zmq.DEALER)``. Sockets
    are built in the thread or process that runs the device. ``out_type < 0`` means one
    socket that is proxied to itself.

    Subclassing: the socket roles of a class are ``socket_roles`` (each with pyzmq's four
    recording methods, made by :func:`~procdevices.devices.roles.role_methods`).
    ``steerable`` says whether ``run_device`` forwards with the steerable-proxy protocol (the
    C loop, cloop.py, or ``zmq.proxy_steerable``) on the runtime's control socket (through ``_forward``), which is what lets the control loop
    pause, resume, count and probe the loop. A subclass that defines its own ``run_device``
    is taken as not steerable unless it declares ``steerable = True`` itself.
    """

    context_factory: Callable[[], Context] = zmq.Context.instance
    steerable: ClassVar[bool] = True
    socket_roles: ClassVar[tuple[str, ...]] = ("in", "out")

    daemon: bool
    done: bool
    device_type: int
    in_type: int
    out_type: int
    control_endpoint: str | None

    bind_in, bind_in_to_random_port, connect_in, setsockopt_in = role_methods("in")
    bind_out, bind_out_to_random_port, connect_out, setsockopt_out = role_methods("out")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        setup = cls.__dict__.get("_setup_sockets")
        if setup is not None and not getattr(setup, "_reports_ready", False):
            cls._setup_sockets = _reports_ready(setup)  # type: ignore[method-assign]
        if "run_device" in cls.__dict__ and "steerable" not in cls.__dict__:
            cls.steerable = False

    def __init__(self, device_type: int = QUEUE, in_type: int | None = None, out_type: int | None = None) -> None:
        self.device_type = device_type
        if in_type is None:
            raise TypeError("in_type must be specified")
        if out_type is None:
            raise TypeError("out_type must be specified")
        self.in_type = in_type
        self.out_type = out_type
        self._start_recording()
        self.daemon = True
        self.done = False
        self._sockets: list[Socket] = []
        self._role_sockets: dict[str, Socket] = {}
        self._setup_depth = 0
        self._stop_deadline = None
        # Where the control socket binds; chosen at start when left None.
        self.control_endpoint = None
        self._runtime: rt.DeviceRuntime | None = None
        self._ready: rt.ReadyInfo | None = None
        self._remote: DeviceRemote | None = None

    # -- in the worker ----------------------------------------------------------------------
    @_reports_ready
    def _setup_sockets(self) -> tuple[Any, ...]:
        """Build every socket of ``socket_roles``, in pyzmq's order: in and out (sockopts of
        both, then binds, then connects), then each further role. A role whose type is None
        (ProxySteerable without ctrl) gives None. Returns the sockets in role order."""
        factory = self.context_factory
        ctx: Context = factory()
        if self._runtime is not None:
            # Before the context is reachable as _context: its term() is made once-only there.
            self._runtime.adopt_context(ctx, made_for_device=contexts.makes_own_context(factory))
        self._context = ctx
        ins = self._new_socket(ctx, "in", self.in_type)
        outs = ins if self.out_type < 0 else self._new_socket(ctx, "out", self.out_type)
        pair = (("in", ins), ("out", outs))
        for role, sock in pair:
            rt.apply_sockopts(role, sock, self._setup_of(role).sockopts)
            self._bound_linger(sock)
        for role, sock in pair:
            rt.bind_all(role, sock, self._setup_of(role).binds, self._bound(role))
        for role, sock in pair:
            rt.connect_all(role, sock, self._setup_of(role).connects)
        self._role_sockets = {"in": ins, "out": outs}
        sockets: list[Socket | None] = [ins, outs]
        for role in self.socket_roles[2:]:
            socket_type: int | None = getattr(self, f"{role}_type")
            if socket_type is None:
                sockets.append(None)
                continue
            sock = self._new_socket(ctx, role, socket_type)
            setup = self._setup_of(role)
            rt.apply_sockopts(role, sock, setup.sockopts)
            self._bound_linger(sock)
            rt.bind_all(role, sock, setup.binds, self._bound(role))
            rt.connect_all(role, sock, setup.connects)
            self._role_sockets[role] = sock
            sockets.append(sock)
        return tuple(sockets)

    def _new_socket(self, ctx: Context, role: str, socket_type: int) -> Socket:
        sock = rt.make_socket(ctx, role, socket_type)
        self._sockets.append(sock)
        return sock

    def _bound(self, role: str) -> list[str]:
        return self._runtime.bound(role) if self._runtime is not None else []

    def _sockets_ready(self) -> None:
        runtime = self._runtime
        if runtime is not None:
            runtime.sockets_built(
                self._context,
                type(self).steerable,
                self._describe,
                self._blocking_side(),
                pause_commands=self._pause_commands(),
                user_ctrl=self._role_sockets.get("ctrl"),  # ProxySteerable's, served by the loop
                tap_endpoint=self._open_tap(runtime.control_endpoint, self._context),
                capture_switch=self._tap_switch,
            )

    def _pause_commands(self) -> PauseCommands | None:
        """The commands that pause and resume this device's loop; None: libzmq's proxy, whose
        PAUSE and RESUME depend on the libzmq version (measured when first needed)."""
        if self._loop() == "c":
            return PauseCommands(pause=PAUSE, resume=RESUME)  # our loop: never swapped
        return None

    def _loop(self) -> Literal["c", "libzmq"]:
        """The loop that forwards (cloop.py): the C loop where it is available, except for a
        device whose user has a ctrl socket of their own (ProxySteerable): that socket talks
        to libzmq's proxy verbatim, PAUSE and RESUME as the libzmq version has them, as it
        would under pyzmq."""
        return "libzmq" if "ctrl" in self._role_sockets else cloop.proxy_loop()

    def _blocking_side(self) -> str | None:
        """The one socket whose send can block libzmq's loop, if only one can (for PING's
        ``blocked_side``): a send blocks on PUSH, DEALER, PAIR and REQ; the loop sends through
        in only what came from out, and the reverse."""
        candidates = []
        if self.out_type < 0:
            if self.in_type in _BLOCKING_SEND:
                candidates.append("in")
        else:
            if self.in_type in _BLOCKING_SEND and drain.receives(self.out_type):
                candidates.append("in")
            if self.out_type in _BLOCKING_SEND and drain.receives(self.in_type):
                candidates.append("out")
        mon_type: int | None = getattr(self, "mon_type", None)
        if "mon" in self._role_sockets and mon_type in _BLOCKING_SEND:
            candidates.append("mon")
        return candidates[0] if len(candidates) == 1 else None

    def _two_way(self) -> bool:
        """Whether anything ever goes back through the in socket."""
        return self.out_type < 0 or (drain.receives(self.out_type) and drain.sends(self.in_type))

    def run_device(self) -> None:
        """The runner method. Do not call it directly; call ``start()``."""
        sockets = self._setup_sockets()
        self._forward(sockets[0], sockets[1], sockets[2] if len(sockets) > 2 else None)

    def _steerable(self) -> bool:
        return type(self).steerable

    def _forward(self, ins: Socket, outs: Socket, mons: Socket | None) -> None:
        runtime = self._runtime
        control = runtime.proxy_control if runtime is not None else None
        switch = self._tap_switch
        if mons is not None or switch is None or control is None:
            self._loop_once(ins, outs, mons if mons is not None else self._tap_capture, control)
            return
        # The tap's capture only while a reader is connected (steering.CaptureSwitch): each
        # switch leaves the proxy with TERMINATE and enters it again on the same sockets,
        # whose queued messages wait meanwhile; any other TERMINATE (a stop) ends the loop.
        switched = False
        while True:
            capture = self._tap_capture if switch.wanted else None
            switch.entering(capture is not None, switched)
            self._loop_once(ins, outs, capture, control)
            switched = switch.switch_asked()
            if not switched:
                return

    def _loop_once(self, ins: Socket, outs: Socket, capture: Socket | None, control: Socket | None) -> None:
        """Forward until TERMINATE: libzmq's steerable proxy, or the C loop with its semantics
        (cloop.py)."""
        if self._loop() == "libzmq":
            zmq.proxy_steerable(ins, outs, capture, control)
            return
        # Counters from zero at every entry, as libzmq's: a capture switch carries the totals
        # across entries itself (steering.ProxySteering.carry).
        cloop.run(ins, outs, capture, control, cloop.new_counters())

    def run_with(self, runtime: rt.DeviceRuntime) -> None:
        """Run in a device process's worker, with the runtime it made (runtime.run_in_worker):
        its control endpoint, its reporter to the parent, its parent's death sentinel."""
        self._runtime = runtime
        self.run()

    def run(self) -> None:
        """Run the device in this thread: build sockets, serve control, forward, and on a
        stop drain what is queued and close within ``stop_linger``."""
        if self._runtime is None or self._runtime.finished:
            self._runtime = rt.DeviceRuntime(
                self.control_endpoint or f"inproc://procdevices-control-{os.urandom(16).hex()}",
                rt.NullReporter(),
                whole_process=False,
            )
        runtime = self._runtime
        self.control_endpoint = runtime.control_endpoint
        self.done = False
        self._stop_deadline = None
        outcome = rt.LoopOutcome.DEAD
        try:
            self.run_device()
            outcome = rt.LoopOutcome.RETURNED
        except ZMQError as e:
            if e.errno not in {ETERM, ENOTSOCK}:
                raise
            outcome = rt.LoopOutcome.BROKEN
        finally:
            try:
                runtime.loop_ended(outcome)
                self._end_gracefully(outcome is rt.LoopOutcome.RETURNED)
            finally:
                runtime.finish()
                self._close_sockets(self._remaining_linger_ms() if outcome is not rt.LoopOutcome.DEAD else None)
                self.done = True

    def _describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "class": type(self).__name__,
            "in_type": self.in_type,
            "out_type": self.out_type,
            "endpoints": self._runtime.endpoints if self._runtime is not None else {},
            "tap": self._tap_entry(),
            "loop": self._loop() if type(self).steerable else None,
        }

    def start(self) -> None:
        """Start the device. Override me in subclass for other launchers."""
        try:
            return self.run()
        finally:
            if self._runtime is not None:
                self._runtime.terminate_context()

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

    def _control(self) -> DeviceRemote:
        if self._remote is None:
            if self.control_endpoint is None:
                raise DeviceNotRunning(f"{type(self).__name__} has not been started")
            # Only callers of a device talk to its control socket: the device process itself
            # never imports remote.py nor the control client.
            from procdevices.devices.remote import DeviceRemote

            self._remote = DeviceRemote(self.control_endpoint, self._client_context())
        return self._remote

    def _client_context(self) -> Context | None:
        # An inproc control socket is only reachable from the runtime's own context.
        return self._runtime.control_ctx if self._runtime is not None else None

    def ping(self, timeout: float = 1.0) -> float:
        """Round-trip time, in seconds, of a PING through the control socket. The control
        thread answers even while the forwarding loop is blocked; :meth:`health` says how
        the loop is doing. Raises ControlTimeout when the device does not answer at all."""
        return self._control().ping(timeout)

    def health(self, timeout: float = 1.0) -> dict[str, Any]:
        """The PING reply: ``{"pid", "paused", "stopping", "loop", "blocked_for",
        "blocked_side", "probed", "answered_ago"}`` (docs/devices.md, "Liveness")."""
        return self._control().health(timeout)

    def stats(self, timeout: float = 2.0) -> DeviceStats:
        """Message and byte counters of the forwarding loop since it started. Raises
        ControlTimeout at once while the loop is blocked (its counters are out of reach)."""
        return self._control().stats(timeout)

    def pause(self, timeout: float = 2.0) -> None:
        """Stop forwarding; messages wait in the sockets' queues (up to their HWM)."""
        self._control().pause(timeout)

    def resume(self, timeout: float = 2.0) -> None:
        """Forward again after :meth:`pause`."""
        self._control().resume(timeout)

    def info(self, timeout: float = 2.0) -> dict[str, Any]:
        return self._control().info(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the device to stop through its control socket and wait until it has."""
        deadline = time.monotonic() + timeout
        self._control().stop_until(lambda: self.done, deadline)
        self.join(max(0.0, deadline - time.monotonic()))
        if not self.done:
            raise ControlTimeout(f"{type(self).__name__} did not stop within {timeout:.3g}s")
        self._close_client()

    def _close_client(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def __getstate__(self) -> dict[str, Any]:
        # What crosses to a spawned worker is the recorded setup, never live state.
        state = self.__dict__.copy()
        for runtime_only in (
            "launcher",
            "_runtime",
            "_ready",
            "_remote",
            "_context",
            "_tap_capture",
            "_tap_info",
            "_tap_switch",
        ):
            state.pop(runtime_only, None)
        state["_sockets"] = []
        state["_role_sockets"] = {}
        state["_setup_depth"] = 0
        state["_stop_deadline"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime = None
        self._ready = None
        self._remote = None


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
            self.control_endpoint or f"inproc://procdevices-control-{os.urandom(16).hex()}",
            reporter,
            whole_process=False,
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


def _thread_main(device: Device, runtime: rt.DeviceRuntime) -> None:
    rt.run_in_worker(device, runtime)


class ProcessDevice(BackgroundDevice):
    """A Device run in a background process started with the *spawn* method, so it never
    inherits the parent's threads, sockets or context. See Device for details."""

    # None: procdevices' own spawn (devices/spawnproc.py). A multiprocessing Process class
    # set here (as on pyzmq's ProcessDevice) starts the device with it instead.
    _launch_class = None
    context_factory = zmq.Context

    def start(self) -> None:
        # Parent-side modules, imported here so that the device process never loads them.
        import tempfile
        from multiprocessing.connection import wait as wait_for

        from procdevices.devices import launch

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
                raise DeviceStartError(f"{type(self).__name__} was not ready within {self.start_timeout}s; killed it")
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
                self._control().ask_to_stop(timeout)
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
            import shutil

            shutil.rmtree(cleanup_dir, ignore_errors=True)


__all__ = ["Device", "ThreadDevice", "ProcessDevice"]
