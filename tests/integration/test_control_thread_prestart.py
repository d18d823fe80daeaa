"""A warm worker starts its device's control thread while idle (runtime.ControlThread): the
device it becomes serves its control socket from that thread, started before the job came,
instead of starting one between building its sockets and forwarding (a restart's critical
path). In-process: the runtime of a whole-process device, driven as its worker would."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import zmq
from support.cli import SETTLE_TIMEOUT, readable, wait_for

from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command
from procdevices.devices import runtime as rt
from procdevices.devices.launch import WorkerPool


@pytest.mark.timeout(30)
def test_a_prestarted_control_thread_serves_the_device(tmp_path: Path) -> None:
    rt.prestart_control_thread()
    prestarted = rt._prestarted
    assert prestarted is not None and prestarted.thread.is_alive()  # idle, waiting for its loop
    reports: list[rt.ReadyInfo] = []
    reporter = rt.EventReporter()
    endpoint = f"ipc://{tmp_path}/ctl.sock"
    runtime = rt.DeviceRuntime(endpoint, reporter, whole_process=True)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    runtime.adopt_context(ctx, made_for_device=True)
    client_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    client = ControlClient(endpoint, client_ctx)
    try:
        threads_before = threading.active_count()
        runtime.sockets_built(ctx, False, lambda: {"kind": "test"})
        assert reporter.event.is_set() and reporter.info is not None
        reports.append(reporter.info)
        # The control loop runs in the thread started ahead, and no other thread was started.
        assert runtime._control_thread is prestarted.thread
        assert threading.active_count() == threads_before
        assert rt._prestarted is None  # used once: a later device of this process starts its own
        # ... and it answers.
        reply = client.request(Command.PING, 5.0)
        assert reply["pid"] == reports[0].pid
    finally:
        client.close()
        client_ctx.term()
        runtime.finish()
        runtime.terminate_context()
        unused = rt._take_prestarted()
        if unused is not None:  # the runtime did not take it: let its thread end
            unused.run(lambda: None)
    assert not prestarted.thread.is_alive()  # finish() ended the loop and joined the thread


@pytest.mark.timeout(30)
def test_without_a_prestarted_thread_the_device_starts_its_own(tmp_path: Path) -> None:
    assert rt._prestarted is None
    reporter = rt.EventReporter()
    runtime = rt.DeviceRuntime(f"ipc://{tmp_path}/ctl.sock", reporter, whole_process=True)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    runtime.adopt_context(ctx, made_for_device=True)
    try:
        runtime.sockets_built(ctx, False, dict)
        assert reporter.info is not None
        assert runtime._control_thread is not None and runtime._control_thread.is_alive()
    finally:
        runtime.finish()
        runtime.terminate_context()
    assert not runtime._control_thread.is_alive()


@pytest.mark.timeout(60)
def test_an_idle_warm_worker_holds_its_control_thread() -> None:
    pool = WorkerPool(1)
    pool.refill()
    (worker,) = list(pool.processes())
    assert worker.pid is not None
    tasks = f"/proc/{worker.pid}/task"
    try:
        # An idle worker: its main thread waiting for a job, and the control thread started
        # ahead (nothing else in it makes a thread: no context, the imports make none).
        wait_for(
            lambda: len(os.listdir(tasks)) == 2,
            SETTLE_TIMEOUT,
            "the idle warm worker's control thread",
            wake=readable(worker.sentinel),
            detail=lambda: f"threads: {os.listdir(tasks)}",
        )
    finally:
        pool.close()
    assert not worker.is_alive()
