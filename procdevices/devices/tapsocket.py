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
:class:`Tapped` opens the tap of a device once its sockets are built (a mixin of ``Device``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zmq

from procdevices.control.steering import CaptureSwitch

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


class Tapped:
    """The tap of a device (a mixin of ``Device``, which provides its sockets)."""

    _tap_capture: Socket | None = None  # the capture socket made for the tap, if any
    _tap_switch: CaptureSwitch | None = None  # switches _tap_capture on and off (steering.py)
    # Whether the device's ``_forward`` re-enters its forwarding loop for a CaptureSwitch.
    _switches_capture: bool = True
    _tap_info: dict[str, Any] | None = None  # INFO's "tap" entry
    _sockets: list[Socket]
    _role_sockets: dict[str, Socket]

    if TYPE_CHECKING:  # provided by Device

        def _two_way(self) -> bool: ...

        def _steerable(self) -> bool: ...

    def _open_tap(self, control_endpoint: str, ctx: zmq.Context[Socket]) -> str | None:
        """Bind the tap endpoint of the device whose control socket is ``control_endpoint``:
        on the PUB mon socket when the device has one (the tap sees what the monitor sees),
        else on a PUB capture socket of its own in ``ctx``, handed to the forwarding loop in
        ``_forward``. Returns the endpoint bound; None: the device runs without a tap (INFO's
        ``tap`` entry says why)."""
        endpoint = tap_endpoint(control_endpoint)
        if endpoint is None:
            self._tap_info = describe(None)
            return None
        if "mon" in self._role_sockets:
            mon = self._role_sockets.get("mon")
            if mon is None or not mon_can_tap(mon):
                kind = zmq.SocketType(int(mon.type)).name if mon is not None else "absent"
                why = f"its mon socket is {kind}; a tap shares only a PUB or XPUB mon socket"
                self._tap_info = describe(None, why_not=why)
                return None
            sock = mon
        else:
            sock = capture_socket(ctx)
            self._sockets.append(sock)
            self._tap_capture = sock
            if self._switches_capture and self._steerable():
                # The loop copies to the capture socket only while a reader is connected.
                monitor: Socket = sock.get_monitor_socket(CaptureSwitch.EVENTS)
                monitor.linger = 0
                self._sockets.append(monitor)  # closed by the worker, after the control loop
                self._tap_switch = CaptureSwitch(monitor)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as e:
            self._tap_info = describe(None, why_not=f"cannot bind {endpoint}: {e.strerror}")
            return None
        directions, in_prefix, out_prefix = self._tap_directions()
        self._tap_info = describe(endpoint, directions=directions, in_prefix=in_prefix, out_prefix=out_prefix)
        return endpoint

    def _tap_entry(self) -> dict[str, Any] | None:
        """INFO's ``tap`` entry, with the capture's state now: ``"on"`` or ``"off"`` (switched
        by the readers connected, ``readers``), ``"always"`` (the mon socket's copy)."""
        info = self._tap_info
        if info is None or info.get("endpoint") is None:
            return info
        switch = self._tap_switch
        if switch is None:
            return {**info, "capture": "always"}
        return {**info, "capture": "on" if switch.capturing else "off", "readers": switch.readers}

    def _tap_directions(self) -> tuple[str, bytes, bytes]:
        """How the tap reader learns each message's direction (:func:`describe`)."""
        return ("unknown" if self._two_way() else "in"), b"", b""
