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
import logging
import os
import struct
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar, Literal

import zmq

from procdevices.control import steering as steer
from procdevices.devices.proxydevice import ProcessProxy, Proxy, ProxyBase, ThreadProxy

Socket = zmq.Socket[bytes]

# Messages relayed from one socket before the loop polls again: the control socket and the
# other direction are served at least this often, and one poll is paid per batch, not per
# message.
BATCH = 512

_STATISTICS = struct.Struct("=8Q")

#: ``PROCDEVICES_MQ_LOOP=python`` in the environment of the process that runs the loop makes
#: it the Python loop, even where the C loop is available.
LOOP_ENV = "PROCDEVICES_MQ_LOOP"


def _mapped_libzmqs(maps: str = "/proc/self/maps") -> list[str]:
    """The libzmq files mapped into this process (from ``maps``, a /proc/PID/maps file),
    sorted; [] where that file cannot be read."""
    try:
        with open(maps) as lines:
            mapped = {fields[5].strip() for fields in (line.split(maxsplit=5) for line in lines) if len(fields) == 6}
    except OSError:
        return []
    return sorted(path for path in mapped if os.path.basename(path).startswith("libzmq"))


def _distinct_files(paths: list[str]) -> list[str]:
    """``paths`` less those naming a file already named (same device and inode: a hard link,
    a symbolic link), first name kept; a path that cannot be stat'ed counts as distinct."""
    seen: set[tuple[int, int] | str] = set()
    distinct = []
    for path in paths:
        try:
            stat = os.stat(path)
            key: tuple[int, int] | str = (stat.st_dev, stat.st_ino)
        except OSError:
            key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            distinct.append(path)
    return distinct


def _libzmq_candidates(mapped: list[str]) -> Iterator[str]:
    """Where pyzmq's libzmq may be found, best first: pyzmq's backend extension (dlsym on it
    searches its dependencies, the libzmq it was linked with, bundled or the system's), then
    every libzmq ``mapped`` into this process."""
    backend = sys.modules.get(zmq.backend.Socket.__module__)
    backend_file = getattr(backend, "__file__", None)
    if backend_file:
        yield backend_file
    yield from mapped


def _load_c_loop(maps: str = "/proc/self/maps") -> tuple[ModuleType | None, str]:
    """The C loop bound to pyzmq's libzmq and the file of that libzmq; or None and why not."""
    try:
        from procdevices.devices import _mqloop
    except ImportError as e:
        return None, f"the extension procdevices.devices._mqloop is not built ({e})"
    mapped = _mapped_libzmqs(maps)
    distinct = _distinct_files(mapped)
    if len(distinct) > 1:
        # Two libzmqs in one process (a second copy loaded by another extension or by
        # ctypes): dlsym could resolve the loop's calls in one while pyzmq's sockets live in
        # the other, and a socket handed to the wrong libzmq is memory corruption, not an
        # error. The Python loop only ever calls pyzmq's own.
        return None, f"{len(distinct)} distinct libzmq files are mapped ({', '.join(distinct)})"
    wanted = zmq.zmq_version_info()
    errors = []
    for path in _libzmq_candidates(mapped):
        try:
            libzmq, version = _mqloop.bind(path)
        except (OSError, RuntimeError) as e:
            errors.append(str(e))
            continue
        if version != wanted:
            return None, f"{libzmq} is libzmq {version}, pyzmq runs {wanted}"
        return _mqloop, os.path.realpath(libzmq)
    return None, "pyzmq's libzmq was not found: " + ("; ".join(errors) or "no candidate")


_c_loop, _c_loop_about = _load_c_loop()
#: The libzmq file the C loop drives (the one pyzmq loaded), or None: the C loop is unavailable.
C_LOOP_LIBZMQ: str | None = _c_loop_about if _c_loop is not None else None
#: Why the C loop is unavailable, or None.
C_LOOP_UNAVAILABLE: str | None = None if _c_loop is not None else _c_loop_about


def monitored_queue_loop() -> Literal["c", "python"]:
    """Which loop :func:`monitored_queue_steerable` runs, in this process, now: ``"c"``
    when the C extension was built and found pyzmq's libzmq, unless ``PROCDEVICES_MQ_LOOP``
    is ``python``; else ``"python"``."""
    if _c_loop is None or os.environ.get(LOOP_ENV) == "python":
        return "python"
    return "c"


def loop_text() -> str:
    """Which loop, and why not the C one: ``c``, or ``python (REASON)``."""
    return "c" if monitored_queue_loop() == "c" else f"python ({_why_python()})"


def _why_python() -> str:
    return f"{LOOP_ENV}=python" if _c_loop is not None else str(C_LOOP_UNAVAILABLE)


def new_counters() -> array.array[int]:
    """Eight zeroed counters for :func:`monitored_queue_steerable` (its STATISTICS)."""
    return array.array("Q", bytes(_STATISTICS.size))


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
        _run_c_loop(in_socket, out_socket, mon_socket, control, in_prefix, out_prefix, swap_ids, counters)
    else:
        _run_python_loop(in_socket, out_socket, mon_socket, control, in_prefix, out_prefix, swap_ids, counters)


def _run_c_loop(
    in_socket: Socket,
    out_socket: Socket,
    mon_socket: Socket | None,
    control: Socket | None,
    in_prefix: bytes,
    out_prefix: bytes,
    swap_ids: bool,
    counters: array.array[int],
) -> None:
    assert _c_loop is not None
    handles = [sock.underlying if sock is not None else 0 for sock in (in_socket, out_socket, mon_socket, control)]
    # Python's signal handlers only ever run in the main thread: elsewhere the loop need not
    # take the GIL to look for them.
    in_main_thread = threading.current_thread() is threading.main_thread()
    errno = _c_loop.run(*handles, in_prefix, out_prefix, swap_ids, BATCH, counters, in_main_thread)
    if errno:
        raise {zmq.EAGAIN: zmq.Again, zmq.ETERM: zmq.ContextTerminated}.get(errno, zmq.ZMQError)(errno)


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
    """Forward up to BATCH messages from ``source``. Written with the sockets' own recv, get
    and send rather than recv_multipart/send_multipart: those are Python loops with checks,
    and this is the per-message path (it roughly halves the Python work per message)."""
    recv, more, send = source.recv, source.get, target.send
    mon_send = mon_socket.send if mon_socket is not None else None
    noblock, sndmore, rcvmore, again = zmq.NOBLOCK, zmq.SNDMORE, zmq.RCVMORE, zmq.Again
    frames = size = 0
    try:
        for _ in range(BATCH):
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
        return {**ProxyBase._describe(self), "mq_loop": monitored_queue_loop()}

    def _forward(self, ins: Socket, outs: Socket, mons: Socket | None) -> None:
        if monitored_queue_loop() == "python":
            # Not silent: the Python loop forwards at about 0.64x the C loop's rate.
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
