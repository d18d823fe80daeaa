"""MonitoredQueue and its Thread/Process forms (pyzmq API), steerable like every device.

libzmq has no monitored queue and pyzmq's (Cython) ``monitored_queue`` takes no control
socket: it could only be stopped by terminating its context, and never paused or counted.
So these devices forward with :func:`monitored_queue_steerable`, a loop with pyzmq's exact
semantics (a ``prefix + message`` copy of every message to the monitor, the first two frames
swapped when both sides are ROUTER) that also serves libzmq's steerable-proxy control
protocol (PAUSE, RESUME, TERMINATE, STATISTICS) on the runtime's control socket.

The loop exists twice, with the same behaviour: in C (``_mqloop.c``, built at install when a
C compiler is there; it runs with the GIL released, on the libzmq that pyzmq loaded) and in
Python, the fallback. :func:`monitored_queue_loop` says which one runs; the environment
variable ``PROCDEVICES_MQ_LOOP=python`` forces the Python loop. The Python loop costs about a
microsecond of CPU more per message than pyzmq's C loop (docs/performance.md has the figures).
"""

from __future__ import annotations

import array
import os
import struct
from typing import Any, ClassVar, Literal

import zmq

from procdevices.control import steering as steer
from procdevices.devices import cloop

# Re-exported: what `--version` and the tests ask of the monitored queue's loop.
from procdevices.devices.cloop import C_LOOP_LIBZMQ as C_LOOP_LIBZMQ
from procdevices.devices.cloop import C_LOOP_UNAVAILABLE as C_LOOP_UNAVAILABLE
from procdevices.devices.proxydevice import ProcessProxy, Proxy, ProxyBase, ThreadProxy

Socket = zmq.Socket[bytes]

_STATISTICS = struct.Struct("=8Q")

#: ``PROCDEVICES_MQ_LOOP=python`` in the environment of the process that runs the loop makes
#: it the Python loop, even where the C loop is available.
LOOP_ENV = "PROCDEVICES_MQ_LOOP"


def monitored_queue_loop() -> Literal["c", "python"]:
    """Which loop :func:`monitored_queue_steerable` runs, in this process, now: ``"c"``
    when the C extension was built and found pyzmq's libzmq, unless ``PROCDEVICES_MQ_LOOP``
    is ``python``; else ``"python"``."""
    if not cloop.available() or os.environ.get(LOOP_ENV) == "python":
        return "python"
    return "c"


def loop_text() -> str:
    """Which loop, and why not the C one: ``c``, or ``python (REASON)``."""
    return "c" if monitored_queue_loop() == "c" else f"python ({_why_python()})"


def _why_python() -> str:
    return f"{LOOP_ENV}=python" if cloop.available() else str(C_LOOP_UNAVAILABLE)


#: Eight zeroed counters for :func:`monitored_queue_steerable` (its STATISTICS).
new_counters = cloop.new_counters


def monitored_queue_steerable(
    in_socket: Socket,
    out_socket: Socket,
    mon_socket: Socket | None,
    control: Socket | None,
    in_prefix: bytes = b"in",
    out_prefix: bytes = b"out",
    *,
    counters: array.array[int] | None = None,
) -> None:
    """pyzmq's ``monitored_queue`` with libzmq's steerable control protocol on ``control``.

    Returns on TERMINATE. PAUSE stops reading in and out (messages wait in their queues),
    RESUME reads again: unlike libzmq 4.3.5's proxy, never swapped. STATISTICS answers
    libzmq's eight counters (frames and bytes in and out of the frontend, then the backend).
    Every other command gets one empty frame, as from libzmq.

    ``counters`` (from :func:`new_counters`) are the ones STATISTICS answers, added to as
    messages are relayed; passed in, they outlive the call, even one ended by an exception
    (a signal handler's). Errors of libzmq raise ``zmq.ZMQError``.
    """
    if counters is None:
        counters = new_counters()
    elif counters.typecode != "Q" or len(counters) != 8:
        raise ValueError("counters: an array('Q') of 8, from new_counters()")
    for sock in (in_socket, out_socket, mon_socket, control):
        if sock is not None and sock.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)  # as pyzmq's own calls on a closed socket
    swap_ids = in_socket.type == zmq.ROUTER and out_socket.type == zmq.ROUTER
    if monitored_queue_loop() == "c":
        cloop.run(
            in_socket, out_socket, mon_socket, control, counters, prefixes=(in_prefix, out_prefix), swap_ids=swap_ids
        )
    else:
        _run_python_loop(in_socket, out_socket, mon_socket, control, in_prefix, out_prefix, swap_ids, counters)


def _run_python_loop(
    in_socket: Socket,
    out_socket: Socket,
    mon_socket: Socket | None,
    control: Socket | None,
    in_prefix: bytes,
    out_prefix: bytes,
    swap_ids: bool,
    counters: array.array[int],
) -> None:
    # frontend msgs in, bytes in, msgs out, bytes out; then the same for the backend
    sides = [(in_socket, out_socket, in_prefix, 0, 6)]
    if out_socket is not in_socket:
        sides.append((out_socket, in_socket, out_prefix, 4, 2))
    active = zmq.Poller()
    for source, *_ in sides:
        active.register(source, zmq.POLLIN)
    idle = zmq.Poller()
    if control is not None:
        active.register(control, zmq.POLLIN)
        idle.register(control, zmq.POLLIN)
    poller = active
    while True:
        ready = dict(poller.poll())
        if control is not None and control in ready:
            command = control.recv_multipart()[-1]
            if command == steer.TERMINATE:
                control.send(b"")
                return
            if command == steer.STATISTICS:
                control.send_multipart(_frames(counters))
                continue
            if command == steer.PAUSE:
                poller = idle
            elif command == steer.RESUME:
                poller = active
            control.send(b"")
            if poller is idle:
                continue
        for source, target, prefix, src_at, dst_at in sides:
            if source in ready:
                _relay(source, target, mon_socket, prefix, swap_ids, counters, src_at, dst_at)


def _relay(
    source: Socket,
    target: Socket,
    mon_socket: Socket | None,
    prefix: bytes,
    swap_ids: bool,
    counters: array.array[int],
    src_at: int,
    dst_at: int,
) -> None:
    """Forward up to cloop.BATCH messages from ``source``. Written with the sockets' own recv, get
    and send rather than recv_multipart/send_multipart: those are Python loops with checks,
    and this is the per-message path (it roughly halves the Python work per message)."""
    recv, more, send = source.recv, source.get, target.send
    mon_send = mon_socket.send if mon_socket is not None else None
    noblock, sndmore, rcvmore, again = zmq.NOBLOCK, zmq.SNDMORE, zmq.RCVMORE, zmq.Again
    frames = size = 0
    try:
        for _ in range(cloop.BATCH):
            try:
                msg = [recv(noblock)]
            except again:
                break
            # A multipart message arrives whole: its other frames are already here.
            while more(rcvmore):
                msg.append(recv(noblock))
            if swap_ids:
                msg[0], msg[1] = msg[1], msg[0]
            last = msg.pop()
            # The copy first, as pyzmq's loop starts with the prefix: once a peer has the
            # message, the monitor has its copy (an observer never sees them reordered).
            if mon_send is not None:
                mon_send(prefix, sndmore)
                for frame in msg:
                    mon_send(frame, sndmore)
                mon_send(last)
            message_size = len(last)
            for frame in msg:
                send(frame, sndmore)
                message_size += len(frame)
            # Counted before its last frame goes: a signal handler's exception can end the
            # loop at any point, and once a peer may have the message it must be counted.
            frames += len(msg) + 1
            size += message_size
            send(last)
    finally:
        counters[src_at] += frames
        counters[src_at + 1] += size
        counters[dst_at] += frames
        counters[dst_at + 1] += size


def _frames(counters: array.array[int]) -> list[bytes]:
    packed = _STATISTICS.pack(*counters)
    return [packed[i : i + 8] for i in range(0, 64, 8)]


class MonitoredQueueBase(ProxyBase):
    """Prefixes monitor copies with ``in_prefix`` or ``out_prefix`` by direction."""

    steerable: ClassVar[bool] = True
    # Its tap shares the mon socket, whose prefixed copy pyzmq's semantics make anyway: no
    # copy of the tap's own to switch off, and its loop is never re-entered.
    _switches_capture = False
    _in_prefix = b""
    _out_prefix = b""

    def __init__(
        self, in_type: int, out_type: int, mon_type: int = zmq.PUB, in_prefix: bytes = b"in", out_prefix: bytes = b"out"
    ) -> None:
        for name, prefix in (("in_prefix", in_prefix), ("out_prefix", out_prefix)):
            if not isinstance(prefix, bytes):
                raise TypeError(f"{name} must be bytes, not {type(prefix).__name__}")
        ProxyBase.__init__(self, in_type=in_type, out_type=out_type, mon_type=mon_type)
        self._in_prefix = in_prefix
        self._out_prefix = out_prefix

    def _describe(self) -> dict[str, Any]:
        loop = monitored_queue_loop()
        return {**ProxyBase._describe(self), "mq_loop": loop, "loop": loop}

    def _forward(self, ins: Socket, outs: Socket, mons: Socket | None) -> None:
        if monitored_queue_loop() == "python":
            # Not silent: the Python loop forwards at about 0.64x the C loop's rate.
            import logging  # here: the device process imports logging only to say this

            logging.getLogger("procdevices").warning(
                "monitored queue: running the slower Python loop (%s)", _why_python()
            )
        runtime = self._runtime
        control = runtime.proxy_control if runtime is not None else None
        monitored_queue_steerable(ins, outs, mons, control, self._in_prefix, self._out_prefix)

    def _tap_directions(self) -> tuple[str, bytes, bytes]:
        # The tap shares the mon socket, whose copies start with the direction's prefix.
        return "prefixed", self._in_prefix, self._out_prefix

    def _pause_commands(self) -> steer.PauseCommands | None:
        # Our own loop: PAUSE pauses, whatever libzmq's proxy does with it.
        return steer.PauseCommands(pause=steer.PAUSE, resume=steer.RESUME)

    def _relay_at_stop(self, source: Socket, frames: list[bytes]) -> list[bytes]:
        """What the drain at stop sends for ``frames`` read from ``source``: the same as the
        loop (ids swapped, a prefixed copy to the monitor)."""
        ins = self._role_sockets.get("in")
        outs = self._role_sockets.get("out")
        mons = self._role_sockets.get("mon")
        if ins is not None and outs is not None and ins.type == zmq.ROUTER and outs.type == zmq.ROUTER:
            frames[0], frames[1] = frames[1], frames[0]
        if mons is not None:
            prefix = self._in_prefix if source is ins else self._out_prefix
            mons.send_multipart([prefix, *frames])
        return frames


class MonitoredQueue(MonitoredQueueBase, Proxy):
    """Run a monitored queue: like Proxy, but monitor copies carry a direction prefix, and
    ROUTER on both sides is supported (routing ids are swapped)."""


class ThreadMonitoredQueue(MonitoredQueueBase, ThreadProxy):
    """Run a monitored queue in a background thread."""


class ProcessMonitoredQueue(MonitoredQueueBase, ProcessProxy):
    """Run a monitored queue in a spawned process."""


__all__ = [
    "MonitoredQueue",
    "ThreadMonitoredQueue",
    "ProcessMonitoredQueue",
    "monitored_queue_steerable",
    "monitored_queue_loop",
    "new_counters",
]
