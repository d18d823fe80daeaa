"""Fakes for unit tests of the supervisor: a clock, a launcher, device processes, control
channels and an event loop, all driven by the test. No process, socket or thread is made.

A test scripts a history — "broker becomes ready", "broker exits with code 1", "2.5 s pass",
"the PING is not answered" — and asserts the states, decisions and log lines that follow,
in the manner of honcho's manager tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procdevices.control.aclient import ReplyCallback
from procdevices.control.protocol import Command, ErrorCode, device_error
from procdevices.devices.runtime import ReadyInfo
from procdevices.errors import DeviceError, DeviceExitedEarly
from procdevices.supervisor.child import Child
from procdevices.supervisor.config import DeviceConfig, Topology, parse_topology
from procdevices.supervisor.core import Supervisor
from procdevices.supervisor.handlers import CommandHandlers
from procdevices.supervisor.launcher import Resources
from procdevices.supervisor.reload import ChildFactory

_fds = itertools.count(10_000)
_pids = itertools.count(50_000)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeProcess:
    """A device process whose fate the test decides."""

    label: str
    pid: int = field(default_factory=lambda: next(_pids))
    sentinel: int = field(default_factory=lambda: next(_fds))
    report_fd: int | None = field(default_factory=lambda: next(_fds))
    report: ReadyInfo | DeviceError | None = None  # None: it exits without a report
    exit_code: int | None = None
    signals: list[str] = field(default_factory=list)
    rss_bytes: int = 20 * 1024 * 1024
    zombie: bool = False
    reaped: bool = False

    def report_waiting(self) -> bool:
        return self.report_fd is not None and self.report is not None

    def read_report(self) -> ReadyInfo:
        self.report_fd = None
        if isinstance(self.report, ReadyInfo):
            return self.report
        if isinstance(self.report, DeviceError):
            raise self.report
        raise DeviceExitedEarly(f"{self.label} exited before it was ready")

    def discard_report(self) -> None:
        self.report_fd = None

    def reap(self) -> int | None:
        assert not self.reaped, "a process is reaped once"
        self.reaped = True
        self.report_fd = None
        return self.exit_code

    def terminate(self) -> None:
        self.signals.append("SIGTERM")

    def kill(self) -> None:
        self.signals.append("SIGKILL")

    def create_time(self) -> float | None:
        return 1.5

    def rss(self) -> int | None:
        return self.rss_bytes

    def resources(self) -> Resources | None:
        return Resources(rss=self.rss_bytes, cpu_percent=1.25, zombie=self.zombie)


@dataclass
class SentRequest:
    command: Command
    deadline: float
    callback: ReplyCallback
    missed: bool = False  # the device chose to leave it unanswered (Harness.miss_probes)


class FakeControl:
    """A device control connection: requests are recorded; the test answers them."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.pending: list[SentRequest] = []
        self.sent: list[Command] = []
        self.closed = False

    def send(self, command: Command, now: float, timeout: float, callback: ReplyCallback, payload: Any = None) -> None:
        self.sent.append(command)
        self.pending.append(SentRequest(command, now + timeout, callback))

    def answer(self, command: Command, ok: bool = True, body: Any = None) -> None:
        for request in self.pending:
            if request.command is command:
                self.pending.remove(request)
                request.callback(ok, body if body is not None else {})
                return
        raise AssertionError(f"no {command.name} request is waiting (sent: {[c.name for c in self.sent]})")

    def waiting(self, command: Command) -> bool:
        return any(r.command is command for r in self.pending)

    def expire(self, now: float) -> None:
        for request in [r for r in self.pending if now >= r.deadline]:
            self.pending.remove(request)
            request.callback(False, device_error(ErrorCode.TIMEOUT, "no answer before the deadline"))

    def next_deadline(self) -> float | None:
        return min((r.deadline for r in self.pending), default=None)

    def fail_all(self, reason: str) -> None:
        pending, self.pending = self.pending, []
        for request in pending:
            request.callback(False, device_error(ErrorCode.NOT_RUNNING, reason))

    def close(self) -> None:
        self.closed = True


class FakeLauncher:
    def __init__(self, idle_workers: int = 0) -> None:
        self.launched: list[FakeProcess] = []
        self.controls: dict[str, FakeControl] = {}
        self.fail_with: OSError | None = None
        self.refills = 0
        self.released = False
        self.idle = idle_workers
        self.forgotten: list[str] = []
        self.ops: list[tuple[str, str]] = []
        self.jobs: list[
            tuple[bytes, str, str]
        ] = []  # (pickled device, control endpoint, label) per launch  # ("launch" | "forget", label), in order

    def launch(self, pickled_device: bytes, control_endpoint: str, label: str) -> FakeProcess:
        if self.fail_with is not None:
            raise self.fail_with
        process = FakeProcess(label)
        self.launched.append(process)
        self.jobs.append((pickled_device, control_endpoint, label))
        self.ops.append(("launch", label))
        return process

    def connect(self, control_endpoint: str) -> FakeControl:
        control = FakeControl(control_endpoint)
        self.controls[control_endpoint] = control
        return control

    def refill(self, now: float) -> None:
        self.refills += 1

    def release(self) -> None:
        self.released = True

    def resize(self, size: int) -> None:
        self.resized_to = size

    def forget(self, label: str) -> None:
        self.forgotten.append(label)
        self.ops.append(("forget", label))

    def listener_keys(self, label: str) -> list[tuple[str, str, str]]:
        return []

    def idle_workers(self) -> int:
        return self.idle

    def close(self, *, leave_devices: bool = False) -> None:
        pass


class FakeWatcher:
    def __init__(self) -> None:
        self.watches: dict[Any, Callable[[float], None]] = {}

    def watch(self, pollable: Any, on_event: Callable[[float], None], *, quiet: bool = False) -> None:
        assert pollable not in self.watches, f"{pollable} watched twice"
        self.watches[pollable] = on_event

    def unwatch(self, pollable: Any) -> None:
        self.watches.pop(pollable, None)

    def fire(self, pollable: Any, now: float) -> None:
        self.watches[pollable](now)


class FakeStore:
    def __init__(self) -> None:
        self.written: list[dict[str, dict[str, Any]]] = []
        self.fail_with: OSError | None = None

    def write_state(self, devices: dict[str, dict[str, Any]]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.written.append(devices)


# Fast, round numbers so that histories read easily.
SETTINGS = {
    "probe": {"interval": 1.0, "timeout": 0.5, "failures": 2},
    "stop_timeout": 2.0,
    "kill_timeout": 1.0,
    "start_timeout": 10.0,
    "stable_after": 10.0,
    "backoff": {"initial": 0.5, "factor": 2.0, "max": 3.0},
    "intensity": {"max_restarts": 3, "within": 60.0},
}


def topology(devices: dict[str, dict[str, Any]], base_dir: Path, **defaults: Any) -> Topology:
    """A topology of streamers on ipc endpoints in ``base_dir``; each device's dict overrides."""
    table: dict[str, Any] = {}
    for name, overrides in devices.items():
        table[name] = {
            "kind": "streamer",
            "in": {"bind": [f"ipc://{base_dir}/{name}-in"]},
            "out": {"bind": [f"ipc://{base_dir}/{name}-out"]},
            **overrides,
        }
    data = {"supervisor": {"run_dir": str(base_dir / "run"), "defaults": {**SETTINGS, **defaults}}, "devices": table}
    return parse_topology(data, source="<test>", base_dir=base_dir)


def make_child(instance: DeviceConfig, device: str) -> Child:
    return Child(instance, device, f"ipc://fake/{instance.name}.sock", b"")


class Harness:
    """A Supervisor wired to fakes, plus verbs that script its history."""

    def __init__(
        self,
        topo: Topology,
        *,
        idle_workers: int = 0,
        load: Callable[[str | None], Topology] | None = None,
        max_starting: int | None = None,
        make_child: ChildFactory = make_child,
        cpus: int | None = 4,  # not the test machine's: start_timeout's fair shares depend on it
    ) -> None:
        self.clock = FakeClock()
        self.launcher = FakeLauncher(idle_workers)
        self.watcher = FakeWatcher()
        self.store = FakeStore()
        self.lines: list[str] = []
        self.records: list[tuple[str, str | None, int]] = []  # (message, device, level)
        self.notes: list[str] = []
        self.events: list[dict[str, Any]] = []
        children = [make_child(instance, config.name) for config in topo.devices for instance in config.instances()]
        self.sup = Supervisor(
            topo,
            children,
            launcher=self.launcher,
            watcher=self.watcher,
            store=self.store,
            clock=self.clock,
            log=self.log,
            notify=self.notes.append,
            events=self.events.append,
            load=load,
            make_child=make_child,
            max_starting=max_starting,
            cpus=cpus,
        )
        self.handlers = CommandHandlers(self.sup)
        # Devices answer their liveness probes unless the test says otherwise.
        self.unresponsive: set[str] = set()
        self.misses: dict[str, int] = {}  # probes each device leaves unanswered, then answers again
        self.ping_reply: dict[str, dict[str, Any]] = {}

    def log(self, message: str, *, device: str | None = None, level: int = 20) -> None:
        self.lines.append(message)
        self.records.append((message, device, level))

    def record(self, text: str) -> tuple[str | None, int]:
        """(device, level) of the one logged line that contains ``text``."""
        found = [(device, level) for message, device, level in self.records if text in message]
        assert len(found) == 1, f"{len(found)} lines contain {text!r}: {self.lines}"
        return found[0]

    # -- looking ----------------------------------------------------------------------------------
    def child(self, name: str) -> Child:
        return next(c for c in self.sup.children if c.name == name)

    def state(self, name: str) -> str:
        return self.child(name).state.value

    def process(self, name: str) -> FakeProcess:
        process = self.child(name).process
        assert isinstance(process, FakeProcess), f"{name} has no process"
        return process

    def control(self, name: str) -> FakeControl:
        return self.launcher.controls[self.child(name).control_endpoint]

    def launches(self, name: str) -> int:
        return sum(1 for p in self.launcher.launched if p.label == name)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    # -- scripting --------------------------------------------------------------------------------
    def start(self) -> Harness:
        self.sup.start_all()
        return self

    def ready(self, *names: str) -> None:
        for name in names:
            process = self.process(name)
            process.report = ReadyInfo(
                pid=process.pid, endpoints={"in": ["ipc://in"], "out": ["ipc://out"]}, control_endpoint="ipc://ctl"
            )
            assert process.report_fd is not None
            self.watcher.fire(process.report_fd, self.clock.now)

    def report_error(self, name: str, error: DeviceError) -> None:
        process = self.process(name)
        process.report = error
        assert process.report_fd is not None
        self.watcher.fire(process.report_fd, self.clock.now)

    def exit(self, name: str, code: int | None) -> FakeProcess:
        process = self.process(name)
        process.exit_code = code
        self.watcher.fire(process.sentinel, self.clock.now)
        return process

    def advance(self, seconds: float) -> None:
        """Let time pass as the event loop would: a tick at every deadline on the way."""
        end = self.clock.now + seconds
        last_tick: float | None = None
        while True:
            deadline = self.sup.next_deadline(self.clock.now)
            if last_tick is not None and deadline <= last_tick:
                deadline = last_tick + 0.001  # a deadline the tick did not consume: move on
            if deadline > end:
                break
            self.clock.now = max(self.clock.now, deadline)
            self.sup.tick(self.clock.now)
            self.sup.flush()  # as the loop does at the end of every turn
            self.answer_probes()
            last_tick = self.clock.now
        self.clock.now = end
        self.sup.tick(end)
        self.sup.flush()
        self.answer_probes()

    def answer_probes(self) -> None:
        for child in self.sup.children:
            control = self.launcher.controls.get(child.control_endpoint)
            if control is None or child.name in self.unresponsive or child.process is None:
                continue
            if self.misses.get(child.name, 0) > 0:
                if control.waiting(Command.PING) and self._left_unanswered(control):
                    self.misses[child.name] -= 1
                continue
            while control.waiting(Command.PING):
                control.answer(Command.PING, True, self.ping_reply.get(child.name, {"loop": "running"}))

    @staticmethod
    def _left_unanswered(control: FakeControl) -> bool:
        """Counts a PING once: when it is first seen waiting (it then times out on its own)."""
        fresh = [r for r in control.pending if r.command is Command.PING and not r.missed]
        for request in fresh:
            request.missed = True
        return bool(fresh)

    # -- histories that combine two events ---------------------------------------------------------
    def miss_probes(self, name: str, count: int) -> None:
        """``name`` leaves its next ``count`` PINGs unanswered (they time out), then answers."""
        self.misses[name] = self.misses.get(name, 0) + count

    def advance_to_probe(self, name: str) -> None:
        """Let time pass until ``name``'s next PING has been sent and is still unanswered."""
        child = self.child(name)
        assert child.probe_due is not None, f"{name} has no probe due"
        self.unresponsive.add(name)
        try:
            self.advance(max(0.0, child.probe_due - self.clock.now))
        finally:
            self.unresponsive.discard(name)
        assert self.control(name).waiting(Command.PING), f"no PING of {name} is in flight"

    def exit_mid_probe(self, name: str, code: int | None) -> FakeProcess:
        """``name``'s process exits (with ``code``) while a PING to it is in flight."""
        self.advance_to_probe(name)
        return self.exit(name, code)

    def shutdown_mid_restart(self, name: str, signum: int = 15) -> None:
        """An operator's `restart` of ``name`` has sent STOP; the supervisor is then told to
        stop everything (``signum``, SIGTERM by default) before the old process is gone."""
        reply = self.request("restart", name=name)
        assert reply.get("ok"), reply
        assert self.state(name) == "STOPPING"
        self.sup.on_signal(signum)

    def request(self, command: str, **args: Any) -> dict[str, Any]:
        """One request through the command table, as the request server would serve it."""
        from procdevices.control.protocol import ProtocolError, encode, parse_supervisor_request

        replies: list[dict[str, Any]] = []
        try:
            request = parse_supervisor_request(encode({"command": command, "args": args}))
            self.handlers.handle(request, replies.append)
        except ProtocolError as e:
            replies.append(e.as_reply())
        assert len(replies) <= 1
        return replies[0] if replies else {}
