"""The scale phase (--scale N): N devices under one `up`, with spawn and forkserver."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

from bench.devices import Supervised, check_stop_log
from bench.harness import Profile, deadline, log, record_error, wait_pid_exit
from bench.worker import now


def scale_run(n: int, start_method: str, idle_seconds: float, tmp: str) -> dict[str, Any]:
    """N streamers as 4 devices x N/4 replicas over ipc: Popen of `up` until all RUNNING,
    the idle supervisor's CPU, then `procdevices down` until it returns."""
    per = n // 4
    d = tempfile.mkdtemp(prefix="sc-", dir=tmp)
    topology = "".join(
        f'\n[devices.d{k}]\nkind = "streamer"\nreplicas = {per}\n'
        f'in = {{ bind = ["ipc://{d}/{k}i{{replica}}"] }}\nout = {{ bind = ["ipc://{d}/{k}o{{replica}}"] }}\n'
        for k in range(4)
    )
    sup = Supervised(d, topology, start_method)
    try:
        with deadline(240 + idle_seconds, f"scale {n} {start_method}"):
            sup.start()
            st = sup.wait_running(4 * per, 180.0)
            running_s = now() - sup.started_at
            restarts = sum(x["restarts"] for x in st["devices"])
            time.sleep(2.0)  # the pool's fresh workers finish importing
            up = psutil.Process(sup.pid)
            c0, t0 = up.cpu_times(), now()
            time.sleep(idle_seconds)
            c1, wall = up.cpu_times(), now() - t0
            idle_pct = 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / wall
            t1 = now()
            down = subprocess.run(
                [sys.executable, "-m", "procdevices", "down", "-c", sup.path],
                cwd=d,
                capture_output=True,
                timeout=120,
                check=False,
            )
            down_s = now() - t1
            assert sup.pidfd is not None
            exited = wait_pid_exit(sup.pidfd, 30.0)
        return {
            "devices": 4 * per,
            "start_method": start_method,
            "all_running_s": running_s,
            "restarts_during_startup": restarts,
            "idle_supervisor_pct_of_core": idle_pct,
            "idle_seconds": wall,
            "down_s": down_s,
            "down_rc": down.returncode,
            "up_exited": exited,
            "stop_log": check_stop_log(sup.log_text(), 4 * per),
        }
    finally:
        sup.close()
        shutil.rmtree(d, ignore_errors=True)


def phase_scale(n: int, prof: Profile, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in ("spawn", "forkserver"):
        log(f"scale: {n} devices under one up, {method}")
        try:
            out[method] = scale_run(n, method, min(prof.idle_seconds, 20.0), tmp)
        except Exception as e:
            record_error("scale", f"{n} {method}", e)
    return out


# ------------------------------------------------------------------------------------------
# report
