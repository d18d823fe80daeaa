"""A test's own Python script, run in a fresh interpreter, optionally with a sitecustomize
that every interpreter it starts runs first (its directory goes on PYTHONPATH): how a test
reaches into a device process's start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Starts one device of class ``sys.argv[2]`` ("module:Class", its module found on the path,
# or in the directory ``sys.argv[1]``), forwards one message through it, stops it; prints
# the device's pid, what came through and its exit code, as JSON.
FORWARD_ONE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])  # a module only this directory holds: the device finds it there too
import zmq

def main():
    module, _, name = sys.argv[2].partition(":")
    dev = getattr(importlib.import_module(module), name)(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    port_in = dev.bind_in_to_random_port("tcp://127.0.0.1")
    port_out = dev.bind_out_to_random_port("tcp://127.0.0.1")
    dev.start()
    try:
        ctx = zmq.Context()
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        push.connect(f"tcp://127.0.0.1:{port_in}")
        pull.connect(f"tcp://127.0.0.1:{port_out}")
        pull.setsockopt(zmq.RCVTIMEO, 20_000)
        push.send(b"through")
        got = pull.recv()
        for s in (push, pull):
            s.close(0)
        ctx.term()
    finally:
        dev.stop()
    print(json.dumps({"pid": dev.pid, "got": got.decode(), "exitcode": dev.launcher.exitcode}))

if __name__ == "__main__":
    main()
"""


def custom_dir(short_tmp: Path) -> Path:
    """Where :func:`run_script` puts the sitecustomize (and what it writes beside itself)."""
    return short_tmp / "custom"


def run_script(
    short_tmp: Path,
    script: str,
    *args: str,
    sitecustomize: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (written to ``short_tmp/script.py``) with ``args``, and ``env`` added to
    the environment; its output as text."""
    path = short_tmp / "script.py"
    path.write_text(script)
    environment = {**os.environ, **(env or {})}
    if sitecustomize is not None:
        custom = custom_dir(short_tmp)
        custom.mkdir()
        (custom / "sitecustomize.py").write_text(sitecustomize)
        environment["PYTHONPATH"] = str(custom)
    return subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=50, check=False, env=environment
    )
