"""A chatty device's log stays under its bound while the device runs: the supervisor rotates
it by size (``device_log_max_bytes``), keeping ``device_log_backups`` older files, without
stopping or signalling the device."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from support.cli import RUN_DIR, FileChanges, Up, wait_for, write_topology
from support.topologies import PIPELINE

from procdevices.supervisor import devicelogs

MAX_BYTES = 64 * 1024
BACKUPS = 2
LINE = re.compile(r"chatty line \d{7} x+")
RATE_LINES = 2000  # per second: the chatty device of the report (200 lines/s is 2 GiB a day)
SECONDS = 10


def line(n: int) -> bytes:
    text = f"chatty line {n:07d} "
    return (text + "x" * (99 - len(text)) + "\n").encode()  # 100 bytes


def on_disk(log: Path) -> list[Path]:
    return sorted(log.parent.glob(log.name + "*"))


@pytest.mark.timeout(120)
def test_a_chatty_device_log_stays_under_its_bound_while_it_runs(short_tmp: Path) -> None:
    config = write_topology(short_tmp, PIPELINE, pool_size=0)
    text = config.read_text().replace(
        "[supervisor]\n", f"[supervisor]\ndevice_log_max_bytes = {MAX_BYTES}\ndevice_log_backups = {BACKUPS}\n", 1
    )
    config.write_text(text)
    log = devicelogs.log_path(short_tmp / RUN_DIR, "pipe")
    with Up(config) as up:
        pid = up.wait_states()["pipe"]["pid"]
        # Write what the device writes, through its own stdout (the very file description:
        # O_APPEND, the inode the device holds).
        total = RATE_LINES * SECONDS
        # The documented bound: each file holds the limit plus at most a second of output.
        bound = (BACKUPS + 1) * (MAX_BYTES + RATE_LINES * 100)
        # Once the rate is known, looks are timed for when the file reaches the limit: each file
        # then holds the limit plus a burst (20 KB here), with room for a loaded machine.
        per_file = MAX_BYTES + RATE_LINES * 100 // 4
        largest = 0
        with open(f"/proc/{pid}/fd/1", "ab", buffering=0) as out, FileChanges(log.parent) as rotated:
            started = time.monotonic()
            for batch in range(SECONDS * 10):
                out.write(b"".join(line(n) for n in range(batch * RATE_LINES // 10, (batch + 1) * RATE_LINES // 10)))
                # Paced at RATE_LINES a second (a producer's rate); the files are measured after
                # each batch and at each rotation meanwhile, when they are largest.
                while (left := started + (batch + 1) / 10 - time.monotonic()) > 0:
                    largest = max(largest, sum(p.stat().st_size for p in on_disk(log) if p.exists()))
                    rotated(left)
                largest = max(largest, sum(p.stat().st_size for p in on_disk(log) if p.exists()))
        assert total * 100 > 2 * bound, "the test writes far more than the bound"
        assert largest <= bound, f"{largest} bytes on disk at most, over the bound {bound}"
        # After 10 s of chatter every file was rotated at the steady rate.
        assert all(p.stat().st_size <= per_file for p in on_disk(log)), [p.stat().st_size for p in on_disk(log)]
        with FileChanges(log.parent) as changed:
            wait_for(lambda: log.stat().st_size <= MAX_BYTES, 10, "the live log under its bound", wake=changed)
        names = [p.name for p in on_disk(log)]
        assert names == ["pipe.log", "pipe.log.1", "pipe.log.2"], names
        # Whole lines only; the newest kept: the last line is in the live log or the newest backup.
        for path in on_disk(log):
            for text_line in path.read_text().splitlines():
                assert LINE.fullmatch(text_line) or "procdevices" in text_line or not text_line, (path, text_line)
        last = line(total - 1).decode().strip()
        assert last in log.read_text() + (log.parent / "pipe.log.1").read_text()
        shown = up.cli("logs", "pipe", "-n", "1")
        assert shown.returncode == 0 and shown.stdout.strip() in (last, ""), shown
        # The device was not touched: same process, RUNNING.
        assert up.devices()["pipe"]["pid"] == pid and up.devices()["pipe"]["state"] == "RUNNING"
        assert up.cli("down").returncode == 0
        assert up.wait_exit(60) == 0
