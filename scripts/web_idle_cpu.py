#!/usr/bin/env python
"""The idle supervisor's CPU with ``procdevices web`` and a browser connected, against the same
supervisor without them (docs/observability.md, "procdevices web").

    python scripts/web_idle_cpu.py                  # 3 pairs of 30 s windows (~4 min)
    python scripts/web_idle_cpu.py --reps 5 --window 60

One ``up`` runs the default topology's three kinds (queue, forwarder, streamer) on
``tcp://127.0.0.1:*`` with the default probe interval (1 s). Windows alternate: without web,
then with ``procdevices web`` and headless Chromium (Debian's, driven by Playwright) showing
the page; the supervisor's user + system CPU time (psutil) over each window, as % of one
core. Prints each pair and the medians. Needs the test extra (playwright) and chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

CLI = [sys.executable, "-m", "procdevices"]
TOPOLOGY = """\
[supervisor]
run_dir = "run"
pool_size = 1

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
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def cpu_percent(window: float, *procs: psutil.Process) -> list[float]:
    """Each process's user + system CPU over ``window`` seconds, in % of one core."""
    before = [p.cpu_times() for p in procs]
    time.sleep(window)
    after = [p.cpu_times() for p in procs]
    return [100.0 * ((a.user + a.system) - (b.user + b.system)) / window for a, b in zip(after, before, strict=True)]


def wait_running(config: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run([*CLI, "status", "--json", "-c", str(config)], capture_output=True, text=True)
        if result.returncode == 0 and all(d["state"] == "RUNNING" for d in json.loads(result.stdout)["devices"]):
            return
        time.sleep(0.5)
    raise SystemExit("the devices did not reach RUNNING")


def with_web(config: Path, supervisor: psutil.Process, window: float, chromium: str) -> list[float]:
    """The supervisor's CPU and the web process's, with a page open."""
    from playwright.sync_api import sync_playwright

    web = subprocess.Popen(
        [*CLI, "web", "-c", str(config), "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert web.stderr is not None
        url = web.stderr.readline().split()[2]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            try:
                page = browser.new_page()
                page.goto(url)
                page.wait_for_selector(".card")
                time.sleep(2)  # settled: the first snapshots are in
                return cpu_percent(window, supervisor, psutil.Process(web.pid))
            finally:
                browser.close()
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per window")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdweb-", dir="/tmp") as tmp:
        config = Path(tmp) / "topology.toml"
        config.write_text(TOPOLOGY)
        up = subprocess.Popen(
            [*CLI, "up", "-c", str(config)], cwd=tmp, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_running(config)
            time.sleep(5)
            supervisor = psutil.Process(up.pid)
            alone: list[float] = []
            viewed: list[float] = []
            web: list[float] = []
            for rep in range(args.reps):
                alone.append(cpu_percent(args.window, supervisor)[0])
                supervisor_cpu, web_cpu = with_web(config, supervisor, args.window, args.chromium)
                viewed.append(supervisor_cpu)
                web.append(web_cpu)
                print(
                    f"rep {rep + 1}: supervisor without web {alone[-1]:.2f} %, with web + browser {viewed[-1]:.2f} %"
                    f" (the web process itself: {web[-1]:.2f} %)",
                    flush=True,
                )
            a, v = statistics.median(alone), statistics.median(viewed)
            print(
                f"median over {args.reps} x {args.window:g} s: supervisor without web {a:.2f} %, with {v:.2f} %"
                f" (+{v - a:.2f} % of a core); the web process {statistics.median(web):.2f} %"
            )
            print(f"load average during the run: {os.getloadavg()[0]:.1f}")
        finally:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
