"""What the supervisor tells people: each event's fields and its one-line form (`procdevices
events`), the publisher that never blocks, and the level and device of the log lines that
matter (an operator filters on them)."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from support.fakes import Harness, topology

from procdevices.errors import DeviceSetupError
from procdevices.supervisor.events import SUBSCRIBER_BACKLOG, EventPublisher, describe, event, events_endpoint
from procdevices.supervisor.statekeeper import SPACING


@pytest.fixture
def two(tmp_path: Path) -> Harness:
    return Harness(topology({"a": {}, "b": {}}, tmp_path)).start()


def test_an_event_has_its_type_and_wall_clock_time_first() -> None:
    before = time.time()
    payload = event("command", command="status", args={})
    assert list(payload)[:2] == ["type", "time"] and payload["type"] == "command"
    assert before - 1 <= payload["time"] <= time.time() + 1
    assert payload["time"] == round(payload["time"], 6)


def test_state_events_explain_exits_and_name_the_process(two: Harness) -> None:
    two.ready("a", "b")
    process = two.process("a")
    two.exit("a", 3)
    states = [e for e in two.events if e["type"] == "state" and e["instance"] == "a"]
    start, spawned, ready, crash = states
    assert (start["event"], start["reason"], start["pid"]) == ("START", "start", None)
    assert (spawned["event"], spawned["to"], spawned["pid"]) == ("SPAWNED", "STARTING", process.pid)
    assert (ready["event"], ready["reason"], ready["pid"]) == ("READY", "ready", process.pid)
    assert crash["event"] == "EXIT_RESTART" and crash["reason"] == two.child("a").last_exit
    assert "exited with code 3" in crash["reason"] and crash["pid"] == process.pid
    assert crash["device"] == "a" and crash["from"] == "RUNNING" and crash["to"] == "BACKOFF"
    (decision,) = [e for e in two.events if e["type"] == "decision"]
    assert decision == {
        "type": "decision",
        "time": decision["time"],
        "device": "a",
        "instance": "a",
        "action": "restart",
        "delay": 0.0,
        "exit_code": 3,
        "restarts": 1,
        "reason": two.child("a").last_exit,
    }


def test_a_requested_stop_is_explained_and_decides_nothing(two: Harness) -> None:
    two.ready("a", "b")
    two.request("stop", name="a")
    two.exit("a", 0)
    stopped = [e for e in two.events if e["type"] == "state" and e["to"] == "STOPPED"]
    assert [e["reason"] for e in stopped] == ["stopped through the control socket"]
    assert not [e for e in two.events if e["type"] == "decision"]


@pytest.mark.parametrize(
    ("payload", "line"),
    [
        (
            {"type": "state", "instance": "a", "from": "RUNNING", "to": "BACKOFF", "pid": 42, "reason": "crashed"},
            "a: RUNNING -> BACKOFF pid 42 (crashed)",
        ),
        (
            {"type": "state", "instance": "a", "from": "STOPPED", "to": "STARTING", "pid": None, "reason": "start"},
            "a: STOPPED -> STARTING (start)",
        ),
        ({"type": "decision", "instance": "a", "action": "give_up", "reason": "gave up"}, "a: give_up (gave up)"),
        ({"type": "command", "command": "stop", "args": {"name": "a"}}, "command stop name=a"),
        (
            {"type": "command", "command": "scale", "args": {"name": "a", "replicas": 2}},
            "command scale name=a replicas=2",
        ),
        ({"type": "command", "command": "status", "args": {}}, "command status"),
        ({"type": "command", "command": "down"}, "command down"),
        ({"type": "supervisor", "state": "stopped", "pid": 7}, "supervisor stopped (pid 7)"),
        ({"type": "new-kind", "x": 1}, "{'type': 'new-kind', 'x': 1, 'time': 1800000000.5}"),
    ],
)
def test_each_event_reads_as_one_line(payload: dict[str, Any], line: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(1_800_000_000.5))
    assert describe({**payload, "time": 1_800_000_000.5}) == f"{stamp} {line}"
    assert describe(payload).startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(0)))


def test_the_publisher_sends_json_and_removes_its_socket_file(short_tmp: Path, zmq_ctx: zmq.Context[Any]) -> None:
    endpoint = events_endpoint(short_tmp)
    assert endpoint == f"ipc://{short_tmp}/events.sock"
    publisher = EventPublisher(zmq_ctx, endpoint)
    assert publisher.socket.sndhwm == SUBSCRIBER_BACKLOG == 10_000 and publisher.socket.linger == 0
    sub: zmq.Socket[bytes] = zmq_ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(endpoint)
    try:
        for _ in range(200):  # a SUB is a slow joiner: until one arrives
            publisher({"type": "hello"})
            if sub.poll(50):
                break
        assert json.loads(sub.recv()) == {"type": "hello"}
        assert (short_tmp / "events.sock").is_socket()
    finally:
        publisher.close()
    assert not (short_tmp / "events.sock").exists()
    publisher.close()  # twice: nothing to remove, no error


# -- log lines: level and device --------------------------------------------------------------------


def test_log_lines_carry_their_device_and_level(two: Harness) -> None:
    two.ready("b")
    two.report_error("a", DeviceSetupError("in", "bind", "tcp://127.0.0.1:1", "Address already in use", 98))
    assert two.record("a: could not start") == ("a", logging.ERROR)
    assert two.record("a: FATAL (a start that cannot succeed") == ("a", logging.ERROR)
    assert two.record("ready: 1 device process(es) running, 1 not") == (None, logging.INFO)
    two.exit("b", 1)
    assert two.record("b: BACKOFF") == ("b", logging.WARNING)
    two.advance(0.0)
    two.ready("b")
    two.unresponsive.add("b")
    two.advance(3.0)
    assert two.record("b: hung: 2 liveness probes unanswered; killing pid") == ("b", logging.WARNING)
    two.exit("b", -signal.SIGKILL)
    two.advance(1.0)  # the second failure in a row: after 0.5 s
    two.ready("b")
    two.unresponsive.clear()
    two.request("stop", name="b")
    two.advance(3.0)
    assert two.record("b: no exit 2.0s after the control-socket stop; SIGTERM") == ("b", logging.WARNING)
    assert two.record("b: still alive after SIGTERM; SIGKILL") == ("b", logging.WARNING)
    two.exit("b", -signal.SIGKILL)
    assert two.record("b: STOPPED (stopped through the SIGKILL") == ("b", logging.INFO)
    two.sup.on_signal(signal.SIGTERM)
    assert two.record("stopping every device (received SIGTERM)") == (None, logging.INFO)


def test_a_clean_final_exit_is_info_and_a_give_up_is_error(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {"restart": "on-failure"}, "b": {}}, tmp_path)).start()
    harness.ready("a", "b")
    harness.exit("a", 0)
    assert harness.record("a: EXITED") == ("a", logging.INFO)
    for _ in range(4):
        harness.exit("b", 1)
        harness.advance(1.0)
    assert harness.record("b: FATAL (gave up") == ("b", logging.ERROR)


def test_a_spawn_failure_is_an_error_of_its_device(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {}}, tmp_path))
    harness.launcher.fail_with = OSError(24, "Too many open files")
    harness.start()
    assert harness.record("a: FATAL (could not spawn a process") == ("a", logging.ERROR)
    assert harness.record("supervising 1 device process(es)") == (None, logging.INFO)


def test_a_failing_state_write_is_a_warning(two: Harness) -> None:
    two.store.fail_with = OSError(28, "No space left on device")
    two.clock.now += SPACING  # the devices are starting: the write is gathered (statekeeper.py)
    two.sup.flush()
    assert two.record("supervising without it") == (None, logging.WARNING)


def test_a_decision_delay_is_rounded_to_the_microsecond(tmp_path: Path) -> None:
    harness = Harness(
        topology({"a": {"backoff": {"initial": 0.12345678, "factor": 2.0, "max": 3.0}}}, tmp_path)
    ).start()
    harness.ready("a")
    harness.exit("a", 1)  # the first failure: at once
    harness.advance(0.0)
    harness.exit("a", 1)  # the second: after `initial`
    delays = [e["delay"] for e in harness.events if e["type"] == "decision"]
    assert delays == [0.0, 0.123457]
