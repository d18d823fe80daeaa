"""A bounded HTTP server for the metrics: no client can take the supervisor down through it.

prometheus_client's own server (``start_http_server``) starts a thread and holds a descriptor
for every connection, with no timeout and no cap: 400 idle connections to the metrics port
made 404 threads, and once the supervisor reached its open-file limit libzmq aborted it on the
next ipc connection (``Too many open files (src/ipc_listener.cpp:297)``), every device with it.
Here prometheus_client still makes the response (its WSGI app: content negotiation, gzip,
``name[]`` filters) and wsgiref parses the request, but the connections are ours:

    accept thread ── a free slot? ── descriptors to spare? ── accept() ── handler thread
        │ no slot: connections wait in the kernel's backlog (no descriptor of ours)
        │ EMFILE/ENFILE at accept: backpressure, a pause, never a spin
        └ every TICK: a connection older than DEADLINE is shut down, whatever it is doing

- at most ``MAX_CONNECTIONS`` connections at once, each in its own short-lived thread;
- each connection lives at most ``DEADLINE`` seconds (a request dribbled a byte at a time, a
  response nobody reads), and waits at most ``IO_TIMEOUT`` for any one read or write;
- nothing is accepted while fewer than ``RESERVE`` descriptors are free below the soft
  limit: the last ones are for libzmq (see fdplan.py);
- one connection at a time per socket: HTTP/1.0, closed after the response.

It listens on TCP (``HOST:PORT``) or on a unix socket (``metrics_socket``: the run dir's
0700 keeps it to its owner).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from procdevices.logs import Log

MAX_CONNECTIONS = 16
DEADLINE = 5.0  # seconds a connection may live: a scrape takes milliseconds
IO_TIMEOUT = 2.0  # seconds any one read or write may wait
RESERVE = 64  # descriptors never taken by the metrics server (fdplan.CLIENT_RESERVE holds them)
TICK = 0.25  # how often overdue connections are looked for
BACKOFF = 0.5  # pause after an accept that found no descriptor

# An accept that fails for want of a resource: wait for one to come back, do not spin.
_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

App = Callable[..., Any]


class _Discard:
    """Where wsgiref writes a traceback for a client that went away mid-response."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _Handler(WSGIRequestHandler):
    timeout = IO_TIMEOUT  # StreamRequestHandler applies it to the connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # a scrape every few seconds must not fill the supervisor's log

    def get_stderr(self) -> Any:
        return _Discard()


class _WSGI(WSGIServer):
    """The parts of wsgiref's server a request handler reads (environ, app); never binds nor
    serves: BoundedServer does that."""

    def __init__(self, name: str, port: int, app: App) -> None:
        socketserver.BaseServer.__init__(self, (name, port), _Handler)
        self.server_name = name
        self.server_port = port
        self.setup_environ()
        self.set_app(app)


def free_descriptors() -> int:
    """Descriptors this process may still open below its soft limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    try:
        return soft - len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0  # not even a directory listing: certainly nothing to spare


class BoundedServer:
    """Serves ``app`` on ``listener`` (already listening) from a daemon thread until close()."""

    def __init__(self, listener: socket.socket, app: App, log: Log, *, free: Callable[[], int] = free_descriptors):
        self.listener = listener
        self.log = log
        self._free = free
        if listener.family == socket.AF_UNIX:
            self._wsgi = _WSGI("localhost", 0, app)
        else:
            host, port = listener.getsockname()[:2]
            self._wsgi = _WSGI(str(host), int(port), app)
        listener.setblocking(False)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        # Guards _open and tells whoever waits (wait_connections) that its size changed.
        self._lock = threading.Condition()
        self._open: dict[socket.socket, float] = {}  # connection → when it must be gone
        self._closing = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._short_logged = False
        self.refused = 0  # accepts postponed for want of descriptors (tests read it)
        self.thread = threading.Thread(target=self._serve, name="metrics-accept", daemon=True)
        self.thread.start()

    # -- the accept thread ----------------------------------------------------------------
    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closing.is_set():
                self._cut_overdue()
                # Take a slot first: with none free, new connections wait in the backlog.
                if not self._slots.acquire(timeout=TICK):
                    continue
                taken = False
                try:
                    if any(key.fileobj is self.listener for key, _ in selector.select(TICK)):
                        taken = self._accept()
                finally:
                    if not taken:
                        self._slots.release()

    def _accept(self) -> bool:
        """True when a connection was accepted and handed to a thread (which owns the slot)."""
        if self._free() < RESERVE:
            self._shortage(f"fewer than {RESERVE} descriptors free")
            return False
        try:
            conn, address = self.listener.accept()
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in _SHORTAGE:
                self._shortage(e.strerror or str(e))
            return False
        conn.setblocking(True)
        with self._lock:
            self._open[conn] = time.monotonic() + DEADLINE
            self._lock.notify_all()
        if self._short_logged:
            self._short_logged = False
            self.log("metrics: accepting connections again")
        try:
            threading.Thread(target=self._handle, args=(conn, address), name="metrics-conn", daemon=True).start()
        except RuntimeError:  # no thread to be had: this client's loss only
            self._forget(conn)
            return False
        return True

    def _shortage(self, why: str) -> None:
        self.refused += 1
        if not self._short_logged:
            self._short_logged = True
            self.log(
                f"metrics: not accepting connections for now ({why}); they wait",
                level=logging.WARNING,
            )
        self._closing.wait(BACKOFF)

    def _cut_overdue(self) -> None:
        now = time.monotonic()
        with self._lock:
            overdue = [conn for conn, deadline in self._open.items() if deadline <= now]
        for conn in overdue:
            # Wakes the handler thread from whatever read or write it waits in; it closes.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # -- a connection's thread ------------------------------------------------------------
    def _handle(self, conn: socket.socket, address: Any) -> None:
        try:
            peer = address if isinstance(address, tuple) and address else ("local", 0)
            _Handler(conn, peer, self._wsgi)
        except Exception:  # noqa: S110 - a client's failure is the client's; nothing to tell
            pass
        finally:
            self._forget(conn)
            self._slots.release()

    def _forget(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.pop(conn, None)
            self._lock.notify_all()
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    # -- the owner's side -----------------------------------------------------------------
    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._open)

    def wait_connections(self, predicate: Callable[[int], bool], timeout: float) -> bool:
        """Whether ``predicate(connections held)`` came true within ``timeout`` seconds; woken
        by every accept and every close, never by a clock."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(len(self._open)), timeout)

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self.thread.join(5.0)
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()


def listen_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (any free port for 0); OSError when it cannot."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(MAX_CONNECTIONS)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 (a stale socket file there is replaced:
    the caller holds the run dir's lock)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)  # the run dir (0700) already keeps others out; this says so too
        sock.listen(MAX_CONNECTIONS)
    except BaseException:
        sock.close()
        raise
    return sock
