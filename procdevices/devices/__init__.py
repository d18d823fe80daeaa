"""The device layer: pyzmq's zmq.devices API with spawn, readiness and control sockets."""

from zmq import device, proxy, proxy_steerable
from zmq.devices.monitoredqueue import monitored_queue

from procdevices.devices.base import Device, ProcessDevice, ThreadDevice
from procdevices.devices.monitored import MonitoredQueue, ProcessMonitoredQueue, ThreadMonitoredQueue
from procdevices.devices.proxy import ProcessProxy, Proxy, ThreadProxy
from procdevices.devices.steerable import ProcessProxySteerable, ProxySteerable, ThreadProxySteerable

__all__ = [
    "Device", "ThreadDevice", "ProcessDevice",
    "Proxy", "ThreadProxy", "ProcessProxy",
    "ProxySteerable", "ThreadProxySteerable", "ProcessProxySteerable",
    "MonitoredQueue", "ThreadMonitoredQueue", "ProcessMonitoredQueue",
    "device", "proxy", "proxy_steerable", "monitored_queue",
]
