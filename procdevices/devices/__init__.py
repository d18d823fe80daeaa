"""The device layer: pyzmq's zmq.devices API with spawn, readiness and control sockets.

Module names mirror pyzmq's (basedevice, proxydevice, ...), so no submodule shadows one of
the functions re-exported here (``proxy`` is zmq.proxy, as in pyzmq).

The names are imported on first use: a device process imports this package on its way to
``runtime`` and then only the modules of its own device class, which keeps its start-up
(a fresh interpreter per device) short.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    **dict.fromkeys(("Device", "ThreadDevice", "ProcessDevice"), "procdevices.devices.basedevice"),
    **dict.fromkeys(("Proxy", "ThreadProxy", "ProcessProxy"), "procdevices.devices.proxydevice"),
    **dict.fromkeys(
        ("ProxySteerable", "ThreadProxySteerable", "ProcessProxySteerable"), "procdevices.devices.proxysteerabledevice"
    ),
    **dict.fromkeys(
        ("MonitoredQueue", "ThreadMonitoredQueue", "ProcessMonitoredQueue"), "procdevices.devices.monitoredqueuedevice"
    ),
    **dict.fromkeys(("device", "proxy", "proxy_steerable"), "zmq"),
    "monitored_queue": "zmq.devices.monitoredqueue",
}

__all__ = [
    "Device", "ThreadDevice", "ProcessDevice",
    "Proxy", "ThreadProxy", "ProcessProxy",
    "ProxySteerable", "ThreadProxySteerable", "ProcessProxySteerable",
    "MonitoredQueue", "ThreadMonitoredQueue", "ProcessMonitoredQueue",
    "device", "proxy", "proxy_steerable", "monitored_queue",
]  # fmt: skip

if TYPE_CHECKING:
    from zmq import device, proxy, proxy_steerable
    from zmq.devices.monitoredqueue import monitored_queue

    from procdevices.devices.basedevice import Device, ProcessDevice, ThreadDevice
    from procdevices.devices.monitoredqueuedevice import (
        MonitoredQueue,
        ProcessMonitoredQueue,
        ThreadMonitoredQueue,
    )
    from procdevices.devices.proxydevice import ProcessProxy, Proxy, ThreadProxy
    from procdevices.devices.proxysteerabledevice import (
        ProcessProxySteerable,
        ProxySteerable,
        ThreadProxySteerable,
    )


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'procdevices.devices' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
