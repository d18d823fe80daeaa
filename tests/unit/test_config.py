"""Tests for procdevices.supervisor.config (pure parsing/validation, no processes)."""

from __future__ import annotations

import pathlib
import pickle
import textwrap

import pytest
import zmq

from procdevices.supervisor.config import (
    KINDS,
    BackoffPolicy,
    ConfigError,
    DeviceConfig,
    Intensity,
    ProbeSpec,
    RestartPolicy,
    SocketSpec,
    SupervisorConfig,
    Topology,
    default_topology,
    find_config,
    load_topology,
    parse_topology,
)
from procdevices.supervisor.config.settings import parse_memory_size

MINIMAL_DEVICE = """
[devices.broker]
kind = "queue"
in = { bind = ["tcp://127.0.0.1:5559"] }
out = { bind = ["tcp://127.0.0.1:5560"] }
"""


def write(tmp_path: pathlib.Path, text: str, name: str = "procdevices.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: pathlib.Path, text: str) -> tuple[ConfigError, pathlib.Path]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    return info.value, path


# ---------------------------------------------------------------------------
# Valid files


def test_full_file_parses_into_expected_dataclasses(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [supervisor]
        run_dir = "state"
        pool_size = 3

        [devices.broker]
        kind = "queue"
        in = { type = "router", bind = ["tcp://127.0.0.1:5559"] }
        out = { type = "DEALER", bind = ["ipc:///tmp/backend.sock"], connect = ["tcp://10.0.0.1:7000"], sockopts = { SNDHWM = 1000, linger = 0, ROUTING_ID = "broker-out", IPV6 = true } }
        restart = "on-failure"
        backoff = { initial = 0.1, max = 10, factor = 1.5 }
        intensity = { max_restarts = 7, within = 60.0 }
        stable_after = 20.0
        probe = { interval = 2.0, timeout = 0.5, failures = 4 }
        memory_limit = "256MiB"
        start_timeout = 12.0
        stop_timeout = 6.0
        kill_timeout = 3.0
        replicas = 1

        [devices.mq]
        kind = "monitored_queue"
        in = { bind = ["tcp://127.0.0.1:6001"] }
        out = { bind = ["tcp://127.0.0.1:6002"] }
        mon = { bind = ["tcp://127.0.0.1:6003"] }
        in_prefix = "req"
        out_prefix = "rep"
        memory_limit = 67108864

        [devices.steer]
        kind = "steerable"
        in = { bind = ["tcp://127.0.0.1:6101"] }
        out = { bind = ["tcp://127.0.0.1:6102"] }
        ctrl = { bind = ["tcp://127.0.0.1:6103"] }
        """,
    )
    topo = load_topology(path)
    assert isinstance(topo, Topology)
    assert topo.source == str(path)
    assert topo.supervisor == SupervisorConfig(run_dir=tmp_path / "state", pool_size=3)
    assert [d.name for d in topo.devices] == ["broker", "mq", "steer"]

    broker = topo.devices[0]
    assert broker == DeviceConfig(
        name="broker",
        kind="queue",
        in_=SocketSpec(type=zmq.ROUTER, bind=("tcp://127.0.0.1:5559",)),
        out=SocketSpec(
            type=zmq.DEALER,
            bind=("ipc:///tmp/backend.sock",),
            connect=("tcp://10.0.0.1:7000",),
            sockopts=(
                (zmq.SNDHWM, 1000),
                (zmq.LINGER, 0),
                (zmq.ROUTING_ID, b"broker-out"),
                (zmq.IPV6, 1),
            ),
        ),
        mon=None,
        ctrl=None,
        restart=RestartPolicy.ON_FAILURE,
        backoff=BackoffPolicy(initial=0.1, max=10.0, factor=1.5),
        intensity=Intensity(max_restarts=7, within=60.0),
        stable_after=20.0,
        probe=ProbeSpec(interval=2.0, timeout=0.5, failures=4),
        memory_limit=256 * 1024 * 1024,
        start_timeout=12.0,
        stop_timeout=6.0,
        kill_timeout=3.0,
        replicas=1,
    )
    assert broker.in_.type_name == "ROUTER"
    assert broker.out is not None and broker.out.type_name == "DEALER"

    mq = topo.devices[1]
    assert mq.mon == SocketSpec(type=zmq.PUB, bind=("tcp://127.0.0.1:6003",))
    assert (mq.in_prefix, mq.out_prefix) == (b"req", b"rep")
    assert mq.memory_limit == 64 * 1024**2

    steer = topo.devices[2]
    assert steer.mon is None
    assert steer.ctrl == SocketSpec(type=zmq.PAIR, bind=("tcp://127.0.0.1:6103",))


def test_defaults_applied(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [supervisor.defaults]
        restart = "never"
        stop_timeout = 3.0
        backoff = { initial = 0.5 }
        memory_limit = "1GB"

        [devices.a]
        kind = "streamer"
        in = { bind = ["tcp://127.0.0.1:5001"] }
        out = { bind = ["tcp://127.0.0.1:5002"] }

        [devices.b]
        kind = "proxy"
        in = { bind = ["tcp://127.0.0.1:5003"] }
        out = { bind = ["tcp://127.0.0.1:5004"] }
        stop_timeout = 9.0
        restart = "always"
        backoff = { max = 20.0 }
        """,
    )
    topo = load_topology(path)
    a, b = topo.devices
    # kind defaults for socket types
    assert (a.in_.type_name, a.out and a.out.type_name) == ("PULL", "PUSH")
    assert (b.in_.type_name, b.out and b.out.type_name) == ("ROUTER", "DEALER")
    # supervisor defaults merged
    assert a.restart is RestartPolicy.NEVER
    assert a.stop_timeout == 3.0
    assert a.backoff == BackoffPolicy(initial=0.5, max=5.0, factor=2.0)
    assert a.memory_limit == 10**9
    # device overrides a default; sub-tables merge field by field
    assert b.restart is RestartPolicy.ALWAYS
    assert b.stop_timeout == 9.0
    assert b.backoff == BackoffPolicy(initial=0.5, max=20.0, factor=2.0)
    # untouched built-in defaults
    assert a.kill_timeout == 2.0 and a.start_timeout == 10.0 and a.stable_after == 10.0
    assert a.intensity == Intensity() and a.probe == ProbeSpec()
    assert a.mon is None and a.ctrl is None and a.replicas == 1
    assert topo.supervisor.pool_size == 2


@pytest.mark.parametrize(
    ("kind", "in_type", "out_type"),
    [
        ("queue", "ROUTER", "DEALER"),
        ("forwarder", "SUB", "PUB"),
        ("streamer", "PULL", "PUSH"),
        ("proxy", "ROUTER", "DEALER"),
        ("steerable", "ROUTER", "DEALER"),
        ("monitored_queue", "ROUTER", "DEALER"),
    ],
)
def test_socket_type_defaults_by_kind(tmp_path: pathlib.Path, kind: str, in_type: str, out_type: str) -> None:
    mon = 'mon = { bind = ["tcp://127.0.0.1:5003"] }' if kind == "monitored_queue" else ""
    path = write(
        tmp_path,
        f"""
        [devices.d]
        kind = "{kind}"
        in = {{ bind = ["tcp://127.0.0.1:5001"] }}
        out = {{ bind = ["tcp://127.0.0.1:5002"] }}
        {mon}
        """,
    )
    (device,) = load_topology(path).devices
    assert device.in_.type_name == in_type
    assert device.out is not None and device.out.type_name == out_type
    if kind == "monitored_queue":
        assert device.mon is not None and device.mon.type_name == "PUB"


def test_run_dir_relative_to_config_file(tmp_path: pathlib.Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, "[supervisor]\nrun_dir = '../run'\n" + MINIMAL_DEVICE)
    topo = load_topology(path)
    assert topo.supervisor.run_dir == tmp_path / "run"
    assert topo.supervisor.run_dir.is_absolute()
    assert topo.supervisor.control_endpoint == f"ipc://{tmp_path / 'run'}/supervisor.sock"


def test_run_dir_default(tmp_path: pathlib.Path) -> None:
    topo = load_topology(write(tmp_path, MINIMAL_DEVICE))
    assert topo.supervisor.run_dir == tmp_path / ".procdevices"


def test_ipc_relative_path_made_absolute(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [devices.q]
        kind = "queue"
        in = { bind = ["ipc://front.sock"] }
        out = { bind = ["ipc://sub/../back.sock"], connect = ["ipc:///abs/other.sock"] }
        """,
    )
    (device,) = load_topology(path).devices
    assert device.in_.bind == (f"ipc://{tmp_path}/front.sock",)
    assert device.out is not None
    assert device.out.bind == (f"ipc://{tmp_path}/back.sock",)
    assert device.out.connect == ("ipc:///abs/other.sock",)


def test_replica_expansion(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [devices.w]
        kind = "streamer"
        replicas = 3
        in = { bind = ["ipc://w-{replica}.sock"], connect = ["tcp://127.0.0.1:7000"] }
        out = { bind = ["tcp://127.0.0.1:*"], connect = ["tcp://127.0.0.1:80{replica}1"] }

        [devices.single]
        kind = "streamer"
        in = { bind = ["tcp://127.0.0.1:590{replica}"] }
        out = { bind = ["tcp://127.0.0.1:5910"] }
        """,
    )
    topo = load_topology(path)
    w, single = topo.devices
    assert w.replicas == 3 and len(topo.devices) == 2
    assert w.in_.bind == (f"ipc://{tmp_path}/w-{{replica}}.sock",)

    instances = w.instances()
    assert [i.name for i in instances] == ["w.0", "w.1", "w.2"]
    assert all(i.replicas == 1 for i in instances)
    assert [i.in_.bind for i in instances] == [(f"ipc://{tmp_path}/w-{n}.sock",) for n in range(3)]
    assert [i.in_.connect for i in instances] == [("tcp://127.0.0.1:7000",)] * 3
    assert [i.out.connect for i in instances if i.out] == [(f"tcp://127.0.0.1:80{n}1",) for n in range(3)]
    assert w.replica(1) == instances[1]

    (only,) = single.instances()
    assert only.name == "single"
    assert only.in_.bind == ("tcp://127.0.0.1:5900",)

    assert [i.name for i in topo.instances()] == ["w.0", "w.1", "w.2", "single"]


def test_forwarder_subscribes_to_everything_by_default(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [devices.f]
        kind = "forwarder"
        in = { bind = ["tcp://127.0.0.1:5001"], sockopts = { RCVHWM = 10 } }
        out = { bind = ["tcp://127.0.0.1:5002"] }

        [devices.topics]
        kind = "forwarder"
        in = { bind = ["tcp://127.0.0.1:5003"], sockopts = { subscribe = ["weather", "news"] } }
        out = { bind = ["tcp://127.0.0.1:5004"] }

        [devices.xsub]
        kind = "forwarder"
        in = { type = "XSUB", bind = ["tcp://127.0.0.1:5005"] }
        out = { type = "XPUB", bind = ["tcp://127.0.0.1:5006"] }
        """,
    )
    f, topics, xsub = load_topology(path).devices
    assert f.in_.sockopts == ((zmq.RCVHWM, 10), (zmq.SUBSCRIBE, b""))
    assert topics.in_.sockopts == ((zmq.SUBSCRIBE, b"weather"), (zmq.SUBSCRIBE, b"news"))
    assert xsub.in_.sockopts == ()


def test_parse_topology_with_mapping() -> None:
    base = pathlib.Path("/srv/app")
    topo = parse_topology(
        {
            "devices": {
                "p": {
                    "kind": "streamer",
                    "in": {"bind": ["ipc://in.sock"]},
                    "out": {"connect": ["tcp://example.com:9000"]},
                }
            }
        },
        source="inline",
        base_dir=base,
    )
    assert topo.source == "inline"
    assert topo.supervisor.run_dir == base / ".procdevices"
    assert topo.devices[0].in_.bind == ("ipc:///srv/app/in.sock",)


def test_wildcard_ports_never_conflict(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = { bind = ["tcp://*:*"] }
        out = { bind = ["tcp://127.0.0.1:*"] }

        [devices.b]
        kind = "queue"
        in = { bind = ["tcp://*:*"] }
        out = { bind = ["tcp://localhost:6000"] }

        [devices.c]
        kind = "queue"
        in = { bind = ["tcp://127.0.0.1:6000"] }
        out = { bind = ["tcp://127.0.0.1:*"] }
        """,
    )
    # localhost vs 127.0.0.1 are compared literally, so b and c do not conflict
    assert len(load_topology(path).devices) == 3


def test_default_topology() -> None:
    topo = default_topology()
    assert topo.source == "<default>"
    assert [d.name for d in topo.devices] == ["broker", "pubsub", "pipeline"]
    assert [d.kind for d in topo.devices] == ["queue", "forwarder", "streamer"]
    binds = [ep for d in topo.devices for _, s in d.sockets() for ep in s.bind]
    assert binds == [f"tcp://127.0.0.1:{port}" for port in range(5559, 5565)]
    pubsub = topo.devices[1]
    assert (zmq.SUBSCRIBE, b"") in pubsub.in_.sockopts
    assert topo.supervisor.run_dir.is_absolute()


def test_default_topology_run_dir(tmp_path: pathlib.Path) -> None:
    topo = default_topology(tmp_path / "rd")
    assert topo.supervisor.run_dir == tmp_path / "rd"
    assert len(topo.devices) == 3


def test_find_config(tmp_path: pathlib.Path) -> None:
    assert find_config(None, tmp_path) is None
    assert find_config("other.toml", tmp_path) == tmp_path / "other.toml"
    assert find_config("/etc/x.toml", tmp_path) == pathlib.Path("/etc/x.toml")
    write(tmp_path, MINIMAL_DEVICE)
    assert find_config(None, tmp_path) == tmp_path / "procdevices.toml"


def test_policy_types_are_shared_with_policy_module() -> None:
    # The restart logic compares with `is`, so config must hand out policy's enum.
    from procdevices.supervisor import policy

    assert RestartPolicy is policy.RestartPolicy
    assert BackoffPolicy is policy.Backoff
    assert Intensity is policy.Intensity


def test_replica_index_out_of_range(tmp_path: pathlib.Path) -> None:
    (device,) = load_topology(write(tmp_path, MINIMAL_DEVICE)).devices
    assert device.replica(0) == device
    with pytest.raises(IndexError):
        device.replica(1)


def test_kinds_constant() -> None:
    assert KINDS == ("queue", "forwarder", "streamer", "proxy", "steerable", "monitored_queue")


# ---------------------------------------------------------------------------
# ConfigError


def test_config_error_str_and_pickle() -> None:
    err = ConfigError("topo.toml", "devices.a.kind", "unknown kind 'x'")
    assert str(err) == "topo.toml: devices.a.kind: unknown kind 'x'"
    assert str(ConfigError("topo.toml", "", "file not found")) == "topo.toml: file not found"
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is ConfigError
    assert (clone.file, clone.key, clone.reason) == (err.file, err.key, err.reason)
    assert str(clone) == str(err)


# ---------------------------------------------------------------------------
# Errors


def test_unknown_kind(tmp_path: pathlib.Path) -> None:
    err, path = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queu"
        in = { bind = ["tcp://127.0.0.1:5001"] }
        out = { bind = ["tcp://127.0.0.1:5002"] }
        """,
    )
    assert err.file == str(path)
    assert err.key == "devices.a.kind"
    assert "unknown kind 'queu'" in err.reason
    assert "queue, forwarder, streamer, proxy, steerable, monitored_queue" in err.reason
    assert "did you mean 'queue'?" in err.reason
    assert str(err) == f"{path}: devices.a.kind: {err.reason}"


def test_unknown_socket_type(tmp_path: pathlib.Path) -> None:
    err, path = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = { type = "ROUTRE", bind = ["tcp://127.0.0.1:5001"] }
        out = { bind = ["tcp://127.0.0.1:5002"] }
        """,
    )
    assert (err.file, err.key) == (str(path), "devices.a.in.type")
    assert "unknown socket type 'ROUTRE'" in err.reason
    assert "PAIR, PUB, SUB, REQ, REP, DEALER, ROUTER, PULL, PUSH, XPUB, XSUB, STREAM" in err.reason


def test_invalid_endpoint(tmp_path: pathlib.Path) -> None:
    err, path = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = { bind = ["tcp://127.0.0.1:5001"] }
        out = { bind = ["tcp://127.0.0.1:5002", "localhost:5003"] }
        """,
    )
    assert (err.file, err.key) == (str(path), "devices.a.out.bind[1]")
    assert err.reason == "invalid endpoint 'localhost:5003': expected tcp://host:port or ipc://path"


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("tcp://127.0.0.1:70000", "port must be 1-65535 or *"),
        ("tcp://127.0.0.1:0", "port must be 1-65535 or *"),
        ("tcp://127.0.0.1", "expected tcp://host:port"),
        ("tcp://:5000", "expected tcp://host:port"),
        ("ipc://", "expected tcp://host:port or ipc://path"),
        ("http://x:80", "expected tcp://host:port or ipc://path"),
    ],
)
def test_invalid_endpoint_variants(tmp_path: pathlib.Path, endpoint: str, fragment: str) -> None:
    err, _ = load_error(
        tmp_path,
        f"""
        [devices.a]
        kind = "queue"
        in = {{ bind = ["{endpoint}"] }}
        out = {{ bind = ["tcp://127.0.0.1:5002"] }}
        """,
    )
    assert err.key == "devices.a.in.bind[0]"
    assert f"invalid endpoint '{endpoint}'" in err.reason
    assert fragment in err.reason


def test_wildcard_port_not_allowed_for_connect(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = { connect = ["tcp://127.0.0.1:*"] }
        out = { bind = ["tcp://127.0.0.1:5002"] }
        """,
    )
    assert err.key == "devices.a.in.connect[0]"
    assert "port * is only valid for bind" in err.reason


def test_passthrough_transports_accepted(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [devices.a]
        kind = "forwarder"
        in = { connect = ["epgm://eth0;239.192.1.1:5555"] }
        out = { bind = ["ws://127.0.0.1:8080/feed", "udp://127.0.0.1:5556"] }
        """,
    )
    (device,) = load_topology(path).devices
    assert device.in_.connect == ("epgm://eth0;239.192.1.1:5555",)


def test_inproc_rejected(tmp_path: pathlib.Path) -> None:
    err, path = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = { bind = ["tcp://127.0.0.1:5001"] }
        out = { connect = ["inproc://backend"] }
        """,
    )
    assert (err.file, err.key) == (str(path), "devices.a.out.connect[0]")
    assert err.reason == "inproc endpoints cannot cross processes"


def test_duplicate_bind_across_devices(tmp_path: pathlib.Path) -> None:
    err, path = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = { bind = ["tcp://127.0.0.1:5001"] }
        out = { bind = ["tcp://127.0.0.1:5559"] }

        [devices.b]
        kind = "queue"
        in = { bind = ["tcp://127.0.0.1:5559"] }
        out = { bind = ["tcp://127.0.0.1:5002"] }
        """,
    )
    assert (err.file, err.key) == (str(path), "devices.b.in.bind[0]")
    assert err.reason == "address tcp://127.0.0.1:5559 is already bound by devices.a.out.bind[0]"
    assert "devices.b.in.bind[0]" in str(err) and "devices.a.out.bind[0]" in str(err)


def test_wildcard_host_conflicts_with_any_host(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = { bind = ["tcp://127.0.0.1:5001"] }
        out = { bind = ["tcp://127.0.0.1:5002"] }

        [devices.b]
        kind = "queue"
        in = { bind = ["tcp://0.0.0.0:5001"] }
        out = { bind = ["tcp://127.0.0.1:5003"] }
        """,
    )
    assert err.key == "devices.b.in.bind[0]"
    assert "already bound by devices.a.in.bind[0]" in err.reason


def test_duplicate_bind_across_replicas(tmp_path: pathlib.Path) -> None:
    # 55{replica}1 expands to 5501 and 5511; the second replica collides with b.
    err, _ = load_error(
        tmp_path,
        """
        [devices.b]
        kind = "streamer"
        in = { bind = ["tcp://127.0.0.1:5511"] }
        out = { bind = ["tcp://127.0.0.1:6000"] }

        [devices.w]
        kind = "streamer"
        replicas = 2
        in = { bind = ["tcp://127.0.0.1:55{replica}1"] }
        out = { bind = ["tcp://127.0.0.1:*"] }
        """,
    )
    assert err.key == "devices.w.in.bind[0]"
    assert err.reason == "address tcp://127.0.0.1:5511 is already bound by devices.b.in.bind[0]"


def test_duplicate_ipc_bind(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(
        tmp_path,
        f"""
        [devices.a]
        kind = "queue"
        in = {{ bind = ["ipc://x.sock"] }}
        out = {{ bind = ["ipc://{tmp_path}/x.sock"] }}
        """,
    )
    assert err.key == "devices.a.out.bind[0]"
    assert err.reason == f"address ipc://{tmp_path}/x.sock is already bound by devices.a.in.bind[0]"


def test_replicas_without_replica_placeholder(tmp_path: pathlib.Path) -> None:
    err, path = load_error(
        tmp_path,
        """
        [devices.w]
        kind = "streamer"
        replicas = 2
        in = { bind = ["tcp://127.0.0.1:55{replica}1"] }
        out = { bind = ["tcp://127.0.0.1:6000"] }
        """,
    )
    assert (err.file, err.key) == (str(path), "devices.w.out.bind[0]")
    assert err.reason == "replicas > 1 need '{replica}' or port * in every bind endpoint"


def test_missing_in(tmp_path: pathlib.Path) -> None:
    err, path = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        out = { bind = ["tcp://127.0.0.1:5002"] }
        """,
    )
    assert (err.file, err.key) == (str(path), "devices.a.in")
    assert "missing required key 'in'" in err.reason


def test_missing_out(tmp_path: pathlib.Path) -> None:
    err, path = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "proxy"
        in = { bind = ["tcp://127.0.0.1:5001"] }
        """,
    )
    assert (err.file, err.key) == (str(path), "devices.a.out")
    assert "missing required key 'out'" in err.reason


def test_socket_without_endpoints(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = {}
        out = { bind = ["tcp://127.0.0.1:5002"] }
        """,
    )
    assert err.key == "devices.a.in"
    assert err.reason == "socket needs at least one bind or connect endpoint"


def test_missing_mon_for_monitored_queue(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(
        tmp_path,
        """
        [devices.m]
        kind = "monitored_queue"
        in = { bind = ["tcp://127.0.0.1:5001"] }
        out = { bind = ["tcp://127.0.0.1:5002"] }
        """,
    )
    assert err.key == "devices.m.mon"
    assert "missing required key 'mon'" in err.reason


@pytest.mark.parametrize(
    ("line", "key", "fragment"),
    [
        ("stop_timeout = 'soon'", "devices.a.stop_timeout", "expected a number, got string"),
        ("stop_timeout = true", "devices.a.stop_timeout", "expected a number, got boolean"),
        ("stop_timeout = 0", "devices.a.stop_timeout", "must be > 0"),
        ("replicas = 2.0", "devices.a.replicas", "expected an integer, got float"),
        ("replicas = 65", "devices.a.replicas", "must be between 1 and 64"),
        ("restart = 'sometimes'", "devices.a.restart", "expected one of always, on-failure, never"),
        ("backoff = { factor = 0.5 }", "devices.a.backoff.factor", "must be >= 1"),
        ("backoff = { initial = 9.0 }", "devices.a.backoff", "initial (9) must be <= max (5)"),
        ("probe = { failures = 0 }", "devices.a.probe.failures", "must be >= 1"),
        ("intensity = { max_restarts = -1 }", "devices.a.intensity.max_restarts", "must be >= 0"),
        ("probe = 3", "devices.a.probe", "expected a table, got integer"),
        ("kind = 5", "devices.a.kind", "expected a string, got integer"),
    ],
)
def test_wrong_value(tmp_path: pathlib.Path, line: str, key: str, fragment: str) -> None:
    body = MINIMAL_DEVICE.replace("broker", "a")
    if line.startswith("kind"):
        body = body.replace('kind = "queue"', line)
    else:
        body += line + "\n"
    err, path = load_error(tmp_path, body)
    assert (err.file, err.key) == (str(path), key)
    assert fragment in err.reason


def test_wrong_socket_value_types(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(
        tmp_path,
        """
        [devices.a]
        kind = "queue"
        in = { bind = "tcp://127.0.0.1:5001" }
        out = { bind = ["tcp://127.0.0.1:5002"] }
        """,
    )
    assert err.key == "devices.a.in.bind"
    assert err.reason == "expected an array of endpoint strings, got string"


def test_pool_size_out_of_range(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(tmp_path, "[supervisor]\npool_size = 65\n" + MINIMAL_DEVICE)
    assert err.key == "supervisor.pool_size"
    assert "between 0 and 64" in err.reason


def test_unknown_key_with_suggestion(tmp_path: pathlib.Path) -> None:
    err, path = load_error(tmp_path, MINIMAL_DEVICE + "restrat = 'always'\n")
    assert (err.file, err.key) == (str(path), "devices.broker.restrat")
    assert err.reason == "unknown key 'restrat'; did you mean 'restart'?"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[supervisr]\n" + MINIMAL_DEVICE, "supervisr", "unknown key 'supervisr'; did you mean 'supervisor'?"),
        (
            "[supervisor]\npoolsize = 1\n" + MINIMAL_DEVICE,
            "supervisor.poolsize",
            "unknown key 'poolsize'; did you mean 'pool_size'?",
        ),
        ("[supervisor.defaults]\nzzz = 1\n" + MINIMAL_DEVICE, "supervisor.defaults.zzz", "unknown key 'zzz'"),
        (
            MINIMAL_DEVICE + "backoff = { maximum = 3 }\n",
            "devices.broker.backoff.maximum",
            "unknown key 'maximum'; did you mean 'max'?",
        ),
        (
            MINIMAL_DEVICE + "probe = { intervall = 3 }\n",
            "devices.broker.probe.intervall",
            "unknown key 'intervall'; did you mean 'interval'?",
        ),
        (
            MINIMAL_DEVICE + "intensity = { within_s = 3 }\n",
            "devices.broker.intensity.within_s",
            "unknown key 'within_s'; did you mean 'within'?",
        ),
        (
            MINIMAL_DEVICE.replace('5559"]', '5559"], binds = []'),
            "devices.broker.in.binds",
            "unknown key 'binds'; did you mean 'bind'?",
        ),
    ],
)
def test_unknown_keys_everywhere(tmp_path: pathlib.Path, text: str, key: str, reason: str) -> None:
    err, _ = load_error(tmp_path, text)
    assert (err.key, err.reason) == (key, reason)


def test_device_only_key_in_defaults(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(tmp_path, "[supervisor.defaults]\nkind = 'queue'\n" + MINIMAL_DEVICE)
    assert err.key == "supervisor.defaults.kind"
    assert "cannot be set in [supervisor.defaults]" in err.reason


def test_unknown_sockopt(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(tmp_path, MINIMAL_DEVICE.replace('5559"]', '5559"], sockopts = { SNDHMW = 1 }'))
    assert err.key == "devices.broker.in.sockopts.SNDHMW"
    assert "unknown socket option 'SNDHMW'" in err.reason
    assert "did you mean 'SNDHWM'?" in err.reason


def test_subscribe_only_on_sub(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(tmp_path, MINIMAL_DEVICE.replace('5559"]', '5559"], sockopts = { SUBSCRIBE = "" }'))
    assert err.key == "devices.broker.in.sockopts.SUBSCRIBE"
    assert "only valid on SUB sockets" in err.reason


def test_bad_memory_limit(tmp_path: pathlib.Path) -> None:
    err, path = load_error(tmp_path, MINIMAL_DEVICE + "memory_limit = '12 parsecs'\n")
    assert (err.file, err.key) == (str(path), "devices.broker.memory_limit")
    assert "invalid memory size '12 parsecs'" in err.reason
    assert "MiB" in err.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512", 512),
        ("1KiB", 1024),
        ("2 MiB", 2 * 1024**2),
        ("1GiB", 1024**3),
        ("3KB", 3000),
        ("5MB", 5 * 10**6),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("64B", 64),
        ("1mib", 1024**2),
    ],
)
def test_memory_size_units(value: str, expected: int) -> None:
    # The unit syntax, without the floor (which no size here reaches)
    assert parse_memory_size(value, "k") == expected


def test_memory_limit_in_a_topology(tmp_path: pathlib.Path) -> None:
    topo = load_topology(write(tmp_path, MINIMAL_DEVICE + "memory_limit = '1.5GiB'\n"))
    assert topo.devices[0].memory_limit == 3 * 1024**3 // 2


@pytest.mark.parametrize("value", ["'1MiB'", "0", "-1", "'31MiB'"])
def test_memory_limit_below_the_floor(tmp_path: pathlib.Path, value: str) -> None:
    err, _ = load_error(tmp_path, MINIMAL_DEVICE + f"memory_limit = {value}\n")
    assert err.key == "devices.broker.memory_limit"
    assert "below the floor of 32 MiB" in err.reason


def test_memory_limit_float_rejected(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(tmp_path, MINIMAL_DEVICE + "memory_limit = 1.5\n")
    assert err.key == "devices.broker.memory_limit"
    assert "got float" in err.reason


def test_toml_syntax_error(tmp_path: pathlib.Path) -> None:
    err, path = load_error(tmp_path, '[devices.a]\nkind = "queue"\nin = {\n')
    assert err.file == str(path)
    assert err.key == ""
    assert err.reason.startswith("invalid TOML: ")
    assert "line 3" in err.reason
    assert str(err) == f"{path}: {err.reason}"


def test_file_not_found(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_topology(missing)
    err = info.value
    assert (err.file, err.key, err.reason) == (str(missing), "", "file not found")


def test_file_is_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology(str(tmp_path))
    assert info.value.file == str(tmp_path)
    assert "directory" in info.value.reason


def test_mon_on_a_queue(tmp_path: pathlib.Path) -> None:
    err, path = load_error(tmp_path, MINIMAL_DEVICE + "mon = { bind = ['tcp://127.0.0.1:5565'] }\n")
    assert (err.file, err.key) == (str(path), "devices.broker.mon")
    assert "'mon' is only allowed for kinds proxy, steerable, monitored_queue" in err.reason


def test_ctrl_and_prefix_restricted(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(tmp_path, MINIMAL_DEVICE.replace('"queue"', '"proxy"') + "ctrl = { bind = ['ipc://c'] }\n")
    assert err.key == "devices.broker.ctrl"
    assert "only allowed for kind steerable" in err.reason
    err, _ = load_error(tmp_path, MINIMAL_DEVICE + "in_prefix = 'x'\n")
    assert err.key == "devices.broker.in_prefix"
    assert "only allowed for kind monitored_queue" in err.reason


def test_ipc_path_too_long(tmp_path: pathlib.Path) -> None:
    long_path = "/tmp/" + "x" * 120 + ".sock"
    err, path = load_error(tmp_path, MINIMAL_DEVICE.replace("tcp://127.0.0.1:5560", f"ipc://{long_path}"))
    assert (err.file, err.key) == (str(path), "devices.broker.out.bind[0]")
    assert "limited to 107 bytes" in err.reason
    assert long_path in err.reason


def test_no_devices(tmp_path: pathlib.Path) -> None:
    err, path = load_error(tmp_path, "[supervisor]\npool_size = 1\n")
    assert (err.file, err.key, err.reason) == (str(path), "devices", "no devices defined")
    err, _ = load_error(tmp_path, "[devices]\n")
    assert (err.key, err.reason) == ("devices", "no devices defined")


def test_invalid_device_name(tmp_path: pathlib.Path) -> None:
    err, _ = load_error(tmp_path, MINIMAL_DEVICE.replace("[devices.broker]", '[devices."1bad name"]'))
    assert err.key == 'devices."1bad name"'
    assert "invalid device name '1bad name'" in err.reason


def test_parse_topology_errors_use_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_topology({"devices": {}}, source="<mem>", base_dir=pathlib.Path("/x"))
    assert str(info.value) == "<mem>: devices: no devices defined"
