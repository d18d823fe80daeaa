"""Talking to libzmq's steerable proxy through its control socket.

Every forwarding device runs ``zmq_proxy_steerable`` with a REP control socket on an inproc
address; the device's control loop holds the DEALER peer (:class:`ProxySteering`). REP is
chosen on purpose: libzmq 4.3.5 answers every command on any socket type while libzmq master
answers only on REP, so with REP both answer, and the envelope the DEALER adds is stripped
before libzmq reads the command (a multi-frame command would kill the proxy).

libzmq 4.3.5 swaps PAUSE and RESUME (fixed on master only). Which command really pauses is
measured once per process by :func:`pause_commands` on a throw-away proxy, instead of being
guessed from a version number.
"""

from __future__ import annotations

import struct
import threading
import uuid
from dataclasses import dataclass

import zmq

from procdevices.control.protocol import DeviceStats
from procdevices.errors import ControlTimeout, UnsupportedOperation

PAUSE = b"PAUSE"
RESUME = b"RESUME"
TERMINATE = b"TERMINATE"
STATISTICS = b"STATISTICS"


def decode_statistics(frames: list[bytes]) -> DeviceStats:
    """libzmq sends eight native-endian uint64 frames."""
    return DeviceStats.from_counters([struct.unpack("=Q", f)[0] for f in frames])


class ProxySteering:
    """The control loop's end of the proxy's control socket.

    Strictly one command in flight. When a reply is late, the command is remembered as
    pending and its reply is discarded before the next command, so answers never shift.
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self._socket: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self._socket.linger = 0
        self._socket.connect(endpoint)
        self._pending = 0

    def close(self) -> None:
        self._socket.close(linger=0)

    def request(self, command: bytes, timeout: float) -> list[bytes]:
        timeout_ms = max(1, int(timeout * 1000))
        while self._pending:
            if not self._socket.poll(timeout_ms):
                raise ControlTimeout(f"the forwarding loop has not answered {self._pending} earlier command(s)")
            self._socket.recv_multipart()
            self._pending -= 1
        self._socket.send_multipart([b"", command])
        if not self._socket.poll(timeout_ms):
            self._pending += 1
            raise ControlTimeout(f"the forwarding loop did not answer {command.decode()} within {timeout:.3g}s")
        return self._socket.recv_multipart()[1:]

    def statistics(self, timeout: float) -> DeviceStats:
        return decode_statistics(self.request(STATISTICS, timeout))


@dataclass(frozen=True)
class PauseCommands:
    pause: bytes
    resume: bytes


_probe_lock = threading.Lock()
_probed: PauseCommands | None = None


def pause_commands(ctx: zmq.Context[zmq.Socket[bytes]]) -> PauseCommands:
    """The commands that really pause and resume this process's libzmq proxy (cached)."""
    global _probed
    with _probe_lock:
        if _probed is None:
            _probed = _probe_pause_commands(ctx)
        return _probed


def _probe_pause_commands(ctx: zmq.Context[zmq.Socket[bytes]]) -> PauseCommands:
    if _command_pauses(ctx, PAUSE):
        return PauseCommands(pause=PAUSE, resume=RESUME)
    if _command_pauses(ctx, RESUME):
        return PauseCommands(pause=RESUME, resume=PAUSE)
    raise UnsupportedOperation(
        f"libzmq {zmq.zmq_version()}: neither PAUSE nor RESUME pauses the steerable proxy"
    )


def _command_pauses(ctx: zmq.Context[zmq.Socket[bytes]], command: bytes) -> bool:
    """Send ``command`` to a private proxy, then one message, and see whether it was forwarded.

    Deterministic, no timing: the message is queued before the first STATISTICS request, so
    by the time a second STATISTICS is answered an active proxy has had a full loop
    iteration in which the message was readable, and has forwarded it.
    """
    base = f"inproc://procdevices-probe-{uuid.uuid4().hex}"
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
    proxy = threading.Thread(
        target=zmq.proxy_steerable, args=(front, back, None, control), daemon=True
    )
    proxy.start()
    steering = ProxySteering(ctx, f"{base}-ctrl")
    try:
        steering.request(command, timeout=5.0)
        sender.send(b"probe")
        steering.statistics(timeout=5.0)
        forwarded = steering.statistics(timeout=5.0).front_msgs_in
        steering.request(TERMINATE, timeout=5.0)
        proxy.join(5.0)
        return forwarded == 0
    finally:
        steering.close()
        for s in sockets:
            s.close(linger=0)
