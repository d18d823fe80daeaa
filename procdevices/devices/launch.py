"""Starting device processes: spawned on demand, or taken from a pool of warm workers.

A warm worker is a spawned interpreter that has already imported procdevices and pyzmq and
waits on its pipe for a device. Handing it a device skips the ~50-150 ms an interpreter
needs to start, which is what makes a supervised restart near-instant.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from procdevices.devices import runtime as rt
from procdevices.errors import DeviceError, DeviceExitedEarly, DeviceStartError

SPAWN = multiprocessing.get_context("spawn")


@dataclass
class PendingStart:
    """A device process that has been started and will report ready or failed on ``conn``."""

    process: BaseProcess
    conn: Connection
    label: str
    cleanup_dir: str | None = None

    def waitables(self) -> list[Any]:
        return [self.conn, self.process.sentinel]

    def result(self) -> rt.ReadyInfo:
        """Read the report; call once ``conn`` or the sentinel is readable."""
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(1.0)
            raise DeviceExitedEarly(
                f"{self.label} process exited with code {self.process.exitcode} before it was "
                "ready (is its class importable by a fresh interpreter? its stderr has the traceback)"
            ) from None
        if kind == "ready":
            info: rt.ReadyInfo = payload
            return info
        error: DeviceError = payload
        raise error


def pickle_device(device: object) -> bytes:
    try:
        return pickle.dumps(device)
    except Exception as e:
        raise DeviceStartError(f"{type(device).__name__} cannot be sent to a spawned process: {e}") from e


def spawn_device(
    pickled_device: bytes, control_endpoint: str, *, label: str, daemon: bool = True,
    cleanup_dir: str | None = None, process_class: Any = None, listeners: dict[str, Any] | None = None,
) -> PendingStart:
    """Start a fresh spawned interpreter that runs the device. ``listeners``: endpoint →
    :class:`~procdevices.devices.inherit.InheritedFd` of a listening socket it takes over."""
    parent_end, child_end = SPAWN.Pipe(duplex=True)
    job = rt.Job(pickled_device, control_endpoint, cleanup_dir, listeners)
    process = (process_class or SPAWN.Process)(
        target=rt.process_main, args=(child_end, job), name=f"procdevices-{label}"
    )
    process.daemon = daemon
    process.start()
    child_end.close()
    return PendingStart(process, parent_end, label, cleanup_dir)


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection


class WorkerPool:
    """Keeps ``size`` idle, pre-imported device processes ready to take a device."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[_Worker] = []
        self._released: list[BaseProcess] = []

    def refill(self) -> None:
        self._idle = [w for w in self._idle if w.process.is_alive()]
        while len(self._idle) < self.size:
            parent_end, child_end = SPAWN.Pipe(duplex=True)
            process = SPAWN.Process(target=rt.process_main, args=(child_end, None), name="procdevices-worker")
            process.daemon = True
            process.start()
            child_end.close()
            self._idle.append(_Worker(process, parent_end))

    def take(
        self, pickled_device: bytes, control_endpoint: str, *, label: str, listeners: dict[str, Any] | None = None
    ) -> PendingStart | None:
        """Hand the device to an idle worker; None when none is available."""
        while self._idle:
            worker = self._idle.pop(0)
            try:
                worker.conn.send(rt.Job(pickled_device, control_endpoint, None, listeners))
            except OSError:
                worker.process.join(0)
                continue  # it died while idle; try the next one
            worker.process.name = f"procdevices-{label}"
            return PendingStart(worker.process, worker.conn, label)
        return None

    def processes(self) -> Iterator[BaseProcess]:
        return (w.process for w in self._idle)

    def release(self) -> None:
        """Let the idle workers go without waiting: each exits when its pipe closes."""
        for worker in self._idle:
            worker.conn.close()
        self._released += [w.process for w in self._idle]
        self._idle = []

    def close(self) -> None:
        """Release the idle workers and reap them."""
        self.release()
        for process in self._released:
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join()
        self._released = []
