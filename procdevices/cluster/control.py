"""A host's control endpoint: the supervisor's own request server (loop.RequestServer) on a
TCP endpoint, with CURVE, in a zmq context of its own.

Why a context of its own: a ZAP handler serves every socket of its context, and the
supervisor's context also holds the ipc control sockets of every device (NULL mechanism);
keeping the authenticator apart keeps their connections off its path entirely.

Why a thread (zmq.auth's ThreadAuthenticator): libzmq asks the ZAP handler during the CURVE
handshake, in its I/O thread; the handler answers from its own thread, so the supervisor's
epoll loop never waits on an authentication, and a flood of bad handshakes costs that thread,
not supervision. The request socket the loop watches only ever sees authenticated peers: a
peer without an admitted client key gets no connection, so no answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import zmq

__all__ = ["ControlEndpoint", "ControlUnavailable", "open_control"]


class ControlUnavailable(Exception):
    """The control endpoint cannot be served (keys missing, address not bindable)."""


class ControlEndpoint(NamedTuple):
    endpoint: str  # tcp://HOST:PORT
    keys: Path  # [cluster] keys


class _Admitted:
    """zmq.auth's credentials provider: the client keys found in the keys directory."""

    def __init__(self, admitted: frozenset[bytes]) -> None:
        self.admitted = admitted

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.admitted


class ServedControl:
    """The context, the authenticator thread and how to set up the request socket."""

    def __init__(self, spec: ControlEndpoint) -> None:
        # Imported here, as zmq.auth below: only a host with a control endpoint loads them.
        from procdevices.cluster import keys

        try:
            self.public, self.secret = keys.server_pair(spec.keys)
            admitted = keys.admitted_clients(spec.keys)
        except keys.KeyError_ as e:
            raise ControlUnavailable(f"control endpoint {spec.endpoint}: {e}") from None
        if not admitted:
            raise ControlUnavailable(f"control endpoint {spec.endpoint}: no client key (*.key) in {spec.keys}")
        self.endpoint = spec.endpoint
        # Imported here: only a host with a control endpoint pays for zmq.auth's thread module.
        from zmq.auth.thread import ThreadAuthenticator

        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback("*", credentials_provider=_Admitted(admitted))

    def configure(self, socket: zmq.Socket[bytes]) -> None:
        """Applied to the request socket before its bind."""
        socket.curve_server = True
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret

    def close(self) -> None:
        self.auth.stop()
        self.ctx.term()


def open_control(spec: ControlEndpoint) -> ServedControl:
    return ServedControl(spec)
