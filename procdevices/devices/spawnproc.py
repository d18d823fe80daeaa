"""Spawning a device process: a fresh interpreter that runs devices/boot.py, not
multiprocessing's spawn entry point.

multiprocessing's spawn starts ``python -c 'from multiprocessing.spawn import spawn_main; ...'``
and that child imports multiprocessing's context, process, reduction (``socket``,
``selectors``), util and spawn modules, and the resource tracker's, to unpickle a process
object: ~37 M instructions, ~10 ms of CPU and ~0.4 MiB of private memory per device, before
its device does anything (docs/performance.md, "Session 7"). Its parent also starts
multiprocessing's resource tracker, one more interpreter, which a device never uses.

Here the child is started the same way (``_posixsubprocess.fork_exec`` through
``multiprocessing.util.spawnv_passfds``, the parent's interpreter flags, ``close_fds`` with
only the named descriptors kept) but runs boot.main, which reads its job from its channel.
The parent still gets a multiprocessing process object (:class:`SpawnedProcess`: pid,
sentinel, ``join``, ``kill``, ``exitcode``, ``daemon``, in ``active_children()``), so
everything that waits for, signals or reaps a device process is unchanged.

A device whose class lives in the parent's ``__main__`` still goes through multiprocessing's
spawn (launch.py), which knows how to re-run that script first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from multiprocessing import popen_fork, spawn, util
from multiprocessing.process import BaseProcess
from subprocess import _args_from_interpreter_flags  # type: ignore[attr-defined]  # as multiprocessing's spawn
from typing import Literal

from procdevices.devices.channel import Channel
from procdevices.devices.runtime import IGNORED_SIGNALS

Role = Literal["device", "worker"]

# The child imports boot from the very procdevices its parent runs: the directory that holds
# it goes first on the child's path, or a `procdevices` in the current directory (a checkout),
# first on a `-c` interpreter's path, would be imported instead. boot.main then puts the
# parent's whole sys.path in place, before anything else is imported. Collections are paused
# from the first statement (procdevices/collector.py, whose pause() is spelled out here: importing
# it would import procdevices first) until runtime.process_main has loaded the device.
_HOME = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    "import gc; paused = gc.get_threshold(); gc.set_threshold(0); "
    f"import sys; sys.path.insert(0, {_HOME!r}); from procdevices.devices.boot import main; main(paused)"
)


def command_line(channel_fd: int, role: Role, *, daemon: bool) -> list[str]:
    """The child's argv: the parent's interpreter and flags (``-X``, ``-W``, ``-O``, ``-I``...,
    as multiprocessing passes them), boot.main, its channel, role and whether it is daemonic."""
    return [
        os.fsdecode(spawn.get_executable()),
        *_args_from_interpreter_flags(),
        "-c",
        _BOOT,
        str(channel_fd),
        role,
        "daemon" if daemon else "-",
    ]


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Start processes inside this block: they start with IGNORED_SIGNALS blocked (a signal
    mask survives fork and exec), until they ignore them (boot.run_worker,
    runtime.process_main): a new interpreter spends tens of milliseconds before its first line,
    where any of them would end it. In this thread the signals wait meanwhile, and are handled
    once the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, IGNORED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _SpawnPopen(popen_fork.Popen):
    """multiprocessing's Popen interface (poll, wait, terminate, kill, close, sentinel) over a
    spawned interpreter; popen_fork.Popen has all of it but the start."""

    method = "spawn"

    def _launch(self, process_obj: SpawnedProcess) -> None:
        # The sentinel: the child holds the write end, which closes when it exits.
        parent_r, child_w = os.pipe()
        try:
            keep = sorted({process_obj.channel_fd, child_w, *process_obj.pass_fds})
            argv = command_line(process_obj.channel_fd, process_obj.role, daemon=bool(process_obj.daemon))
            self.pid = util.spawnv_passfds(os.fsencode(argv[0]), argv, keep)
        except BaseException:
            os.close(parent_r)
            raise
        finally:
            os.close(child_w)
        self.sentinel = parent_r
        self.finalizer = util.Finalize(self, os.close, (parent_r,))


class SpawnedProcess(BaseProcess):
    """A device process (or warm worker) started by :func:`command_line`. ``channel_fd``: the
    child's end of its channel; ``pass_fds``: more descriptors it keeps, under the same
    numbers (its listening sockets, inherit.kept_across_exec)."""

    _start_method = "spawn"

    def __init__(self, channel_fd: int, role: Role, *, pass_fds: Iterable[int] = (), name: str | None = None) -> None:
        super().__init__(name=name)
        self.channel_fd = channel_fd
        self.role = role
        self.pass_fds = tuple(pass_fds)

    def start(self) -> None:
        with signals_blocked():
            super().start()

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> _SpawnPopen:
        assert isinstance(process_obj, SpawnedProcess)
        # As multiprocessing refuses, so that a module that starts devices when it is imported
        # does not start them again in every device process that imports it, each waiting on
        # the next: no child for a daemonic device process (boot.DAEMONIC; daemon is the
        # default), nor for one that multiprocessing is starting (re-running its parent's
        # __main__: a script that starts devices at module level, unguarded).
        boot = sys.modules.get("procdevices.devices.boot")
        if boot is not None and boot.DAEMONIC:
            raise RuntimeError("daemonic processes are not allowed to have children (a device process started one)")
        spawn._check_not_importing_main()  # type: ignore[attr-defined]
        return _SpawnPopen(process_obj)


def start_process(
    role: Role, *, name: str, daemon: bool = True, pass_fds: Iterable[int] = (), job: object = None
) -> tuple[SpawnedProcess, Channel]:
    """A device process (``device``) or warm worker (``worker``), started now and told its
    launcher's ``sys.path`` and ``sys.argv`` (boot.main's first message, as multiprocessing's
    spawn passes them), then its ``job`` (a device's, boot.run_device; a worker gets its own
    later, inherit.send_job); the launcher's end of its channel."""

    def start(child_end: Channel) -> SpawnedProcess:
        process = SpawnedProcess(child_end.fileno(), role, pass_fds=pass_fds, name=name)
        process.daemon = daemon
        process.start()
        return process

    process, conn = Channel.to_child(start)
    try:
        conn.send((sys.path, sys.argv))
        if job is not None:
            conn.send(job)
    except OSError:
        pass  # gone already: whoever waits for it sees how it ended
    except BaseException:
        conn.close()  # it exits on the closed pipe
        raise
    return process, conn


__all__ = ["SpawnedProcess", "command_line", "signals_blocked", "start_process"]
