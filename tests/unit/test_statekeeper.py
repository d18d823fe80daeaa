"""state.json during a start: changes gathered, not one write per spawn and ready
(statekeeper.py); at once when no device is starting, and when leaving."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support.fakes import Harness, topology

from procdevices.supervisor.statekeeper import GATHER, SPACING


@pytest.fixture
def three(tmp_path: Path) -> Harness:
    return Harness(topology({"a": {}, "b": {}, "c": {}}, tmp_path)).start()


def test_a_start_gathers_its_changes(three: Harness) -> None:
    start = three.clock.now
    three.sup.flush()
    assert three.store.written == [], "written while the start's changes come in"
    assert three.sup.next_deadline(start) == pytest.approx(start + GATHER), "the loop must wake for it"
    three.clock.now = start + GATHER
    three.sup.flush()
    assert len(three.store.written) == 1 and set(three.store.written[-1]) == {"a", "b", "c"}
    three.ready("a")
    three.sup.flush()
    assert len(three.store.written) == 1, "written again within SPACING of the last write"
    assert three.sup.next_deadline(three.clock.now) == pytest.approx(start + GATHER + SPACING)
    three.clock.now = start + GATHER + SPACING
    three.sup.flush()
    assert len(three.store.written) == 2


def test_once_no_device_is_starting_the_file_is_written_at_once(three: Harness) -> None:
    three.ready("a", "b", "c")
    three.sup.flush()
    assert len(three.store.written) == 1
    three.exit("a", 1)  # BACKOFF: restarted by a later tick, nothing starting meanwhile
    assert three.state("a") == "BACKOFF"
    three.sup.flush()
    assert len(three.store.written) == 2 and set(three.store.written[-1]) == {"b", "c"}
    assert three.sup.state_file.due(three.sup.children) is None, "a written file needs no wake-up"


def test_leaving_writes_at_once_even_during_a_start(three: Harness) -> None:
    three.sup.on_signal(signal.SIGUSR1)  # leave the devices for the next supervisor
    assert three.sup.leaving
    three.sup.flush()
    assert len(three.store.written) == 1 and set(three.store.written[-1]) == {"a", "b", "c"}
