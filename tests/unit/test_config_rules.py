"""Rules added to make `check` reject what cannot run: run-dir socket paths (validate_run_dir),
stop_linger, the kinds table as build.py reads it, linear bind conflicts, bind hosts."""

from __future__ import annotations

import pathlib
import textwrap
from collections.abc import Mapping

import pytest
import zmq

from procdevices.devices import ProcessDevice, ProcessMonitoredQueue, ProcessProxy, ProcessProxySteerable
from procdevices.supervisor.build import build_device
from procdevices.supervisor.config import (
    IPC_PATH_MAX,
    KIND_TABLE,
    ConfigError,
    KindSpec,
    Topology,
    load_topology,
    parse_topology,
    validate_run_dir,
)
from procdevices.supervisor.config.kinds import Presence

BASE = pathlib.Path("/srv/app")


def device_table(**extra: object) -> dict[str, object]:
    return {"kind": "queue", "in": {"bind": ["ipc://@in"]}, "out": {"bind": ["ipc://@out"]}, **extra}


def topology(devices: Mapping[str, object], supervisor: Mapping[str, object] | None = None) -> Topology:
    return parse_topology({"supervisor": supervisor or {}, "devices": devices}, source="mem.toml", base_dir=BASE)


# -- validate_run_dir -------------------------------------------------------------------------


def test_validate_run_dir_accepts_a_run_dir_that_fits() -> None:
    topo = topology({"a": device_table()})
    validate_run_dir(topo, pathlib.Path("/tmp/run"))


def test_validate_run_dir_names_the_device_whose_control_socket_does_not_fit() -> None:
    name = "n" * 63
    topo = topology(
        {
            "short": device_table(),
            name: device_table(
                replicas=2, **{"in": {"bind": ["ipc://@in{replica}"]}, "out": {"bind": ["ipc://@out{replica}"]}}
            ),
        }
    )
    # Room for "<dir>/ctl/<63 chars>.1.sock" (the last replica is the longest name) and no more.
    fits = pathlib.Path("/" + "d" * (IPC_PATH_MAX - len(f"/ctl/{name}.1.sock") - 1))
    validate_run_dir(topo, fits)
    too_long = pathlib.Path(f"{fits}x")
    with pytest.raises(ConfigError) as info:
        validate_run_dir(topo, too_long)
    err = info.value
    assert (err.file, err.key) == ("mem.toml", f"devices.{name}")
    assert f"'{too_long}/ctl/{name}.1.sock' is 108 bytes" in err.reason
    assert "use a shorter device name or run_dir" in err.reason


def test_validate_run_dir_names_run_dir_when_the_supervisor_socket_does_not_fit() -> None:
    topo = topology({"a": device_table()})
    run_dir = pathlib.Path("/" + "d" * 100)
    with pytest.raises(ConfigError) as info:
        validate_run_dir(topo, run_dir)
    assert info.value.key == "supervisor.run_dir"
    assert f"'{run_dir}/supervisor.sock'" in info.value.reason


def test_the_loader_checks_control_socket_paths_for_the_files_run_dir(tmp_path: pathlib.Path) -> None:
    name = "n" * 63
    run_dir = "/" + "d" * (IPC_PATH_MAX - len(f"/ctl/{name}.sock"))  # one byte too long
    path = tmp_path / "t.toml"
    path.write_text(
        textwrap.dedent(f"""\
        [supervisor]
        run_dir = "{run_dir}"
        [devices.{name}]
        kind = "queue"
        in = {{ bind = ["ipc://@in"] }}
        out = {{ bind = ["ipc://@out"] }}
        """)
    )
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.key == f"devices.{name}"


# -- stop_linger -------------------------------------------------------------------------------


def test_stop_linger_default_defaults_table_and_device() -> None:
    topo = topology(
        {
            "a": device_table(),
            "b": device_table(**{"stop_linger": 0, "in": {"bind": ["ipc://@b"]}, "out": {"bind": ["ipc://@c"]}}),
        },
        {"defaults": {"stop_linger": 2.5}},
    )
    assert [d.stop_linger for d in topo.devices] == [2.5, 0.0]
    assert topology({"a": device_table()}).devices[0].stop_linger == 1.0


def test_build_device_carries_stop_linger() -> None:
    (config,) = topology({"a": device_table(stop_linger=0.25)}).instances()
    device = build_device(config, "ipc:///tmp/ctl.sock")
    assert device.stop_linger == 0.25


# -- the kinds table, as build.py reads it ------------------------------------------------------


EXPECTED_CLASS = {
    "queue": ProcessDevice,
    "forwarder": ProcessDevice,
    "streamer": ProcessDevice,
    "proxy": ProcessProxy,
    "steerable": ProcessProxySteerable,
    "monitored_queue": ProcessMonitoredQueue,
}


@pytest.mark.parametrize("spec", KIND_TABLE, ids=[s.name for s in KIND_TABLE])
def test_build_device_makes_the_class_of_each_kind(spec: KindSpec) -> None:
    table = device_table(kind=spec.name)
    if spec.mon is not Presence.NONE:
        table["mon"] = {"bind": ["ipc://@mon"]}
    (config,) = topology({"d": table}).instances()
    device = build_device(config, "ipc:///tmp/ctl.sock")
    assert type(device) is EXPECTED_CLASS[spec.name]
    assert device._setup_of("in").binds == ["ipc://@in"] and device._setup_of("out").binds == ["ipc://@out"]
    assert config.in_.type == zmq.SocketType[spec.in_type]
    assert config.out is not None and config.out.type == zmq.SocketType[spec.out_type]


def test_a_proxy_without_mon_is_a_plain_device() -> None:
    (config,) = topology({"p": device_table(kind="proxy")}).instances()
    assert type(build_device(config, "ipc:///tmp/ctl.sock")) is ProcessDevice


# -- bind conflicts ------------------------------------------------------------------------------


def test_a_conflict_names_the_earliest_bind_it_collides_with() -> None:
    devices = {
        "a": {"kind": "queue", "in": {"bind": ["tcp://127.0.0.1:7001"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}},
        "b": {"kind": "queue", "in": {"bind": ["tcp://127.0.0.2:7001"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}},
        "c": {"kind": "queue", "in": {"bind": ["tcp://*:7001"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}},
    }
    with pytest.raises(ConfigError) as info:
        topology(devices)
    assert info.value.key == "devices.c.in.bind[0]"
    assert info.value.reason == "address tcp://*:7001 is already bound by devices.a.in.bind[0]"


def test_a_wildcard_first_conflicts_with_a_later_specific_host() -> None:
    devices = {
        "a": {"kind": "queue", "in": {"bind": ["tcp://0.0.0.0:7001"]}, "out": {"bind": ["tcp://127.0.0.1:7002"]}},
        "b": {"kind": "queue", "in": {"bind": ["tcp://127.0.0.1:7003"]}, "out": {"bind": ["tcp://127.0.0.1:7001"]}},
    }
    with pytest.raises(ConfigError) as info:
        topology(devices)
    assert (info.value.key, info.value.reason) == (
        "devices.b.out.bind[0]",
        "address tcp://127.0.0.1:7001 is already bound by devices.a.in.bind[0]",
    )


def test_ports_are_compared_as_numbers() -> None:
    devices = {
        "a": {"kind": "queue", "in": {"bind": ["tcp://127.0.0.1:7001"]}, "out": {"bind": ["tcp://127.0.0.1:07001"]}}
    }
    with pytest.raises(ConfigError) as info:
        topology(devices)
    assert "already bound by devices.a.in.bind[0]" in info.value.reason


def test_many_devices_with_distinct_binds_load() -> None:
    # Correctness at scale only; the time is measured by hand (see the report / docs).
    devices: dict[str, object] = {
        f"d{i}": {
            "kind": "streamer",
            "in": {"bind": [f"tcp://127.0.0.1:{10000 + i}"]},
            "out": {"bind": [f"ipc://@d{i}"]},
        }
        for i in range(500)
    }
    assert len(topology(devices).devices) == 500


# -- bind hosts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["*", "127.0.0.1", "0.0.0.0", "localhost", "lo"])
def test_bindable_hosts_are_accepted(host: str) -> None:
    topo = topology({"a": {"kind": "queue", "in": {"bind": [f"tcp://{host}:7001"]}, "out": {"bind": ["ipc://@o"]}}})
    assert topo.devices[0].in_.bind == (f"tcp://{host}:7001",)


def test_connect_hosts_are_not_resolved() -> None:
    topo = topology(
        {"a": {"kind": "queue", "in": {"connect": ["tcp://nohost.invalid:7001"]}, "out": {"bind": ["ipc://@o"]}}}
    )
    assert topo.devices[0].in_.connect == ("tcp://nohost.invalid:7001",)
