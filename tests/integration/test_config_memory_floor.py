"""memory_limit has a floor (32 MiB, above an idle device's ~22 MiB RSS), so a limit can no
longer be set below what any device needs. A limit at the floor must still work: a device
that really grows past it is killed, restarted and, past its intensity, given up on; its
neighbour is untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq
from support.cli import Up, write_topology
from support.topologies import PIPELINE

from procdevices.supervisor.config.settings import MEMORY_LIMIT_FLOOR


@pytest.mark.timeout(60)
def test_a_device_growing_past_a_limit_above_the_floor_is_restarted_then_given_up(
    short_tmp: Path, zmq_ctx: zmq.Context[Any]
) -> None:
    limit_mib = MEMORY_LIMIT_FLOOR // 1024**2 + 16
    # RCVHWM = 0 and no peer on `out`: the proxy blocks on its send, so everything fed to `in`
    # piles up inside the device process, and its RSS grows until the supervisor kills it.
    config = write_topology(
        short_tmp,
        PIPELINE
        + """
[devices.hog]
kind = "queue"
in = { bind = ["ipc://hog-in"], sockopts = { RCVHWM = 0 } }
out = { bind = ["ipc://hog-out"] }
memory_limit = "LIMIT"
intensity = { max_restarts = 2, within = 60.0 }
""".replace("LIMIT", f"{limit_mib}MiB"),
        pool_size=0,
    )
    with Up(config) as up:
        up.wait_states({"pipe": "RUNNING", "hog": "RUNNING"})
        feeder = zmq_ctx.socket(zmq.DEALER)
        feeder.setsockopt(zmq.SNDHWM, 0)
        feeder.connect(f"ipc://{short_tmp}/hog-in")
        chunk = b"x" * 1024**2

        def fatal() -> dict[str, Any] | None:
            data = up.try_status()
            devices = {d["name"]: d for d in data["devices"]} if data else {}
            if devices.get("hog", {}).get("state") == "FATAL":
                return devices
            for _ in range(4):  # 4 MiB per status poll; each new generation of hog swallows it
                feeder.send(chunk, zmq.NOBLOCK)
            return None

        devices = up.wait_until(fatal, 40, "hog FATAL")
        hog = devices["hog"]
        assert hog["restarts"] == 2, hog
        assert "memory limit exceeded" in up.log(), up.log_tail()
        assert devices["pipe"]["restarts"] == 0
