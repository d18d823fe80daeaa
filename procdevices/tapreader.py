"""``procdevices.tap(name)``: the messages passing through a running device, as an iterator.

The device publishes a copy of its traffic on ``<run_dir>/ctl/NAME.tap`` (devices/tapsocket.py);
this is the reader. Every filter runs here, never in the device: the device only ever does a
non-blocking send to a PUB socket, which drops what a slow reader cannot take. What the tap did
not show (dropped at the device's bound, or filtered here) is the difference between the
device's own counters (STATS) and what was shown: :meth:`Tap.trailer`.

The tap follows the instance across restarts (the SUB socket reconnects to the same path; a
change of pid is reported to ``on_note``), and ends when the device is stopped or FATAL. It
learns of those from the supervisor's event stream (events.sock) and asks ``status`` only
then, and every few seconds in case an event was missed; the device's own counters (STATS on
its control socket, not through the supervisor) are read twice a second.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from procdevices import runlayout
from procdevices.control.client import ControlClient, SupervisorUnreachable, call_supervisor
from procdevices.control.protocol import Command, PingReply, SupervisorCommand
from procdevices.errors import DeviceError
from procdevices.supervisor.runstate import RunDir

SIDES = ("in", "out", "both")
UNKNOWN = "?"
# How often the reader reads the device's counters (a killed process loses at most this much
# of its count), and how often it asks the supervisor about the device without an event.
COUNTS_EVERY = 0.5
STATUS_EVERY = 5.0
_FRAME_COUNTERS = ("front_msgs_in", "back_msgs_in")


class TapError(Exception):
    """The device cannot be tapped (not running, no tap, another host); one line."""


class NoSupervisor(TapError):
    """No supervisor answers on the run dir."""


@dataclass(frozen=True)
class TapMessage:
    """One message seen by the tap. ``dir``: ``in`` (received on the in socket), ``out``
    (received on the out socket) or ``?`` (libzmq's capture does not say)."""

    ts: float
    device: str
    dir: str
    seq: int  # 1, 2, ... in the order the tap received them (gaps: filtered here)
    frames: tuple[bytes, ...]

    def as_json(self, snaplen: int | None = None) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "device": self.device,
            "dir": self.dir,
            "seq": self.seq,
            "frames": [frame_json(f, snaplen) for f in self.frames],
        }


def frame_json(frame: bytes, snaplen: int | None) -> dict[str, Any]:
    """``{len, text}`` when the (cut) frame is UTF-8, else ``{len, b64}``."""
    import base64

    cut = frame if snaplen is None else frame[:snaplen]
    try:
        return {"len": len(frame), "text": cut.decode("utf-8")}
    except UnicodeDecodeError:
        return {"len": len(frame), "b64": base64.b64encode(cut).decode()}


class Tap:
    """Iterate over the messages passing through device instance ``name``; use as a context
    manager (or call :meth:`close`). Filters: ``side``, ``prefix`` (the first payload frame
    starts with it), ``grep`` (a regex searched in any frame), ``sample`` (every Nth message
    that passed the other filters); ends after ``count`` messages or ``duration`` seconds."""

    def __init__(
        self,
        name: str,
        run_dir: str | Path | None = None,
        *,
        side: str = "both",
        count: int | None = None,
        duration: float | None = None,
        prefix: bytes | None = None,
        grep: str | bytes | None = None,
        sample: int | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}, not {side!r}")
        if sample is not None and sample < 1:
            raise ValueError("sample must be at least 1")
        if count is not None and count < 0:
            raise ValueError("count must not be negative")
        self.name = name
        if run_dir is None:
            from procdevices.cli.locate import client_run_dir

            run_dir = client_run_dir(None, None)
        self.run_dir = RunDir(Path(run_dir))
        # The copy holds payloads: read it only from a run dir that is the caller's, as every
        # client command does (RunDirError otherwise).
        self.run_dir.check_trusted()
        self.side, self.count, self.duration, self.prefix, self.sample = side, count, duration, prefix, sample
        self.grep = re.compile(grep.encode() if isinstance(grep, str) else grep) if grep is not None else None
        self.on_note = on_note or (lambda text: None)
        self.shown = 0  # messages yielded
        self.shown_frames = 0
        self.received = 0  # messages the tap received (before its filters)
        self._passed = 0  # frames the device received, summed over its restarts
        self._control = ControlClient(self.run_dir.device_control_endpoint(name))
        self.pid = self._running_pid()
        self.tap = self._tap_entry()
        counted = self._counts()  # what passed before the tap began is not counted
        self._counted_pid: int = counted[0] if counted is not None else self.pid
        self._last_counts: int | None = counted[1] if counted is not None else None
        self._events = self._subscribe_events()
        self._sub = self._subscribe()
        self._restarts = 0
        self._matched = 0  # messages that passed the filters before --sample
        self._ended = False
        self._next_counts = time.monotonic() + COUNTS_EVERY
        self._next_status = time.monotonic() + STATUS_EVERY
        self._poller = zmq.Poller()
        self._poller.register(self._sub, zmq.POLLIN)
        self._poller.register(self._events, zmq.POLLIN)

    # -- the device, through the supervisor and its control socket --------------------------
    def _status(self) -> dict[str, Any]:
        endpoint = self.run_dir.control_endpoint
        if not Path(runlayout.supervisor_socket(self.run_dir.path)).is_socket():
            raise NoSupervisor(f"no supervisor is running with run dir {self.run_dir.path}")
        try:
            reply = call_supervisor(endpoint, SupervisorCommand.STATUS, {"name": self.name})
        except SupervisorUnreachable as e:
            raise NoSupervisor(str(e)) from None
        if not reply["ok"]:
            raise TapError(str(reply.get("error")))
        devices: list[dict[str, Any]] = reply["result"]["devices"]
        if len(devices) != 1 or devices[0]["name"] != self.name:
            names = ", ".join(d["name"] for d in devices)
            raise TapError(f"{self.name} has {len(devices)} instances ({names}): tap one of them, as NAME.N")
        return devices[0]

    def _running_pid(self) -> int:
        device = self._status()
        if device["state"] != "RUNNING" or not device.get("pid"):
            raise TapError(f"{self.name} is {device['state']}: nothing passes through it; start it first")
        return int(device["pid"])

    def _tap_entry(self) -> dict[str, Any]:
        try:
            info = self._control.request(Command.INFO, 2.0)
        except DeviceError as e:
            raise TapError(f"{self.name} does not answer on its control socket: {e}") from None
        entry = info.get("tap") if isinstance(info, dict) else None
        if not isinstance(entry, dict):
            raise TapError(f"{self.name} runs a procdevices without taps: restart it to tap it")
        if entry.get("endpoint") is None:
            raise TapError(f"{self.name} has no tap: {entry.get('why_not')}")
        if entry["endpoint"] != self.run_dir.device_tap_endpoint(self.name):
            raise TapError(f"{self.name}'s tap is not in the run dir ({entry['endpoint']}): refused")
        return entry

    def _counts(self) -> tuple[int, int] | None:
        """(pid, frames it has received on both sides since it started) of the process behind
        the control socket now; None: unknown. The pid tells a restart from a quiet spell."""
        try:
            ping = PingReply.from_wire(self._control.request(Command.PING, 1.0))
            stats = self._control.request(Command.STATS, 1.0)
        except DeviceError:
            return None
        if ping is None or not isinstance(stats, dict):
            return None
        return ping.pid, sum(int(stats.get(key, 0)) for key in _FRAME_COUNTERS)

    def _update_passed(self) -> None:
        counted = self._counts()
        if counted is None:
            return
        pid, now = counted
        last = self._last_counts if pid == self._counted_pid else None
        # A new process (or counters lower than before: one that restarted between the two
        # requests) counts from zero: all it counted passed since.
        self._passed += now - last if last is not None and now >= last else now
        self._counted_pid, self._last_counts = pid, now

    def _subscribe(self) -> zmq.Socket[bytes]:
        from procdevices.control.client import private_context

        sock: zmq.Socket[bytes] = private_context().socket(zmq.SUB)
        sock.linger = 0
        sock.rcvhwm = 10_000
        # Without a direction prefix, --prefix can be the subscription: the device then drops
        # what nobody wants before it is copied to this process.
        undirected = self.tap["directions"] != "prefixed"
        sock.subscribe(self.prefix if undirected and self.prefix else b"")
        sock.connect(self.tap["endpoint"])
        return sock

    def _subscribe_events(self) -> zmq.Socket[bytes]:
        from procdevices.control.client import private_context

        sock: zmq.Socket[bytes] = private_context().socket(zmq.SUB)
        sock.linger = 0
        sock.subscribe(b"")
        sock.connect(runlayout.events_endpoint(self.run_dir.path))
        return sock

    def _news(self) -> bool:
        """Whether the event stream says something about this device (or the supervisor)."""
        news = False
        while self._events.poll(0):
            try:
                payload = json.loads(self._events.recv())
            except ValueError:
                continue
            if isinstance(payload, dict) and (
                payload.get("instance") == self.name or payload.get("type") == "supervisor"
            ):
                news = True
        return news

    # -- the messages -----------------------------------------------------------------------
    def _direction(self, frames: list[bytes]) -> tuple[str, list[bytes]]:
        return direction_of(self.tap, frames)

    def _wanted(self, direction: str, frames: list[bytes]) -> bool:
        if self.side != "both" and direction != self.side:
            return False
        if self.prefix and not (frames and _payload(frames).startswith(self.prefix)):
            return False
        if self.grep is not None and not any(self.grep.search(f) for f in frames):
            return False
        return True

    def __iter__(self) -> Iterator[TapMessage]:
        deadline = None if self.duration is None else time.monotonic() + self.duration
        while self.count is None or self.shown < self.count:
            message = self.next(deadline)
            if message is None:
                return
            yield message

    def next(self, deadline: float | None = None) -> TapMessage | None:
        """The next message shown, or None: ``deadline`` (time.monotonic()) passed, or the
        device was stopped."""
        while not self._ended:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if now >= self._next_counts:
                self._next_counts = now + COUNTS_EVERY
                if self.pid:
                    self._update_passed()
            if now >= self._next_status:
                self._next_status = now + STATUS_EVERY
                if not self._follow():
                    self._ended = True
                    return None
            until = min(self._next_counts, self._next_status, *([deadline] if deadline is not None else []))
            ready = dict(self._poller.poll(max(1, int((until - now) * 1000))))
            if self._events in ready and self._news():
                self._next_status = now  # ask the supervisor at once
                continue
            if self._sub not in ready:
                continue
            frames = self._sub.recv_multipart()
            self.received += 1
            direction, frames = self._direction(frames)
            if not self._wanted(direction, frames):
                continue
            self._matched += 1
            if self.sample is not None and (self._matched - 1) % self.sample:
                continue
            self.shown += 1
            self.shown_frames += len(frames)
            return TapMessage(time.time(), self.name, direction, self.received, tuple(frames))
        return None

    def _follow(self) -> bool:
        """Whether to go on: the device is running (maybe again, after a restart) or about to be."""
        try:
            device = self._status()
        except TapError as e:
            self.on_note(f"{e}; the tap ends")
            return False
        state, pid = device["state"], device.get("pid")
        if state in ("STOPPED", "FATAL", "EXITED"):
            self.on_note(f"{self.name} is {state}; the tap ends")
            return False
        if state == "RUNNING" and pid and pid != self.pid:
            self._restarts += 1
            self.pid = int(pid)
            self.on_note(f"{self.name} restarted (pid {pid}); the tap goes on")
        return True

    # -- the end ----------------------------------------------------------------------------
    def trailer(self) -> str:
        """Messages shown, and the frames that passed the device without being shown."""
        self._update_passed()
        missed = max(0, self._passed - self.shown_frames)
        lost = f" (plus what a killed process counted in its last {COUNTS_EVERY:g}s)" if self._restarts else ""
        return (
            f"{self.shown} messages shown ({self.shown_frames} frames); the device received "
            f"{self._passed} frames meanwhile{lost}: {missed} not shown "
            "(filtered, sampled, or dropped by the tap's bound)"
        )

    def close(self) -> None:
        self._sub.close(linger=0)
        self._events.close(linger=0)
        self._control.close()

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def direction_of(entry: dict[str, Any], frames: list[bytes]) -> tuple[str, list[bytes]]:
    """A copy's direction and the message's own frames, per the device's INFO ``tap`` entry:
    a monitored queue's copy starts with its in or out prefix (removed here); a one-way
    device's copies all go in -> out; libzmq's capture of a two-way device does not say."""
    directions = entry["directions"]
    if directions == "in":
        return "in", frames
    if directions != "prefixed" or not frames:
        return UNKNOWN, frames
    first = frames[0].hex()
    in_prefix, out_prefix = entry["in_prefix"], entry["out_prefix"]
    if first == in_prefix and first != out_prefix:
        return "in", frames[1:]
    if first == out_prefix and first != in_prefix:
        return "out", frames[1:]
    return UNKNOWN, frames[1:]


def _payload(frames: list[bytes]) -> bytes:
    return frames[0]


def tap(name: str, run_dir: str | Path | None = None, **options: Any) -> Iterator[TapMessage]:
    """The messages passing through device instance ``name`` (see :class:`Tap` for options)."""
    with Tap(name, run_dir, **options) as t:
        yield from t
