"""ProxySteerable and its Thread/Process forms: a proxy with the user's own ctrl socket.

libzmq's proxy takes one control socket, and procdevices already gives it to the device's
control loop. The user's ctrl socket is therefore served by that loop, which passes every
command to the proxy verbatim and answers as libzmq would: code written for pyzmq sees the
same behaviour (including libzmq 4.3.5's swapped PAUSE/RESUME, which procdevices' own
``pause()`` corrects).
"""

from __future__ import annotations

from typing import Any

import zmq

from procdevices.devices import runtime as rt
from procdevices.devices.basedevice import Device
from procdevices.devices.proxydevice import ProcessProxy, Proxy, ThreadProxy

Socket = zmq.Socket[bytes]


class ProxySteerableBase:
    """Adds the ctrl socket: ``bind_ctrl``, ``connect_ctrl``, ``setsockopt_ctrl``, ..."""

    ctrl_type: int | None

    def __init__(self, in_type: int, out_type: int, mon_type: int = zmq.PUB, ctrl_type: int | None = None) -> None:
        super().__init__(in_type=in_type, out_type=out_type, mon_type=mon_type)  # type: ignore[call-arg]
        self.ctrl_type = ctrl_type
        self._ctrl_binds: list[str] = []
        self._ctrl_connects: list[str] = []
        self._ctrl_sockopts: list[tuple[int, Any]] = []

    def bind_ctrl(self, addr: str) -> None:
        """Enqueue ZMQ address for binding on ctrl_socket."""
        self._ctrl_binds.append(addr)

    def bind_ctrl_to_random_port(self, addr: str, *args: int, **kwargs: int) -> int:
        """Reserve a random port and enqueue it for binding on ctrl_socket."""
        port: int = self._reserve_random_port(addr, *args, **kwargs)  # type: ignore[attr-defined]
        self.bind_ctrl(f"{addr}:{port}")
        return port

    def connect_ctrl(self, addr: str) -> None:
        """Enqueue ZMQ address for connecting on ctrl_socket."""
        self._ctrl_connects.append(addr)

    def setsockopt_ctrl(self, opt: int, value: Any) -> None:
        """Enqueue setsockopt(opt, value) for ctrl_socket."""
        self._ctrl_sockopts.append((opt, value))

    def _setup_sockets(self) -> tuple[Any, ...]:
        ins, outs, mons = super()._setup_sockets()  # type: ignore[misc]
        device: Device = self  # type: ignore[assignment]
        self._user_ctrl: Socket | None = None
        if self.ctrl_type is None:
            return ins, outs, mons, None
        ctrls = device._new_socket(device._context, "ctrl", self.ctrl_type)
        rt.apply_sockopts("ctrl", ctrls, self._ctrl_sockopts)
        rt.bind_all("ctrl", ctrls, self._ctrl_binds, device._bound("ctrl"))
        rt.connect_all("ctrl", ctrls, self._ctrl_connects)
        self._user_ctrl = ctrls
        return ins, outs, mons, ctrls

    def _attach_user_ctrl(self, runtime: rt.DeviceRuntime) -> None:
        runtime.user_ctrl = getattr(self, "_user_ctrl", None)

    def run_device(self) -> None:
        ins, outs, mons, _ctrl = self._setup_sockets()
        self._forward(ins, outs, mons)  # type: ignore[attr-defined]

    run_device._procdevices_steerable = True  # type: ignore[attr-defined]


class ProxySteerable(ProxySteerableBase, Proxy):
    """A proxy steerable through the user's ctrl socket (PAUSE, RESUME, TERMINATE,
    STATISTICS), as in libzmq, and through procdevices' own control socket."""


class ThreadProxySteerable(ProxySteerableBase, ThreadProxy):
    """ProxySteerable in a Thread. See ProxySteerable for details."""


class ProcessProxySteerable(ProxySteerableBase, ProcessProxy):
    """ProxySteerable in a Process. See ProxySteerable for details."""


__all__ = ["ProxySteerable", "ThreadProxySteerable", "ProcessProxySteerable"]
