"""Ctrl-C and SIGTERM that arrive before a command is ready for them.

The command line spends its first ~0.1-0.3 s importing; ``up`` then validates, locks the
run dir and builds its parts before its loop installs the handlers that turn a signal into
a clean stop. A signal in that window used to be a KeyboardInterrupt traceback (or exit 1 with
no message). ``hold()``, the first thing the entry point does, records SIGINT, SIGTERM and
SIGHUP instead; whoever is ready for them later takes them over:

- ``up`` hands them to its event loop once the loop's handlers are in place
  (``Held.replay``): the loop acts on them as on any other signal, one clean stop;
- every other command ``release()``s them at once: the usual handlers come back and a signal
  that came meanwhile is raised again, so it does exactly what it would have done.

Imports nothing but the standard library's ``signal``: it runs before anything heavy.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class Held:
    """The signals recorded since ``hold()``, and the handlers they replaced."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self._previous: dict[int, _Handler] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only record: the handler may run at any bytecode boundary of the start-up code.
        if signum not in self.pending:
            self.pending.append(signum)

    def start(self) -> Held:
        for signum in HELD:
            self._previous[signum] = signal.signal(signum, self._record)
        # `up` re-executing itself for an upgrade blocks them across its exec (a signal then
        # would meet the default action): recorded from here on, with any that came meanwhile.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
        return self

    def replay(self) -> None:
        """Raise the recorded signals again, for the handlers now installed (the caller's)."""
        pending, self.pending = self.pending, []
        for signum in pending:
            signal.raise_signal(signum)

    def release(self) -> None:
        """Put the previous handlers back, then raise what was recorded meanwhile."""
        pending = self.pending
        self.restore()
        self.pending = pending
        self.replay()

    def restore(self) -> None:
        """Put the previous handlers back and forget what was recorded (nothing is acted on:
        for a caller that ends, or has handled the signals its own way)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        self.pending = []


def hold() -> Held:
    """Record SIGINT, SIGTERM and SIGHUP from now on, instead of acting on them."""
    return Held().start()
