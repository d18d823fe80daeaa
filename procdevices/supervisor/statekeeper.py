"""state.json kept up to date: what a later ``up`` needs to stop or adopt this run's devices.

The supervisor says when the file is behind (a process started or ended, a device became
ready, a reload changed the set); :meth:`StateKeeper.flush`, called once per turn of the loop,
writes it then. A failed write (a full disk) is logged once and tried again on later turns:
the state file only helps a later run, so supervision goes on without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from procdevices.logs import Log
from procdevices.supervisor.child import Child


class StateStore(Protocol):
    def write_state(self, devices: dict[str, dict[str, Any]]) -> None: ...


ListenerKeys = Callable[[str], list[tuple[str, str, str]]]


class StateKeeper:
    def __init__(self, store: StateStore, log: Log) -> None:
        self.store = store
        self.log = log
        self._behind = True
        self._failing = False

    def behind(self) -> None:
        """What the file says is out of date."""
        self._behind = True

    def flush(self, children: Iterable[Child], listener_keys: ListenerKeys) -> None:
        """Write the file if it is behind; a failure is logged (once) and tried again later."""
        if not self._behind:
            return
        try:
            self.write_now(children, listener_keys)
        except OSError as e:
            if not self._failing:
                self.log(
                    f"{e}; supervising without it (after an unclean end, the next `up` can neither "
                    "adopt nor stop the devices of this run)",
                    level=logging.WARNING,
                )
            self._failing = True
            return
        if self._failing:
            self.log("state file written again")
        self._behind = self._failing = False

    def write_now(self, children: Iterable[Child], listener_keys: ListenerKeys) -> None:
        """Write the file (every running process, its identity and its books); OSError when
        it cannot (an upgrade must not go on without it)."""
        self.store.write_state(
            {
                c.name: {
                    "pid": c.process.pid,
                    "create_time": created,
                    "control_endpoint": c.control_endpoint,
                    "device": c.device_name,
                    "fingerprint": c.fingerprint,
                    "books": c.write_books(listener_keys(c.name)),
                }
                for c in children
                if c.process is not None and (created := c.process.create_time()) is not None
            }
        )
