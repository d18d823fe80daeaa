"""Tests for the device state machine (procdevices.supervisor.states)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from support.fakes import Harness, topology

from procdevices.errors import DeviceSetupError
from procdevices.supervisor.states import (
    PROCESS_STATES,
    TRANSITIONS,
    Event,
    InvalidTransition,
    State,
    next_state,
)

S = State
E = Event

# The table exactly as specified, written out independently of the module so a
# careless edit to TRANSITIONS is caught.
EXPECTED: dict[tuple[State, Event], State] = {
    (S.STOPPED, E.START): S.QUEUED,
    (S.STOPPED, E.STOP): S.STOPPED,
    (S.EXITED, E.START): S.QUEUED,
    (S.EXITED, E.STOP): S.STOPPED,
    (S.FATAL, E.START): S.QUEUED,
    (S.FATAL, E.STOP): S.STOPPED,
    (S.STOPPED, E.ADOPTED): S.RUNNING,
    (S.QUEUED, E.SPAWNED): S.STARTING,
    (S.QUEUED, E.STOP): S.STOPPED,
    (S.QUEUED, E.FAIL): S.FATAL,
    (S.STARTING, E.READY): S.RUNNING,
    (S.STARTING, E.FAIL): S.FATAL,
    (S.STARTING, E.EXIT_RESTART): S.BACKOFF,
    (S.STARTING, E.EXIT_FINAL): S.EXITED,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.RUNNING, E.EXIT_RESTART): S.BACKOFF,
    (S.RUNNING, E.EXIT_FINAL): S.EXITED,
    (S.RUNNING, E.FAIL): S.FATAL,
    (S.RUNNING, E.STOP): S.STOPPING,
    (S.BACKOFF, E.RETRY): S.QUEUED,
    (S.BACKOFF, E.START): S.QUEUED,
    (S.BACKOFF, E.STOP): S.STOPPED,
    (S.BACKOFF, E.FAIL): S.FATAL,
    (S.STOPPING, E.STOPPED): S.STOPPED,
    (S.STOPPING, E.EXIT_RESTART): S.STOPPED,
    (S.STOPPING, E.EXIT_FINAL): S.STOPPED,
    (S.STOPPING, E.FAIL): S.STOPPED,
    (S.STOPPING, E.STOP): S.STOPPING,
}

ALL_PAIRS = list(itertools.product(State, Event))
INVALID_PAIRS = [pair for pair in ALL_PAIRS if pair not in EXPECTED]


def test_enum_values_are_upper_case_names() -> None:
    for state in State:
        assert state.value == state.name
    for event in Event:
        assert event.value == event.name
    assert State.RUNNING.value == "RUNNING"


def test_table_is_exactly_the_specified_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(S.STOPPED, E.READY)] = S.RUNNING  # type: ignore[index]


@pytest.mark.parametrize(("pair", "target"), EXPECTED.items(), ids=lambda v: str(v))
def test_every_row(pair: tuple[State, Event], target: State) -> None:
    state, event = pair
    assert next_state(state, event) is target


@pytest.mark.parametrize("pair", INVALID_PAIRS, ids=lambda p: f"{p[0].value}+{p[1].value}")
def test_every_other_pair_is_invalid(pair: tuple[State, Event]) -> None:
    state, event = pair
    with pytest.raises(InvalidTransition):
        next_state(state, event)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.RUNNING, E.READY),  # second readiness report
        (S.STOPPED, E.READY),  # report about a child we do not track
        (S.RUNNING, E.START),  # would spawn a second child
        (S.STARTING, E.START),
        (S.QUEUED, E.START),  # already waiting for its process
        (S.QUEUED, E.READY),  # no process to report
        (S.RUNNING, E.SPAWNED),  # a second process
        (S.STOPPING, E.START),  # must wait for the stop to finish
        (S.STOPPED, E.RETRY),  # stale backoff timer
        (S.BACKOFF, E.EXIT_RESTART),  # no child in BACKOFF
        (S.RUNNING, E.STOPPED),  # STOPPED only completes a stop
    ],
)
def test_notable_invalid_pairs(state: State, event: Event) -> None:
    with pytest.raises(InvalidTransition) as info:
        next_state(state, event)
    # The message must name both so a log line is enough to debug it.
    assert state.value in str(info.value)
    assert event.value in str(info.value)
    assert info.value.state is state
    assert info.value.event is event


def test_every_state_is_a_source() -> None:
    assert {state for state, _ in TRANSITIONS} == set(State)


def test_every_state_is_reachable_from_stopped() -> None:
    seen = {S.STOPPED}
    frontier = [S.STOPPED]
    while frontier:
        current = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is current and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(State)


def test_stop_is_accepted_in_every_state() -> None:
    # "stop" must be safe on any device, whatever it is doing.
    for state in State:
        assert next_state(state, E.STOP) in {S.STOPPED, S.STOPPING}


def _walk(events: list[Event]) -> list[State]:
    state, walked = S.STOPPED, []
    for event in events:
        state = next_state(state, event)
        walked.append(state)
    return walked


def test_a_start_is_queued_until_a_process_exists() -> None:
    assert _walk([E.START, E.SPAWNED, E.READY]) == [S.QUEUED, S.STARTING, S.RUNNING]
    # a crash's restart waits for its turn like any other start
    assert _walk([E.START, E.SPAWNED, E.EXIT_RESTART, E.RETRY, E.SPAWNED]) == [
        S.QUEUED,
        S.STARTING,
        S.BACKOFF,
        S.QUEUED,
        S.STARTING,
    ]


def test_stopping_a_queued_start_goes_straight_to_stopped() -> None:
    assert _walk([E.START, E.STOP]) == [S.QUEUED, S.STOPPED]


def test_scripted_history() -> None:
    script = [
        (E.START, S.QUEUED),
        (E.SPAWNED, S.STARTING),
        (E.READY, S.RUNNING),
        (E.EXIT_RESTART, S.BACKOFF),  # crash
        (E.RETRY, S.QUEUED),
        (E.SPAWNED, S.STARTING),
        (E.READY, S.RUNNING),
        (E.STOP, S.STOPPING),
        (E.STOPPED, S.STOPPED),
    ]
    assert _walk([event for event, _ in script]) == [expected for _, expected in script]


# --- PROCESS_STATES is where a supervised device has a process ---------------


def test_a_process_exists_exactly_in_the_process_states(tmp_path: Path) -> None:
    """Through a history that visits every state, on the fake clock: after each step, a
    device has a process exactly when its state is one of PROCESS_STATES."""
    h = Harness(topology({"a": {}, "b": {}, "c": {"restart": "on-failure"}}, tmp_path), max_starting=1)
    seen: set[State] = set()

    def step() -> None:
        for child in h.sup.children:
            has_process = child.process is not None
            assert (child.state in PROCESS_STATES) == has_process, (child.name, child.state, has_process)
            seen.add(child.state)

    h.start()
    step()  # a STARTING, b and c QUEUED
    h.ready("a")
    h.advance(0.0)
    step()
    h.ready("b")
    h.advance(0.0)
    step()
    h.ready("c")
    h.exit("a", 1)  # BACKOFF
    step()
    h.exit("c", 0)  # EXITED
    step()
    h.request("stop", name="b")  # STOPPING
    step()
    h.exit("b", 0)  # STOPPED
    step()
    h.advance(0.0)  # a: its retry
    step()
    # A reported setup error makes it FATAL at once; its process, on its way out, is reaped
    # by the exit that follows the report: the one moment a process outlives PROCESS_STATES.
    h.report_error("a", DeviceSetupError("in", "bind", "ipc://x", "in use"))
    h.exit("a", 1)  # FATAL
    step()
    assert seen == set(State)


def test_stopping_a_queued_device_emits_no_stopping_and_spawns_nothing(tmp_path: Path) -> None:
    h = Harness(topology({"a": {}, "b": {}}, tmp_path), max_starting=1).start()
    assert (h.state("a"), h.state("b")) == ("STARTING", "QUEUED")
    reply = h.request("stop", name="b")
    assert reply["ok"], reply
    steps = [(e["from"], e["to"]) for e in h.events if e["type"] == "state" and e["instance"] == "b"]
    assert steps == [("STOPPED", "QUEUED"), ("QUEUED", "STOPPED")]
    h.ready("a")
    h.advance(1.0)
    assert h.launches("b") == 0 and h.state("b") == "STOPPED"


def test_a_queued_device_becomes_starting_when_its_process_exists(tmp_path: Path) -> None:
    h = Harness(topology({"a": {}, "b": {}}, tmp_path), max_starting=1).start()
    assert h.state("b") == "QUEUED" and h.child("b").process is None
    assert h.request("start", name="b")["code"] == "refused"  # already on its way
    h.ready("a")
    h.advance(0.0)
    assert h.state("b") == "STARTING" and h.launches("b") == 1
    steps = [e["to"] for e in h.events if e["type"] == "state" and e["instance"] == "b"]
    assert steps == ["QUEUED", "STARTING"]


def test_crash_loop_to_fatal_then_stop_clears_it() -> None:
    state = S.STOPPED
    for event in (E.START, E.SPAWNED, E.EXIT_RESTART, E.RETRY, E.FAIL, E.STOP):
        state = next_state(state, event)
    assert state is S.STOPPED


# --- docs/states.md must show the same table --------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "states.md"
BEGIN = "<!-- transitions:begin -->"
END = "<!-- transitions:end -->"


def _parse_doc_table(text: str) -> dict[tuple[State, Event], State]:
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "table markers missing in docs/states.md"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = [line.strip() for line in block.strip().splitlines() if line.strip()]
    header, separator, *body = rows
    assert [c.strip() for c in header.strip("|").split("|")] == ["From", "Event", "To"]
    assert set(separator.replace("|", "").strip()) <= {"-", ":", " "}
    table: dict[tuple[State, Event], State] = {}
    for row in body:
        source, event, target = (cell.strip().strip("`") for cell in row.strip("|").split("|"))
        key = (State[source], Event[event])
        assert key not in table, f"duplicate row in docs/states.md: {row}"
        table[key] = State[target]
    return table


def test_doc_table_matches_transitions() -> None:
    assert _parse_doc_table(DOC.read_text(encoding="utf-8")) == dict(TRANSITIONS)


def test_doc_has_a_paragraph_per_state() -> None:
    text = DOC.read_text(encoding="utf-8")
    for state in State:
        assert f"**{state.value}**" in text
