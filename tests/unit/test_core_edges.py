"""Edges of core.py's verbs that the histories pass by: refusals and their codes, readiness
announced exactly once, what an exit cleans up (watches, pending requests, state.json), a
report and an exit in one wake-up, and the start timeout at its boundary. Each test here was
written against a mutant that survived scripts/mutation.sh."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from support.fakes import Harness, make_child, topology

from procdevices.control.protocol import Command, ErrorCode, ProtocolError
from procdevices.errors import DeviceSetupError
from procdevices.supervisor.config import Topology


@pytest.fixture
def two(tmp_path: Path) -> Harness:
    return Harness(topology({"a": {}, "b": {}}, tmp_path)).start()


def test_asking_a_device_that_never_connected_answers_not_connected(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {}}, tmp_path))
    harness.launcher.fail_with = OSError(24, "Too many open files")
    harness.start()
    assert harness.child("a").last_exit == "could not spawn a process: [Errno 24] Too many open files"
    answers: list[tuple[Any, bool, Any]] = []
    harness.sup.ask(harness.child("a"), Command.PING, 1.0, lambda child, ok, body: answers.append((child, ok, body)))
    assert answers == [(harness.child("a"), False, {"error": "not connected", "code": ErrorCode.NOT_RUNNING.value})]


def test_each_launch_carries_the_device_and_its_control_endpoint(two: Harness) -> None:
    assert two.launcher.jobs == [(b"", "ipc://fake/a.sock", "a"), (b"", "ipc://fake/b.sock", "b")]


def test_reload_and_scale_are_refused_with_their_codes(tmp_path: Path, two: Harness) -> None:
    with pytest.raises(ProtocolError) as caught:
        two.sup.reload(None)  # this harness has no file to read
    assert (caught.value.code, caught.value.message) == (ErrorCode.REFUSED, "this supervisor cannot reload")
    files: list[str | None] = []
    topo = topology({"a": {}}, tmp_path)

    def load(path: str | None) -> Topology:
        files.append(path)
        return topo

    harness = Harness(topo, load=load).start()
    harness.request("reload", config="/srv/other.toml")
    assert files == ["/srv/other.toml"]
    harness.sup.on_signal(signal.SIGTERM)
    with pytest.raises(ProtocolError) as caught:
        harness.sup.reload(None)
    assert caught.value.code is ErrorCode.REFUSED
    with pytest.raises(ProtocolError) as caught:
        harness.sup.scale("a", 2)
    assert caught.value.code is ErrorCode.REFUSED
    assert harness.request("reload")["error"] == "the supervisor is shutting down"
    assert harness.request("scale", name="a", replicas=2)["error"] == "this supervisor cannot scale now"


def test_a_metrics_change_is_reported_not_applied_and_the_new_file_is_the_reference(tmp_path: Path) -> None:
    binds = {
        "in": {"bind": [f"ipc://{tmp_path}/p{{replica}}-in"]},
        "out": {"bind": [f"ipc://{tmp_path}/p{{replica}}-out"]},
    }
    first = topology({"pipe": binds, "other": {}}, tmp_path)
    second = topology({"pipe": {"replicas": 2, **binds}, "other": {}}, tmp_path)
    second = second._replace(supervisor=second.supervisor._replace(metrics="127.0.0.1:0"))
    files = [first]
    harness = Harness(first, load=lambda path: files[0]).start()
    files[0] = second
    summary = harness.request("reload")["result"]
    assert summary["not_applied"] == ["metrics"]
    assert harness.logged("reload: [supervisor] metrics changes take effect at the next `up`")
    assert harness.sup.topology is second
    assert harness.request("status")["result"]["supervisor"]["scaled"] == {}
    harness.request("scale", name="pipe", replicas=3)
    assert harness.request("status")["result"]["supervisor"]["scaled"] == {"pipe": {"file": 2, "running": 3}}


def test_selecting_by_device_name_takes_every_replica(tmp_path: Path) -> None:
    binds = {
        "in": {"bind": [f"ipc://{tmp_path}/p{{replica}}-in"]},
        "out": {"bind": [f"ipc://{tmp_path}/p{{replica}}-out"]},
    }
    harness = Harness(topology({"pipe": {"replicas": 2, **binds}, "x": {}}, tmp_path)).start()
    assert [c.name for c in harness.sup.select("pipe")] == ["pipe.0", "pipe.1"]
    assert [c.name for c in harness.sup.select("pipe.1")] == ["pipe.1"]


def test_readiness_is_announced_once(two: Harness) -> None:
    two.ready("a", "b")
    two.exit("a", 1)
    two.advance(0.0)
    two.ready("a")
    assert [n for n in two.notes if n.startswith("READY=1")] == ["READY=1\nSTATUS=2 devices running"]


def test_readiness_counts_a_device_that_gave_up_before_it_was_ever_ready(two: Harness) -> None:
    two.ready("a")
    for _ in range(4):
        two.exit("b", 1)  # never ready: each exit is a failure
        two.advance(1.0)
    assert two.state("b") == "FATAL"
    assert two.notes == ["READY=1\nSTATUS=1 devices running"]


def test_an_exit_cleans_up_its_watches_and_answers_pending_requests_at_once(two: Harness) -> None:
    two.ready("a", "b")
    process = two.process("a")
    assert process.report_fd is None and process.sentinel in two.watcher.watches
    assert not any(fd in two.watcher.watches for fd in (None,))
    reply: list[dict[str, Any]] = []
    two.handlers.handle(_request("stats", name="a"), reply.append)
    assert reply == []  # waiting for the device
    two.exit("a", 1)
    assert process.sentinel not in two.watcher.watches
    assert reply and reply[0]["ok"] is False and "the device exited" in reply[0]["error"]


def _request(command: str, **args: Any) -> Any:
    from procdevices.control.protocol import encode, parse_supervisor_request

    return parse_supervisor_request(encode({"command": command, "args": args}))


def test_a_ready_report_is_unwatched_and_logged_with_its_endpoints(two: Harness) -> None:
    report_fd = two.process("a").report_fd
    two.ready("a")
    assert report_fd not in two.watcher.watches
    assert two.logged(f"a: RUNNING (pid {two.process('a').pid}) in=ipc://in out=ipc://out")


def test_a_setup_error_and_the_exit_in_one_wake_up(two: Harness) -> None:
    process = two.process("a")
    process.report = DeviceSetupError("in", "bind", "tcp://127.0.0.1:1", "Address already in use", 98)
    report_fd = process.report_fd
    two.exit("a", 1)  # the sentinel fires first; the report waits in the pipe
    assert two.state("a") == "FATAL" and "Address already in use" in two.child("a").last_exit
    assert report_fd not in two.watcher.watches and process.sentinel not in two.watcher.watches
    two.advance(5.0)
    assert two.launches("a") == 1


def test_state_json_is_written_first_then_after_each_exit_and_removal(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {}, "b": {}}, tmp_path))
    harness.sup.flush()
    assert harness.store.written == [{}]  # behind from the start: written once
    harness.sup.flush()
    assert len(harness.store.written) == 1, "written again with nothing new"
    harness.start()
    harness.sup.flush()
    harness.ready("a", "b")
    harness.exit("a", 1)
    harness.sup.flush()
    assert set(harness.store.written[-1]) == {"b"}
    count = len(harness.store.written)
    harness.sup.flush()
    assert len(harness.store.written) == count
    harness.sup.roster.retire(harness.child("a"))  # no process (BACKOFF): removed at once
    harness.sup.flush()
    assert len(harness.store.written) == count + 1


def test_an_operator_stop_of_a_device_without_a_process_settles_it(two: Harness) -> None:
    two.ready("a")
    two.report_error("b", DeviceSetupError("in", "bind", "x", "nope"))
    two.exit("b", 1)
    assert two.state("b") == "FATAL"
    two.sup.stop(two.child("b"))  # an operator's stop clears FATAL
    assert two.state("b") == "STOPPED"
    two.exit("a", 1)  # BACKOFF, a retry due
    two.sup.stop(two.child("a"))
    assert two.state("a") == "STOPPED" and two.child("a").retry_at is None
    two.advance(5.0)
    assert two.launches("a") == 1


def test_restart_of_a_stopped_device_starts_it(two: Harness) -> None:
    two.ready("a", "b")
    two.request("stop", name="a")
    two.exit("a", 0)
    two.sup.restart(two.child("a"))
    assert two.state("a") == "STARTING" and two.launches("a") == 2


def test_a_device_is_killed_as_unhealthy_once(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {"memory_limit": "64MiB"}}, tmp_path)).start()
    harness.ready("a")
    harness.process("a").rss_bytes = 65 * 1024 * 1024
    harness.advance(3.0)  # three probe slots before the process is reaped
    assert harness.process("a").signals == ["SIGKILL"]


def test_the_start_timeout_at_its_boundary(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {}}, tmp_path)).start()
    spawned = harness.child("a").spawned_at
    harness.clock.now = spawned + 10.0
    harness.sup.tick(harness.clock.now)
    assert harness.process("a").signals == [], "killed at exactly start_timeout"
    harness.clock.now = spawned + 10.001
    harness.sup.tick(harness.clock.now)
    assert harness.process("a").signals == ["SIGKILL"]


def test_an_idle_supervisor_wakes_once_a_second(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {}}, tmp_path))
    harness.launcher.fail_with = OSError(24, "Too many open files")
    harness.start()  # FATAL: nothing is due
    assert harness.sup.next_deadline(5000.0) == 5001.0


def test_the_supervisor_is_not_finished_while_a_fatal_process_is_unreaped(two: Harness) -> None:
    two.ready("a")
    two.report_error("b", DeviceSetupError("in", "bind", "x", "nope"))
    two.sup.on_signal(signal.SIGTERM)
    two.exit("a", 0)
    assert not two.sup.finished(), "finished with a process still to reap"
    two.exit("b", 1)
    assert two.sup.finished()


def test_status_shows_the_supervisors_uptime_to_the_millisecond(two: Harness) -> None:
    two.clock.now += 1.23456
    assert two.request("status")["result"]["supervisor"]["uptime"] == 1.235


def test_an_adopted_device_publishes_its_transitions(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {}}, tmp_path)).start()
    (instance,) = topology({"b": {}}, tmp_path).instances()
    harness.sup.roster.add(make_child(instance, "b"))
    assert [(e["instance"], e["to"]) for e in harness.events if e["type"] == "state"][-1] == ("b", "STARTING")


def test_max_starting_is_a_bound_not_one_more(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {}, "b": {}, "c": {}}, tmp_path), max_starting=2).start()
    assert harness.launches("c") == 0
    assert harness.sup.next_deadline(harness.clock.now) > harness.clock.now, "woken at once with no room to start"
