"""The run dir's layout: the one place every file and socket name in it is spelled.

A leaf module (it imports nothing from ``procdevices``): the supervisor, the CLI, the event
stream, the config checks and the web all find the run dir's sockets and files here, so a
name cannot drift between the side that creates it and the side that looks for it::

    <run_dir>/                 DEFAULT_RUN_DIR unless the topology or the environment says
        supervisor.sock        the supervisor's control endpoint (ROUTER)
        events.sock            the event stream (PUB)
        metrics.sock           the metrics, when ``metrics_socket = true`` (owner only)
        state.json             what the next ``up`` needs to clean up after an unclean end
        handback.sock          where an adopting supervisor takes back the devices' listening
                               sockets (unix stream, owner only, only while it adopts)
        ctl/<instance>.sock    each device instance's control socket
        logs/<instance>.log    each device instance's own output

Paths are built as text (``f"{run_dir}/..."``), not through ``Path``, so that the length a
config check measures is byte for byte the path the supervisor binds.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path
# pathlib is imported where a Path is made: a device process imports this module (for its
# handback socket) and would otherwise pay for pathlib, fnmatch, re and urllib.parse,
# ~4 ms of CPU per device, for string functions.

__all__ = [
    "CTL_DIR",
    "DEFAULT_RUN_DIR",
    "EVENTS_SOCKET",
    "HANDBACK_SOCKET",
    "LOGS_DIR",
    "METRICS_SOCKET",
    "STATE_FILE",
    "SUPERVISOR_SOCKET",
    "control_endpoint",
    "control_endpoint_prefix",
    "control_socket",
    "ctl_dir",
    "events_endpoint",
    "events_socket",
    "handback_socket",
    "log_dir",
    "log_file",
    "metrics_socket",
    "run_dir_of_control_endpoint",
    "state_file",
    "supervisor_endpoint",
    "supervisor_socket",
]

DEFAULT_RUN_DIR = ".procdevices"
SUPERVISOR_SOCKET = "supervisor.sock"
EVENTS_SOCKET = "events.sock"
METRICS_SOCKET = "metrics.sock"
HANDBACK_SOCKET = "handback.sock"
STATE_FILE = "state.json"
CTL_DIR = "ctl"
LOGS_DIR = "logs"

RunDirPath = str | os.PathLike[str]


def _ipc(path: str) -> str:
    return f"ipc://{path}"


def supervisor_socket(run_dir: RunDirPath) -> str:
    return f"{os.fspath(run_dir)}/{SUPERVISOR_SOCKET}"


def supervisor_endpoint(run_dir: RunDirPath) -> str:
    return _ipc(supervisor_socket(run_dir))


def events_socket(run_dir: RunDirPath) -> str:
    return f"{os.fspath(run_dir)}/{EVENTS_SOCKET}"


def events_endpoint(run_dir: RunDirPath) -> str:
    return _ipc(events_socket(run_dir))


def metrics_socket(run_dir: RunDirPath) -> str:
    return f"{os.fspath(run_dir)}/{METRICS_SOCKET}"


def handback_socket(run_dir: RunDirPath) -> str:
    """The unix stream socket an adopter listens on to take back the devices' listening
    sockets (a plain path: it is not a ZeroMQ endpoint)."""
    return f"{os.fspath(run_dir)}/{HANDBACK_SOCKET}"


def state_file(run_dir: RunDirPath) -> Path:
    from pathlib import Path

    return Path(run_dir) / STATE_FILE


def ctl_dir(run_dir: RunDirPath) -> Path:
    from pathlib import Path

    return Path(run_dir) / CTL_DIR


def control_socket(run_dir: RunDirPath, instance: str) -> str:
    return f"{os.fspath(run_dir)}/{CTL_DIR}/{instance}.sock"


def control_endpoint(run_dir: RunDirPath, instance: str) -> str:
    return _ipc(control_socket(run_dir, instance))


def control_endpoint_prefix(run_dir: RunDirPath) -> str:
    """What every instance's control endpoint starts with (the name follows, no ``/``)."""
    return _ipc(f"{os.fspath(run_dir)}/{CTL_DIR}/")


def run_dir_of_control_endpoint(endpoint: str) -> str | None:
    """The run dir whose instance control endpoint ``endpoint`` is (the inverse of
    :func:`control_endpoint`); None when it is not one (a device run outside a supervisor)."""
    prefix, ctl, suffix = "ipc://", f"/{CTL_DIR}/", ".sock"
    if not endpoint.startswith(prefix) or not endpoint.endswith(suffix):
        return None
    run_dir, sep, instance = endpoint[len(prefix) : -len(suffix)].rpartition(ctl)
    if not sep or not run_dir or not instance or "/" in instance:
        return None
    return run_dir


def log_dir(run_dir: RunDirPath) -> Path:
    from pathlib import Path

    return Path(run_dir) / LOGS_DIR


def log_file(run_dir: RunDirPath, instance: str) -> Path:
    return log_dir(run_dir) / f"{instance}.log"
