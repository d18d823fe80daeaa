"""CURVE keys for the cluster control plane, written and read with ``zmq.auth``.

``procdevices keys generate DIR`` writes one server pair (``server.key``, the public half every
client needs; ``server.key_secret``, every host's control endpoint) and one client pair
(``client.key``; ``client.key_secret``, the operators' and hosts' client side). A host admits
the public keys of every ``*.key`` file in the directory except ``server.key``: to add an
operator, drop their ``NAME.key`` there; to revoke one, remove it (and restart `up`).
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq.auth

__all__ = ["KeyError_", "admitted_clients", "client_pair", "generate", "server_pair", "server_public"]

SERVER = "server"
CLIENT = "client"


class KeyError_(Exception):  # noqa: N801 - not the builtin KeyError
    """A key file is missing or unreadable; the message names it."""


def generate(directory: Path) -> list[Path]:
    """Write the server and client pairs into ``directory`` (created, mode 0700). Refuses to
    overwrite existing keys: new keys would lock every host and operator out."""
    existing = [directory / f"{name}.key{suffix}" for name in (SERVER, CLIENT) for suffix in ("", "_secret")]
    present = [p for p in existing if p.exists()]
    if present:
        raise KeyError_(f"{present[0]} exists; remove the old keys first (every host needs the new ones)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    for name in (SERVER, CLIENT):
        public, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyError_(f"cannot read {path}: {e}") from None
    if secret and private is None:
        raise KeyError_(f"{path} holds no secret key")
    return public, private


def server_pair(directory: Path) -> tuple[bytes, bytes]:
    public, secret = _load(directory / f"{SERVER}.key_secret", True)
    assert secret is not None
    return public, secret


def server_public(directory: Path) -> bytes:
    return _load(directory / f"{SERVER}.key", False)[0]


def client_pair(directory: Path) -> tuple[bytes, bytes]:
    public, secret = _load(directory / f"{CLIENT}.key_secret", True)
    assert secret is not None
    return public, secret


def admitted_clients(directory: Path) -> frozenset[bytes]:
    """The z85 public keys a control endpoint lets in: every ``*.key`` but the server's."""
    found = set()
    for path in sorted(directory.glob("*.key")):
        if path.name != f"{SERVER}.key":
            found.add(_load(path, False)[0])
    return frozenset(found)
