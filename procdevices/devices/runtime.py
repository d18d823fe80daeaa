"""What runs inside a device's worker (its thread, or its spawned process).

The parent records the socket setup (binds, connects, sockopts); the worker builds the
sockets, starts the control loop, reports readiness, then runs the forwarding loop:

    parent: start() ──spawn──► process_main(pickled device)
                                  │ _setup_sockets()   (errors name role, address, reason)
                                  │ DeviceRuntime.sockets_built(): control thread up
    parent: start() returns ◄─────┤ ready report (pid, bound endpoints) over a pipe
                                  │ the forwarding loop (in, out, mon, inproc REP):
                                  │ cloop.py's, else zmq.proxy_steerable
    parent: stop() ──control──►   │ TERMINATE → loop returns → in stops taking input,
                                  │ what is queued is delivered (drain.py), sockets closed
                                  │ with LINGER bounded by stop_linger
                                  ▼ context terminated, control ipc file removed, exit 0
"""

from __future__ import annotations

import enum
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol

import zmq

from procdevices import collector, runlayout
from procdevices.control.server import (
    MAX_CONTROL_MESSAGE,
    WAKE_DEAD,
    WAKE_EXIT,
    WAKE_STOPPED,
    ControlServer,
    ControlTarget,
)
from procdevices.control.steering import CaptureSwitch, PauseCommands, ProxySteering
from procdevices.devices import orphans
from procdevices.devices.contexts import TermOnce
from procdevices.devices.inherit import INHERITED
from procdevices.devices.inherit import adopt as adopt_listeners
from procdevices.errors import DeviceError, DeviceSetupError, DeviceStartError

if TYPE_CHECKING:
    from procdevices.devices.channel import Channel
    from procdevices.devices.runnable import RunsInWorker as Device

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]


#: Signals meant for ``up`` that reach its devices too when sent to the process group or to a
#: systemd unit's every process (``systemctl kill``, supervisord's ``stopasgroup``): Ctrl-C and a
#: terminal hangup (the supervisor decides how its devices stop), SIGUSR1 and SIGUSR2 (leave,
#: upgrade: the supervisor's own business; their default action would end the device). A device
#: process starts with them blocked (launch.py, spawnproc.py) and ignores them (process_main).
IGNORED_SIGNALS = frozenset({signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2})

# The records a device process needs are NamedTuples, not dataclasses: importing
# ``dataclasses`` (and with it ``inspect``, ``ast``, ``dis``) costs every device ~1.2 MiB of
# private memory and ~10 ms of CPU (docs/performance.md).


class ReadyInfo(NamedTuple):
    """What a device reports once its sockets are bound and connected."""

    pid: int
    control_endpoint: str
    endpoints: dict[str, list[str]]  # role -> bound endpoints
    mq_loop: str | None = None  # a monitored queue's loop, "c" or "python"; None: another kind


class Reporter(Protocol):
    def ready(self, info: ReadyInfo) -> None: ...
    def failed(self, error: DeviceError) -> None: ...


class NullReporter:
    """A foreground device has nobody waiting for its readiness."""

    def ready(self, info: ReadyInfo) -> None:
        pass

    def failed(self, error: DeviceError) -> None:
        pass


class PipeReporter:
    def __init__(self, conn: Channel) -> None:
        self.conn = conn

    def ready(self, info: ReadyInfo) -> None:
        self.conn.send(("ready", info))

    def failed(self, error: DeviceError) -> None:
        self.conn.send(("error", error))


class EventReporter:
    """Readiness of a thread device: the starting thread waits on ``event``."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.info: ReadyInfo | None = None
        self.error: DeviceError | None = None

    def ready(self, info: ReadyInfo) -> None:
        self.info = info
        self.event.set()

    def failed(self, error: DeviceError) -> None:
        self.error = error
        self.event.set()


# -- building sockets, with errors that say which socket, what and why ----------------------


def _setup_error(role: str, action: str, target: str, e: zmq.ZMQError) -> DeviceSetupError:
    return DeviceSetupError(role, action, target, e.strerror, e.errno)


def make_socket(ctx: Context, role: str, socket_type: int) -> Socket:
    try:
        return ctx.socket(socket_type)
    except zmq.ZMQError as e:
        raise _setup_error(role, "socket", f"type {socket_type}", e) from None


def apply_sockopts(role: str, sock: Socket, options: Iterable[tuple[int, Any]]) -> None:
    for option, value in options:
        try:
            sock.setsockopt(option, value)
        except zmq.ZMQError as e:
            name = _option_name(option)
            raise _setup_error(role, "setsockopt", f"{name}={value!r}", e) from None


def bind_all(role: str, sock: Socket, addresses: Iterable[str], bound: list[str]) -> None:
    for address in addresses:
        inherited = INHERITED.get(address)
        try:
            if inherited is not None:
                # The parent's listening socket (inherit.py): bind takes it over, and resets.
                sock.setsockopt(zmq.USE_FD, inherited)
            sock.bind(address)
        except zmq.ZMQError as e:
            raise _setup_error(role, "bind to", address, e) from None
        finally:
            if inherited is not None:
                sock.setsockopt(zmq.USE_FD, -1)
        bound.append(_endpoint_text(sock.last_endpoint))


def connect_all(role: str, sock: Socket, addresses: Iterable[str]) -> None:
    for address in addresses:
        try:
            sock.connect(address)
        except zmq.ZMQError as e:
            raise _setup_error(role, "connect to", address, e) from None


def _endpoint_text(endpoint: object) -> str:
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


def _option_name(option: int) -> str:
    try:
        return zmq.SocketOption(option).name
    except ValueError:
        return str(option)


# -- the control loop's thread, started ahead in a warm worker ------------------------------


class ControlThread:
    """A thread started before its device exists, idle until it is handed the control loop.

    ``threading.Thread.start()`` waits until the new thread has run; on a busy machine that
    is a wait for the scheduler (up to milliseconds), and a device that starts its control
    thread just before its forwarding loop waits it out on a restart's critical path. A warm
    worker starts this thread while it is idle (:func:`prestart_control_thread`), so that the
    device it becomes hands the loop over without waiting and forwards at once."""

    def __init__(self) -> None:
        self._handed = threading.Event()
        self._serve: Callable[[], None] | None = None
        self.thread = threading.Thread(target=self._run, name="procdevices-control", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self._handed.wait()
        assert self._serve is not None
        self._serve()

    def run(self, serve: Callable[[], None]) -> threading.Thread:
        """Run ``serve`` in the thread (once); returns at once, with the thread to join."""
        self._serve = serve
        self._handed.set()
        return self.thread


_prestarted: ControlThread | None = None


def prestart_control_thread() -> None:
    """Start the control loop's thread of the device this process will run (a warm worker,
    while it waits for its job)."""
    global _prestarted
    _prestarted = ControlThread()


def _take_prestarted() -> ControlThread | None:
    global _prestarted
    prestarted, _prestarted = _prestarted, None
    return prestarted


# -- the per-run state of a device in its worker ------------------------------------------


class LoopOutcome(enum.Enum):
    """How a device's forwarding loop ended."""

    RETURNED = "returned"  # a TERMINATE (or a run_device that returned): a graceful stop
    BROKEN = "broken"  # its context was shut down under it (ETERM): a forced stop
    DEAD = "dead"  # it raised: nobody asked it to end


class DeviceRuntime:
    """Owns a running device's control loop and the steps around its forwarding loop."""

    def __init__(
        self,
        control_endpoint: str,
        reporter: Reporter,
        *,
        whole_process: bool,
        parent_sentinel: int | None = None,
        signal_fd: int | None = None,
        cleanup_dir: str | None = None,
        orphan_grace: float = 0.0,
        run_token: str | None = None,
        watched_pid: int | None = None,
    ) -> None:
        self.control_endpoint = control_endpoint
        self.reporter = reporter
        # whole_process: the device is the process (spawned child, `procdevices run`): it
        # terminates its contexts on exit.
        self.whole_process = whole_process
        self.parent_sentinel = parent_sentinel
        self.signal_fd = signal_fd
        self.cleanup_dir = cleanup_dir
        # What the control loop does when the parent dies (devices/orphans.py).
        self.orphan_grace = orphan_grace
        self.run_token = run_token
        self.watched_pid = watched_pid  # the pid parent_sentinel watches, when known
        self.endpoints: dict[str, list[str]] = {}
        self.ctx: Context | None = None
        # Set when the device's context is the device's to terminate (contexts.py).
        self._term_once: TermOnce | None = None
        self.control_ctx: Context | None = None
        self.proxy_control: Socket | None = None  # the REP end handed to zmq_proxy_steerable
        self.user_ctrl: Socket | None = None
        self.reported = False
        self._wake: Socket | None = None
        self._control_thread: threading.Thread | None = None
        # Sockets the worker thread closes; those of the control loop are its own to close.
        self._private_sockets: list[Socket] = []
        self._terminator: threading.Thread | None = None
        self._target: ControlTarget | None = None
        self.finished = False  # a runtime serves one run: a device run again gets a new one
        self.tap_endpoint: str | None = None  # bound by the device (tapsocket.py); removed at exit

    @property
    def owns_context(self) -> bool:
        """Whether the device terminates its context when its run ends (and may terminate
        it to break a loop that has no control socket)."""
        return self._term_once is not None

    def adopt_context(self, ctx: Context, *, made_for_device: bool) -> None:
        """Record the context the worker built the device's sockets in. A context made for
        this run alone (``made_for_device``), or any context of a device that is the whole
        process, is the device's to terminate: it gets a once-only ``term()`` before anybody
        else can reach it, so that the caller's ``dev._context.term()`` and the device's own
        never both run (contexts.py)."""
        self.ctx = ctx
        if made_for_device or self.whole_process:
            self._term_once = TermOnce(ctx)

    @property
    def stop_reason(self) -> str:
        """Who asked the device to stop ("control socket", "signal", "parent process died")."""
        return self._target.stop_reason if self._target is not None else ""

    def bound(self, role: str) -> list[str]:
        return self.endpoints.setdefault(role, [])

    def report_failure(self, error: DeviceError) -> None:
        if not self.reported:
            self.reported = True
            self.reporter.failed(error)

    def sockets_built(
        self,
        ctx: Context,
        steerable: bool,
        info: Callable[[], dict[str, Any]],
        blocked_side: str | None = None,
        *,
        pause_commands: PauseCommands | None = None,
        user_ctrl: Socket | None = None,
        tap_endpoint: str | None = None,
        capture_switch: CaptureSwitch | None = None,
    ) -> None:
        """Start the control loop, then tell the parent the device is ready. Called once, by
        the thread that runs the forwarding loop; later calls do nothing. ``user_ctrl``: the
        device's own ctrl socket (ProxySteerable), which the control loop serves too;
        ``tap_endpoint``: the tap the device bound (tapsocket.py), removed at exit;
        ``capture_switch``: its capture, switched by the control loop (steering.py)."""
        if self._control_thread is not None:
            return
        self.user_ctrl = user_ctrl
        self.tap_endpoint = tap_endpoint
        if self.ctx is None:  # a subclass made its context itself: the program's, not ours
            self.adopt_context(ctx, made_for_device=False)
        steering = None
        if steerable:
            address = f"inproc://procdevices-proxy-ctrl-{os.urandom(16).hex()}"
            self.proxy_control = self._private(ctx, zmq.REP)
            self.proxy_control.bind(address)
            steering = ProxySteering(ctx, address)
        # The control loop lives in a context of its own, so that terminating the device's
        # context (the only way to stop a loop without a control socket) leaves it working.
        self.control_ctx = self._new_control_context()
        control = self._private(self.control_ctx, zmq.ROUTER)
        control.maxmsgsize = MAX_CONTROL_MESSAGE
        try:
            control.bind(self.control_endpoint)
        except zmq.ZMQError as e:
            if steering is not None:
                steering.close()
            raise _setup_error("control", "bind to", self.control_endpoint, e) from None
        wake_address = f"inproc://procdevices-wake-{os.urandom(16).hex()}"
        wake_rx = self._private(self.control_ctx, zmq.PAIR)
        wake_rx.bind(wake_address)
        self._wake = self._private(self.control_ctx, zmq.PAIR)
        self._wake.connect(wake_address)
        target = ControlTarget(
            steering=steering,
            info=info,
            shutdown=self._shutdown_context if self.owns_context else None,
            user_ctrl=self.user_ctrl,
            loop_thread=threading.current_thread(),
            blocked_side=blocked_side,
            pause_commands=pause_commands,
            capture=capture_switch,
        )
        self._target = target
        server = ControlServer(
            target,
            control,
            wake_rx,
            self.parent_sentinel,
            self.signal_fd,
            orphan_grace=self.orphan_grace,
            run_token=self.run_token,
            watched_pid=self.watched_pid,
            handback_path=_handback_path(self.control_endpoint),
            listeners=INHERITED,
        )

        def serve() -> None:
            try:
                server.serve()
            finally:
                if steering is not None:
                    steering.close()
                if self.control_endpoint.startswith("inproc://"):
                    # libzmq frees an inproc name only when its reaper thread gets to the closed
                    # socket, later; a thread device started again at once binds the same name
                    # (EADDRINUSE on a busy machine). unbind frees it now, in this thread.
                    try:
                        control.unbind(self.control_endpoint)
                    except zmq.ZMQError:
                        pass  # its context is being terminated: the name goes with it
                # A short linger lets the answer to STOP leave before the socket goes.
                control.close(linger=200)
                wake_rx.close(linger=0)

        # From here on these three are the control thread's: a socket is closed by the thread
        # that uses it, never from another one while it may be in a call.
        self._private_sockets.remove(control)
        self._private_sockets.remove(wake_rx)
        prestarted = _take_prestarted() if self.whole_process else None
        if prestarted is not None:
            self._control_thread = prestarted.run(serve)
        else:
            self._control_thread = threading.Thread(target=serve, name="procdevices-control", daemon=True)
            self._control_thread.start()
        self.reported = True
        self.reporter.ready(ReadyInfo(os.getpid(), self.control_endpoint, self.endpoints, info().get("mq_loop")))

    def _new_control_context(self) -> Context:
        """A device process has a context of its own for its control loop, terminated at exit.
        A thread device's control socket is an inproc endpoint that its caller's client must
        reach, so it lives in procdevices' process-wide client context, which nobody ever
        terminates: no per-device context left behind when the caller ends the device by
        terminating its context instead of calling stop()."""
        if self.whole_process:
            return zmq.Context()
        from procdevices.control.client import private_context

        return private_context()

    def _shutdown_context(self) -> None:
        """Break a forwarding loop that has no control socket: terminating the context makes
        every blocking call in it fail with ETERM. pyzmq has no zmq_ctx_shutdown, and term()
        blocks until every socket is closed, so it runs in its own thread; through the
        once-only term, so that it never runs beside the caller's own ``term()``."""
        assert self._term_once is not None
        self._terminator = threading.Thread(
            target=self._term_once.term_unless_started, name="procdevices-term", daemon=True
        )
        self._terminator.start()

    def _private(self, ctx: Context, socket_type: int) -> Socket:
        sock: Socket = ctx.socket(socket_type)
        sock.linger = 0
        self._private_sockets.append(sock)
        return sock

    def loop_ended(self, outcome: LoopOutcome) -> None:
        """Tell the control loop the forwarding loop has returned; it keeps answering (PING
        says "stopped" or "dead") while the worker drains and closes."""
        self._tell_control(WAKE_DEAD if outcome is LoopOutcome.DEAD else WAKE_STOPPED)

    def _tell_control(self, message: bytes) -> None:
        if self._wake is not None:
            try:
                self._wake.send(message, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the control loop has ended already (its context or ctrl socket went)

    def finish(self) -> None:
        """After the forwarding loop: stop the control loop and release what we own."""
        self.finished = True
        self._tell_control(WAKE_EXIT)
        if self._control_thread is not None:
            self._control_thread.join(5.0)
        for sock in self._private_sockets:
            if not sock.closed:
                sock.close(linger=0)

    def terminate_context(self) -> None:
        """Last step of a run, after every socket is closed. The device's context is
        terminated only when it is the device's (adopt_context), and only if nobody has begun
        to terminate it already: the caller's ``dev._context.term()`` from another thread
        (pyzmq's way to stop a thread device) then ends it, once every socket is closed, ours
        are. A shared context (Context.instance) is the program's: never terminated here."""
        if self._terminator is not None:
            self._terminator.join()
        if self._term_once is not None:
            self._term_once.term_unless_started()
        if self.whole_process:
            if self.control_ctx is not None:
                self.control_ctx.term()
        for path in _ipc_paths(self.endpoints):
            _remove(path)
        if self.control_endpoint.startswith("ipc://"):
            _remove(self.control_endpoint[len("ipc://") :])
        if self.tap_endpoint is not None:
            _remove(self.tap_endpoint[len("ipc://") :])
        if self.cleanup_dir:
            import shutil  # here, not at the top: a supervised device has no cleanup dir

            shutil.rmtree(self.cleanup_dir, ignore_errors=True)


def _ipc_paths(endpoints: dict[str, list[str]]) -> list[str]:
    # libzmq leaves the socket file of a bound ipc endpoint behind; a stopped device should not
    # (unless the socket is its parent's, which still listens on it).
    return [
        e[len("ipc://") :]
        for bound in endpoints.values()
        for e in bound
        if e.startswith("ipc://") and e not in INHERITED
    ]


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- worker entry points ------------------------------------------------------------------


def run_in_worker(device: Device, runtime: DeviceRuntime) -> int:
    """Run ``device`` with ``runtime``; returns the exit code a process would use."""
    try:
        device.run_with(runtime)
    except DeviceError as e:
        if runtime.reported:  # nobody is waiting for this error: leave it in the log
            print(f"procdevices: {type(device).__name__}: {e}", file=sys.stderr, flush=True)
        runtime.report_failure(e)
        return 1
    except Exception as e:
        error = DeviceStartError(f"{type(device).__name__} failed: {type(e).__name__}: {e}")
        if runtime.reported:
            raise
        runtime.report_failure(error)
        return 1
    finally:
        runtime.terminate_context()
    return 0


class Job(NamedTuple):
    """A device for a process to run: what a spawned or pooled worker receives."""

    pickled_device: bytes
    control_endpoint: str
    cleanup_dir: str | None = None
    # A file that receives everything the process writes on fds 1 and 2 (Python and C).
    log_path: str | None = None
    # The pid whose death stops the device, when multiprocessing's parent sentinel cannot
    # tell (a child of the fork server); None: the sentinel.
    parent_pid: int | None = None
    # endpoint → listening socket owned by the parent (InheritedFd in the parent, int here)
    listeners: dict[str, Any] | None = None

    def with_listeners(self, listeners: dict[str, Any]) -> Job:
        """This job with other listeners (inherit.send_job: placeholders, then descriptors)."""
        return self._replace(listeners=listeners)


def process_main(conn: Channel, job: Job, *, paused: collector.Thresholds | None = None) -> None:
    """Entry point of a device process, once it has its job (boot.py reads it, or a warm
    worker's; multiprocessing passes it to a fork of the fork server). ``paused``: the
    collector's thresholds before spawnproc's command line paused it; None: paused here."""
    # Collections wait until the device is loaded (procdevices/collector.py says why).
    thresholds = paused if paused is not None else collector.pause()
    # The supervisor's signals (IGNORED_SIGNALS) are not the device's business: it follows its
    # parent (the death sentinel) and its supervisor (control socket, SIGTERM).
    for signum in IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # They were blocked from the fork on (spawnproc.signals_blocked); ignored, they can be let
    # through now (a pending one is discarded).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, IGNORED_SIGNALS)
    adopt_listeners(job.listeners)
    # A pipe, not a socketpair: a device process never needs the socket module.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    # A handler (not SIG_DFL) so SIGTERM only wakes the control loop: a stop like any other.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    sentinel, watched_pid = _parent_sentinel(job.parent_pid)
    runtime = DeviceRuntime(
        job.control_endpoint,
        PipeReporter(conn),
        whole_process=True,
        parent_sentinel=sentinel,
        signal_fd=wake_r,
        cleanup_dir=job.cleanup_dir,
        orphan_grace=orphans.grace_from_env(),
        run_token=os.environ.get(orphans.RUN_TOKEN_ENV),
        watched_pid=watched_pid,
    )
    if job.log_path is not None:
        try:
            redirect_output(job.log_path)
        except OSError as e:
            # A log that cannot be opened (a full disk) must not keep the device from running:
            # its output stays where it was, and says why.
            print(
                f"procdevices: cannot open the device's log {job.log_path}: {e}; output stays here",
                file=sys.stderr,
                flush=True,
            )
    try:
        device = pickle.loads(job.pickled_device)
    except Exception as e:
        runtime.report_failure(
            DeviceStartError(
                f"the device process cannot load the device object: {type(e).__name__}: {e} "
                "(a device class must be importable by a fresh interpreter: define it in a "
                "module, or in a script guarded by `if __name__ == '__main__':`)"
            )
        )
        raise SystemExit(1) from None
    # Frozen too, what a fork server's child shares with the server is not written by collections.
    collector.resume(thresholds)
    code = run_in_worker(device, runtime)
    conn.close()
    _exit_now(code)


def redirect_output(path: str) -> None:
    """Make ``path`` (appended to, created 0600) this process's fds 1 and 2, so that what C
    code writes lands there too, not only Python's ``print``; Python's streams become line
    buffered so that a device's lines reach the file while it runs."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(1 if name == "stdout" else 2, "w", buffering=1, closefd=False))
        elif hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)


def _exit_now(code: int) -> NoReturn:
    """End the device process at once. Everything it owns is closed and terminated already;
    a full interpreter finalisation would only add ~50 ms of CPU per process, which is what
    a stop of many devices on a small machine waits for."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _parent_sentinel(parent_pid: int | None = None) -> tuple[int | None, int | None]:
    """What tells the device that its parent died, and that parent's pid (None: unknown)."""
    # A Python built against headers older than Linux 5.3 has no os.pidfd_open at all.
    pidfd_open = getattr(os, "pidfd_open", None)
    if parent_pid is not None and pidfd_open is not None:
        try:
            # Readable when that process exits. Opened at once, so the pid cannot have been
            # reused: the launcher is waiting for this process's ready report.
            return pidfd_open(parent_pid), parent_pid
        except ProcessLookupError:
            _exit_now(0)  # the launcher is gone already: nobody to run the device for
        except OSError:
            pass  # no pidfds (Linux < 5.3): multiprocessing's sentinel, where there is one
    # A process that multiprocessing started (the fork server's) has its parent's sentinel;
    # one that procdevices spawned never imports multiprocessing: without pidfds (which `up`
    # needs anyway to adopt devices) it does not notice its parent's death.
    started_by = sys.modules.get("multiprocessing.process")
    parent = started_by.parent_process() if started_by is not None else None
    return (parent.sentinel, parent.pid) if parent is not None else (None, None)


def _handback_path(control_endpoint: str) -> str | None:
    """The one socket an adopter may take back this device's listening sockets on: its run
    dir's handback socket (devices/handback.py); None outside a run dir."""
    run_dir = runlayout.run_dir_of_control_endpoint(control_endpoint)
    return runlayout.handback_socket(run_dir) if run_dir is not None else None
