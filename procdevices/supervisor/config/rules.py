"""The rules that span a whole topology: one rule set for every way a topology can change.

The loader (so ``check`` and ``up``), ``reload`` (it loads the file) and ``scale`` (it
changes ``replicas`` of a running topology) all run :func:`check` on the topology they are
about to use, before anything starts or stops; so a change ``scale`` would make is refused
with exactly the message ``check`` gives for a file that asks for it. The rules:

- ``replicas`` within the settings table's range;
- a replicated device binds each endpoint per replica (``{replica}``) or on a wildcard port;
- every endpoint of every replica, expanded: tcp ports 1-65535 (``tcp://h:60{replica}``
  with 10 replicas asks for 600..609, with 100 for 6099), ipc paths within the unix
  socket path limit, ``*`` only where a bind allows it;
- no two binds on one address (``endpoints.check_bind_conflicts``);
- the supervisor's and every instance's control socket path fit the limit;
- tcp bind hosts this machine can bind (tried on libzmq);
- the run directory exists or can be created (:func:`check_run_dir`, tried on the file
  system: ``up`` would fail on ``/sys/...``). It needs the run dir ``up`` will really use,
  so the command line runs it once that is known (``loader.validate_run_dir``); the rest
  depends on the topology alone.
"""

from __future__ import annotations

import os
import pathlib
import stat
import tempfile
from collections.abc import Sequence

from procdevices.supervisor.config import endpoints, settings
from procdevices.supervisor.config.errors import ConfigError, Invalid, join_key
from procdevices.supervisor.config.libzmq_trial import LibzmqTrial
from procdevices.supervisor.config.model import REPLICA, DeviceConfig, Topology

__all__ = ["RUN_DIR_KEY", "check", "check_run_dir", "validate"]

RUN_DIR_KEY = "supervisor.run_dir"

_REPLICAS = next(s for s in settings.SETTINGS if s.path == "replicas")


def validate(topology: Topology) -> None:
    """:func:`check` for a topology already built (``scale``): ConfigError naming the
    topology's file, as ``check`` would for that file."""
    try:
        with LibzmqTrial() as trial:
            check(topology.devices, topology.supervisor.run_dir, trial)
    except Invalid as exc:
        raise ConfigError(topology.source, exc.key, exc.reason) from None


def check(
    devices: Sequence[DeviceConfig], run_dir: pathlib.Path, trial: LibzmqTrial, run_dir_key: str = RUN_DIR_KEY
) -> None:
    """Every rule above but the run dir's, in that order; Invalid (key path, reason) at the
    first broken one."""
    for device in devices:
        prefix = join_key("devices", device.name)
        settings.parse_value(_REPLICAS, device.replicas, f"{prefix}.replicas")
        for role, spec in device.sockets():
            for direction, values in (("bind", spec.bind), ("connect", spec.connect)):
                for index, template in enumerate(values):
                    key = f"{prefix}.{role}.{direction}[{index}]"
                    bind = direction == "bind"
                    if bind and device.replicas > 1 and REPLICA not in template and not _is_wildcard(template):
                        raise Invalid(key, "replicas > 1 need '{replica}' or port * in every bind endpoint")
                    for replica in range(device.replicas):
                        endpoints.check_expanded(template.replace(REPLICA, str(replica)), template, key, bind=bind)
    endpoints.check_bind_conflicts(devices)
    endpoints.check_socket_paths(devices, run_dir, run_dir_key)
    endpoints.check_bind_hosts(devices, trial)


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
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".procdevices-check-", dir=parent))
    except OSError as exc:
        raise Invalid(key, f"cannot create run dir {run_dir}: {exc.strerror or exc}") from None


def _is_wildcard(endpoint: str) -> bool:
    scheme, _, address = endpoint.partition("://")
    if scheme == "tcp":
        return address.rpartition(":")[2] == "*"
    if scheme == "ipc":
        return address == "*"
    return False
