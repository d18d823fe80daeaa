"""``procdevices web`` in a real browser: Debian's headless Chromium driven by Playwright,
against a real supervisor (``up``) and a real ``web`` process.

Each test launches its own browser (about a second): a browser kept across tests would be a
child process outliving the test, which the suite forbids. So that the file stays quick on a
2-core CI box, one test walks through several checks on one supervisor: the read-only page,
then the page with actions. The screenshots in docs/ are taken here, so they show the page
as it is.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from playwright.sync_api import Browser, Page, sync_playwright
from support.cli import (
    CLI,
    Up,
    cli,
    connect,
    describe,
    expect_silence,
    free_tcp_port,
    readable,
    recv_within,
    wait_for,
    write_topology,
)

CHROMIUM = os.environ.get("PROCDEVICES_CHROMIUM", "/usr/bin/chromium")
# Headless as root: no sandbox; nothing that reaches the network on its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"

# The default topology's three kinds and socket types, on ports of their own.
DEFAULT_LIKE = """\
[devices.broker]
kind = "queue"
in = { type = "ROUTER", bind = ["tcp://127.0.0.1:*"] }
out = { type = "DEALER", bind = ["tcp://127.0.0.1:*"] }

[devices.pubsub]
kind = "forwarder"
in = { type = "SUB", bind = ["tcp://127.0.0.1:*"] }
out = { type = "PUB", bind = ["tcp://127.0.0.1:*"] }

[devices.pipeline]
kind = "streamer"
in = { type = "PULL", bind = ["tcp://127.0.0.1:*"] }
out = { type = "PUSH", bind = ["tcp://127.0.0.1:*"] }
"""

# Three streamers in a row: producers -> source -> worker -> sink -> consumers.
PIPELINE3 = """\
[devices.source]
kind = "streamer"
in = { bind = ["ipc://source-in"] }
out = { connect = ["ipc://worker-in"] }

[devices.worker]
kind = "streamer"
in = { bind = ["ipc://worker-in"] }
out = { connect = ["ipc://sink-in"] }

[devices.sink]
kind = "streamer"
in = { bind = ["ipc://sink-in"] }
out = { bind = ["ipc://sink-out"] }
"""


# -- the pieces ------------------------------------------------------------------------------


class Web:
    """``procdevices web --listen 127.0.0.1:0`` as a subprocess; ``url`` once it listens."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "web", "-c", str(config), "--listen", "127.0.0.1:0", *extra],
            cwd=config.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.lines: list[str] = []

        def listening() -> str | None:
            if self.proc.poll() is not None:
                pytest.fail(f"web exited {self.proc.returncode}: {self.proc.stderr.read()}", pytrace=False)  # type: ignore[union-attr]
            line = self.proc.stderr.readline()  # type: ignore[union-attr]
            self.lines.append(line)
            return line.split()[2] if " http://" in line else None

        self.url = wait_for(listening, 20.0, "web to listen", wake=readable(self.proc.stderr.fileno()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("web did not stop within 10 s of SIGTERM", pytrace=False)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        assert code == 0, f"web exited {code}"

    def post(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.url + path.lstrip("/"), method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does)", pytrace=False)
    with sync_playwright() as p:
        # Playwright gives every launch a fresh --user-data-dir of its own and removes it.
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector(".card")
    page.errors = errors  # type: ignore[attr-defined]
    return page


@pytest.fixture
def default_like(short_tmp: Path) -> Iterator[Up]:
    with Up(write_topology(short_tmp, DEFAULT_LIKE)) as up:
        up.wait_states()
        yield up


@pytest.fixture
def pipeline(short_tmp: Path) -> Iterator[Up]:
    with Up(write_topology(short_tmp, PIPELINE3)) as up:
        up.wait_states()
        yield up


@contextlib.contextmanager
def web(up: Up, *extra: str) -> Iterator[Web]:
    server = Web(up.config, *extra)
    try:
        yield server
    finally:
        server.close()


def screenshot(page: Page, name: str) -> None:
    """Into docs/, where docs/observability.md and docs/web.md show it."""
    page.wait_for_timeout(300)  # the arrows are drawn after the last snapshot's layout
    page.screenshot(path=str(DOCS / name), full_page=True)


def instance_state(page: Page, name: str) -> str | None:
    value: str | None = page.get_attribute(f'.instance[data-instance="{name}"]', "data-state")
    return value


# -- the tests -------------------------------------------------------------------------------


def test_read_only_page_shows_the_topology_live(browser: Browser, default_like: Up) -> None:
    with web(default_like) as server:
        page = open_page(browser, server.url)
        shows_every_device_with_its_state(page, default_like)
        screenshot(page, "web-default.png")
        a_killed_device_restarts_without_reload(page, default_like)
        has_no_controls_and_refuses_actions(page, server, default_like)
        greys_the_picture_when_the_supervisor_stops(page, default_like)
        assert not page.errors  # type: ignore[attr-defined]


def shows_every_device_with_its_state(page: Page, up: Up) -> None:
    status = up.devices()
    for name, device in status.items():
        page.wait_for_function(
            "([name, pid]) => { const row = document.querySelector(`.instance[data-instance='${name}']`);"
            " return row && row.dataset.state === 'RUNNING' && row.querySelector('.pid').textContent === String(pid); }",
            arg=[name, device["pid"]],
            timeout=5000,
        )
        card = page.locator(f'.card[data-device="{device["device"]}"]')
        assert card.locator(".kind").inner_text() == device["kind"]
        for role, endpoints in device["endpoints"].items():
            shown = card.locator(f'.socket[data-role="{role}"] .eps').inner_text()
            for endpoint in endpoints:  # resolved: the real port of tcp://127.0.0.1:*
                assert f"bind {endpoint}" in shown
    # Nobody in the topology connects to these sockets: each has its anonymous clients.
    assert page.locator("div.peer").count() == 6
    assert page.locator("path.edge.peer").count() == 6
    assert page.locator("#mode").inner_text() == "read-only"


def a_killed_device_restarts_without_reload(page: Page, up: Up) -> None:
    old_pid = up.devices()["pipeline"]["pid"]
    # Every state the row shows, however briefly (the restart itself takes tens of ms).
    page.evaluate(
        """() => {
          window.seenStates = [];
          window.notReloaded = true;
          new MutationObserver((records) => {
            for (const r of records) if (r.target.dataset.instance === 'pipeline') window.seenStates.push(r.target.dataset.state);
          }).observe(document.getElementById('regions'), {subtree: true, attributes: true, attributeFilter: ['data-state']});
        }"""
    )
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    page.wait_for_function(
        """old => {
          const row = document.querySelector(".instance[data-instance='pipeline']");
          const pid = row.querySelector('.pid').textContent;
          return window.seenStates.some((s) => s !== 'RUNNING') && row.dataset.state === 'RUNNING'
            && pid !== String(old) && pid !== '-';
        }""",
        arg=old_pid,
        timeout=2000,
    )
    elapsed = time.monotonic() - killed_at
    seen = page.evaluate("window.seenStates")
    assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
    assert "BACKOFF" in seen or "STARTING" in seen, seen
    assert elapsed < 2.0
    new = up.devices()["pipeline"]
    assert new["state"] == "RUNNING" and new["pid"] != old_pid and new["restarts"] == 1
    page.wait_for_function(
        "() => document.querySelector(\".instance[data-instance='pipeline'] .restarts\").textContent === '1'"
    )
    assert "SIGKILL" in page.locator('.instance[data-instance="pipeline"] .last-exit').inner_text()


def has_no_controls_and_refuses_actions(page: Page, server: Web, up: Up) -> None:
    assert page.locator("button[data-action]").count() == 0
    # Even the page's own origin, with the header, is refused.
    status = page.evaluate(
        """url => fetch(url, {method: 'POST', headers: {'X-Procdevices-Action': '1'}}).then((r) => r.status)""",
        server.url + "api/devices/pipeline/pause",
    )
    assert status == 403
    code, body = server.post("/api/devices/pipeline/pause", {"X-Procdevices-Action": "1"})
    assert code == 403 and "read-only" in body["error"]
    assert up.devices()["pipeline"]["paused"] is False


def greys_the_picture_when_the_supervisor_stops(page: Page, up: Up) -> None:
    result = up.cli("down")
    assert result.returncode == 0, result.stderr
    page.wait_for_function("() => document.body.dataset.reachable === 'false'", timeout=10000)
    # The last picture stays, greyed, and says why. A status asked while the supervisor was
    # stopping may time out first ("no supervisor answered"); the next poll finds no socket.
    page.wait_for_function(
        "() => document.querySelector('#problem').innerText.includes('no supervisor is running')", timeout=10000
    )
    assert page.locator(".card").count() == 3
    assert page.locator("#graph.unreachable").count() == 1


class Traffic:
    """A producer and a consumer at the ends of the pipeline, in a thread, until ``stop``."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], front: str, back: str) -> None:
        self.push = connect(ctx, zmq.PUSH, front)
        self.pull = connect(ctx, zmq.PULL, back)
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.push.send(b"x" * 100, zmq.NOBLOCK)
            except zmq.Again:
                pass
            while self.pull.poll(5):
                self.pull.recv()
                self.received += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_actions_page_pauses_a_device_and_refuses_other_origins(
    browser: Browser, pipeline: Up, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    with web(pipeline, "--allow-actions") as server:
        a_cross_origin_post_is_refused(browser, server, pipeline)
        page = open_page(browser, server.url)
        # Two arrows inside the topology, source -> worker -> sink, plus clients at both ends.
        page.wait_for_selector('path.edge[data-edge="source.out->worker.in"]', state="attached")
        page.wait_for_selector('path.edge[data-edge="worker.out->sink.in"]', state="attached")
        assert page.locator("path.edge.peer").count() == 2
        directory = pipeline.directory
        traffic = Traffic(zmq_ctx, f"ipc://{directory}/source-in", f"ipc://{directory}/sink-out")
        try:
            # Rates reach the page (and a few sparkline points for the screenshot).
            page.wait_for_function(
                "() => { const t = document.querySelector(\".card[data-device='worker'] .total\").textContent;"
                " return t && !t.startsWith('in 0/s') &&"
                " document.querySelector(\".card[data-device='worker'] .spark .in\").getAttribute('points').split(' ').length >= 3; }",
                timeout=15000,
            )
            screenshot(page, "web-pipeline.png")
        finally:
            traffic.stop()
        assert traffic.received > 0

        page.click('.instance[data-instance="worker"] button[data-action="pause"]')
        assert page.locator("#confirm-text").inner_text() == "pause worker?"
        page.click("#confirm-ok")
        page.wait_for_function(
            "() => document.querySelector(\".instance[data-instance='worker']\").dataset.paused === 'true'",
            timeout=5000,
        )
        assert pipeline.devices()["worker"]["paused"] is True  # `status` agrees

        # Drain what was in flight, then nothing more gets through the paused worker.
        while traffic.pull.poll(300):
            traffic.pull.recv()
        for _ in range(10):
            traffic.push.send(b"after pause")
        expect_silence(traffic.pull, "the sink's consumer while the worker is paused")
        result = pipeline.cli("resume", "worker")
        assert result.returncode == 0, result.stderr
        assert recv_within(traffic.pull, "the consumer after resume") == [b"after pause"]
        assert not page.errors  # type: ignore[attr-defined]


def a_cross_origin_post_is_refused(browser: Browser, server: Web, up: Up) -> None:
    target = server.url + "api/devices/worker/pause"
    # Another origin on this machine: the same server under another name (localhost).
    evil = server.url.replace("127.0.0.1", "localhost") + "evil.html"
    page = browser.new_page()
    page.route(
        evil,
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form id="f" method="POST" action="{target}"></form>'
            "<script>window.tried = fetch("
            f'"{target}", {{method: "POST", headers: {{"X-Procdevices-Action": "1"}}}})'
            '.then((r) => "status " + r.status, () => "blocked");</script>',
        ),
    )
    page.goto(evil)
    # A fetch with the custom header needs a CORS preflight, which is never approved.
    assert page.evaluate("window.tried") == "blocked"
    # A plain form post (no preflight) reaches the server, which refuses it.
    with page.expect_response(lambda r: r.url == target) as answer:
        page.evaluate("document.getElementById('f').submit()")
    assert answer.value.status == 403
    assert up.devices()["worker"]["paused"] is False
    page.close()


def test_token_and_listen_rules(short_tmp: Path) -> None:
    """No supervisor needed: these rules hold before anything is asked of one."""
    config = write_topology(short_tmp, PIPELINE3)
    refused = subprocess.run(
        [*CLI, "web", "-c", str(config), "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 78
    assert refused.stderr.strip().splitlines() == [
        "procdevices: web: --listen 0.0.0.0:0 is not a loopback address: give --token-file"
    ]
    token_file = short_tmp / "token"
    token_file.write_text("s3cret-s3cret-s3cret\n")
    token_file.chmod(0o600)
    server = Web(config, "--token-file", str(token_file))
    try:
        state = server.url + "api/state"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(state, timeout=10)
        assert denied.value.code == 401
        denied.value.close()
        request = urllib.request.Request(state, headers={"Authorization": "Bearer s3cret-s3cret-s3cret"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        assert body["api"] == 1 and body["reachable"] is False and "no supervisor" in body["error"]
        # Opened once with ?token=: a cookie the page's own requests then carry.
        host, port = server.url.removeprefix("http://").strip("/").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("GET", "/?token=s3cret-s3cret-s3cret")
            response = connection.getresponse()
            response.read()
            assert response.status == 303 and response.getheader("Location") == "/"
            cookie = response.getheader("Set-Cookie") or ""
            assert cookie.startswith("procdevices_web_token=s3cret-s3cret-s3cret;")
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            connection.request("GET", "/api/state", headers={"Cookie": cookie.split(";")[0]})
            with connection.getresponse() as answer:
                assert answer.status == 200 and json.loads(answer.read())["api"] == 1
        finally:
            connection.close()
    finally:
        server.close()


# -- web --all -----------------------------------------------------------------------------

# Two hosts on this machine: each `up --host NAME` serves its control endpoint on a loopback
# address of its own (127.0.0.2, 127.0.0.3: neither is an interface address, so `web --all`
# reaches both through CURVE, as it would reach other machines), ports chosen at run time.
TWO_HOSTS = """\
[supervisor]
run_dir = "{run_dir}"
pool_size = 0

[cluster]
keys = "keys"

[hosts.a]
address = "127.0.0.2"
control = "tcp://127.0.0.2:{port_a}"

[hosts.b]
address = "127.0.0.3"
control = "tcp://127.0.0.3:{port_b}"

[devices.front]
host = "a"
kind = "streamer"
in = {{ bind = ["ipc://front-in"] }}
out = {{ bind = ["ipc://front-out"] }}

[devices.back]
host = "b"
kind = "streamer"
in = {{ bind = ["ipc://back-in"] }}
out = {{ bind = ["ipc://back-out"] }}
"""


class HostUp(Up):
    """``up --host NAME`` with a topology file of its own (the same hosts and devices, its own
    run dir), so each host's supervisor has its own run dir as on separate machines."""

    def __init__(self, config: Path, host: str) -> None:
        super().__init__(config, label=f"up-{host}")
        self.host = host

    def start(self) -> HostUp:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "up", "-c", str(self.config), "--host", self.host],
                cwd=self.directory,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.me = psutil.Process(self.proc.pid)
        return self


def test_web_all_shows_every_host_and_greys_one_that_stops_answering(short_tmp: Path, browser: Browser) -> None:
    keys = cli("keys", "generate", str(short_tmp / "keys"), cwd=short_tmp)
    assert keys.returncode == 0, describe(keys)
    ports = {"port_a": free_tcp_port(), "port_b": free_tcp_port()}
    configs = {}
    for host in ("a", "b"):
        configs[host] = short_tmp / f"{host}.toml"
        configs[host].write_text(TWO_HOSTS.format(run_dir=f"run-{host}", **ports))
    with HostUp(configs["a"], "a") as up_a, HostUp(configs["b"], "b") as up_b:
        up_a.wait_states({"front": "RUNNING"})
        up_b.wait_states({"back": "RUNNING"})
        # Run from a.toml's directory but as no host: both hosts through their control endpoints.
        with web(up_a, "--all", "--allow-actions") as server:
            page = open_page(browser, server.url)
            page.wait_for_selector('.region[data-host="b"][data-reachable="true"] .card[data-device="back"]')
            page.wait_for_selector('.region[data-host="a"][data-reachable="true"] .card[data-device="front"]')
            assert instance_state(page, "back") == "RUNNING" and instance_state(page, "front") == "RUNNING"
            # An action goes to the device's own host (b), through its control endpoint.
            code, body = server.post("/api/devices/back/pause", {"X-Procdevices-Action": "1"})
            assert code == 200 and body["ok"] is True, body
            assert up_b.devices()["back"]["paused"] is True and up_a.devices()["front"]["paused"] is False

            up_b.close()  # host b's supervisor and its devices are gone
            started = time.monotonic()
            page.wait_for_selector('.region[data-host="b"].unreachable', timeout=8000)
            greyed_after = time.monotonic() - started
            # Only b is greyed: a stays live, b's last picture stays (greyed), the page says why.
            assert page.locator('.region[data-host="a"].unreachable').count() == 0
            assert page.locator('.region[data-host="b"] .card[data-device="back"]').count() == 1
            assert page.locator("#graph.unreachable").count() == 0
            assert "host b" in page.inner_text("#problem")
            with urllib.request.urlopen(server.url + "api/state", timeout=10) as response:
                state = json.loads(response.read())
            regions = {r["host"]: r for r in state["regions"]}
            assert regions["a"]["reachable"] is True and regions["b"]["reachable"] is False, regions
            assert state["reachable"] is True and state["all"] is True
            assert not page.errors  # type: ignore[attr-defined]
            page.close()
    assert greyed_after < 6.0, f"host b greyed after {greyed_after:.1f}s"


def test_web_all_without_hosts_is_one_line(short_tmp: Path) -> None:
    config = write_topology(short_tmp, PIPELINE3)
    result = cli("web", "--all", "--listen", "127.0.0.1:0", "-c", str(config), cwd=short_tmp)
    assert result.returncode == 78, describe(result)
    assert result.stderr.strip().splitlines() == [f"procdevices: web --all: {config} defines no [hosts]"]


def test_export_supervisord_web_is_a_second_program_that_serves_the_page(pipeline: Up) -> None:
    """The program `export supervisord --web` writes, run as supervisord would run it (its
    command line, split as supervisord splits it, from its directory): it shows this `up`."""
    import configparser
    import shlex

    plain = pipeline.cli("export", "supervisord")
    assert plain.returncode == 0, describe(plain)
    assert "procdevices-web" not in plain.stdout  # off unless asked for
    refused = pipeline.cli("export", "systemd", "--web")
    assert refused.returncode == 2 and "--web is for supervisord only" in refused.stderr, describe(refused)

    listen = f"127.0.0.1:{free_tcp_port()}"
    result = pipeline.cli("export", "supervisord", "--web", listen)
    assert result.returncode == 0, describe(result)
    ini = configparser.ConfigParser()  # its %% is supervisord's %% too
    ini.read_string(result.stdout)
    assert ini.sections() == ["program:procdevices", "program:procdevices-web"]
    program = ini["program:procdevices-web"]
    argv = shlex.split(program["command"])
    assert argv[argv.index("--listen") + 1] == listen
    up_argv = shlex.split(ini["program:procdevices"]["command"])
    assert argv[argv.index("-c") + 1] == up_argv[up_argv.index("-c") + 1] == str(pipeline.config)
    proc = subprocess.Popen(
        argv, cwd=program["directory"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = wait_for(proc.stderr.readline, 20.0, "web to listen", wake=readable(proc.stderr.fileno()))
        assert f"http://{listen}/" in line, line
        with urllib.request.urlopen(f"http://{listen}/api/state", timeout=10) as response:
            state = json.loads(response.read())
        assert state["reachable"] is True, state["error"]
        assert sorted(g["device"] for g in state["devices"]) == ["sink", "source", "worker"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stderr is not None:
            proc.stderr.close()
