"""The overhead phase: CPU of an idle supervisor and its idle devices."""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

import psutil

from bench.devices import Supervised, check_stop_log
from bench.harness import Profile, cpu_seconds, deadline, log, record_error
from bench.worker import now


def phase_overhead(prof: Profile, tmp: str) -> dict[str, Any]:
    n = prof.big_n
    log(f"overhead: {n} idle supervised devices for {prof.idle_seconds:.0f}s, then stop")
    d = tempfile.mkdtemp(prefix="o-", dir=tmp)
    sup = Supervised(
        d,
        (
            '\n[devices.idle]\nkind = "streamer"\n'
            f"replicas = {n}\n"
            f'in = {{ bind = ["ipc://{d}/i{{replica}}"] }}\n'
            f'out = {{ bind = ["ipc://{d}/o{{replica}}"] }}\n'
        ),
    )
    try:
        with deadline(90 + prof.idle_seconds, "overhead"):
            sup.start()
            sup.wait_running(n, 60.0, pool_idle=2)
            time.sleep(1.0)  # let the pool's fresh workers finish importing
            st = sup.status(2.0)
            devices = [x["pid"] for x in st["devices"] if x["pid"]]
            tree = {p.pid for p in psutil.Process(sup.pid).children(recursive=True)}
            others = sorted(tree - set(devices))  # warm pool workers and the resource tracker
            up = psutil.Process(sup.pid)
            t0 = now()
            c0 = up.cpu_times()
            d0, o0 = cpu_seconds(devices), cpu_seconds(others)
            time.sleep(prof.idle_seconds)
            c1 = up.cpu_times()
            d1, o1 = cpu_seconds(devices), cpu_seconds(others)
            wall = now() - t0
            sup_cpu = (c1.user + c1.system) - (c0.user + c0.system)
            stop_s = sup.terminate_and_time(30.0)
            check = check_stop_log(sup.log_text(), n)
        return {
            "devices": n,
            "seconds": wall,
            "supervisor_cpu_s": sup_cpu,
            "supervisor_pct_of_core": 100 * sup_cpu / wall,
            "devices_cpu_s": d1 - d0,
            "devices_pct_of_core": 100 * (d1 - d0) / wall,
            "per_device_pct_of_core": 100 * (d1 - d0) / wall / max(1, len(devices)),
            "pool_and_tracker_cpu_s": o1 - o0,
            "stop_s": stop_s,
            "stop_log": check,
        }
    except Exception as e:
        record_error("overhead", f"{n} devices", e)
        return {}
    finally:
        sup.close()
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# scale: N devices under one `up`
