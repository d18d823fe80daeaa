"""From a validated DeviceConfig to the device-layer object that runs it."""

from __future__ import annotations

import zmq

from procdevices.devices import (
    ProcessDevice,
    ProcessMonitoredQueue,
    ProcessProxy,
    ProcessProxySteerable,
)
from procdevices.supervisor.config import DeviceConfig, SocketSpec

_DEVICE_TYPES = {"queue": zmq.QUEUE, "forwarder": zmq.FORWARDER, "streamer": zmq.STREAMER}


def build_device(config: DeviceConfig, control_endpoint: str) -> ProcessDevice:
    """The device object for one instance (one replica) of a configured device."""
    in_type = config.in_.type
    out_type = config.out.type if config.out is not None else -1
    mon = config.mon
    device: ProcessDevice
    if config.kind == "monitored_queue":
        assert mon is not None, "the config loader requires mon for monitored_queue"
        device = ProcessMonitoredQueue(in_type, out_type, mon.type, config.in_prefix, config.out_prefix)
    elif config.kind == "steerable":
        ctrl_type = config.ctrl.type if config.ctrl is not None else None
        mon_type = mon.type if mon is not None else zmq.PUB
        device = ProcessProxySteerable(in_type, out_type, mon_type, ctrl_type)
    elif config.kind == "proxy" and mon is not None:
        device = ProcessProxy(in_type, out_type, mon.type)
    else:
        device = ProcessDevice(_DEVICE_TYPES.get(config.kind, zmq.QUEUE), in_type, out_type)
    _record(device, "in", config.in_)
    if config.out is not None:
        _record(device, "out", config.out)
    if mon is not None and config.kind in ("monitored_queue", "steerable", "proxy"):
        _record(device, "mon", mon)
    if config.ctrl is not None and config.kind == "steerable":
        _record(device, "ctrl", config.ctrl)
    device.control_endpoint = control_endpoint
    return device


def _record(device: ProcessDevice, role: str, spec: SocketSpec) -> None:
    setsockopt = getattr(device, f"setsockopt_{role}")
    bind = getattr(device, f"bind_{role}")
    connect = getattr(device, f"connect_{role}")
    for option, value in spec.sockopts:
        setsockopt(option, value)
    for address in spec.bind:
        bind(address)
    for address in spec.connect:
        connect(address)
