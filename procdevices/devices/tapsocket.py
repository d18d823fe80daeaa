"""The device side of ``procdevices tap``: a PUB copy of the traffic, owner-only, never waited for.

A device process whose control socket is ``ipc://DIR/NAME.sock`` (the supervisor's
``<run_dir>/ctl/NAME.sock``, 0700) publishes a copy of every message it forwards on
``ipc://DIR/NAME.tap``, beside it: never tcp, since the copy holds the payloads in clear.

The copy comes from the loop itself, so it costs one send per frame to a PUB socket, which
never blocks: with no reader it drops at once, and with a stalled reader it drops at the
high-water mark (``TAP_SNDHWM`` on the socket made here). libzmq's capture must be chosen
before the proxy starts, so the socket is always there:

- a device with a PUB/XPUB ``mon`` socket (proxy, steerable, monitored_queue) binds that
  socket to the tap endpoint as well: the tap sees what the monitor sees. A monitored
  queue's copy carries its direction prefix, so the reader knows each message's direction;
- a device without one (queue, forwarder, streamer) gets a PUB capture socket of its own;
- a ``mon`` socket of a blocking type (PUSH, ...) cannot be shared: no tap, and INFO says why.

What the reader needs to decode the copy is in INFO's ``tap`` entry (:func:`describe`).
"""

from __future__ import annotations

from typing import Any

import zmq

Socket = zmq.Socket[bytes]

#: Messages a stalled tap reader may hold queued in the device before the device drops.
TAP_SNDHWM = 1000

_PUBLISHING = frozenset({zmq.PUB, zmq.XPUB})


def tap_endpoint(control_endpoint: str) -> str | None:
    """The tap of the device whose control socket is ``control_endpoint``: the same path
    with ``.tap`` for ``.sock``; None where there is no owner-only directory (inproc, tcp)."""
    if control_endpoint.startswith("ipc://") and control_endpoint.endswith(".sock"):
        return control_endpoint[: -len(".sock")] + ".tap"
    return None


def mon_can_tap(mon: Socket | None) -> bool:
    return mon is not None and mon.type in _PUBLISHING


def capture_socket(ctx: zmq.Context[Socket]) -> Socket:
    """A PUB socket for libzmq's capture: drops (never blocks) past ``TAP_SNDHWM``."""
    sock: Socket = ctx.socket(zmq.PUB)
    sock.sndhwm = TAP_SNDHWM
    sock.linger = 0
    return sock


def describe(
    endpoint: str | None,
    *,
    directions: str = "",
    in_prefix: bytes = b"",
    out_prefix: bytes = b"",
    why_not: str | None = None,
) -> dict[str, Any]:
    """INFO's ``tap`` entry. ``directions``: ``"prefixed"`` (the first frame is ``in_prefix``
    or ``out_prefix``: a monitored queue), ``"in"`` (a one-way device: everything goes from
    in to out), or ``"unknown"`` (libzmq's capture of a two-way device carries no direction)."""
    if endpoint is None:
        return {"endpoint": None, "why_not": why_not or "this device has no owner-only directory for a tap"}
    return {
        "endpoint": endpoint,
        "directions": directions,
        "in_prefix": in_prefix.hex(),
        "out_prefix": out_prefix.hex(),
    }
