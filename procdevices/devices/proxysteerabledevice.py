"""ProxySteerable and its Thread/Process forms: a proxy with the user's own ctrl socket.

libzmq's proxy takes one control socket, and procdevices already gives it to the device's
control loop. The user's ctrl socket is therefore served by that loop, which passes every
command to the proxy verbatim and answers as libzmq would: code written for pyzmq sees the
same behaviour (including libzmq 4.3.5's swapped PAUSE/RESUME, which procdevices' own
``pause()`` corrects).
"""

from __future__ import annotations

from typing import ClassVar

import zmq

from procdevices.devices.proxydevice import ProcessProxy, Proxy, ProxyBase, ThreadProxy
from procdevices.devices.roles import role_methods


class ProxySteerableBase(ProxyBase):
    """Adds the ctrl socket: ``bind_ctrl``, ``connect_ctrl``, ``setsockopt_ctrl``, ..."""

    socket_roles: ClassVar[tuple[str, ...]] = ("in", "out", "mon", "ctrl")
    ctrl_type: int | None

    bind_ctrl, bind_ctrl_to_random_port, connect_ctrl, setsockopt_ctrl = role_methods("ctrl")

    def __init__(self, in_type: int, out_type: int, mon_type: int = zmq.PUB, ctrl_type: int | None = None) -> None:
        super().__init__(in_type=in_type, out_type=out_type, mon_type=mon_type)
        self.ctrl_type = ctrl_type


class ProxySteerable(ProxySteerableBase, Proxy):
    """A proxy steerable through the user's ctrl socket (PAUSE, RESUME, TERMINATE,
    STATISTICS), as in libzmq, and through procdevices' own control socket."""


class ThreadProxySteerable(ProxySteerableBase, ThreadProxy):
    """ProxySteerable in a Thread. See ProxySteerable for details."""


class ProcessProxySteerable(ProxySteerableBase, ProcessProxy):
    """ProxySteerable in a Process. See ProxySteerable for details."""


__all__ = ["ProxySteerable", "ThreadProxySteerable", "ProcessProxySteerable"]
