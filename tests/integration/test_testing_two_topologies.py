"""Two topologies in one test (procdevices.testing) each get a directory, a run dir and a
supervisor of their own, even when their files are the same."""

from __future__ import annotations

from typing import Any

import zmq
from support.cli import request_reply

from procdevices.testing import topology

BROKER: dict[str, Any] = {
    "devices": {
        "broker": {
            "kind": "queue",
            "in": {"bind": ["ipc://{tmp}/clients.sock"]},
            "out": {"bind": ["ipc://{tmp}/workers.sock"]},
        }
    }
}


def test_two_topologies_at_once_have_their_own_directories(zmq_ctx: zmq.Context[Any]) -> None:
    with topology(BROKER) as first, topology(BROKER) as second:
        assert first.directory != second.directory
        assert first.run_dir != second.run_dir and first.config_path != second.config_path
        assert first.supervisor_pid != second.supervisor_pid
        for topo in (first, second):
            status = topo.status()["supervisor"]
            # Each answer comes from its own supervisor, through its own run dir.
            assert status["pid"] == topo.supervisor_pid
            assert status["run_dir"] == str(topo.run_dir)
            assert topo.endpoint("broker") == f"ipc://{topo.directory}/clients.sock"
            request_reply(zmq_ctx, topo.endpoint("broker"), topo.endpoint("broker", "out"))
        assert first.pid("broker") != second.pid("broker")
    assert first.returncode == 0 and second.returncode == 0
    assert not first.directory.exists() and not second.directory.exists()
