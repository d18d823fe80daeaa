"""Multi-host topologies (config/hosts.py): hosts, references, per-host rules, host choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq

from procdevices.supervisor.config import ConfigError, parse_topology
from procdevices.supervisor.config.hosts import (
    HostChoiceError,
    bound_endpoints,
    host_of,
    select_host,
    this_host,
)

IVL, TIMEOUT = int(zmq.SocketOption.HEARTBEAT_IVL), int(zmq.SocketOption.HEARTBEAT_TIMEOUT)


def three_hosts(**devices: dict[str, Any]) -> dict[str, Any]:
    return {
        "hosts": {
            "a": {"address": "10.77.0.1"},
            "b": {"address": "10.77.0.2"},
            "c": {"address": "fd00::3"},
        },
        "devices": devices,
    }


def load(data: dict[str, Any], tmp_path: Path) -> Any:
    return parse_topology(data, source="t.toml", base_dir=tmp_path)


def streamer(host: str, inp: dict[str, Any], out: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"host": host, "kind": "streamer", "in": inp, "out": out, **extra}


def test_a_file_without_hosts_is_unchanged(tmp_path: Path) -> None:
    data = {
        "devices": {"q": {"kind": "queue", "in": {"bind": ["tcp://127.0.0.1:7001"]}, "out": {"bind": ["tcp://*:7002"]}}}
    }
    topology = load(data, tmp_path)
    assert topology.hosts == () and topology.references == () and topology.cluster.keys is None
    (device,) = topology.devices
    assert device.host is None and device.in_.sockopts == () and device.out.connect == ()
    assert select_host(topology, this_host(topology, None)) is topology


def test_a_reference_is_every_replica_bind_with_the_owner_address(tmp_path: Path) -> None:
    topology = load(
        three_hosts(
            broker=streamer(
                "b",
                {"bind": ["tcp://*:70{replica}1", "tcp://0.0.0.0:75{replica}0"]},
                {"bind": ["tcp://*:72{replica}2"]},
                replicas=2,
            ),
            six=streamer("c", {"bind": ["tcp://[::]:7001"]}, {"bind": ["tcp://*:7002"]}),
            edge=streamer("a", {"bind": ["tcp://*:7001"]}, {"connect": ["tcp://10.0.0.9:1", "@broker.in", "@six.in"]}),
        ),
        tmp_path,
    )
    edge = next(d for d in topology.devices if d.name == "edge")
    assert edge.out.connect == (
        "tcp://10.0.0.9:1",
        "tcp://10.77.0.2:7001",
        "tcp://10.77.0.2:7500",
        "tcp://10.77.0.2:7011",
        "tcp://10.77.0.2:7510",
        "tcp://[fd00::3]:7001",
    )
    assert dict(edge.out.sockopts) == {IVL: 1000, TIMEOUT: 5000}
    assert edge.in_.sockopts == ()  # only the socket that resolves a reference
    assert [(r.device, r.role, r.target, r.target_role) for r in topology.references] == [
        ("edge", "out", "broker", "in"),
        ("edge", "out", "six", "in"),
    ]


def test_heartbeats_set_by_the_user_are_kept(tmp_path: Path) -> None:
    topology = load(
        three_hosts(
            broker=streamer("b", {"bind": ["tcp://*:7001"]}, {"bind": ["tcp://*:7002"]}),
            edge=streamer(
                "a",
                {"bind": ["tcp://*:7001"]},
                {"connect": ["@broker.in"], "sockopts": {"heartbeat_ivl": 250}},
            ),
        ),
        tmp_path,
    )
    edge = next(d for d in topology.devices if d.name == "edge")
    assert dict(edge.out.sockopts) == {IVL: 250, TIMEOUT: 5000}


def test_same_port_on_two_hosts_is_no_conflict(tmp_path: Path) -> None:
    topology = load(
        three_hosts(
            x=streamer("a", {"bind": ["tcp://*:7001"]}, {"bind": ["tcp://*:7002"]}),
            y=streamer("b", {"bind": ["tcp://*:7001"]}, {"bind": ["tcp://*:7002"]}),
        ),
        tmp_path,
    )
    assert [d.host for d in topology.devices] == ["a", "b"]


def test_same_host_may_reference_ipc_and_loopback(tmp_path: Path) -> None:
    topology = load(
        three_hosts(
            x=streamer("a", {"bind": ["ipc://x.sock"]}, {"bind": ["tcp://127.0.0.1:7002"]}),
            y=streamer("a", {"connect": ["@x.in"]}, {"connect": ["@x.out"]}),
        ),
        tmp_path,
    )
    y = topology.devices[1]
    assert y.in_.connect == (f"ipc://{tmp_path}/x.sock",) and y.out.connect == ("tcp://127.0.0.1:7002",)


def test_references_without_hosts_reach_this_machine(tmp_path: Path) -> None:
    data = {
        "devices": {
            "x": {"kind": "streamer", "in": {"bind": ["tcp://*:7001"]}, "out": {"bind": ["tcp://127.0.0.1:7002"]}},
            "y": {"kind": "streamer", "in": {"connect": ["@x.out"]}, "out": {"connect": ["@x.in"]}},
        }
    }
    y = load(data, tmp_path).devices[1]
    assert y.in_.connect == ("tcp://127.0.0.1:7002",) and y.out.connect == ("tcp://127.0.0.1:7001",)


def test_host_from_defaults_and_device_override(tmp_path: Path) -> None:
    data = three_hosts(
        x=streamer("a", {"bind": ["tcp://*:7001"]}, {"bind": ["tcp://*:7002"]}),
        y={"kind": "streamer", "in": {"bind": ["tcp://*:7001"]}, "out": {"bind": ["tcp://*:7002"]}},
    )
    data["supervisor"] = {"defaults": {"host": "c"}}
    topology = load(data, tmp_path)
    assert [d.host for d in topology.devices] == ["a", "c"]
    assert [d.name for d in select_host(topology, topology.hosts[2]).devices] == ["y"]
    assert host_of(topology, "y") == topology.hosts[2]


def test_bound_endpoints_are_what_clients_connect_to(tmp_path: Path) -> None:
    topology = load(
        three_hosts(
            x=streamer(
                "b",
                {"bind": ["tcp://*:7{replica}01", "ipc://x{replica}.sock"]},
                {"bind": ["tcp://10.77.0.2:720{replica}"]},
                replicas=2,
            )
        ),
        tmp_path,
    )
    (x,) = topology.devices
    assert bound_endpoints(x, topology.hosts[1]) == {
        "in": [
            "tcp://10.77.0.2:7001",
            f"ipc://{tmp_path}/x0.sock",
            "tcp://10.77.0.2:7101",
            f"ipc://{tmp_path}/x1.sock",
        ],
        "out": ["tcp://10.77.0.2:7200", "tcp://10.77.0.2:7201"],
    }


def test_this_host_by_name_by_address_or_an_error_naming_the_choices(tmp_path: Path) -> None:
    topology = load(three_hosts(x=streamer("a", {"bind": ["tcp://*:7001"]}, {"bind": ["tcp://*:7002"]})), tmp_path)
    assert this_host(topology, "b") == topology.hosts[1]
    with pytest.raises(HostChoiceError, match="unknown host 'z': t.toml defines a, b, c"):
        this_host(topology, "z")
    with pytest.raises(HostChoiceError, match=r"none of them has an address of this machine.*\(a, b, c\)"):
        this_host(topology, None)  # no 10.77.0.x here
    local = topology._replace(hosts=(topology.hosts[0]._replace(address="127.0.0.1"), *topology.hosts[1:]))
    assert this_host(local, None) == local.hosts[0]
    both = local._replace(hosts=(local.hosts[0], local.hosts[1]._replace(address="127.0.0.1")))
    with pytest.raises(HostChoiceError, match="a, b all have an address of this machine"):
        this_host(both, None)


def test_another_hosts_bind_address_is_not_tried_here(tmp_path: Path) -> None:
    # 10.77.0.2 is no address of this machine: the libzmq trial would refuse it for host a.
    topology = load(
        three_hosts(x=streamer("b", {"bind": ["tcp://10.77.0.2:7001"]}, {"bind": ["tcp://*:7002"]})), tmp_path
    )
    assert topology.devices[0].in_.bind == ("tcp://10.77.0.2:7001",)
    data = three_hosts(x=streamer("b", {"bind": ["tcp://10.77.0.2:7001"]}, {"bind": ["tcp://*:7002"]}))
    data["hosts"]["b"]["address"] = "127.0.0.1"  # now host b is this machine: tried, refused
    with pytest.raises(ConfigError, match="cannot bind tcp://10.77.0.2:7001 on this machine"):
        load(data, tmp_path)


CURVE_SERVER, CURVE_SERVERKEY = int(zmq.SocketOption.CURVE_SERVER), int(zmq.SocketOption.CURVE_SERVERKEY)
CURVE_PUBLICKEY, CURVE_SECRETKEY = int(zmq.SocketOption.CURVE_PUBLICKEY), int(zmq.SocketOption.CURVE_SECRETKEY)


def test_curve_server_and_the_references_to_it_get_the_cluster_keys(tmp_path: Path) -> None:
    import zmq.auth

    (tmp_path / "keys").mkdir()
    server_public, server_secret = zmq.auth.create_certificates(tmp_path / "keys", "server")
    client_public, client_secret = zmq.auth.create_certificates(tmp_path / "keys", "client")
    data = three_hosts(
        x=streamer("b", {"bind": ["tcp://*:7001"], "curve": "server"}, {"bind": ["tcp://*:7002"]}),
        y=streamer("a", {"bind": ["tcp://*:7001"]}, {"connect": ["@x.in"]}),
        z=streamer("c", {"bind": ["tcp://*:7001"]}, {"connect": ["@x.out"]}),
    )
    data["cluster"] = {"keys": "keys"}
    x, y, z = load(data, tmp_path).devices
    spub, ssec = zmq.auth.load_certificate(server_secret)
    cpub, csec = zmq.auth.load_certificate(client_secret)
    assert dict(x.in_.sockopts) == {CURVE_SERVER: 1, CURVE_PUBLICKEY: spub, CURVE_SECRETKEY: ssec}
    assert dict(y.out.sockopts) == {
        IVL: 1000,
        TIMEOUT: 5000,
        CURVE_SERVERKEY: spub,
        CURVE_PUBLICKEY: cpub,
        CURVE_SECRETKEY: csec,
    }
    assert dict(z.out.sockopts) == {IVL: 1000, TIMEOUT: 5000}  # x.out is plain
    mixed = dict(data)
    mixed["devices"] = {
        **data["devices"],
        "w": streamer("c", {"bind": ["tcp://*:7005"]}, {"connect": ["@x.in", "@x.out"]}),
    }
    with pytest.raises(ConfigError, match="cannot connect to a CURVE server and to a plain socket"):
        load(mixed, tmp_path)
    del data["cluster"]
    with pytest.raises(ConfigError, match=r"devices\.x\.in\.curve: curve needs \[cluster\] keys"):
        load(data, tmp_path)


def test_a_wildcard_control_endpoint_is_reached_at_the_host_address(tmp_path: Path) -> None:
    from procdevices.supervisor.config.hosts import control_connect

    data = three_hosts(x=streamer("a", {"bind": ["tcp://*:7001"]}, {"bind": ["tcp://*:7002"]}))
    data["cluster"] = {"keys": "keys"}
    data["hosts"]["a"]["control"] = "tcp://*:7100"
    data["hosts"]["b"]["control"] = "tcp://10.77.0.2:7100"
    data["hosts"]["c"]["control"] = "tcp://0.0.0.0:7100"
    hosts = load(data, tmp_path).hosts
    assert [control_connect(h) for h in hosts] == [
        "tcp://10.77.0.1:7100",
        "tcp://10.77.0.2:7100",
        "tcp://[fd00::3]:7100",
    ]
    data["hosts"]["a"]["address"] = "10.77.0.1:7100"
    with pytest.raises(ConfigError, match="hosts.a.address: invalid address '10.77.0.1:7100': no port here"):
        load(data, tmp_path)


# -- scale runs the same multi-host rules (config/rules.py) ------------------------------------


def two_hosts_for_scale(tmp_path: Path) -> Any:
    return load(
        three_hosts(
            # out: b's own address, not this machine's, so never tried here (only local hosts are).
            broker=streamer("b", {"bind": ["tcp://*:7{replica}01"]}, {"bind": ["tcp://10.77.0.2:7{replica}02"]}),
            # The port the broker binds on every interface, on another host: no conflict.
            edge=streamer(
                "a", {"bind": ["tcp://127.0.0.1:7{replica}01"]}, {"connect": ["tcp://10.0.0.9:1", "@broker.in"]}
            ),
            twin=streamer("a", {"bind": ["tcp://127.0.0.1:7101"]}, {"bind": ["tcp://127.0.0.1:7003"]}),
        ),
        tmp_path,
    )


def test_scaling_a_referenced_device_resolves_its_references_again(tmp_path: Path) -> None:
    from procdevices.supervisor.reload import scaled

    topology = scaled(two_hosts_for_scale(tmp_path), "broker", 2)
    out = dict(next(d for d in topology.devices if d.name == "edge").sockets())["out"]
    assert out.connect == ("tcp://10.0.0.9:1", "tcp://10.77.0.2:7001", "tcp://10.77.0.2:7101")
    assert dict(out.sockopts) == {IVL: 1000, TIMEOUT: 5000} and len(out.sockopts) == 2  # not added twice
    (ref,) = topology.references
    assert (ref.device, ref.target, ref.endpoints) == (
        "edge",
        "broker",
        ("tcp://10.77.0.2:7001", "tcp://10.77.0.2:7101"),
    )
    # And back down: the second replica's endpoint is gone again.
    out = dict(next(d for d in scaled(topology, "broker", 1).devices if d.name == "edge").sockets())["out"]
    assert out.connect == ("tcp://10.0.0.9:1", "tcp://10.77.0.2:7001")


def test_scale_refuses_a_bind_conflict_on_one_host_only(tmp_path: Path) -> None:
    from procdevices.control.protocol import ProtocolError
    from procdevices.supervisor.reload import scaled

    topology = two_hosts_for_scale(tmp_path)
    with pytest.raises(ProtocolError, match=r"devices\.(edge|twin)\.in\.bind\[0\].*tcp://127\.0\.0\.1:7101"):
        scaled(topology, "edge", 2)  # edge.1 would bind twin's 7101, on host a
    # The broker's *:7101 on host b is no conflict for either.
    scaled(topology, "broker", 2)
