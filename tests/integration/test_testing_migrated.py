"""Two of the supervisor's fault tests (tests/test_supervisor_faults.py), written with the
``procdevices_topology`` fixture the way a user would write them: the project's own suite
exercises the toolkit every day. The originals stay; these use no helper of the suite for the
topology (no fixed paths, no Up, no write_topology)."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import psutil
import pytest
from support.cli import Ctx, push_pull, request_reply
from support.topologies import NEIGHBOURS

from procdevices.pytest_plugin import TopologyFactory
from procdevices.testing import LiveTopology, TopologyError


def forwards(ctx: Ctx, topo: LiveTopology) -> None:
    request_reply(ctx, topo.endpoint("broker"), topo.endpoint("broker", "out"))
    push_pull(ctx, topo.endpoint("pipe"), topo.endpoint("pipe", "out"), [b"work"])


def test_killed_and_hung_devices_are_replaced(procdevices_topology: TopologyFactory, zmq_ctx: Ctx) -> None:
    topo = procdevices_topology(NEIGHBOURS)
    forwards(zmq_ctx, topo)

    killed = topo.pid("broker")
    topo.kill("broker")
    broker = topo.wait_state("broker", "RUNNING")["broker"]
    assert broker["pid"] != killed and broker["restarts"] == 1
    assert "SIGKILL" in broker["last_exit"], broker
    forwards(zmq_ctx, topo)

    # SIGSTOP: alive but silent; the fast probes of the toolkit (0.2 s, 2 failures) find it hung.
    hung = psutil.Process(topo.pid("pipe"))
    hung.suspend()
    try:

        def replaced(status: dict[str, Any]) -> dict[str, Any] | None:
            pipe: dict[str, Any] = next(d for d in status["devices"] if d["name"] == "pipe")
            return pipe if pipe["state"] == "RUNNING" and pipe["pid"] != hung.pid and pipe["restarts"] == 1 else None

        pipe = topo.wait(replaced, "the stopped pipe to be found hung and replaced", timeout=15)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            hung.resume()
    assert "hung" in pipe["last_exit"], pipe
    assert f"pipe: hung: 2 liveness probes unanswered; killing pid {hung.pid}" in topo.log
    assert topo.device("broker")["restarts"] == 1  # the neighbour was not disturbed
    forwards(zmq_ctx, topo)


def test_a_device_that_cannot_bind_is_fatal_at_once_and_the_others_keep_forwarding(
    procdevices_topology: TopologyFactory, zmq_ctx: Ctx
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        topo = procdevices_topology(
            NEIGHBOURS
            + f"""
[devices.blocked]
kind = "streamer"
in  = {{ bind = ["tcp://127.0.0.1:{port}"] }}
out = {{ bind = ["tcp://127.0.0.1:*"] }}
""",
            states={"blocked": "FATAL"},
        )
        blocked = topo.device("blocked")
        assert f"bind to tcp://127.0.0.1:{port} failed: Address already in use" in blocked["last_exit"], blocked
        assert blocked["pid"] is None and blocked["restarts"] == 0
        assert topo.endpoints["blocked"] == {}
        forwards(zmq_ctx, topo)
        assert topo.cli("status").returncode == 3
        assert topo.log.count("blocked: could not start") == 1  # not retried
        with pytest.raises(TopologyError, match="device blocked is FATAL"):
            topo.wait_state(None, "RUNNING", timeout=5)
        with pytest.raises(TopologyError, match="no device named 'nosuch'"):
            topo.wait_states({"nosuch": "STOPPED"})
