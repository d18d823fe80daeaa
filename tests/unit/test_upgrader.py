"""supervisor/upgrade.py's Upgrader: once its preflight passed, it re-executes, unless the
supervisor began to stop meanwhile (`down`, SIGTERM, SIGUSR1): re-executing then would start
the topology again, or adopt devices that are being stopped."""

from __future__ import annotations

import select
import sys
from typing import Any

import pytest

from procdevices.supervisor.loop import OnEvent
from procdevices.supervisor.upgrade import Upgrader


class _Loop:
    """The one watch an Upgrader makes: its preflight's pidfd."""

    def __init__(self) -> None:
        self.watched: dict[Any, OnEvent] = {}

    def watch(self, pollable: Any, on_event: OnEvent, *, quiet: bool = False) -> None:
        self.watched[pollable] = on_event

    def unwatch(self, pollable: Any) -> None:
        del self.watched[pollable]

    def run_until_checked(self) -> None:
        ((pidfd, on_event),) = self.watched.items()
        assert select.select([pidfd], [], [], 30)[0], "the preflight did not end"
        on_event(0.0)


def _upgrader(loop: _Loop, lines: list[str], execs: list[list[str]], wanted: list[bool]) -> Upgrader:
    def log(message: str, *, device: str | None = None, level: int = 0) -> None:
        lines.append(message)

    return Upgrader(
        preflight=[sys.executable, "-c", "pass"],  # a new version that passes its check
        command=["/no/such/python", "-m", "procdevices", "up"],
        lock_fd=0,
        before_exec=lambda: None,
        watcher=loop,
        log=log,
        execv=lambda path, argv: execs.append(argv),
        wanted=lambda: wanted[0],
    )


@pytest.mark.timeout(60)
def test_a_passed_preflight_re_executes() -> None:
    loop, lines, execs = _Loop(), list[str](), list[list[str]]()
    upgrader = _upgrader(loop, lines, execs, [True])
    upgrader.begin()
    assert upgrader.describe()["state"] == "checking"
    loop.run_until_checked()
    assert execs == [["/no/such/python", "-m", "procdevices", "up"]]


@pytest.mark.timeout(60)
def test_a_supervisor_that_began_to_stop_meanwhile_does_not_re_execute() -> None:
    loop, lines, execs = _Loop(), list[str](), list[list[str]]()
    wanted = [True]
    upgrader = _upgrader(loop, lines, execs, wanted)
    upgrader.begin()
    wanted[0] = False  # `down` arrived while the preflight ran
    loop.run_until_checked()
    assert execs == []
    assert upgrader.describe() == {"state": "cancelled", "attempt": 1}
    assert lines[-1] == "upgrade cancelled: the supervisor is stopping"
    assert loop.watched == {}  # nothing left to wake the loop
