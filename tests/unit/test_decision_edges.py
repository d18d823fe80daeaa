"""Edges of the supervisor's decisions that the histories pass by without looking: the exact
words of last_exit, the rounding status shows, every deadline a child reports, the probe's
verdicts on failed or odd answers, the validation of policy values, and reload/scale at their
limits. Each test here was written against a mutant that survived scripts/mutation.sh."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from support.fakes import Harness, topology

from procdevices.control.protocol import Command, ErrorCode, PingReply, ProtocolError
from procdevices.errors import DeviceSetupError
from procdevices.supervisor import policy
from procdevices.supervisor.child import exit_text
from procdevices.supervisor.health import _blocked
from procdevices.supervisor.liveness import Blocked, next_slot
from procdevices.supervisor.reload import instances, plan, scaled
from procdevices.supervisor.statekeeper import GATHER


@pytest.fixture
def two(tmp_path: Path) -> Harness:
    return Harness(topology({"a": {}, "b": {}}, tmp_path)).start()


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (None, "exited"),
        (0, "exited with code 0"),
        (3, "exited with code 3"),
        (-signal.SIGKILL, "killed by SIGKILL"),
        (-99, "killed by signal 99"),
    ],
)
def test_exit_text(code: int | None, text: str) -> None:
    assert exit_text(code) == text


@pytest.mark.parametrize(("now", "interval", "slot"), [(10.0, 4.0, 12.0), (7.0, 2.5, 7.5), (12.0, 4.0, 16.0)])
def test_next_slot_is_the_next_multiple(now: float, interval: float, slot: float) -> None:
    assert next_slot(now, interval) == slot


# -- last_exit, word for word --------------------------------------------------------------------------


def test_a_crash_is_described_once(two: Harness) -> None:
    two.ready("a", "b")
    two.exit("a", 3)
    assert two.child("a").last_exit == "exited with code 3; restarting at once (restart 1 of 3 allowed in 60s)"


def test_a_stop_that_needed_a_signal_says_how_it_ended(two: Harness) -> None:
    two.ready("a", "b")
    two.request("stop", name="a")
    two.advance(3.0)
    two.exit("a", -signal.SIGKILL)
    assert two.child("a").last_exit == "stopped through the SIGKILL (killed by SIGKILL)"


def test_a_device_killed_as_unhealthy_is_restarted_even_if_it_exits_0(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {"restart": "on-failure", "memory_limit": "64MiB"}}, tmp_path)).start()
    harness.ready("a")
    harness.process("a").rss_bytes = 65 * 1024 * 1024
    harness.advance(1.0)
    harness.exit("a", 0)  # it caught the end and exited cleanly: still a failure, ours
    assert harness.state("a") == "BACKOFF"
    assert harness.child("a").last_exit.startswith("memory limit exceeded: rss 68157440 > 67108864 bytes; ")


# -- what status shows -------------------------------------------------------------------------------


def test_status_rounds_to_the_millisecond_and_shows_nothing_for_a_device_without_a_process(two: Harness) -> None:
    assert two.child("a").describe(two.clock.now)["last_exit"] is None
    two.ready("a")
    two.clock.now += 1.23456
    two.child("a").liveness.observed(paused=None, blocked=Blocked(side="out", seconds=12.34567))
    described = two.child("a").describe(two.clock.now)
    assert described["uptime"] == 1.235 and described["blocked"] == {"side": "out", "seconds": 12.346}
    assert described["zombie"] is False and described["cpu_percent"] == 1.25
    two.report_error("b", DeviceSetupError("in", "bind", "x", "nope"))  # FATAL, its process not yet reaped
    fatal = two.child("b").describe(two.clock.now)
    assert (fatal["pid"], fatal["uptime"], fatal["cpu_percent"], fatal["rss"], fatal["zombie"]) == (
        None,
        None,
        None,
        None,
        False,
    )


# -- deadlines ---------------------------------------------------------------------------------------


def test_every_deadline_of_a_child(two: Harness) -> None:
    child = two.child("a")
    # start_timeout is the supervisor's deadline (it counts in fair shares of the machine).
    assert child.next_deadline() is None
    # First the state file's write, gathered while the devices start (statekeeper.py).
    assert two.sup.next_deadline(two.clock.now) == pytest.approx(two.clock.now + GATHER)
    two.sup.state_file.flush(two.sup.children, two.launcher.listener_keys, at_once=True)
    assert two.sup.next_deadline(two.clock.now) == min(two.clock.now + 1.0, child.spawned_at + 10.0)
    two.ready("a", "b")
    assert child.next_deadline() == 1001.0  # the next probe slot
    two.advance(0.2)
    two.request("stop", name="a")
    requested = two.clock.now
    assert child.next_deadline() == requested + 2.0  # stop_timeout, then SIGTERM
    two.advance(2.0)
    assert child.stop is not None and child.stop.term_sent
    assert child.next_deadline() == pytest.approx(requested + 3.0)  # + kill_timeout, then SIGKILL
    two.advance(1.0)
    assert child.next_deadline() is None  # SIGKILL sent: only the exit is left
    two.exit("a", -signal.SIGKILL)
    assert child.next_deadline() is None  # STOPPED
    two.exit("b", 1)
    assert two.child("b").next_deadline() == two.child("b").retry_at == two.clock.now


# -- probes ------------------------------------------------------------------------------------------


def test_a_failed_probe_is_never_read_as_an_answer(two: Harness) -> None:
    two.ready("a", "b")
    two.unresponsive.add("a")
    two.advance(1.0)
    # The failure's body is a dict too: it must not be taken for the device's own words.
    two.control("a").answer(Command.PING, False, {"loop": "dead", "stats": dict.fromkeys(_COUNTERS, 9)})
    assert two.process("a").signals == [] and two.child("a").probe.consecutive_failures == 1
    assert two.child("a").traffic.totals()["front_msgs_in"] == 0


_COUNTERS = [
    "front_msgs_in",
    "front_bytes_in",
    "front_msgs_out",
    "front_bytes_out",
    "back_msgs_in",
    "back_bytes_in",
    "back_msgs_out",
    "back_bytes_out",
]


def test_blocked_is_shown_from_half_a_second_and_only_when_the_loop_says_blocked(two: Harness) -> None:
    two.ready("a", "b")
    two.ping_reply["a"] = {"loop": "blocked", "blocked_side": "out", "blocked_for": 0.5}
    two.advance(1.0)
    assert two.child("a").blocked == Blocked("out", 0.5)
    two.ping_reply["a"] = {"loop": "running", "blocked_side": "out", "blocked_for": 9.0}
    two.advance(1.0)
    assert two.child("a").blocked is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"blocked_side": "in", "blocked_for": 2}, Blocked("in", 2.0)),
        ({"blocked_side": 5, "blocked_for": "long"}, Blocked(None, 0.0)),
        ({}, Blocked(None, 0.0)),
    ],
)
def test_a_blocked_answer_is_read_defensively(body: dict[str, Any], expected: Blocked) -> None:
    reply = PingReply.from_wire({"loop": "blocked", **body})
    assert reply is not None
    assert _blocked(reply) == expected


def test_the_probe_round_trip_is_measured_from_the_send(two: Harness) -> None:
    rtts: list[float] = []
    two.sup.health.rtt_observers.append(lambda child, rtt: rtts.append(rtt))
    two.ready("a", "b")
    two.advance_to_probe("a")
    two.clock.now += 0.25
    two.control("a").answer(Command.PING, True, {"loop": "running"})
    assert rtts[-1] == pytest.approx(0.25)
    two.advance(1.0)  # answered at once
    assert rtts[-1] == 0.0


def test_a_device_under_its_memory_limit_is_probed(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {"memory_limit": "64MiB"}}, tmp_path)).start()
    harness.ready("a")
    harness.process("a").rss_bytes = 64 * 1024 * 1024  # equal is fine
    harness.unresponsive.add("a")
    harness.advance(1.0)
    assert harness.control("a").waiting(Command.PING) and harness.process("a").signals == []
    harness.unresponsive.clear()
    harness.answer_probes()
    harness.process("a").rss_bytes += 1
    pings = harness.control("a").sent.count(Command.PING)
    harness.advance(1.0)
    assert harness.process("a").signals == ["SIGKILL"]
    assert harness.control("a").sent.count(Command.PING) == pings, "a device killed for its memory was still probed"


def test_no_second_probe_while_one_is_in_flight(tmp_path: Path) -> None:
    # A probe timeout longer than the interval: the next slot comes while the PING waits.
    harness = Harness(topology({"a": {"probe": {"interval": 1.0, "timeout": 2.5, "failures": 2}}}, tmp_path)).start()
    harness.ready("a")
    harness.unresponsive.add("a")
    harness.advance(2.2)  # slots at +1 and +2: one PING, still in flight
    assert harness.control("a").sent.count(Command.PING) == 1
    harness.advance(1.4)  # it expires at +3.5; the slot at +4 sends the next
    assert harness.control("a").sent.count(Command.PING) == 1
    assert harness.child("a").probe.consecutive_failures == 1
    harness.advance(0.5)
    assert harness.control("a").sent.count(Command.PING) == 2


# -- policy values -----------------------------------------------------------------------------------


def test_policy_values_at_their_limits() -> None:
    policy.Backoff(initial=0.0, max=0.0)  # no delay at all is allowed
    policy.Intensity(max_restarts=0, within=0.5)
    with pytest.raises(ValueError, match=r"backoff delays must be >= 0, got initial=-1 max=1"):
        policy.Backoff(initial=-1, max=1)
    with pytest.raises(ValueError, match=r"backoff factor must be >= 1, got 0.5"):
        policy.Backoff(factor=0.5)
    with pytest.raises(ValueError, match=r"max_restarts must be >= 0, got -1"):
        policy.Intensity(max_restarts=-1)
    with pytest.raises(ValueError, match=r"intensity window must be > 0 seconds, got 0"):
        policy.Intensity(within=0)
    with pytest.raises(ValueError, match=r"stop timeouts must be >= 0, got stop=-1 kill=1"):
        policy.worst_case_stop_seconds(-1, 1)
    with pytest.raises(ValueError, match=r"failures_allowed must be >= 1, got 0"):
        policy.after_probe(policy.ProbeState(), False, 0)
    with pytest.raises(ValueError, match=r"consecutive_failures must be >= 0, got -1"):
        policy.backoff_delay(policy.Backoff(), -1)


def test_a_requested_stop_decides_no_delay() -> None:
    decision = policy.decide_after_exit(
        policy=policy.RestartPolicy.ALWAYS,
        exit_code=1,
        requested_stop=True,
        run_seconds=1.0,
        now=100.0,
        backoff=policy.Backoff(initial=2.0),
        intensity=policy.Intensity(),
        stable_after=10.0,
        history=policy.RestartHistory(),
        failures=3,
        unhealthy=False,
    )
    assert (decision.event_name, decision.delay, decision.failures) == ("EXIT_FINAL", 0.0, 0)
    assert decision.reason == "exited with code 1; stopped on request"


# -- reload and scale at their limits ----------------------------------------------------------------


def _replicated(tmp_path: Path, name: str) -> dict[str, Any]:
    return {
        "in": {"bind": [f"ipc://{tmp_path}/{name}-{{replica}}-in"]},
        "out": {"bind": [f"ipc://{tmp_path}/{name}-{{replica}}-out"]},
    }


def test_scale_accepts_64_replicas_and_leaves_other_devices_alone(tmp_path: Path) -> None:
    topo = topology(
        {"pipe": _replicated(tmp_path, "pipe"), "other": {"replicas": 2, **_replicated(tmp_path, "o")}}, tmp_path
    )
    result = scaled(topo, "pipe", 64)
    assert {d.name: d.replicas for d in result.devices} == {"pipe": 64, "other": 2}
    with pytest.raises(ProtocolError, match=r"devices\.pipe\.replicas: must be between 1 and 64, got 65"):
        scaled(topo, "pipe", 65)
    with pytest.raises(ProtocolError, match=r"no device named 'nope' \(devices: pipe, other\)") as caught:
        scaled(topo, "nope", 2)
    assert caught.value.code is ErrorCode.NO_SUCH_DEVICE


def test_scale_checks_every_bind_after_a_wildcard_port(tmp_path: Path) -> None:
    topo = topology(
        {
            "pipe": {
                "in": {"bind": ["tcp://127.0.0.1:*", f"ipc://{tmp_path}/shared"]},
                "out": {"bind": ["tcp://127.0.0.1:*"]},
            }
        },
        tmp_path,
    )
    # The rule set (config/rules.py) names the bind that cannot be replicated, as check does.
    with pytest.raises(
        ProtocolError, match=r"devices\.pipe\.in\.bind\[1\]: replicas > 1 need '\{replica\}' or port \*"
    ):
        scaled(topo, "pipe", 2)


def test_replaced_instances_keep_their_device(tmp_path: Path) -> None:
    old = topology({"a": {}, "b": {}}, tmp_path)
    binds = {"in": {"bind": [f"ipc://{tmp_path}/b-in"]}, "out": {"bind": [f"ipc://{tmp_path}/b-out"]}}
    new = topology({"a": {"kind": "queue"}, "c": binds}, tmp_path)
    result = plan(instances(old), instances(new))
    assert [i.config.name for i in result.restarted] == ["a"] and [(o, i.config.name) for o, i in result.handovers] == [
        ("b", "c")
    ]
    files: list[Any] = [new]
    harness = Harness(old, load=lambda path: files[0]).start()
    harness.ready("a", "b")
    harness.request("reload")
    harness.exit("a", 0)
    harness.exit("b", 0)
    assert {c.name: c.device_name for c in harness.sup.children} == {"a": "a", "c": "c"}


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (None, "was killed as unhealthy"),
        (0, "exited cleanly (code 0)"),
        (2, "exited with code 2"),
        (-signal.SIGTERM, "was killed by signal 15 (SIGTERM)"),
        (-99, "was killed by signal 99"),
    ],
)
def test_how_an_exit_is_told_in_a_decision(code: int | None, text: str) -> None:
    assert policy._describe_exit(code, unhealthy=code is None) == text


def test_status_of_a_restarted_then_stopped_device(two: Harness) -> None:
    two.ready("a", "b")
    assert two.child("a").describe(two.clock.now)["endpoints"] == {"in": ["ipc://in"], "out": ["ipc://out"]}
    two.request("pause", name="a")
    # The device's own answer: its PING reply once the loop took the command.
    two.control("a").answer(Command.PAUSE, True, {"loop": "running", "paused": True})
    assert two.child("a").describe(two.clock.now)["paused"] is True
    two.exit("a", 1)
    two.advance(0.0)  # a new process, STARTING: not paused (false, not null)
    starting = two.child("a").describe(two.clock.now)
    assert starting["state"] == "STARTING" and starting["paused"] is False and starting["uptime"] is None
    two.ready("a")
    two.request("stop", name="a")
    two.exit("a", 0)
    stopped = two.child("a").describe(two.clock.now + 5)
    assert stopped["state"] == "STOPPED" and stopped["uptime"] is None and stopped["pid"] is None


def test_the_exit_of_a_device_that_reported_its_setup_error_logs_nothing_more(two: Harness) -> None:
    two.report_error("a", DeviceSetupError("in", "bind", "x", "nope"))
    lines = len(two.lines)
    two.exit("a", 1)
    assert len(two.lines) == lines, two.lines[lines:]


def test_a_pause_answer_is_read_as_a_ping_reply(two: Harness) -> None:
    """`status` right after `pause` or `resume` shows what the device answered, its PING reply
    once its loop took the command; an answer that is not one (an echo of the request) shows
    nothing."""
    two.ready("a")
    two.request("pause", name="a")
    two.control("a").answer(Command.PAUSE, True, {"paused": True})
    assert two.child("a").paused is False
    two.request("pause", name="a")
    two.control("a").answer(Command.PAUSE, True, {"loop": "running", "paused": True})
    assert two.child("a").paused is True
    two.request("resume", name="a")
    two.control("a").answer(Command.RESUME, True, {"loop": "running", "paused": False})
    assert two.child("a").paused is False


def test_paused_is_what_every_ping_reports(two: Harness) -> None:
    """The device's PING answer is the truth about pausing: a pause that the supervisor never
    saw answered (its reply lost) still shows, and a resume shows without a command."""
    two.ready("a", "b")
    assert two.child("a").paused is False
    two.ping_reply["a"] = {"loop": "running", "paused": True}
    two.advance(1.0)
    assert two.child("a").paused is True and two.child("b").paused is False
    two.ping_reply["a"] = {"loop": "running", "paused": False}
    two.advance(1.0)
    assert two.child("a").paused is False
    # A PING that does not answer says nothing about pausing.
    two.ping_reply["a"] = {"loop": "running", "paused": True}
    two.advance(1.0)
    two.unresponsive.add("a")
    two.advance(1.0)
    assert two.child("a").paused is True
