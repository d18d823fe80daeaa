"""The topology as a graph, for ``procdevices web``: devices (replicas grouped), their sockets
with resolved endpoints, the arrows between devices and the anonymous peers outside the
topology. Pure: a function of one ``status`` reply and the topology's socket specs.

Where each fact comes from:

- ``status``: the instances, their state, pid, uptime, restarts, last exit, traffic rates and
  the endpoints each socket really bound (``tcp://...:*`` resolved to its port, relative ipc
  paths made absolute).
- the topology file the supervisor reports as its ``source``: each socket's type and its
  ``connect`` endpoints, which ``status`` does not carry.

An **edge** is drawn wherever a socket's connect endpoint reaches a socket another device
bound: the same endpoint literally, or a tcp bind on a wildcard host (``0.0.0.0``, ``[::]``)
and a connect to the same port on a loopback address (``connect_targets``). The arrow points
from the connecting socket to the bound one. A bound endpoint nobody in the topology connects
to gets one anonymous **peer** per socket ("clients"), and a connect endpoint nobody in the
topology binds one per endpoint ("service").

Multi-host topologies (docs/multihost.md):

- ``reference_targets``: a connect endpoint written as ``@DEVICE.ROLE`` (a reference to another
  device's socket) reaches that socket. The loader resolves references to endpoints (from
  another host, ``tcp://ADDRESS:PORT``, which ``reaches`` cannot judge), so
  ``sockets_from_topology`` writes a reference between two drawn devices back as the file
  wrote it (``Topology.references``); a reference to a device not drawn keeps its endpoints.
- ``host_of``: the host a device runs on (``DeviceConfig.host``, carried in
  ``SocketTopology.host``); ``regions`` has one entry per host, empty without ``[hosts]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procdevices.supervisor.config.model import DeviceConfig, Reference

# Socket roles in drawing order; "in" is drawn on a device's left, the others on its right.
ROLES = ("in", "out", "mon", "ctrl")
# Which traffic counters belong to a role (the proxy counts its frontend and backend only).
SIDE_OF_ROLE = {"in": "front", "out": "back"}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]", "*"})


@dataclass(frozen=True)
class SocketTopology:
    """What the topology file says about one socket of one device instance."""

    type: str
    bind: tuple[str, ...]
    connect: tuple[str, ...]
    host: str | None = None  # the device's host ([hosts]); None: a one-host topology


# instance name -> role -> its socket; what ``sockets_from_topology`` reads from the file.
TopologySockets = Mapping[str, Mapping[str, SocketTopology]]


@dataclass(frozen=True)
class SocketKey:
    device: str  # the [devices.NAME] (a group of replicas)
    role: str


def rate(traffic: Mapping[str, Any] | None, key: str) -> float:
    rates = (traffic or {}).get("rates") or {}
    value = rates.get(key, 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


def device_rates(traffic: Mapping[str, Any] | None) -> dict[str, float]:
    """Message frames per second received (``in``) and sent (``out``) on both sockets: the
    IN/s and OUT/s of ``top``."""
    return {
        direction: sum(rate(traffic, f"{side}_msgs_{direction}") for side in ("front", "back"))
        for direction in ("in", "out")
    }


def socket_rates(traffic: Mapping[str, Any] | None, role: str) -> dict[str, float] | None:
    """Frames per second received on and sent through one socket; None for a socket the
    proxy does not count (mon, ctrl)."""
    side = SIDE_OF_ROLE.get(role)
    if side is None:
        return None
    return {direction: rate(traffic, f"{side}_msgs_{direction}") for direction in ("in", "out")}


def _host_port(endpoint: str) -> tuple[str, str] | None:
    scheme, sep, address = endpoint.partition("://")
    if scheme != "tcp" or not sep:
        return None
    host, colon, port = address.rpartition(":")
    return (host, port) if colon else None


def reaches(connect: str, bound: str) -> bool:
    """Whether a socket connecting to ``connect`` reaches a socket bound on ``bound``, judged
    from the endpoints alone (one host): the same text, or a tcp wildcard bind and a
    loopback connect to the same port."""
    if connect == bound:
        return True
    c, b = _host_port(connect), _host_port(bound)
    if c is None or b is None or c[1] != b[1]:
        return False
    return b[0] in WILDCARD_HOSTS and c[0] in LOOPBACK_HOSTS


def reference_targets(endpoint: str, sockets: Iterable[SocketKey]) -> list[SocketKey]:
    """The seam for ``@DEVICE.ROLE`` references: the sockets such an endpoint names (every
    replica's, as the group is drawn once). An ordinary endpoint names none."""
    if not endpoint.startswith("@"):
        return []
    device, dot, role = endpoint[1:].rpartition(".")
    if not dot:
        return []
    return [key for key in sockets if key.device == device and key.role == role]


def connect_targets(endpoint: str, bound: Mapping[SocketKey, list[str]]) -> list[SocketKey]:
    """The sockets of the topology that a connect to ``endpoint`` reaches."""
    referenced = reference_targets(endpoint, bound)
    if referenced:
        return referenced
    return [key for key, endpoints in bound.items() if any(reaches(endpoint, b) for b in endpoints)]


def host_of(instance: Mapping[str, Any], files: Mapping[str, SocketTopology] | None = None) -> str | None:
    """Which host an instance runs on (None: this one): as ``status`` says, else as the
    topology's sockets of that instance (``files``) say."""
    host = instance.get("host")
    if isinstance(host, str):
        return host
    return next((spec.host for spec in (files or {}).values() if spec.host is not None), None)


def _instance_sockets(instance: Mapping[str, Any], files: Mapping[str, SocketTopology]) -> list[dict[str, Any]]:
    """One instance's sockets: its type and connects from the file, its bound endpoints from
    ``status`` (resolved) when it reported them, else from the file."""
    bound: Mapping[str, list[str]] = instance.get("endpoints") or {}
    roles = [role for role in ROLES if role in files or role in bound]
    sockets = []
    for role in roles:
        spec = files.get(role)
        sockets.append(
            {
                "role": role,
                "type": spec.type if spec else None,
                "bind": list(bound.get(role) or (spec.bind if spec else ())),
                "connect": list(spec.connect) if spec else [],
                "rates": socket_rates(instance.get("traffic"), role),
            }
        )
    return sockets


def _merge_sockets(per_instance: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A group's sockets: each role once, endpoints of every replica, rates summed."""
    merged: dict[str, dict[str, Any]] = {}
    for sockets in per_instance:
        for socket in sockets:
            into = merged.setdefault(
                socket["role"],
                {"role": socket["role"], "type": socket["type"], "bind": [], "connect": [], "rates": None},
            )
            into["type"] = into["type"] or socket["type"]
            for field in ("bind", "connect"):
                into[field] += [e for e in socket[field] if e not in into[field]]
            if socket["rates"] is not None:
                rates = into["rates"] or {"in": 0.0, "out": 0.0}
                into["rates"] = {d: rates[d] + socket["rates"][d] for d in ("in", "out")}
    return [merged[role] for role in ROLES if role in merged]


def build(status: Mapping[str, Any], files: TopologySockets) -> dict[str, Any]:
    """The graph of ``/api/state`` (docs/web.md): ``devices``, ``edges``, ``peers``,
    ``regions``."""
    groups: dict[str, dict[str, Any]] = {}
    for instance in status.get("devices") or []:
        own = files.get(instance["name"], {})
        group = groups.setdefault(
            instance["device"],
            {
                "device": instance["device"],
                "kind": instance.get("kind"),
                "host": host_of(instance, own),
                "instances": [],
            },
        )
        sockets = _instance_sockets(instance, own)
        group["instances"].append({**instance, "sockets": sockets, "rates": device_rates(instance.get("traffic"))})
    for group in groups.values():
        group["sockets"] = _merge_sockets([i["sockets"] for i in group["instances"]])
        group["rates"] = {d: sum(i["rates"][d] for i in group["instances"]) for d in ("in", "out")}

    bound: dict[SocketKey, list[str]] = {}
    for group in groups.values():
        for socket in group["sockets"]:
            bound[SocketKey(group["device"], socket["role"])] = socket["bind"]

    edges: dict[tuple[SocketKey, SocketKey], dict[str, Any]] = {}
    peers: list[dict[str, Any]] = []
    reached: set[SocketKey] = set()
    for group in groups.values():
        for socket in group["sockets"]:
            here = SocketKey(group["device"], socket["role"])
            for endpoint in socket["connect"]:
                targets = [t for t in connect_targets(endpoint, bound) if t.device != here.device]
                if not targets:
                    peers.append(_peer(here, "service", endpoint))
                for target in targets:
                    reached.add(target)
                    edge = edges.setdefault((here, target), _edge(here, target))
                    if endpoint not in edge["endpoints"]:
                        edge["endpoints"].append(endpoint)
    for key, endpoints in bound.items():
        if endpoints and key not in reached:
            peers.append(_peer(key, "clients", *endpoints))
    # `web --all` (merge_hosts): every host of the file is a region, drawn even with no
    # device seen yet, greyed while it does not answer.
    reach: Mapping[str, Mapping[str, Any]] = status.get("hosts") or {}
    regions = sorted({g["host"] for g in groups.values() if g["host"] is not None} | set(reach))
    return {
        "devices": sorted(groups.values(), key=lambda g: str(g["device"])),
        "edges": list(edges.values()),
        "peers": peers,
        "regions": [
            {
                "host": host,
                "reachable": bool(reach.get(host, {}).get("reachable", True)),
                "error": reach.get(host, {}).get("error"),
            }
            for host in regions
        ],
    }


def merge_hosts(
    replies: Mapping[str, Mapping[str, Any]], last_seen: Mapping[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """One ``status`` of every host for ``web --all``, from each host's ``status --all --json``
    entry (``{"reachable", "error", "status"}``, in the file's host order): every instance
    carries its ``host``; a host that did not answer keeps the devices it last showed
    (``last_seen``, each marked ``"reachable": false``); ``hosts`` says which hosts answered."""
    devices: list[dict[str, Any]] = []
    hosts: dict[str, dict[str, Any]] = {}
    for host, reply in replies.items():
        status = reply.get("status")
        answered = bool(reply.get("reachable")) and status is not None
        hosts[host] = {"reachable": answered, "error": reply.get("error")}
        seen = status["devices"] if answered and status is not None else last_seen.get(host, [])
        devices += [{**d, "host": host, "reachable": answered} for d in seen]
    return {"devices": devices, "hosts": hosts}


def _edge(source: SocketKey, target: SocketKey) -> dict[str, Any]:
    return {
        "id": f"{source.device}.{source.role}->{target.device}.{target.role}",
        "from": {"device": source.device, "role": source.role},
        "to": {"device": target.device, "role": target.role},
        "endpoints": [],
    }


def _peer(key: SocketKey, kind: str, *endpoints: str) -> dict[str, Any]:
    """``clients``: anonymous peers that connect to a bound socket; ``service``: whatever
    outside the topology listens where a socket connects."""
    suffix = f":{endpoints[0]}" if kind == "service" else ""
    return {
        "id": f"{kind}:{key.device}.{key.role}{suffix}",
        "kind": kind,
        "device": key.device,
        "role": key.role,
        "endpoints": list(endpoints),
    }


def sockets_from_topology(
    devices: Iterable[DeviceConfig], instance_names: Iterable[str], references: Iterable[Reference] = ()
) -> dict[str, dict[str, SocketTopology]]:
    """The socket specs of each running instance (``DeviceConfig`` from the loader), replicas
    expanded, including instances ``scale`` added beyond the file's ``replicas``; a reference
    (``Topology.references``) between two devices with instances here as ``@DEVICE.ROLE``."""
    from procdevices.supervisor.config.hosts import unresolve_references

    instance_names = list(instance_names)
    drawn = {name.rpartition(".")[0] if name.rpartition(".")[2].isdigit() else name for name in instance_names}
    shown, _ = unresolve_references([d for d in devices if d.name in drawn], tuple(references))
    by_name = {device.name: device for device in shown}
    found: dict[str, dict[str, SocketTopology]] = {}
    for name in instance_names:
        device_name, dot, index = name.rpartition(".")
        if not dot or not index.isdigit():
            device_name, index = name, "0"
        device = by_name.get(device_name)
        if device is None:
            continue
        if int(index) >= device.replicas:
            device = device._replace(replicas=int(index) + 1)
        instance = device.replica(int(index))
        found[name] = {
            role: SocketTopology(spec.type_name, tuple(spec.bind), tuple(spec.connect), instance.host)
            for role, spec in instance.sockets()
        }
    return found
