"""From a validated DeviceConfig to the device-layer object that runs it."""

from __future__ import annotations

import zmq

from procdevices.devices import (
    ProcessDevice,
    ProcessMonitoredQueue,
    ProcessProxy,
    ProcessProxySteerable,
)
from procdevices.supervisor.config import DeviceConfig
from procdevices.supervisor.config.kinds import KIND_SPECS, Factory


def build_device(config: DeviceConfig, control_endpoint: str) -> ProcessDevice:
    """The device object for one instance (one replica) of a configured device."""
    spec = KIND_SPECS[config.kind]
    in_type = config.in_.type
    out_type = config.out.type if config.out is not None else -1
    mon = config.mon
    device: ProcessDevice
    if spec.factory is Factory.MONITORED_QUEUE:
        assert mon is not None, "the config loader requires mon for monitored_queue"
        device = ProcessMonitoredQueue(in_type, out_type, mon.type, config.in_prefix, config.out_prefix)
    elif spec.factory is Factory.STEERABLE:
        ctrl_type = config.ctrl.type if config.ctrl is not None else None
        mon_type = mon.type if mon is not None else zmq.PUB
        device = ProcessProxySteerable(in_type, out_type, mon_type, ctrl_type)
    elif spec.factory is Factory.PROXY and mon is not None:
        device = ProcessProxy(in_type, out_type, mon.type)
    else:
        device = ProcessDevice(spec.device_type, in_type, out_type)
    # The loader admits mon and ctrl only on kinds that have them (KindSpec.mon / .ctrl).
    for role, socket in config.sockets():
        device.record_setup(role, sockopts=socket.sockopts, binds=socket.bind, connects=socket.connect)
    device.control_endpoint = control_endpoint
    device.stop_linger = config.stop_linger
    return device
