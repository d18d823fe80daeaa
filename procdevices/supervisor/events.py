"""The supervisor's live event stream: every state change, restart decision and command
received, as one JSON object per message on a PUB socket in the run dir.

    Supervisor ──emit(dict)──► EventPublisher ── PUB <run_dir>/events.sock ──► procdevices events

The run dir is owner-only, so only this user can listen. Publishing never blocks and never
fails the supervisor: a subscriber that does not keep up loses events (PUB drops at its HWM),
it does not slow supervision down. The schema is documented in docs/observability.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from procdevices import runlayout
from procdevices.control.protocol import encode
from procdevices.supervisor.child import Child
from procdevices.supervisor.states import Event, State

EventSink = Callable[[dict[str, Any]], None]

# Events buffered per subscriber before PUB drops for it: enough for a burst of restarts.
SUBSCRIBER_BACKLOG = 10_000


def events_endpoint(run_dir: Path) -> str:
    return runlayout.events_endpoint(run_dir)


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """One event: its ``type``, wall-clock ``time`` (seconds since the epoch), then fields."""
    return {"type": kind, "time": round(time.time(), 6), **fields}


def discard(_: dict[str, Any]) -> None:
    pass


def state_event(child: Child, old: State, new: State, why: Event) -> dict[str, Any]:
    explained = why in (Event.EXIT_RESTART, Event.EXIT_FINAL, Event.FAIL, Event.STOPPED)
    return event(
        "state",
        device=child.device_name,
        instance=child.name,
        **{"from": old.value, "to": new.value},
        event=why.value,
        reason=child.last_exit if explained else why.value.lower(),
        pid=child.process.pid if child.process is not None else None,
    )


def decision_event(child: Child, code: int | None, now: float) -> dict[str, Any] | None:
    """What was decided after an unrequested exit; None after a requested stop."""
    action = {State.BACKOFF: "restart", State.FATAL: "give_up", State.EXITED: "stay_down"}.get(child.state)
    if action is None:
        return None
    return event(
        "decision",
        device=child.device_name,
        instance=child.name,
        action=action,
        delay=round(child.retry_at - now, 6) if child.retry_at is not None else None,
        exit_code=code,
        restarts=child.restarts,
        reason=child.last_exit,
    )


class EventPublisher:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.PUB)
        self.socket.linger = 0
        self.socket.sndhwm = SUBSCRIBER_BACKLOG
        self.socket.bind(endpoint)
        self.endpoint = endpoint

    def __call__(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.socket.send(encode(payload), zmq.NOBLOCK)

    def close(self) -> None:
        # A moment for the last events ("stopped") to reach the subscribers.
        self.socket.close(linger=200)
        with contextlib.suppress(OSError):
            Path(self.endpoint[len("ipc://") :]).unlink()


def describe(payload: dict[str, Any]) -> str:
    """One event as a line for a human."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(payload.get("time", 0)))
    kind = payload.get("type")
    if kind == "state":
        pid = f" pid {payload['pid']}" if payload.get("pid") else ""
        return f"{stamp} {payload['instance']}: {payload['from']} -> {payload['to']}{pid} ({payload['reason']})"
    if kind == "decision":
        return f"{stamp} {payload['instance']}: {payload['action']} ({payload['reason']})"
    if kind == "command":
        args = " ".join(f"{k}={v}" for k, v in payload.get("args", {}).items())
        return f"{stamp} command {payload['command']} {args}".rstrip()
    if kind == "adopted":
        since = f" after {payload['orphaned_for']:g}s without a supervisor" if payload.get("orphaned_for") else ""
        return f"{stamp} {payload['instance']}: adopted (pid {payload['pid']}, {payload['restarts']} restarts){since}"
    if kind == "supervisor":
        return f"{stamp} supervisor {payload.get('state')} (pid {payload.get('pid')})"
    return f"{stamp} {payload}"
