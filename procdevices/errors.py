"""Exceptions raised by procdevices.

Every exception that can cross a process boundary (a device reports its setup failure to the
parent through a pipe) pickles with its fields intact.
"""

from __future__ import annotations

import zmq

from procdevices.errorcodes import ErrorCode


class DeviceError(Exception):
    """Base class of the device layer's errors."""


class DeviceSetupError(DeviceError):
    """A device could not build one of its sockets.

    Names the socket role (``in``, ``out``, ``mon``, ``ctrl``, ``control``), the action that
    failed (``bind``, ``connect``, ``setsockopt``, ``socket``), the address or option
    involved, and libzmq's reason, so the caller can act without reading a child's stderr.
    """

    def __init__(self, role: str, action: str, target: str, reason: str, errno: int | None = None) -> None:
        self.role = role
        self.action = action
        self.target = target
        self.reason = reason
        self.errno = errno
        super().__init__(role, action, target, reason, errno)

    def __str__(self) -> str:
        where = f" {self.target}" if self.target else ""
        return f"{self.role} socket: {self.action}{where} failed: {self.reason}"

    @property
    def address_in_use(self) -> bool:
        return self.errno == zmq.EADDRINUSE


class DeviceStartError(DeviceError):
    """A background device did not become ready (it died, or timed out, before its sockets
    were bound and connected)."""


class DeviceExitedEarly(DeviceStartError):
    """The device process ended before it reported anything: a crash, a kill, or a class its
    interpreter could not import. Unlike a setup error, trying again may succeed."""


class DeviceNotRunning(DeviceError):
    """A control operation was asked of a device that is not running."""


class ControlTimeout(DeviceError):
    """A device did not answer its control socket within the deadline."""


class UnsupportedOperation(DeviceError):
    """The device cannot perform this control operation (for example, a subclass whose own
    ``run_device`` has no control socket cannot be paused)."""


class RemoteError(DeviceError):
    """The device answered a control request with an error."""


# The error code each exception travels as, and back: both protocols carry codes, not names.
_CODES: dict[type[DeviceError], ErrorCode] = {
    UnsupportedOperation: ErrorCode.UNSUPPORTED,
    ControlTimeout: ErrorCode.TIMEOUT,
    DeviceNotRunning: ErrorCode.NOT_RUNNING,
}


def error_code_of(error: DeviceError) -> ErrorCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return ErrorCode.FAILED


def exception_for(code: ErrorCode | None) -> type[DeviceError]:
    """The exception a client raises for an error reply with this code."""
    for cls, known in _CODES.items():
        if known is code:
            return cls
    return RemoteError
