"""`procdevices logs`: each device process's own output, in the run dir, through the real CLI."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

import pytest
from support.cli import CLI, Up, describe, readable, wait_for, write_topology

PIPES = """\
[devices.pipe]
kind = "streamer"
replicas = 2
in  = { bind = ["ipc://pipe-{replica}-in.sock"] }
out = { bind = ["ipc://pipe-{replica}-out.sock"] }
"""


@pytest.mark.timeout(90)
def test_each_device_process_writes_its_own_log_and_logs_shows_it(short_tmp: Path) -> None:
    config = write_topology(short_tmp, PIPES, pool_size=1)
    logs = short_tmp / "run" / "logs"
    with Up(config) as up:
        up.wait_states()
        for name in ("pipe.0", "pipe.1"):
            assert (logs / f"{name}.log").is_file(), f"no log file for {name}"
        assert oct((logs).stat().st_mode & 0o777) == "0o700"
        # What a device writes lands in its file (the device layer's tests prove Python and C
        # output of a device process get there); here: what `logs` makes of the files.
        with open(logs / "pipe.1.log", "a") as f:
            f.write("first line\nsecond line\n")
        one = up.cli("logs", "pipe.1", "-n", "1")
        assert one.returncode == 0 and one.stdout == "second line\n", describe(one)
        both = up.cli("logs", "pipe")
        assert both.returncode == 0 and "pipe.1: second line" in both.stdout, describe(both)
        unknown = up.cli("logs", "nope")
        assert unknown.returncode == 1 and "pipe.0, pipe.1" in unknown.stderr, describe(unknown)

        follower = subprocess.Popen(
            [*CLI, "logs", "pipe.0", "-f", "-n", "0", "-c", str(config)],
            cwd=short_tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert follower.stdout is not None
            out = follower.stdout.fileno()
            seen = b""

            def appended() -> bool:
                nonlocal seen
                with open(logs / "pipe.0.log", "a") as f:
                    f.write("while following\n")
                if select.select([out], [], [], 0)[0]:
                    seen += os.read(out, 4096)
                return b"while following" in seen

            wait_for(appended, 20, "logs -f to print an appended line", wake=readable(out))
        finally:
            follower.terminate()
            follower.communicate(timeout=10)
