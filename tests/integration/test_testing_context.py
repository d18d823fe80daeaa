"""procdevices.testing without pytest's fixture: the ``topology()`` context manager, the
topology it actually runs, its helpers, its failures and its clean-up (including the watchdog
that cleans up after a test process that died)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from support.cli import Ctx, FileChanges, connect, expect_silence, push_pull, recv_within, request_reply, wait_for

from procdevices.testing import FAST_DEFAULTS, TopologyError, prepare_topology, topology

BROKER: dict[str, Any] = {
    "devices": {
        "broker": {
            "kind": "queue",
            "in": {"bind": ["tcp://127.0.0.1:*"]},
            "out": {"bind": ["ipc://{tmp}/workers.sock"]},
        }
    }
}


def session_of(pid: int) -> list[psutil.Process]:
    """Live processes whose session id is ``pid`` (found independently of the module)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == pid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def assert_gone(supervisor_pid: int, directory: Path, device_pids: list[int]) -> None:
    """No process of the run, no file of it: right now, not eventually."""
    assert not session_of(supervisor_pid), f"left running: {session_of(supervisor_pid)}"
    for pid in device_pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not directory.exists(), f"{directory} survived: {list(directory.rglob('*'))}"


# -- the file actually run ------------------------------------------------------------------------


def test_prepared_topology_is_private_fast_and_keeps_what_the_user_set(tmp_path: Path) -> None:
    private = Path("/tmp/pdt-x")
    text = textwrap.dedent("""\
        [supervisor]
        run_dir = "/var/run/shared"
        pool_size = 3

        [supervisor.defaults]
        probe = { interval = 0.5 }
        kill_timeout = 4.0

        [devices.stage]
        kind = "streamer"
        replicas = 2
        in = { bind = ["ipc://{tmp}/in-{replica}.sock"] }
        out = { bind = ["tcp://127.0.0.1:*"], connect = ["ipc://{tmp}/x.sock"] }
        """)
    data = tomllib.loads(prepare_topology(text, private))
    supervisor = data["supervisor"]
    assert supervisor["run_dir"] == "/tmp/pdt-x/run"  # overridden, always
    assert supervisor["pool_size"] == 3
    defaults = supervisor["defaults"]
    assert defaults["probe"] == {"interval": 0.5, "timeout": 1.0, "failures": 2}  # merged key by key
    assert defaults["kill_timeout"] == 4.0
    assert defaults["stop_timeout"] == FAST_DEFAULTS["stop_timeout"]
    stage = data["devices"]["stage"]
    assert stage["in"]["bind"] == ["ipc:///tmp/pdt-x/in-{replica}.sock"]  # {replica} left to the loader
    assert stage["out"] == {"bind": ["tcp://127.0.0.1:*"], "connect": ["ipc:///tmp/pdt-x/x.sock"]}

    minimal = tomllib.loads(prepare_topology(BROKER, private))
    assert minimal["supervisor"] == {"run_dir": "/tmp/pdt-x/run", "pool_size": 1, "defaults": dict(FAST_DEFAULTS)}
    assert BROKER["devices"]["broker"]["out"]["bind"] == ["ipc://{tmp}/workers.sock"], "the caller's dict changed"

    # Not TOML, or TOML no topology can hold: passed through untouched, for `up` to reject
    # with its own reason.
    assert prepare_topology("[devices\n", private) == "[devices\n"
    assert prepare_topology("when = 2024-01-01\n", private) == "when = 2024-01-01\n"


def test_dicts_become_toml_that_reads_back_identically() -> None:
    odd = {
        "devices": {
            "a-b_1": {
                "kind": "monitored_queue",
                "in_prefix": 'quote " backslash \\ tab \t nl \n del \x7f é 🙂',
                "out_prefix": "",
                "in": {"type": "router", "bind": ["tcp://127.0.0.1:*"], "sockopts": {"SNDHWM": 5, "IPV6": False}},
                "out": {"bind": ["tcp://127.0.0.1:*"], "sockopts": {}},
                "mon": {"bind": ["tcp://127.0.0.1:*"]},
                "backoff": {"initial": 0.25, "max": 1e3},
            }
        },
        "supervisor": {"run_dir": "x", "defaults": {"probe": {"failures": 5}}, "pool_size": 0},
        "with space": {"ü": [1, 2.5, True, "s", [], {"k": "v"}]},
    }
    read = tomllib.loads(prepare_topology(odd, Path("/tmp/pdt-y")))
    assert read["devices"] == odd["devices"]
    assert read["with space"] == odd["with space"]
    with pytest.raises(TypeError, match="cannot write"):
        prepare_topology({"devices": {"a": {"kind": object()}}}, Path("/tmp/pdt-y"))


def test_importing_procdevices_imports_neither_the_toolkit_nor_pytest() -> None:
    probe = (
        "import sys, procdevices, procdevices.cli; "
        "assert 'procdevices.testing' not in sys.modules, 'testing imported'; "
        "assert 'pytest' not in sys.modules, 'pytest imported'; "
        "import procdevices.testing; "
        "assert 'pytest' not in sys.modules and '_pytest' not in sys.modules, 'testing imports pytest'"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# -- running ----------------------------------------------------------------------------------------


def test_topology_runs_real_traffic_and_leaves_nothing(zmq_ctx: Ctx) -> None:
    text = textwrap.dedent("""\
        [devices.broker]
        kind = "queue"
        in = { bind = ["tcp://127.0.0.1:*"] }
        out = { bind = ["ipc://{tmp}/workers.sock"] }

        [devices.stage]
        kind = "streamer"
        replicas = 2
        in = { bind = ["ipc://stage-{replica}-in.sock"] }
        out = { bind = ["tcp://127.0.0.1:*"] }
        """)
    with topology(text) as topo:
        directory, supervisor = topo.directory, topo.supervisor_pid
        assert len(str(directory)) < 30 and directory.is_dir()
        devices = topo.devices()
        assert {name: d["state"] for name, d in devices.items()} == {
            "broker": "RUNNING",
            "stage.0": "RUNNING",
            "stage.1": "RUNNING",
        }
        assert topo.status()["supervisor"]["run_dir"] == str(directory / "run")

        endpoints = topo.endpoints
        front = topo.endpoint("broker")
        assert front == endpoints["broker"]["in"][0] and front.startswith("tcp://127.0.0.1:")
        assert not front.endswith(":*")
        assert topo.endpoint("broker", "out") == f"ipc://{directory}/workers.sock"
        assert endpoints["stage"]["in"] == [f"ipc://{directory}/stage-0-in.sock", f"ipc://{directory}/stage-1-in.sock"]
        assert endpoints["stage"]["out"] == endpoints["stage.0"]["out"] + endpoints["stage.1"]["out"]

        request_reply(zmq_ctx, front, topo.endpoint("broker", "out"))
        push_pull(zmq_ctx, topo.endpoint("stage.1"), topo.endpoint("stage.1", "out"), [b"a", b"b", b"c"])
        assert topo.stats("broker")["front_msgs_in"] >= 3  # routing envelope + empty frame + body
        assert topo.stats("stage.1")["back_msgs_out"] == 3
        assert topo.stats("stage")["back_msgs_out"] == 3  # summed over the replicas

        pids = [d["pid"] for d in devices.values()]
        with pytest.raises(TopologyError, match=r"stage runs 2 processes \(stage.0, stage.1\): name one"):
            topo.pid("stage")
        with pytest.raises(TopologyError, match=r"no device named 'nosuch' \(devices: broker, stage.0, stage.1\)"):
            topo.wait_state("nosuch", "RUNNING")
    assert_gone(supervisor, directory, pids)
    assert topo.returncode == 0
    assert topo.leftovers() == []
    assert "broker: STOPPED (stopped through the control socket)" in topo.log  # the log outlives the directory


def test_helpers_drive_the_devices(zmq_ctx: Ctx) -> None:
    with topology(BROKER) as topo:
        # kill: returns once the supervisor noticed; the restart binds port * anew.
        before = topo.pid("broker")
        topo.kill("broker")
        assert not psutil.pid_exists(before) or psutil.Process(before).status() == psutil.STATUS_ZOMBIE
        entry = topo.wait_state("broker", "RUNNING")["broker"]
        assert entry["pid"] != before and entry["restarts"] == 1
        assert "killed by signal 9" in entry["last_exit"]
        assert topo.endpoint("broker") == entry["endpoints"]["in"][0]  # the new process's, not a stale one
        request_reply(zmq_ctx, topo.endpoint("broker"), topo.endpoint("broker", "out"))

        # pause: nothing flows; resume: the queued request comes through.
        worker = connect(zmq_ctx, zmq.REP, topo.endpoint("broker", "out"))
        client = connect(zmq_ctx, zmq.REQ, topo.endpoint("broker"))
        topo.pause("broker")
        assert topo.device("broker")["paused"] is True
        client.send(b"held")
        expect_silence(worker, "the broker is paused")
        topo.resume("broker")
        assert recv_within(worker, "the request held while paused") == [b"held"]
        worker.send(b"ok")
        assert recv_within(client, "the reply after resume") == [b"ok"]

        # stop / start / restart wait for the outcome.
        topo.stop("broker")
        assert topo.device("broker")["state"] == "STOPPED"
        assert topo.endpoints["broker"] == {}  # not the addresses of the process that is gone
        with pytest.raises(TopologyError, match=r"broker has no bound 'in' endpoint \(bound: \{\}; broker STOPPED\)"):
            topo.endpoint("broker")
        with pytest.raises(TopologyError, match="has no process"):
            topo.pid("broker")
        topo.start("broker")
        running = topo.pid("broker")
        topo.restart("broker")
        assert topo.pid("broker") not in (running, None)
        assert topo.device("broker")["restarts"] == 1  # operator commands do not count

        # A command that fails says why, with the CLI's own message.
        with pytest.raises(TopologyError, match="already running: broker"):
            topo.start("broker")
        # A wait that times out names what it awaited and what it saw.
        with pytest.raises(
            TopologyError,
            match=r"timed out after 0.3s waiting for broker to be STOPPED; "
            r"last seen: broker RUNNING",
        ):
            topo.wait_state("broker", "STOPPED", timeout=0.3)
        with pytest.raises(ValueError, match="unknown state 'RUNING'"):
            topo.wait_state("broker", "RUNING")
        with pytest.raises(ValueError, match="unknown state 'FATL'"):
            topology(BROKER, states={"broker": "FATL"})
        assert "broker: BACKOFF (was killed by signal 9" in topo.log


def test_an_exception_in_the_block_still_cleans_up() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), topology(BROKER) as topo:
        pids = [topo.pid("broker")]
        raise RuntimeError("the test failed")
    assert_gone(topo.supervisor_pid, topo.directory, pids)


class Interrupted(Exception):
    """Stands for pytest-timeout's Failed or a KeyboardInterrupt arriving during clean-up."""


def test_a_clean_up_interrupted_half_way_is_finished_by_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    topo = topology(BROKER).up()
    pids = [topo.pid("broker")]
    run = subprocess.run

    def interrupted_down(args: list[str], *more: Any, **options: Any) -> Any:
        if "down" in args:
            raise Interrupted()
        return run(args, *more, **options)

    monkeypatch.setattr(subprocess, "run", interrupted_down)
    with pytest.raises(Interrupted):
        topo.close()
    assert_gone(topo.supervisor_pid, topo.directory, pids)
    assert topo.returncode == 0  # SIGTERM from the watchdog: a clean stop through the control sockets
    assert "broker: STOPPED (stopped through the control socket)" in topo.log


# -- not coming up ------------------------------------------------------------------------------


def test_an_invalid_topology_fails_with_the_one_line_reason() -> None:
    bad = {"devices": {"broker": {**BROKER["devices"]["broker"], "kind": "quoue"}}}
    with pytest.raises(TopologyError) as failure:
        topology(bad).__enter__()
    error = failure.value
    assert error.reason.startswith("procdevices: invalid configuration: /tmp/pdt-")
    assert error.reason.endswith(
        "devices.broker.kind: unknown kind 'quoue': expected one of queue, forwarder, "
        "streamer, proxy, steerable, monitored_queue; did you mean 'queue'?"
    )
    assert "\n" not in error.reason
    assert error.reason in error.log and error.log in str(error)
    directory = Path(error.reason.split(": ")[2]).parent
    assert not directory.exists()


def test_a_start_that_times_out_names_what_it_awaited_and_stops_the_supervisor() -> None:
    topo = topology(BROKER, timeout=0.01)
    with pytest.raises(TopologyError) as failure:
        topo.up()
    assert failure.value.reason == (
        "timed out after 0.01s waiting for every device to be RUNNING; last seen: no answer from the supervisor yet"
    )
    assert_gone(topo.supervisor_pid, topo.directory, [])
    assert topo.returncode is not None


def test_a_device_that_cannot_bind_fails_with_its_last_exit() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        topo = topology(
            {
                "devices": {
                    "ok": BROKER["devices"]["broker"],
                    "blocked": {
                        "kind": "streamer",
                        "in": {"bind": [f"tcp://127.0.0.1:{port}"]},
                        "out": {"bind": ["tcp://127.0.0.1:*"]},
                    },
                }
            }
        )
        with pytest.raises(TopologyError) as failure:
            topo.up()
    reason = failure.value.reason
    assert reason.startswith(
        f"device blocked is FATAL: could not start: in socket: bind to tcp://127.0.0.1:{port} "
        "failed: Address already in use"
    ), reason
    assert reason.endswith("(while waiting for every device to be RUNNING)")
    assert "blocked: FATAL" in failure.value.log
    assert_gone(topo.supervisor_pid, topo.directory, [])
    assert topo.returncode == 3  # up's exit code: a device was FATAL when it stopped


# -- the watchdog -------------------------------------------------------------------------------


def test_the_watchdog_cleans_up_after_a_test_process_that_died() -> None:
    script = textwrap.dedent("""\
        import os, signal, sys
        from procdevices.testing import topology
        topo = topology({"devices": {"pipe": {"kind": "streamer", "in": {"bind": ["ipc://{tmp}/in.sock"]},
                                              "out": {"bind": ["tcp://127.0.0.1:*"]}}}}).up()
        print(topo.supervisor_pid, topo.pid("pipe"), topo.directory, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr
    supervisor, device, directory = result.stdout.split()
    try:
        # The directory goes last, once the processes are gone.
        with FileChanges(Path(directory).parent) as removed:
            wait_for(
                lambda: not session_of(int(supervisor)) and not Path(directory).exists(),
                20.0,
                "the watchdog to stop the orphaned topology and remove its directory",
                wake=removed,
                detail=lambda: f"left: {session_of(int(supervisor))}, directory exists: {Path(directory).exists()}",
            )
        assert not psutil.pid_exists(int(device)) or psutil.Process(int(device)).status() == psutil.STATUS_ZOMBIE
    finally:
        # Should the watchdog fail, the next tests must not inherit its topology.
        for proc in session_of(int(supervisor)):
            proc.kill()
        shutil.rmtree(directory, ignore_errors=True)
