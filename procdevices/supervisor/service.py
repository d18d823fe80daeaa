"""``up``: put the supervisor together from its parts, run it, take it apart.

Topology ──child_factory──► [Child] ──► Supervisor ◄── EventLoop ◄── fds, signals, timers
                                           │   ▲
                       ProcessLauncher ◄───┘   └── CommandHandlers ◄── RequestServer
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq

from procdevices.cluster.control import ControlEndpoint, ControlUnavailable, ServedControl, open_control
from procdevices.devices.launch import pickle_device
from procdevices.exitcodes import EXIT_FATAL, EXIT_OK
from procdevices.logs import Log, to_logger
from procdevices.supervisor import adoption, books, devicelogs, signals, upgrade
from procdevices.supervisor.build import build_device
from procdevices.supervisor.child import Child
from procdevices.supervisor.config import DeviceConfig, Topology
from procdevices.supervisor.core import Supervisor
from procdevices.supervisor.events import EventPublisher, event, events_endpoint
from procdevices.supervisor.handlers import CommandHandlers
from procdevices.supervisor.launcher import ProcessLauncher
from procdevices.supervisor.listeners import Listeners
from procdevices.supervisor.loop import EventLoop, RequestServer
from procdevices.supervisor.notify import sd_notify
from procdevices.supervisor.reload import PROCESS_FIELDS, ChildFactory, instances
from procdevices.supervisor.runstate import RunDir
from procdevices.supervisor.states import State

if TYPE_CHECKING:
    from procdevices.supervisor.metrics import MetricsServer


def child_factory(run_dir: RunDir, listeners: Listeners, log: Log) -> ChildFactory:
    def make_child(instance: DeviceConfig, device: str) -> Child:
        """One device instance, its listening sockets made (listeners.py), its device built
        and pickled once, up front."""
        fingerprint = books.fingerprint(instance, PROCESS_FIELDS)  # as written, not as resolved
        try:
            instance = listeners.own(instance)
        except OSError as e:
            # The device will try itself, and report the failure as a setup error (FATAL).
            log(f"{instance.name}: {e}; the device will bind by itself", device=instance.name, level=logging.WARNING)
            instance = instance._replace(own_sockets=False)
        endpoint = run_dir.device_control_endpoint(instance.name)
        return Child(instance, device, endpoint, pickle_device(build_device(instance, endpoint)), fingerprint)

    return make_child


def run_supervisor(
    topology: Topology,
    run_dir: RunDir,
    log: Log | None = None,
    load: Callable[[str | None], Topology] | None = None,
    *,
    metrics: str | None = None,
    remote: ControlEndpoint | None = None,
    signals_ready: Callable[[], object] | None = None,
    inventory: adoption.Inventory | None = None,
    lock_fd: int | None = None,
    preflight: list[str] | None = None,
    reexecuted: bool = False,
) -> int:
    """Start every device and supervise until asked to stop; returns the exit code.

    ``load(path)`` re-reads the topology for a reload (``path`` None: the file ``up``
    started with); without it the supervisor refuses to reload. ``metrics`` ("HOST:PORT")
    overrides the topology's (``metrics_socket`` adds ``<run_dir>/metrics.sock``);
    MetricsUnavailable, before any device starts, when it cannot be served.
    ``signals_ready()`` is called once the loop handles SIGTERM, SIGINT and SIGHUP: the caller
    re-raises there what it held before (the command line's ``interrupts``).
    ``inventory``: what the previous supervisor of the run dir left (adoption.py): its
    devices that still run are adopted, not started again. ``lock_fd`` (the run dir's lock)
    and ``preflight`` (the command that checks a newly installed version) make ``upgrade``
    possible (upgrade.py); ``reexecuted``: this is an upgrade's new image."""
    log = log or to_logger()
    clock = time.monotonic
    loop = EventLoop(clock, log)
    # Children already: an upgrade's exec kept the old image's (upgrade.py). Asked only then:
    # psutil finds children by reading every process of the host.
    inherited = upgrade.children() if reexecuted else set()
    listeners = Listeners()
    devicelogs.prepare(run_dir.path)
    rotation = devicelogs.Rotation(topology.supervisor.device_log_max_bytes, topology.supervisor.device_log_backups)
    launcher = ProcessLauncher(
        topology.supervisor.pool_size,
        start_method=topology.supervisor.start_method.value,
        listeners=listeners,
        log_dir=devicelogs.log_dir(run_dir.path),
        log_rotation=rotation,
    )
    publish = EventPublisher(launcher.ctx, events_endpoint(run_dir.path))
    wanted = instances(topology)
    adopted = adoption.Adoption()
    if inventory is not None and inventory.alive:
        began = clock()
        adopted = adoption.adopt(inventory, wanted, run_dir, launcher.controls)
        for line in adopted.lines:
            log(line)
        log(
            f"adopted {len(adopted.taken)} of the {len(inventory.alive)} device process(es) still running "
            f"in {clock() - began:.3f}s"
        )
        adoption.restore_listeners(adopted, wanted, listeners)
    make_child = child_factory(run_dir, listeners, log)
    supervisor = Supervisor(
        topology,
        [make_child(i.config, i.device) for i in wanted.values()],
        launcher=launcher,
        watcher=loop,
        store=run_dir,
        clock=clock,
        log=log,
        notify=sd_notify,
        events=publish,
        load=load,
        make_child=make_child,
    )
    supervisor.extra_status.update(
        run_dir=str(run_dir.path), control_endpoint=run_dir.control_endpoint, adopted=len(adopted.taken)
    )
    upgrade.reap_strays(loop, inherited - {t.process.pid for t in adopted.taken.values()})
    if lock_fd is not None and preflight is not None:
        supervisor.upgrader = upgrade.Upgrader(
            preflight=preflight,
            command=upgrade.reexec_command(),
            lock_fd=lock_fd,
            before_exec=supervisor.write_state_now,
            watcher=loop,
            log=log,
            notify=sd_notify,
            wanted=lambda: not (supervisor.shutting_down or supervisor.leaving),
        )
    server = RequestServer(launcher.ctx, run_dir.control_endpoint, CommandHandlers(supervisor), log, publish)
    metrics_address = metrics or topology.supervisor.metrics
    metrics_server: MetricsServer | None = None
    metrics_socket: MetricsServer | None = None
    served: ServedControl | None = None
    remote_server: RequestServer | None = None
    rotator = devicelogs.Rotator(devicelogs.log_dir(run_dir.path), rotation, log).start()
    try:
        if remote is not None:
            # Multi-host: this host's control endpoint for the others, CURVE only (before any
            # device starts: an endpoint that cannot be served ends `up` with exit 78).
            served = open_control(remote)
            try:
                remote_server = RequestServer(
                    served.ctx, remote.endpoint, CommandHandlers(supervisor), log, publish, configure=served.configure
                )
            except zmq.ZMQError as e:
                raise ControlUnavailable(f"control endpoint {remote.endpoint}: {e}") from None
            loop.watch(remote_server.socket, remote_server.on_readable)
            log(f"remote control: {remote.endpoint} (CURVE)")
        supervisor.extra_status["remote_control"] = remote.endpoint if remote is not None else None
        if metrics_address is not None or topology.supervisor.metrics_socket:
            # Only now: metrics.py brings prometheus_client and http.server (~0.1 s of CPU).
            from procdevices.supervisor.metrics import metrics_socket_path, start_metrics
        if metrics_address is not None:
            metrics_server = start_metrics(supervisor, metrics_address, log)
            log(f"metrics: {metrics_server.url}")
        if topology.supervisor.metrics_socket:
            metrics_socket = start_metrics(supervisor, log=log, unix_path=str(metrics_socket_path(run_dir.path)))
            log(f"metrics: {metrics_socket.url}")
        supervisor.extra_status["metrics"] = metrics_server.address if metrics_server is not None else None
        supervisor.extra_status["metrics_socket"] = metrics_socket.address if metrics_socket is not None else None
        loop.watch(server.socket, server.on_readable)
        # Probe answers change no timer: quiet, so they do not make the loop walk every device.
        loop.watch(launcher.controls.socket, lambda now: launcher.controls.on_readable(), quiet=True)
        loop.handle_signals(signals.HANDLED, supervisor.on_signal)
        if signals_ready is not None:
            signals_ready()
        publish(event("supervisor", state="running", pid=os.getpid()))
        # After "running": the adopted devices' events follow it on the stream.
        hold = adoption.resume(supervisor, adopted, inventory.gone if inventory else (), clock(), publish)
        supervisor.start_all(hold)
        log(f"control: {run_dir.control_endpoint}")
        loop.run(supervisor)
    finally:
        if supervisor.upgrader is not None:
            supervisor.upgrader.close()
        rotator.close()
        if metrics_server is not None:
            metrics_server.close()
        if metrics_socket is not None:
            metrics_socket.close()
            with contextlib.suppress(OSError):
                os.unlink(metrics_socket.address)
        publish(event("supervisor", state="left" if supervisor.leaving else "stopped", pid=os.getpid()))
        publish.close()
        server.close()
        if remote_server is not None:
            remote_server.close()
        if served is not None:
            served.close()
        if supervisor.leaving:
            supervisor.flush()  # the books the next supervisor carries on with
        launcher.close(leave_devices=supervisor.leaving)
        loop.close()
        if not supervisor.leaving:
            run_dir.clear_state()
        with contextlib.suppress(OSError):
            os.unlink(run_dir.control_endpoint[len("ipc://") :])
    if supervisor.leaving:
        log("left the devices running")
        return EXIT_OK
    fatal = [c.name for c in supervisor.children if c.state is State.FATAL]
    log("stopped" + (f"; FATAL: {', '.join(fatal)}" if fatal else ""), level=logging.ERROR if fatal else logging.INFO)
    return EXIT_FATAL if fatal else EXIT_OK
