"""Topology configuration: load, validate and represent a TOML topology file.

Everything is validated here, completely, before the supervisor starts a single
process: a :class:`ConfigError` names the file, the dotted key path of the
offending value and the reason, on one printable line. The result is a tree of
NamedTuples (supervisor/__init__.py says why not dataclasses).

Modules, one job each:

- ``errors``: ConfigError, key paths, one-line escaping;
- ``model``: the records (Topology, DeviceConfig, SocketSpec, ...);
- ``settings``: THE table of scalar settings (types, ranges, defaults, scope);
- ``kinds``: THE table of device kinds (also read by ``build.py``);
- ``sockets``: a socket table and its options;
- ``endpoints``: one endpoint's syntax, bind conflicts, socket path limits;
- ``rules``: THE cross-field rule set (replicas, ``{replica}`` expansions, binds, socket
  paths, bind hosts, run dir creatable), run by the loader, ``scale`` and ``reload`` alike;
- ``libzmq_trial``: options and bind hosts tried on the real libzmq;
- ``source``: reading the file (regular, bounded, non-blocking) and TOML;
- ``loader``: the walk that puts them together, and the public functions.
"""

from procdevices.supervisor.config.endpoints import IPC_PATH_MAX
from procdevices.supervisor.config.errors import ConfigError
from procdevices.supervisor.config.kinds import KIND_TABLE, KINDS, SOCKET_TYPE_NAMES, KindSpec
from procdevices.supervisor.config.loader import (
    CONFIG_FILENAME,
    DEFAULT_SOURCE,
    default_topology,
    find_config,
    load_topology,
    parse_topology,
    validate_run_dir,
)
from procdevices.supervisor.config.model import (
    BackoffPolicy,
    DeviceConfig,
    Intensity,
    ProbeSpec,
    RestartPolicy,
    SocketSpec,
    SupervisorConfig,
    Topology,
)
from procdevices.supervisor.config.settings import SETTINGS, Setting

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_SOURCE",
    "IPC_PATH_MAX",
    "KINDS",
    "KIND_TABLE",
    "SETTINGS",
    "SOCKET_TYPE_NAMES",
    "BackoffPolicy",
    "ConfigError",
    "DeviceConfig",
    "Intensity",
    "KindSpec",
    "ProbeSpec",
    "RestartPolicy",
    "Setting",
    "SocketSpec",
    "SupervisorConfig",
    "Topology",
    "default_topology",
    "find_config",
    "load_topology",
    "parse_topology",
    "validate_run_dir",
]
