"""Wait for a condition on a running supervisor, woken by its event stream.

The supervisor publishes every state change and every command on ``events.sock`` (see
:mod:`procdevices.supervisor.events`). A :class:`SupervisorWaiter` subscribes to it and
re-checks the caller's condition (usually on a fresh ``status``) each time something is
published, until the condition holds or the deadline passes: no fixed polling interval, and
no new interpreter per check. A subscriber may miss what was published while it was still
joining (libzmq's slow joiner), so it also re-checks after a quiet spell: 50 ms at first,
doubling to :data:`MAX_QUIET` (0.5 s) while nothing happens, back to 50 ms after each event. Used by
the CLI's ``start``/``stop``/``restart``/``scale`` and by :mod:`procdevices.testing`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import zmq

from procdevices import runlayout
from procdevices.control.client import SupervisorUnreachable, call_supervisor, private_context
from procdevices.control.protocol import SupervisorCommand

T = TypeVar("T")

#: The first re-check after a quiet spell, and the longest one (a missed event costs at most this).
FIRST_QUIET = 0.05
MAX_QUIET = 0.5


def wait_until(check: Callable[[], T | None], timeout: float, pause: Callable[[float], object]) -> T | None:
    """The one waiting loop: ``check()`` until it returns something truthy, which is
    returned; None once ``timeout`` seconds have passed. Between two checks it calls
    ``pause(left)``, which returns when the answer may have changed, within ``left`` seconds
    (the time to the deadline). ``check`` runs at once and after every pause; what it or
    ``pause`` raises ends the wait."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        pause(left)


class SupervisorWaiter:
    """Subscribed to the events of the supervisor of ``run_dir`` from construction on (make
    one *before* asking for a change, so that its events are not missed); ``run_dir`` None
    (a supervisor on another host) waits on the quiet-spell re-checks alone. Not thread-safe;
    :meth:`close` it (or use it as a context manager)."""

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self._sock: zmq.Socket[bytes] | None = None
        if run_dir is not None:
            sock = private_context().socket(zmq.SUB)
            sock.linger = 0
            sock.subscribe(b"")
            # libzmq keeps trying until the supervisor binds it (a waiter may come first):
            # every 10 ms rather than its default 100, so it joins soon after the bind.
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            sock.connect(runlayout.events_endpoint(run_dir))
            self._sock = sock
        self.events_seen = 0

    def status(self, name: str | None = None, timeout: float = 5.0) -> dict[str, Any] | None:
        """The supervisor's ``status`` result (what ``status --json`` prints), or None while no
        supervisor answers (not started yet, or gone)."""
        if self.run_dir is None or not Path(runlayout.supervisor_socket(self.run_dir)).is_socket():
            return None
        args = {"name": name} if name is not None else {}
        try:
            reply = call_supervisor(
                runlayout.supervisor_endpoint(self.run_dir), SupervisorCommand.STATUS, args, timeout
            )
        except SupervisorUnreachable:
            return None
        if not reply.get("ok"):
            raise WaitFailed(f"status: {reply.get('error')}")
        result: dict[str, Any] = reply["result"]
        return result

    def wait(self, check: Callable[[], T | None], timeout: float) -> T | None:
        """``check()`` until it returns something truthy, which is returned; None once
        ``timeout`` seconds have passed. ``check`` runs at once, after every event, and after
        each quiet spell; what it raises ends the wait."""
        quiet = FIRST_QUIET

        def until_event_or_quiet(left: float) -> None:
            nonlocal quiet
            if self.changed(min(left, quiet)):
                quiet = FIRST_QUIET
            else:
                # Without an event stream (another host's supervisor) the re-checks are all
                # there is: they stay at FIRST_QUIET, as the CLI's polling always did.
                quiet = min(quiet * 2, MAX_QUIET if self._sock is not None else FIRST_QUIET)

        return wait_until(check, timeout, until_event_or_quiet)

    def changed(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for an event; True if there was one (all that arrived are
        consumed: one re-check answers them all)."""
        if self._sock is None:
            time.sleep(seconds)
            return False
        if not self._sock.poll(int(seconds * 1000)):
            return False
        while self._sock.poll(0):
            self._sock.recv()
            self.events_seen += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> SupervisorWaiter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class WaitFailed(Exception):
    """The supervisor refused what a wait asked of it (an unknown device name, say)."""
