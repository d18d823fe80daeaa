"""Logging for the command line and the supervisor, through the standard ``logging`` module.

Every line carries an ISO-8601 timestamp with date and UTC offset, the level and, where one is
concerned, the device. ``--log-format json`` gives one JSON object per line for log shippers:
``{"time", "level", "logger", "message", "device"?}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Protocol

LOGGER = "procdevices"
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")


class Log(Protocol):
    """How the supervisor's parts log: a message, optionally about one device."""

    def __call__(self, message: str, *, device: str | None = None, level: int = logging.INFO) -> None: ...


def _timestamp(record: logging.LogRecord) -> str:
    local = time.localtime(record.created)
    millis = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{millis:03d}" + time.strftime("%z", local)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{_timestamp(record)} {record.levelname:<7} procdevices: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        device = getattr(record, "device", None)
        if device is not None:
            entry["device"] = device
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str = "text", level: str = "info") -> logging.Logger:
    """Send procdevices' records to stderr in the chosen format; idempotent."""
    logger = logging.getLogger(LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def to_logger(logger: logging.Logger | None = None) -> Log:
    """A :class:`Log` that writes through ``logger`` (default: procdevices')."""
    target = logger or logging.getLogger(LOGGER)

    def log(message: str, *, device: str | None = None, level: int = logging.INFO) -> None:
        target.log(level, message, extra={"device": device} if device is not None else None)

    return log
