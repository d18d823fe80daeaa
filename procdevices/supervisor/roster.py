"""The device instances under supervision, and the changes to that set.

The supervisor's lifecycle (core.py) starts and stops processes; the roster says which
instances there are. A reload or a scale (livechange.py, reload.py's plan) changes the set
through it: an instance is added (and started), retired (stopped through its control socket,
forgotten once its process is gone), or replaced by a successor that starts once the old
process is gone (it may hold the addresses the successor binds).
"""

from __future__ import annotations

from typing import Protocol

from procdevices.control.protocol import ErrorCode, ProtocolError
from procdevices.supervisor.child import Child
from procdevices.supervisor.launcher import Launcher
from procdevices.supervisor.statekeeper import StateKeeper
from procdevices.supervisor.states import State


class Lifecycle(Protocol):
    """What the roster needs of the supervisor's lifecycle."""

    @property
    def shutting_down(self) -> bool: ...

    def start(self, child: Child) -> None: ...

    def stop_process(self, child: Child) -> None:
        """Stop the child's process (through its control socket), whatever its state."""
        ...

    def observe(self, child: Child) -> None:
        """Tell the event stream of the child's transitions from now on."""
        ...


class Roster:
    def __init__(self, children: list[Child], lifecycle: Lifecycle, launcher: Launcher, state: StateKeeper) -> None:
        self.children = children
        self.lifecycle = lifecycle
        self.launcher = launcher
        self.state = state
        for child in children:
            lifecycle.observe(child)

    def select(self, name: str | None) -> list[Child]:
        """Every instance (``name`` empty), or those of device ``name``, or instance ``name``."""
        if not name:
            return list(self.children)
        chosen = [c for c in self.children if c.name == name or c.device_name == name]
        if not chosen:
            known = ", ".join(sorted({c.device_name for c in self.children}))
            raise ProtocolError(ErrorCode.NO_SUCH_DEVICE, f"no device named {name!r} (devices: {known})")
        return chosen

    def child_named(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def add(self, child: Child) -> None:
        """A new device instance (a reload or a scale added it): started at once."""
        self.lifecycle.observe(child)
        self.children.append(child)
        if not self.lifecycle.shutting_down:
            self.lifecycle.start(child)

    def retire(self, child: Child) -> None:
        """Stop this instance through its control socket and forget it once it is gone."""
        child.retire()
        if child.process is None:
            self.remove(child)
        else:
            self.lifecycle.stop_process(child)

    def replace(self, child: Child, successor: Child) -> None:
        """Run ``successor`` instead of ``child``, once ``child``'s process is gone."""
        child.hand_over_to(successor)
        if child.process is None:
            self.remove(child, start_successor=child.state is not State.STOPPED)
        else:
            self.lifecycle.stop_process(child)

    def remove(self, child: Child, *, start_successor: bool = True) -> None:
        """Forget ``child`` (its process is gone); its successor, if any, takes its place."""
        self.children.remove(child)
        if child.successor is None or child.successor.name != child.name:
            self.launcher.forget(child.name)  # its listening sockets, unless its successor's
        child.disconnect()
        self.state.behind()
        successor = child.take_successor()
        if successor is not None:
            self.lifecycle.observe(successor)
            self.children.append(successor)
            if start_successor and not self.lifecycle.shutting_down:
                self.lifecycle.start(successor)
