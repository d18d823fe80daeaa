"""The adopter's side of the listener handback: take back the devices' listening sockets.

An adopting supervisor (a new ``up`` after a crash, or ``up`` re-executed for an upgrade)
listens on the run dir's handback socket (runlayout.handback_socket) while it adopts, and
names it in every ``ADOPT``. Each device connects before it answers and sends one message:
a JSON header ``{"pid", "endpoints"}`` and its listening descriptors (devices/handback.py).
So once a device's ADOPT reply is in, its sockets are waiting here; :meth:`collect` picks up
every message that has arrived, without blocking::

    with HandbackServer(runlayout.handback_socket(run_dir)) as server:
        ... send ADOPT {token, pid, "handback": server.path} to each device, await replies ...
        server.collect()
        sockets = server.take(device_pid)   # endpoint → listening socket.socket, now yours

Nothing a peer sends can raise out of :meth:`collect`: a peer of another uid, a header whose
pid is not the sender's (``SO_PEERCRED``), a malformed or oversized header, too many
descriptors or descriptors that are not listening sockets: the message is dropped, every
descriptor it carried closed, and the reason kept in :attr:`rejected`.

Only one adopter may listen at a time: the path is unlinked and bound again by each new
server, so the caller holds the run dir's adoption lock while a server is open.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import stat
from types import TracebackType
from typing import Any, Self

from procdevices.devices.handback import MAX_FDS, MAX_HEADER, peer_credentials

# The kernel caps it at net.core.somaxconn; as large as it lets, so that hundreds of devices
# answering ADOPT at once never wait on a full backlog.
BACKLOG = 4096
# Connections kept open while their message is incomplete, at most; more are dropped.
MAX_PENDING = 4096


class _Pending:
    """One accepted connection whose message is still arriving."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.fds: list[int] = []

    def discard(self) -> None:
        _close_fds(self.fds)
        self.fds = []
        self.sock.close()


class HandbackServer:
    """Listens at ``path`` for devices handing back their listening sockets.

    :meth:`collect` returns what arrived during that call; everything received stays in
    :attr:`received` (pid → endpoint → socket), owned by the server, until :meth:`take`
    hands a device's sockets to the caller. :meth:`close` closes whatever nobody took.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.received: dict[int, dict[str, socket.socket]] = {}
        self.rejected: list[str] = []  # one line per dropped message, for the caller's log
        self.accepted = 0  # connections accepted so far
        self._pending: list[_Pending] = []
        self._uid = os.getuid()
        _unlink_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
        except BaseException:
            listener.close()  # the path is not ours (bind failed): left as it is
            raise
        try:
            # Before listen: nobody can connect yet, so nobody connects with looser rights.
            os.chmod(path, 0o600)
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._listener: socket.socket | None = listener

    def fileno(self) -> int:
        """The listening descriptor: readable when a device has connected."""
        if self._listener is None:
            raise ValueError("the handback server is closed")
        return self._listener.fileno()

    def collect(self) -> dict[int, dict[str, socket.socket]]:
        """Accept every pending connection and read every complete message, without
        blocking; the sockets received by this call, by device pid (also in
        :attr:`received`). A message still arriving is finished by a later call."""
        if self._listener is None:
            raise ValueError("the handback server is closed")
        while len(self._pending) < MAX_PENDING:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # EMFILE and the like: what is accepted so far still counts
                self.rejected.append(f"accept: {e.strerror or e}")
                break
            self.accepted += 1
            conn.setblocking(False)
            self._pending.append(_Pending(conn))
        new: dict[int, dict[str, socket.socket]] = {}
        still: list[_Pending] = []
        for pending in self._pending:
            done = self._read(pending)
            if not done:
                still.append(pending)
                continue
            result = self._accept_message(pending)
            pending.discard()
            if result is not None:
                pid, sockets = result
                for old in self.received.pop(pid, {}).values():
                    old.close()  # the same device again: its newer message wins
                self.received[pid] = new[pid] = sockets
        self._pending = still
        return new

    def take(self, pid: int) -> dict[str, socket.socket]:
        """The listening sockets device ``pid`` handed back ({} if none), now the caller's
        to close."""
        return self.received.pop(pid, {})

    def close(self) -> None:
        """Stop listening, remove the path, and close every socket nobody took."""
        for pending in self._pending:
            pending.discard()
        self._pending = []
        for sockets in self.received.values():
            for sock in sockets.values():
                sock.close()
        self.received = {}
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- one connection ---------------------------------------------------------------------
    def _read(self, pending: _Pending) -> bool:
        """Read what has arrived; True once the message is complete (the peer closed) or
        must be dropped (then ``pending.data`` is cleared)."""
        while True:
            room = MAX_HEADER + 1 - len(pending.data)
            try:
                data, fds, flags = _recv_fds(pending.sock, max(room, 1), MAX_FDS - len(pending.fds) + 1)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as e:
                self._reject(pending, f"read: {e.strerror or e}")
                return True
            pending.fds += fds
            if flags & socket.MSG_CTRUNC or len(pending.fds) > MAX_FDS:
                self._reject(pending, f"more than {MAX_FDS} descriptors")
                return True
            if not data:
                return True
            pending.data += data
            if len(pending.data) > MAX_HEADER:
                self._reject(pending, f"a header larger than {MAX_HEADER} bytes")
                return True

    def _reject(self, pending: _Pending, reason: str) -> None:
        self.rejected.append(f"handback dropped: {reason}")
        pending.data = bytearray()
        _close_fds(pending.fds)
        pending.fds = []

    def _accept_message(self, pending: _Pending) -> tuple[int, dict[str, socket.socket]] | None:
        """The sender's pid and listening sockets, when the message is sound; else None
        (the caller closes every descriptor that is not returned)."""
        if not pending.data:
            return None  # nothing came, or _reject already said why
        try:
            peer_pid, peer_uid = peer_credentials(pending.sock)
        except OSError as e:
            self.rejected.append(f"handback dropped: no peer credentials: {e.strerror or e}")
            return None
        header = _parse_header(bytes(pending.data))
        if header is None:
            self.rejected.append(f"handback dropped: malformed header from pid {peer_pid}")
            return None
        pid, endpoints = header
        if peer_uid != self._uid or pid != peer_pid:
            self.rejected.append(f"handback dropped: header says pid {pid}, sent by pid {peer_pid} (uid {peer_uid})")
            return None
        if len(endpoints) != len(pending.fds):
            self.rejected.append(
                f"handback dropped: pid {pid} named {len(endpoints)} endpoints with {len(pending.fds)} descriptors"
            )
            return None
        sockets: dict[str, socket.socket] = {}
        for endpoint, fd in zip(endpoints, pending.fds, strict=True):
            sock = _listening_socket(fd)
            if sock is None:
                self.rejected.append(f"handback: pid {pid} sent {endpoint!r} as something else than a listening socket")
                continue
            sockets[endpoint] = sock
        pending.fds = []  # every one is now a socket object above, or closed by _listening_socket
        return pid, sockets


def _recv_fds(sock: socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int], int]:
    """socket.recv_fds, but close-on-exec at once (a supervisor that re-executes must not
    leak these; recv_fds ignores its flags argument up to Python 3.12)."""
    item = array.array("i")
    data, ancillary, flags, _ = sock.recvmsg(size, socket.CMSG_LEN(max_fds * item.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            item.frombytes(payload[: len(payload) - (len(payload) % item.itemsize)])
    return data, list(item), flags


def _parse_header(data: bytes) -> tuple[int, list[str]] | None:
    try:
        header: Any = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    pid, endpoints = header.get("pid"), header.get("endpoints")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return None
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        return None
    if len(set(endpoints)) != len(endpoints):
        return None
    return pid, endpoints


def _listening_socket(fd: int) -> socket.socket | None:
    """``fd`` as a socket object when it is a listening socket; otherwise it is closed."""
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            sock = socket.socket(fileno=fd)
            try:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1:
                    return sock
            except OSError:
                pass
            sock.close()
            return None
    except OSError:
        pass
    _close_fds([fd])
    return None


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _unlink_stale_socket(path: str) -> None:
    """Remove a socket file left at ``path`` (by an adopter that died); anything else there
    is not ours to remove: bind then fails with EADDRINUSE and says so."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode):
        os.unlink(path)
