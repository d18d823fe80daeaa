"""Proxy, ThreadProxy, ProcessProxy: a device with a third, monitor socket (pyzmq API)."""

from __future__ import annotations

from typing import Any

import zmq

from procdevices.devices import runtime as rt
from procdevices.devices.basedevice import Device, ProcessDevice, ThreadDevice, _uses_proxy_control

Socket = zmq.Socket[bytes]


class ProxyBase:
    """Adds the monitor socket: ``bind_mon``, ``connect_mon``, ``setsockopt_mon``, ..."""

    mon_type: int

    def __init__(self, in_type: int, out_type: int, mon_type: int = zmq.PUB) -> None:
        Device.__init__(self, in_type=in_type, out_type=out_type)  # type: ignore[arg-type]
        self.mon_type = mon_type
        self._mon_binds: list[str] = []
        self._mon_connects: list[str] = []
        self._mon_sockopts: list[tuple[int, Any]] = []

    def bind_mon(self, addr: str) -> None:
        """Enqueue ZMQ address for binding on mon_socket."""
        self._mon_binds.append(addr)

    def bind_mon_to_random_port(self, addr: str, *args: int, **kwargs: int) -> int:
        """Reserve a random port and enqueue it for binding on mon_socket."""
        port: int = self._reserve_random_port(addr, *args, **kwargs)  # type: ignore[attr-defined]
        self.bind_mon(f"{addr}:{port}")
        return port

    def connect_mon(self, addr: str) -> None:
        """Enqueue ZMQ address for connecting on mon_socket."""
        self._mon_connects.append(addr)

    def setsockopt_mon(self, opt: int, value: Any) -> None:
        """Enqueue setsockopt(opt, value) for mon_socket."""
        self._mon_sockopts.append((opt, value))

    def _setup_sockets(self) -> tuple[Any, ...]:
        device: Device = self  # type: ignore[assignment]
        ins, outs = Device._setup_sockets(device)
        mons = device._new_socket(device._context, "mon", self.mon_type)
        rt.apply_sockopts("mon", mons, self._mon_sockopts)
        rt.bind_all("mon", mons, self._mon_binds, device._bound("mon"))
        rt.connect_all("mon", mons, self._mon_connects)
        return ins, outs, mons

    @_uses_proxy_control
    def run_device(self) -> None:
        ins, outs, mons = self._setup_sockets()
        self._forward(ins, outs, mons)  # type: ignore[attr-defined]


class Proxy(ProxyBase, Device):
    """A 3-socket device that works like a QUEUE and also copies every message to the monitor
    socket (PUB is the natural choice: it never blocks the proxy)."""


class ThreadProxy(ProxyBase, ThreadDevice):
    """Proxy in a Thread. See Proxy for more."""


class ProcessProxy(ProxyBase, ProcessDevice):
    """Proxy in a Process. See Proxy for more."""


__all__ = ["Proxy", "ThreadProxy", "ProcessProxy"]
