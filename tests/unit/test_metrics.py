"""The metrics collector against a supervisor wired to fakes (tests/support/fakes.py): what a
scrape shows after scripted histories, that counters never go backwards, that a failing part
never breaks a scrape or a probe, and that every supervisor has a registry of its own."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.fakes import Harness, topology

from procdevices.supervisor.config import ConfigError, parse_topology
from procdevices.supervisor.config.settings import split_host_port
from procdevices.supervisor.launcher import DeviceProcess
from procdevices.supervisor.metrics import Metrics, start_metrics
from procdevices.supervisor.metricserror import MetricsUnavailable
from procdevices.supervisor.traffic import COUNTERS, Traffic


class FakeUsage:
    """CPU seconds and RSS per pid, as the test sets them; ``fail`` makes every read raise."""

    def __init__(self) -> None:
        self.cpu: dict[int, float] = {}
        self.fail = False

    def __call__(self, process: DeviceProcess) -> tuple[float, int] | None:
        if self.fail:
            raise RuntimeError("psutil exploded")
        cpu = self.cpu.get(process.pid)
        return None if cpu is None else (cpu, 30_000_000)


class Scraped:
    def __init__(self, metrics: Metrics) -> None:
        self.registry = metrics.registry

    def __call__(self, name: str, instance: str = "a", **labels: str) -> float | None:
        return self.registry.get_sample_value(
            name, {"device": instance, "instance": instance, "kind": "streamer", **labels}
        )


@pytest.fixture
def two(tmp_path: Path) -> Harness:
    return Harness(topology({"a": {}, "b": {}}, tmp_path)).start()


def wired(harness: Harness, usage: FakeUsage | None = None) -> tuple[Metrics, Scraped]:
    metrics = Metrics(harness.sup, harness.log, read_usage=usage or FakeUsage())
    return metrics, Scraped(metrics)


def stats(**values: int) -> dict[str, object]:
    return {"loop": "running", "stats": {**dict.fromkeys(COUNTERS, 0), **values}}


def test_state_up_restarts_and_last_exit_follow_the_history(two: Harness) -> None:
    metrics, scrape = wired(two)
    assert scrape("procdevices_device_state", state="STARTING") == 1.0
    assert scrape("procdevices_device_up") == 0.0
    two.ready("a", "b")
    assert scrape("procdevices_device_state", state="RUNNING") == 1.0
    assert scrape("procdevices_device_state", state="STARTING") == 0.0
    assert scrape("procdevices_device_up") == 1.0
    assert scrape("procdevices_device_last_exit_info", reason="") is None
    two.exit("a", -signal.SIGKILL)
    assert scrape("procdevices_device_state", state="BACKOFF") == 1.0
    assert scrape("procdevices_device_up") == 0.0
    assert scrape("procdevices_device_restarts_total") == 1.0
    reason = two.child("a").last_exit
    assert "SIGKILL" in reason
    assert scrape("procdevices_device_last_exit_info", reason=reason) == 1.0
    assert scrape("procdevices_device_up", "b") == 1.0, "the neighbour is unaffected"


def test_paused_and_blocked_are_gauges(two: Harness) -> None:
    metrics, scrape = wired(two)
    two.ready("a", "b")
    two.ping_reply["a"] = {"loop": "running", "paused": True}  # every PING says
    two.ping_reply["b"] = {"loop": "blocked", "blocked_side": "out", "blocked_for": 3.0}
    two.advance(1.0)
    assert (scrape("procdevices_device_paused"), scrape("procdevices_device_paused", "b")) == (1.0, 0.0)
    assert (scrape("procdevices_device_blocked"), scrape("procdevices_device_blocked", "b")) == (0.0, 1.0)


def test_traffic_counters_survive_a_restart(two: Harness) -> None:
    metrics, scrape = wired(two)
    two.ready("a", "b")
    two.ping_reply["a"] = stats(front_msgs_in=700, back_bytes_out=7000)
    two.advance(1.0)
    assert scrape("procdevices_device_messages_total", side="front", direction="in") == 700
    assert scrape("procdevices_device_bytes_total", side="back", direction="out") == 7000
    two.exit("a", -signal.SIGKILL)
    assert scrape("procdevices_device_messages_total", side="front", direction="in") == 700
    two.advance(0.0)
    two.ready("a")
    two.ping_reply["a"] = stats(front_msgs_in=5, back_bytes_out=50)
    two.advance(1.0)
    assert scrape("procdevices_device_messages_total", side="front", direction="in") == 705
    assert scrape("procdevices_device_bytes_total", side="back", direction="out") == 7050


def test_a_scrape_between_the_two_steps_of_folding_an_exit_never_goes_backwards(two: Harness) -> None:
    metrics, scrape = wired(two)
    two.ready("a", "b")
    two.ping_reply["a"] = stats(front_msgs_in=100)
    two.advance(1.0)
    traffic = two.child("a").traffic
    # What a scrape thread may see mid-fold: the ended process already added, not yet reset.
    traffic.ended = {k: traffic.ended[k] + traffic.current[k] for k in COUNTERS}
    assert scrape("procdevices_device_messages_total", side="front", direction="in") == 200
    traffic.current = dict.fromkeys(COUNTERS, 0)
    assert scrape("procdevices_device_messages_total", side="front", direction="in") == 200


def test_cpu_seconds_accumulate_across_restarts_and_rss_is_only_of_a_live_process(two: Harness) -> None:
    usage = FakeUsage()
    metrics, scrape = wired(two, usage)
    two.ready("a", "b")
    assert scrape("procdevices_device_cpu_seconds_total") is None, "nothing sampled before a probe"
    usage.cpu[two.process("a").pid] = 2.0
    two.advance(1.0)
    assert scrape("procdevices_device_cpu_seconds_total") == 2.0
    assert scrape("procdevices_device_resident_memory_bytes") == 30_000_000
    usage.cpu[two.process("a").pid] = 3.5
    two.advance(1.0)
    assert scrape("procdevices_device_cpu_seconds_total") == 3.5
    two.exit("a", -signal.SIGKILL)
    assert scrape("procdevices_device_cpu_seconds_total") == 3.5
    assert scrape("procdevices_device_resident_memory_bytes") is None, "RSS of a process that is gone"
    two.advance(0.0)
    two.ready("a")
    usage.cpu[two.process("a").pid] = 0.25
    two.advance(1.0)
    assert scrape("procdevices_device_cpu_seconds_total") == 3.75


def test_every_answered_probe_is_in_the_rtt_histogram(two: Harness) -> None:
    metrics, scrape = wired(two)
    assert scrape("procdevices_device_probe_rtt_seconds_count") == 0.0, "a histogram from the start"
    two.ready("a", "b")
    two.advance(3.0)
    assert scrape("procdevices_device_probe_rtt_seconds_count") == 3.0
    two.unresponsive.add("a")
    two.advance(1.0)
    assert scrape("procdevices_device_probe_rtt_seconds_count") == 3.0


def test_a_failing_sampler_costs_neither_the_probe_nor_the_scrape(two: Harness) -> None:
    usage = FakeUsage()
    metrics, scrape = wired(two, usage)
    two.ready("a", "b")
    usage.fail = True
    two.advance(5.0)
    assert two.state("a") == "RUNNING" and two.launches("a") == 1, "probes still count as answered"
    assert two.child("a").probe.consecutive_failures == 0
    assert scrape("procdevices_device_probe_rtt_seconds_count") == 5.0
    assert metrics.registry.get_sample_value("procdevices_metrics_errors_total") == 10.0
    assert sum("metrics: error while sampling" in line for line in two.lines) == 1, "logged once"


def test_a_device_that_cannot_be_read_is_left_out_of_one_scrape_only(
    two: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics, scrape = wired(two)
    two.ready("a", "b")

    class Unreadable(Traffic):
        __slots__ = ()

        def totals(self) -> dict[str, int]:
            raise RuntimeError("mid-update")

    monkeypatch.setattr(two.child("a"), "traffic", Unreadable())
    text = prometheus_client.generate_latest(metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["instance"]: s.value for s in families["procdevices_device_up"].samples}
    assert up == {"b": 1.0}
    assert families["procdevices_metrics_errors"].samples[0].value == 1.0
    assert "process_cpu_seconds" in families, "the supervisor's own process metrics"
    monkeypatch.undo()
    assert scrape("procdevices_device_up") == 1.0


def test_each_supervisor_has_a_registry_of_its_own(tmp_path: Path) -> None:
    first = Harness(topology({"a": {}}, tmp_path)).start()
    second = Harness(topology({"a": {}}, tmp_path)).start()
    one, scrape_one = wired(first)
    other, scrape_other = wired(second)
    first.ready("a")
    assert (scrape_one("procdevices_device_up"), scrape_other("procdevices_device_up")) == (1.0, 0.0)
    assert prometheus_client.REGISTRY.get_sample_value("procdevices_device_up", {"instance": "a"}) is None


def test_served_over_http_on_a_free_port_and_closed_cleanly(two: Harness) -> None:
    two.ready("a", "b")
    server = start_metrics(two.sup, "127.0.0.1:0", two.log)
    try:
        host, port = split_host_port(server.address)
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(server.url, timeout=10) as response:
            text = response.read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"procdevices_device_state", "procdevices_device_messages", "process_cpu_seconds"} <= names
        with pytest.raises(MetricsUnavailable, match=f"cannot listen on {server.address}: Address already in use"):
            start_metrics(two.sup, server.address, two.log)
    finally:
        server.close()
    assert two.sup.health.rtt_observers == [], "a closed server leaves no observer behind"
    again = start_metrics(two.sup, server.address, two.log)  # the port is free again
    again.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_listen_addresses_accepted(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9464", "expected HOST:PORT"),
        (":9464", "expected HOST:PORT"),
        ("127.0.0.1:65536", "from 0 to 65535"),
        ("127.0.0.1:-1", "from 0 to 65535"),
        ("127.0.0.1:９４", "from 0 to 65535"),
        ("127.0.0.1:", "from 0 to 65535"),
        ("example.com:9464", "must be an IPv4 address"),
        ("::1:9464", "must be an IPv4 address"),
        ("[::1]9464", "in brackets"),
        ("[nope]:9464", "is not an IPv6 address"),
        ("256.0.0.1:80", "must be an IPv4 address"),
    ],
)
def test_listen_addresses_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        split_host_port(text)


def test_the_metrics_setting_is_off_by_default_and_validated(tmp_path: Path) -> None:
    devices = {"a": {"kind": "streamer", "in": {"bind": ["ipc://a-in"]}, "out": {"bind": ["ipc://a-out"]}}}
    off = parse_topology({"devices": devices}, source="<t>", base_dir=tmp_path)
    assert off.supervisor.metrics is None
    on = parse_topology({"supervisor": {"metrics": "127.0.0.1:0"}, "devices": devices}, source="<t>", base_dir=tmp_path)
    assert on.supervisor.metrics == "127.0.0.1:0"
    with pytest.raises(ConfigError, match=r"supervisor\.metrics: invalid address '127\.0\.0\.1:99999'"):
        parse_topology(
            {"supervisor": {"metrics": "127.0.0.1:99999"}, "devices": devices}, source="<t>", base_dir=tmp_path
        )
    with pytest.raises(ConfigError, match=r"supervisor\.metrics: expected a string, got integer"):
        parse_topology({"supervisor": {"metrics": 9464}, "devices": devices}, source="<t>", base_dir=tmp_path)


def test_instances_a_scale_removes_leave_the_metrics_and_new_ones_join(tmp_path: Path) -> None:
    replicated = {
        "in": {"bind": [f"ipc://{tmp_path}/p-{{replica}}-in"]},
        "out": {"bind": [f"ipc://{tmp_path}/p-{{replica}}-out"]},
    }
    harness = Harness(topology({"pipe": {"replicas": 2, **replicated}}, tmp_path)).start()
    metrics = Metrics(harness.sup, harness.log, read_usage=FakeUsage())

    def instances(name: str) -> set[str]:
        text = prometheus_client.generate_latest(metrics.registry).decode()
        family = next(f for f in text_string_to_metric_families(text) if f.name == name)
        return {s.labels["instance"] for s in family.samples}

    harness.ready("pipe.0", "pipe.1")
    harness.request("scale", name="pipe", replicas=3)
    harness.ready("pipe.2")
    harness.advance(1.0)
    assert instances("procdevices_device_up") == {"pipe.0", "pipe.1", "pipe.2"}
    assert instances("procdevices_device_probe_rtt_seconds") == {"pipe.0", "pipe.1", "pipe.2"}
    harness.request("scale", name="pipe", replicas=2)
    harness.exit("pipe.2", 0)
    harness.advance(1.0)
    assert instances("procdevices_device_up") == {"pipe.0", "pipe.1"}
    assert instances("procdevices_device_probe_rtt_seconds") == {"pipe.0", "pipe.1"}
