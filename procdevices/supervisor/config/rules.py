"""The rules that span a whole topology: one rule set for every way a topology can change.

The loader (so ``check`` and ``up``), ``reload`` (it loads the file) and ``scale`` (it
changes ``replicas`` of a running topology) all run :func:`check` on the topology they are
about to use, before anything starts or stops; so a change ``scale`` would make is refused
with exactly the message ``check`` gives for a file that asks for it. The rules:

- ``replicas`` within the settings table's range;
- every ``"@DEVICE.ROLE"`` in a connect list resolved to the endpoints it stands for
  (``hosts.resolve_references``: a known target, reachable from the connecting host, one
  security mechanism per socket); ``scale`` re-resolves those whose target it changes;
- a replicated device binds each endpoint per replica (``{replica}``) or on a wildcard port;
- every endpoint of every replica, expanded: tcp ports 1-65535 (``tcp://h:60{replica}``
  with 10 replicas asks for 600..609, with 100 for 6099), ipc paths within the unix
  socket path limit, ``*`` only where a bind allows it;
- no two binds on one address of one host (``hosts.check_bind_conflicts``: without
  ``[hosts]`` the whole topology is one host);
- the supervisor's and every instance's control socket path fit the limit;
- tcp bind hosts this machine can bind (tried on libzmq), for the devices of the hosts that
  are this machine (another host's addresses cannot be bound here);
- the run directory exists or can be created (:func:`check_run_dir`, tried on the file
  system: ``up`` would fail on ``/sys/...``). It needs the run dir ``up`` will really use,
  so the command line runs it once that is known (``loader.validate_run_dir``); the rest
  depends on the topology alone.
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Sequence

from procdevices import runlayout
from procdevices.supervisor.config import endpoints, settings
from procdevices.supervisor.config import hosts as hosts_module
from procdevices.supervisor.config.errors import ConfigError, Invalid, join_key
from procdevices.supervisor.config.libzmq_trial import LibzmqTrial
from procdevices.supervisor.config.model import (
    REPLICA,
    ClusterConfig,
    DeviceConfig,
    HostConfig,
    Reference,
    Topology,
)

__all__ = ["RUN_DIR_KEY", "check", "check_run_dir", "validate"]

RUN_DIR_KEY = "supervisor.run_dir"

_REPLICAS = next(s for s in settings.SETTINGS if s.path == "replicas")


def validate(topology: Topology) -> Topology:
    """:func:`check` for a topology already built (``scale``): the topology with its
    references resolved again (a scaled target binds more or fewer endpoints), or ConfigError
    naming the topology's file, as ``check`` would for that file."""
    devices, kept = hosts_module.unresolve_references(topology.devices, topology.references)
    try:
        with LibzmqTrial() as trial:
            devices, references = check(
                devices, topology.supervisor.run_dir, trial, hosts=topology.hosts, cluster=topology.cluster
            )
    except Invalid as exc:
        raise ConfigError(topology.source, exc.key, exc.reason) from None
    return topology._replace(devices=devices, references=kept + references)


def check(
    devices: Sequence[DeviceConfig],
    run_dir: pathlib.Path,
    trial: LibzmqTrial,
    run_dir_key: str = RUN_DIR_KEY,
    *,
    hosts: Sequence[HostConfig] = (),
    cluster: ClusterConfig | None = None,
) -> tuple[tuple[DeviceConfig, ...], tuple[Reference, ...]]:
    """Every rule above but the run dir's, in that order: the devices with their references
    resolved and those references, or Invalid (key path, reason) at the first broken rule."""
    for device in devices:
        prefix = join_key("devices", device.name)
        settings.parse_value(_REPLICAS, device.replicas, f"{prefix}.replicas")
    for device in devices:
        prefix = join_key("devices", device.name)
        for role, spec in device.sockets():
            for direction, values in (("bind", spec.bind), ("connect", spec.connect)):
                for index, template in enumerate(values):
                    if hosts_module.is_reference(template):
                        continue  # resolved below from binds checked here
                    key = f"{prefix}.{role}.{direction}[{index}]"
                    bind = direction == "bind"
                    if bind and device.replicas > 1 and REPLICA not in template and not _is_wildcard(template):
                        raise Invalid(key, "replicas > 1 need '{replica}' or port * in every bind endpoint")
                    for replica in range(device.replicas):
                        endpoints.check_expanded(template.replace(REPLICA, str(replica)), template, key, bind=bind)
    resolved, references = hosts_module.resolve_references(devices, hosts, cluster or ClusterConfig())
    hosts_module.check_bind_conflicts(resolved)  # per host; without [hosts], one host
    endpoints.check_socket_paths(resolved, run_dir, run_dir_key)
    endpoints.check_bind_hosts(hosts_module.local_devices(resolved, hosts), trial)
    return resolved, references


def check_run_dir(run_dir: pathlib.Path, key: str = RUN_DIR_KEY) -> None:
    """The run directory exists, or ``up`` can create it. Permission bits do not tell (root
    may "write" /sys, where mkdir fails with EPERM), so the nearest existing ancestor is asked
    for real: a private directory is made in it and removed at once. Whether an existing run
    dir is ours and private is the run dir's own check (runstate.RunDir.validate)."""
    if os.path.lexists(run_dir):
        return
    parent = run_dir.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise Invalid(key, f"cannot create run dir {run_dir}: {parent}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Invalid(key, f"cannot create run dir {run_dir}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Invalid(key, f"cannot create run dir {run_dir}: {parent} is not writable")
    # A trial directory of a name nobody else picks (tempfile would do the same, at ~3 ms of
    # import on the way to `up`'s first spawn).
    trial = os.path.join(parent, f"{runlayout.DEFAULT_RUN_DIR}-check-{os.getpid()}-{os.urandom(6).hex()}")
    try:
        os.mkdir(trial, 0o700)
        os.rmdir(trial)
    except OSError as exc:
        raise Invalid(key, f"cannot create run dir {run_dir}: {exc.strerror or exc}") from None


def _is_wildcard(endpoint: str) -> bool:
    scheme, _, address = endpoint.partition("://")
    if scheme == "tcp":
        return address.rpartition(":")[2] == "*"
    if scheme == "ipc":
        return address == "*"
    return False
