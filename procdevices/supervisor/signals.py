"""What each signal asks of a running ``up`` (docs/cli.md, "Signals"). The event loop
delivers them from the loop, never from the handler (loop.py); this table is the one place
that says which signals ``up`` handles and what each one does.

    SIGTERM, SIGINT   stop every device through its control socket, then exit
    SIGHUP            reload the topology file (as ``procdevices reload``)
    SIGUSR1           leave: exit at once, every device forwarding on for the next ``up``
    SIGUSR2           upgrade: re-execute with the procdevices installed now (same pid)
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Protocol

from procdevices.control.protocol import ProtocolError
from procdevices.logs import Log
from procdevices.supervisor.config import Topology

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class Signalled(Protocol):
    log: Log
    topology: Topology

    def reload(self, path: str | None) -> dict[str, Any]: ...

    def upgrade(self) -> dict[str, Any]: ...

    def leave(self, why: str) -> None: ...

    def begin_shutdown(self, why: str) -> None: ...


def deliver(supervisor: Signalled, signum: int) -> None:
    name = signal.Signals(signum).name
    if signum == signal.SIGHUP:
        supervisor.log(f"received {name}: reloading {supervisor.topology.source}")
        _refusal_logged(supervisor, "reload", lambda: supervisor.reload(None))
    elif signum == signal.SIGUSR2:
        supervisor.log(f"received {name}: upgrading")
        _refusal_logged(supervisor, "upgrade", supervisor.upgrade)
    elif signum == signal.SIGUSR1:
        supervisor.leave(f"received {name}")
    else:
        supervisor.begin_shutdown(f"received {name}")


def _refusal_logged(supervisor: Signalled, what: str, action: Any) -> None:
    # Nobody waits for an answer to a signal: a refusal goes to the log.
    try:
        action()
    except ProtocolError as e:
        supervisor.log(f"{what} refused: {e.message}", level=logging.ERROR)
