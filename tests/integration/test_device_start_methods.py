"""``[supervisor] start_method = "forkserver"``: devices forked from a clean fork server (a fresh
interpreter that has imported pyzmq and procdevices, and has no zmq.Context and no thread)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from support.cli import Up, describe, processes_exit, push_pull, request_reply_monitored, wait_for, write_topology

from procdevices.devices.launch import FORKSERVER_PRELOAD

pytestmark = pytest.mark.timeout(90)

TOPOLOGY = """\
[devices.pipe]
kind = "streamer"
replicas = 2
in  = { bind = ["ipc://pipe-{replica}-in.sock"] }
out = { bind = ["ipc://pipe-{replica}-out.sock"] }

[devices.audited]
kind = "monitored_queue"
in  = { bind = ["ipc://audited-in.sock"] }
out = { bind = ["ipc://audited-out.sock"] }
mon = { bind = ["ipc://audited-mon.sock"] }
"""


def forkserver_topology(directory: Path) -> Path:
    config = write_topology(directory, TOPOLOGY)
    text = config.read_text().replace("[supervisor]\n", '[supervisor]\nstart_method = "forkserver"\n', 1)
    config.write_text(text)
    return config


def test_the_fork_server_preload_creates_no_context_and_no_thread() -> None:
    probe = (
        "import os, json, sys\n"
        f"for name in {FORKSERVER_PRELOAD!r}:\n"
        "    __import__(name)\n"
        "import zmq\n"
        "print(json.dumps({'threads': len(os.listdir('/proc/self/task')),\n"
        "                  'instance': zmq.Context._instance is not None}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"threads": 1, "instance": False}


def _forkserver_child(pid: int) -> bool:
    return "forkserver" in " ".join(psutil.Process(pid).cmdline())


def test_up_with_forkserver_forwards_steers_and_stops_cleanly(short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    config = forkserver_topology(short_tmp)
    with Up(config) as up:
        devices = up.wait_states()
        names = ["pipe.0", "pipe.1", "audited"]
        assert list(devices) == names
        for name, d in devices.items():
            assert _forkserver_child(d["pid"]), f"{name} was not forked by the fork server"
            assert psutil.Process(d["pid"]).ppid() != up.pid, f"{name} is a direct child of the supervisor"
        push_pull(zmq_ctx, f"ipc://{short_tmp}/pipe-0-in.sock", f"ipc://{short_tmp}/pipe-0-out.sock", [b"a", b"b"])
        copy = request_reply_monitored(
            zmq_ctx,
            f"ipc://{short_tmp}/audited-in.sock",
            f"ipc://{short_tmp}/audited-out.sock",
            f"ipc://{short_tmp}/audited-mon.sock",
        )
        assert copy[0] in (b"in", b"out"), copy
        stats = up.cli("stats", "--json")
        assert stats.returncode == 0, describe(stats)
        # The probe runs on forked devices too: they stay RUNNING, not restarted.
        for name, d in up.devices().items():
            assert d["state"] == "RUNNING" and d["restarts"] == 0, (name, d)
        down = up.cli("down", timeout=20)
        assert down.returncode == 0, describe(down)
        up.assert_clean_stop(names)


def test_forked_devices_stop_when_their_supervisor_is_killed(short_tmp: Path) -> None:
    config = forkserver_topology(short_tmp)
    with Up(config) as up:
        devices = up.wait_states()
        procs = [psutil.Process(d["pid"]) for d in devices.values()]
        up.signal(signal.SIGKILL)
        assert up.wait_exit() == -signal.SIGKILL

        def gone(p: psutil.Process) -> bool:
            try:
                return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:  # it ended between the two questions
                return True

        def all_gone() -> bool:
            return all(gone(p) for p in procs)

        # A forked device's multiprocessing parent is the fork server: it must follow the
        # supervisor itself (by pid), not the server.
        wait_for(
            all_gone,
            10.0,
            "the forked devices to stop after their supervisor's SIGKILL",
            wake=processes_exit(lambda: procs),
        )
