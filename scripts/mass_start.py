#!/usr/bin/env python
"""A mass start on a busy machine: N replicas under one `up` beside B CPU-bound processes.
Prints the time until `status` shows every replica RUNNING and how many starts were killed
for `start_timeout`.

    python scripts/mass_start.py                    # 64 replicas beside 4 burners
    python scripts/mass_start.py --replicas 64 --burners 4 --tree /path/to/other/checkout

``--tree`` runs another checkout's procdevices (its directory goes first on PYTHONPATH),
so two versions can be compared in turn on the same machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPOLOGY = """\
[supervisor]
run_dir = "run"
pool_size = 0

[devices.r]
kind = "streamer"
replicas = {replicas}
in = {{ bind = ["ipc://r{{replica}}-in"] }}
out = {{ bind = ["ipc://r{{replica}}-out"] }}
"""


def burn() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--burners", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    parser.add_argument("--tree", help="run the procdevices of this checkout")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(args.tree), env.get("PYTHONPATH")]))
    cli = [sys.executable, "-m", "procdevices"]
    with tempfile.TemporaryDirectory(prefix="pd-mass-", dir="/tmp") as tmp:
        directory = Path(tmp)
        (directory / "t.toml").write_text(TOPOLOGY.format(replicas=args.replicas))
        burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
        for burner in burners:
            burner.start()
        started = time.monotonic()
        with open(directory / "up.log", "w") as log:
            up = subprocess.Popen(
                [*cli, "up", "-c", "t.toml"], cwd=directory, env=env, stdout=log, stderr=log, start_new_session=True
            )
        all_running = None
        try:
            while time.monotonic() - started < args.timeout:
                status = subprocess.run(
                    [*cli, "status", "--json", "-c", "t.toml"], cwd=directory, env=env, capture_output=True, text=True
                )
                if status.returncode in (0, 3) and status.stdout:
                    devices = json.loads(status.stdout)["devices"]
                    if len(devices) == args.replicas and all(d["state"] == "RUNNING" for d in devices):
                        all_running = time.monotonic() - started
                        break
                time.sleep(0.5)
            load = os.getloadavg()[0]
        finally:
            for burner in burners:
                burner.terminate()
            subprocess.run([*cli, "down", "-c", "t.toml"], cwd=directory, env=env, capture_output=True)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, 9)
                up.wait()
        kills = (directory / "up.log").read_text().count("not ready within start_timeout")
    shown = f"{all_running:.1f} s" if all_running is not None else f"not within {args.timeout:g} s"
    print(
        f"{args.replicas} replicas beside {args.burners} burners: all RUNNING {shown}, "
        f"start_timeout kills {kills}, load (1 min) at the end {load:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
