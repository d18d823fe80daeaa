"""Small helpers shared by the device-layer tests."""

from __future__ import annotations

import os
import shutil
import sysconfig
import time
from pathlib import Path
from typing import Any

import zmq


def recv_within(sock: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes]:
    assert sock.poll(int(timeout * 1000)), f"nothing arrived within {timeout}s"
    return sock.recv_multipart()


def connect_pipe(ctx: zmq.Context[Any], dev: Any) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A PUSH into the device's first in endpoint and a PULL from its first out endpoint."""
    push = ctx.socket(zmq.PUSH)
    push.connect(dev.endpoints["in"][0])
    pull = ctx.socket(zmq.PULL)
    pull.connect(dev.endpoints["out"][0])
    return push, pull


def health_when(dev: Any, state: str, timeout: float = 10.0) -> dict[str, Any]:
    """PINGs ``dev`` until its loop is in ``state``; returns that reply. (On a busy machine a
    loop that has not been scheduled for 50 ms reads as "blocked" for a moment.)"""
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, Any] = dev.health()
        if health["loop"] == state:
            return health
        assert time.monotonic() < deadline, f"the loop never became {state}: {health}"


def c_toolchain() -> tuple[bool, str]:
    """Whether this machine can build procdevices' C extension (the monitored queue's C loop):
    the compiler setuptools uses (``$CC``, else Python's own) on PATH, and Python's headers;
    and what was found, for messages."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "").split()
    compiler = shutil.which(cc[0]) if cc else None
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return compiler is not None and headers.is_file(), f"compiler {cc[:1]} at {compiler}; {headers}"


def run_and_stop(pending: Any, control: str) -> None:
    """Wait until the device of ``pending`` (a launch.PendingStart) is ready, stop it through
    its control socket at ``control``, and check that its process ended cleanly."""
    from multiprocessing.connection import wait

    try:
        assert wait(pending.waitables(), 20), "the device was not ready in time"
        pending.result()
        stop_through(control)
        pending.process.join(10)
        assert pending.process.exitcode == 0
    finally:
        if pending.process.is_alive():
            pending.process.kill()
            pending.process.join()
        pending.conn.close()


def stop_through(control: str) -> None:
    """Ask the device whose control socket is ``control`` to stop."""
    from procdevices.control.client import ControlClient
    from procdevices.control.protocol import Command

    client = ControlClient(control)
    try:
        client.request(Command.STOP, 5.0)
    finally:
        client.close()
