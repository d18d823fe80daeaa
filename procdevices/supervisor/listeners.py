"""Listening sockets the supervisor keeps for its devices (``own_sockets = true``, the default).

For every tcp and ipc endpoint a device binds, the supervisor creates the listening socket
once and hands it to each process of that device (libzmq's ``ZMQ_USE_FD``; see
procdevices/devices/inherit.py). It stays open across restarts, so:

- a restart never meets "Address already in use";
- a client that connects while the device restarts waits in the kernel's backlog and is
  served by the new process, instead of being refused;
- ``tcp://HOST:*`` keeps the same port for the life of the supervisor.

Where the supervisor cannot create the socket itself (tcp on an interface name or a host
name, IPv6, abstract or wildcard ipc, other transports), the device binds as before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
from pathlib import Path

from procdevices.devices.inherit import InheritedFd
from procdevices.supervisor.config import DeviceConfig, SocketSpec

BACKLOG = 128  # connections the kernel queues while no device process accepts


class Listeners:
    def __init__(self) -> None:
        self._sockets: dict[str, socket.socket] = {}  # resolved endpoint → listening socket
        self._resolved: dict[tuple[str, str, str], str] = {}  # (instance, role, as written) → resolved
        self._owners: dict[str, set[str]] = {}  # resolved endpoint → instances using it

    def own(self, instance: DeviceConfig) -> DeviceConfig:
        """``instance`` with each bind endpoint the supervisor now listens on (a ``:*`` port
        resolved); raises OSError (naming the endpoint) when one cannot be bound."""
        if not instance.own_sockets:
            return instance

        def owned(role: str, spec: SocketSpec | None) -> SocketSpec | None:
            if spec is None:
                return None
            return spec._replace(bind=tuple(self._own(instance.name, role, e) for e in spec.bind))

        return instance._replace(
            in_=owned("in", instance.in_) or instance.in_,
            out=owned("out", instance.out),
            mon=owned("mon", instance.mon),
            ctrl=owned("ctrl", instance.ctrl),
        )

    def for_instance(self, instance: str) -> dict[str, InheritedFd]:
        """What a process of ``instance`` takes over (endpoint → descriptor)."""
        return {
            endpoint: InheritedFd(self._sockets[endpoint].fileno())
            for endpoint, owners in self._owners.items()
            if instance in owners and endpoint in self._sockets
        }

    def keys(self, instance: str) -> list[tuple[str, str, str]]:
        """What the supervisor listens on for ``instance``: (role, endpoint as written,
        endpoint it resolved to). state.json records it (books.py), so that an adopting
        supervisor knows which handed-back socket is which."""
        return [
            (role, written, resolved)
            for (name, role, written), resolved in self._resolved.items()
            if name == instance and resolved in self._sockets
        ]

    def restore(self, instance: str, key: tuple[str, str, str], sock: socket.socket) -> None:
        """Listen again on a socket a running device of ``instance`` handed back to an
        adopting supervisor (supervisor/adoption.py): from now on as if :meth:`own` had made
        it. A socket for an endpoint already held (a replica handed back the same one) is
        closed: one copy is enough."""
        role, written, resolved = key
        if resolved in self._sockets:
            sock.close()
        else:
            self._sockets[resolved] = sock
        self._resolved[(instance, role, written)] = resolved
        self._owners.setdefault(resolved, set()).add(instance)

    def release(self, instance: str) -> None:
        """``instance`` is gone for good: close what no other instance uses."""
        for endpoint, owners in list(self._owners.items()):
            owners.discard(instance)
            if not owners:
                self._close(endpoint)
        self._resolved = {k: v for k, v in self._resolved.items() if k[0] != instance}

    def close(self, *, unlink: bool = True) -> None:
        """Close every socket; ``unlink`` False leaves the ipc paths (supervisor leaving its
        devices running for the next one: their own copies still listen there)."""
        for endpoint in list(self._sockets):
            self._close(endpoint, unlink=unlink)

    def _own(self, instance: str, role: str, endpoint: str) -> str:
        key = (instance, role, endpoint)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = endpoint
            if endpoint not in self._sockets:
                made = _listen(endpoint)
                if made is not None:
                    resolved, sock = made
                    self._sockets[resolved] = sock
            self._resolved[key] = resolved
        if resolved in self._sockets:
            self._owners.setdefault(resolved, set()).add(instance)
        return resolved

    def _close(self, endpoint: str, *, unlink: bool = True) -> None:
        sock = self._sockets.pop(endpoint, None)
        self._owners.pop(endpoint, None)
        if sock is None:
            return
        sock.close()
        if unlink and endpoint.startswith("ipc://"):
            with contextlib.suppress(OSError):
                os.unlink(endpoint[len("ipc://") :])


def _listen(endpoint: str) -> tuple[str, socket.socket] | None:
    """A listening socket for ``endpoint`` and the endpoint it resolved to; None when this
    endpoint is left to the device (see the module's docstring)."""
    if endpoint.startswith("tcp://"):
        return _listen_tcp(endpoint[len("tcp://") :])
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if not path or path.startswith("@") or path == "*":
            return None
        return endpoint, _listen_ipc(path)
    return None


def _listen_tcp(address: str) -> tuple[str, socket.socket] | None:
    host, _, port_text = address.rpartition(":")
    if host == "*":
        bind_host = "0.0.0.0"
    elif host == "localhost":
        bind_host = "127.0.0.1"
    else:
        try:
            bind_host = str(ipaddress.IPv4Address(host))
        except ValueError:
            return None  # an interface name, a host name, IPv6: libzmq knows better
    if port_text == "*":
        port = 0
    elif port_text.isdigit():
        port = int(port_text)
    else:
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq does
        sock.bind((bind_host, port))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on tcp://{address}: {e.strerror}") from None
    return f"tcp://{host}:{sock.getsockname()[1]}", sock


def _listen_ipc(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(Path(path).lstat().st_mode):
            os.unlink(path)  # a stale socket file: `up` checked nobody listens on it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on ipc://{path}: {e.strerror}") from None
    return sock
