"""procdevices: run ZeroMQ devices in production.

A drop-in replacement for :mod:`zmq.devices` whose background devices report readiness and
obey a dedicated control socket, plus a supervisor (``procdevices up``).

The names below are imported on first use: ``import procdevices`` alone (the pytest plugin,
``procdevices.testing``, the command line) does not pay for pyzmq and the device layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_DEVICES = (
    "Device", "ThreadDevice", "ProcessDevice",
    "Proxy", "ThreadProxy", "ProcessProxy",
    "ProxySteerable", "ThreadProxySteerable", "ProcessProxySteerable",
    "MonitoredQueue", "ThreadMonitoredQueue", "ProcessMonitoredQueue",
    "device", "proxy", "proxy_steerable", "monitored_queue",
)  # fmt: skip
_ERRORS = (
    "DeviceError", "DeviceSetupError", "DeviceStartError", "DeviceExitedEarly", "DeviceNotRunning",
    "ControlTimeout", "UnsupportedOperation", "RemoteError",
)  # fmt: skip
_TAP = ("tap", "Tap", "TapMessage", "TapError")
_HOME = {
    **dict.fromkeys(_DEVICES, "procdevices.devices"),
    **dict.fromkeys(_ERRORS, "procdevices.errors"),
    "DeviceStats": "procdevices.control.protocol",
    **dict.fromkeys(_TAP, "procdevices.tapreader"),
}

__all__ = [*_DEVICES, "DeviceStats", *_ERRORS, *_TAP]

if TYPE_CHECKING:
    # "X as X": an explicit re-export, for the type checker.
    from procdevices.control.protocol import DeviceStats as DeviceStats
    from procdevices.devices import *  # noqa: F403
    from procdevices.errors import ControlTimeout as ControlTimeout
    from procdevices.errors import DeviceError as DeviceError
    from procdevices.errors import DeviceExitedEarly as DeviceExitedEarly
    from procdevices.errors import DeviceNotRunning as DeviceNotRunning
    from procdevices.errors import DeviceSetupError as DeviceSetupError
    from procdevices.errors import DeviceStartError as DeviceStartError
    from procdevices.errors import RemoteError as RemoteError
    from procdevices.errors import UnsupportedOperation as UnsupportedOperation
    from procdevices.tapreader import Tap as Tap
    from procdevices.tapreader import TapError as TapError
    from procdevices.tapreader import TapMessage as TapMessage
    from procdevices.tapreader import tap as tap


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        if name == "devices":
            return importlib.import_module("procdevices.devices")
        raise AttributeError(f"module 'procdevices' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
