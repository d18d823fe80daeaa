"""A device's side of the listener handback: an adopter takes back the listening sockets.

A supervisor that owns a device's listening sockets (``own_sockets``, inherit.py) holds its
own copy of each, so that a restart of the device finds the socket still listening. When
that supervisor dies, its copies die with it; the device still holds its own (in
``inherit.INHERITED``). An adopter therefore asks for duplicates with ``ADOPT`` (the payload's
``"handback"`` key): the device connects to the adopter's unix stream socket and sends ONE
message, a JSON header ``{"pid": <device pid>, "endpoints": [e0, e1, ...]}`` with the
descriptors in that order as ``SCM_RIGHTS`` (the kernel dups them: the device keeps its own).
The adopter's side is procdevices/supervisor/handback.py.

The path must be the run dir's handback socket (runlayout.handback_socket), in the device's
own run dir, and the process listening there must be the adopter (``SO_PEERCRED``: same uid,
the adopter's pid): a listening socket is never handed to anyone else.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket
# socket is imported where it is used: every device process imports this module, and only one
# that hands its sockets back (rarely) needs socket's ~4 ms of import.

# The whole exchange (connect and send) must end within this: it runs in the control loop,
# which serves nothing else meanwhile.
HANDBACK_TIMEOUT = 1.0
# Bounds of one handback message, for both sides: the receiver drops anything larger.
MAX_HEADER = 64 * 1024
MAX_FDS = 64

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class HandbackFailed(Exception):
    """The listening sockets could not be handed back; one-line message."""


def encode_header(pid: int, endpoints: list[str]) -> bytes:
    return json.dumps({"pid": pid, "endpoints": endpoints}, separators=(",", ":")).encode()


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end of a connected unix socket."""
    import socket

    pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid


def hand_back(
    path: str, listeners: Mapping[str, int], adopter_pid: int, timeout: float = HANDBACK_TIMEOUT
) -> list[str]:
    """Send duplicates of ``listeners`` (endpoint → descriptor) to the adopter listening at
    ``path``; the endpoints sent, in order. Raises :class:`HandbackFailed`."""
    endpoints = list(listeners)
    if len(endpoints) > MAX_FDS:
        raise HandbackFailed(f"{len(endpoints)} listening sockets: more than the {MAX_FDS} one handback carries")
    header = encode_header(os.getpid(), endpoints)
    if len(header) > MAX_HEADER:
        raise HandbackFailed(f"the handback header is {len(header)} bytes: more than {MAX_HEADER}")
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            # Who listens there is who receives the sockets: it must be the adopter itself.
            pid, uid = peer_credentials(sock)
            if uid != os.getuid() or pid != adopter_pid:
                raise HandbackFailed(
                    f"{path} is served by pid {pid} (uid {uid}), not by the adopter (pid {adopter_pid})"
                )
            sent = socket.send_fds(sock, [header], [listeners[e] for e in endpoints])
        except TimeoutError:
            raise HandbackFailed(f"{path}: no answer within {timeout:g}s") from None
        except OSError as e:
            raise HandbackFailed(f"{path}: {e.strerror or e}") from None
        if sent != len(header):
            raise HandbackFailed(f"{path}: only {sent} of {len(header)} header bytes sent")
    return endpoints
