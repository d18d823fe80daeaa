"""The device kinds: one row per kind, read by the loader and by ``build.py``.

A new kind is a new row here (plus, if it needs a device class no row uses
yet, a new :class:`Factory` member and its branch in ``build.py``).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import zmq

__all__ = ["KIND_TABLE", "KINDS", "SOCKET_TYPE_NAMES", "Factory", "KindSpec", "Presence"]


class Presence(enum.Enum):
    """Whether a kind has an optional socket (``mon``, ``ctrl``)."""

    NONE = "no"
    OPTIONAL = "optional"
    REQUIRED = "required"


class Factory(enum.Enum):
    """Which device class ``build.py`` makes for a kind."""

    DEVICE = "device"  # ProcessDevice(device_type, in, out)
    PROXY = "proxy"  # ProcessProxy when a mon socket is configured, else DEVICE
    STEERABLE = "steerable"  # ProcessProxySteerable
    MONITORED_QUEUE = "monitored_queue"  # ProcessMonitoredQueue


class KindSpec(NamedTuple):
    name: str
    in_type: str  # default socket types, as SOCKET_TYPE_NAMES
    out_type: str
    mon: Presence
    ctrl: Presence
    prefixes: bool  # in_prefix/out_prefix allowed
    factory: Factory
    device_type: int  # for Factory.DEVICE (and PROXY without mon)
    use: str  # "typical use", as in docs/configuration.md
    # A SUB `in` socket without SUBSCRIBE receives nothing: subscribe to everything.
    subscribe_all: bool = False


#: Default type of a ``mon`` socket and of a ``ctrl`` socket.
MON_DEFAULT_TYPE = "PUB"
CTRL_DEFAULT_TYPE = "PAIR"

_NO, _OPT, _REQ = Presence.NONE, Presence.OPTIONAL, Presence.REQUIRED

KIND_TABLE: tuple[KindSpec, ...] = (
    KindSpec("queue", "ROUTER", "DEALER", _NO, _NO, False, Factory.DEVICE, zmq.QUEUE, "request/reply broker"),
    KindSpec(
        "forwarder", "SUB", "PUB", _NO, _NO, False, Factory.DEVICE, zmq.FORWARDER, "pub/sub hub", subscribe_all=True
    ),
    KindSpec("streamer", "PULL", "PUSH", _NO, _NO, False, Factory.DEVICE, zmq.STREAMER, "pipeline fan-in/fan-out"),
    KindSpec(
        "proxy", "ROUTER", "DEALER", _OPT, _NO, False, Factory.PROXY, zmq.QUEUE, "`zmq.proxy` with any socket types"
    ),
    KindSpec("steerable", "ROUTER", "DEALER", _OPT, _OPT, False, Factory.STEERABLE, zmq.QUEUE, "`zmq.proxy_steerable`"),
    KindSpec(
        "monitored_queue",
        "ROUTER",
        "DEALER",
        _REQ,
        _NO,
        True,
        Factory.MONITORED_QUEUE,
        zmq.QUEUE,
        "queue that copies traffic to `mon`",
    ),
)

KIND_SPECS: dict[str, KindSpec] = {spec.name: spec for spec in KIND_TABLE}

KINDS: tuple[str, ...] = tuple(KIND_SPECS)

#: Socket type names accepted in a socket table's ``type`` (case-insensitive).
SOCKET_TYPE_NAMES = (
    "PAIR",
    "PUB",
    "SUB",
    "REQ",
    "REP",
    "DEALER",
    "ROUTER",
    "PULL",
    "PUSH",
    "XPUB",
    "XSUB",
    "STREAM",
)


def kinds_allowing(role: str) -> tuple[str, ...]:
    """The kinds on which the optional key ``role`` (mon, ctrl, in_prefix, out_prefix) may be set."""
    if role == "mon":
        return tuple(s.name for s in KIND_TABLE if s.mon is not Presence.NONE)
    if role == "ctrl":
        return tuple(s.name for s in KIND_TABLE if s.ctrl is not Presence.NONE)
    if role in ("in_prefix", "out_prefix"):
        return tuple(s.name for s in KIND_TABLE if s.prefixes)
    raise ValueError(f"not an optional device key: {role!r}")
