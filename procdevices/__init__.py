"""procdevices: run ZeroMQ devices in production.

A drop-in replacement for :mod:`zmq.devices` whose background devices report readiness and
obey a dedicated control socket, plus a supervisor (``python -m procdevices up``).
"""

from procdevices import devices
from procdevices.control.protocol import DeviceStats
from procdevices.devices import *  # noqa: F403  (the zmq.devices API, listed in devices.__all__)
from procdevices.errors import (
    ControlTimeout,
    DeviceError,
    DeviceExitedEarly,
    DeviceNotRunning,
    DeviceSetupError,
    DeviceStartError,
    RemoteError,
    UnsupportedOperation,
)

__version__ = "0.1.0"

__all__ = [
    *devices.__all__,
    "DeviceStats",
    "DeviceError", "DeviceSetupError", "DeviceStartError", "DeviceExitedEarly", "DeviceNotRunning",
    "ControlTimeout", "UnsupportedOperation", "RemoteError",
]
