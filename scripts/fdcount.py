#!/usr/bin/env python
"""Count the supervisor's open descriptors for N devices (what supervisor/fdplan.py assumes).

    python scripts/fdcount.py 16 64 128            # streamers with two ipc binds, pool 0
    python scripts/fdcount.py --pool 2 --tcp 64     # tcp://127.0.0.1:* binds, a warm pool of 2

For each N: start `up` on N streamers in a private /tmp directory, sample /proc/PID/fd every
10 ms while they start (the peak), wait until every device is RUNNING, count again (steady),
`down`. Prints N, steady, peak, steady per device beyond the one-device base, and the kinds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-m", "procdevices"]


def topology(count: int, pool: int, tcp: bool) -> str:
    lines = [f'[supervisor]\nrun_dir = "run"\npool_size = {pool}\n']
    for i in range(count):
        ends = ('"tcp://127.0.0.1:*"', '"tcp://127.0.0.1:*"') if tcp else (f'"ipc://i{i}"', f'"ipc://o{i}"')
        lines.append(
            f'[devices.d{i}]\nkind = "streamer"\nin = {{ bind = [{ends[0]}] }}\nout = {{ bind = [{ends[1]}] }}\n'
        )
    return "\n".join(lines)


def fd_kinds(pid: int) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":")[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def measure(count: int, pool: int, tcp: bool) -> tuple[int, int, dict[str, int]]:
    directory = Path(tempfile.mkdtemp(prefix="pdfd-", dir="/tmp"))
    config = directory / "t.toml"
    config.write_text(topology(count, pool, tcp))
    up = subprocess.Popen(
        [*CLI, "up", "-c", str(config)],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    peak = 0

    def sample() -> None:
        nonlocal peak
        while up.poll() is None:
            try:
                peak = max(peak, len(os.listdir(f"/proc/{up.pid}/fd")))
            except OSError:
                pass
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            result = subprocess.run([*CLI, "status", "--json", "-c", str(config)], capture_output=True, text=True)
            if result.returncode == 0 and all(d["state"] == "RUNNING" for d in json.loads(result.stdout)["devices"]):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"{count} devices did not all reach RUNNING")
        time.sleep(2.0)  # the pool refills once nothing starts
        kinds = fd_kinds(up.pid)
        return sum(kinds.values()), peak, kinds
    finally:
        subprocess.run([*CLI, "down", "-c", str(config)], capture_output=True)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("counts", nargs="+", type=int)
    parser.add_argument("--pool", type=int, default=0)
    parser.add_argument("--tcp", action="store_true")
    args = parser.parse_args()
    base, _, _ = measure(1, args.pool, args.tcp)
    print(f"1 device: {base} descriptors")
    for count in args.counts:
        steady, peak, kinds = measure(count, args.pool, args.tcp)
        print(f"{count} devices: {steady} steady, {peak} peak, {(steady - base) / (count - 1):.2f} per device; {kinds}")


if __name__ == "__main__":
    main()
