"""The library's event-driven waiter (procdevices.control.waiter) on a real supervisor: woken
by the event stream, it sees a stop's outcome; an impossible condition ends at its deadline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import Up, write_topology
from support.topologies import STREAMER

from procdevices.control.client import call_supervisor
from procdevices.control.protocol import SupervisorCommand
from procdevices.control.waiter import FIRST_QUIET, SupervisorWaiter, WaitFailed
from procdevices.runlayout import supervisor_endpoint


@pytest.mark.timeout(90)
def test_the_waiter_wakes_on_events_and_ends_at_its_deadline(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=1)
    with Up(config) as up:
        up.wait_states({"pipe": "RUNNING"})
        run_dir = short_tmp / "run"
        with SupervisorWaiter(run_dir) as waiter:
            before = waiter.status()
            assert before is not None and [d["state"] for d in before["devices"]] == ["RUNNING"]
            reply = call_supervisor(supervisor_endpoint(run_dir), SupervisorCommand.STOP, {"name": "pipe"})
            assert reply["ok"], reply

            def stopped() -> list[dict[str, Any]] | None:
                status = waiter.status(name="pipe")
                assert status is not None
                devices: list[dict[str, Any]] = status["devices"]
                return devices if all(d["state"] == "STOPPED" for d in devices) else None

            devices = waiter.wait(stopped, 30.0)
            assert devices is not None and devices[0]["pid"] is None
            assert waiter.events_seen >= 1, "the stop published events; the waiter saw none"

            started = time.monotonic()
            assert waiter.wait(lambda: None, 0.3) is None
            assert 0.3 <= time.monotonic() - started < 0.3 + 2 * FIRST_QUIET + 1.0
            with pytest.raises(WaitFailed, match="nothere"):
                waiter.status(name="nothere")
    # No supervisor: no answer, not an error.
    with SupervisorWaiter(short_tmp / "run") as gone:
        assert gone.status() is None
