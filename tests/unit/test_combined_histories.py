"""Behaviours where two events combine (restart then shutdown, missed probes across a restart,
traffic across a restart, a device removed while it owns listening sockets), driven on the fake
harness (tests/support/fakes.py: miss_probes, exit_mid_probe, shutdown_mid_restart).

Settings as in test_supervisor_histories.py: probe every 1 s, 0.5 s timeout, 2 failures allowed.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from support.fakes import Harness, topology

from procdevices.control.protocol import Command
from procdevices.supervisor.config import ConfigError, Topology
from procdevices.supervisor.listeners import Listeners
from procdevices.supervisor.traffic import COUNTERS


class Files:
    """What `reload` reads; the test swaps the topology."""

    def __init__(self, topo: Topology) -> None:
        self.current: Topology | ConfigError = topo

    def __call__(self, path: str | None) -> Topology:
        if isinstance(self.current, ConfigError):
            raise self.current
        return self.current


@pytest.fixture
def two(tmp_path: Path) -> Harness:
    return Harness(topology({"a": {}, "b": {}}, tmp_path)).start()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_shutdown_during_a_restart_finishes(two: Harness, signum: int) -> None:
    two.ready("a", "b")
    two.shutdown_mid_restart("a", signum)
    assert two.sup.shutting_down and two.state("b") == "STOPPING"
    two.exit("b", 0)
    two.exit("a", 0)  # the restart's stop completes during the shutdown
    assert two.launches("a") == 1, "a restart in progress started the device during the shutdown"
    assert two.state("a") == "STOPPED"
    assert two.sup.finished(), "the supervisor never finishes"


def test_down_during_a_restart_finishes(two: Harness) -> None:
    two.ready("a", "b")
    assert two.request("restart", name="a")["ok"]
    assert two.request("down")["ok"]
    two.exit("a", 0)
    two.exit("b", 0)
    assert two.launches("a") == 1 and two.sup.finished()


def test_a_replacement_process_starts_with_a_clean_probe_streak(two: Harness) -> None:
    two.ready("a", "b")
    two.miss_probes("a", 1)
    two.advance(1.5)
    assert two.child("a").probe.consecutive_failures == 1
    old = two.exit("a", 1)  # a crash: restarted at once (the first failure)
    two.advance(0.0)
    new = two.process("a")
    assert new is not old
    two.ready("a")
    two.miss_probes("a", 1)  # one missed probe is not a hang for the new process
    two.advance(1.5)
    assert new.signals == [], "the new process inherited its predecessor's missed probes"
    assert two.state("a") == "RUNNING" and not two.logged("hung")
    two.advance(3.0)  # it answers again: the streak is reset, it stays
    assert two.child("a").probe.consecutive_failures == 0


def test_missed_probes_that_are_not_in_a_row_are_no_hang(two: Harness) -> None:
    two.ready("a", "b")
    for _ in range(3):
        two.miss_probes("a", 1)
        two.advance(2.0)  # one missed, one answered
    assert two.process("a").signals == [] and two.state("a") == "RUNNING"
    two.miss_probes("a", 2)
    two.advance(3.0)
    assert two.process("a").signals == ["SIGKILL"]


def test_an_exit_mid_probe_under_restart_always_restarts_with_the_real_reason(two: Harness) -> None:
    two.ready("a", "b")
    two.exit_mid_probe("a", 3)
    assert two.state("a") == "BACKOFF"
    assert "exited with code 3" in two.child("a").last_exit and "hung" not in two.child("a").last_exit


def _counters(value: int) -> dict[str, int]:
    return dict.fromkeys(COUNTERS, value)


def test_traffic_totals_fold_the_old_process_at_its_exit(two: Harness) -> None:
    two.ready("a", "b")
    two.ping_reply["a"] = {"loop": "running", "stats": _counters(100)}
    two.advance(1.0)
    two.exit("a", -signal.SIGKILL)
    two.advance(0.0)
    two.ready("a")
    # The new process's first sample is higher on all eight counters than the old one's last:
    # no reset can be seen in the numbers, only the exit tells that they start from zero.
    two.ping_reply["a"] = {"loop": "running", "stats": _counters(250)}
    two.advance(1.0)
    assert two.child("a").traffic.totals() == _counters(350)
    assert two.request("status")["result"]["devices"][0]["traffic"]["totals"] == _counters(350)


# -- listening sockets the supervisor owns -----------------------------------------------------------


def test_a_device_removed_by_reload_releases_its_listening_sockets(tmp_path: Path) -> None:
    files = Files(topology({"keep": {}, "gone": {}}, tmp_path))
    assert isinstance(files.current, Topology)
    harness = Harness(files.current, load=files).start()
    harness.ready("keep", "gone")
    files.current = topology({"keep": {}}, tmp_path)
    assert harness.request("reload")["result"]["stopped"] == ["gone"]
    assert harness.launcher.forgotten == [], "released while its process still runs"
    control = harness.control("gone")
    harness.exit("gone", 0)
    assert harness.launcher.forgotten == ["gone"]
    assert control.closed, "the removed device's control connection was kept"


def test_a_device_removed_by_scale_releases_its_listening_sockets(tmp_path: Path) -> None:
    binds = {
        "in": {"bind": [f"ipc://{tmp_path}/p{{replica}}-in"]},
        "out": {"bind": [f"ipc://{tmp_path}/p{{replica}}-out"]},
    }
    topo = topology({"pipe": {"replicas": 3, **binds}}, tmp_path)
    harness = Harness(topo, load=Files(topo)).start()
    harness.ready("pipe.0", "pipe.1", "pipe.2")
    assert harness.request("scale", name="pipe", replicas=2)["result"]["stopped"] == ["pipe.2"]
    harness.exit("pipe.2", 0)
    assert harness.launcher.forgotten == ["pipe.2"]


def test_a_restarted_instance_keeps_its_sockets_for_its_successor(tmp_path: Path) -> None:
    files = Files(topology({"a": {}}, tmp_path))
    assert isinstance(files.current, Topology)
    harness = Harness(files.current, load=files).start()
    harness.ready("a")
    files.current = topology({"a": {"stop_linger": 0.5}}, tmp_path)
    assert harness.request("reload")["result"]["restarted"] == ["a"]
    harness.exit("a", 0)
    assert harness.launcher.forgotten == [], "the successor of the same name lost its addresses"
    assert harness.state("a") == "STARTING"


def test_a_retiring_device_never_started_is_released_at_once(tmp_path: Path) -> None:
    files = Files(topology({"keep": {}, "gone": {}}, tmp_path))
    assert isinstance(files.current, Topology)
    harness = Harness(files.current, load=files).start()
    harness.ready("keep")
    harness.exit("gone", 1)  # BACKOFF: no process
    files.current = topology({"keep": {}}, tmp_path)
    harness.request("reload")
    assert harness.launcher.forgotten == ["gone"]
    assert [c.name for c in harness.sup.children] == ["keep"]


def test_release_closes_an_owned_tcp_port(tmp_path: Path) -> None:
    (instance,) = topology({"pipe": {"in": {"bind": ["tcp://127.0.0.1:*"]}}}, tmp_path).instances()
    listeners = Listeners()
    try:
        (endpoint,) = listeners.own(instance).in_.bind
        port = int(endpoint.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        listeners.release("pipe")
        assert listeners.for_instance("pipe") == {}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        listeners.close()


def test_a_probe_is_not_sent_while_the_last_one_is_in_flight(two: Harness) -> None:
    two.ready("a", "b")
    two.advance_to_probe("a")
    assert two.control("a").sent.count(Command.PING) == 1
