"""procdevices: run ZeroMQ devices in production.

A drop-in replacement for :mod:`zmq.devices` whose background devices report readiness and
obey a dedicated control socket, plus a supervisor (``python -m procdevices up``).
"""

from procdevices.control.protocol import DeviceStats
from procdevices.devices import (
    Device,
    MonitoredQueue,
    ProcessDevice,
    ProcessMonitoredQueue,
    ProcessProxy,
    ProcessProxySteerable,
    Proxy,
    ProxySteerable,
    ThreadDevice,
    ThreadMonitoredQueue,
    ThreadProxy,
    ThreadProxySteerable,
    device,
    monitored_queue,
    proxy,
    proxy_steerable,
)
from procdevices.errors import (
    ControlTimeout,
    DeviceError,
    DeviceNotRunning,
    DeviceSetupError,
    DeviceStartError,
    RemoteError,
    UnsupportedOperation,
)

__version__ = "0.1.0"

__all__ = [
    "Device", "ThreadDevice", "ProcessDevice",
    "Proxy", "ThreadProxy", "ProcessProxy",
    "ProxySteerable", "ThreadProxySteerable", "ProcessProxySteerable",
    "MonitoredQueue", "ThreadMonitoredQueue", "ProcessMonitoredQueue",
    "device", "proxy", "proxy_steerable", "monitored_queue",
    "DeviceStats",
    "DeviceError", "DeviceSetupError", "DeviceStartError", "DeviceNotRunning",
    "ControlTimeout", "UnsupportedOperation", "RemoteError",
]
