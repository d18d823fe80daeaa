"""Several hosts in one topology: ``[hosts.NAME]``, ``[cluster]``, a device's ``host`` and the
``"@DEVICE.ROLE"`` references in connect lists (docs/multihost.md).

The rules, all checked before anything starts:

- with ``[hosts]`` every device names a known host; without it nothing here changes a file
  (references still work, on the one machine: a wildcard bind is reached at 127.0.0.1);
- a reference stands for every endpoint the target socket binds, all replicas, a wildcard
  host (``*``, ``0.0.0.0``, ``[::]``) replaced by the owning host's ``address``; from another
  host it may not reach an ipc/inproc endpoint, a loopback bind or an interface-name bind;
  a random port (``:*``) is never behind a reference (nobody could know it in advance);
- binds conflict only with binds of the same host;
- a ``control`` endpoint needs ``[cluster] keys`` (an open control port would hand the whole
  host to anyone who reaches it).

A connecting socket that resolves a reference gets ZMTP heartbeats unless its sockopts set
them: a peer host that restarts or vanishes is then noticed within seconds instead of a TCP
connection hanging (libzmq has no keepalive of its own by default).
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import zmq

from procdevices.supervisor.config import endpoints
from procdevices.supervisor.config.errors import Invalid, as_table, check_keys, expected, join_key, show
from procdevices.supervisor.config.model import (
    REPLICA,
    ClusterConfig,
    DeviceConfig,
    HostConfig,
    Reference,
    SocketSpec,
    Topology,
)

__all__ = [
    "DEFAULT_HEARTBEAT",
    "HostChoiceError",
    "bound_endpoints",
    "check_bind_conflicts",
    "check_reference",
    "control_connect",
    "device_host",
    "host_of",
    "is_reference",
    "local_addresses",
    "local_devices",
    "parse_cluster",
    "resolve_references",
    "select_host",
    "take_curve",
    "this_host",
    "unresolve_references",
]

HOST_KEYS = ("address", "control")
CLUSTER_KEYS = ("keys",)
ROLES = ("in", "out", "mon", "ctrl")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_REFERENCE_RE = re.compile(r"@([A-Za-z][A-Za-z0-9_-]{0,62})\.([a-z]+)")
_WILDCARDS = frozenset({"*", "0.0.0.0", "[::]"})

#: ZMTP heartbeats of a socket that connects through a reference, in milliseconds: a PING
#: every second, the connection dropped (and libzmq's reconnect begun) after 5 s of silence.
DEFAULT_HEARTBEAT: tuple[tuple[int, int], ...] = (
    (int(zmq.SocketOption.HEARTBEAT_IVL), 1000),
    (int(zmq.SocketOption.HEARTBEAT_TIMEOUT), 5000),
)


# --------------------------------------------------------------------------
# [hosts] and [cluster]


def parse_cluster(data: Mapping[str, Any], base_dir: pathlib.Path) -> tuple[tuple[HostConfig, ...], ClusterConfig]:
    """The ``[hosts]`` and ``[cluster]`` tables of a decoded file (both optional)."""
    cluster = ClusterConfig()
    if "cluster" in data:
        table = as_table(data["cluster"], "cluster")
        check_keys(table, CLUSTER_KEYS, "cluster")
        if "keys" in table:
            value = table["keys"]
            if not isinstance(value, str):
                raise expected("cluster.keys", "a string (a directory)", value)
            if not value or not value.isprintable():
                raise Invalid("cluster.keys", f"'{show(value)}' is not a directory path")
            cluster = ClusterConfig(keys=pathlib.Path(os.path.abspath(base_dir / value)))
    hosts: list[HostConfig] = []
    if "hosts" in data:
        table = as_table(data["hosts"], "hosts")
        if not table:
            raise Invalid("hosts", "no hosts defined (leave [hosts] out for a one-host topology)")
        for name, value in table.items():
            hosts.append(_host(str(name), value, cluster))
    return tuple(hosts), cluster


def _host(name: str, value: object, cluster: ClusterConfig) -> HostConfig:
    prefix = join_key("hosts", name)
    if not _NAME_RE.fullmatch(name):
        raise Invalid(
            prefix,
            f"invalid host name '{show(name)}': must start with a letter and contain only "
            "letters, digits, '_' and '-' (at most 63 characters)",
        )
    table = as_table(value, prefix)
    check_keys(table, HOST_KEYS, prefix)
    if "address" not in table:
        raise Invalid(f"{prefix}.address", "missing required key 'address' (how other hosts reach this one)")
    address = table["address"]
    if not isinstance(address, str):
        raise expected(f"{prefix}.address", "a string (an IP address or a DNS name)", address)
    address = address.strip("[]") if address.startswith("[") else address
    if not address or any(ch.isspace() or not ch.isprintable() or ch in "/*" for ch in address):
        raise Invalid(f"{prefix}.address", f"invalid address '{show(address)}': expected an IP address or a DNS name")
    if ":" in address and not _ip_literal(address):
        raise Invalid(f"{prefix}.address", f"invalid address '{show(address)}': no port here, only the host")
    if address in ("0.0.0.0", "::"):
        raise Invalid(f"{prefix}.address", f"'{address}' is a wildcard, not an address other hosts can reach")
    control: str | None = None
    if "control" in table:
        key = f"{prefix}.control"
        control = _control_endpoint(table["control"], key)
        if cluster.keys is None:
            raise Invalid(
                key,
                "a control endpoint needs [cluster] keys (a directory written by `procdevices keys generate`): "
                "without CURVE anyone who reaches the port could steer this host",
            )
    return HostConfig(name=name, address=address, control=control)


def _control_endpoint(value: object, key: str) -> str:
    checked = endpoints.check_endpoint(value, key, bind=True, base_dir="/")
    scheme, _, address = checked.partition("://")
    if scheme != "tcp":
        raise Invalid(key, f"control endpoint '{show(checked)}' must be tcp://HOST:PORT (other hosts connect to it)")
    if address.rpartition(":")[2] == "*":
        raise Invalid(key, f"control endpoint '{checked}' needs a fixed port: other hosts must know it")
    return checked


def control_connect(host: HostConfig) -> str | None:
    """Where other hosts connect to reach ``host``'s control endpoint: its ``control``, with a
    wildcard bind host (``tcp://*:7100``) replaced by the host's address."""
    if host.control is None:
        return None
    bind_host, _, port = host.control[len("tcp://") :].rpartition(":")
    if bind_host in _WILDCARDS:
        return f"tcp://{_host_text(host.address)}:{port}"
    return host.control


def device_host(value: object, key: str, hosts: Sequence[HostConfig]) -> str:
    """A device's ``host`` (from the device or ``[supervisor.defaults]``): a known host."""
    if not isinstance(value, str):
        raise expected(key, "a string (a host name)", value)
    names = [h.name for h in hosts]
    if not names:
        raise Invalid(key, f"unknown host '{show(value)}': the file has no [hosts] table")
    if value not in names:
        raise Invalid(key, f"unknown host '{show(value)}': expected one of {', '.join(names)}")
    return value


# --------------------------------------------------------------------------
# CURVE on device sockets: `curve = "server"` on a bound socket


_CURVE_SERVER = int(zmq.SocketOption.CURVE_SERVER)
_CURVE_PUBLICKEY = int(zmq.SocketOption.CURVE_PUBLICKEY)
_CURVE_SECRETKEY = int(zmq.SocketOption.CURVE_SECRETKEY)
_CURVE_SERVERKEY = int(zmq.SocketOption.CURVE_SERVERKEY)


def take_curve(
    value: object, prefix: str, cluster: ClusterConfig
) -> tuple[object, tuple[tuple[int, int | bytes], ...]]:
    """A socket table without its ``curve`` key, and the socket options that key stands for:
    the cluster's server key pair (``curve = "server"``; only value). The keys are read here,
    so `check` proves they exist."""
    if not isinstance(value, Mapping) or "curve" not in value:
        return value, ()
    key = f"{prefix}.curve"
    if value["curve"] != "server":
        raise Invalid(key, f'expected "server", got {show(value["curve"])}')
    if cluster.keys is None:
        raise Invalid(key, "curve needs [cluster] keys (a directory written by `procdevices keys generate`)")
    if not value.get("bind"):
        raise Invalid(key, 'curve = "server" is for a socket that binds')
    public, secret = _pair(cluster.keys, "server", key)
    rest = {k: v for k, v in value.items() if k != "curve"}
    return rest, ((_CURVE_SERVER, 1), (_CURVE_PUBLICKEY, public), (_CURVE_SECRETKEY, secret))


def _pair(directory: pathlib.Path, name: str, key: str) -> tuple[bytes, bytes]:
    import zmq.auth

    path = directory / f"{name}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise Invalid(key, f"cannot read the CURVE key {path}: {e}") from None
    if secret is None:
        raise Invalid(key, f"{path} holds no secret key")
    return public, secret


def _is_curve_server(spec: SocketSpec) -> bool:
    return (_CURVE_SERVER, 1) in spec.sockopts


# --------------------------------------------------------------------------
# References


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith("@")


def check_reference(value: str, key: str) -> str:
    """The syntax of one reference; its target is checked once every device is known."""
    match = _REFERENCE_RE.fullmatch(value)
    if match is None or match.group(2) not in ROLES:
        raise Invalid(
            key, f"invalid reference '{show(value)}': expected '@DEVICE.ROLE' with ROLE one of {', '.join(ROLES)}"
        )
    return value


def _host_text(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _target_endpoints(
    target: DeviceConfig, role: str, owner: HostConfig | None, from_host: str | None, key: str, ref: str
) -> tuple[str, ...]:
    spec = dict(target.sockets()).get(role)
    if spec is None:
        raise Invalid(key, f"'{ref}': device '{target.name}' has no {role} socket")
    if not spec.bind:
        raise Invalid(key, f"'{ref}': the {role} socket of '{target.name}' binds nothing, it only connects")
    remote = owner is not None and from_host != owner.name
    where = f"host '{owner.name}'" if owner is not None else "this host"
    result: list[str] = []
    for index in range(target.replicas):
        for template in spec.bind:
            endpoint = template.replace(REPLICA, str(index))
            scheme, _, address = endpoint.partition("://")
            if scheme != "tcp":
                if remote:
                    raise Invalid(
                        key,
                        f"'{ref}' resolves to {endpoint} on {where}: an {scheme} endpoint cannot be "
                        "reached from another host; bind a tcp endpoint",
                    )
                result.append(endpoint)
                continue
            host, _, port = address.rpartition(":")
            if port == "*":
                raise Invalid(
                    key,
                    f"'{ref}' resolves to {endpoint}: a random port (:*) cannot be behind a reference; "
                    "bind a fixed port",
                )
            if host in _WILDCARDS:
                if owner is not None:
                    host = _host_text(owner.address)
                else:
                    host = "[::1]" if host == "[::]" else "127.0.0.1"
            elif _loopback(host):
                if remote:
                    raise Invalid(
                        key,
                        f"'{ref}' resolves to {endpoint}, a loopback address of {where}: another host "
                        "cannot reach it; bind * or the host's address",
                    )
            elif not _ip_literal(host):
                raise Invalid(
                    key,
                    f"'{ref}' resolves to {endpoint}, which binds the interface '{show(host)}': "
                    "its address is not known here; bind * or an address",
                )
            result.append(f"tcp://{host}:{port}")
    return tuple(result)


def resolve_references(
    devices: Sequence[DeviceConfig], hosts: Sequence[HostConfig], cluster: ClusterConfig
) -> tuple[tuple[DeviceConfig, ...], tuple[Reference, ...]]:
    """Every ``"@DEVICE.ROLE"`` in a connect list replaced, in place, by the endpoints it stands
    for; the sockets that had one get the default heartbeats (unless they set their own)."""
    by_name = {d.name: d for d in devices}
    by_host = {h.name: h for h in hosts}
    references: list[Reference] = []
    resolved: list[DeviceConfig] = []
    for device in devices:
        changes: dict[str, Any] = {}
        for role, spec in device.sockets():
            if not any(is_reference(c) for c in spec.connect):
                continue
            connect: list[str] = []
            curve: set[bool] = set()  # whether each referenced socket is a CURVE server
            for index, item in enumerate(spec.connect):
                if not is_reference(item):
                    connect.append(item)
                    continue
                key = f"{join_key('devices', device.name)}.{role}.connect[{index}]"
                target_name, _, target_role = item[1:].rpartition(".")
                target = by_name.get(target_name)
                if target is None:
                    raise Invalid(key, f"'{item}' refers to an unknown device '{target_name}'")
                owner = by_host.get(target.host) if target.host is not None else None
                found = _target_endpoints(target, target_role, owner, device.host, key, item)
                curve.add(_is_curve_server(dict(target.sockets())[target_role]))
                if len(curve) > 1:
                    raise Invalid(
                        key,
                        f"'{item}': one socket cannot connect to a CURVE server and to a plain socket "
                        "(a socket has one security mechanism)",
                    )
                references.append(Reference(device.name, role, target_name, target_role, found))
                connect.extend(e for e in found if e not in connect)
            sockopts = _with_heartbeats(spec.sockopts)
            if True in curve and cluster.keys is not None:
                # The client side of `curve = "server"`: the server's public key and the
                # cluster's client pair, unless the socket sets its own.
                where = f"{join_key('devices', device.name)}.{role}"
                public, secret = _pair(cluster.keys, "client", where)
                server_public, _ = _pair(cluster.keys, "server", where)
                present = {option for option, _ in sockopts}
                sockopts += tuple(
                    (o, v)
                    for o, v in (
                        (_CURVE_SERVERKEY, server_public),
                        (_CURVE_PUBLICKEY, public),
                        (_CURVE_SECRETKEY, secret),
                    )
                    if o not in present
                )
            changes[_field(role)] = spec._replace(connect=tuple(connect), sockopts=sockopts)
        resolved.append(device._replace(**changes) if changes else device)
    return tuple(resolved), tuple(references)


def unresolve_references(
    devices: Sequence[DeviceConfig], references: Sequence[Reference]
) -> tuple[tuple[DeviceConfig, ...], tuple[Reference, ...]]:
    """The devices with each reference between two of them written back as ``"@DEVICE.ROLE"``
    (where its first endpoint stood), so :func:`resolve_references` can resolve it again for a
    changed target (``scale``); and the references left as they are (a device or target of
    another host, not in ``devices``)."""
    names = {d.name for d in devices}
    redo = [r for r in references if r.device in names and r.target in names]
    kept = tuple(r for r in references if not (r.device in names and r.target in names))
    if not redo:
        return tuple(devices), kept
    result: list[DeviceConfig] = []
    for device in devices:
        changes: dict[str, Any] = {}
        for role, spec in device.sockets():
            mine = [r for r in redo if r.device == device.name and r.role == role]
            if not mine:
                continue
            connect = list(spec.connect)
            for ref in mine:
                text = f"@{ref.target}.{ref.target_role}"
                where = next((i for i, e in enumerate(connect) if e in ref.endpoints), len(connect))
                connect = (
                    [e for e in connect[:where] if e not in ref.endpoints]
                    + [text]
                    + [e for e in connect[where:] if e not in ref.endpoints]
                )
            changes[_field(role)] = spec._replace(connect=tuple(connect))
        result.append(device._replace(**changes) if changes else device)
    return tuple(result), kept


def _field(role: str) -> str:
    return "in_" if role == "in" else role


def _with_heartbeats(sockopts: tuple[tuple[int, int | bytes], ...]) -> tuple[tuple[int, int | bytes], ...]:
    present = {option for option, _ in sockopts}
    return sockopts + tuple((option, value) for option, value in DEFAULT_HEARTBEAT if option not in present)


def bound_endpoints(device: DeviceConfig, owner: HostConfig | None) -> dict[str, list[str]]:
    """What clients connect to: each role's binds over every replica, a wildcard host replaced
    by the owner's address (127.0.0.1 without hosts); ``:*`` ports stay as written."""
    result: dict[str, list[str]] = {}
    for role, spec in device.sockets():
        found: list[str] = []
        for index in range(device.replicas):
            for template in spec.bind:
                endpoint = template.replace(REPLICA, str(index))
                scheme, _, address = endpoint.partition("://")
                if scheme == "tcp":
                    host, _, port = address.rpartition(":")
                    if host in _WILDCARDS:
                        host = (
                            _host_text(owner.address)
                            if owner is not None
                            else ("[::1]" if host == "[::]" else "127.0.0.1")
                        )
                    endpoint = f"tcp://{host}:{port}"
                found.append(endpoint)
        if found:
            result[role] = found
    return result


def check_bind_conflicts(devices: Sequence[DeviceConfig]) -> None:
    """Binds conflict only on one host: the rule of ``endpoints`` applied host by host."""
    groups: dict[str | None, list[DeviceConfig]] = {}
    for device in devices:
        groups.setdefault(device.host, []).append(device)
    for group in groups.values():
        endpoints.check_bind_conflicts(group)


# --------------------------------------------------------------------------
# Which host is this machine


def local_addresses() -> frozenset[str]:
    """Every address of this machine's interfaces (of the network namespace we run in)."""
    import psutil

    found: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                found.add(entry.address.split("%", 1)[0])
    return frozenset(found)


def _is_local(address: str, mine: frozenset[str]) -> bool:
    if address in mine:
        return True
    if _ip_literal(address):
        return False
    try:
        # A DNS name: a host is this machine when one of its addresses is ours.
        infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return any(str(info[4][0]) in mine for info in infos)


def local_devices(devices: Sequence[DeviceConfig], hosts: Sequence[HostConfig]) -> tuple[DeviceConfig, ...]:
    """The devices whose binds can be tried here: all of them without hosts, else those of the
    hosts whose address is this machine's (another host's addresses cannot be bound here)."""
    if not hosts:
        return tuple(devices)
    mine = local_addresses()
    here = {h.name for h in hosts if _is_local(h.address, mine)}
    return tuple(d for d in devices if d.host in here)


class HostChoiceError(Exception):
    """No host, or several, could be chosen for this machine; the message names the choices."""


def this_host(topology: Topology, explicit: str | None) -> HostConfig | None:
    """The host this process acts as: ``explicit`` (``--host`` / ``$PROCDEVICES_HOST``) if
    given, else the one host whose address is this machine's; None for a file without hosts."""
    if not topology.hosts:
        if explicit:
            raise HostChoiceError(f"--host {explicit}: {topology.source} defines no [hosts]")
        return None
    names = [h.name for h in topology.hosts]
    if explicit:
        for host in topology.hosts:
            if host.name == explicit:
                return host
        raise HostChoiceError(f"unknown host '{show(explicit)}': {topology.source} defines {', '.join(names)}")
    mine = local_addresses()
    matches = [h for h in topology.hosts if _is_local(h.address, mine)]
    if len(matches) == 1:
        return matches[0]
    why = "none of them has" if not matches else f"{', '.join(h.name for h in matches)} all have"
    raise HostChoiceError(
        f"cannot tell which host this machine is: {why} an address of this machine; "
        f"choose one with --host or $PROCDEVICES_HOST ({', '.join(names)})"
    )


def select_host(topology: Topology, host: HostConfig | None) -> Topology:
    """The part of ``topology`` one host runs: its devices (None: the whole topology)."""
    if host is None:
        return topology
    return topology._replace(devices=tuple(d for d in topology.devices if d.host == host.name))


def host_of(topology: Topology, device: str) -> HostConfig | None:
    """The host a device (``NAME`` or a replica ``NAME.N``) runs on; None without hosts."""
    name = device.split(".", 1)[0]
    for d in topology.devices:
        if d.name == name and d.host is not None:
            return next(h for h in topology.hosts if h.name == d.host)
    return None
