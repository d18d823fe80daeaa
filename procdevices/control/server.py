"""The control loop that runs inside every device, beside its forwarding loop.

It owns the device's dedicated control socket (a ROUTER) and answers the commands of
:class:`~procdevices.control.protocol.Command`. It also watches, when given, the parent's
death sentinel and a signal wake-up fd, and turns either into a clean stop: the device
always stops through the same path, whoever asked.

    client DEALER ──► control ROUTER ──► ControlServer ──► ProxySteering ──► proxy's REP
                                              │
            parent sentinel / SIGTERM ────────┘     (stop also = ctx.shutdown() for loops
                                                     that have no control socket)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from procdevices.control import steering as steer
from procdevices.control.protocol import (
    ERROR,
    OK,
    Command,
    ErrorCode,
    ProtocolError,
    device_error,
    encode,
    parse_device_request,
    request_id_of,
)
from procdevices.errors import ControlTimeout, DeviceError, UnsupportedOperation, error_code_of

# A probe must never make the control loop itself hang: libzmq answers in microseconds when
# its loop runs, so a second means the loop is stuck (e.g. blocked on a capture socket).
PROXY_ANSWER_TIMEOUT = 1.0


@dataclass
class ControlTarget:
    """What the control loop steers. Built by the device runtime."""

    ctx: zmq.Context[zmq.Socket[bytes]]
    steering: steer.ProxySteering | None  # None: the loop has no control socket
    info: Callable[[], dict[str, Any]]
    # How to stop a loop without a control socket; None when that is impossible.
    shutdown: Callable[[], None] | None
    user_ctrl: zmq.Socket[bytes] | None = None
    paused: bool = False
    stopping: bool = False
    stop_reason: str = ""
    extra_fds: list[int] = field(default_factory=list)


class ControlServer:
    """Serves one device's control socket until the device stops."""

    def __init__(
        self,
        target: ControlTarget,
        socket: zmq.Socket[bytes],
        wake: zmq.Socket[bytes],
        parent_sentinel: int | None = None,
        signal_fd: int | None = None,
    ) -> None:
        self.target = target
        self.socket = socket
        self.wake = wake
        self.parent_sentinel = parent_sentinel
        self.signal_fd = signal_fd
        self.handlers: dict[bytes, Callable[[Any], Any]] = {
            Command.PING.value: self._ping,
            Command.STATS.value: self._stats,
            Command.PAUSE.value: self._pause,
            Command.RESUME.value: self._resume,
            Command.STOP.value: self._stop,
            Command.INFO.value: self._info,
        }

    # -- the loop -------------------------------------------------------------------------
    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake, zmq.POLLIN)
        if self.target.user_ctrl is not None:
            poller.register(self.target.user_ctrl, zmq.POLLIN)
        for fd in (self.parent_sentinel, self.signal_fd):
            if fd is not None:
                poller.register(fd, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self.wake in events:
                    return  # the forwarding loop has ended; nothing left to steer
                if self.socket in events:
                    self._answer(self.socket.recv_multipart())
                if self.target.user_ctrl is not None and self.target.user_ctrl in events:
                    self._relay_user_command()
                if self.parent_sentinel is not None and self.parent_sentinel in events:
                    poller.unregister(self.parent_sentinel)
                    self._stop_unasked("parent process died")
                if self.signal_fd is not None and self.signal_fd in events:
                    os.read(self.signal_fd, 512)
                    self._stop_unasked("signal")
        except zmq.ContextTerminated:
            return

    def _answer(self, frames: list[bytes]) -> None:
        identity, request = frames[0], frames[1:]
        if request_id_of(request) is None:
            return  # not our protocol: there is no request id to answer to
        status: bytes
        try:
            parsed = parse_device_request(request)
            status, body = OK, self.handlers[parsed.command.value](parsed.payload)
        except ProtocolError as e:
            status, body = ERROR, device_error(e.code, e.message)
        except DeviceError as e:
            status, body = ERROR, device_error(error_code_of(e), str(e))
        except Exception as e:  # a bug in one handler must not end the control loop
            print(f"procdevices: control command failed (please report): {e!r}", file=sys.stderr, flush=True)
            status, body = ERROR, device_error(ErrorCode.INTERNAL, f"internal error: {e!r}")
        self.socket.send_multipart([identity, request[0], status, encode(body)])

    # -- commands -------------------------------------------------------------------------
    def _ping(self, _: Any) -> dict[str, Any]:
        if self.target.steering is not None:
            # A STATISTICS round trip proves the forwarding loop runs, not just this thread.
            self.target.steering.statistics(PROXY_ANSWER_TIMEOUT)
        return {"pid": os.getpid(), "paused": self.target.paused}

    def _stats(self, _: Any) -> dict[str, int]:
        return self._require_steering("stats").statistics(PROXY_ANSWER_TIMEOUT).as_dict()

    def _pause(self, _: Any) -> dict[str, Any]:
        steering = self._require_steering("pause")
        steering.request(steer.pause_commands(self.target.ctx).pause, PROXY_ANSWER_TIMEOUT)
        self.target.paused = True
        return {"paused": True}

    def _resume(self, _: Any) -> dict[str, Any]:
        steering = self._require_steering("resume")
        steering.request(steer.pause_commands(self.target.ctx).resume, PROXY_ANSWER_TIMEOUT)
        self.target.paused = False
        return {"paused": False}

    def _stop(self, _: Any) -> dict[str, Any]:
        self._begin_stop("control socket")
        return {"stopping": True, "pid": os.getpid()}

    def _info(self, _: Any) -> dict[str, Any]:
        info = self.target.info()
        info.update(paused=self.target.paused, stopping=self.target.stopping)
        return info

    def _require_steering(self, operation: str) -> steer.ProxySteering:
        if self.target.steering is None:
            raise UnsupportedOperation(
                f"{operation}: this device's forwarding loop has no control socket "
                "(libzmq's monitored_queue, or a subclass with its own run_device); "
                "only stop, ping and info are available"
            )
        return self.target.steering

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
            try:
                target.steering.request(steer.TERMINATE, PROXY_ANSWER_TIMEOUT)
            except ControlTimeout:
                if target.shutdown is None:
                    raise
                target.shutdown()  # the loop is stuck (e.g. on a capture socket): break it
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

    # -- the user's own ctrl socket of a ProxySteerable --------------------------------------
    def _relay_user_command(self) -> None:
        """Pass a command from the user's ctrl socket to the proxy verbatim, as libzmq would
        have received it, and answer the way libzmq would have answered."""
        ctrl = self.target.user_ctrl
        assert ctrl is not None
        frames = ctrl.recv_multipart()
        envelope: list[bytes] = []
        if ctrl.type == zmq.ROUTER:
            envelope, frames = frames[:1], frames[1:]
        if not frames:
            return
        command = frames[-1]
        steering = self.target.steering
        if steering is None:
            return
        try:
            reply = steering.request(command, PROXY_ANSWER_TIMEOUT)
        except DeviceError as e:
            # libzmq would not answer a stuck loop either; the control loop must live on so
            # the device can still be stopped.
            print(f"procdevices: ctrl command {command!r} not answered: {e}", file=sys.stderr, flush=True)
            return
        if command == steer.TERMINATE:
            self.target.stopping = True
            self.target.stop_reason = "user ctrl socket"
        if ctrl.type in (zmq.SUB, zmq.PULL):
            return
        if command == steer.STATISTICS or ctrl.type in (zmq.REP, zmq.ROUTER) or _replies_on_any_socket():
            ctrl.send_multipart(envelope + reply)


def _replies_on_any_socket() -> bool:
    # libzmq up to 4.3.5 answers every command on any control socket type; later versions
    # answer only REP sockets (and STATISTICS everywhere).
    return zmq.zmq_version_info() < (4, 3, 6)
