"""A reload or a scale, from the request to the summary: re-read and check the topology,
apply what each ``[supervisor]`` key's ``on_reload`` says, apply the device difference
(reload.py's plan), log one line. The Supervisor (core.py) delegates its ``reload`` and
``scale`` verbs here; this module only uses what ``Host`` names of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from procdevices.control.protocol import ErrorCode, ProtocolError
from procdevices.logs import Log
from procdevices.supervisor import reload as _plan
from procdevices.supervisor.config import ConfigError, Topology
from procdevices.supervisor.launcher import Launcher
from procdevices.supervisor.roster import Roster

Load = Callable[[str | None], Topology]


class Host(Protocol):
    """What a live change needs of the supervisor."""

    roster: Roster  # the instances, and the changes to that set (reload.py's plan applies them)
    topology: Topology  # the file's, as last loaded
    running_topology: Topology  # the file's, with any `scale` applied
    shutting_down: bool
    launcher: Launcher
    log: Log


def reload(host: Host, load: Load, make_child: _plan.ChildFactory, path: str | None) -> dict[str, Any]:
    if host.shutting_down:
        raise ProtocolError(ErrorCode.REFUSED, "the supervisor is shutting down")
    try:
        topology = load(path)
    except ConfigError as e:
        host.log(f"reload refused, nothing changed: invalid configuration: {e}", level=logging.ERROR)
        raise ProtocolError(ErrorCode.INVALID_CONFIG, f"invalid configuration: {e}") from None
    try:
        _plan.fits_descriptors(topology)
    except ProtocolError as e:
        host.log(f"reload refused, nothing changed: {e.message}", level=logging.ERROR)
        raise
    old, new = host.topology.supervisor, topology.supervisor
    changes = _plan.supervisor_changes(old, new)  # by each [supervisor] row's on_reload
    if changes.refused:
        message = "; ".join(
            f"{k} cannot change while running ({getattr(old, k)} -> {getattr(new, k)})" for k in changes.refused
        )
        host.log(f"reload refused, nothing changed: {message}", level=logging.ERROR)
        raise ProtocolError(ErrorCode.INVALID_CONFIG, message)
    summary = apply(host, make_child, topology)
    if changes.next_up:
        keys = ", ".join(changes.next_up)
        host.log(f"reload: [supervisor] {keys} changes take effect at the next `up`", level=logging.WARNING)
        summary["not_applied"] = changes.next_up
    if "pool_size" in changes.live:  # the one live [supervisor] key
        host.launcher.resize(new.pool_size)
        summary["pool_size"] = [str(new.pool_size)]
    host.topology = topology
    host.log(f"reloaded {topology.source}: " + summary_line(summary))
    return summary


def scale(host: Host, make_child: _plan.ChildFactory, name: str, replicas: int) -> dict[str, Any]:
    try:
        summary = apply(host, make_child, _plan.scaled(host.running_topology, name, replicas))
    except ProtocolError as e:
        host.log(f"scale {name} to {replicas} refused, nothing changed: {e.message}", level=logging.ERROR)
        raise
    host.log(f"scaled {name} to {replicas}: " + summary_line(summary), device=name)
    return summary


def apply(host: Host, make_child: _plan.ChildFactory, topology: Topology) -> dict[str, Any]:
    running = _plan.running_instances(host.roster.children, host.running_topology)
    summary = _plan.apply(_plan.plan(running, _plan.instances(topology)), host.roster, make_child)
    host.running_topology = topology
    return summary


def scaled(host: Host) -> dict[str, dict[str, int]]:
    """Devices whose number of instances differs from the file's (after `scale`)."""
    in_file = {d.name: d.replicas for d in host.topology.devices}
    return {
        d.name: {"file": in_file[d.name], "running": d.replicas}
        for d in host.running_topology.devices
        if d.name in in_file and in_file[d.name] != d.replicas
    }


def summary_line(summary: dict[str, Any]) -> str:
    parts = [f"{what} {', '.join(names)}" for what, names in summary.items() if names and what != "unchanged"]
    return "; ".join(parts) or "nothing changed"
