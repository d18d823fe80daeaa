"""Prometheus metrics and `top` on a real supervisor: `python -m procdevices up` with real
device processes, scraped over HTTP, rendered by the real CLI."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families
from support.cli import CLI, RUN_DIR, Up, Wake, cli, describe, finish_cli, push_pull, wait_for, write_topology
from support.topologies import STREAMER

from procdevices.exitcodes import EXIT_CONFIG, EXIT_NOT_RUNNING, EXIT_OK

TWO_KINDS = (
    STREAMER
    + """
[devices.broker]
kind = "queue"
replicas = 2
in  = { bind = ["ipc://broker-{replica}-in.sock"] }
out = { bind = ["ipc://broker-{replica}-out.sock"] }
"""
)


class UpWith(Up):
    """``up`` with extra command-line options."""

    def __init__(self, config: Path, *options: str) -> None:
        super().__init__(config)
        self.options = options

    def start(self) -> UpWith:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "up", "-c", str(self.config), *self.options],
                cwd=self.directory,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.me = psutil.Process(self.proc.pid)
        return self


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def with_metrics(directory: Path, devices: str, address: str = "127.0.0.1:0") -> Path:
    path = write_topology(directory, devices)
    text = path.read_text().replace("[supervisor]\n", f'[supervisor]\nmetrics = "{address}"\n', 1)
    path.write_text(text)
    return path


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples"
    return found[0] if found else None


def front_in(samples: Samples) -> float:
    count = value(samples, "procdevices_device_messages_total", instance="pipe", side="front", direction="in")
    assert count is not None
    return count


def scrape_until(address: str, messages: int, wake: Wake) -> Samples:
    """Scrapes until pipe's front-in counter has reached ``messages``; the last scrape. The
    counter moves on the supervisor's probe tick, which publishes no event: ``wake`` (its
    event stream) bounds each wait to WAKE_SLICE."""

    def reached() -> Samples | None:
        samples = scrape(address)
        return samples if front_in(samples) >= messages else None

    return wait_for(reached, 20, f"the message counter to reach {messages}", wake=wake)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.mark.timeout(120)
def test_counters_grow_with_traffic_and_never_go_backwards_across_a_sigkill(
    short_tmp: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config = with_metrics(short_tmp, STREAMER)
    with Up(config) as up:
        first = up.wait_states({"pipe": "RUNNING"})["pipe"]
        address = up.status()["supervisor"]["metrics"]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address) and not address.endswith(":0"), address
        assert f"metrics: http://{address}/metrics" in up.log()
        before = scrape(address)
        assert value(before, "procdevices_device_state", instance="pipe", state="RUNNING") == 1.0
        assert value(before, "procdevices_device_up", instance="pipe", device="pipe", kind="streamer") == 1.0
        assert value(before, "procdevices_device_restarts_total", instance="pipe") == 0.0
        assert value(before, "process_resident_memory_bytes") is not None, "the supervisor's own process metrics"

        front, back = f"ipc://{short_tmp}/in.sock", f"ipc://{short_tmp}/out.sock"
        push_pull(ctx, front, back, [b"m%d" % i for i in range(50)])
        # The supervisor reads the device's counters on its probe tick (every 0.2 s here).
        grown = scrape_until(address, 50, up.changes)
        assert value(grown, "procdevices_device_messages_total", instance="pipe", side="back", direction="out") == 50
        assert value(grown, "procdevices_device_bytes_total", instance="pipe", side="front", direction="in") == sum(
            len(b"m%d" % i) for i in range(50)
        )
        cpu_before = value(grown, "procdevices_device_cpu_seconds_total", instance="pipe")
        assert cpu_before is not None and cpu_before > 0
        assert (value(grown, "procdevices_device_probe_rtt_seconds_count", instance="pipe") or 0) > 0

        os.kill(first["pid"], signal.SIGKILL)
        up.wait_states({"pipe": "RUNNING"}, check=lambda d: d["pipe"]["pid"] not in (None, first["pid"]))
        after_kill = scrape(address)
        assert front_in(after_kill) >= 50, "the counter went backwards across the restart"
        assert value(after_kill, "procdevices_device_restarts_total", instance="pipe") == 1.0
        assert "SIGKILL" in str(
            [dict(ls)["reason"] for (n, ls) in after_kill if n == "procdevices_device_last_exit_info"]
        )

        push_pull(ctx, front, back, [b"again"] * 10)
        final = scrape_until(address, 60, up.changes)
        assert front_in(final) == 60
        cpu_after = value(final, "procdevices_device_cpu_seconds_total", instance="pipe")
        assert cpu_after is not None and cpu_after >= cpu_before, "CPU seconds went backwards across the restart"
        assert up.cli("down").returncode == 0
        assert up.wait_exit() == EXIT_OK
    with pytest.raises(OSError):
        scrape(address)  # the server stopped with the supervisor


@pytest.mark.timeout(90)
def test_metrics_are_off_by_default_and_nothing_listens(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER)
    with Up(config) as up:
        up.wait_states({"pipe": "RUNNING"})
        assert up.status()["supervisor"]["metrics"] is None
        listening = [c for c in psutil.Process(up.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening == [], listening
        assert "metrics:" not in up.log()
        assert up.cli("down").returncode == 0
        assert up.wait_exit() == EXIT_OK


@pytest.mark.timeout(90)
def test_up_metrics_overrides_the_file(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER)
    with UpWith(config, "--metrics", "127.0.0.1:0") as up:
        up.wait_states({"pipe": "RUNNING"})
        address = up.status()["supervisor"]["metrics"]
        assert value(scrape(address), "procdevices_device_up", instance="pipe") == 1.0
        assert up.cli("down").returncode == 0
        assert up.wait_exit() == EXIT_OK


@pytest.fixture
def busy_port() -> Iterator[str]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield f"127.0.0.1:{holder.getsockname()[1]}"
    finally:
        holder.close()


@pytest.mark.parametrize("where", ["file", "command line"])
def test_a_port_in_use_exits_78_before_any_device_starts(short_tmp: Path, busy_port: str, where: str) -> None:
    if where == "file":
        config = with_metrics(short_tmp, STREAMER, busy_port)
        result = cli("up", config=config)
    else:
        config = with_metrics(short_tmp, STREAMER, "127.0.0.1:0")
        result = cli("up", "--metrics", busy_port, config=config)
    assert result.returncode == EXIT_CONFIG, describe(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("procdevices: ")]
    assert errors == [f"procdevices: metrics: cannot listen on {busy_port}: Address already in use"], describe(result)
    assert "RUNNING" not in result.stderr and "supervising" not in result.stderr, describe(result)
    assert not (short_tmp / RUN_DIR / "state.json").exists()


def test_a_bad_metrics_address_on_the_command_line_is_a_usage_error(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER)
    result = cli("up", "--metrics", "example.com:9464", config=config)
    assert result.returncode == 2 and "must be an IPv4 address" in result.stderr, describe(result)


@pytest.mark.timeout(90)
def test_top_once_renders_every_device(short_tmp: Path) -> None:
    config = with_metrics(short_tmp, TWO_KINDS)
    with Up(config) as up:
        devices = up.wait_states()
        result = up.cli("top", "--once")
        assert result.returncode == EXIT_OK, describe(result)
        assert "\x1b" not in result.stdout, "ANSI escapes in output that is not a terminal"
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"supervisor pid {up.pid}, up ") and "3 RUNNING" in lines[0], lines[0]
        assert "metrics http://127.0.0.1:" in lines[0]
        assert lines[1].split() == [
            "NAME",
            "STATE",
            "PID",
            "UPTIME",
            "RESTARTS",
            "IN/s",
            "OUT/s",
            "MB/s",
            "IN",
            "MB/s",
            "OUT",
            "RSS",
            "CPU%",
            "LAST",
            "EXIT",
        ]
        rows = {line.split()[0]: line.split() for line in lines[2:] if line.strip()}
        assert set(rows) == set(devices) == {"pipe", "broker.0", "broker.1"}
        for name, device in devices.items():
            assert rows[name][1] == "RUNNING" and rows[name][2] == str(device["pid"]), rows[name]
        assert [line.split()[0] for line in lines[2:] if line.strip()] == ["broker.0", "broker.1", "pipe"]

        one = up.cli("top", "broker.1", "--once", "--sort", "restarts")
        assert one.returncode == EXIT_OK, describe(one)
        assert [line.split()[0] for line in one.stdout.splitlines()[2:] if line.strip()] == ["broker.1"]

        # Without --once and without a terminal: frame after frame until Ctrl-C, which exits 0.
        follower = up.start_cli("top", "-n", "0.1")
        try:
            assert follower.stdout is not None
            headers = 0
            deadline = time.monotonic() + 20
            while headers < 2 and time.monotonic() < deadline:
                if select.select([follower.stdout], [], [], 1.0)[0]:
                    headers += follower.stdout.readline().startswith("supervisor pid ")
            assert headers == 2, "top printed no second frame"
            follower.send_signal(signal.SIGINT)
        finally:
            result = finish_cli(follower)
        assert result.returncode == EXIT_OK, describe(result)
        assert "Traceback" not in result.stderr, result.stderr
        assert up.cli("down").returncode == 0
        assert up.wait_exit() == EXIT_OK


def test_top_without_a_supervisor_exits_4(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER)
    result = cli("top", "--once", config=config)
    assert result.returncode == EXIT_NOT_RUNNING, describe(result)
    assert "no supervisor is running" in result.stderr
