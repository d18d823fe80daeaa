"""Thread devices stopped the ways their users stop them, 200+ times, without an abort.

libzmq aborts the whole process (``signaler.cpp:238``) when one context is terminated by two
threads at once, which is what happened when a caller terminated a thread device's context
(pyzmq's way to stop one) while the device terminated it too at the end of its run. Each
pattern runs in a process of its own (tests/helpers/thread_device_stops.py), so an abort fails
the test instead of killing pytest; every stop must be over within STOP_BOUND.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

# pyzmq's own thread devices end within milliseconds when their context is terminated.
STOP_BOUND = 1.0
# A process that outlives this is hung: killed, and the test fails.
RUN_TIMEOUT = 60.0

ITERATIONS = {
    # pattern: iterations of (every variant x every factory the pattern applies to)
    "term-context": 6,  # x 6 variants x 1 factory
    "term-instance": 6,  # x 6 x 1
    "control-stop": 3,  # x 6 x 2
    "stop-and-term": 4,  # x 6 x 2
    "two-devices": 2,  # x 6 x 2 (two devices each)
}
EXIT_RUNS = {"own": 3, "instance": 3}  # processes, each exiting with all 6 variants running


def run_helper(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    return result, time.monotonic() - started


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit code {result.returncode}; stderr ends:\n{result.stderr[-3000:]}\nstdout ends:\n{result.stdout[-1500:]}"
    )


@pytest.mark.parametrize("pattern", sorted(ITERATIONS))
def test_every_thread_variant_stops_quickly_without_an_abort(
    pattern: str, helper_script: Callable[[str], str], short_tmp: Path
) -> None:
    result, _ = run_helper(helper_script("thread_device_stops.py"), pattern, str(ITERATIONS[pattern]), str(short_tmp))
    assert result.returncode == 0, describe(result)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    stops: list[dict[str, Any]] = [line for line in lines if "stop_s" in line]
    (summary,) = [line for line in lines if "summary" in line]
    assert len(stops) >= ITERATIONS[pattern] * 6, describe(result)
    failed = [stop for stop in stops if stop["error"] is not None]
    assert not failed, failed[:5]
    slow = [stop for stop in stops if stop["stop_s"] > STOP_BOUND]
    assert not slow, slow[:5]
    # Each context left behind would keep two OS threads (its I/O thread and its reaper).
    assert summary["threads_after"] <= summary["threads_before"], summary


@pytest.mark.parametrize("factory", sorted(EXIT_RUNS))
def test_the_interpreter_exits_cleanly_with_thread_devices_running(
    factory: str, helper_script: Callable[[str], str], short_tmp: Path
) -> None:
    for _ in range(EXIT_RUNS[factory]):
        with subprocess.Popen(
            [sys.executable, helper_script("thread_device_stops.py"), "exit", "1", str(short_tmp), factory],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            try:
                line = process.stdout.readline()  # blocks until every device forwards
                exiting = time.monotonic()
                code = process.wait(RUN_TIMEOUT)
                took = time.monotonic() - exiting
            finally:
                if process.poll() is None:
                    process.kill()
            stderr = process.stderr.read()
        assert json.loads(line) == {"exiting": 6}, stderr
        assert code == 0, f"exit code {code}: {stderr[-3000:]}"
        assert took <= STOP_BOUND, f"the interpreter took {took:.2f}s to exit"
        assert "Traceback" not in stderr and "Assertion" not in stderr, stderr
