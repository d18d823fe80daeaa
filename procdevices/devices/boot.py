"""The first code of a device process that procdevices spawns itself (devices/spawnproc.py):
a fresh interpreter, started as

    python [the parent's flags] -c '...; from procdevices.devices.boot import main; main()' FD ROLE DAEMON

FD is its end of the channel to its launcher (devices/channel.py), kept open across the exec.
The first message on it is the launcher's ``sys.path`` and ``sys.argv``, which the child takes,
as multiprocessing's spawn does: a device's class is found where its launcher found it. ROLE
``device``: it reads its job and runs the device at once. ROLE ``worker``: a warm worker of the
pool, it imports what a device needs (:data:`PRELOAD`) and starts its control thread, then
waits for a job and the listening descriptors that follow it (inherit.py).

Nothing here imports multiprocessing, whose own spawn would make every device import its
context, process, reduction (with ``socket`` and ``selectors``), util and spawn modules
before its first line of work: ~10 ms of CPU and ~0.4 MiB of private memory per device
(docs/performance.md). A device imports pyzmq, the runtime and its class's module.
"""

from __future__ import annotations

import os
import sys

from procdevices.collector import Thresholds
from procdevices.devices.channel import Channel

#: What a warm worker imports while it waits, and the fork server before it forks anything:
#: the modules of every device class the supervisor builds, and of the device process's
#: runtime, so that none is imported on a restart's critical path. None of them creates a
#: zmq.Context or starts a thread at import (tests/integration/test_device_start_methods.py).
PRELOAD = [
    "zmq",
    "procdevices.devices.runtime",
    "procdevices.devices.basedevice",
    "procdevices.devices.proxydevice",
    "procdevices.devices.proxysteerabledevice",
    "procdevices.devices.monitoredqueuedevice",
]


#: Whether this is a daemonic device process (spawnproc refuses it children, as
#: multiprocessing does); set by main.
DAEMONIC = False


def main(paused: Thresholds | None = None) -> None:
    """``paused``: the collector's thresholds before spawnproc's command line paused it (None
    from the command line of a procdevices from before the pause, still running after an
    upgrade was installed: the device then pauses once it has its job)."""
    global DAEMONIC
    fd, role, daemon = sys.argv[1:4]
    DAEMONIC = daemon == "daemon"
    conn = Channel(int(fd))
    try:
        path, argv = conn.recv()
    except (EOFError, OSError):
        os._exit(0)  # its launcher died before it said anything: nobody to run a device for
    sys.path[:] = path
    sys.argv[:] = argv
    if role == "worker":
        run_worker(conn, paused)
    else:
        run_device(conn, paused)


def run_device(conn: Channel, paused: Thresholds | None = None) -> None:
    from procdevices.devices import runtime as rt

    try:
        job = conn.recv()
    except (EOFError, OSError):
        os._exit(0)
    rt.process_main(conn, job, paused=paused)


def run_worker(conn: Channel, paused: Thresholds | None = None) -> None:
    """A warm worker: import what a device needs, then wait on ``conn`` for a job (and the
    listening descriptors that follow it, inherit.send_job) and run it. Exits quietly if the
    pipe closes first: the pool was released, or its supervisor died. ``paused``: as for
    :func:`main`; None for a fork server's worker, whose collections run until its job."""
    import importlib
    import signal

    from procdevices.devices import inherit
    from procdevices.devices import runtime as rt

    # As process_main does for a device: these signals are the supervisor's business.
    for signum in rt.IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    for module in PRELOAD:
        importlib.import_module(module)
    # Its listening sockets come with SCM_RIGHTS (channel.recv_fds), which imports socket:
    # now, not on a restart's critical path (~4 ms). A spawned device never needs it.
    importlib.import_module("socket")
    # Its device's control thread too: a restart then does not wait for a thread to start.
    rt.prestart_control_thread()
    try:
        job = inherit.receive_job(conn)
    except (EOFError, OSError):
        os._exit(0)
    rt.process_main(conn, job, paused=paused)
