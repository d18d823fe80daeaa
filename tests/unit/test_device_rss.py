"""The health check's memory reading (``rss()``) of a spawned or adopted device leaves its CPU
measurement alone: psutil's ``cpu_percent(None)`` measures since its previous call, so a
reading at every health check would make `status` and the metrics show the CPU of an instant."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, cast

import psutil

from procdevices.supervisor.adopted import AdoptedProcess
from procdevices.supervisor.launcher import rss_of


class _Process:
    """The part of psutil.Process the supervisor reads, counting CPU measurements."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.cpu_calls = 0

    def create_time(self) -> float:
        return 1.0

    def memory_info(self) -> Any:
        return psutil.Process().memory_info()

    def cpu_percent(self, interval: float | None = None) -> float:
        self.cpu_calls += 1
        return 0.0

    def status(self) -> str:
        return str(psutil.STATUS_RUNNING)

    @contextlib.contextmanager
    def oneshot(self) -> Iterator[None]:
        yield


def test_rss_of_reads_memory_only() -> None:
    proc = _Process()
    rss = rss_of(cast(psutil.Process, proc))
    assert rss is not None and rss > 0 and proc.cpu_calls == 0


def test_an_adopted_devices_rss_leaves_its_cpu_window_alone() -> None:
    proc = _Process()
    pidfd = os.pidfd_open(os.getpid())
    adopted = AdoptedProcess(cast(psutil.Process, proc), pidfd)
    try:
        started = proc.cpu_calls  # the constructor starts the measurement
        for _ in range(3):
            assert (adopted.rss() or 0) > 0
        assert proc.cpu_calls == started
        resources = adopted.resources()
        assert resources is not None and proc.cpu_calls == started + 1
    finally:
        os.close(pidfd)
