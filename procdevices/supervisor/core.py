"""The supervisor loop: one thread, one poller, no blocking call.

    topology ──► Child per device instance ──spawn / pool──► device processes
                     ▲  │                                      │  │
        sentinels ───┘  └── AsyncControl (PING/STOP/...) ──────┘  │ ready report (pipe)
        (death seen at once)                                       │
    CLI ──JSON──► supervisor.sock (ROUTER) ──► COMMANDS table ─────┘

Everything the loop waits for is a file descriptor in one zmq.Poller: the control endpoint,
every device's control DEALER, every device process's sentinel and ready pipe, and the
signal wake-up fd. Timers (backoff retries, probes, stop escalation) only set the poll
timeout. Policy decisions are pure functions (policy.py); state changes go through the
state table (states.py).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket as pysocket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import psutil
import zmq

from procdevices.control.protocol import Command
from procdevices.devices.launch import WorkerPool, pickle_device, spawn_device
from procdevices.errors import DeviceError, DeviceExitedEarly
from procdevices.supervisor import policy
from procdevices.supervisor.build import build_device
from procdevices.supervisor.child import AsyncControl, Child, StopProgress
from procdevices.supervisor.config import Topology
from procdevices.supervisor.notify import sd_notify
from procdevices.supervisor.runstate import RunDir
from procdevices.supervisor.states import RUNNING_STATES, Event, State

Clock = Callable[[], float]
Reply = Callable[[dict[str, Any]], None]

from procdevices.exitcodes import EXIT_FATAL, EXIT_OK


class Supervisor:
    def __init__(self, topology: Topology, run_dir: RunDir, *, clock: Clock = time.monotonic, log: Callable[[str], None] | None = None) -> None:
        self.topology = topology
        self.run_dir = run_dir
        self.clock = clock
        self.log = log or _log
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.children: list[Child] = []
        for config in topology.devices:
            for instance in config.instances():
                endpoint = run_dir.device_control_endpoint(instance.name)
                pickled = pickle_device(build_device(instance, endpoint))
                self.children.append(Child(instance, config.name, endpoint, pickled))
        self.pool = WorkerPool(topology.supervisor.pool_size)
        self.shutting_down = False
        self.announced_ready = False
        self.started_at = clock()
        self.rpc: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        self.rpc.linger = 0
        self.poller = zmq.Poller()
        self._fd_owner: dict[int, tuple[Child, str]] = {}
        self._controls: dict[zmq.Socket[bytes], AsyncControl] = {}
        self._dirty = True  # timers may have changed: recompute the next deadline
        self._state_dirty = False  # state.json is behind
        self._pool_wanted = True  # the pool may be short of idle workers
        self._signals: list[int] = []
        self.commands: dict[str, Callable[[dict[str, Any], Reply], None]] = {
            "status": self._cmd_status,
            "stats": self._cmd_stats,
            "start": self._cmd_start,
            "stop": self._cmd_stop,
            "restart": self._cmd_restart,
            "pause": self._cmd_pause,
            "resume": self._cmd_resume,
            "down": self._cmd_down,
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> int:
        """Start every device and supervise until asked to stop; returns the exit code."""
        self.rpc.bind(self.run_dir.control_endpoint)
        self.poller.register(self.rpc, zmq.POLLIN)
        wake_r = self._install_signal_handlers()
        now = self.clock()
        for child in self.children:
            self._start(child, now)
        self._save_state()
        self.log(f"supervising {len(self.children)} device process(es); control: {self.run_dir.control_endpoint}")
        earliest = now
        try:
            while not self._finished():
                now = self.clock()
                if self._dirty:
                    earliest = self._next_deadline(now)
                    self._dirty = False
                events = dict(self.poller.poll(max(0, int((earliest - now) * 1000) + 1)))
                now = self.clock()
                if wake_r.fileno() in events:
                    self._on_signals(wake_r)
                if self.rpc in events:
                    self._on_request()
                for item in events:
                    self._guarded(self._dispatch, item, now)
                # A batch of probe answers changes no timer: with many devices, most wake-ups
                # are just that, and skip the walk over every child.
                if not all(item in self._controls for item in events):
                    self._dirty = True
                if self._dirty or now >= earliest:
                    self._guarded(self._tick, self.clock())
                    self._dirty = True
                if self._state_dirty:
                    self._save_state()
        finally:
            self._close()
            signal.set_wakeup_fd(-1)
            wake_r.close()
        fatal = [c.name for c in self.children if c.state is State.FATAL]
        self.log("stopped" + (f"; FATAL: {', '.join(fatal)}" if fatal else ""))
        return EXIT_FATAL if fatal else EXIT_OK

    def _dispatch(self, item: Any, now: float) -> None:
        if isinstance(item, int) and item in self._fd_owner:
            child, what = self._fd_owner[item]
            if what == "ready":
                self._on_ready_report(child, now)
            else:
                self._on_exit(child, now)
        elif isinstance(item, zmq.Socket) and item in self._controls:
            self._controls[item].on_readable()

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """A bug met while handling one event must not take every device down with the
        supervisor: log it loudly and keep supervising."""
        try:
            step(*args)
        except Exception:
            self.log("internal error (please report):\n" + traceback.format_exc())

    def _finished(self) -> bool:
        return self.shutting_down and not any(c.state in RUNNING_STATES or c.process is not None for c in self.children)

    def _close(self) -> None:
        for child in self.children:
            if child.control is not None:
                child.control.close()
                child.control = None
        self.pool.close()
        self.rpc.close(linger=0)
        self.ctx.term()
        self.run_dir.clear_state()
        path = self.run_dir.control_endpoint[len("ipc://"):]
        try:
            os.unlink(path)
        except OSError:
            pass

    def _install_signal_handlers(self) -> pysocket.socket:
        wake_r, wake_w = pysocket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake_w = wake_w  # keep the write end alive as long as the loop runs
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            # Handlers only record the signal; the loop acts on it (gunicorn's rule).
            signal.signal(signum, lambda s, f: self._signals.append(s))
        self.poller.register(wake_r.fileno(), zmq.POLLIN)
        return wake_r

    def _on_signals(self, wake_r: pysocket.socket) -> None:
        try:
            wake_r.recv(4096)
        except BlockingIOError:
            pass
        if self._signals:
            name = signal.Signals(self._signals[-1]).name
            self._signals.clear()
            self.begin_shutdown(f"received {name}")

    def begin_shutdown(self, why: str) -> None:
        if self.shutting_down:
            return
        self.log(f"stopping every device ({why})")
        sd_notify("STOPPING=1")
        self.shutting_down = True
        self.pool.release()
        now = self.clock()
        for child in self.children:
            self._stop(child, now, "supervisor shutdown")

    # -- starting -------------------------------------------------------------------------------
    def _start(self, child: Child, now: float) -> None:
        child.fire(Event.RETRY if child.state is State.BACKOFF else Event.START)
        self._spawn(child, now)

    def _spawn(self, child: Child, now: float) -> None:
        child.retry_at = None
        child.unhealthy = None
        child.stop = None
        child.paused = False
        child.probe = policy.ProbeState()
        try:
            pending = self.pool.take(child.pickled, child.control_endpoint, label=child.name)
            self._pool_wanted = self._pool_wanted or pending is not None
            if pending is None:
                pending = spawn_device(child.pickled, child.control_endpoint, label=child.name)
        except OSError as e:  # out of processes or file descriptors: retrying cannot help now
            child.last_exit = f"could not spawn a process: {e}"
            child.fire(Event.FAIL)
            self.log(f"{child.name}: FATAL ({child.last_exit})")
            return
        child.pending = pending
        child.process = pending.process
        # Not the loop's `now`: starting many devices takes a while, and start_timeout is
        # the device's budget, not the time its siblings took to spawn.
        child.spawned_at = self.clock()
        child.ready_at = None
        try:
            child.ps = psutil.Process(pending.process.pid)
            child.ps.cpu_percent(None)
        except (psutil.Error, TypeError):
            child.ps = None
        self._watch(pending.conn.fileno(), child, "ready")
        self._watch(pending.process.sentinel, child, "exit")
        if child.control is None:
            child.control = AsyncControl(self.ctx, child.control_endpoint)
            self._controls[child.control.socket] = child.control
            self.poller.register(child.control.socket, zmq.POLLIN)
        self._state_dirty = True

    def _watch(self, fd: int, child: Child, what: str) -> None:
        self._fd_owner[fd] = (child, what)
        self.poller.register(fd, zmq.POLLIN)

    def _unwatch(self, fd: int) -> None:
        if self._fd_owner.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def _on_ready_report(self, child: Child, now: float) -> None:
        pending = child.pending
        assert pending is not None
        self._unwatch(pending.conn.fileno())
        child.pending = None
        try:
            info = pending.result()
        except DeviceExitedEarly:
            pending.conn.close()
            return  # no report, just an exit: the sentinel path decides what follows
        except DeviceError as e:
            pending.conn.close()
            child.last_exit = f"could not start: {e}"
            self.log(f"{child.name}: {child.last_exit}")
            if child.state is State.STARTING:
                child.fire(Event.FAIL)
                self.log(f"{child.name}: FATAL (a start that cannot succeed is not retried)")
            return
        pending.conn.close()
        if child.state is not State.STARTING:
            return  # a stop was requested meanwhile; the stop path goes on
        child.fire(Event.READY)
        child.ready_at = now
        child.ever_ready = True
        child.endpoints = info.endpoints
        child.probe_due = _next_slot(now, child.config.probe.interval)
        self.log(f"{child.name}: RUNNING (pid {info.pid}) {_endpoint_summary(info.endpoints)}")
        self._maybe_announce_ready()

    def _maybe_announce_ready(self) -> None:
        if self.announced_ready or self.shutting_down:
            return
        if all(c.ever_ready or c.state is State.FATAL for c in self.children):
            self.announced_ready = True
            running = sum(c.state is State.RUNNING for c in self.children)
            fatal = len(self.children) - running
            self.log(f"ready: {running} device process(es) running" + (f", {fatal} not" if fatal else ""))
            sd_notify(f"READY=1\nSTATUS={running} devices running")

    # -- exits --------------------------------------------------------------------------------
    def _on_exit(self, child: Child, now: float) -> None:
        process = child.process
        assert process is not None
        if child.pending is not None:
            # Read the report first: a setup error arrives just before the exit.
            if child.pending.conn.poll(0):
                self._on_ready_report(child, now)
            else:
                self._unwatch(child.pending.conn.fileno())
                child.pending.conn.close()
                child.pending = None
        self._unwatch(process.sentinel)
        process.join()
        code = process.exitcode
        child.process = None
        child.ps = None
        if child.control is not None:
            child.control.fail_all("the device exited")
        self._state_dirty = True
        if child.state is State.FATAL:
            return  # the setup error was reported already; this is just the reaping
        requested = child.stop is not None
        if child.stop is not None:
            child.stopped_by = (
                "SIGKILL" if child.stop.kill_sent else "SIGTERM" if child.stop.term_sent else "control socket"
            )
        description = child.unhealthy or _exit_text(code)
        decision = policy.decide_after_exit(
            policy=child.config.restart,
            exit_code=None if child.unhealthy else code,
            requested_stop=requested,
            run_seconds=now - child.spawned_at,
            now=now,
            backoff=child.config.backoff,
            intensity=child.config.intensity,
            stable_after=child.config.stable_after,
            history=child.history,
            failures=child.failures,
        )
        child.history, child.failures = decision.history, decision.failures
        if requested:
            child.last_exit = f"stopped through the {child.stopped_by}" + ("" if code == 0 else f" ({description})")
            child.fire(Event.STOPPED)
            self.log(f"{child.name}: STOPPED ({child.last_exit})")
            child.stop = None
            if child.restart_after_stop and not self.shutting_down:
                child.restart_after_stop = False
                child.history, child.failures = policy.RestartHistory(), 0
                self._start(child, now)
            return
        child.last_exit = f"{description}; {decision.reason}" if child.unhealthy else decision.reason
        event = Event[decision.event_name]
        new_state = child.fire(event)
        if event is Event.EXIT_RESTART:
            child.restarts += 1
            child.retry_at = now + decision.delay
        self.log(f"{child.name}: {new_state.value} ({child.last_exit})")
        if new_state is State.FATAL:
            self._maybe_announce_ready()

    # -- stopping -----------------------------------------------------------------------------
    def _stop(self, child: Child, now: float, why: str) -> None:
        if child.state in (State.STOPPED, State.EXITED, State.FATAL, State.BACKOFF):
            if child.process is None and not (self.shutting_down and child.state is State.FATAL):
                # An operator's stop clears FATAL; a shutdown keeps it, for the exit code.
                child.fire(Event.STOP)
                child.retry_at = None
            return
        if child.state is State.STOPPING:
            return
        child.fire(Event.STOP)
        child.stop = StopProgress(requested_at=now)
        if child.control is not None:
            child.control.send(Command.STOP, now, child.config.stop_timeout, lambda ok, body: None)

    def _escalate(self, child: Child, now: float) -> None:
        stop = child.stop
        if stop is None or child.process is None:
            return
        action = policy.stop_action(
            requested_at=stop.requested_at, now=now, stop_timeout=child.config.stop_timeout,
            kill_timeout=child.config.kill_timeout, term_sent=stop.term_sent, kill_sent=stop.kill_sent,
        )
        if action is policy.StopAction.SIGTERM:
            stop.term_sent = True
            self.log(f"{child.name}: no exit {child.config.stop_timeout}s after the control-socket stop; SIGTERM")
            child.process.terminate()
        elif action is policy.StopAction.SIGKILL:
            stop.kill_sent = True
            self.log(f"{child.name}: still alive after SIGTERM; SIGKILL")
            child.process.kill()

    def _kill_unhealthy(self, child: Child, reason: str) -> None:
        if child.process is None or child.unhealthy:
            return
        child.unhealthy = reason
        self.log(f"{child.name}: {reason}; killing pid {child.process.pid}")
        child.process.kill()  # our unreaped child: its pid cannot have been reused

    # -- timers -------------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        for child in self.children:
            if child.control is not None:
                child.control.expire(now)
            if child.state is State.BACKOFF and child.retry_at is not None and now >= child.retry_at and not self.shutting_down:
                self._start(child, now)
            elif child.state is State.STARTING and now - child.spawned_at > child.config.start_timeout:
                self._kill_unhealthy(child, f"not ready within start_timeout {child.config.start_timeout}s")
            elif child.state is State.STOPPING:
                self._escalate(child, now)
            elif child.state is State.RUNNING and child.probe_due is not None and now >= child.probe_due:
                self._probe(child, now)
        if self._pool_wanted and not self.shutting_down and not any(c.state is State.STARTING for c in self.children):
            # Spawning idle workers competes for CPU with starting devices: wait for them.
            self._pool_wanted = False
            self.pool.refill()

    def _probe(self, child: Child, now: float) -> None:
        child.probe_due = _next_slot(now, child.config.probe.interval)
        if child.ps is not None and child.config.memory_limit is not None:
            try:
                rss = child.ps.memory_info().rss
            except psutil.Error:
                rss = 0
            if policy.memory_exceeded(rss, child.config.memory_limit):
                self._kill_unhealthy(child, f"memory limit exceeded: rss {rss} > {child.config.memory_limit} bytes")
                return
        if child.probe_in_flight or child.control is None:
            return
        child.probe_in_flight = True

        def answered(ok: bool, body: Any) -> None:
            child.probe_in_flight = False
            if child.state is not State.RUNNING:
                return
            child.probe, hung = policy.after_probe(child.probe, ok, child.config.probe.failures)
            if hung:
                self._kill_unhealthy(child, f"hung: {child.config.probe.failures} liveness probes unanswered")

        child.control.send(Command.PING, now, child.config.probe.timeout, answered)

    def _next_deadline(self, now: float) -> float:
        deadlines: list[float] = [now + 1.0]
        for child in self.children:
            if child.retry_at is not None:
                deadlines.append(child.retry_at)
            if child.probe_due is not None and child.state is State.RUNNING:
                deadlines.append(child.probe_due)
            if child.control is not None and (d := child.control.next_deadline()) is not None:
                deadlines.append(d)
            if child.state is State.STARTING:
                deadlines.append(child.spawned_at + child.config.start_timeout)
            if child.stop is not None:
                d = policy.next_stop_deadline(
                    requested_at=child.stop.requested_at, stop_timeout=child.config.stop_timeout,
                    kill_timeout=child.config.kill_timeout, term_sent=child.stop.term_sent, kill_sent=child.stop.kill_sent)
                if d is not None:
                    deadlines.append(d)
        return min(deadlines)


    def _save_state(self) -> None:
        self._state_dirty = False
        devices = {}
        for child in self.children:
            # child.ps was made at spawn: psutil keeps the create time it read then.
            if child.process is not None and child.ps is not None:
                devices[child.name] = {
                    "pid": child.ps.pid,
                    "create_time": child.ps.create_time(),
                    "control_endpoint": child.control_endpoint,
                }
        self.run_dir.write_state(devices)

    # -- the control endpoint -----------------------------------------------------------------
    def _on_request(self) -> None:
        while self.rpc.poll(0):
            frames = self.rpc.recv_multipart()
            envelope, body = frames[:-1], frames[-1]

            def reply(payload: dict[str, Any], envelope: list[bytes] = envelope) -> None:
                self.rpc.send_multipart(envelope + [json.dumps(payload).encode()])

            try:
                request = json.loads(body)
                handler = self.commands[request["command"]]
            except (ValueError, KeyError, TypeError):
                reply({"ok": False, "error": f"bad request; commands: {', '.join(self.commands)}"})
                continue
            try:
                handler(request.get("args") or {}, reply)
            except LookupError as e:
                reply({"ok": False, "error": str(e.args[0])})

    def _select(self, name: str | None) -> list[Child]:
        if not name:
            return list(self.children)
        chosen = [c for c in self.children if c.name == name or c.device_name == name]
        if not chosen:
            known = ", ".join(sorted({c.device_name for c in self.children}))
            raise LookupError(f"no device named {name!r} (devices: {known})")
        return chosen

    def _cmd_status(self, args: dict[str, Any], reply: Reply) -> None:
        now = self.clock()
        reply({"ok": True, "result": {
            "supervisor": {
                "pid": os.getpid(), "uptime": round(now - self.started_at, 3), "source": self.topology.source,
                "run_dir": str(self.run_dir.path), "control_endpoint": self.run_dir.control_endpoint,
                "shutting_down": self.shutting_down, "pool_idle": sum(1 for _ in self.pool.processes()),
            },
            "devices": [c.describe(now) for c in self._select(args.get("name"))],
        }})

    def _cmd_start(self, args: dict[str, Any], reply: Reply) -> None:
        if self.shutting_down:
            reply({"ok": False, "error": "the supervisor is shutting down"})
            return
        children = self._select(args.get("name"))
        busy = [c.name for c in children if c.state in RUNNING_STATES]
        if busy:
            reply({"ok": False, "error": f"already running: {', '.join(busy)}"})
            return
        now = self.clock()
        for child in children:
            child.history, child.failures = policy.RestartHistory(), 0
            child.fire(Event.START)
            self._spawn(child, now)
        reply({"ok": True, "result": {"starting": [c.name for c in children]}})

    def _cmd_stop(self, args: dict[str, Any], reply: Reply) -> None:
        children = self._select(args.get("name"))
        now = self.clock()
        for child in children:
            child.restart_after_stop = False
            self._stop(child, now, "operator")
        reply({"ok": True, "result": {"stopping": [c.name for c in children]}})

    def _cmd_restart(self, args: dict[str, Any], reply: Reply) -> None:
        if self.shutting_down:
            reply({"ok": False, "error": "the supervisor is shutting down"})
            return
        now = self.clock()
        children = self._select(args.get("name"))
        for child in children:
            if child.state in RUNNING_STATES:
                child.restart_after_stop = True
                self._stop(child, now, "restart")
            else:
                child.history, child.failures = policy.RestartHistory(), 0
                if child.state is State.BACKOFF:
                    child.retry_at = None
                child.fire(Event.START)
                self._spawn(child, now)
        reply({"ok": True, "result": {"restarting": [c.name for c in children]}})

    def _cmd_down(self, args: dict[str, Any], reply: Reply) -> None:
        reply({"ok": True, "result": {"pid": os.getpid(), "stopping": [c.name for c in self.children]}})
        self.begin_shutdown("down requested")

    def _cmd_pause(self, args: dict[str, Any], reply: Reply) -> None:
        self._forward(Command.PAUSE, args, reply, lambda c, body: setattr(c, "paused", True))

    def _cmd_resume(self, args: dict[str, Any], reply: Reply) -> None:
        self._forward(Command.RESUME, args, reply, lambda c, body: setattr(c, "paused", False))

    def _cmd_stats(self, args: dict[str, Any], reply: Reply) -> None:
        self._forward(Command.STATS, args, reply, lambda c, body: None)

    def _forward(self, command: Command, args: dict[str, Any], reply: Reply, on_ok: Callable[[Child, Any], None]) -> None:
        """Ask each selected running device, answer once all have answered."""
        children = [c for c in self._select(args.get("name")) if c.state is State.RUNNING and c.control is not None]
        if not children:
            reply({"ok": False, "error": f"no running device matches {args.get('name') or '*'}"})
            return
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        now = self.clock()

        def collect(child: Child) -> Callable[[bool, Any], None]:
            def done(ok: bool, body: Any) -> None:
                if ok:
                    on_ok(child, body)
                    results[child.name] = body
                else:
                    errors[child.name] = body.get("error", str(body)) if isinstance(body, dict) else str(body)
                if len(results) + len(errors) == len(children):
                    reply({"ok": not errors, "result": results, "errors": errors,
                           **({"error": "; ".join(f"{k}: {v}" for k, v in errors.items())} if errors else {})})
            return done

        for child in children:
            assert child.control is not None
            child.control.send(command, now, 2.0, collect(child))


def _next_slot(now: float, interval: float) -> float:
    """The next multiple of ``interval``: devices with the same probe interval are probed in
    one burst, so an idle supervisor wakes once per interval, not once per device."""
    return (math.floor(now / interval) + 1) * interval


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _endpoint_summary(endpoints: dict[str, list[str]]) -> str:
    return " ".join(f"{role}={','.join(eps)}" for role, eps in endpoints.items() if eps)


def _log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} procdevices: {message}", file=sys.stderr, flush=True)
