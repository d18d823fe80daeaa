"""Reload and scale: the plan (pure) and what the supervisor does with it (fakes, no process)."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path
from typing import Any

import pytest
from support.fakes import Harness, make_child, topology

from procdevices.control.protocol import Command, ErrorCode, ProtocolError
from procdevices.supervisor.child import Child
from procdevices.supervisor.config import IPC_PATH_MAX, ConfigError, DeviceConfig, SocketSpec, Topology
from procdevices.supervisor.config.model import StartMethod
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
    assert reply["code"] == ErrorCode.INVALID_CONFIG.value and "{replica}" in reply["error"]
    assert harness.request("scale", name="nope", replicas=2)["code"] == ErrorCode.NO_SUCH_DEVICE.value
    assert harness.request("scale", name="pipe", replicas=0)["code"] == ErrorCode.INVALID_CONFIG.value


def _star_binds(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {"star": STAR}


def _control_path_limit(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """A device whose name just fits the control socket path: `NAME.1.sock` does not."""
    room = IPC_PATH_MAX - len(f"{tmp_path}/run/ctl/.sock")
    assert 3 <= room <= 63, "tmp_path too long or too short for this case"
    return {"n" * room: STAR}


def _replica_port(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """`{replica}` in a port: replica 6 asks for port 65536."""
    binds = {"in": {"bind": ["tcp://127.0.0.1:6553{replica}"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}}
    return {"port": binds}


def _replica_ipc_path(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """An ipc path of exactly the limit with a one-digit replica: replica 10 is a byte over."""
    stem = f"{tmp_path}/"
    path = stem + "p" * (IPC_PATH_MAX - len(stem) - 1) + "{replica}"
    assert len(path.replace("{replica}", "0")) == IPC_PATH_MAX
    return {"long": {"in": {"bind": [f"ipc://{path}"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}}}


@pytest.mark.parametrize(
    ("case", "replicas", "expected"),
    [
        (_control_path_limit, 2, "unix socket paths are limited to 107 bytes"),
        (_replica_port, 7, "port must be 1-65535 or *, got '65536'"),
        (_replica_ipc_path, 11, "is 108 bytes, but unix socket paths are limited to 107 bytes"),
        (_star_binds, 65, "between 1 and 64, got 65"),
    ],
    ids=["control-socket-path", "replica-port", "replica-ipc-path", "replicas-65"],
)
def test_scale_is_refused_with_the_message_check_gives_and_changes_nothing(
    tmp_path: Path, case: Any, replicas: int, expected: str
) -> None:
    devices = case(tmp_path)
    (name,) = devices
    files = Files(topology({**devices, "other": STAR}, tmp_path))
    assert isinstance(files.current, Topology)
    harness = Harness(files.current, load=files).start()
    harness.ready(name, "other")
    before = {c.name: c.process for c in harness.sup.children}
    launched = len(harness.launcher.launched)
    running_topology = harness.sup.running_topology
    # What `check` says of a file that asks for the same number of replicas.
    with pytest.raises(ConfigError) as check:
        topology({name: {**devices[name], "replicas": replicas}, "other": STAR}, tmp_path)
    assert expected in str(check.value)

    reply = harness.request("scale", name=name, replicas=replicas)

    assert reply["ok"] is False and reply["code"] == ErrorCode.INVALID_CONFIG.value, reply
    assert reply["error"] == f"invalid configuration: {check.value}"
    assert {c.name: c.process for c in harness.sup.children} == before, "a running instance changed"
    assert len(harness.launcher.launched) == launched and all(p.signals == [] for p in harness.launcher.launched)
    assert not any(Command.STOP in c.sent for c in harness.launcher.controls.values())
    assert harness.sup.running_topology is running_topology
    assert harness.request("status")["result"]["supervisor"]["scaled"] == {}
    assert harness.logged(f"scale {name} to {replicas} refused, nothing changed: invalid configuration:")


def test_an_instance_that_cannot_be_made_changes_nothing(tmp_path: Path) -> None:
    """Every new instance is made before any running one is touched: a failure to make the
    third leaves the first two, and the running instances, as they were."""

    def failing(instance: DeviceConfig, device: str) -> Child:
        if instance.name == "pipe.2":
            raise OSError(98, "cannot listen on tcp://127.0.0.1:7000: Address already in use")
        return make_child(instance, device)

    topo = topology({"pipe": {"replicas": 1, **ipc(tmp_path, "pipe", replicated=True)}}, tmp_path)
    harness = Harness(topo, load=Files(topo), make_child=failing).start()
    harness.ready("pipe")
    process = harness.process("pipe")
    reply = harness.request("scale", name="pipe", replicas=4)  # pipe -> pipe.0 .. pipe.3
    assert reply["code"] == ErrorCode.FAILED.value and "nothing changed" in reply["error"], reply
    assert "Address already in use" in reply["error"]
    assert [c.name for c in harness.sup.children] == ["pipe"] and harness.process("pipe") is process
    assert harness.state("pipe") == "RUNNING" and harness.control("pipe").sent.count(Command.STOP) == 0


def resolving_ports(instance: DeviceConfig, device: str) -> Child:
    """As `up` makes a child: its `tcp://HOST:*` binds resolved to the port the supervisor
    listens on (listeners.py), so the child's config differs from the file's."""
    ports = itertools.count(41000)

    def resolve(spec: SocketSpec | None) -> SocketSpec | None:
        if spec is None:
            return None
        return spec._replace(
            bind=tuple(e.replace(":*", f":{next(ports)}") if e.endswith(":*") else e for e in spec.bind)
        )

    resolved = instance._replace(
        in_=resolve(instance.in_) or instance.in_, out=resolve(instance.out), mon=resolve(instance.mon)
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


def test_every_device_setting_says_what_a_reload_of_it_means() -> None:
    """A new DeviceConfig field must be classified (in its settings row's ``on_reload``, or in
    STRUCTURE_ON_RELOAD): restart the process, apply live, or start/stop instances."""
    from procdevices.supervisor import reload
    from procdevices.supervisor.config import settings

    classified = settings.device_field_on_reload()
    fields = sorted(DeviceConfig._fields)
    assert sorted(classified) == fields, "a DeviceConfig field without a settings row or STRUCTURE_ON_RELOAD entry"
    unclassified = sorted(name for name, how in classified.items() if how is None)
    assert unclassified == [], f"settings rows without (or with disagreeing) on_reload: {unclassified}"
    # reload's behaviour is derived from the rows: each field lands in exactly one group.
    groups = (reload.PROCESS_FIELDS, reload.SUPERVISION_FIELDS, reload.INSTANCE_FIELDS)
    assert sorted(name for group in groups for name in group) == fields


def test_every_supervisor_setting_says_what_a_reload_of_it_means() -> None:
    from procdevices.supervisor.config import settings

    rows = settings.SUPERVISOR_SETTINGS
    assert [s.path for s in rows if s.on_reload is None] == []
    # A live [supervisor] key needs its own apply in Supervisor.reload: today only pool_size.
    assert [s.path for s in rows if s.on_reload is settings.OnReload.LIVE] == ["pool_size"]


def test_a_supervisor_key_read_once_at_up_is_reported_not_applied(tmp_path: Path) -> None:
    """Every [supervisor] key whose row says "needs a new `up`" is reported, not ignored."""
    from procdevices.supervisor import reload

    old = topology({"a": {}}, tmp_path).supervisor
    new = old._replace(device_log_backups=7, start_method=StartMethod.FORKSERVER, pool_size=5)
    changes = reload.supervisor_changes(old, new)
    assert (changes.next_up, changes.live, changes.refused) == (
        ["device_log_backups", "start_method"],
        ["pool_size"],
        [],
    )
    moved = reload.supervisor_changes(old, old._replace(run_dir=tmp_path / "elsewhere"))
    assert moved.refused == ["run_dir"]


def test_scale_and_reload_past_the_open_file_limit_are_refused_like_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The descriptor plan `check` and `up` apply (fdplan.py) holds for a live change too."""
    from procdevices.supervisor import fdplan

    monkeypatch.setattr(fdplan, "limits", lambda: (256, 256))
    replicated = {"replicas": 2, **ipc(tmp_path, "pipe", replicated=True)}
    files = Files(topology({"pipe": replicated}, tmp_path))
    assert isinstance(files.current, Topology)
    harness = Harness(files.current, load=files).start()
    harness.ready("pipe.0", "pipe.1")
    before = {c.name: c.process for c in harness.sup.children}
    big = topology({"pipe": {**replicated, "replicas": 40}}, tmp_path)
    with pytest.raises(fdplan.DescriptorLimit) as check:
        fdplan.check(big)

    reply = harness.request("scale", name="pipe", replicas=40)
    assert reply["code"] == ErrorCode.INVALID_CONFIG.value and reply["error"] == str(check.value), reply
    files.current = big
    reply = harness.request("reload")
    assert reply["code"] == ErrorCode.INVALID_CONFIG.value and reply["error"] == str(check.value), reply
    assert {c.name: c.process for c in harness.sup.children} == before
    assert len(harness.launcher.launched) == 2 and harness.sup.running_topology.devices[0].replicas == 2
