"""The supervisor restarts a device over its memory limit, and the next `up` cleans up what
an unclean end left behind: a device still running from a recorded run, stale socket files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from support.cli import CLI, RUN_DIR, Up, identify, push_pull, write_topology
from support.topologies import PIPELINE

from procdevices.supervisor.runstate import RUN_TOKEN_ENV


@pytest.mark.timeout(60)
def test_next_up_stops_a_recorded_leftover_and_removes_stale_sockets(
    short_tmp: Path, zmq_ctx: zmq.Context[Any]
) -> None:
    config = write_topology(short_tmp, PIPELINE, pool_size=0)
    run_dir = short_tmp / RUN_DIR
    # A leftover: the same device, still running from an earlier run (as `run` in the
    # foreground here), carrying that run's token and recorded in the run state the way a
    # supervisor records its devices.
    token = "0123456789abcdef"
    leftover = subprocess.Popen(
        [*CLI, "run", "pipe", "-c", str(config)],
        cwd=short_tmp,
        env={**os.environ, RUN_TOKEN_ENV: token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert leftover.stdout is not None
        assert "ready" in leftover.stdout.readline()
        proc = psutil.Process(leftover.pid)
        (run_dir / "state.json").write_text(
            json.dumps(
                {
                    "token": token,
                    "supervisor": {"pid": 1, "create_time": 0.0},
                    "devices": {
                        "pipe": {
                            "pid": proc.pid,
                            "create_time": proc.create_time(),
                            "control_endpoint": f"ipc://{run_dir}/ctl/pipe.sock",
                        }
                    },
                }
            )
        )
        # And a socket file nobody listens on any more.
        stale = run_dir / "ctl" / "gone.sock"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(stale))
        assert stale.exists()

        with Up(config) as up:
            devices = up.wait_states({"pipe": "RUNNING"})
            # The leftover was stopped through its control socket, cleanly.
            assert leftover.wait(10) == 0
            log = up.log()
            assert f"stopped leftover device pipe (pid {proc.pid}) through its control socket" in log, log
            assert f"removed stale socket file {stale}" in log, log
            assert not stale.exists()
            assert devices["pipe"]["pid"] != proc.pid
            push_pull(zmq_ctx, f"ipc://{short_tmp}/pipe-in", f"ipc://{short_tmp}/pipe-out", [b"x"])
    finally:
        if leftover.poll() is None:
            leftover.kill()
        leftover.wait(10)
        leftover.stdout.close() if leftover.stdout else None
        leftover.stderr.close() if leftover.stderr else None


@pytest.mark.timeout(60)
def test_a_reused_pid_is_never_touched(short_tmp: Path) -> None:
    # The run state names a live process of ours, but with another create time: a pid that
    # was reused after the recorded device died. `up` must leave it alone.
    config = write_topology(short_tmp, PIPELINE, pool_size=0)
    run_dir = short_tmp / RUN_DIR
    run_dir.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        created = psutil.Process(bystander.pid).create_time()
        (run_dir / "state.json").write_text(
            json.dumps(
                {
                    "supervisor": {"pid": 1, "create_time": 0.0},
                    "devices": {"pipe": {"pid": bystander.pid, "create_time": created - 100.0}},
                }
            )
        )
        with Up(config) as up:
            up.wait_states({"pipe": "RUNNING"})
            assert identify(bystander.pid) is not None
            assert bystander.poll() is None
            assert "leftover" not in up.log()
    finally:
        bystander.kill()
        bystander.wait(10)


@pytest.mark.timeout(60)
def test_a_device_that_dies_before_ready_is_retried_not_fatal_at_once(short_tmp: Path) -> None:
    # A spawned interpreter needs far more than 5 ms (this session's leaner device starts in
    # ~70 ms: 50 ms was no longer sure to be too short): every start is killed by
    # start_timeout before it reports. That is an exit like any other (another try may succeed), so the
    # restart policy applies until the intensity limit, not FATAL on the first try.
    config = write_topology(
        short_tmp,
        PIPELINE
        + """
[devices.slow]
kind = "queue"
in = { bind = ["ipc://slow-in"] }
out = { bind = ["ipc://slow-out"] }
start_timeout = 0.005
intensity = { max_restarts = 2, within = 60.0 }
""",
        pool_size=0,
    )
    with Up(config) as up:
        slow = up.wait_states({"pipe": "RUNNING", "slow": "FATAL"})["slow"]
        assert slow["restarts"] == 2, slow
        assert slow["last_exit"] == "not ready within start_timeout 0.005s; gave up: 3 restarts within 60s (limit 2)", (
            slow
        )
        assert up.log().count("not ready within start_timeout 0.005s; killing pid") == 3, up.log_tail()
