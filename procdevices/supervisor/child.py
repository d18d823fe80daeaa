"""One supervised device instance: its process, its state and its restart bookkeeping.

A Child owns its own transitions: the supervisor tells it what happened (spawned, ready,
exited, stop begun, failures forgotten) and the Child updates every field that follows from
it, in one place. Its state only changes through
:func:`procdevices.supervisor.states.next_state`. A Child never blocks and never sleeps.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from procdevices.control.aclient import ControlChannel
from procdevices.devices.runtime import ReadyInfo
from procdevices.supervisor import policy
from procdevices.supervisor.books import Books
from procdevices.supervisor.config import DeviceConfig
from procdevices.supervisor.launcher import DeviceProcess
from procdevices.supervisor.liveness import Blocked, Liveness
from procdevices.supervisor.states import PROCESS_STATES, Event, State, next_state
from procdevices.supervisor.traffic import Traffic


class StopProgress:
    """How far a requested stop has gone: control socket, then SIGTERM, then SIGKILL."""

    __slots__ = ("requested_at", "term_sent", "kill_sent")

    def __init__(self, requested_at: float) -> None:
        self.requested_at = requested_at
        self.term_sent = False
        self.kill_sent = False

    @property
    def stopped_by(self) -> str:
        return "SIGKILL" if self.kill_sent else "SIGTERM" if self.term_sent else "control socket"


class Child:
    """A plain class, not a dataclass (supervisor/__init__.py says why). Two children are equal
    only when they are the same object: a child is a process's record, not a value."""

    __slots__ = (
        "config",
        "device_name",
        "control_endpoint",
        "pickled",
        "fingerprint",
        "state",
        "process",
        "control",
        "spawned_at",
        "ready_at",
        "ever_ready",
        "endpoints",
        "mq_loop",
        "restarts",
        "failures",
        "history",
        "retry_at",
        "restart_after_stop",
        "last_exit",
        "stop",
        "unhealthy",
        "liveness",
        "traffic",
        "retiring",
        "successor",
        "observer",
    )

    def __init__(
        self, config: DeviceConfig, device_name: str, control_endpoint: str, pickled: bytes, fingerprint: str = ""
    ) -> None:
        self.config = config
        self.device_name = device_name  # the [devices.NAME] this instance belongs to
        self.control_endpoint = control_endpoint
        self.pickled = pickled
        # What its process runs, as the file wrote it (books.fingerprint): an adopting supervisor
        # restarts an adopted process whose fingerprint differs from the file's.
        self.fingerprint = fingerprint
        self.state = State.STOPPED
        self.process: DeviceProcess | None = None
        self.control: ControlChannel | None = None
        self.spawned_at = 0.0
        self.ready_at: float | None = None
        self.ever_ready = False
        self.endpoints: dict[str, list[str]] = {}
        self.mq_loop: str | None = None  # as its process reported when ready (ReadyInfo)
        # restart bookkeeping
        self.restarts = 0
        self.failures = 0
        self.history = policy.RestartHistory()
        self.retry_at: float | None = None
        self.restart_after_stop = False
        self.last_exit = ""
        # the current run
        self.stop: StopProgress | None = None
        self.unhealthy: str | None = None  # why we killed it, when we did
        self.liveness = Liveness()  # its probes' findings (health.py)
        self.traffic = Traffic()  # across restarts, read on the probe tick
        # A reload removes this instance once its process is gone, starting the successor if any.
        self.retiring = False
        self.successor: Child | None = None
        # Told of every transition (old, new, event): the event stream and metrics hang here.
        self.observer: Callable[[Child, State, State, Event], None] | None = None

    def __repr__(self) -> str:
        return f"Child({self.name!r}, {self.state.name}, pid={self.pid})"

    @property
    def name(self) -> str:
        return self.config.name

    # Read-only views of the liveness (health.py writes it, through its methods).
    @property
    def paused(self) -> bool:
        return self.liveness.paused

    @property
    def blocked(self) -> Blocked | None:
        return self.liveness.blocked

    @property
    def probe(self) -> policy.ProbeState:
        return self.liveness.probe

    @property
    def probe_due(self) -> float | None:
        return self.liveness.due

    @property
    def probe_in_flight(self) -> bool:
        return self.liveness.in_flight

    @property
    def pid(self) -> int | None:
        if self.process is not None and self.state in PROCESS_STATES:
            return self.process.pid
        return None

    def fire(self, event: Event) -> State:
        old, self.state = self.state, next_state(self.state, event)
        if self.observer is not None:
            self.observer(self, old, self.state, event)
        return self.state

    # -- what the supervisor decided ------------------------------------------------------------
    def watch(self, observer: Callable[[Child, State, State, Event], None]) -> None:
        """Tell ``observer`` of every transition from now on (the event stream, metrics)."""
        self.observer = observer

    def connect(self, control: ControlChannel) -> None:
        self.control = control

    def disconnect(self) -> None:
        """Close and forget the control channel (the instance is being forgotten)."""
        if self.control is not None:
            self.control.close()
            self.control = None

    def restart_when_stopped(self, wanted: bool) -> None:
        """Whether the stop under way is the first half of a restart."""
        self.restart_after_stop = wanted

    def retire(self) -> None:
        """A reload or a scale removes this instance once its process is gone."""
        self.retiring = True
        self.restart_after_stop = False

    def hand_over_to(self, successor: Child) -> None:
        """``successor`` runs instead of this instance once its process is gone."""
        self.successor = successor
        self.restart_after_stop = False

    def take_successor(self) -> Child | None:
        successor, self.successor = self.successor, None
        return successor

    def reconfigure(self, config: DeviceConfig) -> None:
        """New supervision settings for the running process (a reload's ``updated``)."""
        self.config = config

    def condemn(self, reason: str) -> None:
        """The supervisor kills this process as unhealthy, for ``reason``."""
        self.unhealthy = reason

    # -- what happened --------------------------------------------------------------------------
    def forget_failures(self) -> None:
        """An operator's start or restart: a fresh restart budget."""
        self.history, self.failures = policy.RestartHistory(), 0

    def spawned(self, process: DeviceProcess, now: float) -> None:
        """A new process runs for this device: everything about the previous run is reset."""
        self._new_run(process, Event.SPAWNED, now, None)

    def adopted(self, process: DeviceProcess, spawned_at: float, ready_at: float) -> None:
        """A running process of this instance, started by an earlier supervisor, is ours now
        (supervisor/adoption.py): RUNNING at once, its books already restored."""
        self._new_run(process, Event.ADOPTED, spawned_at, ready_at)
        self.ever_ready = True
        self.liveness.schedule(ready_at, self.config.probe.interval)

    def _new_run(self, process: DeviceProcess, event: Event, spawned_at: float, ready_at: float | None) -> None:
        self.process = process
        self.fire(event)
        self.spawned_at = spawned_at
        self.ready_at = ready_at
        self.retry_at = None
        self.stop = None
        self.unhealthy = None
        self.liveness = Liveness()

    def write_books(self, listeners: list[tuple[str, str, str]]) -> dict[str, Any]:
        """What an adopting supervisor needs to carry on (state.json; books.py reads it back)."""
        return {
            "restarts": self.restarts,
            "failures": self.failures,
            "history": list(self.history.times),
            "traffic_ended": dict(self.traffic.ended),
            "spawned_at": self.spawned_at,
            "ready_at": self.ready_at,
            "endpoints": self.endpoints,
            "mq_loop": self.mq_loop,
            "listeners": [list(key) for key in listeners],
        }

    def resume_books(self, books: Books) -> None:
        """Carry on with the books an earlier supervisor kept for this instance (books.py)."""
        if books.restarts is not None:
            self.restarts = books.restarts
        if books.failures is not None:
            self.failures = books.failures
        if books.history is not None:
            self.history = books.history
        if books.traffic_ended is not None:
            self.traffic = Traffic(ended=dict(books.traffic_ended))
        if books.endpoints is not None:
            self.endpoints = books.endpoints
        if books.mq_loop is not None:
            self.mq_loop = books.mq_loop

    def lost_unsupervised(self, run_seconds: float, now: float) -> bool:
        """Its process ended while no supervisor ran (state.json named it, it is gone, its
        exit code is nobody's to know): the restart policy decides as for a crash. True: start
        it again (one more restart counted); False: it stays down, and ``last_exit`` says why."""
        decision = self._decide(None, requested_stop=False, run_seconds=run_seconds, now=now, unhealthy=False)
        restart = decision.event_name == "EXIT_RESTART"
        self.restarts += restart
        verdict = "restarted" if restart else decision.reason.rpartition("; ")[2]
        self.last_exit = f"exited while no supervisor ran; {verdict}"
        return restart

    def ready(self, info: ReadyInfo, now: float) -> None:
        self.fire(Event.READY)
        self.ready_at = now
        self.ever_ready = True
        self.endpoints = info.endpoints
        self.mq_loop = info.mq_loop
        self.liveness.schedule(now, self.config.probe.interval)

    def setup_failed(self, reason: str) -> None:
        """The device reported that it cannot start (a bind error): retrying cannot help."""
        self.last_exit = f"could not start: {reason}"
        self.fire(Event.FAIL)

    def spawn_failed(self, error: OSError) -> None:
        self.last_exit = f"could not spawn a process: {error}"
        self.fire(Event.FAIL)

    def stopped_idle(self) -> None:
        """An operator's stop of a device with no process (BACKOFF, EXITED, FATAL, STOPPED):
        a pending restart is cancelled."""
        self.fire(Event.STOP)
        self.retry_at = None

    def stopped_while_queued(self) -> None:
        """Stopped while it waited for its turn to spawn: there was nothing to stop."""
        self.last_exit = "stopped before its process was started"
        self.fire(Event.STOP)

    def stop_begun(self, now: float) -> None:
        self.fire(Event.STOP)
        self.stop = StopProgress(requested_at=now)

    def terminate_starting(self) -> bool:
        """SIGTERM a process stopped before it was ready (its control socket may not be
        served yet, and a request the router cannot deliver yet is dropped). SIGTERM stops a
        device at any point of its start (before its handler is set: a quiet exit; after: its
        control loop's own stop). False when there is no process to signal."""
        if self.stop is None or self.process is None:
            return False
        self.stop.term_sent = True
        self.process.terminate()
        return True

    def escalate_stop(self, now: float) -> str:
        """The stop escalation's next step when due (policy.stop_action): SIGTERM, then
        SIGKILL. Returns the line to log, "" when nothing was due."""
        stop, process = self.stop, self.process
        if stop is None or process is None:
            return ""
        action = policy.stop_action(
            requested_at=stop.requested_at,
            now=now,
            stop_timeout=self.config.stop_timeout,
            kill_timeout=self.config.kill_timeout,
            term_sent=stop.term_sent,
            kill_sent=stop.kill_sent,
        )
        if action is policy.StopAction.SIGTERM:
            stop.term_sent = True
            process.terminate()
            return f"{self.name}: no exit {self.config.stop_timeout}s after the control-socket stop; SIGTERM"
        if action is policy.StopAction.SIGKILL:
            stop.kill_sent = True
            process.kill()
            return f"{self.name}: still alive after SIGTERM; SIGKILL"
        return ""

    def exited(self, code: int | None, now: float) -> str:
        """The process is gone (``code`` from its reaping); returns the line to log, "" when
        there is nothing to say (a FATAL setup error was reported already)."""
        try:
            return self._after_exit(code, now)
        finally:
            # Only now: the transition's observers still see which process ended.
            self.process = None
            self.liveness.settled()
            self.traffic.process_ended()

    def _after_exit(self, code: int | None, now: float) -> str:
        if self.state is State.FATAL:
            return ""
        stop = self.stop
        description = self.unhealthy or exit_text(code)
        decision = self._decide(
            None if self.unhealthy else code,
            requested_stop=stop is not None,
            run_seconds=now - self.spawned_at,
            now=now,
            unhealthy=self.unhealthy is not None,
        )
        if stop is not None:
            self.stop = None
            self.last_exit = f"stopped through the {stop.stopped_by}" + (
                "" if code in (0, None) else f" ({description})"
            )
            self.fire(Event.STOPPED)
            return f"{self.name}: STOPPED ({self.last_exit})"
        self.last_exit = f"{description}; {decision.reason}" if self.unhealthy else decision.reason
        event = Event[decision.event_name]
        new_state = self.fire(event)
        if event is Event.EXIT_RESTART:
            self.restarts += 1
            self.retry_at = now + decision.delay
        return f"{self.name}: {new_state.value} ({self.last_exit})"

    def _decide(
        self, code: int | None, *, requested_stop: bool, run_seconds: float, now: float, unhealthy: bool
    ) -> policy.ExitDecision:
        """The policy's decision after an exit; the restart books follow it."""
        decision = policy.decide_after_exit(
            policy=self.config.restart,
            exit_code=code,
            requested_stop=requested_stop,
            run_seconds=run_seconds,
            now=now,
            backoff=self.config.backoff,
            intensity=self.config.intensity,
            stable_after=self.config.stable_after,
            history=self.history,
            failures=self.failures,
            unhealthy=unhealthy,
        )
        self.history, self.failures = decision.history, decision.failures
        return decision

    def next_deadline(self) -> float | None:
        """The earliest moment something is due for this device (a retry, a probe, a
        control request's deadline, the start timeout, the next stop escalation)."""
        deadlines = []
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        if self.probe_due is not None and self.state is State.RUNNING:
            deadlines.append(self.probe_due)
        if self.control is not None and (d := self.control.next_deadline()) is not None:
            deadlines.append(d)
        # start_timeout's deadline is the supervisor's (startclock.py: it depends on the others).
        if self.stop is not None:
            d = policy.next_stop_deadline(
                requested_at=self.stop.requested_at,
                stop_timeout=self.config.stop_timeout,
                kill_timeout=self.config.kill_timeout,
                term_sent=self.stop.term_sent,
                kill_sent=self.stop.kill_sent,
            )
            if d is not None:
                deadlines.append(d)
        return min(deadlines, default=None)

    # -- what it looks like ---------------------------------------------------------------------
    def describe(self, now: float) -> dict[str, Any]:
        """One device of ``status --json`` (a documented, stable shape)."""
        running = self.state is State.RUNNING
        info: dict[str, Any] = {
            "name": self.name,
            "device": self.device_name,
            "kind": self.config.kind,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime": round(now - self.ready_at, 3) if self.ready_at is not None and running else None,
            "last_exit": self.last_exit or None,
            "endpoints": self.endpoints,
            "mq_loop": self.mq_loop,
            "paused": self.paused,
            "blocked": (
                {"side": self.blocked.side, "seconds": round(self.blocked.seconds, 3)}
                if self.blocked is not None and running
                else None
            ),
            "cpu_percent": None,
            "rss": None,
            "zombie": False,
            "traffic": self.traffic.summary(),
        }
        if self.process is not None and self.pid is not None:
            resources = self.process.resources()
            if resources is not None:
                info.update(cpu_percent=resources.cpu_percent, rss=resources.rss, zombie=resources.zombie)
        return info


def exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
