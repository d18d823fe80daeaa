"""Adoption: a new ``up`` takes over the devices its predecessor left running.

When a supervisor dies (a crash, an OOM kill, ``supervisorctl restart``) its devices go on
forwarding for ``orphan_grace`` seconds, waiting for an adopter (devices/orphans.py). When
it re-executes itself (``procdevices upgrade``) they never stop at all. Either way the next
``up`` on the run dir finds them in state.json and takes them over:

    state.json ──take_inventory()──► Inventory: alive (identify: uid, create time, run token),
                                     gone (recorded, no longer running)
         │
         └──adopt()──► ADOPT {token, pid, handback} to every alive device named in the file,
                       all at once through the supervisor's ControlRouter; each answers after
                       handing its listening sockets back (SCM_RIGHTS, supervisor/handback.py)
                       ──► Adoption: taken (process followed by a pidfd, control channel,
                           sockets), refused (not in the file, or it said no: stopped)

Then service.py restores the listening sockets, builds the children, and the supervisor
resumes each taken one with its books (books.py): RUNNING at once, same pid, same restarts,
same traffic totals. A taken device whose process no longer runs what the file asks (its
fingerprint differs) is restarted as by ``reload``; one the file no longer names is stopped;
one that died while no supervisor ran is started again by its restart policy.

Nothing is signalled, connected to or adopted unless identify() proved it is a device of this
run: a planted or stale state.json can at worst be ignored.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import zmq

from procdevices import runlayout
from procdevices.control.aclient import ControlChannel, ControlConnection, ControlRouter
from procdevices.control.protocol import Command
from procdevices.logs import Log
from procdevices.supervisor import books
from procdevices.supervisor.adopted import AdoptedProcess
from procdevices.supervisor.child import Child
from procdevices.supervisor.events import EventSink, event
from procdevices.supervisor.handback import HandbackServer
from procdevices.supervisor.launcher import DeviceProcess
from procdevices.supervisor.listeners import Listeners
from procdevices.supervisor.reload import Instance
from procdevices.supervisor.runstate import (
    DeviceRecord,
    RunDir,
    identify,
    own_control_endpoint,
    read_usable_state,
    stop_recorded,
)

# psutil is imported where it is used: not on `up`'s way to its first spawn (test_up_imports.py).
if TYPE_CHECKING:
    import psutil

# How long every device together has to answer ADOPT. They answer in parallel (256 devices:
# ~0.3 s), but a crowd of devices on a loaded machine is slow, not gone (at load 30, 179 of 256
# had not answered after 2 s), and a device that does not answer in time is stopped like a
# stranger's leftover: generous, since only an unresponsive device ever waits it out.
ADOPT_TIMEOUT = 10.0


class Candidate(NamedTuple):
    record: DeviceRecord
    proc: psutil.Process


class Inventory(NamedTuple):
    """What state.json says the previous supervisor left, checked against the processes."""

    token: str | None
    alive: tuple[Candidate, ...] = ()  # verifiably devices of that run, still running
    gone: tuple[DeviceRecord, ...] = ()  # recorded, no longer running (or not verifiable)
    lines: tuple[str, ...] = ()  # warnings about the state file itself


def take_inventory(run_dir: RunDir) -> Inventory:
    """Read state.json (run dir locked: its writer is gone) and identify each device."""
    state, lines = read_usable_state(run_dir)
    if state is None:
        return Inventory(None, lines=tuple(lines))
    alive, gone = [], []
    for record in state.devices:
        proc = identify(record.pid, record.create_time, state.token)
        if proc is None:
            gone.append(record)
        else:
            alive.append(Candidate(record, proc))
    return Inventory(state.token, tuple(alive), tuple(gone), tuple(lines))


class Taken(NamedTuple):
    """One adopted device: its process, control channel and handed-back sockets."""

    record: DeviceRecord
    process: AdoptedProcess
    control: ControlConnection
    sockets: dict[str, socket.socket]
    orphaned_for: float | None


class Adoption:
    __slots__ = ("taken", "lines")

    def __init__(self) -> None:
        self.taken: dict[str, Taken] = {}
        self.lines: list[str] = []  # what was done, for the log

    def unclaimed_sockets(self) -> list[socket.socket]:
        return [s for t in self.taken.values() for s in t.sockets.values()]


def adopt(
    inventory: Inventory,
    wanted: dict[str, Instance],
    run_dir: RunDir,
    router: ControlRouter,
    *,
    timeout: float = ADOPT_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
) -> Adoption:
    """Adopt every alive device the file still names (same instance of the same device);
    stop the others (not named any more, or refusing), as leftovers are stopped."""
    result = Adoption()
    asked: dict[str, tuple[Candidate, ControlConnection]] = {}
    refused: list[Candidate] = []
    for candidate in inventory.alive:
        record = candidate.record
        instance = wanted.get(record.name)
        endpoint = own_control_endpoint(run_dir, record)
        if instance is None or record.device not in (None, instance.device) or endpoint is None:
            refused.append(candidate)
        else:
            asked[record.name] = (candidate, router.connect(endpoint))
    if asked:
        path = runlayout.handback_socket(run_dir.path)
        with HandbackServer(path) as handback:
            payload = {"token": inventory.token, "pid": os.getpid(), "handback": path}
            answers = _exchange(payload, asked, router, handback, timeout, clock)
            result.lines += handback.rejected  # who sent what it should not have, and why
            for name, (candidate, control) in asked.items():
                answer = answers.get(name)
                process = _follow(candidate.proc) if answer is not None else None
                if answer is None or process is None:
                    control.close()
                    refused.append(candidate)
                    continue
                orphaned = answer.get("orphaned_for")
                result.taken[name] = Taken(
                    candidate.record,
                    process,
                    control,
                    handback.take(candidate.proc.pid),
                    float(orphaned) if isinstance(orphaned, int | float) else None,
                )
    if refused:
        result.lines += stop_recorded(run_dir, [c.record for c in refused], inventory.token)
    return result


def _exchange(
    payload: dict[str, Any],
    asked: dict[str, tuple[Candidate, ControlConnection]],
    router: ControlRouter,
    handback: HandbackServer,
    timeout: float,
    clock: Callable[[], float],
) -> dict[str, dict[str, Any]]:
    """Send ADOPT to every asked device at once; their positive answers by instance name."""
    answers: dict[str, dict[str, Any]] = {}
    settled: set[str] = set()
    unsent = dict(asked)
    deadline = clock() + timeout

    def answered(name: str, ok: bool, body: Any) -> None:
        settled.add(name)
        if ok and isinstance(body, dict) and body.get("adopted") is True:
            answers[name] = body

    while len(settled) < len(asked) and (now := clock()) < deadline:
        for name, (_, control) in list(unsent.items()):
            # Before the ROUTER's connection is up a request cannot be queued: try again on
            # the next turn (the connect to a live ipc socket takes well under a ms).
            if control.try_send(Command.ADOPT, now, deadline - now, functools.partial(answered, name), payload):
                del unsent[name]
        if router.socket.poll(5, zmq.POLLIN):
            router.on_readable()
        handback.collect()
        for _, control in asked.values():
            control.expire(clock())
    handback.collect()
    return answers


def _follow(proc: psutil.Process) -> AdoptedProcess | None:
    import psutil

    try:
        return AdoptedProcess.open(proc)
    except (ProcessLookupError, psutil.Error, OSError):
        return None


def restore_listeners(adoption: Adoption, wanted: dict[str, Instance], listeners: Listeners) -> None:
    """Listen again, for each adopted instance, on the sockets it handed back and the file
    still binds (same role, same endpoint as written); close the others (the device keeps
    its own copy until it stops)."""
    for name, taken in adoption.taken.items():
        binds = {(role, e) for role, spec in wanted[name].config.sockets() for e in spec.bind}
        for key in books.listeners(taken.record.books):
            role, written, resolved = key
            sock = taken.sockets.pop(resolved, None)
            if sock is not None and (role, written) in binds:
                listeners.restore(name, key, sock)
            elif sock is not None:
                taken.sockets[resolved] = sock
    for sock in adoption.unclaimed_sockets():
        with contextlib.suppress(OSError):
            sock.close()  # never unlinked: an ipc path is still the live device's
    for taken in adoption.taken.values():
        taken.sockets.clear()


class Resumer(Protocol):
    """The supervisor verbs adoption resumes supervision through (core.py)."""

    log: Log

    @property
    def children(self) -> list[Child]: ...

    def take_over(
        self, child: Child, process: DeviceProcess, control: ControlChannel, spawned_at: float, ready_at: float
    ) -> None: ...

    def restart(self, child: Child) -> None: ...


def resume(
    supervisor: Resumer, adoption: Adoption, gone: tuple[DeviceRecord, ...], now: float, announce: EventSink
) -> frozenset[str]:
    """Resume supervision of every adopted device with its books; restart those whose process
    no longer runs what the file asks; count a restart for those that died meanwhile. Returns
    the instances their restart policy keeps down (the caller does not start them).
    ``announce`` gets an ``adopted`` event per device (service.py publishes them once the
    supervisor announced itself running, so that they follow that event)."""
    by_name = {c.name: c for c in supervisor.children}
    for name, taken in adoption.taken.items():
        child = by_name[name]
        child.resume_books(books.read(taken.record.books))
        spawned_at, ready_at = books.started_times(taken.record.books, now)
        supervisor.take_over(child, taken.process, taken.control, spawned_at, ready_at)
        since = f" after {taken.orphaned_for:g}s without a supervisor" if taken.orphaned_for else ""
        supervisor.log(f"{name}: adopted (pid {taken.process.pid}){since}", device=name)
        announce(
            event(
                "adopted",
                device=child.device_name,
                instance=name,
                pid=taken.process.pid,
                restarts=child.restarts,
                orphaned_for=taken.orphaned_for,
            )
        )
        if taken.record.fingerprint != child.fingerprint:
            supervisor.log(f"{name}: its configuration changed while no supervisor ran; restarting it", device=name)
            supervisor.restart(child)
    hold = set()
    for record in gone:
        lost = by_name.get(record.name)
        if lost is None or record.device not in (None, lost.device_name):
            continue
        lost.resume_books(books.read(record.books))
        spawned_at, _ = books.started_times(record.books, now)
        if not lost.lost_unsupervised(now - spawned_at, now):
            hold.add(lost.name)
        supervisor.log(f"{lost.name}: {lost.last_exit}", device=lost.name, level=logging.WARNING)
    return frozenset(hold)
