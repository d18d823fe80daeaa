"""The supervisor's decisions: what to do when a device is ready, exits, misbehaves, or is
asked to start or stop. It holds no file descriptor and never blocks: the event loop
(loop.py) tells it what happened, the launcher (launcher.py) starts processes, the Child
(child.py) keeps each device's state, the policy (policy.py) decides restarts and stop
escalation, health.py judges liveness, handlers.py serves commands through the public verbs
below. Unit tests drive it with a fake clock, a fake launcher and a fake event loop.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from procdevices import __version__
from procdevices.control.aclient import ControlChannel
from procdevices.control.protocol import Command, ErrorCode, ProtocolError, device_error
from procdevices.errors import DeviceError, DeviceExitedEarly
from procdevices.logs import Log
from procdevices.supervisor import livechange, policy, reload
from procdevices.supervisor.child import Child
from procdevices.supervisor.config import Topology
from procdevices.supervisor.events import EventSink, decision_event, discard, state_event
from procdevices.supervisor.handlers import DeviceAnswer
from procdevices.supervisor.health import Health
from procdevices.supervisor.launcher import DeviceProcess, Launcher
from procdevices.supervisor.loop import Watcher
from procdevices.supervisor.startclock import StartClock
from procdevices.supervisor.states import PROCESS_STATES, Event, State
from procdevices.supervisor.upgrade import Upgrader

Clock = Callable[[], float]
Notify = Callable[[str], object]


class StateStore(Protocol):
    def write_state(self, devices: dict[str, dict[str, Any]]) -> None: ...


class Supervisor:
    def __init__(
        self,
        topology: Topology,
        children: list[Child],
        *,
        launcher: Launcher,
        watcher: Watcher,
        store: StateStore,
        clock: Clock,
        log: Log,
        notify: Notify,
        events: EventSink = discard,
        load: Callable[[str | None], Topology] | None = None,
        make_child: reload.ChildFactory | None = None,
        max_starting: int | None = None,
        cpus: int | None = None,
    ) -> None:
        self.topology = topology
        self.children = children
        self.launcher = launcher
        self.watcher = watcher
        self.store = store
        self.clock = clock
        self.log = log
        self.notify = notify
        self.events = events
        self._load = load
        self._make_child = make_child
        self.running_topology = topology  # the file's, with any `scale` applied
        for child in children:
            child.watch(self._on_transition)
        self.health = Health(self._kill_unhealthy, clock)
        self.shutting_down = False
        # Exiting without stopping the devices, for the next supervisor to adopt (SIGUSR1).
        self.leaving = False
        self.announced_ready = False
        self.started_at = clock()
        # Wall clock, for people and for comparing runs: when this `up` began supervising.
        self.started_wall = time.time()
        self.extra_status: dict[str, Any] = {}
        self._state_dirty = True  # state.json is behind
        # Devices being started at once; the rest wait in QUEUED with no process yet.
        cpus = cpus or os.cpu_count()
        self.max_starting = max_starting or policy.max_starting(cpus)
        # start_timeout in fair shares of the machine: a crowd of starts is slow, not hung.
        self.start_clock = StartClock(cpus)
        self._waiting_to_spawn: deque[Child] = deque()
        self._state_write_failing = False
        # Set by service.py where this supervisor can re-execute itself (supervisor/upgrade.py).
        self.upgrader: Upgrader | None = None

    # -- the loop's questions ---------------------------------------------------------------------
    def finished(self) -> bool:
        return (
            self.leaving
            or self.shutting_down
            and not any(c.state in PROCESS_STATES or c.process is not None for c in self.children)
        )

    def next_deadline(self, now: float) -> float:
        if self._waiting_to_spawn and self._starting() < self.max_starting:
            return now  # more devices to start: at once, after the events of this turn
        starting = self._started()
        start_deadlines = (self.start_clock.deadline(c, c.config.start_timeout, now, len(starting)) for c in starting)
        return min([now + 1.0, *start_deadlines, *(d for c in self.children if (d := c.next_deadline()) is not None)])

    def tick(self, now: float) -> None:
        self.start_clock.advance(now, self._started())
        for child in self.children:
            if child.control is not None:
                child.control.expire(now)
            if child.state is State.BACKOFF and child.retry_at is not None and now >= child.retry_at:
                if not self.shutting_down:
                    child.fire(Event.RETRY)
                    self._spawn(child)
            elif child.state is State.STARTING and self.start_clock.used(child) > child.config.start_timeout:
                wall = now - child.spawned_at
                crowd = (
                    f" ({wall:.1f}s on the wall clock, starting beside others)"
                    if wall > child.config.start_timeout + 0.5
                    else ""
                )
                self._kill_unhealthy(child, f"not ready within start_timeout {child.config.start_timeout}s{crowd}")
            elif child.state is State.STOPPING and (line := child.escalate_stop(now)):
                self.log(line, device=child.name, level=logging.WARNING)
            elif child.state is State.RUNNING and child.probe_due is not None and now >= child.probe_due:
                self.health.check(child, now)
        self._spawn_waiting()
        if not self.shutting_down and not any(c.state in (State.QUEUED, State.STARTING) for c in self.children):
            # Spawning idle workers competes for CPU with starting devices: wait for them.
            self.launcher.refill()

    def flush(self) -> None:
        """Write state.json if it is behind. A failed write (a full disk) is logged once and
        tried again later: the state file only helps a later run clean up, so supervision
        goes on without it."""
        if not self._state_dirty:
            return
        try:
            self.write_state_now()
        except OSError as e:
            if not self._state_write_failing:
                self.log(
                    f"{e}; supervising without it (leftover devices of this run cannot be cleaned up "
                    "after an unclean end)",
                    level=logging.WARNING,
                )
            self._state_write_failing = True
            return
        if self._state_write_failing:
            self.log("state file written again")
        self._state_dirty = self._state_write_failing = False

    def write_state_now(self) -> None:
        """Write state.json (every running process and its books); OSError when it cannot."""
        devices = {
            c.name: {
                "pid": c.process.pid,
                "create_time": ct,
                "control_endpoint": c.control_endpoint,
                "device": c.device_name,
                "fingerprint": c.fingerprint,
                "books": c.write_books(self.launcher.listener_keys(c.name)),
            }
            for c in self.children
            if c.process is not None and (ct := c.process.create_time()) is not None
        }
        self.store.write_state(devices)

    # -- events -----------------------------------------------------------------------------------
    def start_all(self, hold: frozenset[str] = frozenset()) -> None:
        """Start every device that has no process yet (the adopted ones have one) and that
        is not held down (one its restart policy keeps down: adoption.py)."""
        for child in self.children:
            if child.state is State.STOPPED and child.name not in hold:
                child.fire(Event.START)
                self._waiting_to_spawn.append(child)
        self._spawn_waiting()
        self.log(f"supervising {len(self.children)} device process(es)")
        self._maybe_announce_ready()  # every device adopted: no report will come to say so

    def take_over(
        self, child: Child, process: DeviceProcess, control: ControlChannel, spawned_at: float, ready_at: float
    ) -> None:
        """Follow ``process``, started by an earlier supervisor and adopted (adoption.py)."""
        child.adopted(process, spawned_at, ready_at)
        child.connect(control)
        self.watcher.watch(process.sentinel, lambda now: self.on_exit(child, process, now))
        self._state_dirty = True

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR2:
            self.log(f"received {name}: upgrading")
            try:
                self.upgrade()
            except ProtocolError as e:
                self.log(f"upgrade refused: {e.message}", level=logging.ERROR)
            return
        if signum == signal.SIGUSR1:
            self.leave(f"received {name}")
            return
        if signum == signal.SIGHUP:
            self.log(f"received {name}: reloading {self.topology.source}")
            try:
                self.reload(None)
            except ProtocolError as e:
                self.log(f"reload refused: {e.message}", level=logging.ERROR)
            return
        self.begin_shutdown(f"received {name}")

    def on_report(self, child: Child, process: DeviceProcess, now: float) -> None:
        if child.process is not process or process.report_fd is None:
            return
        self.watcher.unwatch(process.report_fd)
        try:
            info = process.read_report()
        except DeviceExitedEarly:
            return  # no report, just an exit: the exit path decides what follows
        except DeviceError as e:
            self.log(f"{child.name}: could not start: {e}", device=child.name, level=logging.ERROR)
            if child.state is State.STARTING:
                child.setup_failed(str(e))
                self.log(
                    f"{child.name}: FATAL (a start that cannot succeed is not retried)",
                    device=child.name,
                    level=logging.ERROR,
                )
                self._maybe_announce_ready()
            return
        if child.state is not State.STARTING:
            return  # a stop was requested meanwhile; the stop path goes on
        child.ready(info, now)
        self._state_dirty = True  # its books: when it became ready, what it reported
        endpoints = " ".join(f"{role}={','.join(eps)}" for role, eps in info.endpoints.items() if eps)
        self.log(f"{child.name}: RUNNING (pid {info.pid}) {endpoints}", device=child.name)
        if info.mq_loop == "python":
            self.log(
                f"{child.name}: its monitored queue runs the slower Python loop (`procdevices --version` says why)",
                device=child.name,
                level=logging.WARNING,
            )
        self._maybe_announce_ready()

    def on_exit(self, child: Child, process: DeviceProcess, now: float) -> None:
        if child.process is not process:
            return
        if process.report_fd is not None:
            if process.report_waiting():
                self.on_report(child, process, now)  # a setup error arrives just before the exit
            if process.report_fd is not None:
                self.watcher.unwatch(process.report_fd)
        self.watcher.unwatch(process.sentinel)
        code = process.reap()
        self._state_dirty = True
        line = child.exited(code, now)
        if child.control is not None:
            # Only after child.exited(): a PING still in flight then answers for a process
            # that is gone (Health ignores it), instead of counting as one more unanswered
            # probe, which made an exit look like a hang.
            child.control.fail_all("the device exited")
        if line:
            level = logging.INFO if child.state in (State.STOPPED, State.EXITED) else logging.WARNING
            self.log(line, device=child.name, level=logging.ERROR if child.state is State.FATAL else level)
            self._emit_decision(child, code, now)
        if child.state is State.STOPPED:
            self._after_stop(child)
        elif child.state is State.FATAL:
            self._maybe_announce_ready()

    def _after_stop(self, child: Child) -> None:
        if child.retiring or child.successor is not None:
            self._remove(child)
        elif child.restart_after_stop and not self.shutting_down:
            child.restart_when_stopped(False)
            child.forget_failures()
            child.fire(Event.START)
            self._spawn(child)

    # -- verbs (the command handlers use these) --------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def select(self, name: str | None) -> list[Child]:
        if not name:
            return list(self.children)
        chosen = [c for c in self.children if c.name == name or c.device_name == name]
        if not chosen:
            known = ", ".join(sorted({c.device_name for c in self.children}))
            raise ProtocolError(ErrorCode.NO_SUCH_DEVICE, f"no device named {name!r} (devices: {known})")
        return chosen

    def describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime": round(self.clock() - self.started_at, 3),
            "started": round(self.started_wall, 3),
            "orphan_grace": self.topology.supervisor.orphan_grace,
            "source": self.topology.source,
            "shutting_down": self.shutting_down,
            "pool_idle": self.launcher.idle_workers(),
            "scaled": self.scaled(),
            "version": __version__,
            "upgrade": self.upgrader.describe() if self.upgrader is not None else None,
            **self.extra_status,
        }

    def start(self, child: Child) -> None:
        """An operator's start: a fresh restart budget, a process at once."""
        child.forget_failures()
        child.fire(Event.START)
        self._spawn(child)

    def stop(self, child: Child) -> None:
        child.restart_when_stopped(False)
        self._stop(child, self.clock())

    def restart(self, child: Child) -> None:
        if child.state is State.QUEUED:
            child.forget_failures()  # no process yet: its coming start is already a fresh one
            return
        if child.state in PROCESS_STATES:
            child.restart_when_stopped(True)
            self._stop(child, self.clock())
        else:
            self.start(child)

    def leave(self, why: str) -> None:
        """Exit at once and leave every device forwarding, for the next ``up`` on this run dir
        to adopt (adoption.py); not adopted within ``orphan_grace``, each stops itself."""
        if self.shutting_down:
            return
        grace = self.topology.supervisor.orphan_grace
        if grace > 0:
            self.log(f"leaving every device running for the next supervisor to adopt within {grace:g}s ({why})")
        else:
            self.log(f"leaving; orphan_grace is 0, so every device stops as this supervisor exits ({why})")
        self.notify("STOPPING=1")
        self.leaving = self.shutting_down = True
        self._state_dirty = True

    def begin_shutdown(self, why: str) -> None:
        if self.shutting_down:
            return
        self.log(f"stopping every device ({why})")
        self.notify("STOPPING=1")
        self.shutting_down = True
        self.launcher.release()
        now = self.clock()
        for child in self.children:
            self._stop(child, now)

    def child_named(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def reload(self, path: str | None) -> dict[str, Any]:
        """Re-read the topology (``path``, else the file ``up`` started with) and apply the
        difference (livechange.py). An invalid file changes nothing."""
        if self._load is None or self._make_child is None:
            raise ProtocolError(ErrorCode.REFUSED, "this supervisor cannot reload")
        return livechange.reload(self, self._load, self._make_child, path)

    def scale(self, name: str, replicas: int) -> dict[str, Any]:
        """Run ``replicas`` instances of device ``name`` (the file is not changed)."""
        if self._make_child is None or self.shutting_down:
            raise ProtocolError(ErrorCode.REFUSED, "this supervisor cannot scale now")
        return livechange.scale(self, self._make_child, name, replicas)

    def upgrade(self) -> dict[str, Any]:
        """Re-execute with the procdevices now installed, keeping every device (upgrade.py)."""
        if self.upgrader is None or self.shutting_down:
            raise ProtocolError(ErrorCode.REFUSED, "this supervisor cannot upgrade now")
        return self.upgrader.begin()

    def scaled(self) -> dict[str, dict[str, int]]:
        """Devices whose number of instances differs from the file's (after `scale`)."""
        return livechange.scaled(self)

    def adopt(self, child: Child) -> None:
        """A new device instance (a reload or a scale added it): started at once."""
        child.watch(self._on_transition)
        self.children.append(child)
        if not self.shutting_down:
            self.start(child)

    def retire(self, child: Child) -> None:
        """Stop this instance through its control socket and forget it once it is gone."""
        child.retire()
        if child.process is None:
            self._remove(child)
        else:
            self._stop(child, self.clock())

    def replace(self, child: Child, successor: Child) -> None:
        """Run ``successor`` instead of ``child``, once ``child``'s process is gone (it may
        hold the addresses the successor binds)."""
        child.hand_over_to(successor)
        if child.process is None:
            self._remove(child, start_successor=child.state is not State.STOPPED)
        else:
            self._stop(child, self.clock())

    def ask(self, child: Child, command: Command, timeout: float, answer: DeviceAnswer) -> None:
        if child.control is None:
            answer(child, False, device_error(ErrorCode.NOT_RUNNING, "not connected"))
            return
        child.control.send(command, self.clock(), timeout, lambda ok, body: answer(child, ok, body))

    # -- inside -----------------------------------------------------------------------------------
    def _spawn(self, child: Child) -> None:
        """Start ``child``'s process now, or as soon as fewer than ``max_starting`` devices
        are starting (policy.max_starting says why), first come first started."""
        self._waiting_to_spawn.append(child)  # first come, first started
        self._spawn_waiting()

    def _starting(self) -> int:
        return sum(1 for c in self.children if c.state is State.STARTING)

    def _started(self) -> list[Child]:
        """The devices whose process is starting (not those waiting for their turn)."""
        return [c for c in self.children if c.state is State.STARTING]

    def _spawn_waiting(self) -> None:
        if not self._waiting_to_spawn:
            return
        # A few per turn of the loop: between them it reads readiness reports and answers
        # `status`, which a loop busy spawning hundreds of processes in a row could not.
        room = min(policy.LAUNCHES_PER_TURN, self.max_starting - self._starting())
        while room > 0 and self._waiting_to_spawn:
            child = self._waiting_to_spawn.popleft()
            if child.state is State.QUEUED and child in self.children:
                self._launch(child)
                room -= 1

    def _launch(self, child: Child) -> None:
        try:
            process = self.launcher.launch(child.pickled, child.control_endpoint, child.name)
        except OSError as e:  # out of processes or file descriptors: retrying cannot help now
            child.spawn_failed(e)
            self.log(f"{child.name}: FATAL ({child.last_exit})", device=child.name, level=logging.ERROR)
            return
        # Not the loop's `now`: starting many devices takes a while, and start_timeout is
        # the device's budget, not the time its siblings took to spawn.
        child.spawned(process, self.clock())
        if process.report_fd is not None:
            self.watcher.watch(process.report_fd, lambda now: self.on_report(child, process, now))
        self.watcher.watch(process.sentinel, lambda now: self.on_exit(child, process, now))
        if child.control is None:
            child.connect(self.launcher.connect(child.control_endpoint))
        self._state_dirty = True

    def _stop(self, child: Child, now: float) -> None:
        if child.state in (State.STOPPED, State.EXITED, State.FATAL, State.BACKOFF):
            if child.process is None and not (self.shutting_down and child.state is State.FATAL):
                # An operator's stop clears FATAL; a shutdown keeps it, for the exit code.
                child.stopped_idle()
            return
        if child.state is State.STOPPING:
            return
        if child.state is State.QUEUED:
            # Still waiting for its turn to spawn: there is nothing to stop.
            if child in self._waiting_to_spawn:
                self._waiting_to_spawn.remove(child)
            child.stopped_while_queued()
            self._after_stop(child)
            return
        starting = child.state is State.STARTING
        child.stop_begun(now)
        if starting and child.terminate_starting():
            self.log(f"{child.name}: stopped before it was ready; SIGTERM", device=child.name)
            return
        if child.control is not None:
            child.control.send(Command.STOP, now, child.config.stop_timeout, lambda ok, body: None)

    def _remove(self, child: Child, *, start_successor: bool = True) -> None:
        self.children.remove(child)
        if child.successor is None or child.successor.name != child.name:
            self.launcher.forget(child.name)  # its listening sockets, unless its successor's
        child.disconnect()
        self._state_dirty = True
        successor = child.take_successor()
        if successor is not None:
            successor.watch(self._on_transition)
            self.children.append(successor)
            if start_successor and not self.shutting_down:
                self.start(successor)

    def _kill_unhealthy(self, child: Child, reason: str) -> None:
        if child.process is None or child.unhealthy:
            return
        child.condemn(reason)
        self.log(f"{child.name}: {reason}; killing pid {child.process.pid}", device=child.name, level=logging.WARNING)
        child.process.kill()

    def _on_transition(self, child: Child, old: State, new: State, why: Event) -> None:
        self.events(state_event(child, old, new, why))

    def _emit_decision(self, child: Child, code: int | None, now: float) -> None:
        decision = decision_event(child, code, now)
        if decision is not None:
            self.events(decision)

    def _maybe_announce_ready(self) -> None:
        if self.announced_ready or self.shutting_down:
            return
        if all(c.ever_ready or c.state is State.FATAL for c in self.children):
            self.announced_ready = True
            running = sum(c.state is State.RUNNING for c in self.children)
            fatal = len(self.children) - running
            self.log(f"ready: {running} device process(es) running" + (f", {fatal} not" if fatal else ""))
            self.notify(f"READY=1\nSTATUS={running} devices running")
