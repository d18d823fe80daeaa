"""The real launcher's choices, with a fake pool and a fake spawn (no process is started)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import Any

import pytest

from procdevices.devices.channel import Channel
from procdevices.devices.launch import PendingStart
from procdevices.supervisor.launcher import ProcessLauncher
from procdevices.supervisor.policy import FIRST_POOL_FILL_DELAY


class _Me:
    """Stands for a started process: this test's own pid, which psutil can read."""

    pid = os.getpid()
    sentinel = -1
    name = "me"


class _Pool:
    def __init__(self, idle: int) -> None:
        self.size = idle
        self.idle = idle
        self.taken: list[str] = []
        self.refills = 0
        self.ends: list[Channel] = []

    def take(
        self,
        pickled_device: bytes,
        control_endpoint: str,
        *,
        label: str,
        log_path: str | None = None,
        listeners: dict[str, Any] | None = None,
    ) -> PendingStart | None:
        if not self.idle:
            return None
        self.idle -= 1
        self.taken.append(label)
        return _pending(self.ends, label)

    def refill(self) -> None:
        self.refills += 1

    def release(self) -> None:
        pass

    def processes(self) -> Iterator[BaseProcess]:
        return iter([])

    def close(self) -> None:
        pass


def _pending(ends: list[Channel], label: str) -> PendingStart:
    parent, child = Channel.pair()
    ends += [parent, child]
    process: Any = _Me()
    return PendingStart(process, parent, label)


@pytest.fixture
def ends() -> Iterator[list[Channel]]:
    opened: list[Channel] = []
    yield opened
    for end in opened:
        end.close()


def test_a_warm_worker_is_used_when_the_pool_has_one(ends: list[Channel]) -> None:
    pool = _Pool(idle=1)
    pool.ends = ends
    spawned: list[str] = []

    def spawn(pickled: bytes, endpoint: str, *, label: str, listeners: Any = None) -> PendingStart:
        spawned.append(label)
        return _pending(ends, label)

    launcher = ProcessLauncher(1, pool=pool, spawn=spawn)
    try:
        first = launcher.launch(b"", "ipc://x", "a")
        assert pool.taken == ["a"] and spawned == []
        assert first.pid == os.getpid() and first.create_time() is not None
        launcher.launch(b"", "ipc://y", "b")  # the pool is empty now: a fresh spawn
        assert spawned == ["b"]
    finally:
        launcher.close()


def test_the_pool_is_refilled_only_after_a_hand_out(ends: list[Channel]) -> None:
    pool = _Pool(idle=0)
    pool.ends = ends
    launcher = ProcessLauncher(1, pool=pool, spawn=lambda p, e, label, listeners=None: _pending(ends, label))
    try:
        launcher.refill(100.0)  # at first the pool is empty: fill it, once the start has settled
        assert pool.refills == 0
        launcher.refill(100.0 + FIRST_POOL_FILL_DELAY)
        launcher.refill(101.0)
        assert pool.refills == 1
        launcher.launch(b"", "ipc://x", "a")  # spawned: the pool is not short
        launcher.refill(102.0)
        assert pool.refills == 1
        pool.idle = 1
        launcher.launch(b"", "ipc://y", "b")  # handed out: refill at once
        launcher.refill(102.0)
        assert pool.refills == 2
    finally:
        launcher.close()


def test_a_new_pool_size_tops_the_pool_up_at_the_next_refill(ends: list[Channel]) -> None:
    pool = _Pool(idle=0)
    pool.ends = ends
    launcher = ProcessLauncher(1, pool=pool, spawn=lambda p, e, label, listeners=None: _pending(ends, label))
    try:
        launcher.refill(0.0)
        launcher.refill(FIRST_POOL_FILL_DELAY)
        assert pool.refills == 1
        launcher.refill(10.0)  # full and nothing handed out: nothing to do
        assert pool.refills == 1
        launcher.resize(3)  # a reload raised pool_size
        assert pool.size == 3
        launcher.refill(10.0)
        assert pool.refills == 2, "the pool was not topped up to its new size"
    finally:
        launcher.close()
