"""A device's ready report, and the supervisor's own readiness.

A starting device reports once, on its own channel: ready (its sockets bound and connected)
or a setup error that no retry can fix (FATAL at once, gunicorn's rule). Once every device
is ready or FATAL, the supervisor says so, once: a log line and ``READY=1`` to systemd's
``NOTIFY_SOCKET`` (notify.py), so that units ordered after it start when clients can connect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from procdevices.errors import DeviceError, DeviceExitedEarly
from procdevices.logs import Log
from procdevices.supervisor.child import Child
from procdevices.supervisor.launcher import DeviceProcess
from procdevices.supervisor.statekeeper import StateKeeper
from procdevices.supervisor.states import State


class Readiness:
    def __init__(self, log: Log, notify: Callable[[str], object], state: StateKeeper) -> None:
        self.log = log
        self.notify = notify
        self.state = state
        self.announced = False

    def read_report(self, child: Child, process: DeviceProcess, now: float) -> None:
        """``process`` has reported (the caller stopped watching its report channel)."""
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
            return
        if child.state is not State.STARTING:
            return  # a stop was requested meanwhile; the stop path goes on
        child.ready(info, now)
        self.state.behind()  # its books: when it became ready, what it reported
        endpoints = " ".join(f"{role}={','.join(eps)}" for role, eps in info.endpoints.items() if eps)
        self.log(f"{child.name}: RUNNING (pid {info.pid}) {endpoints}", device=child.name)
        if info.mq_loop == "python":
            self.log(
                f"{child.name}: its monitored queue runs the slower Python loop (`procdevices --version` says why)",
                device=child.name,
                level=logging.WARNING,
            )

    def announce_if_ready(self, children: list[Child], shutting_down: bool) -> None:
        """Once every device is ready or FATAL: say so, once."""
        if self.announced or shutting_down:
            return
        if all(c.ever_ready or c.state is State.FATAL for c in children):
            self.announced = True
            running = sum(c.state is State.RUNNING for c in children)
            fatal = len(children) - running
            self.log(f"ready: {running} device process(es) running" + (f", {fatal} not" if fatal else ""))
            self.notify(f"READY=1\nSTATUS={running} devices running")
