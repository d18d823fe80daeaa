"""Open-file planning: the descriptors a topology needs in the supervisor, against its limit.

libzmq aborts the whole process when it meets EMFILE on an incoming ipc connection
(``Too many open files (src/ipc_listener.cpp:297)``), and every device dies with the
supervisor. So the supervisor never runs short: ``up`` raises its soft ``RLIMIT_NOFILE`` to
the hard limit, and ``check`` and ``up`` refuse a topology whose estimate, plus a reserve for
clients, does not fit under it (one line, exit 78, nothing created).

The estimate is measured, not guessed (``scripts/fdcount.py``; 16, 64 and 128 streamers with
two ipc binds each, pool 0 and 2): the supervisor holds, per device process,

- its sentinel and its ready pipe (2),
- its control connection, an ipc socket inside libzmq's I/O thread (1),
- one listening socket per tcp/ipc bind it keeps for the device (``own_sockets``),

5.0 per device with two binds, plus ~1 more per process while it is being started (a
spawn's pipes). The rest is fixed: stdio, the epoll set, libzmq's context, the lock,
``supervisor.sock`` and ``events.sock``: 23 with one device and no pool.
"""

from __future__ import annotations

import os
import resource
from typing import NamedTuple

from procdevices.supervisor.config import DeviceConfig, Topology
from procdevices.supervisor.policy import max_starting

PER_PROCESS = 3  # sentinel, ready pipe, control connection
PER_STARTING = 1  # a spawn's pipes, while the process starts (measured peak: +23 for 32 starting)
PER_WORKER = 3  # a warm pool worker: sentinel and its two pipe ends
# The supervisor itself (23 measured) with room for what comes and goes: state.json's
# temporary file, psutil's /proc reads, a log rotation's two files, the signal wake-up pair.
BASE = 48
# Kept free at all times for clients: CLI commands on supervisor.sock, `events` and `top`
# subscribers, scrapes of the metrics server (at most httpserve.MAX_CONNECTIONS at once, and
# never below httpserve.RESERVE free).
CLIENT_RESERVE = 128


class DescriptorLimit(Exception):
    """The topology needs more descriptors than the open-file limit allows; one line."""


class Plan(NamedTuple):
    processes: int
    needed: int


def owned_binds(instance: DeviceConfig) -> int:
    """Listening sockets the supervisor keeps for this instance (see listeners.py): at most
    one per tcp or ipc bind (fewer where it cannot own one; the estimate stays an upper bound)."""
    if not instance.own_sockets:
        return 0
    return sum(1 for _, spec in instance.sockets() for e in spec.bind if e.startswith(("tcp://", "ipc://")))


def plan(topology: Topology, cpus: int | None = None) -> Plan:
    instances = topology.instances()
    starting = min(len(instances), max_starting(cpus if cpus is not None else os.cpu_count()))
    needed = (
        BASE
        + CLIENT_RESERVE
        + PER_WORKER * topology.supervisor.pool_size
        + sum(PER_PROCESS + owned_binds(i) for i in instances)
        + PER_STARTING * starting
    )
    return Plan(len(instances), needed)


def limits() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE; RLIM_INFINITY as the kernel's own ceiling."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft), _finite(hard)


def _finite(value: int) -> int:
    if value != resource.RLIM_INFINITY:
        return value
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def check(topology: Topology) -> Plan:
    """The plan, or DescriptorLimit when the hard limit cannot carry it (the hard limit:
    ``up`` raises its soft limit that far)."""
    result = plan(topology)
    _, hard = limits()
    if result.needed > hard:
        raise DescriptorLimit(
            f"{topology.source}: {result.processes} device process(es) need about {result.needed} open files "
            f"in the supervisor, over its open-file limit of {hard} (hard); raise it "
            "(ulimit -n, systemd LimitNOFILE=) or run fewer device processes"
        )
    return result


def raise_soft_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force. Devices
    inherit it; nothing here uses select(), which cannot take descriptors above 1023."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard) if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return _finite(soft)
