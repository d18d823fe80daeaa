"""How the supervisor starts device processes and reaches them: the seam between the
supervisor's decisions and the operating system.

:class:`Launcher` and :class:`DeviceProcess` are what the supervisor uses; the real ones take
a warm worker from the pool (or spawn a fresh interpreter), follow the process with psutil
and reach it through the one :class:`~procdevices.control.aclient.ControlRouter`. Unit tests of the
supervisor replace all of it with fakes driven by a scripted history.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing.process
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import zmq

from procdevices.control.aclient import ControlChannel, ControlRouter
from procdevices.devices import runtime as rt
from procdevices.devices.launch import PendingStart, WorkerPool, spawn_device
from procdevices.supervisor import devicelogs, policy
from procdevices.supervisor.listeners import Listeners

# psutil is imported where it is used: not on `up`'s way to its first spawn (test_up_imports.py).
if TYPE_CHECKING:
    import psutil


class Resources(NamedTuple):
    """What psutil says about a device process right now."""

    rss: int | None
    cpu_percent: float | None
    zombie: bool


class DeviceProcess(Protocol):
    """One started device process, from the supervisor's point of view."""

    @property
    def pid(self) -> int: ...

    @property
    def sentinel(self) -> int:
        """A file descriptor that becomes readable when the process exits."""
        ...

    @property
    def report_fd(self) -> int | None:
        """A file descriptor that becomes readable when the ready report arrives; None once
        the report was read or discarded."""
        ...

    def report_waiting(self) -> bool: ...

    def read_report(self) -> rt.ReadyInfo:
        """The ready report; raises DeviceExitedEarly (no report, just an exit) or the
        DeviceError the device reported. Either way the report channel is closed after."""
        ...

    def discard_report(self) -> None: ...

    def reap(self) -> int | None:
        """Wait for the (already exited) process; its exit code (negative: a signal)."""
        ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def create_time(self) -> float | None: ...

    def rss(self) -> int | None: ...

    def resources(self) -> Resources | None: ...


class Launcher(Protocol):
    def launch(self, pickled_device: bytes, control_endpoint: str, label: str) -> DeviceProcess:
        """Start a device; raises OSError when no process can be made."""
        ...

    def connect(self, control_endpoint: str) -> ControlChannel: ...

    def refill(self, now: float) -> None:
        """Top up the warm pool, if a worker was handed out since the last refill (the first
        time, policy.FIRST_POOL_FILL_DELAY after the first call)."""
        ...

    def resize(self, size: int) -> None:
        """Keep ``size`` idle workers from now on."""
        ...

    def release(self) -> None:
        """Let idle workers go (shutdown has begun)."""
        ...

    def idle_workers(self) -> int: ...

    def forget(self, label: str) -> None:
        """The device instance ``label`` is gone for good (a reload removed it)."""
        ...

    def listener_keys(self, label: str) -> list[tuple[str, str, str]]:
        """The listening sockets kept for ``label``: (role, as written, resolved)."""
        ...

    def close(self, *, leave_devices: bool = False) -> None:
        """``leave_devices``: the devices go on without this supervisor (leave, upgrade)."""
        ...


class SpawnedDevice:
    """A :class:`DeviceProcess` backed by a multiprocessing process and psutil."""

    def __init__(self, pending: PendingStart) -> None:
        import psutil

        self._pending: PendingStart | None = pending
        self._process = pending.process
        try:
            self._ps: psutil.Process | None = psutil.Process(pending.process.pid)
            self._ps.cpu_percent(None)  # the first call only starts the measurement
            # psutil keeps the create time it reads here: the pid's identity for state.json.
            self._create_time: float | None = self._ps.create_time()
        except (psutil.Error, TypeError):
            self._ps, self._create_time = None, None

    @property
    def pid(self) -> int:
        pid = self._process.pid
        assert pid is not None, "a started process has a pid"
        return pid

    @property
    def sentinel(self) -> int:
        return self._process.sentinel

    @property
    def report_fd(self) -> int | None:
        return self._pending.conn.fileno() if self._pending is not None else None

    def report_waiting(self) -> bool:
        return self._pending is not None and self._pending.conn.poll(0)

    def read_report(self) -> rt.ReadyInfo:
        pending = self._pending
        assert pending is not None, "the report is read once"
        self._pending = None
        try:
            return pending.result()
        finally:
            pending.conn.close()

    def discard_report(self) -> None:
        if self._pending is not None:
            self._pending.conn.close()
            self._pending = None

    def reap(self) -> int | None:
        self.discard_report()
        self._process.join()
        self._ps = None
        return self._process.exitcode

    def terminate(self) -> None:
        self._process.terminate()  # our unreaped child: its pid cannot have been reused

    def kill(self) -> None:
        self._process.kill()

    def create_time(self) -> float | None:
        return self._create_time

    def rss(self) -> int | None:
        return rss_of(self._ps)

    def resources(self) -> Resources | None:
        return resources_of(self._ps)


def _disown_children() -> None:
    """Let the device processes outlive this one. At interpreter exit multiprocessing
    terminates every daemonic child it started and joins the others: the devices left for the
    next ``up`` to adopt must be neither. CPython keeps those children in
    ``multiprocessing.process._children``; there is no public way to disown one."""
    children = getattr(multiprocessing.process, "_children", None)
    if isinstance(children, set):
        children.clear()


def rss_of(ps: psutil.Process | None) -> int | None:
    """The resident memory of ``ps`` now (the health check's memory_limit), without touching
    its CPU measurement: resources_of's cpu_percent(None) would begin a new window at every
    health check, and `status` and the metrics would show the CPU of the last instant only."""
    import psutil

    if ps is None:
        return None
    try:
        return int(ps.memory_info().rss)
    except psutil.Error:
        return None


def resources_of(ps: psutil.Process | None) -> Resources | None:
    """What psutil says about ``ps`` now; None once it is gone (or was never seen)."""
    import psutil

    if ps is None:
        return None
    try:
        with ps.oneshot():
            return Resources(
                rss=int(ps.memory_info().rss),
                cpu_percent=float(ps.cpu_percent(None)),
                zombie=ps.status() == psutil.STATUS_ZOMBIE,
            )
    except psutil.Error:
        return None


class PoolLike(Protocol):
    def take(
        self,
        pickled_device: bytes,
        control_endpoint: str,
        *,
        label: str,
        log_path: str | None = None,
        listeners: dict[str, Any] | None = None,
    ) -> PendingStart | None: ...

    def refill(self) -> None: ...

    def release(self) -> None: ...

    def processes(self) -> Iterator[BaseProcess]: ...

    size: int

    def close(self) -> None: ...


Spawn = Callable[..., PendingStart]


class ProcessLauncher:
    """The real launcher: a warm worker when the pool has one, else a fresh spawn."""

    def __init__(
        self,
        pool_size: int,
        *,
        pool: PoolLike | None = None,
        spawn: Spawn | None = None,
        start_method: str = "spawn",
        listeners: Listeners | None = None,
        log_dir: Path | None = None,
        log_rotation: devicelogs.Rotation | None = None,
    ) -> None:
        self.listeners = listeners or Listeners()
        self.log_dir = log_dir
        self.log_rotation = log_rotation or devicelogs.Rotation()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.pool: PoolLike = pool if pool is not None else WorkerPool(pool_size, start_method=start_method)
        self._spawn: Spawn = spawn if spawn is not None else functools.partial(spawn_device, start_method=start_method)
        self._pool_short = True  # empty at first; after that, only a hand-out makes it short
        self._first_fill_at: float | None = None  # set by the first refill call
        self.controls = ControlRouter(self.ctx)

    def launch(self, pickled_device: bytes, control_endpoint: str, label: str) -> DeviceProcess:
        """A warm worker, else a new process; it takes over the listening sockets the
        supervisor keeps for ``label`` and writes its output to ``<log_dir>/<label>.log``."""
        extra: dict[str, Any] = {}  # only what is set, so pools and spawns of test fakes fit
        listeners = self.listeners.for_instance(label)
        if listeners:
            extra["listeners"] = listeners
        if self.log_dir is not None:
            log = self.log_dir / f"{label}.log"
            devicelogs.rotate_if_large(log, self.log_rotation.max_bytes, self.log_rotation.backups)
            extra["log_path"] = str(log)
        pending = self.pool.take(pickled_device, control_endpoint, label=label, **extra)
        if pending is not None:
            self._pool_short = True
        else:
            pending = self._spawn(pickled_device, control_endpoint, label=label, **extra)
        return SpawnedDevice(pending)

    def forget(self, label: str) -> None:
        self.listeners.release(label)

    def listener_keys(self, label: str) -> list[tuple[str, str, str]]:
        return self.listeners.keys(label)

    def connect(self, control_endpoint: str) -> ControlChannel:
        return self.controls.connect(control_endpoint)

    def refill(self, now: float) -> None:
        if self._first_fill_at is None:
            self._first_fill_at = now + policy.FIRST_POOL_FILL_DELAY
        if self._pool_short and now >= self._first_fill_at:
            self._pool_short = False
            self.pool.refill()

    def release(self) -> None:
        self.pool.release()

    def resize(self, size: int) -> None:
        self.pool.size = size
        self._pool_short = True

    def idle_workers(self) -> int:
        return sum(1 for _ in self.pool.processes())

    def close(self, *, leave_devices: bool = False) -> None:
        self.controls.close()
        self.pool.close()
        self.listeners.close(unlink=not leave_devices)
        if leave_devices:
            _disown_children()
        with contextlib.suppress(zmq.ZMQError):
            self.ctx.term()
