"""One supervised device instance: its process, state, restart bookkeeping and health.

The supervisor loop owns every Child; a Child never blocks and never sleeps. Its state only
changes through :func:`procdevices.supervisor.states.next_state`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import psutil
import zmq

from procdevices.control.protocol import OK, Command, decode, encode
from procdevices.devices.launch import PendingStart
from procdevices.supervisor.config import DeviceConfig
from procdevices.supervisor.policy import ProbeState, RestartHistory
from procdevices.supervisor.states import Event, State, next_state

ReplyCallback = Callable[[bool, Any], None]


class AsyncControl:
    """A non-blocking client of one device's control socket, polled by the supervisor loop."""

    _ids = itertools.count(1)

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(endpoint)
        self._pending: dict[bytes, tuple[float, ReplyCallback]] = {}

    def send(self, command: Command, now: float, timeout: float, callback: ReplyCallback) -> None:
        request_id = next(self._ids).to_bytes(8, "big")
        try:
            self.socket.send_multipart([request_id, command.value, encode(None)], zmq.NOBLOCK)
        except zmq.Again:
            # Its queue is full: the device has not read a request for a long while.
            callback(False, {"error": "the device's control queue is full", "type": "ControlTimeout"})
            return
        self._pending[request_id] = (now + timeout, callback)

    def on_readable(self) -> None:
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            entry = self._pending.pop(frames[0], None)
            if entry is not None:
                entry[1](frames[1] == OK, decode(frames[2]))

    def expire(self, now: float) -> None:
        for request_id, (deadline, callback) in list(self._pending.items()):
            if now >= deadline:
                del self._pending[request_id]
                callback(False, {"error": "no answer before the deadline", "type": "ControlTimeout"})

    def next_deadline(self) -> float | None:
        return min((d for d, _ in self._pending.values()), default=None)

    def fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for _, callback in pending.values():
            callback(False, {"error": reason, "type": "DeviceNotRunning"})

    def close(self) -> None:
        self.fail_all("the device stopped")
        self.socket.close(linger=0)


@dataclass
class StopProgress:
    requested_at: float
    term_sent: bool = False
    kill_sent: bool = False


@dataclass
class Child:
    config: DeviceConfig
    device_name: str  # the [devices.NAME] this instance belongs to
    control_endpoint: str
    pickled: bytes
    state: State = State.STOPPED
    pending: PendingStart | None = None
    process: BaseProcess | None = None
    ps: psutil.Process | None = None
    control: AsyncControl | None = None
    spawned_at: float = 0.0
    ready_at: float | None = None
    restarts: int = 0
    failures: int = 0
    history: RestartHistory = field(default_factory=RestartHistory)
    retry_at: float | None = None
    stop: StopProgress | None = None
    restart_after_stop: bool = False
    probe: ProbeState = field(default_factory=ProbeState)
    probe_due: float | None = None
    probe_in_flight: bool = False
    unhealthy: str | None = None  # why we killed it, when we did
    last_exit: str = ""
    endpoints: dict[str, list[str]] = field(default_factory=dict)
    stopped_by: str = ""
    paused: bool = False
    ever_ready: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    def fire(self, event: Event) -> State:
        self.state = next_state(self.state, event)
        return self.state

    @property
    def pid(self) -> int | None:
        if self.process is not None and self.state in (State.STARTING, State.RUNNING, State.STOPPING):
            return self.process.pid
        return None

    def describe(self, now: float) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "device": self.device_name,
            "kind": self.config.kind,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime": round(now - self.ready_at, 3) if self.ready_at is not None and self.state is State.RUNNING else None,
            "last_exit": self.last_exit or None,
            "endpoints": self.endpoints,
            "paused": self.paused,
            "cpu_percent": None,
            "rss": None,
        }
        if self.ps is not None and self.pid is not None:
            try:
                with self.ps.oneshot():
                    info["cpu_percent"] = self.ps.cpu_percent(None)
                    info["rss"] = self.ps.memory_info().rss
                    info["zombie"] = self.ps.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                pass
        return info
