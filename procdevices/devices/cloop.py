"""The forwarding loop in C (``_mqloop.c``): found, bound to pyzmq's libzmq, and chosen.

One extension serves two loops:

- the **monitored queue's** (monitoredqueuedevice.py): pyzmq's ``monitored_queue`` with a
  control socket; its fallback where the C loop is unavailable is a Python loop;
- **every other device's** (basedevice.py): libzmq's steerable proxy, same semantics (the
  capture gets a plain copy of every frame, STATISTICS counts frames as libzmq does), at
  0.77-0.86x the CPU per 64 B message of ``zmq_proxy`` itself (scripts/bench/loop_cost.c):
  libzmq's proxy polls every socket twice per loop turn, readable or not (a PUSH out never
  is), and pays a system call per socket per poll; this loop polls once, only what can be
  readable. A device then spends half of pyzmq's device's CPU per 64 B message. Where the C loop is
  unavailable, or ``PROCDEVICES_PROXY_LOOP=libzmq``, libzmq's ``zmq_proxy_steerable`` runs.

The loop drives pyzmq's sockets through the very libzmq that made them: it resolves libzmq's
functions from the library pyzmq loaded (``_mqloop.bind``), and refuses to run when two
libzmq files are mapped into the process.
"""

from __future__ import annotations

import array
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Literal

import zmq

from procdevices.devices import drain

Socket = zmq.Socket[bytes]

# Messages relayed from one socket before the loop polls again: the control socket and the
# other direction are served at least this often, and one poll is paid per batch, not per
# message.
BATCH = 512

#: ``PROCDEVICES_PROXY_LOOP=libzmq`` in the environment of the process that runs a device
#: (other than a monitored queue) makes its loop libzmq's ``zmq_proxy_steerable``.
PROXY_LOOP_ENV = "PROCDEVICES_PROXY_LOOP"


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
        # error. libzmq's own proxy and the Python loop only ever call pyzmq's own.
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


def available() -> bool:
    return _c_loop is not None


def proxy_loop() -> Literal["c", "libzmq"]:
    """Which loop a device other than a monitored queue runs, in this process, now."""
    if _c_loop is None or os.environ.get(PROXY_LOOP_ENV) == "libzmq":
        return "libzmq"
    return "c"


def proxy_loop_text() -> str:
    """Which loop, and why not the C one: ``c``, or ``libzmq (REASON)``."""
    if proxy_loop() == "c":
        return "c"
    return f"libzmq ({PROXY_LOOP_ENV}=libzmq)" if _c_loop is not None else f"libzmq ({C_LOOP_UNAVAILABLE})"


def new_counters() -> array.array[int]:
    """Eight zeroed counters for :func:`run` (its STATISTICS answers)."""
    return array.array("Q", bytes(64))


def run(
    in_socket: Socket,
    out_socket: Socket,
    mon_socket: Socket | None,
    control: Socket | None,
    counters: array.array[int],
    *,
    prefixes: tuple[bytes, bytes] | None = None,
    swap_ids: bool = False,
) -> None:
    """Run the C loop until TERMINATE (returns) or an error of libzmq (raises its
    ``zmq.ZMQError``). ``prefixes``: the monitored queue's, sent before each copy to
    ``mon_socket``; None: libzmq's capture (plain copies)."""
    assert _c_loop is not None
    handles = [sock.underlying if sock is not None else 0 for sock in (in_socket, out_socket, mon_socket, control)]
    in_prefix, out_prefix = prefixes if prefixes is not None else (b"", b"")
    # Python's signal handlers only ever run in the main thread: elsewhere the loop need not
    # take the GIL to look for them.
    in_main_thread = threading.current_thread() is threading.main_thread()
    # An out socket that can never be readable (PUSH, PUB) is not polled: each poll of an
    # idle socket is a system call (scripts/bench/loop_cost.c).
    poll_out = drain.receives(int(out_socket.getsockopt(zmq.TYPE)))
    errno = _c_loop.run(
        *handles,
        in_prefix,
        out_prefix,
        swap_ids,
        BATCH,
        counters,
        in_main_thread,
        prefixes is None,
        poll_out,
    )
    if errno:
        raise {zmq.EAGAIN: zmq.Again, zmq.ETERM: zmq.ContextTerminated}.get(errno, zmq.ZMQError)(errno)
