"""Starting device processes: spawned on demand, or taken from a pool of warm workers.

A warm worker is a spawned interpreter that has already imported procdevices and pyzmq and
waits on its pipe for a device. Handing it a device skips the ~50-150 ms an interpreter
needs to start, which is what makes a supervised restart near-instant.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Iterator
from multiprocessing import spawn
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

from procdevices.devices import inherit
from procdevices.devices import runtime as rt
from procdevices.devices.boot import PRELOAD, run_worker
from procdevices.devices.channel import Channel
from procdevices.devices.spawnproc import signals_blocked, start_process
from procdevices.errors import DeviceError, DeviceExitedEarly, DeviceStartError

SPAWN = multiprocessing.get_context("spawn")

#: The start methods a device process may be made with. spawn: a fresh interpreter per
#: device (devices/spawnproc.py). forkserver: a fresh interpreter (the fork server) that has
#: imported only pyzmq and procdevices, and never created a zmq.Context or a thread, forks each
#: device: the child inherits nothing it could trip over, at the cost of a fork instead of an
#: interpreter.
START_METHODS = ("spawn", "forkserver")

#: What the fork server imports before it forks anything (and a warm worker while it waits):
#: boot.PRELOAD.
FORKSERVER_PRELOAD = PRELOAD


def spawns_itself(start_method: str) -> bool:
    """Whether procdevices starts the processes of ``start_method`` itself (spawnproc.py), not
    multiprocessing. Not in a frozen application (PyInstaller and the like): it has no
    interpreter that runs `-c`, and only multiprocessing's spawn knows how to start one
    (multiprocessing.freeze_support)."""
    return start_method == "spawn" and not getattr(sys, "frozen", False)


def process_context(start_method: str) -> Any:
    """multiprocessing's context for ``start_method`` (one of :data:`START_METHODS`)."""
    if start_method == "spawn":
        return SPAWN
    if start_method == "forkserver":
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(FORKSERVER_PRELOAD)
        return context
    raise ValueError(f"start method {start_method!r}: expected one of {', '.join(START_METHODS)}")


# Every device follows the launching process by its pid (a pidfd: Job.parent_pid), under
# every start method, not by multiprocessing's parent sentinel: a forked-by-the-server
# child's sentinel is the pipe its job came through, which reads EOF as soon as the job is
# written; a spawned child's is a pipe that `up` closes when it re-executes itself for an
# upgrade (same pid, still alive).


# -- starting a device process without re-running the user's main script -----------------
#
# spawn (and forkserver) make every child re-run the parent's ``__main__`` before anything
# else (multiprocessing's preparation data ``init_main_from_path``/``init_main_from_name``),
# so that objects defined there can be unpickled. A device whose classes all live in
# importable modules needs nothing from ``__main__``; re-running it is worse than useless: a
# script that starts its devices at module level (no ``if __name__ == "__main__":``, fine
# under pyzmq's fork) starts them again in the child, where multiprocessing refuses with a
# RuntimeError and the device never comes up. So for such devices the preparation data
# leaves main out. The switch is per thread: other code of the program that spawns
# processes at the same time gets multiprocessing's usual behaviour.

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")
_without_main = threading.local()
_patch_lock = threading.Lock()


def _install_preparation_filter() -> None:
    with _patch_lock:
        original = spawn.get_preparation_data
        if getattr(original, "_procdevices", False):
            return

        def get_preparation_data(name: str) -> dict[str, Any]:
            data: dict[str, Any] = original(name)
            if getattr(_without_main, "active", False):
                for key in _MAIN_KEYS:
                    data.pop(key, None)
            return data

        get_preparation_data._procdevices = True  # type: ignore[attr-defined]
        spawn.get_preparation_data = get_preparation_data


@contextlib.contextmanager
def main_left_out() -> Iterator[None]:
    """Processes started by this thread inside the block do not re-run ``__main__``."""
    _install_preparation_filter()
    _without_main.active = True
    try:
        yield
    finally:
        _without_main.active = False


def needs_main(pickled_device: bytes) -> bool:
    """Whether unpickling the device needs the parent's ``__main__`` (a class, or anything
    else, defined there). Pickle names a global by its module, so a ``__main__`` global
    shows as that string; a false positive only keeps multiprocessing's usual behaviour."""
    return b"__main__" in pickled_device


def main_hint(label: str) -> str:
    """Why a device whose class lives in ``__main__`` may exit before it is ready."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(getattr(main, "__spec__", None), "name", None) is None and not (path and os.path.isfile(path)):
        return (
            f"{label} is defined in a __main__ that a fresh interpreter cannot re-import (read "
            f"from {path or 'stdin or -c'}): define the class in an importable module"
        )
    return (
        f"{label} is defined in __main__ ({path}), so its process must re-run that script to "
        "find the class. A script that creates and starts devices at module level starts them "
        "again in that re-run, and multiprocessing refuses (RuntimeError in the device's "
        'stderr). Fix: put the module-level code under `if __name__ == "__main__":`, or define '
        "the class in an importable module"
    )


@contextlib.contextmanager
def terminal_signals_blocked() -> Iterator[None]:
    """spawnproc.signals_blocked, for multiprocessing's processes (SpawnedProcess blocks them
    by itself)."""
    # multiprocessing starts its resource tracker with the first process, and *unblocks*
    # SIGINT in this thread when it has: start it before blocking, or that first process
    # would start unprotected. Imported here: a device spawnproc starts never needs it.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with signals_blocked():
        yield


class PendingStart:
    """A device process that has been started and will report ready or failed on ``conn``.
    (Not a dataclass: a warm worker imports this module, and becomes a device: runtime.py.)"""

    def __init__(
        self,
        process: BaseProcess,
        conn: Channel,
        label: str,
        cleanup_dir: str | None = None,
        # Set when the device needs the parent's __main__: the likely cause of an early exit.
        hint: str | None = None,
    ) -> None:
        self.process = process
        self.conn = conn
        self.label = label
        self.cleanup_dir = cleanup_dir
        self.hint = hint

    def waitables(self) -> list[Any]:
        return [self.conn, self.process.sentinel]

    def result(self) -> rt.ReadyInfo:
        """Read the report; call once ``conn`` or the sentinel is readable."""
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(1.0)
            cause = self.hint or "is its class importable by a fresh interpreter?"
            raise DeviceExitedEarly(
                f"{self.label} process exited with code {self.process.exitcode} before it was "
                f"ready ({cause}; its stderr has the traceback)"
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
    pickled_device: bytes,
    control_endpoint: str,
    *,
    label: str,
    daemon: bool = True,
    cleanup_dir: str | None = None,
    process_class: Any = None,
    log_path: str | None = None,
    start_method: str = "spawn",
    listeners: dict[str, Any] | None = None,
) -> PendingStart:
    """Start a device process (a fresh spawned interpreter, or a fork of the fork server).
    ``log_path``: a file that receives everything the process writes to fds 1 and 2.
    ``listeners``: endpoint → :class:`~procdevices.devices.inherit.InheritedFd` of a listening
    socket it takes over."""
    name = f"procdevices-{label}"
    if spawns_itself(start_method) and process_class is None and not needs_main(pickled_device):
        listening = inherit.kept_across_exec(listeners)
        job = rt.Job(pickled_device, control_endpoint, cleanup_dir, log_path, os.getpid(), listening or None)
        process, conn = start_process("device", name=name, daemon=daemon, pass_fds=listening.values(), job=job)
        return PendingStart(process, conn, label, cleanup_dir)
    # multiprocessing's own spawn (a class in __main__, a process class of the caller's), or
    # the fork server.
    hint = main_hint(label) if needs_main(pickled_device) else None

    def start(child_end: Channel) -> BaseProcess:
        job = rt.Job(pickled_device, control_endpoint, cleanup_dir, log_path, os.getpid(), listeners)
        process: BaseProcess = (process_class or process_context(start_method).Process)(
            target=rt.process_main, args=(child_end, job), name=name
        )
        process.daemon = daemon
        with terminal_signals_blocked():
            if hint is not None:
                process.start()
            else:
                with main_left_out():
                    process.start()
        return process

    started, conn = Channel.to_child(start)
    return PendingStart(started, conn, label, cleanup_dir, hint)


class _Worker(NamedTuple):
    process: BaseProcess
    conn: Channel


def pool_worker_main(conn: Channel) -> None:
    """Entry point of a warm worker started by multiprocessing (the fork server): boot.run_worker."""
    run_worker(conn)


class WorkerPool:
    """Keeps ``size`` idle, pre-imported device processes ready to take a device."""

    def __init__(self, size: int, *, start_method: str = "spawn") -> None:
        self.size = size
        self.start_method = start_method
        self._context = process_context(start_method)
        self._idle: list[_Worker] = []
        self._released: list[BaseProcess] = []

    def refill(self) -> None:
        for worker in [w for w in self._idle if not w.process.is_alive()]:
            self._idle.remove(worker)  # it died while idle
            worker.conn.close()
            worker.process.join(0)
        while len(self._idle) < self.size:
            process, conn = self._start_worker()
            self._idle.append(_Worker(process, conn))

    def _start_worker(self) -> tuple[BaseProcess, Channel]:
        name = "procdevices-worker"
        if spawns_itself(self.start_method):
            return start_process("worker", name=name)

        def start(child_end: Channel) -> BaseProcess:
            process: BaseProcess = self._context.Process(target=pool_worker_main, args=(child_end,), name=name)
            process.daemon = True
            # A pooled worker gets only devices the supervisor built from procdevices' own
            # classes: the supervisor's __main__ is nothing it needs.
            with main_left_out(), terminal_signals_blocked():
                process.start()
            return process

        return Channel.to_child(start)

    def take(
        self,
        pickled_device: bytes,
        control_endpoint: str,
        *,
        label: str,
        log_path: str | None = None,
        listeners: dict[str, Any] | None = None,
    ) -> PendingStart | None:
        """Hand the device to an idle worker; None when none is available (or when the device
        needs the parent's ``__main__``, which pooled workers have not run)."""
        if needs_main(pickled_device):
            return None
        while self._idle:
            worker = self._idle.pop(0)
            job = rt.Job(pickled_device, control_endpoint, None, log_path, os.getpid(), listeners)
            try:
                inherit.send_job(worker.conn, job)  # the descriptors over the pipe, not the resource sharer
            except OSError:
                worker.conn.close()  # if it still runs, it exits on the closed pipe
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
