"""MonitoredQueue and its Thread/Process forms (pyzmq API).

libzmq's monitored_queue has no control socket, so it can only be stopped by shutting its
context down: process devices (which own a fresh context) and thread devices with their own
context support ``stop()``; ``pause()``, ``resume()`` and ``stats()`` raise
:class:`~procdevices.errors.UnsupportedOperation`. Use a ``Proxy`` when you need those.
"""

from __future__ import annotations

from typing import ClassVar

import zmq
from zmq.devices.monitoredqueue import monitored_queue

from procdevices.devices.proxydevice import ProcessProxy, Proxy, ProxyBase, ThreadProxy

Socket = zmq.Socket[bytes]


class MonitoredQueueBase(ProxyBase):
    """Prefixes monitor copies with ``in_prefix`` or ``out_prefix`` by direction."""

    # libzmq's monitored_queue takes no control socket: the control loop cannot steer it.
    steerable: ClassVar[bool] = False
    _in_prefix = b""
    _out_prefix = b""

    def __init__(
        self, in_type: int, out_type: int, mon_type: int = zmq.PUB, in_prefix: bytes = b"in", out_prefix: bytes = b"out"
    ) -> None:
        for name, prefix in (("in_prefix", in_prefix), ("out_prefix", out_prefix)):
            if not isinstance(prefix, bytes):
                raise TypeError(f"{name} must be bytes, not {type(prefix).__name__}")
        ProxyBase.__init__(self, in_type=in_type, out_type=out_type, mon_type=mon_type)
        self._in_prefix = in_prefix
        self._out_prefix = out_prefix

    def _forward(self, ins: Socket, outs: Socket, mons: Socket | None) -> None:
        monitored_queue(ins, outs, mons, self._in_prefix, self._out_prefix)


class MonitoredQueue(MonitoredQueueBase, Proxy):
    """Run zmq.monitored_queue: like Proxy, but monitor copies carry a direction prefix, and
    ROUTER on both sides is supported (routing ids are swapped)."""


class ThreadMonitoredQueue(MonitoredQueueBase, ThreadProxy):
    """Run zmq.monitored_queue in a background thread."""


class ProcessMonitoredQueue(MonitoredQueueBase, ProcessProxy):
    """Run zmq.monitored_queue in a spawned process."""


__all__ = ["MonitoredQueue", "ThreadMonitoredQueue", "ProcessMonitoredQueue"]
