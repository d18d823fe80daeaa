"""The validated topology: a tree of NamedTuples, nothing else (supervisor/__init__.py says
why not dataclasses).

Defaults here must equal the rows of ``settings.SETTINGS``; a test holds them
together (``tests/unit/test_config_schema.py``).
"""

from __future__ import annotations

import enum
import pathlib
from collections.abc import Iterator
from typing import NamedTuple

import zmq

from procdevices import runlayout

# RestartPolicy, Backoff and Intensity live in policy.py (the single copy the
# restart logic compares against, e.g. ``policy is RestartPolicy.ALWAYS``);
# they are re-exported under the names the configuration API uses.
from procdevices.supervisor.policy import Backoff, Intensity, RestartPolicy

__all__ = [
    "REPLICA",
    "BackoffPolicy",
    "ClusterConfig",
    "DeviceConfig",
    "HostConfig",
    "Intensity",
    "ProbeSpec",
    "RestartPolicy",
    "SocketSpec",
    "Reference",
    "SupervisorConfig",
    "Topology",
]

#: The backoff settings of a device (the same class as ``policy.Backoff``).
BackoffPolicy = Backoff

#: Placeholder in an endpoint, replaced by the replica number.
REPLICA = "{replica}"


class SocketSpec(NamedTuple):
    """One socket of a device."""

    type: int
    bind: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    sockopts: tuple[tuple[int, int | bytes], ...] = ()

    @property
    def type_name(self) -> str:
        try:
            return zmq.SocketType(self.type).name
        except ValueError:
            return str(self.type)

    def _for_replica(self, index: int) -> SocketSpec:
        value = str(index)
        return self._replace(
            bind=tuple(ep.replace(REPLICA, value) for ep in self.bind),
            connect=tuple(ep.replace(REPLICA, value) for ep in self.connect),
        )


class ProbeSpec(NamedTuple):
    """Liveness probing: ``failures`` consecutive failed probes mark a device hung."""

    interval: float = 1.0
    timeout: float = 1.0
    failures: int = 3


class DeviceConfig(NamedTuple):
    name: str
    kind: str
    in_: SocketSpec
    out: SocketSpec | None
    mon: SocketSpec | None
    ctrl: SocketSpec | None
    in_prefix: bytes = b"in"
    out_prefix: bytes = b"out"
    restart: RestartPolicy = RestartPolicy.ALWAYS
    backoff: BackoffPolicy = BackoffPolicy()
    intensity: Intensity = Intensity()
    stable_after: float = 10.0
    probe: ProbeSpec = ProbeSpec()
    memory_limit: int | None = None
    start_timeout: float = 10.0
    stop_timeout: float = 5.0
    kill_timeout: float = 2.0
    stop_linger: float = 1.0
    replicas: int = 1
    own_sockets: bool = True
    host: str | None = None  # [hosts.NAME] the device runs on; None: a file without [hosts]

    def sockets(self) -> Iterator[tuple[str, SocketSpec]]:
        """The (role, spec) pairs of the sockets this device has."""
        for role, spec in (("in", self.in_), ("out", self.out), ("mon", self.mon), ("ctrl", self.ctrl)):
            if spec is not None:
                yield role, spec

    def replica(self, index: int) -> DeviceConfig:
        """Replica ``index`` (0-based): ``{replica}`` in every endpoint replaced by
        ``str(index)``, named ``name.index`` when there is more than one replica."""
        if not 0 <= index < self.replicas:
            raise IndexError(f"replica index {index} out of range for {self.name!r} ({self.replicas} replicas)")

        def expand(spec: SocketSpec | None) -> SocketSpec | None:
            return None if spec is None else spec._for_replica(index)

        return self._replace(
            name=self.instance_name(index),
            in_=self.in_._for_replica(index),
            out=expand(self.out),
            mon=expand(self.mon),
            ctrl=expand(self.ctrl),
            replicas=1,
        )

    def instance_name(self, index: int) -> str:
        """The name replica ``index`` runs under (without building the replica)."""
        return f"{self.name}.{index}" if self.replicas > 1 else self.name

    def instances(self) -> tuple[DeviceConfig, ...]:
        # Made again at each call, not kept: a NamedTuple has no room for a cache, and a replica
        # is a few _replace calls (~10 µs; 32 replicas 0.3 ms). `up` builds them three times
        # before its first spawn (the fd plan, its own checks, the children).
        return tuple(self.replica(i) for i in range(self.replicas))


class StartMethod(enum.Enum):
    """How the supervisor makes device processes (docs/configuration.md, ``start_method``)."""

    SPAWN = "spawn"
    FORKSERVER = "forkserver"


class SupervisorConfig(NamedTuple):
    run_dir: pathlib.Path
    pool_size: int = 2
    metrics: str | None = None  # "HOST:PORT" to serve Prometheus metrics on; None: off
    metrics_socket: bool = False  # also serve them on <run_dir>/metrics.sock (owner only)
    device_log_max_bytes: int = 10 * 1024**2  # a device's log is rotated beyond this
    device_log_backups: int = 3  # rotated files kept per device
    start_method: StartMethod = StartMethod.SPAWN
    orphan_grace: float = 10.0  # seconds a device outlives its supervisor, waiting to be adopted

    @property
    def control_endpoint(self) -> str:
        return runlayout.supervisor_endpoint(self.run_dir)


class HostConfig(NamedTuple):
    """``[hosts.NAME]``: one machine of a multi-host topology (docs/multihost.md)."""

    name: str
    address: str  # how other hosts reach this one: an IP address or a DNS name
    control: str | None = None  # tcp endpoint where this host's supervisor serves other hosts


class ClusterConfig(NamedTuple):
    """``[cluster]``: what every host shares."""

    keys: pathlib.Path | None = None  # the directory `procdevices keys generate` wrote


class Reference(NamedTuple):
    """One ``"@DEVICE.ROLE"`` in a connect list, and what it resolved to."""

    device: str  # the connecting device
    role: str  # its socket that connects
    target: str  # the device whose socket binds
    target_role: str
    endpoints: tuple[str, ...]  # every endpoint the target binds, as seen from the connecting host


class Topology(NamedTuple):
    source: str
    supervisor: SupervisorConfig
    devices: tuple[DeviceConfig, ...]
    # Multi-host (docs/multihost.md); empty for a file without [hosts].
    hosts: tuple[HostConfig, ...] = ()
    cluster: ClusterConfig = ClusterConfig()
    references: tuple[Reference, ...] = ()

    def instances(self) -> tuple[DeviceConfig, ...]:
        return tuple(inst for device in self.devices for inst in device.instances())
