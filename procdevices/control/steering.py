"""Talking to libzmq's steerable proxy through its control socket.

Every forwarding device runs ``zmq_proxy_steerable``, or a C loop that speaks its protocol
(devices/cloop.py), with a REP control socket on an inproc address; the device's control loop holds the DEALER peer (:class:`ProxySteering`), and never
waits on it: a loop blocked by backpressure must not silence the control loop. REP is
chosen on purpose: libzmq 4.3.5 answers every command on any socket type while libzmq master
answers only on REP, so with REP both answer, and the envelope the DEALER adds is stripped
before libzmq reads the command (a multi-frame command would kill the proxy).

libzmq 4.3.5 swaps PAUSE and RESUME (fixed on master only). Which command really pauses is
measured once per process by :func:`pause_commands` on a throw-away proxy, instead of being
guessed from a version number.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import zmq

from procdevices.control.protocol import DeviceStats
from procdevices.errors import ControlTimeout, UnsupportedOperation

PAUSE = b"PAUSE"
RESUME = b"RESUME"
TERMINATE = b"TERMINATE"
STATISTICS = b"STATISTICS"


def decode_statistics(frames: list[bytes]) -> DeviceStats:
    """libzmq sends eight native-endian uint64 frames."""
    return DeviceStats.from_counters(_counters(frames))


def _counters(frames: list[bytes]) -> list[int]:
    return [struct.unpack("=Q", f)[0] for f in frames]


def _encode_counters(values: list[int], carried: tuple[int, ...]) -> list[bytes]:
    return [struct.pack("=Q", (v + c) & 0xFFFFFFFFFFFFFFFF) for v, c in zip(values, carried, strict=True)]


class _Outstanding(NamedTuple):
    command: bytes
    sent_at: float
    on_reply: Callable[[list[bytes]], None] | None


class ProxySteering:
    """The control loop's end of the proxy's control socket, never blocking on the loop.

    Commands are sent without waiting; libzmq's REP answers them one at a time, in order, so
    each reply is matched to the oldest outstanding command. The control loop polls
    :attr:`socket` and calls :meth:`collect` when it is readable. While the forwarding loop is
    blocked (a send waiting on a full peer) its replies simply stay outstanding:
    :meth:`unanswered_since` says since when.
    """

    # A loop that answers nothing while commands pile up is blocked: more would only fill
    # the pipe towards it. Send fails (returns False) beyond this many.
    MAX_OUTSTANDING = 64

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(endpoint)
        self._clock = clock
        self._outstanding: deque[_Outstanding] = deque()
        self.last_statistics: DeviceStats | None = None
        self.last_answer_at: float | None = None
        # The counters of the loop's earlier runs (a capture switch leaves the proxy and
        # enters it again, and libzmq's counters start at zero on every entry): added to every
        # STATISTICS answer, so that the totals never go backwards.
        self.carried: tuple[int, ...] | None = None

    def close(self) -> None:
        self.socket.close(linger=0)

    def send(self, command: bytes, on_reply: Callable[[list[bytes]], None] | None = None) -> bool:
        """Queue ``command`` for the loop; ``on_reply(frames)`` runs when its answer comes."""
        if len(self._outstanding) >= self.MAX_OUTSTANDING:
            return False
        try:
            self.socket.send_multipart([b"", command], zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._outstanding.append(_Outstanding(command, self._clock(), on_reply))
        return True

    def collect(self) -> int:
        """Read every reply that has arrived and run its callback; returns how many."""
        count = 0
        while self._outstanding:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            entry = self._outstanding.popleft()
            count += 1
            self.last_answer_at = self._clock()
            reply = frames[1:]
            if entry.command == STATISTICS and len(reply) == 8:
                if self.carried is not None:
                    reply = _encode_counters(_counters(reply), self.carried)
                self.last_statistics = decode_statistics(reply)
            if entry.on_reply is not None:
                entry.on_reply(reply)
        return count

    def unanswered_since(self) -> float | None:
        """When the oldest command still waiting for the loop was sent; None if none waits."""
        return self._outstanding[0].sent_at if self._outstanding else None

    def room(self) -> int:
        """How many more commands :meth:`send` takes now."""
        return self.MAX_OUTSTANDING - len(self._outstanding)

    def waiting_for(self, command: bytes) -> bool:
        return any(entry.command == command for entry in self._outstanding)

    def call(self, command: bytes, timeout: float) -> list[bytes]:
        """Send ``command`` and wait for its answer (only for private proxies, never for the
        device's own loop: the control loop must not block)."""
        answer: list[list[bytes]] = []
        if not self.send(command, answer.append):
            raise ControlTimeout(f"the forwarding loop is not taking commands ({command.decode()})")
        deadline = self._clock() + timeout
        while not answer:
            remaining = deadline - self._clock()
            if remaining <= 0 or not self.socket.poll(max(1, int(remaining * 1000))):
                raise ControlTimeout(f"the forwarding loop did not answer {command.decode()} within {timeout:.3g}s")
            self.collect()
        return answer[0]

    def statistics(self, timeout: float) -> DeviceStats:
        return decode_statistics(self.call(STATISTICS, timeout))

    def carry(self, frames: list[bytes]) -> None:
        """Carry a STATISTICS answer (``carried`` included) into the loop's next run."""
        if len(frames) == 8:
            self.carried = tuple(_counters(frames))


class CaptureSwitch:
    """Whether the forwarding loop runs with its tap's capture socket (tapsocket.py).

    libzmq's proxy copies every frame to its capture socket, ~15-20 % of its own work per
    small message even when nobody reads the copy, and it takes the capture socket only when
    it starts. So the loop runs without it while no tap reader is connected: the control loop
    counts the readers from the capture socket's monitor events (``monitor``, a PAIR only the
    control loop reads), and when the wanted state differs it leaves the proxy (PAUSE,
    STATISTICS carried over, TERMINATE); the worker enters it again on the same sockets, with
    or without the capture. Messages queued in the sockets stay there.

    Written by one thread each: ``readers`` and ``requested`` by the control loop,
    ``capturing`` and ``taken`` by the worker. Every TERMINATE the control loop sends for a
    switch bumps ``requested``; the worker enters the proxy again once for each
    (``switch_asked``), and returns for any other TERMINATE (a stop).
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

    def __init__(self, monitor: zmq.Socket[bytes]) -> None:
        self.monitor = monitor
        self.readers = 0
        self.capturing = False
        self.requested = 0
        self.taken = 0

    @property
    def wanted(self) -> bool:
        return self.readers > 0

    @property
    def settled(self) -> bool:
        """The worker has entered the proxy again after every switch asked for."""
        return self.taken == self.requested

    def read_events(self) -> None:
        """Count the tap's readers from the monitor's events (never blocks)."""
        while True:
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = struct.unpack("=H", frames[0][:2])[0] if frames and len(frames[0]) >= 2 else 0
            if event == zmq.EVENT_ACCEPTED:
                self.readers += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self.readers = max(0, self.readers - 1)

    def entering(self, capturing: bool, switched: bool) -> None:
        """In the worker, as it enters the proxy: with the capture or not, and whether after
        a switch (then counted taken, after ``capturing`` is set: the control loop compares
        the two once the switch is settled)."""
        self.capturing = capturing
        if switched:
            self.taken += 1

    def switch_asked(self) -> bool:
        """In the worker, after the proxy returned: whether that was a switch's TERMINATE."""
        return self.taken < self.requested


class PauseCommands(NamedTuple):
    pause: bytes
    resume: bytes


_probe_lock = threading.Lock()
_probed: PauseCommands | None = None


def pause_commands() -> PauseCommands:
    """The commands that really pause and resume this process's libzmq proxy (cached).

    The probe runs in a context of its own, never the device's: a caller may terminate the
    device's context at any moment, and the probe's proxy thread must not be caught in it."""
    global _probed
    with _probe_lock:
        if _probed is None:
            with zmq.Context() as ctx:
                _probed = _probe_pause_commands(ctx)
        return _probed


def _probe_pause_commands(ctx: zmq.Context[zmq.Socket[bytes]]) -> PauseCommands:
    if _command_pauses(ctx, PAUSE):
        return PauseCommands(pause=PAUSE, resume=RESUME)
    if _command_pauses(ctx, RESUME):
        return PauseCommands(pause=RESUME, resume=PAUSE)
    raise UnsupportedOperation(f"libzmq {zmq.zmq_version()}: neither PAUSE nor RESUME pauses the steerable proxy")


def _command_pauses(ctx: zmq.Context[zmq.Socket[bytes]], command: bytes) -> bool:
    """Send ``command`` to a private proxy, then one message, and see whether it was forwarded.

    Deterministic, no timing: the message is queued before the first STATISTICS request, so
    by the time a second STATISTICS is answered an active proxy has had a full loop
    iteration in which the message was readable, and has forwarded it.
    """
    # A random name, not uuid: the device process does without that module (test_device_imports).
    base = f"inproc://procdevices-probe-{os.urandom(16).hex()}"
    sockets: list[zmq.Socket[bytes]] = []

    def pair(kind: int, name: str, bind: bool) -> zmq.Socket[bytes]:
        s: zmq.Socket[bytes] = ctx.socket(kind)
        s.linger = 0
        sockets.append(s)
        (s.bind if bind else s.connect)(f"{base}-{name}")
        return s

    front = pair(zmq.PAIR, "front", True)
    back = pair(zmq.PAIR, "back", True)
    control = pair(zmq.REP, "ctrl", True)
    sender = pair(zmq.PAIR, "front", False)
    pair(zmq.PAIR, "back", False)
    proxy = threading.Thread(target=zmq.proxy_steerable, args=(front, back, None, control), daemon=True)
    proxy.start()
    steering = ProxySteering(ctx, f"{base}-ctrl")
    try:
        steering.call(command, timeout=5.0)
        sender.send(b"probe")
        steering.statistics(timeout=5.0)
        forwarded = steering.statistics(timeout=5.0).front_msgs_in
        steering.call(TERMINATE, timeout=5.0)
        proxy.join(5.0)
        return forwarded == 0
    finally:
        steering.close()
        for s in sockets:
            s.close(linger=0)
