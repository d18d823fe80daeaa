"""The device layer: pyzmq's zmq.devices API with spawn, readiness and control sockets.

Module names mirror pyzmq's (basedevice, proxydevice, ...), so no submodule shadows one of
the functions re-exported here (``proxy`` is zmq.proxy, as in pyzmq).
"""

from zmq import device, proxy, proxy_steerable
from zmq.devices.monitoredqueue import monitored_queue

from procdevices.devices.basedevice import Device, ProcessDevice, ThreadDevice
from procdevices.devices.monitoredqueuedevice import MonitoredQueue, ProcessMonitoredQueue, ThreadMonitoredQueue
from procdevices.devices.proxydevice import ProcessProxy, Proxy, ThreadProxy
from procdevices.devices.proxysteerabledevice import ProcessProxySteerable, ProxySteerable, ThreadProxySteerable

__all__ = [
    "Device", "ThreadDevice", "ProcessDevice",
    "Proxy", "ThreadProxy", "ProcessProxy",
    "ProxySteerable", "ThreadProxySteerable", "ProcessProxySteerable",
    "MonitoredQueue", "ThreadMonitoredQueue", "ProcessMonitoredQueue",
    "device", "proxy", "proxy_steerable", "monitored_queue",
]
