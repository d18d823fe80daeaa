"""`procdevices events`: the live stream of a real supervisor, followed by the real CLI."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import CLI, Up, write_topology
from support.topologies import STREAMER


class Lines:
    """The stdout of a running command, one parsed JSON object per line, read with deadlines."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.process = process
        self.fd = process.stdout.fileno()
        self.buffer = b""
        self.seen: list[dict[str, Any]] = []

    def next(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        self.seen.append(event)
        return event

    def until(self, wanted: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            event = self.next(left)
            if event is not None and wanted(event):
                return event
        pytest.fail(f"timed out waiting for {what}; events seen: {self.seen}", pytrace=False)


@pytest.mark.timeout(90)
def test_events_follow_a_killed_device_through_its_restart(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=1)
    with Up(config) as up:
        first_pid = up.wait_states({"pipe": "RUNNING"})["pipe"]["pid"]
        follower = subprocess.Popen(
            [*CLI, "events", "--json", "-c", str(config)], cwd=short_tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            lines = Lines(follower)
            # A PUB/SUB connection is made asynchronously: poke the supervisor until the
            # follower shows that it hears (each request is itself an event).
            deadline = time.monotonic() + 20
            while True:
                assert up.cli("status").returncode == 0
                event = lines.next(0.3)
                if event is not None and event["type"] == "command":
                    break
                assert time.monotonic() < deadline, "the events follower never heard the supervisor"
            os.kill(first_pid, signal.SIGKILL)

            def about_pipe(frm: str, to: str) -> Any:
                return lambda e: e["type"] == "state" and e["instance"] == "pipe" and (e["from"], e["to"]) == (frm, to)

            exited = lines.until(about_pipe("RUNNING", "BACKOFF"), 20, "RUNNING -> BACKOFF")
            assert exited["pid"] == first_pid and "SIGKILL" in exited["reason"], exited
            decision = lines.until(lambda e: e["type"] == "decision", 20, "the restart decision")
            assert decision["action"] == "restart" and decision["instance"] == "pipe", decision
            lines.until(about_pipe("BACKOFF", "QUEUED"), 20, "BACKOFF -> QUEUED")
            lines.until(about_pipe("QUEUED", "STARTING"), 20, "QUEUED -> STARTING")
            running = lines.until(about_pipe("STARTING", "RUNNING"), 20, "STARTING -> RUNNING")
            assert running["pid"] not in (None, first_pid), running
            assert {"type", "time", "device", "instance", "from", "to", "event", "reason", "pid"} <= set(running)

            assert up.cli("down").returncode == 0
            lines.until(lambda e: e["type"] == "supervisor" and e["state"] == "stopped", 20, "the supervisor's end")
            assert follower.wait(10) == 0, "events did not end with the supervisor"
        finally:
            if follower.poll() is None:
                follower.kill()
            follower.wait()
            for stream in (follower.stdout, follower.stderr):
                if stream is not None:
                    stream.close()


def test_events_without_a_supervisor_says_so(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER)
    result = subprocess.run(
        [*CLI, "events", "-c", str(config)], cwd=short_tmp, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 4 and "no supervisor is running" in result.stderr, result
