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
import time
from collections.abc import Callable
from typing import Any

from procdevices.control.aclient import ControlChannel
from procdevices.control.protocol import Command, ErrorCode, ProtocolError, device_error
from procdevices.logs import Log
from procdevices.supervisor import livechange, policy, reload, signals, status
from procdevices.supervisor.child import Child
from procdevices.supervisor.config import Topology
from procdevices.supervisor.events import EventSink, decision_event, discard, state_event
from procdevices.supervisor.handlers import DeviceAnswer
from procdevices.supervisor.health import Health
from procdevices.supervisor.launcher import DeviceProcess, Launcher
from procdevices.supervisor.loop import Watcher
from procdevices.supervisor.readiness import Readiness
from procdevices.supervisor.roster import Roster
from procdevices.supervisor.startqueue import StartQueue
from procdevices.supervisor.statekeeper import StateKeeper, StateStore
from procdevices.supervisor.states import PROCESS_STATES, Event, State
from procdevices.supervisor.upgrade import Upgrader

Clock = Callable[[], float]
Notify = Callable[[str], object]


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
        self.launcher = launcher
        self.watcher = watcher
        self.clock = clock
        self.log = log
        self.notify = notify
        self.events = events
        self._load = load
        self._make_child = make_child
        self.running_topology = topology  # the file's, with any `scale` applied
        self.health = Health(self._kill_unhealthy, clock)
        self.shutting_down = False
        # Exiting without stopping the devices, for the next supervisor to adopt (SIGUSR1).
        self.leaving = False
        self.started_at = clock()
        # Wall clock, for people and for comparing runs: when this `up` began supervising.
        self.started_wall = time.time()
        self.extra_status: dict[str, Any] = {}
        self.state_file = StateKeeper(store, log, clock)
        self.readiness = Readiness(log, notify, self.state_file)
        self.roster = Roster(children, self, launcher, self.state_file)
        # Devices being started at once; the rest wait in QUEUED with no process yet.
        cpus = cpus or os.cpu_count()
        self.starts = StartQueue(max_starting or policy.max_starting(cpus), cpus)
        # Set by service.py where this supervisor can re-execute itself (supervisor/upgrade.py).
        self.upgrader: Upgrader | None = None

    @property
    def children(self) -> list[Child]:
        return self.roster.children

    # -- the loop's questions ---------------------------------------------------------------------
    def finished(self) -> bool:
        return (
            self.leaving
            or self.shutting_down
            and not any(c.state in PROCESS_STATES or c.process is not None for c in self.children)
        )

    def next_deadline(self, now: float) -> float:
        starts = self.starts.next_deadline(self.children, now)
        deadlines = (d for c in self.children if (d := c.next_deadline()) is not None)
        state = self.state_file.due(self.children)
        return min([now + 1.0, *deadlines, *(t for t in (starts, state) if t is not None)])

    def tick(self, now: float) -> None:
        self.starts.advance(self.children, now)
        for child in self.children:
            if child.control is not None:
                child.control.expire(now)
            if child.state is State.BACKOFF and child.retry_at is not None and now >= child.retry_at:
                if not self.shutting_down:
                    child.fire(Event.RETRY)
                    self._spawn(child)
            elif child.state is State.STARTING and (late := self.starts.late(child, now)):
                self._kill_unhealthy(child, late)
            elif child.state is State.STOPPING and (line := child.escalate_stop(now)):
                self.log(line, device=child.name, level=logging.WARNING)
            elif child.state is State.RUNNING and child.probe_due is not None and now >= child.probe_due:
                self.health.check(child, now)
        self._spawn_waiting()
        if not self.shutting_down and not any(c.state in (State.QUEUED, State.STARTING) for c in self.children):
            # Spawning idle workers competes for CPU with starting devices: wait for them.
            self.launcher.refill(now)

    def flush(self) -> None:
        """Write state.json if it is behind and due (statekeeper.py); leaving, at once."""
        self.state_file.flush(self.children, self.launcher.listener_keys, at_once=self.leaving)

    def write_state_now(self) -> None:
        """Write state.json at once; OSError when it cannot (an upgrade needs it)."""
        self.state_file.write_now(self.children, self.launcher.listener_keys)

    # -- events -----------------------------------------------------------------------------------
    def start_all(self, hold: frozenset[str] = frozenset()) -> None:
        """Start every device that has no process yet (the adopted ones have one) and that
        is not held down (one its restart policy keeps down: adoption.py)."""
        for child in self.children:
            if child.state is State.STOPPED and child.name not in hold:
                child.fire(Event.START)
                self.starts.push(child)
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
        self.state_file.behind()

    def on_signal(self, signum: int) -> None:
        signals.deliver(self, signum)  # the table of what each signal asks

    def on_report(self, child: Child, process: DeviceProcess, now: float) -> None:
        if child.process is not process or process.report_fd is None:
            return
        self.watcher.unwatch(process.report_fd)
        self.readiness.read_report(child, process, now)
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
        self.state_file.behind()
        line = child.exited(code, now)
        if child.control is not None:
            # Only after child.exited(): a PING still in flight then answers for a process
            # that is gone (Health ignores it), instead of counting as one more unanswered
            # probe, which made an exit look like a hang.
            child.control.fail_all("the device exited")
        if line:
            level = logging.INFO if child.state in (State.STOPPED, State.EXITED) else logging.WARNING
            self.log(line, device=child.name, level=logging.ERROR if child.state is State.FATAL else level)
            if (decision := decision_event(child, code, now)) is not None:
                self.events(decision)  # after an unrequested exit only
        if child.state is State.STOPPED:
            self._after_stop(child)
        elif child.state is State.FATAL:
            self._maybe_announce_ready()

    def _after_stop(self, child: Child) -> None:
        if child.retiring or child.successor is not None:
            self.roster.remove(child)
        elif child.restart_after_stop and not self.shutting_down:
            child.restart_when_stopped(False)
            child.forget_failures()
            child.fire(Event.START)
            self._spawn(child)

    # -- verbs (the command handlers use these) --------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def select(self, name: str | None) -> list[Child]:
        return self.roster.select(name)

    def describe(self) -> dict[str, Any]:
        return status.describe(self)

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
        self.log(
            f"leaving every device running for the next supervisor to adopt within {grace:g}s ({why})"
            if grace > 0
            else f"leaving; orphan_grace is 0, so every device stops as this supervisor exits ({why})"
        )
        self.notify("STOPPING=1")
        self.leaving = self.shutting_down = True
        self.state_file.behind()

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
        if self.upgrader is None or self.shutting_down or self.leaving:
            raise ProtocolError(ErrorCode.REFUSED, "this supervisor cannot upgrade now")
        return self.upgrader.begin()

    def scaled(self) -> dict[str, dict[str, int]]:
        """Devices whose number of instances differs from the file's (after `scale`)."""
        return livechange.scaled(self)

    def ask(self, child: Child, command: Command, timeout: float, answer: DeviceAnswer) -> None:
        if child.control is None:
            answer(child, False, device_error(ErrorCode.NOT_RUNNING, "not connected"))
            return
        child.control.send(command, self.clock(), timeout, lambda ok, body: answer(child, ok, body))

    # -- inside -----------------------------------------------------------------------------------
    def _spawn(self, child: Child) -> None:
        """Start ``child``'s process now, or in its turn (startqueue.py)."""
        self.starts.push(child)
        self._spawn_waiting()

    def _spawn_waiting(self) -> None:
        for child in self.starts.take(self.children):
            self._launch(child)

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
        self.state_file.behind()

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
            self.starts.discard(child)
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

    def _kill_unhealthy(self, child: Child, reason: str) -> None:
        if child.process is None or child.unhealthy:
            return
        child.condemn(reason)
        self.log(f"{child.name}: {reason}; killing pid {child.process.pid}", device=child.name, level=logging.WARNING)
        child.process.kill()

    def observe(self, child: Child) -> None:
        child.watch(self._on_transition)

    def stop_process(self, child: Child) -> None:
        self._stop(child, self.clock())

    def _on_transition(self, child: Child, old: State, new: State, why: Event) -> None:
        self.events(state_event(child, old, new, why))

    def _maybe_announce_ready(self) -> None:
        self.readiness.announce_if_ready(self.children, self.shutting_down)
