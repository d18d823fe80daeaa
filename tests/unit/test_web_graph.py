"""The pure parts of ``procdevices web``: the graph drawn from status + topology, the access
rules, the rate history."""

from __future__ import annotations

from typing import Any

import pytest

from procdevices.supervisor.config import parse_topology
from procdevices.web import graph
from procdevices.web.history import RateHistory
from procdevices.web.security import ACTION_HEADER, TOKEN_COOKIE, Access, Refused, is_loopback


def instance(name: str, device: str, endpoints: dict[str, list[str]], **rates: float) -> dict[str, Any]:
    return {
        "name": name,
        "device": device,
        "kind": "streamer",
        "state": "RUNNING",
        "endpoints": endpoints,
        "traffic": {"rates": rates},
    }


def spec(type_: str, bind: tuple[str, ...] = (), connect: tuple[str, ...] = ()) -> graph.SocketTopology:
    return graph.SocketTopology(type_, bind, connect)


# -- which connect reaches which bind ---------------------------------------------------------


@pytest.mark.parametrize(
    ("connect", "bound", "expected"),
    [
        ("ipc:///r/a", "ipc:///r/a", True),
        ("ipc:///r/a", "ipc:///r/b", False),
        ("tcp://127.0.0.1:5559", "tcp://127.0.0.1:5559", True),
        ("tcp://127.0.0.1:5559", "tcp://127.0.0.1:5560", False),
        ("tcp://127.0.0.1:5559", "tcp://0.0.0.0:5559", True),  # a wildcard bind serves loopback
        ("tcp://localhost:5559", "tcp://0.0.0.0:5559", True),
        ("tcp://[::1]:5559", "tcp://[::]:5559", True),
        ("tcp://10.1.2.3:5559", "tcp://0.0.0.0:5559", False),  # another host's address: not judged here
        ("tcp://127.0.0.1:5559", "ipc:///r/5559", False),
    ],
)
def test_reaches(connect: str, bound: str, expected: bool) -> None:
    assert graph.reaches(connect, bound) is expected


def test_reference_seam_names_a_devices_socket() -> None:
    keys = [graph.SocketKey("broker", "in"), graph.SocketKey("broker", "out"), graph.SocketKey("pipe", "in")]
    assert graph.reference_targets("@broker.out", keys) == [graph.SocketKey("broker", "out")]
    assert graph.reference_targets("ipc://@abstract", keys) == []
    assert graph.reference_targets("@nodot", keys) == []
    bound: dict[graph.SocketKey, list[str]] = {key: [] for key in keys}
    assert graph.connect_targets("@pipe.in", bound) == [graph.SocketKey("pipe", "in")]


# -- the graph ---------------------------------------------------------------------------------


PIPELINE_STATUS = {
    "devices": [
        instance("a", "a", {"in": ["ipc:///r/a-in"], "out": []}, back_msgs_out=7.0, front_msgs_in=7.0),
        instance("b.0", "b", {"in": ["ipc:///r/b-in-0"], "out": ["tcp://0.0.0.0:4001"]}, front_msgs_in=3.0),
        instance("b.1", "b", {"in": ["ipc:///r/b-in-1"], "out": ["tcp://0.0.0.0:4002"]}, front_msgs_in=4.0),
    ]
}
PIPELINE_FILES = {
    "a": {"in": spec("PULL", ("ipc:///r/a-in",)), "out": spec("PUSH", connect=("ipc:///r/b-in-0", "ipc:///r/b-in-1"))},
    "b.0": {"in": spec("PULL", ("ipc:///r/b-in-0",)), "out": spec("PUSH", ("tcp://*:4001",))},
    "b.1": {"in": spec("PULL", ("ipc:///r/b-in-1",)), "out": spec("PUSH", ("tcp://*:4002",), ("tcp://10.0.0.9:7",))},
}


def test_replicas_are_one_group_with_every_endpoint_and_summed_rates() -> None:
    drawn = graph.build(PIPELINE_STATUS, PIPELINE_FILES)
    groups = {g["device"]: g for g in drawn["devices"]}
    assert sorted(groups) == ["a", "b"]
    b = groups["b"]
    assert [i["name"] for i in b["instances"]] == ["b.0", "b.1"]
    sockets = {s["role"]: s for s in b["sockets"]}
    # Bound endpoints as status resolved them (not the file's tcp://*:4001).
    assert sockets["out"]["bind"] == ["tcp://0.0.0.0:4001", "tcp://0.0.0.0:4002"]
    assert sockets["in"]["type"] == "PULL"
    assert sockets["in"]["rates"] == {"in": 7.0, "out": 0.0}
    assert b["rates"] == {"in": 7.0, "out": 0.0}
    assert groups["a"]["rates"] == {"in": 7.0, "out": 7.0}


def test_an_edge_where_a_connect_reaches_a_bind_and_peers_elsewhere() -> None:
    drawn = graph.build(PIPELINE_STATUS, PIPELINE_FILES)
    assert [(e["id"], e["endpoints"]) for e in drawn["edges"]] == [
        ("a.out->b.in", ["ipc:///r/b-in-0", "ipc:///r/b-in-1"])
    ]
    peers = {p["id"]: p for p in drawn["peers"]}
    assert sorted(peers) == ["clients:a.in", "clients:b.out", "service:b.out:tcp://10.0.0.9:7"]
    assert peers["clients:b.out"]["endpoints"] == ["tcp://0.0.0.0:4001", "tcp://0.0.0.0:4002"]
    assert peers["service:b.out:tcp://10.0.0.9:7"]["kind"] == "service"
    # One host: no regions, every device on "this" host.
    assert drawn["regions"] == [] and all(g["host"] is None for g in drawn["devices"])


def test_a_subscriber_connecting_upstream_is_an_edge_too() -> None:
    status = {
        "devices": [
            instance("hub", "hub", {"in": ["ipc:///r/hub-in"], "out": ["ipc:///r/hub-out"]}),
            instance("relay", "relay", {"in": [], "out": ["ipc:///r/relay-out"]}),
        ]
    }
    files = {"relay": {"in": spec("SUB", connect=("ipc:///r/hub-out",)), "out": spec("PUB", ("ipc:///r/relay-out",))}}
    drawn = graph.build(status, files)
    assert [e["id"] for e in drawn["edges"]] == ["relay.in->hub.out"]
    assert "clients:hub.out" not in {p["id"] for p in drawn["peers"]}


def test_without_the_file_the_devices_are_still_drawn() -> None:
    drawn = graph.build(PIPELINE_STATUS, {})
    assert [g["device"] for g in drawn["devices"]] == ["a", "b"]
    assert drawn["edges"] == []
    assert {s["role"]: s["type"] for s in drawn["devices"][0]["sockets"]} == {"in": None, "out": None}


def test_hosts_become_regions() -> None:
    status = {"devices": [{**instance("a", "a", {"in": ["ipc:///r/x"]}), "host": "edge-1"}]}
    drawn = graph.build(status, {})
    assert drawn["regions"] == [{"host": "edge-1", "reachable": True, "error": None}]
    assert drawn["devices"][0]["host"] == "edge-1"


def test_sockets_from_topology_expand_replicas_and_scaled_instances(tmp_path: Any) -> None:
    topology = parse_topology(
        {
            "supervisor": {"run_dir": str(tmp_path / "run")},
            "devices": {
                "b": {
                    "kind": "streamer",
                    "replicas": 2,
                    "in": {"bind": ["ipc://b-in-{replica}"]},
                    "out": {"connect": ["ipc://sink"]},
                }
            },
        },
        source="t.toml",
        base_dir=tmp_path,
    )
    found = graph.sockets_from_topology(topology.devices, ["b.0", "b.3", "gone"])
    assert sorted(found) == ["b.0", "b.3"]
    assert found["b.3"]["in"] == graph.SocketTopology("PULL", (f"ipc://{tmp_path}/b-in-3",), ())
    assert found["b.0"]["out"].connect == (f"ipc://{tmp_path}/sink",)


# -- access rules -------------------------------------------------------------------------------

SAME = {"Origin": "http://127.0.0.1:9465", ACTION_HEADER: "1", "Sec-Fetch-Site": "same-origin"}


def check(access: Access, method: str, headers: dict[str, str], host: str = "127.0.0.1:9465", **cookies: str) -> None:
    access.check(method, host, headers, cookies)


def refused(access: Access, method: str, headers: dict[str, str], host: str = "127.0.0.1:9465", **cookies: str) -> int:
    with pytest.raises(Refused) as caught:
        check(access, method, headers, host, **cookies)
    return caught.value.status


def test_read_only_refuses_every_action_and_serves_reads() -> None:
    access = Access(token=None, allow_actions=False)
    check(access, "GET", {})
    assert refused(access, "POST", SAME) == 403


def test_actions_need_the_header_and_the_same_origin() -> None:
    access = Access(token=None, allow_actions=True)
    check(access, "POST", SAME)
    check(access, "POST", {ACTION_HEADER: "1"})  # a client that is no browser sends no Origin
    assert refused(access, "POST", {k: v for k, v in SAME.items() if k != ACTION_HEADER}) == 403
    assert refused(access, "POST", {**SAME, "Origin": "http://evil.test"}) == 403
    assert refused(access, "POST", {**SAME, "Origin": "http://localhost:9465"}) == 403
    assert refused(access, "POST", {**SAME, "Sec-Fetch-Site": "cross-site"}) == 403


def test_without_a_token_only_loopback_hosts_are_answered() -> None:
    access = Access(token=None, allow_actions=False)
    for host in ("127.0.0.1:9465", "localhost:9465", "[::1]:9465", "127.0.0.1"):
        check(access, "GET", {}, host)
    assert refused(access, "GET", {}, "attacker.example:9465") == 403


def test_a_token_is_required_everywhere_when_set() -> None:
    access = Access(token="0123456789abcdef", allow_actions=False)
    assert refused(access, "GET", {}, "10.0.0.5:9465") == 401
    assert refused(access, "GET", {"Authorization": "Bearer wrong"}, "10.0.0.5:9465") == 401
    check(access, "GET", {"Authorization": "Bearer 0123456789abcdef"}, "10.0.0.5:9465")
    check(access, "GET", {}, "10.0.0.5:9465", **{TOKEN_COOKIE: "0123456789abcdef"})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.1:80", True), ("[::1]:1", True), ("localhost", True), ("10.0.0.1:80", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- history -----------------------------------------------------------------------------------


def test_history_keeps_the_window_and_forgets_removed_devices() -> None:
    history = RateHistory(window=10.0)
    for t in range(0, 15):
        history.add(float(t), {"a": {"in": float(t), "out": 0.0}, **({"b": {"in": 1.0, "out": 1.0}} if t < 5 else {})})
    series = history.series("a", 14.0)
    assert series["in"][0] == 4.0 and series["in"][-1] == 14.0
    assert series["t"][0] == 10.0 and series["t"][-1] == 0.0
    assert history.series("b", 14.0) == {"t": [], "in": [], "out": []}


def host_reply(*devices: dict[str, Any]) -> dict[str, Any]:
    """One host's entry of ``status --all --json``, answered."""
    return {"reachable": True, "error": None, "status": {"supervisor": {}, "devices": list(devices)}}


GONE = {"reachable": False, "error": "host b: no answer on tcp://10.77.0.2:7100 within 1.5s", "status": None}


def test_web_all_merges_every_host_into_one_graph_with_a_region_each() -> None:
    files = {
        "edge": {"out": spec("PUSH", connect=("@broker.in",))},
        "broker": {"in": spec("PULL", bind=("tcp://*:7001",)), "out": spec("PUSH", bind=("tcp://*:7002",))},
    }
    merged = graph.merge_hosts(
        {
            "a": host_reply(instance("edge", "edge", {})),
            "b": host_reply(instance("broker", "broker", {"in": ["tcp://0.0.0.0:7001"]})),
            "c": host_reply(),  # answers, runs nothing: still a region
        },
        {},
    )
    drawn = graph.build(merged, files)
    assert {g["device"]: g["host"] for g in drawn["devices"]} == {"broker": "b", "edge": "a"}
    assert drawn["regions"] == [
        {"host": "a", "reachable": True, "error": None},
        {"host": "b", "reachable": True, "error": None},
        {"host": "c", "reachable": True, "error": None},
    ]
    assert [e["id"] for e in drawn["edges"]] == ["edge.out->broker.in"]  # across the hosts
    assert all(i["reachable"] for g in drawn["devices"] for i in g["instances"])


def test_web_all_greys_an_unreachable_host_and_keeps_its_last_devices() -> None:
    last = {"b": [instance("broker", "broker", {"in": ["tcp://0.0.0.0:7001"]})]}
    merged = graph.merge_hosts({"a": host_reply(instance("edge", "edge", {})), "b": GONE}, last)
    drawn = graph.build(merged, {})
    regions = {r["host"]: r for r in drawn["regions"]}
    assert regions["a"] == {"host": "a", "reachable": True, "error": None}
    assert regions["b"] == {"host": "b", "reachable": False, "error": GONE["error"]}
    broker = next(g for g in drawn["devices"] if g["device"] == "broker")
    assert broker["host"] == "b" and [i["reachable"] for i in broker["instances"]] == [False]
    # A host never seen is a greyed region with nothing in it; the state was not invented.
    never = graph.build(graph.merge_hosts({"a": host_reply(), "b": GONE}, {}), {})
    assert never["devices"] == [] and [r["reachable"] for r in never["regions"]] == [True, False]
    # A host that answers but refuses `status` is not shown as answering either.
    refused = {"reachable": True, "error": "status: busy", "status": None}
    assert graph.build(graph.merge_hosts({"a": refused}, {}), {})["regions"][0]["reachable"] is False


def test_a_reference_across_hosts_is_an_arrow_and_each_host_a_region(tmp_path: Any) -> None:
    # The loader resolves "@broker.in" to tcp://10.77.0.2:7001, which `reaches` cannot judge
    # (another host's address against a wildcard bind): only the reference draws the arrow.
    topology = parse_topology(
        {
            "hosts": {"a": {"address": "10.77.0.1"}, "b": {"address": "10.77.0.2"}},
            "devices": {
                "broker": {
                    "host": "b",
                    "kind": "queue",
                    "in": {"bind": ["tcp://*:7001"]},
                    "out": {"bind": ["tcp://*:7002"]},
                },
                "edge": {
                    "host": "a",
                    "kind": "streamer",
                    "in": {"bind": ["tcp://*:7003"]},
                    "out": {"connect": ["@broker.in"]},
                },
            },
        },
        source="t.toml",
        base_dir=tmp_path,
    )
    files = graph.sockets_from_topology(topology.devices, ["broker", "edge"], topology.references)
    assert files["edge"]["out"].connect == ("@broker.in",)
    status = {
        "devices": [
            instance("broker", "broker", {"in": ["tcp://0.0.0.0:7001"], "out": ["tcp://0.0.0.0:7002"]}),
            instance("edge", "edge", {"in": ["tcp://0.0.0.0:7003"]}),
        ]
    }
    drawn = graph.build(status, files)
    assert [(e["from"], e["to"]) for e in drawn["edges"]] == [
        ({"device": "edge", "role": "out"}, {"device": "broker", "role": "in"})
    ]
    assert not [p for p in drawn["peers"] if p["kind"] == "service"]
    assert {g["device"]: g["host"] for g in drawn["devices"]} == {"broker": "b", "edge": "a"}
    assert [r["host"] for r in drawn["regions"]] == ["a", "b"]
    # A reference to a device not drawn (another host's supervisor runs it) keeps its endpoints.
    alone = graph.sockets_from_topology(topology.devices, ["edge"], topology.references)
    assert alone["edge"]["out"].connect == ("tcp://10.77.0.2:7001",)
