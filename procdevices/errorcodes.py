"""Why a request failed: one vocabulary for both protocols.

A leaf module (it imports nothing from ``procdevices``): errors.py, on the bottom floor, maps
exceptions to these codes, and control/protocol.py puts them on the wire.
"""

from __future__ import annotations

import enum

__all__ = ["ErrorCode"]


class ErrorCode(enum.Enum):
    """Why a request failed; one vocabulary for both protocols."""

    BAD_REQUEST = "bad_request"  # malformed: frames, size, JSON, types
    UNKNOWN_COMMAND = "unknown_command"
    NO_SUCH_DEVICE = "no_such_device"
    NOT_RUNNING = "not_running"  # the device (or every selected one) is not running
    UNSUPPORTED = "unsupported"  # the device kind cannot do this
    TIMEOUT = "timeout"  # no answer before the deadline
    REFUSED = "refused"  # valid, but not now (shutting down, already running)
    FAILED = "failed"  # tried, and it did not work
    INVALID_CONFIG = "invalid_config"  # a reload found the topology invalid: nothing changed
    INTERNAL = "internal"  # a bug, contained; the message says what to report
