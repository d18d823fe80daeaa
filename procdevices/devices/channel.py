"""The pipe between a device process and its launcher: a job one way, a ready report the other.

multiprocessing's ``Connection`` would do, but a spawned device that unpickles one imports
``multiprocessing.connection``, and with it ``tempfile``, ``shutil``, ``bz2``, ``lzma`` and
``zlib``: ~0.5 MiB of private memory in every device process, which pyzmq's own device does
not pay (docs/performance.md). A device needs a tenth of it: pickled objects, framed, over one
end of a socketpair; and, for a warm worker, the listening descriptors that follow its job
(inherit.py).

An end is a bare descriptor read and written with ``os``: a device process that only reads its
job and reports ready never imports ``socket`` (its enum classes, ``selectors``: ~4 ms of CPU
per device). ``socket`` comes in for making a pair and for passing descriptors, which only the
launcher and a warm worker do.

The framing is ``Connection``'s (a 4-byte big-endian signed length, then the bytes; -1 and an
8-byte length for 2 GiB and more), so either end may be read by a ``Connection`` while
debugging; nothing here relies on that.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_BIG = 0x7FFFFFFF


class Channel:
    """One end of a launcher-device pipe (a stream socketpair), which it owns."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        import socket  # the launcher's side

        a, b = socket.socketpair()
        return cls(a.detach()), cls(b.detach())

    @classmethod
    def to_child(cls, start: Callable[[Channel], T]) -> tuple[T, Channel]:
        """A new pair, one end for a process being started: ``start(child_end)`` starts it (the
        child gets its own duplicate, so this end is closed here either way); what ``start``
        returned, and the other end, closed too when the start failed."""
        parent_end, child_end = cls.pair()
        try:
            started = start(child_end)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        return started, parent_end

    def fileno(self) -> int:
        """For ``multiprocessing.connection.wait`` and ``select``; -1 once closed."""
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def send(self, obj: object) -> None:
        """Send one object; OSError (EPIPE, ECONNRESET) when the other end is gone."""
        data = pickle.dumps(obj)
        n = len(data)
        header = _SHORT.pack(n) if n <= _BIG else _SHORT.pack(-1) + _LONG.pack(n)
        # One write for a small message: the reader never wakes for a header alone.
        if n < 65536:
            self._write_all(header + data)
        else:
            self._write_all(header)
            self._write_all(data)

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
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def send_fds(self, fds: list[int]) -> None:
        """Descriptors in one SCM_RIGHTS message (the receiver gets its own duplicates)."""
        import socket

        with socket.socket(fileno=os.dup(self.fd)) as sock:
            socket.send_fds(sock, [b"F"], fds)

    def recv_fds(self, count: int) -> list[int]:
        """The descriptors of one :meth:`send_fds`; EOFError if fewer than ``count`` came."""
        import socket

        with socket.socket(fileno=os.dup(self.fd)) as sock:
            _, fds, flags, _ = socket.recv_fds(sock, 1, count)
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
            k = os.readv(self.fd, [view[got:]])
            if k == 0:
                raise EOFError("the other end of the channel closed")
            got += k
        return bytes(buf)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        # Pickled into a process that multiprocessing starts (the fork server's descriptor
        # passing, its spawn's pass_fds): the child gets a duplicate of this end.
        from multiprocessing import reduction

        return _rebuild, (reduction.DupFd(self.fd),)


def _rebuild(duplicate: Any) -> Channel:
    return Channel(duplicate.detach())


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
