"""The supervisor's decisions, driven by scripted event histories with a fake clock and a fake
launcher: no process, no socket, no sleep. Each test reads as "this happened, then this, so
the supervisor must have done that".

Settings (tests/support/fakes.py SETTINGS): backoff 0.5 s × 2 up to 3 s, at most 3 restarts in
60 s, stable after 10 s, probe every 1 s with a 0.5 s timeout and 2 failures allowed,
stop_timeout 2 s, kill_timeout 1 s.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support.fakes import Harness, topology

from procdevices.control.protocol import Command, ErrorCode
from procdevices.errors import DeviceSetupError
from procdevices.supervisor.statekeeper import SPACING


@pytest.fixture
def two(tmp_path: Path) -> Harness:
    return Harness(topology({"a": {}, "b": {}}, tmp_path)).start()


def test_start_all_spawns_each_device_and_announces_ready_once(two: Harness) -> None:
    assert [two.state("a"), two.state("b")] == ["STARTING", "STARTING"]
    two.ready("a")
    assert two.notes == []
    two.ready("b")
    assert two.notes == ["READY=1\nSTATUS=2 devices running"]
    assert two.logged("ready: 2 device process(es) running")


def test_first_restart_after_a_stable_run_is_immediate(two: Harness) -> None:
    two.ready("a", "b")
    two.advance(11.0)  # longer than stable_after
    first = two.exit("a", 1)
    assert two.state("a") == "BACKOFF"
    assert two.child("a").retry_at == two.clock.now
    assert two.logged("restarting at once")
    two.advance(0.0)
    assert two.state("a") == "STARTING"
    assert two.process("a") is not first
    assert two.launches("a") == 2


def test_crash_loop_backs_off_and_waits_the_delay(two: Harness) -> None:
    two.ready("a", "b")
    two.exit("a", 1)  # 1st failure: immediate
    two.advance(0.0)
    assert two.launches("a") == 2
    two.exit("a", 1)  # 2nd failure in a row: initial = 0.5 s
    assert two.state("a") == "BACKOFF"
    two.advance(0.49)
    assert two.launches("a") == 2, "restarted before its backoff delay"
    two.advance(0.01)
    assert two.launches("a") == 3
    two.exit("a", 1)  # 3rd: 0.5 × 2 = 1.0 s
    two.advance(0.99)
    assert two.launches("a") == 3
    two.advance(0.01)
    assert two.launches("a") == 4
    assert two.child("a").restarts == 3


def test_intensity_exceeded_makes_one_device_fatal_and_leaves_its_neighbour_alone(two: Harness) -> None:
    two.ready("a", "b")
    neighbour = two.process("b")
    for _ in range(3):
        two.exit("a", 1)
        two.advance(1.0)
    assert two.state("a") == "STARTING"
    two.exit("a", 1)  # the 4th restart within 60 s: more than 3
    assert two.state("a") == "FATAL"
    assert "gave up: 4 restarts within 60s" in two.child("a").last_exit
    two.advance(30.0)
    assert two.launches("a") == 4, "a FATAL device was started again"
    assert two.state("b") == "RUNNING" and two.process("b") is neighbour
    assert neighbour.signals == []


def test_setup_error_is_fatal_at_once_and_still_announces_ready(two: Harness) -> None:
    two.ready("b")
    two.report_error("a", DeviceSetupError("in", "bind", "tcp://127.0.0.1:1", "Address already in use", 98))
    assert two.state("a") == "FATAL"
    assert "Address already in use" in two.child("a").last_exit
    # The last device to finish starting failed: readiness must still be reported (systemd).
    assert two.notes == ["READY=1\nSTATUS=1 devices running"]
    two.exit("a", 1)  # the reaping of the failed process changes nothing
    two.advance(5.0)
    assert two.state("a") == "FATAL" and two.launches("a") == 1


def test_exit_before_ready_takes_the_restart_path(two: Harness) -> None:
    two.exit("a", 1)  # died before its report: could be transient, so retried
    assert two.state("a") == "BACKOFF"


def test_spawn_failure_is_fatal(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {}}, tmp_path))
    harness.launcher.fail_with = OSError(24, "Too many open files")
    harness.start()
    assert harness.state("a") == "FATAL"
    assert "could not spawn a process" in harness.child("a").last_exit


def test_hung_device_is_killed_and_replaced(two: Harness) -> None:
    two.ready("a", "b")
    two.unresponsive.add("a")
    hung = two.process("a")
    two.advance(3.0)  # probes at +1 s and +2 s expire unanswered
    assert hung.signals == ["SIGKILL"]
    assert two.logged("a: hung: 2 liveness probes unanswered; killing pid")
    two.unresponsive.clear()
    two.exit("a", -signal.SIGKILL)
    assert two.state("a") == "BACKOFF"
    assert "hung" in two.child("a").last_exit
    two.advance(0.0)
    assert two.state("a") == "STARTING" and two.process("a") is not hung
    assert two.process("b").signals == []


def test_a_blocked_device_is_alive_not_hung(two: Harness) -> None:
    two.ready("a", "b")
    two.ping_reply["a"] = {"loop": "blocked", "blocked_side": "out", "blocked_for": 12.5}
    two.advance(30.0)
    assert two.process("a").signals == []
    assert two.state("a") == "RUNNING"
    described = two.child("a").describe(two.clock.now)
    assert described["blocked"] == {"side": "out", "seconds": 12.5}
    two.ping_reply.pop("a")
    two.advance(1.0)
    assert two.child("a").describe(two.clock.now)["blocked"] is None


def test_a_dead_forwarding_loop_is_hung(two: Harness) -> None:
    two.ready("a", "b")
    two.ping_reply["a"] = {"loop": "dead"}
    two.advance(1.0)
    assert two.process("a").signals == ["SIGKILL"]
    assert two.logged("a: hung: its forwarding loop has ended")


def test_memory_limit_kills_with_the_reason(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {"memory_limit": "64MiB"}}, tmp_path)).start()
    harness.ready("a")
    harness.process("a").rss_bytes = 65 * 1024 * 1024
    harness.advance(1.0)
    assert harness.process("a").signals == ["SIGKILL"]
    harness.exit("a", -signal.SIGKILL)
    assert "memory limit exceeded" in harness.child("a").last_exit


def test_stop_escalates_to_sigterm_then_sigkill(two: Harness) -> None:
    two.ready("a", "b")
    reply = two.request("stop", name="a")
    assert reply == {"ok": True, "result": {"stopping": ["a"]}}
    assert two.state("a") == "STOPPING"
    assert Command.STOP in two.control("a").sent
    process = two.process("a")
    two.advance(1.99)
    assert process.signals == []
    two.advance(0.01)  # stop_timeout
    assert process.signals == ["SIGTERM"]
    two.advance(0.99)
    assert process.signals == ["SIGTERM"]
    two.advance(0.01)  # + kill_timeout
    assert process.signals == ["SIGTERM", "SIGKILL"]
    two.exit("a", -signal.SIGKILL)
    assert two.state("a") == "STOPPED"
    assert two.child("a").last_exit.startswith("stopped through the SIGKILL")
    two.advance(10.0)
    assert two.launches("a") == 1, "a stopped device was restarted"


def test_a_device_stopped_before_it_is_ready_gets_sigterm_at_once(two: Harness) -> None:
    # Its control socket may not be served yet: a STOP would be dropped, and the stop would
    # wait stop_timeout for nothing (Ctrl-C during start-up). SIGTERM stops it at any point.
    two.ready("b")
    assert two.state("a") == "STARTING"
    two.sup.on_signal(signal.SIGINT)
    process = two.process("a")
    assert process.signals == ["SIGTERM"], "not at once"
    assert Command.STOP not in two.control("a").sent
    assert Command.STOP in two.control("b").sent, "a ready device stops through its control socket"
    assert two.logged("a: stopped before it was ready; SIGTERM")
    two.exit("a", -signal.SIGTERM)
    two.exit("b", 0)
    assert two.child("a").last_exit.startswith("stopped through the SIGTERM")
    assert two.sup.finished()
    two.advance(10.0)
    assert process.signals == ["SIGTERM"], "no SIGKILL for a device that exited"


def test_clean_stop_through_the_control_socket(two: Harness) -> None:
    two.ready("a", "b")
    two.request("stop", name="a")
    two.exit("a", 0)
    assert two.state("a") == "STOPPED"
    assert two.child("a").last_exit == "stopped through the control socket"
    assert two.process("b").signals == []


def test_shutdown_keeps_fatal_for_the_exit_code(two: Harness) -> None:
    two.ready("b")
    two.report_error("a", DeviceSetupError("in", "bind", "x", "nope"))
    two.exit("a", 1)
    two.sup.on_signal(signal.SIGTERM)
    assert two.notes[-1] == "STOPPING=1" and two.launcher.released
    assert two.state("a") == "FATAL" and two.state("b") == "STOPPING"
    assert not two.sup.finished()
    two.exit("b", 0)
    assert two.sup.finished()
    assert two.state("a") == "FATAL"


def test_shutdown_does_not_restart_a_device_in_backoff(two: Harness) -> None:
    two.ready("a", "b")
    two.exit("a", 1)
    two.exit("b", 1)
    two.sup.begin_shutdown("test")
    two.advance(5.0)
    assert two.launches("a") == 1 and two.launches("b") == 1
    assert two.sup.finished()


def test_sighup_is_logged_and_ignored(two: Harness) -> None:
    two.ready("a", "b")
    two.sup.on_signal(signal.SIGHUP)
    assert not two.sup.shutting_down
    assert two.logged("received SIGHUP")
    assert two.state("a") == "RUNNING"


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [
        ("never", 0, "EXITED"),
        ("never", 1, "EXITED"),
        ("on-failure", 0, "EXITED"),
        ("on-failure", 1, "BACKOFF"),
        ("on-failure", -9, "BACKOFF"),
        ("always", 0, "BACKOFF"),
    ],
)
def test_restart_policy(tmp_path: Path, policy: str, code: int, expected: str) -> None:
    harness = Harness(topology({"a": {"restart": policy}}, tmp_path)).start()
    harness.ready("a")
    harness.exit("a", code)
    assert harness.state("a") == expected
    harness.advance(5.0)
    assert harness.launches("a") == (1 if expected == "EXITED" else 2)


def test_operator_start_of_a_fatal_device_begins_with_a_fresh_budget(two: Harness) -> None:
    two.ready("a", "b")
    for _ in range(4):
        two.exit("a", 1)
        two.advance(1.0)
    assert two.state("a") == "FATAL"
    assert two.request("start", name="a")["ok"]
    two.ready("a")
    two.exit("a", 1)
    assert two.state("a") == "BACKOFF", "the old restart history was kept"
    assert two.child("a").retry_at == two.clock.now, "the old failure streak was kept"


def test_restart_of_a_running_device_stops_then_starts_it(two: Harness) -> None:
    two.ready("a", "b")
    old = two.process("a")
    two.request("restart", name="a")
    assert two.state("a") == "STOPPING"
    two.exit("a", 0)
    assert two.state("a") == "STARTING" and two.process("a") is not old


def test_refill_waits_until_nothing_is_starting(two: Harness) -> None:
    two.advance(0.5)
    assert two.launcher.refills == 0, "the pool competed with starting devices"
    two.ready("a", "b")
    two.advance(0.1)
    assert two.launcher.refills > 0


def test_commands_refuse_clearly(two: Harness) -> None:
    two.ready("a", "b")
    assert two.request("start", name="a")["code"] == ErrorCode.REFUSED.value
    unknown = two.request("stop", name="nope")
    assert unknown["code"] == ErrorCode.NO_SUCH_DEVICE.value and "devices: a, b" in unknown["error"]
    assert two.request("status", name=[1])["code"] == ErrorCode.BAD_REQUEST.value
    assert two.request("launch")["code"] == ErrorCode.UNKNOWN_COMMAND.value
    two.sup.begin_shutdown("test")
    assert two.request("restart", name="a")["code"] == ErrorCode.REFUSED.value


def test_pause_is_forwarded_and_answered_once_every_device_answered(two: Harness) -> None:
    two.ready("a", "b")
    replies: list[dict[str, object]] = []
    from procdevices.control.protocol import SupervisorCommand, SupervisorRequest

    two.handlers.handle(SupervisorRequest(SupervisorCommand.PAUSE, {}), replies.append)
    two.control("a").answer(Command.PAUSE, True, {"loop": "running", "paused": True})
    assert replies == []
    two.control("b").answer(Command.PAUSE, False, {"error": "no answer", "code": "timeout"})
    assert len(replies) == 1
    assert replies[0]["ok"] is False and replies[0]["error"] == "b: no answer"
    assert two.child("a").paused and not two.child("b").paused


def test_status_describes_every_field_of_the_schema(two: Harness) -> None:
    two.ready("a", "b")
    two.advance(2.0)
    two.process("a").zombie = True  # exited, not yet reaped: what psutil would say
    reply = two.request("status")
    device = reply["result"]["devices"][0]
    assert set(device) == {
        "name",
        "device",
        "kind",
        "state",
        "pid",
        "restarts",
        "uptime",
        "last_exit",
        "endpoints",
        "mq_loop",
        "paused",
        "blocked",
        "cpu_percent",
        "rss",
        "zombie",
        "traffic",
    }
    assert device["kind"] == "streamer" and device["state"] == "RUNNING"
    assert device["rss"] == 20 * 1024 * 1024 and device["cpu_percent"] == 1.25 and device["zombie"] is True
    assert device["uptime"] == 2.0
    assert reply["result"]["supervisor"]["pool_idle"] == 0


def test_a_failed_state_write_is_logged_once_and_retried(two: Harness) -> None:
    two.store.fail_with = OSError(28, "No space left on device")
    two.sup.flush()
    two.ready("a", "b")
    two.exit("a", 1)
    two.sup.flush()
    assert sum("supervising without it" in line for line in two.lines) == 1
    two.advance(0.0)
    assert two.state("a") == "STARTING", "supervision stopped on a full disk"
    two.store.fail_with = None
    two.clock.now += SPACING  # "a" is starting again: the write is gathered (statekeeper.py)
    two.sup.flush()
    assert two.logged("state file written again")
    assert set(two.store.written[-1]) == {"a", "b"}


def test_state_file_names_live_processes_with_their_identity(two: Harness) -> None:
    two.clock.now += SPACING  # the devices are starting: the write is gathered (statekeeper.py)
    two.sup.flush()
    record = two.store.written[-1]["a"]
    identity = {k: record.pop(k) for k in ("pid", "create_time", "control_endpoint", "device")}
    assert identity == {
        "pid": two.process("a").pid,
        "create_time": 1.5,
        "control_endpoint": "ipc://fake/a.sock",
        "device": "a",
    }
    # And what an adopter carries on with (supervisor/books.py): restarts, history, traffic.
    assert record["books"]["restarts"] == 0 and record["books"]["history"] == []
    assert set(record) == {"fingerprint", "books"}


def test_the_books_in_the_state_file_follow_restarts(two: Harness) -> None:
    two.ready("a", "b")
    two.exit("a", -signal.SIGKILL)
    two.advance(0.0)
    two.ready("a")
    two.sup.flush()
    books = two.store.written[-1]["a"]["books"]
    assert books["restarts"] == 1 and len(books["history"]) == 1
    assert books["ready_at"] is not None


def test_every_transition_and_decision_is_an_event(two: Harness) -> None:
    two.ready("a", "b")
    process = two.exit("a", -signal.SIGKILL)
    two.advance(0.0)
    two.ready("a")
    mine = [e for e in two.events if e.get("instance") == "a"]
    steps = [(e["type"], e.get("from"), e.get("to")) for e in mine]
    assert steps == [
        ("state", "STOPPED", "QUEUED"),
        ("state", "QUEUED", "STARTING"),
        ("state", "STARTING", "RUNNING"),
        ("state", "RUNNING", "BACKOFF"),
        ("decision", None, None),
        ("state", "BACKOFF", "QUEUED"),
        ("state", "QUEUED", "STARTING"),
        ("state", "STARTING", "RUNNING"),
    ]
    exit_event, decision = mine[3], mine[4]
    assert exit_event["pid"] == process.pid and "SIGKILL" in exit_event["reason"]
    assert decision["action"] == "restart" and decision["delay"] == 0.0 and decision["exit_code"] == -signal.SIGKILL
    assert all(isinstance(e["time"], float) and e["device"] == "a" for e in mine)


def test_giving_up_is_an_event(two: Harness) -> None:
    two.ready("a", "b")
    for _ in range(4):
        two.exit("a", 1)
        two.advance(1.0)
    assert [e["action"] for e in two.events if e["type"] == "decision"] == ["restart"] * 3 + ["give_up"]


def test_totals_read_on_the_probe_tick_survive_a_restart(two: Harness) -> None:
    two.ready("a", "b")
    counts = dict.fromkeys(
        [
            "front_msgs_in",
            "front_bytes_in",
            "front_msgs_out",
            "front_bytes_out",
            "back_msgs_in",
            "back_bytes_in",
            "back_msgs_out",
            "back_bytes_out",
        ],
        0,
    )
    two.ping_reply["a"] = {"loop": "running", "stats": {**counts, "front_msgs_in": 700}}
    two.advance(1.0)
    assert two.child("a").traffic.totals()["front_msgs_in"] == 700
    two.exit("a", -signal.SIGKILL)
    two.advance(0.0)
    two.ready("a")
    two.ping_reply["a"] = {"loop": "running", "stats": {**counts, "front_msgs_in": 5}}
    two.advance(1.0)
    assert two.child("a").traffic.totals()["front_msgs_in"] == 705


def test_a_wait_of_a_few_milliseconds_is_not_shown_as_blocked(two: Harness) -> None:
    two.ready("a", "b")
    two.ping_reply["a"] = {"loop": "blocked", "blocked_side": "out", "blocked_for": 0.06}
    two.advance(1.0)
    assert two.child("a").describe(two.clock.now)["blocked"] is None


# -- a big topology starts a few devices at a time ------------------------------------------------
@pytest.fixture
def five(tmp_path: Path) -> Harness:
    """Five devices, at most two of them starting at once."""
    return Harness(topology({name: {} for name in "abcde"}, tmp_path), max_starting=2).start()


def _launches(h: Harness) -> list[int]:
    return [h.launches(name) for name in "abcde"]


def test_only_max_starting_devices_are_spawned_at_once(five: Harness) -> None:
    assert _launches(five) == [1, 1, 0, 0, 0]
    assert [five.state(name) for name in "abcde"] == ["STARTING"] * 2 + ["QUEUED"] * 3
    assert five.child("c").pid is None
    five.ready("a")
    five.advance(0.0)
    assert _launches(five) == [1, 1, 1, 0, 0]
    five.ready("b", "c")
    five.advance(0.0)
    assert _launches(five) == [1, 1, 1, 1, 1]
    five.ready("d")
    assert five.notes == []
    five.ready("e")
    assert five.notes == ["READY=1\nSTATUS=5 devices running"]


def test_start_timeout_counts_from_the_spawn_not_from_the_wait(five: Harness) -> None:
    five.advance(9.0)  # a and b take 9 s of their 10 s; c, d, e wait meanwhile
    five.ready("a", "b")
    five.advance(0.0)
    five.advance(9.5)  # 18.5 s after `up`, but c and d were spawned 9.5 s ago
    assert five.state("c") == five.state("d") == "STARTING"
    assert not five.logged("not ready within start_timeout")
    five.advance(0.6)  # now c and d are late
    assert five.logged("c: not ready within start_timeout") and five.logged("d: not ready within start_timeout")
    assert five.launches("e") == 0
    five.exit("c", -9)
    five.exit("d", -9)
    five.advance(0.0)
    assert five.launches("e") == 1  # a slot they left is taken


def test_a_waiting_device_that_is_stopped_never_starts(five: Harness) -> None:
    five.sup.stop(five.child("e"))
    assert five.state("e") == "STOPPED"
    assert five.child("e").last_exit == "stopped before its process was started"
    five.ready("a", "b")
    five.advance(0.0)
    five.ready("c", "d")
    five.advance(5.0)
    assert _launches(five) == [1, 1, 1, 1, 0]
    five.sup.start(five.child("e"))
    assert five.launches("e") == 1


def test_shutdown_while_devices_wait_to_start(five: Harness) -> None:
    five.sup.begin_shutdown("test")
    assert [five.state(name) for name in "abcde"] == ["STOPPING", "STOPPING", "STOPPED", "STOPPED", "STOPPED"]
    five.exit("a", 0)
    five.exit("b", 0)
    five.advance(1.0)
    assert five.sup.finished()
    assert _launches(five) == [1, 1, 0, 0, 0]


def test_restart_of_a_waiting_device_keeps_its_turn(five: Harness) -> None:
    five.sup.restart(five.child("e"))
    assert five.state("e") == "QUEUED" and five.launches("e") == 0
    five.ready("a", "b")
    five.advance(0.0)
    five.ready("c", "d")
    five.advance(0.0)
    assert five.launches("e") == 1


def test_a_few_devices_are_spawned_per_turn_of_the_loop(tmp_path: Path) -> None:
    """Between batches the loop reads readiness reports and answers `status`."""
    names = [f"n{i}" for i in range(20)]
    h = Harness(topology({name: {} for name in names}, tmp_path), max_starting=100).start()
    assert len(h.launcher.launched) == 8
    assert h.sup.next_deadline(h.clock.now) == h.clock.now  # the next batch is due at once
    h.sup.tick(h.clock.now)
    assert len(h.launcher.launched) == 16
    h.sup.tick(h.clock.now)
    assert len(h.launcher.launched) == 20
    assert h.sup.next_deadline(h.clock.now) > h.clock.now


# -- two events at once (the fake harness's miss_probes, exit_mid_probe, shutdown_mid_restart) ----


def test_an_exit_while_a_probe_is_in_flight_is_an_exit_not_a_hang(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {"restart": "on-failure"}}, tmp_path)).start()
    harness.ready("a")
    harness.miss_probes("a", 1)  # one failure short of `probe.failures` (2)
    harness.advance(1.5)
    assert harness.child("a").probe.consecutive_failures == 1
    process = harness.exit_mid_probe("a", 0)
    assert process.signals == [], "a process that exited was killed as hung"
    assert not harness.logged("hung")
    assert harness.state("a") == "EXITED", "a clean exit under on-failure was restarted"
    harness.advance(5.0)
    assert harness.launches("a") == 1
