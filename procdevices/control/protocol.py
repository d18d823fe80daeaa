"""Wire format of a device's control socket.

A device binds a ROUTER socket; clients connect a DEALER. Every request is answered once.

    request:  [request id (8 bytes), command (ASCII), JSON payload]
    reply:    [request id, status (b"ok" | b"error"), JSON payload]

The request id lets a client drop a late reply to a request it already gave up on, so one
timeout never shifts every later answer by one.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, fields
from typing import Any


class Command(enum.Enum):
    """The commands a device's control socket understands."""

    PING = b"PING"  # proves the forwarding loop itself answers, not just the process
    STATS = b"STATS"
    PAUSE = b"PAUSE"
    RESUME = b"RESUME"
    STOP = b"STOP"
    INFO = b"INFO"


OK = b"ok"
ERROR = b"error"


@dataclass(frozen=True)
class DeviceStats:
    """Traffic counters of a forwarding loop since it started.

    ``msgs`` count message frames, as libzmq does (a routing envelope counts).
    ``front`` is the in socket, ``back`` the out socket; ``in`` is what the device received
    on that socket, ``out`` what it sent through it.
    """

    front_msgs_in: int = 0
    front_bytes_in: int = 0
    front_msgs_out: int = 0
    front_bytes_out: int = 0
    back_msgs_in: int = 0
    back_bytes_in: int = 0
    back_msgs_out: int = 0
    back_bytes_out: int = 0

    @classmethod
    def from_counters(cls, values: list[int]) -> DeviceStats:
        if len(values) != len(fields(cls)):
            raise ValueError(f"expected {len(fields(cls))} counters, got {len(values)}")
        return cls(*values)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def decode(frame: bytes) -> Any:
    return json.loads(frame) if frame else None
