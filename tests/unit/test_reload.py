"""Reload and scale: the plan (pure) and what the supervisor does with it (fakes, no process)."""

from __future__ import annotations

import dataclasses
import itertools
import signal
from pathlib import Path
from typing import Any

import pytest
from support.fakes import Harness, make_child, topology

from procdevices.control.protocol import Command, ErrorCode, ProtocolError
from procdevices.supervisor.child import Child
from procdevices.supervisor.config import ConfigError, DeviceConfig, SocketSpec, Topology
from procdevices.supervisor.reload import instances, plan


def ipc(base: Path, name: str, replicated: bool = False) -> dict[str, Any]:
    suffix = "-{replica}" if replicated else ""
    return {"in": {"bind": [f"ipc://{base}/{name}{suffix}-in"]}, "out": {"bind": [f"ipc://{base}/{name}{suffix}-out"]}}


def test_the_plan_names_every_kind_of_change(tmp_path: Path) -> None:
    old = topology({"same": {}, "tuned": {}, "rewired": {}, "gone": {}}, tmp_path)
    new = topology(
        {
            "same": {},
            "tuned": {"probe": {"interval": 3.0}},  # supervision only: the process stays
            "rewired": {"kind": "queue", **ipc(tmp_path, "rewired")},  # the process runs differently
            "added": {},
        },
        tmp_path,
    )
    result = plan(instances(old), instances(new))
    assert result.summary() == {
        "unchanged": ["same"],
        "updated": ["tuned"],
        "restarted": ["rewired"],
        "stopped": ["gone"],
        "started": ["added"],
    }


@pytest.mark.parametrize(
    ("before", "after", "started", "stopped", "unchanged"),
    [
        (2, 3, ["pipe.2"], [], ["pipe.0", "pipe.1"]),
        (3, 2, [], ["pipe.2"], ["pipe.0", "pipe.1"]),
        (1, 2, ["pipe.0", "pipe.1"], ["pipe"], []),  # the single instance is renamed
    ],
)
def test_replicas_change_only_the_difference(
    tmp_path: Path, before: int, after: int, started: list[str], stopped: list[str], unchanged: list[str]
) -> None:
    def topo(n: int) -> Topology:
        return topology({"pipe": {"replicas": n, **ipc(tmp_path, "pipe", replicated=True)}}, tmp_path)

    summary = plan(instances(topo(before)), instances(topo(after))).summary()
    assert (summary["started"], summary["stopped"], summary["unchanged"]) == (started, stopped, unchanged)


class Files:
    """What `reload` reads: the test swaps the topology (or makes it invalid)."""

    def __init__(self, topo: Topology) -> None:
        self.current: Topology | ConfigError = topo

    def __call__(self, path: str | None) -> Topology:
        if isinstance(self.current, ConfigError):
            raise self.current
        return self.current


def test_reload_keeps_unchanged_processes_and_applies_the_rest(tmp_path: Path) -> None:
    files = Files(topology({"same": {}, "rewired": {}, "gone": {}}, tmp_path))
    harness = Harness(files.current if isinstance(files.current, Topology) else topology({}, tmp_path), load=files)
    harness.start()
    harness.ready("same", "rewired", "gone")
    same, rewired, gone = harness.process("same"), harness.process("rewired"), harness.process("gone")
    files.current = topology(
        {"same": {}, "rewired": {"kind": "queue", **ipc(tmp_path, "rewired")}, "new": {}}, tmp_path
    )

    reply = harness.request("reload")
    assert reply["ok"], reply
    assert reply["result"]["restarted"] == ["rewired"] and reply["result"]["started"] == ["new"]
    assert harness.process("same") is same, "an unchanged device lost its process"
    assert harness.state("rewired") == "STOPPING" and harness.state("gone") == "STOPPING"
    assert harness.state("new") == "STARTING"
    # The old rewired process holds its addresses until it exits: only then the new one starts.
    launches = harness.launches("rewired")
    harness.exit("rewired", 0)
    assert harness.launches("rewired") == launches + 1 and harness.child("rewired").config.kind == "queue"
    assert harness.process("rewired") is not rewired
    harness.exit("gone", 0)
    assert [c.name for c in harness.sup.children] == ["same", "new", "rewired"]
    assert same.signals == [] and gone.signals == []
    assert harness.logged("reloaded <test>: restarted rewired; stopped gone; started new")


def test_an_invalid_topology_changes_nothing(tmp_path: Path) -> None:
    files = Files(topology({"a": {}}, tmp_path))
    harness = Harness(topology({"a": {}}, tmp_path), load=files).start()
    harness.ready("a")
    process = harness.process("a")
    files.current = ConfigError("/srv/topo.toml", "devices.a.kind", "unknown kind 'quoue'")
    reply = harness.request("reload")
    assert reply["ok"] is False and reply["code"] == ErrorCode.INVALID_CONFIG.value
    assert "devices.a.kind" in reply["error"] and "\n" not in reply["error"]
    assert harness.logged("reload refused, nothing changed: invalid configuration: /srv/topo.toml")
    assert harness.process("a") is process and harness.state("a") == "RUNNING"


def test_sighup_reloads(tmp_path: Path) -> None:
    files = Files(topology({"a": {}}, tmp_path))
    harness = Harness(topology({"a": {}}, tmp_path), load=files).start()
    harness.ready("a")
    files.current = topology({"a": {}, "b": {}}, tmp_path)
    harness.sup.on_signal(signal.SIGHUP)
    assert not harness.sup.shutting_down
    assert harness.state("b") == "STARTING"


def test_supervision_settings_take_effect_without_a_restart(tmp_path: Path) -> None:
    files = Files(topology({"a": {}}, tmp_path))
    harness = Harness(topology({"a": {}}, tmp_path), load=files).start()
    harness.ready("a")
    files.current = topology({"a": {"restart": "never"}}, tmp_path)
    assert harness.request("reload")["result"]["updated"] == ["a"]
    harness.exit("a", 1)
    assert harness.state("a") == "EXITED", "the new restart policy was not applied"


def test_scale_up_and_down_and_status_shows_the_difference_from_the_file(tmp_path: Path) -> None:
    topo = topology({"pipe": {"replicas": 2, **ipc(tmp_path, "pipe", replicated=True)}}, tmp_path)
    harness = Harness(topo, load=Files(topo)).start()
    harness.ready("pipe.0", "pipe.1")
    first = harness.process("pipe.0")
    reply = harness.request("scale", name="pipe", replicas=4)
    assert reply["result"]["started"] == ["pipe.2", "pipe.3"], reply
    assert harness.process("pipe.0") is first
    assert harness.request("status")["result"]["supervisor"]["scaled"] == {"pipe": {"file": 2, "running": 4}}
    harness.ready("pipe.2", "pipe.3")
    reply = harness.request("scale", name="pipe", replicas=1)
    assert sorted(reply["result"]["stopped"]) == ["pipe.0", "pipe.1", "pipe.2", "pipe.3"]
    assert reply["result"]["started"] == ["pipe"]


def test_scale_refuses_replicas_that_would_share_an_address(tmp_path: Path) -> None:
    harness = Harness(topology({"pipe": {}}, tmp_path)).start()  # its binds have no {replica}
    with pytest.raises(ProtocolError):
        harness.sup.scale("pipe", 2)
    reply = harness.request("scale", name="pipe", replicas=2)
    assert reply["code"] == ErrorCode.REFUSED.value and "{replica}" in reply["error"]
    assert harness.request("scale", name="nope", replicas=2)["code"] == ErrorCode.NO_SUCH_DEVICE.value
    assert harness.request("scale", name="pipe", replicas=0)["code"] == ErrorCode.BAD_REQUEST.value


def resolving_ports(instance: DeviceConfig, device: str) -> Child:
    """As `up` makes a child: its `tcp://HOST:*` binds resolved to the port the supervisor
    listens on (listeners.py), so the child's config differs from the file's."""
    ports = itertools.count(41000)

    def resolve(spec: SocketSpec | None) -> SocketSpec | None:
        if spec is None:
            return None
        return dataclasses.replace(
            spec, bind=tuple(e.replace(":*", f":{next(ports)}") if e.endswith(":*") else e for e in spec.bind)
        )

    resolved = dataclasses.replace(
        instance, in_=resolve(instance.in_) or instance.in_, out=resolve(instance.out), mon=resolve(instance.mon)
    )
    return make_child(resolved, device)


STAR = {"in": {"bind": ["tcp://127.0.0.1:*"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}}


def test_an_unchanged_star_device_survives_reload_sighup_and_scaling_another(tmp_path: Path) -> None:
    """Issue: the running child's config carries the resolved port, the file says `*`; the
    two compared unequal, so every reload restarted the device (and lost what it queued)."""
    other = {"replicas": 1, **ipc(tmp_path, "other", replicated=True)}
    topo = topology({"star": STAR, "other": other}, tmp_path)
    files = Files(topo)
    harness = Harness(topo, load=files, make_child=resolving_ports).start()
    harness.ready("star", "other")
    star = harness.process("star")
    assert harness.child("star").config.in_.bind != ("tcp://127.0.0.1:*",), "the fake must resolve the port"

    reply = harness.request("reload")
    assert reply["ok"] and reply["result"]["unchanged"] == ["other", "star"], reply
    harness.sup.on_signal(signal.SIGHUP)
    assert harness.logged("reloaded <test>: nothing changed")
    # A supervision-only change keeps the process and the resolved port.
    other = {"replicas": 1, **ipc(tmp_path, "other", replicated=True)}
    files.current = topology({"star": {**STAR, "stop_timeout": 3.0}, "other": other}, tmp_path)
    assert harness.request("reload")["result"]["updated"] == ["star"]
    assert harness.child("star").config.stop_timeout == 3.0
    assert harness.child("star").config.in_.bind[0].startswith("tcp://127.0.0.1:41")
    reply = harness.request("scale", name="other", replicas=3)
    assert reply["ok"] and reply["result"]["unchanged"] == ["star"], reply
    assert harness.process("star") is star and star.signals == []
    assert Command.STOP not in harness.control("star").sent
