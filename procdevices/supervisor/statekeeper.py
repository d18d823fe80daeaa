"""state.json kept up to date: what a later ``up`` needs to stop or adopt this run's devices.

The supervisor says when the file is behind (a process started or ended, a device became
ready, a reload changed the set); :meth:`StateKeeper.flush`, called once per turn of the loop,
writes it then. A failed write (a full disk) is logged once and tried again on later turns:
the state file only helps a later run, so supervision goes on without it.

While devices are starting, changes come in a burst (a spawn and a ready per device), and
each write costs the loop a JSON dump of every device and a file replaced (it cost two
fsyncs too, 5-40 ms each, until runstate.py gave them up): 14 writes while 32 devices
started. So during a start the
changes are gathered: the file is written ``GATHER`` after the first unwritten one, then at
most once per ``SPACING``; as soon as no device is starting, at once. A supervisor that
dies during a start therefore leaves a file at most ``SPACING`` behind (plus a loop turn);
a device it does not name ends on its own after its orphan_grace (devices/orphans.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from procdevices.logs import Log
from procdevices.supervisor.child import Child
from procdevices.supervisor.states import State


class StateStore(Protocol):
    def write_state(self, devices: dict[str, dict[str, Any]]) -> None: ...


ListenerKeys = Callable[[str], list[tuple[str, str, str]]]

#: While devices start: seconds from the first unwritten change to the write ...
GATHER = 0.05
#: ... and the least time between two writes.
SPACING = 0.25


class StateKeeper:
    def __init__(self, store: StateStore, log: Log, clock: Callable[[], float]) -> None:
        self.store = store
        self.log = log
        self.clock = clock
        self._since: float | None = clock()  # when the file fell behind; None: up to date
        self._last = -math.inf  # when it was last tried
        self._failing = False

    def behind(self) -> None:
        """What the file says is out of date."""
        if self._since is None:
            self._since = self.clock()

    def due(self, children: Iterable[Child]) -> float | None:
        """When a write gathered during a start is due (None: the file is up to date, or no
        device is starting and :meth:`flush` writes it at the end of this turn)."""
        if self._since is None or not any(c.state in (State.QUEUED, State.STARTING) for c in children):
            return None
        return max(self._since + GATHER, self._last + SPACING)

    def flush(self, children: Sequence[Child], listener_keys: ListenerKeys, *, at_once: bool = False) -> None:
        """Write the file if it is behind and not gathering a start's changes (``at_once``:
        if behind); a failure is logged (once) and tried again later."""
        if self._since is None:
            return
        due = None if at_once else self.due(children)
        if due is not None and self.clock() < due:
            return
        self._last = self.clock()
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
        self._failing = False
        self._since = None

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
