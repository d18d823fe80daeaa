"""No ``if __name__ == "__main__":`` guard is needed to start a process device: a script that
starts one at module level runs as it does with pyzmq's fork (the device process does not
re-run the script). A device class defined in such a script gets an error that says so."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from support.cli import wait_gone

DOCS = Path(__file__).resolve().parents[2] / "docs" / "devices.md"

pytestmark = pytest.mark.timeout(60)


def run_script(path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``path`` in a session of its own; assert that no process of that session is left."""
    process = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=path.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=45)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Whatever is still on its way out (multiprocessing's resource tracker ends when the
    # script's end closes its pipe) gets a moment.
    left = wait_gone([p for p in psutil.process_iter() if _session_of(p) == process.pid], 3)
    for p in left:
        p.kill()
    assert left == [], f"the script left processes running: {[p.cmdline() for p in left]}"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _session_of(proc: psutil.Process) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None


def migration_example() -> str:
    text = DOCS.read_text()
    section = text[text.index("## Migrating") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no python example under ## Migrating"
    return match.group(1)


def test_the_docs_migration_example_runs_as_pasted_into_a_script(short_tmp: Path) -> None:
    example = migration_example()
    assert "__main__" not in example, "the example must show that no guard is needed"
    script = short_tmp / "example.py"
    script.write_text(example)
    done = run_script(script)
    assert done.returncode == 0, done.stderr
    assert "DeviceStats(front_msgs_in=0" in done.stdout, done.stdout
    assert "RuntimeError" not in done.stderr, done.stderr


def test_unguarded_module_level_devices_forward(short_tmp: Path) -> None:
    script = short_tmp / "unguarded.py"
    script.write_text(
        "import zmq\n"
        "from procdevices import ProcessMonitoredQueue, ProcessProxy\n"
        "ctx = zmq.Context()\n"
        "devs = [ProcessProxy(zmq.PULL, zmq.PUSH), ProcessMonitoredQueue(zmq.PULL, zmq.PUSH)]\n"
        "for dev in devs:\n"
        "    for role in ('in', 'out', 'mon'):\n"
        "        getattr(dev, f'bind_{role}')('tcp://127.0.0.1:*')\n"
        "    dev.start()\n"
        "    push = ctx.socket(zmq.PUSH); push.connect(dev.endpoints['in'][0])\n"
        "    pull = ctx.socket(zmq.PULL); pull.connect(dev.endpoints['out'][0])\n"
        "    push.send(b'through')\n"
        "    assert pull.poll(10000) and pull.recv() == b'through'\n"
        "    print(type(dev).__name__, dev.stats().front_msgs_in, flush=True)\n"
        "    dev.stop()\n"
        "ctx.destroy(linger=0)\n"
    )
    done = run_script(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["ProcessProxy 1", "ProcessMonitoredQueue 1"], done.stdout


def test_a_class_defined_in_an_unguarded_script_gets_the_fix_in_its_error(
    helper_script: Callable[[str], str], short_tmp: Path
) -> None:
    script = short_tmp / "script.py"
    script.write_text(Path(helper_script("unguarded_main_class.py")).read_text())
    done = run_script(script)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] == "DeviceExitedEarly", result
    message = result["message"]
    assert "ScriptDevice is defined in __main__" in message and str(script) in message, message
    assert 'if __name__ == "__main__":' in message, message
