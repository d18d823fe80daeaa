"""Proxy, ThreadProxy, ProcessProxy: a device with a third, monitor socket (pyzmq API)."""

from __future__ import annotations

from typing import ClassVar

import zmq

from procdevices.devices.basedevice import Device, ProcessDevice, ThreadDevice
from procdevices.devices.roles import role_methods


class ProxyBase(Device):
    """Adds the monitor socket: ``bind_mon``, ``connect_mon``, ``setsockopt_mon``, ...

    A Device itself (pyzmq's is a bare mixin), so that it is typed as one; the classes below
    put it before ThreadDevice/ProcessDevice, which keeps their MRO pyzmq's."""

    socket_roles: ClassVar[tuple[str, ...]] = ("in", "out", "mon")
    mon_type: int

    bind_mon, bind_mon_to_random_port, connect_mon, setsockopt_mon = role_methods("mon")

    def __init__(self, in_type: int, out_type: int, mon_type: int = zmq.PUB) -> None:
        super().__init__(in_type=in_type, out_type=out_type)
        self.mon_type = mon_type


class Proxy(ProxyBase, Device):
    """A 3-socket device that works like a QUEUE and also copies every message to the monitor
    socket (PUB is the natural choice: it never blocks the proxy)."""


class ThreadProxy(ProxyBase, ThreadDevice):
    """Proxy in a Thread. See Proxy for more."""


class ProcessProxy(ProxyBase, ProcessDevice):
    """Proxy in a Process. See Proxy for more."""


__all__ = ["Proxy", "ThreadProxy", "ProcessProxy"]
