"""The pipe between a device process and its launcher: a job one way, a ready report the other.

multiprocessing's ``Connection`` would do, but a spawned device that unpickles one imports
``multiprocessing.connection``, and with it ``tempfile``, ``shutil``, ``bz2``, ``lzma`` and
``zlib``: ~0.5 MiB of private memory in every device process, which pyzmq's own device does
not pay (docs/performance.md). A device needs a tenth of it: pickled objects, framed, over one
end of a socketpair; and, for a warm worker, the listening descriptors that follow its job
(inherit.py).

The framing is ``Connection``'s (a 4-byte big-endian signed length, then the bytes; -1 and an
8-byte length for 2 GiB and more), so either end may be read by a ``Connection`` while
debugging; nothing here relies on that.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from multiprocessing import reduction
from typing import Any

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_BIG = 0x7FFFFFFF


class Channel:
    """One end of a launcher-device pipe (a stream socketpair)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        a, b = socket.socketpair()
        return cls(a), cls(b)

    def fileno(self) -> int:
        """For ``multiprocessing.connection.wait`` and ``select``; -1 once closed."""
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        self.sock.close()

    def send(self, obj: object) -> None:
        """Send one object; OSError (EPIPE, ECONNRESET) when the other end is gone."""
        data = pickle.dumps(obj)
        n = len(data)
        header = _SHORT.pack(n) if n <= _BIG else _SHORT.pack(-1) + _LONG.pack(n)
        # One sendall for a small message: the reader never wakes for a header alone.
        self.sock.sendall(header + data if n < 65536 else header)
        if n >= 65536:
            self.sock.sendall(data)

    def recv(self) -> Any:
        """The next object; EOFError when the other end closed first."""
        (n,) = _SHORT.unpack(self._exactly(_SHORT.size))
        if n == -1:
            (n,) = _LONG.unpack(self._exactly(_LONG.size))
        return pickle.loads(self._exactly(n))

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message (or EOF) is waiting."""
        import select  # the launcher's side only: a device never polls

        # poll, not select: a supervisor of many devices has descriptors past FD_SETSIZE.
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def send_fds(self, fds: list[int]) -> None:
        """Descriptors in one SCM_RIGHTS message (the receiver gets its own duplicates)."""
        socket.send_fds(self.sock, [b"F"], fds)

    def recv_fds(self, count: int) -> list[int]:
        """The descriptors of one :meth:`send_fds`; EOFError if fewer than ``count`` came."""
        _, fds, flags, _ = socket.recv_fds(self.sock, 1, count)
        if flags & socket.MSG_CTRUNC or len(fds) != count:
            for fd in fds:
                _close_quietly(fd)
            raise EOFError(f"expected {count} descriptors, got {len(fds)}")
        return fds

    def _exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise EOFError("the other end of the channel closed")
            got += k
        return bytes(buf)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        # Pickled into a process being started (spawn's pass_fds, the fork server's descriptor
        # passing): the child gets a duplicate of this end.
        return _rebuild, (reduction.DupFd(self.sock.fileno()),)


def _rebuild(duplicate: Any) -> Channel:
    return Channel(socket.socket(fileno=duplicate.detach()))


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
