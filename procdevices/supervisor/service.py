"""``up``: put the supervisor together from its parts, run it, take it apart.

Topology ──plan_children──► [Child] ──► Supervisor ◄── EventLoop ◄── fds, signals, timers
                                           │   ▲
                       ProcessLauncher ◄───┘   └── CommandHandlers ◄── RequestServer
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from procdevices.devices.launch import pickle_device
from procdevices.exitcodes import EXIT_FATAL, EXIT_OK
from procdevices.logs import Log, to_logger
from procdevices.supervisor.build import build_device
from procdevices.supervisor.child import Child
from procdevices.supervisor.config import Topology
from procdevices.supervisor.core import Supervisor
from procdevices.supervisor.events import EventPublisher, event, events_endpoint
from procdevices.supervisor.handlers import CommandHandlers
from procdevices.supervisor.launcher import ProcessLauncher
from procdevices.supervisor.loop import EventLoop, RequestServer
from procdevices.supervisor.notify import sd_notify
from procdevices.supervisor.runstate import RunDir
from procdevices.supervisor.states import State


def plan_children(topology: Topology, run_dir: RunDir) -> list[Child]:
    """One Child per device instance, its device built and pickled once, up front."""
    children = []
    for config in topology.devices:
        for instance in config.instances():
            endpoint = run_dir.device_control_endpoint(instance.name)
            pickled = pickle_device(build_device(instance, endpoint))
            children.append(Child(instance, config.name, endpoint, pickled))
    return children


def run_supervisor(topology: Topology, run_dir: RunDir, log: Log | None = None) -> int:
    """Start every device and supervise until asked to stop; returns the exit code."""
    log = log or to_logger()
    clock = time.monotonic
    loop = EventLoop(clock, log)
    launcher = ProcessLauncher(topology.supervisor.pool_size, start_method=topology.supervisor.start_method.value)
    publish = EventPublisher(launcher.ctx, events_endpoint(run_dir.path))
    supervisor = Supervisor(
        topology,
        plan_children(topology, run_dir),
        launcher=launcher,
        watcher=loop,
        store=run_dir,
        clock=clock,
        log=log,
        notify=sd_notify,
        events=publish,
    )
    supervisor.extra_status.update(run_dir=str(run_dir.path), control_endpoint=run_dir.control_endpoint)
    server = RequestServer(launcher.ctx, run_dir.control_endpoint, CommandHandlers(supervisor), log, publish)
    try:
        loop.watch(server.socket, server.on_readable)
        loop.handle_signals((signal.SIGTERM, signal.SIGINT, signal.SIGHUP), supervisor.on_signal)
        publish(event("supervisor", state="running", pid=os.getpid()))
        supervisor.start_all()
        log(f"control: {run_dir.control_endpoint}")
        loop.run(supervisor)
    finally:
        publish(event("supervisor", state="stopped", pid=os.getpid()))
        publish.close()
        server.close()
        launcher.close()
        loop.close()
        run_dir.clear_state()
        with contextlib.suppress(OSError):
            os.unlink(run_dir.control_endpoint[len("ipc://") :])
    fatal = [c.name for c in supervisor.children if c.state is State.FATAL]
    log("stopped" + (f"; FATAL: {', '.join(fatal)}" if fatal else ""), level=logging.ERROR if fatal else logging.INFO)
    return EXIT_FATAL if fatal else EXIT_OK
