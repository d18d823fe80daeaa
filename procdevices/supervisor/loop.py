"""The event loop and the request server: the supervisor's only contact with file descriptors.

    device processes ── sentinel / ready pipe ──┐
    device control sockets (one ROUTER) ────────┤
    supervisor.sock (ROUTER) ◄── CLI requests ──┼──► EventLoop ──► Supervisor (decisions)
    signal wake-up fd ◄── SIGTERM/SIGINT/SIGHUP ┘        │
                                                          └── tick() when a timer is due

One epoll set waits on everything; timers only set its timeout (the supervisor says when
its next deadline is). Every callback is guarded: a bug met while handling one event is
logged and supervision goes on, because the devices must not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket as pysocket
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, cast

import zmq

from procdevices.control.protocol import (
    MAX_REQUEST_BYTES,
    ErrorCode,
    ProtocolError,
    encode,
    error_reply,
    parse_supervisor_request,
)
from procdevices.logs import Log
from procdevices.supervisor.events import EventSink, discard, event
from procdevices.supervisor.handlers import CommandHandlers

Clock = Callable[[], float]
OnEvent = Callable[[float], None]

# Requests served per wake-up, so a flood of requests cannot starve the devices' events.
MAX_REQUESTS_PER_WAKEUP = 64


class Watcher(Protocol):
    """What the supervisor uses of the loop: call back when a pollable is ready."""

    def watch(self, pollable: Any, on_event: OnEvent, *, quiet: bool = False) -> None: ...

    def unwatch(self, pollable: Any) -> None: ...


class Supervised(Protocol):
    def finished(self) -> bool: ...

    def next_deadline(self, now: float) -> float: ...

    def tick(self, now: float) -> None: ...

    def flush(self) -> None: ...


class _Watch(NamedTuple):
    on_event: OnEvent
    # A quiet event (a probe answer) changes no timer, so with many devices most wake-ups
    # skip the walk over every child.
    quiet: bool


def _events(sock: zmq.Socket[bytes]) -> int:
    return cast(int, sock.get(zmq.EVENTS))


class EventLoop:
    """Waits with epoll: a wake-up costs the same however many processes are watched.

    zmq.Poller would rebuild and hand libzmq one poll item per watched object on every call
    (~0.2 ms of CPU with 256 devices). Here plain descriptors (process sentinels, report pipes,
    the signal wake-up) sit in an epoll set; a ZMQ socket is watched through its ``ZMQ_FD``,
    which only says "look at ``ZMQ_EVENTS``" and can be consumed by any send or receive on the
    socket. So before each wait the few watched sockets are asked for ``ZMQ_EVENTS``
    directly, and the loop does not sleep while one of them has input.
    """

    def __init__(self, clock: Clock, log: Log) -> None:
        self.clock = clock
        self.log = log
        self._epoll = select.epoll()
        self._fds: dict[Any, int] = {}  # pollable → its descriptor
        self._by_fd: dict[int, _Watch] = {}  # plain descriptors
        self._sockets: dict[zmq.Socket[bytes], _Watch] = {}  # ZMQ sockets
        self._signals: list[int] = []
        self._on_signal: Callable[[int], None] | None = None
        self._wake: tuple[pysocket.socket, pysocket.socket] | None = None

    def watch(self, pollable: Any, on_event: OnEvent, *, quiet: bool = False) -> None:
        self.unwatch(pollable)
        watch = _Watch(on_event, quiet)
        if isinstance(pollable, zmq.Socket):
            fd = cast(int, pollable.get(zmq.FD))
            self._sockets[pollable] = watch
        else:
            fd = pollable if isinstance(pollable, int) else pollable.fileno()
            self._by_fd[fd] = watch
        self._fds[pollable] = fd
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:
            # The number of a descriptor closed while still watched, now reused.
            self._epoll.modify(fd, select.EPOLLIN)

    def unwatch(self, pollable: Any) -> None:
        fd = self._fds.pop(pollable, None)
        if fd is None:
            return
        if isinstance(pollable, zmq.Socket):
            self._sockets.pop(pollable, None)
        else:
            self._by_fd.pop(fd, None)
        with contextlib.suppress(OSError):  # already closed: epoll forgot it by itself
            self._epoll.unregister(fd)

    def handle_signals(self, signums: Iterable[int], on_signal: Callable[[int], None]) -> None:
        """Deliver these signals to ``on_signal`` from the loop, never from the handler."""
        wake_r, wake_w = pysocket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = (wake_r, wake_w)
        self._on_signal = on_signal
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            # Handlers only record the signal; the loop acts on it (gunicorn's rule).
            signal.signal(signum, lambda s, f: self._signals.append(s))
        self.watch(wake_r.fileno(), self._deliver_signals)

    def _deliver_signals(self, now: float) -> None:
        assert self._wake is not None and self._on_signal is not None
        try:
            self._wake[0].recv(4096)
        except BlockingIOError:
            pass
        pending, self._signals = self._signals, []
        for signum in pending:
            self._on_signal(signum)

    def run(self, supervised: Supervised) -> None:
        now = self.clock()
        earliest, dirty = now, True
        while not supervised.finished():
            now = self.clock()
            if dirty:
                earliest = supervised.next_deadline(now)
                dirty = False
            readable = self._readable_sockets()
            # +1 ms: never wake up just before a deadline and spin until it comes.
            timeout = 0.0 if readable else max(0.0, earliest - now) + 0.001
            events = self._epoll.poll(timeout)
            now = self.clock()
            for fd, _ in events:
                watch = self._by_fd.get(fd)
                if watch is not None:
                    self.guarded(watch.on_event, now)
                    dirty = dirty or not watch.quiet
            for watch in readable or self._readable_sockets():
                self.guarded(watch.on_event, now)
                dirty = dirty or not watch.quiet
            if dirty or now >= earliest:
                self.guarded(supervised.tick, self.clock())
                dirty = True
            self.guarded(lambda _: supervised.flush(), now)

    def _readable_sockets(self) -> list[_Watch]:
        return [watch for sock, watch in self._sockets.items() if not sock.closed and _events(sock) & zmq.POLLIN]

    def guarded(self, step: OnEvent, now: float) -> None:
        """A bug met while handling one event must not take every device down with the
        supervisor: log it loudly and keep supervising."""
        try:
            step(now)
        except Exception:
            self.log("internal error (please report):\n" + traceback.format_exc(), level=logging.ERROR)

    def close(self) -> None:
        if self._wake is not None:
            signal.set_wakeup_fd(-1)
            for end in self._wake:
                end.close()
            self._wake = None
        self._epoll.close()


class RequestServer:
    """Serves ``supervisor.sock``: every request validated, every request answered once."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        handlers: CommandHandlers,
        log: Log,
        events: EventSink = discard,
        configure: Callable[[zmq.Socket[bytes]], None] | None = None,
    ) -> None:
        self.handlers = handlers
        self.log = log
        self.events = events
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.socket.linger = 0
        # libzmq drops a peer that sends more than this, before we ever see the bytes.
        self.socket.maxmsgsize = MAX_REQUEST_BYTES
        if configure is not None:
            configure(self.socket)  # a host's tcp control endpoint: CURVE (cluster/control.py)
        self.socket.bind(endpoint)

    def on_readable(self, now: float) -> None:
        for _ in range(MAX_REQUESTS_PER_WAKEUP):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # REQ clients send [identity, b"", body]; DEALER clients [identity, body].
            if len(frames) < 2 or len(frames) > 3:
                continue  # no body, or not a request a reply could reach: nothing to answer
            self.serve(frames[:-1], frames[-1])

    def serve(self, envelope: list[bytes], body: bytes) -> None:
        answered: list[bool] = []

        def reply(payload: dict[str, Any]) -> None:
            if answered:
                return
            answered.append(True)
            try:
                self.socket.send_multipart([*envelope, encode(payload)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client is gone or not reading: its loss, not the devices'

        try:
            request = parse_supervisor_request(body)
            self.events(event("command", command=request.command.value, args=request.args))
            self.handlers.handle(request, reply)
        except ProtocolError as e:
            reply(e.as_reply())
        except Exception:
            self.log(
                "internal error while serving a request (please report):\n" + traceback.format_exc(),
                level=logging.ERROR,
            )
            reply(error_reply(ErrorCode.INTERNAL, "internal error; the supervisor's log has the details"))

    def close(self) -> None:
        self.socket.close(linger=0)
