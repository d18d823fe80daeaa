"""A device instance's books: what a supervisor that adopts it must carry on with.

state.json records, per running instance, its process (pid, create time: runstate.py) and
its books: restart count and history, the traffic its ended processes counted, when it
became ready, what it reported then, and which listening sockets the supervisor kept for it.
A new ``up`` (after a crash, or re-executed by ``upgrade``) reads them back, so that ``status``
goes on as if nothing happened: same restarts, same totals, same uptime.

Times are ``time.monotonic()``: Linux's CLOCK_MONOTONIC counts from boot for every process, so
a time written by one supervisor means the same instant to the next one.

Reading is forgiving: a field that is missing or not of its shape is left at its default (the
books of an older version, or a hand-edited file, must never stop an adoption), and nothing
read here can make the supervisor signal or connect to anything.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, NamedTuple

from procdevices.supervisor import policy
from procdevices.supervisor.config import DeviceConfig
from procdevices.supervisor.traffic import COUNTERS

# A ListenerKey, as state.json writes it: [role, endpoint as written, endpoint it resolved to].
ListenerKey = tuple[str, str, str]


def fingerprint(instance: DeviceConfig, process_fields: tuple[str, ...]) -> str:
    """What the process of ``instance`` (as the file writes it) runs: a digest of the fields
    a reload restarts a device for. Equal digests: the adopted process runs what the file
    asks; different: it is restarted, as a reload would."""
    text = repr(tuple((f, getattr(instance, f)) for f in process_fields))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Books(NamedTuple):
    """Books as read back: each field None where state.json had nothing usable."""

    restarts: int | None = None
    failures: int | None = None
    history: policy.RestartHistory | None = None
    traffic_ended: dict[str, int] | None = None
    endpoints: dict[str, list[str]] | None = None
    mq_loop: str | None = None


def read(books: dict[str, Any]) -> Books:
    """The books Child.write_books wrote (anything odd is skipped); Child.resume_books applies them."""
    history, ended, endpoints = books.get("history"), books.get("traffic_ended"), books.get("endpoints")
    mq_loop = books.get("mq_loop")
    return Books(
        restarts=_count(books.get("restarts")),
        failures=_count(books.get("failures")),
        history=(
            policy.RestartHistory(tuple(float(t) for t in history))
            if isinstance(history, list) and all(_is_time(t) for t in history)
            else None
        ),
        traffic_ended=(
            {k: int(ended[k]) for k in COUNTERS}
            if isinstance(ended, dict) and all(_count(ended.get(k)) is not None for k in COUNTERS)
            else None
        ),
        endpoints=(
            endpoints
            if isinstance(endpoints, dict)
            and all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(e, str) for e in v)
                for k, v in endpoints.items()
            )
            else None
        ),
        mq_loop=mq_loop if isinstance(mq_loop, str) else None,
    )


def started_times(books: dict[str, Any], now: float) -> tuple[float, float]:
    """(spawned_at, ready_at) as recorded, each ``now`` when missing or in the future."""

    def recorded(key: str) -> float:
        value: Any = books.get(key)
        return float(value) if _is_time(value) and float(value) <= now else now

    return recorded("spawned_at"), recorded("ready_at")


def listeners(books: dict[str, Any]) -> list[ListenerKey]:
    """The listening sockets recorded: (role, as written, resolved)."""
    found = books.get("listeners")
    if not isinstance(found, list):
        return []
    return [
        (key[0], key[1], key[2])
        for key in found
        if isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)
    ]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
