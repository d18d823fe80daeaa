"""Which loop a monitored queue runs is never a secret: ``procdevices --version`` says it (and
why not C), ``Device.info()`` and ``status --json`` carry ``mq_loop``, and a monitored queue
that starts on the slower Python loop logs a warning (in its own output, and in the
supervisor's log). ``mq_loop`` runs each test with the C loop and with the Python loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import zmq
from support.cli import CLI, RUN_DIR, Up, describe, write_topology

from procdevices import ProcessMonitoredQueue, ProcessProxy
from procdevices.devices import cloop

pytestmark = pytest.mark.timeout(60)

TOPOLOGY = """\
[devices.watched]
kind = "monitored_queue"
in  = { bind = ["ipc://watched-in"] }
out = { bind = ["ipc://watched-out"] }
mon = { bind = ["ipc://watched-mon"] }

[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://pipe-in"] }
out = { bind = ["ipc://pipe-out"] }
"""

WARNING = "monitored queue runs the slower Python loop"


def test_version_names_the_forwarding_loop_libzmqs_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(cloop.PROXY_LOOP_ENV, "libzmq")
    result = subprocess.run([*CLI, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, describe(result)
    expected = "PROCDEVICES_PROXY_LOOP=libzmq" if cloop.C_LOOP_UNAVAILABLE is None else cloop.C_LOOP_UNAVAILABLE
    assert f"; forwarding loop: libzmq ({expected}); monitored-queue loop:" in result.stdout, result.stdout


def test_version_names_the_loop_and_why_not_c(mq_loop: str, tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, describe(result)
    # The other devices' loop (cloop.py): C wherever the monitored queue's C loop could run.
    assert ("; forwarding loop: c;" in result.stdout) == (cloop.C_LOOP_UNAVAILABLE is None), result.stdout
    if mq_loop == "c":
        assert result.stdout.rstrip().endswith("; monitored-queue loop: c)"), result.stdout
    else:
        assert result.stdout.rstrip().endswith("; monitored-queue loop: python (PROCDEVICES_MQ_LOOP=python))"), (
            result.stdout
        )


def test_device_info_carries_the_loop_of_a_monitored_queue(mq_loop: str, short_tmp: Path) -> None:
    queue = ProcessMonitoredQueue(zmq.PULL, zmq.PUSH, zmq.PUB)
    queue.bind_in(f"ipc://{short_tmp}/in")
    queue.bind_out(f"ipc://{short_tmp}/out")
    proxy = ProcessProxy(zmq.PULL, zmq.PUSH, zmq.PUB)
    proxy.bind_in(f"ipc://{short_tmp}/p-in")
    proxy.bind_out(f"ipc://{short_tmp}/p-out")
    queue.start()
    try:
        proxy.start()
        try:
            assert queue.info()["mq_loop"] == mq_loop
            assert "mq_loop" not in proxy.info(), "a proxy runs libzmq's loop, no monitored queue"
        finally:
            proxy.stop()
    finally:
        queue.stop()


def test_status_shows_the_loop_and_the_python_loop_is_warned_about(mq_loop: str, short_tmp: Path) -> None:
    config = write_topology(short_tmp, TOPOLOGY)
    with Up(config) as up:
        devices = up.wait_states()
        assert devices["watched"]["mq_loop"] == mq_loop, devices["watched"]
        assert devices["pipe"]["mq_loop"] is None, devices["pipe"]
        status = json.loads(up.cli("status", "watched", "--json").stdout)
        assert [d["mq_loop"] for d in status["devices"]] == [mq_loop]
        table = up.cli("status").stdout
        assert ("RUNNING (python loop)" in table) == (mq_loop == "python"), table
        device_log = (short_tmp / RUN_DIR / "logs" / "watched.log").read_text()
        if mq_loop == "python":
            assert f"watched: its {WARNING}" in up.log(), up.log_tail()
            assert "monitored queue: running the slower Python loop (PROCDEVICES_MQ_LOOP=python)" in device_log
        else:
            assert WARNING not in up.log(), up.log_tail()
            assert "Python loop" not in device_log, device_log
        up.signal(signal.SIGTERM)
        assert up.wait_exit() == 0, up.log_tail()
    assert os.environ.get("PROCDEVICES_MQ_LOOP") == ("python" if mq_loop == "python" else None)
