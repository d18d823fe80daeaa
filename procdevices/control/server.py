"""The control loop that runs inside every device, beside its forwarding loop.

It owns the device's dedicated control socket (a ROUTER) and answers the commands of
:class:`~procdevices.control.protocol.Command`. It also watches, when given, the parent's
death sentinel and a signal wake-up fd, and turns either into a clean stop: the device
always stops through the same path, whoever asked.

    client DEALER ──► control ROUTER ──► ControlServer ──► ProxySteering ──► proxy's REP
                                              │   ▲ replies, matched in order
            parent sentinel / SIGTERM ────────┘   └── worker: "stopped" / "dead" / "exit"

The control loop never waits on the forwarding loop: commands to it are sent without
blocking and their answers arrive as events. A request that needs the loop's answer (STATS,
PAUSE, RESUME, and PING for up to :data:`PING_WAIT`) is answered when the loop replies or
when its deadline passes, whichever comes first, and every other request is served in the
meantime. So backpressure (the loop blocked in a send to a full peer) never silences the
control socket, and no input on either control socket can end this loop.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from procdevices.control import steering as steer
from procdevices.control.protocol import (
    ERROR,
    LOOP_BLOCKED,
    LOOP_DEAD,
    OK,
    Command,
    ErrorCode,
    PingReply,
    ProtocolError,
    device_error,
    encode,
    parse_device_request,
    request_id_of,
)
from procdevices.devices import handback, orphans
from procdevices.errors import ControlTimeout, DeviceError, DeviceNotRunning, UnsupportedOperation, error_code_of

# libzmq's loop serves its control socket between two bursts of forwarding, in microseconds
# to a few milliseconds. A command it has left unanswered this long means the loop is inside a
# blocking send (a full peer: backpressure; or a blocking monitor socket without a peer).
PING_WAIT = 0.05
# How long STATS waits for the loop's counters before answering TIMEOUT.
STATS_WAIT = 0.5
# How long PAUSE, RESUME and STOP wait for the loop before the fallback (an error for PAUSE
# and RESUME, a context shutdown for STOP).
PROXY_ANSWER_TIMEOUT = 1.0
# Messages taken from one socket per turn of the loop, so a flood on one socket cannot starve
# the others (the wake-up from the worker, the parent sentinel, signals).
BATCH = 256
# Largest message accepted on the control socket; libzmq disconnects a peer that sends more
# (requests are bounded far below this by protocol.MAX_REQUEST_BYTES).
MAX_CONTROL_MESSAGE = 256 * 1024


class LoopPhase(enum.Enum):
    """What the worker thread has told the control loop about the forwarding loop."""

    RUNNING = "running"
    STOPPED = "stopped"  # it returned after a stop; the worker drains and closes
    DEAD = LOOP_DEAD  # it ended without being asked (an exception)


# Wake-up messages from the worker thread.
WAKE_STOPPED = LoopPhase.STOPPED.value.encode()
WAKE_DEAD = LoopPhase.DEAD.value.encode()
WAKE_EXIT = b"exit"


class ControlTarget:
    """What the control loop steers. Built by the device runtime. (A plain class, not a
    dataclass: the device process would import ``dataclasses`` for it, protocol.py says why.)"""

    def __init__(
        self,
        steering: steer.ProxySteering | None,  # None: the loop has no control socket
        info: Callable[[], dict[str, Any]],
        # How to stop a loop without a control socket; None when that is impossible.
        shutdown: Callable[[], None] | None,
        user_ctrl: zmq.Socket[bytes] | None = None,
        # The thread that runs the forwarding loop: gone while the process lives means "dead".
        loop_thread: threading.Thread | None = None,
        # The one socket whose send can block the loop, by socket types; None when several can.
        blocked_side: str | None = None,
        # The commands that pause and resume the loop; None: libzmq's proxy (measured once).
        pause_commands: steer.PauseCommands | None = None,
        # The tap's capture, switched on while a tap reader is connected; None: fixed.
        capture: steer.CaptureSwitch | None = None,
    ) -> None:
        self.steering = steering
        self.capture = capture if steering is not None else None
        self.info = info
        self.shutdown = shutdown
        self.user_ctrl = user_ctrl
        self.loop_thread = loop_thread
        self.blocked_side = blocked_side
        self.pause_commands = pause_commands
        self.paused = False
        self.stopping = False
        self.stop_reason = ""


class _Reply:
    """Answers one request on the control ROUTER, once; later calls do nothing."""

    def __init__(self, socket: zmq.Socket[bytes], identity: bytes, request_id: bytes) -> None:
        self._socket = socket
        self._envelope = [identity, request_id]
        self.sent = False

    def ok(self, body: Any) -> None:
        self._send(OK, body)

    def error(self, code: ErrorCode, message: str) -> None:
        self._send(ERROR, device_error(code, message))

    def _send(self, status: bytes, body: Any) -> None:
        if self.sent:
            return
        self.sent = True
        try:
            self._socket.send_multipart([*self._envelope, status, encode(body)], zmq.NOBLOCK)
        except zmq.ContextTerminated:
            raise
        except zmq.ZMQError:
            pass  # a client that went away, or does not read: its answer is not ours to keep


Handler = Callable[[Any, _Reply], None]


class ControlServer:
    """Serves one device's control socket until the device stops."""

    def __init__(
        self,
        target: ControlTarget,
        socket: zmq.Socket[bytes],
        wake: zmq.Socket[bytes],
        parent_sentinel: int | None = None,
        signal_fd: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        orphan_grace: float = 0.0,
        run_token: str | None = None,
        watched_pid: int | None = None,
        handback_path: str | None = None,
        listeners: Mapping[str, int] | None = None,
    ) -> None:
        self.target = target
        self.socket = socket
        self.wake = wake
        self.parent_sentinel = parent_sentinel
        # The pid parent_sentinel watches (None: unknown, or nobody): ADOPT from that very
        # process is a supervisor that re-executed itself (same pid), not a second supervisor.
        self.watched_pid = watched_pid if parent_sentinel is not None else None
        self.signal_fd = signal_fd
        self.clock = clock
        # Supervisor restarts (devices/orphans.py): how long to wait for an adopter once the
        # parent died, and the token an adopter must show.
        self.orphan_grace = orphan_grace
        self.run_token = run_token
        self.orphaned_at: float | None = None  # when the watched parent died; None: it lives
        # Where an adopter may take back the listening sockets (devices/handback.py), and
        # those sockets (endpoint → descriptor, inherit.INHERITED in a device process).
        self.handback_path = handback_path
        self.listeners: Mapping[str, int] = listeners if listeners is not None else {}
        self._orphan_epoch = 0  # bumped on every death and adoption: a stale grace timer is void
        self._poller: zmq.Poller | None = None
        self.phase = LoopPhase.RUNNING
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        # Run once the loop has answered everything outstanding (or the phase changed).
        self._loop_waiters: list[Callable[[], None]] = []
        self.handlers: dict[Command, Handler] = {
            Command.PING: self._ping,
            Command.STATS: self._stats,
            Command.PAUSE: lambda payload, reply: self._steer_pause(True, reply),
            Command.RESUME: lambda payload, reply: self._steer_pause(False, reply),
            Command.STOP: self._stop,
            Command.INFO: self._info,
            Command.ADOPT: self._adopt,
        }

    # -- the loop -------------------------------------------------------------------------
    def serve(self) -> None:
        poller = self._poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake, zmq.POLLIN)
        steering = self.target.steering
        if steering is not None:
            poller.register(steering.socket, zmq.POLLIN)
        if self.target.user_ctrl is not None:
            poller.register(self.target.user_ctrl, zmq.POLLIN)
        if self.target.capture is not None:
            poller.register(self.target.capture.monitor, zmq.POLLIN)
        for fd in (self.parent_sentinel, self.signal_fd):
            if fd is not None:
                poller.register(fd, zmq.POLLIN)
        while True:
            try:
                events = dict(poller.poll(self._poll_timeout_ms()))
                if self._handle(events, poller):
                    return
                self._run_due_timers()
            except zmq.ContextTerminated:
                return
            except Exception as e:  # a bug must not end the control loop: contain and go on
                print(f"procdevices: control loop error (please report): {e!r}", file=sys.stderr, flush=True)

    def _handle(self, events: dict[Any, int], poller: zmq.Poller) -> bool:
        """One turn of the loop; True when the worker says the device is done."""
        if self.wake in events and self._read_wake():
            return True
        steering = self.target.steering
        if steering is not None and steering.socket in events:
            steering.collect()
            if steering.unanswered_since() is None:
                self._release_loop_waiters()
            self._switch_capture()
        if self.socket in events:
            for _ in range(BATCH):
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._answer(frames)
        if self.target.user_ctrl is not None and self.target.user_ctrl in events:
            self._relay_user_commands()
        capture = self.target.capture
        if capture is not None and capture.monitor in events:
            capture.read_events()
            self._switch_capture()
        if self.parent_sentinel is not None and self.parent_sentinel in events:
            poller.unregister(self.parent_sentinel)
            self._parent_died()
        if self.signal_fd is not None and self.signal_fd in events:
            try:
                os.read(self.signal_fd, 512)
            except BlockingIOError:
                pass
            self._stop_unasked("signal")
        return False

    def _read_wake(self) -> bool:
        while True:
            try:
                message = self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                return False
            if message in (WAKE_STOPPED, WAKE_DEAD):
                self.phase = LoopPhase(message.decode())
                self._release_loop_waiters()
            else:  # WAKE_EXIT, or the empty frame of older runtimes: nothing left to steer
                return True

    # -- timers ---------------------------------------------------------------------------
    def _after(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self.clock() + delay, next(self._timer_ids), callback))

    def _poll_timeout_ms(self) -> int | None:
        if not self._timers:
            return None
        return max(0, int((self._timers[0][0] - self.clock()) * 1000) + 1)

    def _run_due_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            callback()

    def _release_loop_waiters(self) -> None:
        waiters, self._loop_waiters = self._loop_waiters, []
        for waiter in waiters:
            waiter()

    # -- requests ---------------------------------------------------------------------------
    def _answer(self, frames: list[bytes]) -> None:
        identity, request = frames[0], frames[1:]
        if request_id_of(request) is None:
            return  # not our protocol: there is no request id to answer to
        reply = _Reply(self.socket, identity, request[0])
        try:
            parsed = parse_device_request(request)
            self.handlers[parsed.command](parsed.payload, reply)
        except ProtocolError as e:
            reply.error(e.code, e.message)
        except DeviceError as e:
            reply.error(error_code_of(e), str(e))
        except zmq.ContextTerminated:
            raise
        except Exception as e:  # a bug in one handler must not end the control loop
            print(f"procdevices: control command failed (please report): {e!r}", file=sys.stderr, flush=True)
            reply.error(ErrorCode.INTERNAL, f"internal error: {e!r}")

    def health(self) -> PingReply:
        """The PING reply: see docs/devices.md, "Liveness: PING"."""
        target, steering, now = self.target, self.target.steering, self.clock()
        loop = self.phase.value
        blocked_for: float | None = None
        answered_ago: float | None = None
        if self.phase is LoopPhase.RUNNING and target.loop_thread is not None and not target.loop_thread.is_alive():
            loop = LoopPhase.DEAD.value
        elif steering is not None:
            since = steering.unanswered_since()
            if self.phase is LoopPhase.RUNNING and since is not None and now - since >= PING_WAIT:
                loop, blocked_for = LOOP_BLOCKED, round(now - since, 3)
            if steering.last_answer_at is not None:
                answered_ago = round(now - steering.last_answer_at, 3)
        return PingReply(
            pid=os.getpid(),
            paused=target.paused,
            stopping=target.stopping,
            loop=loop,
            blocked_for=blocked_for,
            blocked_side=target.blocked_side if blocked_for is not None else None,
            probed=steering is not None,
            answered_ago=answered_ago,
            stats=steering.last_statistics if steering is not None else None,
        )

    def _loop_blocked_for(self) -> float | None:
        steering = self.target.steering
        since = steering.unanswered_since() if steering is not None else None
        if since is None or self.clock() - since < PING_WAIT:
            return None
        return self.clock() - since

    # -- commands -------------------------------------------------------------------------
    def _ping(self, _: Any, reply: _Reply) -> None:
        steering = self.target.steering
        if steering is None or self.phase is not LoopPhase.RUNNING or self._loop_blocked_for() is not None:
            reply.ok(self.health().to_wire())
            return
        if not steering.waiting_for(steer.STATISTICS):
            steering.send(steer.STATISTICS)

        def answer() -> None:
            reply.ok(self.health().to_wire())

        self._loop_waiters.append(answer)
        self._after(PING_WAIT, answer)

    def _stats(self, _: Any, reply: _Reply) -> None:
        steering = self._require_running_loop("stats")
        blocked_for = self._loop_blocked_for()
        if blocked_for is not None:
            raise ControlTimeout(
                f"the forwarding loop has been blocked for {blocked_for:.3g}s (a send waits on a full "
                "peer); its counters are unavailable until it moves"
            )

        def counters(frames: list[bytes]) -> None:
            if len(frames) != 8:  # cannot happen with libzmq's REP; never let it escape
                reply.error(ErrorCode.INTERNAL, f"STATISTICS answered with {len(frames)} frames")
                return
            reply.ok(steer.decode_statistics(frames).as_dict())

        if not steering.send(steer.STATISTICS, counters):
            raise ControlTimeout("the forwarding loop is not taking commands")
        self._after(
            STATS_WAIT,
            lambda: reply.error(
                ErrorCode.TIMEOUT, f"the forwarding loop did not answer STATISTICS within {STATS_WAIT:.3g}s"
            ),
        )

    def _steer_pause(self, paused: bool, reply: _Reply) -> None:
        steering = self._require_running_loop("pause" if paused else "resume")
        commands = self.target.pause_commands or steer.pause_commands()
        command = commands.pause if paused else commands.resume

        def done(_: list[bytes]) -> None:
            self.target.paused = paused
            # The device's state once the loop took the command, as a PING would report it:
            # the caller reads it as it reads every PING, not as an echo of what it asked.
            reply.ok(self.health().to_wire())

        if not steering.send(command, done):
            raise ControlTimeout("the forwarding loop is not taking commands")
        self._after(
            PROXY_ANSWER_TIMEOUT,
            lambda: reply.error(
                ErrorCode.TIMEOUT,
                f"the forwarding loop did not answer {command.decode()} within {PROXY_ANSWER_TIMEOUT:.3g}s; "
                "the command stays queued and takes effect when the loop serves its control socket again",
            ),
        )

    def _stop(self, _: Any, reply: _Reply) -> None:
        self._begin_stop("control socket")
        reply.ok({"stopping": True, "pid": os.getpid()})

    def _info(self, _: Any, reply: _Reply) -> None:
        info = self.target.info()
        info.update(paused=self.target.paused, stopping=self.target.stopping)
        reply.ok(info)

    def _require_running_loop(self, operation: str) -> steer.ProxySteering:
        if self.target.steering is None:
            raise UnsupportedOperation(
                f"{operation}: this device's forwarding loop has no control socket "
                "(a subclass with its own run_device); "
                "only stop, ping and info are available"
            )
        if self.phase is not LoopPhase.RUNNING:
            raise DeviceNotRunning(f"{operation}: the forwarding loop has ended ({self.phase.value})")
        return self.target.steering

    def _switch_capture(self) -> None:
        """Leave the proxy so that the worker enters it again with (or without) the tap's
        capture socket, when that is wanted (steering.CaptureSwitch). Only while it runs
        unpaused and nothing that changes its state is on the way to it: a paused loop
        forwards nothing anyway, and switches when it is resumed (this runs after every
        answer of the loop, the RESUME's included); a PAUSE, RESUME or TERMINATE on the way
        must reach the loop it was meant for. PAUSE first: the counters read next are the
        last of this run, and STATISTICS carries them into the next one."""
        capture, steering, target = self.target.capture, self.target.steering, self.target
        if capture is None or steering is None or capture.wanted == capture.capturing or not capture.settled:
            return
        if target.paused or target.stopping or self.phase is not LoopPhase.RUNNING:
            return
        commands = target.pause_commands or steer.pause_commands()
        if any(steering.waiting_for(c) for c in (commands.pause, commands.resume, steer.TERMINATE)):
            return
        if steering.room() < 4:
            return  # the loop is not taking commands: a half-sent switch could leave it paused
        steering.send(commands.pause)
        steering.send(steer.STATISTICS, steering.carry)
        # Counted before it is sent: the worker may see the loop return before send() does.
        capture.requested += 1
        if not steering.send(steer.TERMINATE):
            capture.requested -= 1
            steering.send(commands.resume)
            return
        # Answered by the next run of the loop: the control loop looks again then.
        steering.send(steer.STATISTICS)

    # -- the supervisor's death and adoption (devices/orphans.py) -----------------------------
    def _parent_died(self) -> None:
        # Not closed: multiprocessing's parent object may own it. Unregistered by the caller.
        self.parent_sentinel = None
        self.watched_pid = None
        if self.orphan_grace <= 0:
            self._stop_unasked("parent process died")
            return
        self.orphaned_at = self.clock()
        self._orphan_epoch += 1
        epoch = self._orphan_epoch
        print(
            f"procdevices: the supervisor died; forwarding on for up to {self.orphan_grace:g}s, waiting to be adopted",
            file=sys.stderr,
            flush=True,
        )

        def grace_over() -> None:
            if self._orphan_epoch == epoch and self.orphaned_at is not None:
                self._stop_unasked(
                    f"parent process died and no supervisor adopted the device within {self.orphan_grace:g}s"
                )

        self._after(self.orphan_grace, grace_over)

    def _parent_death_pending(self) -> bool:
        """Whether the watched parent has died but the loop has not seen it yet (the sentinel
        is readable): then its pid may be somebody else's already."""
        sentinel = self.parent_sentinel
        if sentinel is None:
            return False
        readable, _, _ = select.select([sentinel], [], [], 0)
        if not readable:
            return False
        if self._poller is not None:
            self._poller.unregister(sentinel)
        self._parent_died()
        return True

    def _adopt(self, payload: Any, reply: _Reply) -> None:
        try:
            adoption = orphans.check_adoption(payload, self.run_token, self.handback_path)
        except orphans.AdoptionRefused as e:
            reply.error(ErrorCode.REFUSED, str(e))
            return
        self._parent_death_pending()
        if self.orphaned_at is None and adoption.pid != self.watched_pid:
            # Its supervisor lives: a second one must not take the device from it.
            reply.error(ErrorCode.REFUSED, "adopt: this device's supervisor is alive")
            return
        if self.target.stopping:
            reply.error(ErrorCode.REFUSED, "adopt: the device is stopping")
            return
        if self.orphaned_at is None:
            self._adopt_again(adoption, reply)
            return
        pidfd_open = getattr(os, "pidfd_open", None)  # absent from a Python built before Linux 5.3
        if pidfd_open is None:
            reply.error(ErrorCode.FAILED, "adopt: this Python has no os.pidfd_open to watch the adopter with")
            return
        try:
            sentinel = pidfd_open(adoption.pid)
        except ProcessLookupError:
            reply.error(ErrorCode.REFUSED, f"adopt: no process {adoption.pid}")
            return
        except OSError as e:
            reply.error(ErrorCode.FAILED, f"adopt: cannot watch process {adoption.pid}: {e.strerror or e}")
            return
        try:
            listeners = self._hand_back(adoption)
        except handback.HandbackFailed as e:
            # Not adopted: the device stays an orphan and its grace runs on.
            os.close(sentinel)
            reply.error(ErrorCode.FAILED, f"adopt: cannot hand back the listening sockets: {e}")
            return
        self.parent_sentinel = sentinel
        self.watched_pid = adoption.pid
        if self._poller is not None:
            self._poller.register(sentinel, zmq.POLLIN)
        orphaned_for = self.clock() - self.orphaned_at
        self.orphaned_at = None
        self._orphan_epoch += 1  # voids the pending grace timer
        print(f"procdevices: adopted by supervisor pid {adoption.pid}", file=sys.stderr, flush=True)
        reply.ok({"adopted": True, "pid": os.getpid(), "orphaned_for": round(orphaned_for, 3), "listeners": listeners})

    def _adopt_again(self, adoption: orphans.Adoption, reply: _Reply) -> None:
        """ADOPT from the process the device already follows: its supervisor re-executed
        itself (same pid, new program) and takes the device back. The device keeps watching
        the same pidfd; only the listening sockets travel."""
        try:
            listeners = self._hand_back(adoption)
        except handback.HandbackFailed as e:
            reply.error(ErrorCode.FAILED, f"adopt: cannot hand back the listening sockets: {e}")
            return
        print(f"procdevices: adopted again by supervisor pid {adoption.pid}", file=sys.stderr, flush=True)
        reply.ok({"adopted": True, "pid": os.getpid(), "orphaned_for": 0.0, "listeners": listeners})

    def _hand_back(self, adoption: orphans.Adoption) -> list[str]:
        if adoption.handback is None:
            return []
        return handback.hand_back(adoption.handback, self.listeners, adoption.pid)

    # -- stopping -----------------------------------------------------------------------------
    def _stop_unasked(self, reason: str) -> None:
        try:
            self._begin_stop(reason)
        except DeviceError as e:
            # Nobody is waiting for an answer; leave a trace for whoever reads the logs.
            print(f"procdevices: cannot stop after {reason}: {e}", file=sys.stderr, flush=True)

    def _begin_stop(self, reason: str) -> None:
        target = self.target
        if target.stopping:
            return
        if target.steering is not None:
            if self.phase is LoopPhase.RUNNING:
                if target.steering.send(steer.TERMINATE):
                    self._after(PROXY_ANSWER_TIMEOUT, self._stop_stuck_loop)
                else:
                    self._stop_stuck_loop()
        elif target.shutdown is not None:
            target.shutdown()
        else:
            raise UnsupportedOperation(
                "stop: this device shares its zmq.Context with the rest of the program and its "
                "forwarding loop has no control socket; stopping it would stop every socket of "
                "that context (set context_factory = zmq.Context to make it stoppable)"
            )
        target.stopping = True
        target.stop_reason = reason

    def _stop_stuck_loop(self) -> None:
        """TERMINATE was not taken within PROXY_ANSWER_TIMEOUT: the loop is blocked in a send."""
        if self.phase is not LoopPhase.RUNNING:
            return
        if self.target.shutdown is not None:
            self.target.shutdown()  # breaks the blocking send (ETERM); queued messages are lost
        else:
            print(
                "procdevices: the forwarding loop is blocked and its context is shared: "
                "it stops when its blocking send completes",
                file=sys.stderr,
                flush=True,
            )

    # -- the user's own ctrl socket of a ProxySteerable --------------------------------------
    def _relay_user_commands(self) -> None:
        """Pass commands from the user's ctrl socket to the proxy verbatim, as libzmq would
        have received them, and answer (when the loop does) the way libzmq would have."""
        ctrl = self.target.user_ctrl
        assert ctrl is not None
        for _ in range(BATCH):
            try:
                frames = ctrl.recv_multipart(zmq.NOBLOCK)
            except zmq.ContextTerminated:
                raise
            except zmq.ZMQError:
                return  # nothing more (Again), or a REP that owes its answer first (EFSM)
            self._relay_one(ctrl, frames)

    def _relay_one(self, ctrl: zmq.Socket[bytes], frames: list[bytes]) -> None:
        envelope: list[bytes] = []
        if ctrl.type == zmq.ROUTER:
            envelope, frames = frames[:1], frames[1:]
        if not frames:
            return
        # Only the last frame: a multi-frame command would kill libzmq's proxy.
        command = frames[-1]
        answers = ctrl.type not in (zmq.SUB, zmq.PULL) and (
            command == steer.STATISTICS or ctrl.type in (zmq.REP, zmq.ROUTER) or _replies_on_any_socket()
        )

        def answer(reply: list[bytes]) -> None:
            if answers:
                try:
                    ctrl.send_multipart(envelope + reply, zmq.NOBLOCK)
                except zmq.ContextTerminated:
                    raise
                except zmq.ZMQError:
                    pass  # a peer that went away or does not read

        steering = self.target.steering
        if steering is None or self.phase is not LoopPhase.RUNNING or not steering.send(command, answer):
            # libzmq would not answer a loop that does not take commands either; a REP must
            # still answer before it can receive again, so it gets libzmq's empty reply.
            if ctrl.type == zmq.REP:
                answer([b""])
            return
        if command == steer.TERMINATE:
            self.target.stopping = True
            self.target.stop_reason = "user ctrl socket"


def _replies_on_any_socket() -> bool:
    # libzmq up to 4.3.5 answers every command on any control socket type; later versions
    # answer only REP sockets (and STATISTICS everywhere).
    return zmq.zmq_version_info() < (4, 3, 6)
