"""Device processes: always spawned, never orphaned, stopped cleanly by SIGTERM, deaf to SIGINT."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from support.devices import connect_pipe, health_when, recv_within

from procdevices import ProcessDevice, ProcessProxy

pytestmark = pytest.mark.timeout(30)


def has_exited(proc: psutil.Process) -> bool:
    """Gone, or a zombie: a process whose parent died is reaped by whoever adopts it, which
    may take a while (or never happen) in a container; it has exited all the same."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_exited(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Polls until every process has exited; returns those still running at the deadline."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not has_exited(p)]
        if pending:
            psutil.wait_procs(pending, timeout=0.02)  # a bounded poll, not a synchronisation
    return [p for p in pending if not has_exited(p)]


def run_helper(script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, check=False)


# -- spawn, whatever the global start method --------------------------------------------------


def test_spawn_even_when_the_parent_chose_fork(helper_script: Callable[[str], str]) -> None:
    done = run_helper(helper_script("fork_start_method.py"))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["start_method"] == "fork"
    assert result["forwarded"] is True
    # A fresh interpreter running procdevices' own spawn entry point (devices/spawnproc.py).
    assert any("procdevices.devices.boot" in part for part in result["cmdline"])
    assert result["exitcode"] == 0


# -- the parent dies without stopping its devices --------------------------------------------


def _start_orphaning_helper(script: str, directory: Path, mode: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    helper = subprocess.Popen(
        [sys.executable, script, str(directory), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert helper.stdout is not None
    line = helper.stdout.readline()
    if not line:
        helper.wait(10)
        raise AssertionError(f"helper reported nothing: {helper.stderr.read() if helper.stderr else ''}")
    return helper, json.loads(line)


def _files_of(report: dict[str, Any]) -> list[str]:
    files = []
    for device in report.values():
        files.append(device["control"][len("ipc://") :])
        files += [e[len("ipc://") :] for role in device["endpoints"].values() for e in role]
    return files


@pytest.mark.parametrize("mode", ["block", "exit"])
def test_parent_death_stops_every_device(
    mode: str, helper_script: Callable[[str], str], short_tmp: Path, zmq_ctx: zmq.Context[Any]
) -> None:
    helper, report = _start_orphaning_helper(helper_script("orphaned_devices.py"), short_tmp, mode)
    devices: dict[str, psutil.Process] = {}
    try:
        for name, info in report.items():
            # In "exit" mode a device may be gone already (its parent exited at once): fine.
            with contextlib.suppress(psutil.NoSuchProcess):
                devices[name] = psutil.Process(info["pid"])
        files = _files_of(report)
        # control + in + out (+ mon) per device
        assert len(files) == (4 + 4 + 3 if mode == "block" else 4 + 4)
        if mode == "block":
            assert set(devices) == {"proxy", "queue", "plain"}
            assert all(os.path.exists(f) for f in files)
            # The devices are up and forwarding while their parent lives.
            push = zmq_ctx.socket(zmq.PUSH)
            push.connect(report["proxy"]["endpoints"]["in"][0])
            pull = zmq_ctx.socket(zmq.PULL)
            pull.connect(report["proxy"]["endpoints"]["out"][0])
            push.send(b"alive")
            assert recv_within(pull) == [b"alive"]
            helper.kill()  # SIGKILL: no atexit, no multiprocessing clean-up
        helper.wait(10)
        if mode == "block":
            assert helper.returncode == -signal.SIGKILL
        else:
            assert helper.returncode == 0, helper.stderr.read() if helper.stderr else ""
        left = wait_exited(devices.values(), timeout=2.0)
        assert left == [], f"devices still running after their parent died: {left}"
        # Stopped through their own control path, which removes their ipc files.
        assert [f for f in files if os.path.exists(f)] == []
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(10)
        for stream in (helper.stdin, helper.stdout, helper.stderr):
            if stream is not None:
                stream.close()
        for proc in devices.values():  # never leave an orphan to the other tests
            if not has_exited(proc):
                proc.kill()


# -- signals ---------------------------------------------------------------------------------------


def test_sigterm_stops_a_device_cleanly(short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    dev = ProcessProxy(zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    dev.start()
    try:
        push, pull = connect_pipe(zmq_ctx, dev)
        push.send(b"before SIGTERM")
        assert recv_within(pull) == [b"before SIGTERM"]
        assert dev.control_endpoint is not None and dev.pid is not None
        control = dev.control_endpoint[len("ipc://") :]
        os.kill(dev.pid, signal.SIGTERM)
        dev.launcher.join(5)
        assert dev.exitcode == 0
        assert not os.path.exists(control)
        assert not os.path.exists(f"{short_tmp}/in")
        assert not os.path.exists(f"{short_tmp}/out")
    finally:
        dev.stop(timeout=5)  # already stopped: must not raise
    assert dev.exitcode == 0


def test_sigint_is_ignored_by_a_device(short_tmp: Path) -> None:
    dev = ProcessDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.start()
    try:
        assert dev.pid is not None
        os.kill(dev.pid, signal.SIGINT)  # what Ctrl-C sends to the whole process group
        # Still serving its control socket (answered after the signal was delivered) and alive.
        assert dev.ping() < 1.0
        dev.launcher.join(0.3)
        assert dev.is_alive()
    finally:
        dev.stop(timeout=5)
    assert dev.exitcode == 0


def test_sighup_is_ignored_by_a_device(short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    dev = ProcessProxy(zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    dev.start()
    try:
        assert dev.pid is not None
        pid = dev.pid
        os.kill(pid, signal.SIGHUP)  # what a terminal hangup sends (default action: die)
        # The PING is answered after the signal was delivered: the process survived it, and so
        # did its forwarding loop.
        health = health_when(dev, "running")
        assert (health["pid"], health["stopping"]) == (pid, False)
        push, pull = connect_pipe(zmq_ctx, dev)
        push.send(b"after SIGHUP")
        assert recv_within(pull) == [b"after SIGHUP"]
        assert dev.is_alive() and dev.pid == pid
    finally:
        dev.stop(timeout=5)
    assert dev.exitcode == 0


def test_non_daemonic_device_stops(short_tmp: Path) -> None:
    dev = ProcessDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.daemon = False
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.start()
    try:
        assert dev.launcher.daemon is False
        assert dev.ping() < 1.0
    finally:
        dev.stop(timeout=5)
    assert dev.exitcode == 0
    assert not dev.is_alive()
