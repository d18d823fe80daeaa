"""`procdevices top`'s rows, columns and orders, from status data (no process)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from procdevices.cli.top import frame, rate, rows, sorted_devices
from procdevices.supervisor.traffic import COUNTERS


def device(
    name: str, *, cpu: float | None = 0.0, rss: int | None = 0, restarts: int = 0, **rates: float
) -> dict[str, Any]:
    return {
        "name": name,
        "state": "RUNNING",
        "pid": 100,
        "uptime": 75.0,
        "restarts": restarts,
        "last_exit": None,
        "paused": False,
        "blocked": None,
        "cpu_percent": cpu,
        "rss": rss,
        "traffic": {"totals": dict.fromkeys(COUNTERS, 0), "rates": {**dict.fromkeys(COUNTERS, 0.0), **rates}},
    }


def status(*devices: dict[str, Any]) -> dict[str, Any]:
    return {"supervisor": {"pid": 7, "uptime": 3.0, "metrics": None}, "devices": list(devices)}


def test_in_and_out_add_both_sockets() -> None:
    queue = device(
        "q", front_msgs_in=10.0, back_msgs_in=8.0, back_msgs_out=10.0, front_msgs_out=8.0, front_bytes_in=2e6
    )
    assert (rate(queue, "msgs", "in"), rate(queue, "msgs", "out")) == (18.0, 18.0)
    cells = rows([queue])[0]
    assert cells[5:9] == ("18", "18", "2.00", "0.00")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("name", ["a", "b", "c"]),
        ("cpu", ["c", "a", "b"]),
        ("rss", ["b", "c", "a"]),
        ("restarts", ["a", "b", "c"]),
        ("msgs", ["b", "a", "c"]),
    ],
)
def test_sort_orders(key: str, expected: list[str]) -> None:
    devices = [
        device("c", cpu=50.0, rss=2, restarts=1),
        device("a", cpu=10.0, rss=None, restarts=4, front_msgs_in=5.0),
        device("b", cpu=None, rss=3, restarts=1, back_msgs_out=9.0),
    ]
    assert [d["name"] for d in sorted_devices(devices, key)] == expected


def test_a_plain_frame_has_every_device_and_no_escape_codes() -> None:
    paused = {**device("p"), "paused": True, "state": "RUNNING"}
    fatal = {**device("f", cpu=None, rss=None), "state": "FATAL", "pid": None, "uptime": None, "last_exit": "gave up"}
    console = Console(width=300, no_color=True, force_terminal=False)
    with console.capture() as captured:
        console.print(frame(status(paused, fatal), "name", styled=False))
    text = captured.get()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "supervisor pid 7, up 3.0s; 2 device process(es): 1 FATAL, 1 RUNNING; sorted by name"
    assert lines[2].split()[:3] == ["f", "FATAL", "-"] and lines[2].rstrip().endswith("gave up")
    assert lines[3].split()[:4] == ["p", "RUNNING", "(paused)", "100"]
