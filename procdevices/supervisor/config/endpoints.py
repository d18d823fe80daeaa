"""Endpoints and the rules that span the whole topology.

- one endpoint: syntax, no whitespace or control characters, ipc paths made
  absolute and within the unix socket path limit, ``{replica}`` expanded and
  each expansion checked;
- bind conflicts between all sockets of all devices and replicas, in one pass
  over dicts keyed by address (linear in the number of binds);
- tcp bind hosts this machine can bind (tried on libzmq, see ``libzmq_trial``);
- the run directory: the supervisor's and every device's control socket path
  must fit the unix socket path limit (:func:`validate_run_dir`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

from procdevices import runlayout
from procdevices.supervisor.config.errors import Invalid, expected, join_key, show
from procdevices.supervisor.config.libzmq_trial import LibzmqTrial
from procdevices.supervisor.config.model import REPLICA, DeviceConfig

__all__ = [
    "IPC_PATH_MAX",
    "check_bind_conflicts",
    "check_bind_hosts",
    "check_endpoint",
    "check_expanded",
    "check_socket_paths",
]

#: sizeof(sockaddr_un.sun_path) - 1 on Linux: the longest usable unix socket path.
IPC_PATH_MAX = 107

_PASSTHROUGH_SCHEMES = ("ws", "wss", "pgm", "epgm", "udp")
_WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "[::]"})


def check_endpoint(value: object, key: str, *, bind: bool, base_dir: str) -> str:
    """Validate one endpoint as written and return it normalized: relative ipc paths become
    absolute; ``{replica}`` is kept. What depends on the replica (ports, path lengths) is
    checked per replica by ``rules.check``, with the rest of the topology."""
    if not isinstance(value, str):
        raise expected(key, "an endpoint string", value)
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise Invalid(key, f"invalid endpoint '{show(value)}': contains whitespace or a control character")
    scheme, sep, address = value.partition("://")
    if scheme == "inproc" and sep:
        raise Invalid(key, "inproc endpoints cannot cross processes")
    if not sep or not address or scheme not in ("tcp", "ipc", *_PASSTHROUGH_SCHEMES):
        raise Invalid(key, f"invalid endpoint '{show(value)}': expected tcp://host:port or ipc://path")

    if scheme == "ipc":
        if address != "*" and not address.startswith("@") and not os.path.isabs(address):
            address = os.path.normpath(os.path.join(base_dir, address))
        value = f"ipc://{address}"
    return value


def check_expanded(expanded: str, template: str, key: str, *, bind: bool) -> None:
    """One endpoint of one replica (``{replica}`` replaced): port range, path length."""
    scheme, _, address = expanded.partition("://")
    if scheme == "tcp":
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port:
            raise Invalid(key, f"invalid endpoint '{template}': expected tcp://host:port")
        if port == "*":
            if not bind:
                raise Invalid(key, f"invalid endpoint '{template}': port * is only valid for bind")
        elif not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise Invalid(key, f"invalid endpoint '{template}': port must be 1-65535 or *, got '{show(port)}'")
        if host == "*" and not bind:
            raise Invalid(key, f"invalid endpoint '{template}': host * is only valid for bind")
    elif scheme == "ipc":
        if address == "*" and not bind:
            raise Invalid(key, f"invalid endpoint '{template}': ipc://* is only valid for bind")
        size = len(os.fsencode(address))
        if size > IPC_PATH_MAX:
            raise Invalid(
                key,
                f"ipc path '{address}' is {size} bytes, but unix socket paths are limited to "
                f"{IPC_PATH_MAX} bytes; use a shorter path",
            )


# --------------------------------------------------------------------------
# Binds across the topology


class _Bind(NamedTuple):
    """One expanded bind endpoint and where it comes from."""

    endpoint: str
    key: str
    replica: int | None
    socket_type: int
    sockopts: tuple[tuple[int, int | bytes], ...]

    def describe(self) -> str:
        return self.key if self.replica is None else f"{self.key} (replica {self.replica})"


def _binds(devices: Sequence[DeviceConfig]) -> list[_Bind]:
    result: list[_Bind] = []
    for device in devices:
        prefix = join_key("devices", device.name)
        for index in range(device.replicas):
            for role, spec in device.sockets():
                for j, template in enumerate(spec.bind):
                    result.append(
                        _Bind(
                            template.replace(REPLICA, str(index)),
                            f"{prefix}.{role}.bind[{j}]",
                            index if device.replicas > 1 else None,
                            spec.type,
                            spec.sockopts,
                        )
                    )
    return result


def check_bind_conflicts(devices: Sequence[DeviceConfig]) -> None:
    """No two binds on one address. A tcp wildcard host (``*``, ``0.0.0.0``, ``[::]``)
    takes its port on every host. Each bind is looked up in dicts, so the check is
    linear; the error names the earliest bind it collides with."""
    # Each value is (position, bind) of the first bind seen: the error names the earliest.
    exact: dict[tuple[str, str, str], tuple[int, _Bind]] = {}  # (scheme, host/path, port)
    wildcard_by_port: dict[str, tuple[int, _Bind]] = {}  # tcp port -> first wildcard-host bind
    first_by_port: dict[str, tuple[int, _Bind]] = {}  # tcp port -> first bind on any host
    for position, bind in enumerate(_binds(devices)):
        ident = _bind_identity(bind.endpoint)
        if ident is None:
            continue
        family, host, port = ident
        candidates: list[tuple[int, _Bind]] = []
        if family == "tcp" and host in _WILDCARD_HOSTS:
            if port in first_by_port:
                candidates.append(first_by_port[port])
        else:
            if family == "tcp" and port in wildcard_by_port:
                candidates.append(wildcard_by_port[port])
            if ident in exact:
                candidates.append(exact[ident])
        if candidates:
            other = min(candidates, key=lambda item: item[0])[1]
            raise Invalid(bind.key, f"address {bind.endpoint} is already bound by {other.describe()}")
        exact.setdefault(ident, (position, bind))
        if family == "tcp":
            first_by_port.setdefault(port, (position, bind))
            if host in _WILDCARD_HOSTS:
                wildcard_by_port.setdefault(port, (position, bind))


def _bind_identity(endpoint: str) -> tuple[str, str, str] | None:
    """What a bind occupies: (family, host, port); None if it never conflicts."""
    scheme, _, address = endpoint.partition("://")
    if scheme == "tcp":
        host, _, port = address.rpartition(":")
        if port == "*":
            return None
        return ("tcp", host.lower(), str(int(port)))
    if scheme == "ipc":
        if address == "*":
            return None
        return ("ipc", address, "")
    if scheme in ("ws", "wss", "udp"):
        return (scheme, address.lower(), "")
    return None  # pgm/epgm: multicast groups may be shared


def check_bind_hosts(devices: Sequence[DeviceConfig], trial: LibzmqTrial) -> None:
    """Every tcp bind host must be bindable here: an address of this machine, ``*``,
    an interface name or ``localhost``; libzmq resolves no DNS names for a bind."""
    for bind in _binds(devices):
        scheme, _, address = bind.endpoint.partition("://")
        if scheme != "tcp":
            continue
        host = address.rpartition(":")[0]
        why = trial.bind(bind.socket_type, bind.sockopts, host)
        if why is not None:
            hint = "; an IPv6 address needs sockopts IPV6 = 1" if host.startswith("[") else ""
            raise Invalid(
                bind.key,
                f"cannot bind {bind.endpoint} on this machine: {why} (a bind host must be an address "
                f"of this machine, *, an interface name or localhost){hint}",
            )


# --------------------------------------------------------------------------
# Control socket paths


def check_socket_paths(devices: Sequence[DeviceConfig], run_dir: pathlib.Path, run_dir_key: str) -> None:
    """The supervisor's ``<run_dir>/supervisor.sock`` and each instance's
    ``<run_dir>/ctl/<name>.sock`` must fit the unix socket path limit."""
    control_path = runlayout.supervisor_socket(run_dir)
    size = len(os.fsencode(control_path))
    if size > IPC_PATH_MAX:
        raise Invalid(
            run_dir_key,
            f"run directory is too long: the control socket path '{control_path}' is "
            f"{size} bytes, but unix socket paths are limited to {IPC_PATH_MAX} bytes",
        )
    ctl_dir_size = len(os.fsencode(runlayout.control_socket(run_dir, "")))
    for device in devices:
        # The last replica has the longest name.
        name = device.instance_name(device.replicas - 1)
        size = ctl_dir_size + len(os.fsencode(name))
        if size > IPC_PATH_MAX:
            raise Invalid(
                join_key("devices", device.name),
                f"the control socket path '{runlayout.control_socket(run_dir, name)}' is {size} bytes, but unix socket "
                f"paths are limited to {IPC_PATH_MAX} bytes; use a shorter device name or run_dir",
            )
