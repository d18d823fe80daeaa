"""Property tests of the loader: whatever the document, loading either succeeds or raises
ConfigError (never another exception), and every ConfigError message is one printable line."""

from __future__ import annotations

import copy
import datetime
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procdevices.supervisor.config import ConfigError, Topology, parse_topology

BASE_DIR = Path("/srv/procdevices-properties")  # never touched: parsing only joins paths

# Keys the loader knows, so random documents often get past the first table.
KNOWN_KEYS = [
    "supervisor",
    "devices",
    "run_dir",
    "pool_size",
    "defaults",
    "kind",
    "in",
    "out",
    "mon",
    "ctrl",
    "in_prefix",
    "out_prefix",
    "restart",
    "backoff",
    "initial",
    "max",
    "factor",
    "intensity",
    "max_restarts",
    "within",
    "stable_after",
    "probe",
    "interval",
    "timeout",
    "failures",
    "memory_limit",
    "start_timeout",
    "stop_timeout",
    "kill_timeout",
    "stop_linger",
    "replicas",
    "type",
    "bind",
    "connect",
    "sockopts",
    "SNDHWM",
    "linger",
    "SUBSCRIBE",
    "CURVE_SECRETKEY",
    "a",
    "b",
]
KNOWN_TEXT = [
    "queue",
    "forwarder",
    "proxy",
    "steerable",
    "monitored_queue",
    "ROUTER",
    "sub",
    "always",
    "tcp://127.0.0.1:7001",
    "tcp://*:*",
    "tcp://[::]:7001",
    "tcp://nohost.invalid:1",
    "ipc://x.sock",
    "ipc://@a",
    "ipc://*",
    "inproc://x",
    "tcp://127.0.0.1:70{replica}0",
    "256MiB",
    "1.5GB",
    "",
    "a\x1b[31mb",
    "line\nbreak",
    "\u2028",
    "\ud800",
]

keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12))
scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(KNOWN_TEXT),
    st.text(max_size=20),
    st.datetimes(),
    st.dates(),
    st.times(),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=30,
)

VALID: dict[str, Any] = {
    "supervisor": {"run_dir": "run", "pool_size": 1, "defaults": {"stop_timeout": 2.0, "backoff": {"initial": 0.1}}},
    "devices": {
        "broker": {
            "kind": "queue",
            "in": {"type": "ROUTER", "bind": ["tcp://127.0.0.1:7001"], "sockopts": {"SNDHWM": 1000}},
            "out": {"bind": ["ipc://broker-out.sock"]},
            "probe": {"interval": 0.5, "failures": 2},
            "memory_limit": "256MiB",
        },
        "fan": {
            "kind": "forwarder",
            "replicas": 2,
            "in": {"connect": ["tcp://127.0.0.1:7100"], "sockopts": {"SUBSCRIBE": ["a", "b"]}},
            "out": {"bind": ["tcp://127.0.0.1:72{replica}0"]},
        },
        "steer": {
            "kind": "steerable",
            "in": {"bind": ["tcp://*:*"]},
            "out": {"bind": ["ipc://@steer-out"]},
            "mon": {"bind": ["ipc://steer-mon.sock"]},
            "ctrl": {"type": "PAIR", "bind": ["ipc://steer-ctrl.sock"]},
            "stop_linger": 0.5,
        },
    },
}


def load(data: Any) -> Topology | ConfigError:
    """The topology, or the ConfigError (checked to be one printable line)."""
    try:
        return parse_topology(data, source="<properties>", base_dir=BASE_DIR)
    except ConfigError as err:
        message = str(err)
        assert message and message.isprintable(), repr(message)
        assert message.startswith("<properties>: "), message
        return err


def test_the_valid_document_is_valid() -> None:
    topology = load(VALID)
    assert isinstance(topology, Topology), topology
    assert [d.name for d in topology.instances()] == ["broker", "fan.0", "fan.1", "steer"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_loads_or_is_one_config_error(data: Any) -> None:
    load(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, documents, max_size=3), st.dictionaries(keys, documents, max_size=4))
def test_random_devices_and_supervisor_tables(devices: dict[str, Any], supervisor: dict[str, Any]) -> None:
    load({"supervisor": supervisor, "devices": devices})


def _mutate(data: Any, draw: st.DrawFn) -> Any:
    """Walk down a random path of ``data`` and replace, delete or add one value there."""
    node = data
    while True:
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            child = node[key]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[key] = draw(documents)
            elif action == "delete":
                del node[key]
            else:
                node[draw(keys)] = draw(documents)
            return data
        if isinstance(node, list) and node:
            index = draw(st.integers(0, len(node) - 1))
            if isinstance(node[index], (dict, list)) and node[index] and draw(st.booleans()):
                node = node[index]
                continue
            node[index] = draw(documents)
            return data
        return data


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        data = _mutate(data, draw)
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_of_a_valid_topology_load_or_are_one_config_error(data: Any) -> None:
    load(data)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text(), st.text())
def test_a_config_error_is_always_one_printable_line(file: str, key: str, reason: str) -> None:
    message = str(ConfigError(file, key, reason))
    assert message.isprintable(), repr(message)
    # Escaping is idempotent, so a pickled and rebuilt error reads the same.
    err = ConfigError(file, key, reason)
    assert str(ConfigError(err.file, err.key, err.reason)) == message


def test_a_deeply_nested_mapping_is_a_config_error() -> None:
    deep: Any = {}
    for _ in range(10_000):
        deep = {"devices": deep}
    result = load(deep)
    assert isinstance(result, ConfigError)


def test_scalars_of_every_toml_type_are_named_in_errors() -> None:
    for value, name in [
        (math.nan, "float"),
        (True, "boolean"),
        (datetime.date(2020, 1, 1), "date"),
        (datetime.time(1, 2), "time"),
        (datetime.datetime(2020, 1, 1), "datetime"),
        ([1], "array"),
    ]:
        err = load({"supervisor": {"pool_size": value}, "devices": VALID["devices"]})
        assert isinstance(err, ConfigError) and err.reason == f"expected an integer, got {name}", err
