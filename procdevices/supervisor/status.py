"""What ``status`` says of the supervisor itself: the ``supervisor`` object of ``status
--json`` (a documented, stable shape: docs/cli.md). Each device's own object is
Child.describe's."""

from __future__ import annotations

import os
from typing import Any, Protocol

from procdevices import __version__
from procdevices.supervisor.config import Topology
from procdevices.supervisor.launcher import Launcher
from procdevices.supervisor.upgrade import Upgrader


class Described(Protocol):
    topology: Topology
    launcher: Launcher
    shutting_down: bool
    started_at: float  # the supervisor's clock (monotonic)
    started_wall: float  # the wall clock, for people and for comparing runs
    upgrader: Upgrader | None
    extra_status: dict[str, Any]  # what service.py adds: run dir, endpoints, adopted...

    def now(self) -> float: ...

    def scaled(self) -> dict[str, dict[str, int]]: ...


def describe(supervisor: Described) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "uptime": round(supervisor.now() - supervisor.started_at, 3),
        "started": round(supervisor.started_wall, 3),
        "orphan_grace": supervisor.topology.supervisor.orphan_grace,
        "source": supervisor.topology.source,
        "shutting_down": supervisor.shutting_down,
        "pool_idle": supervisor.launcher.idle_workers(),
        "scaled": supervisor.scaled(),
        "version": __version__,
        "upgrade": supervisor.upgrader.describe() if supervisor.upgrader is not None else None,
        **supervisor.extra_status,
    }
