"""Nothing a client does to the metrics server takes the supervisor down (400 idle and
slowloris connections under a low open-file limit), and the owner-only choice
(``metrics_socket``) is readable by the run dir's owner and nobody else."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support.cli import RUN_DIR, Up, wait_for, write_topology
from test_descriptor_plan import LimitedUp, streamers

from procdevices.supervisor import httpserve

NOBODY = 65534
FLOOD = 400
LIMIT = 384  # below the flood: prometheus_client's server ran out of descriptors under it
CONNECT_WAIT = 0.02  # a loopback connect the server takes completes in well under a millisecond


def metrics_topology(directory: Path, extra: str) -> Path:
    config = write_topology(directory, streamers(2), pool_size=0)
    text = config.read_text().replace("[supervisor]\n", f"[supervisor]\n{extra}\n", 1)
    config.write_text(text)
    return config


@contextlib.contextmanager
def flood(host: str, port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections, one after the other as fast as they complete (what killed the
    supervisor before: every one accepted, each holding a thread and a descriptor), half idle,
    half a request begun and never finished (slowloris). A connect the server leaves in its
    backlog is given up after CONNECT_WAIT here, and the kernel keeps trying it."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.settimeout(CONNECT_WAIT)
            with contextlib.suppress(OSError):
                sock.connect((host, port))
                if i % 2:
                    sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        yield socks
    finally:
        for sock in socks:
            sock.close()


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


@pytest.mark.timeout(240)
def test_a_flood_of_metrics_connections_leaves_the_supervisor_up_and_supervising(short_tmp: Path) -> None:
    config = metrics_topology(short_tmp, 'metrics = "127.0.0.1:0"')
    with LimitedUp(config, LIMIT, LIMIT) as up:
        devices = up.wait_states()
        host, port = up.status()["supervisor"]["metrics"].rsplit(":", 1)
        url = f"http://{host}:{port}/metrics"
        assert "procdevices_device_up" in (scrape(url) or ""), up.log_tail()
        me = psutil.Process(up.pid)
        threads_before = me.num_threads()
        with flood(host, int(port), FLOOD) as socks:
            # The flood is in: the server holds at most its cap of them, the rest wait.
            wait_for(
                lambda: me.num_fds() > 0 and sum(1 for c in me.net_connections("tcp") if c.raddr) >= 8,
                30,
                "the metrics server to take connections",
                wake=up.until_changed,
            )
            assert me.num_threads() <= threads_before + httpserve.MAX_CONNECTIONS, me.num_threads()
            assert me.num_fds() <= LIMIT - httpserve.RESERVE, me.num_fds()
            # Supervising: status answers, a killed device is restarted.
            victim = devices["d0"]["pid"]
            os.kill(victim, 9)
            up.wait_states(
                timeout=60, check=lambda d: d["d0"]["pid"] not in (None, victim), what="d0 restarted in the flood"
            )
            assert me.num_threads() <= threads_before + httpserve.MAX_CONNECTIONS, me.num_threads()
            assert len(socks) == FLOOD
        # The flood gone, scrapes are served again within a connection's deadline or so.
        assert wait_for(lambda: scrape(url), 60, "a scrape after the flood", wake=up.until_changed)
        assert up.running(), up.log_tail()
        assert "Too many open files" not in up.log() and "internal error" not in up.log(), up.log_tail()
        assert up.cli("down").returncode == 0
        assert up.wait_exit(60) == 0


def unix_scrape(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


NOBODY_CONNECTS = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(type(e).__name__)
else:
    print("connected")
"""


@pytest.mark.timeout(120)
def test_metrics_on_a_unix_socket_are_for_the_owner_only(short_tmp: Path) -> None:
    config = metrics_topology(short_tmp, "metrics_socket = true")
    with Up(config) as up:
        up.wait_states()
        path = up.status()["supervisor"]["metrics_socket"]
        assert path == str(short_tmp / RUN_DIR / "metrics.sock")
        assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        text = unix_scrape(path)
        assert text.startswith("HTTP/1.0 200") and 'procdevices_device_up{device="d0"' in text, text[:300]
        assert up.status()["supervisor"]["metrics"] is None, "no TCP port unless asked for"
        # Another local user cannot even reach the socket.
        other = subprocess.run(
            [sys.executable, "-c", NOBODY_CONNECTS, path], capture_output=True, text=True, timeout=30
        )
        assert other.stdout.strip() == "PermissionError", other
        assert up.cli("down").returncode == 0
        assert up.wait_exit(60) == 0
    assert not Path(path).exists(), "metrics.sock survived a clean stop"
