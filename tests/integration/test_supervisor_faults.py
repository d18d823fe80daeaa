"""What the supervisor does when things go wrong: devices killed, hung, crash-looping or unable
to bind, and the supervisor itself signalled or killed. The real CLI, real processes."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from support.cli import (
    Up,
    describe,
    finish_cli,
    free_tcp_port,
    identify,
    is_gone,
    processes_exit,
    push_pull,
    request_reply,
    wait_for,
    write_topology,
)
from support.topologies import NEIGHBOURS

Ctx = zmq.Context[zmq.Socket[bytes]]


def broker_forwards(ctx: Ctx, tmp: Path) -> None:
    request_reply(ctx, f"ipc://{tmp}/broker-in.sock", f"ipc://{tmp}/broker-out.sock")


def pipe_forwards(ctx: Ctx, tmp: Path, payload: bytes = b"work") -> None:
    push_pull(ctx, f"ipc://{tmp}/pipe-in.sock", f"ipc://{tmp}/pipe-out.sock", [payload])


def replaced(name: str, old_pid: int, restarts: int) -> Callable[[dict[str, dict[str, Any]]], bool]:
    """A wait_states check: ``name`` runs as a new process after ``restarts`` restarts."""

    def check(devices: dict[str, dict[str, Any]]) -> bool:
        d = devices[name]
        return d["pid"] not in (None, old_pid) and d["restarts"] == restarts

    return check


@pytest.mark.timeout(90)
def test_killed_and_hung_devices_are_replaced(short_tmp: Path, zmq_ctx: Ctx) -> None:
    """kill -9 of one device and SIGSTOP of another: both come back as new processes, counted
    in `restarts`, forwarding again; the hung one is found by the liveness probe."""
    config = write_topology(short_tmp, NEIGHBOURS)
    with Up(config) as up:
        devices = up.wait_states()
        broker_forwards(zmq_ctx, short_tmp)
        pipe_forwards(zmq_ctx, short_tmp)
        killed, hung = devices["broker"]["pid"], devices["pipe"]["pid"]
        killed_proc, hung_proc = psutil.Process(killed), psutil.Process(hung)

        try:
            # -- kill -9: the exit is seen at once (process sentinel), the device restarted
            killed_proc.send_signal(signal.SIGKILL)
            devices = up.wait_states(
                check=replaced("broker", killed, 1), timeout=15, what="broker to be restarted after kill -9"
            )
            assert "SIGKILL" in devices["broker"]["last_exit"], devices["broker"]
            broker_forwards(zmq_ctx, short_tmp)

            # -- SIGSTOP: alive but silent; probes (0.2 s, 2 failures) declare it hung, kill it
            hung_proc.send_signal(signal.SIGSTOP)
            devices = up.wait_states(
                check=replaced("pipe", hung, 1), timeout=15, what="the stopped pipe to be found hung and replaced"
            )
            assert "hung" in devices["pipe"]["last_exit"], devices["pipe"]
            wait_for(
                lambda: is_gone(hung_proc),
                5,
                "the hung process to be killed and reaped",
                wake=processes_exit(lambda: [hung_proc]),
            )
            pipe_forwards(zmq_ctx, short_tmp)
        finally:
            # If the supervisor did not kill it, don't leave it stopped (Up.close kills it).
            with contextlib.suppress(psutil.NoSuchProcess):
                hung_proc.send_signal(signal.SIGCONT)

        # the other device was not disturbed by either replacement
        assert devices["broker"]["restarts"] == 1 and "hung" not in devices["broker"]["last_exit"]
        broker_forwards(zmq_ctx, short_tmp)
        log = up.log()
        assert f"pipe: hung: 2 liveness probes unanswered; killing pid {hung}" in log, up.log_tail()


@pytest.mark.timeout(90)
def test_a_device_that_cannot_bind_is_fatal_at_once_and_the_others_keep_forwarding(
    short_tmp: Path, zmq_ctx: Ctx
) -> None:
    # The config loader rejects duplicate binds, so the conflict comes from outside: the test
    # holds a listening socket on a port the OS picked.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = write_topology(
            short_tmp,
            NEIGHBOURS
            + f"""
[devices.blocked]
kind = "streamer"
in  = {{ bind = ["tcp://127.0.0.1:{port}"] }}
out = {{ bind = ["tcp://127.0.0.1:*"] }}
""",
        )
        with Up(config) as up:
            devices = up.wait_states({"blocked": "FATAL"})
            blocked = devices["blocked"]
            assert "Address already in use" in blocked["last_exit"], blocked
            assert f"127.0.0.1:{port}" in blocked["last_exit"], blocked
            assert blocked["pid"] is None and blocked["restarts"] == 0, blocked
            # the neighbours run and forward
            broker_forwards(zmq_ctx, short_tmp)
            pipe_forwards(zmq_ctx, short_tmp)

            # status says so: exit 3, in both forms
            for args in (["status"], ["status", "--json"]):
                status = up.cli(*args)
                assert status.returncode == 3, describe(status)
            assert "FATAL" in status.stdout
            text = up.cli("status", "blocked")
            assert text.returncode == 3 and "Address already in use" in text.stdout, describe(text)
            # a start that cannot succeed is not retried: one attempt in the log
            assert up.log().count("blocked: could not start") == 1, up.log_tail()
            assert up.devices()["blocked"]["state"] == "FATAL"

            # `up` reports the FATAL device in its exit code when it stops (EXIT_FATAL)
            up.signal(signal.SIGTERM)
            assert up.wait_exit() == 3, up.log_tail()
            assert "stopped; FATAL: blocked" in up.log(), up.log_tail()
            up.assert_clean_stop(["broker", "pipe"])


@pytest.mark.timeout(90)
def test_a_crash_loop_ends_fatal_after_the_restart_intensity(short_tmp: Path, zmq_ctx: Ctx) -> None:
    """intensity { max_restarts = 2, within = 30 }: two kills are restarted, the third is
    one too many; the neighbour keeps forwarding; an operator `start` revives the device."""
    config = write_topology(
        short_tmp,
        NEIGHBOURS
        + """
[devices.crashy]
kind = "streamer"
in  = { bind = ["ipc://crashy-in.sock"] }
out = { bind = ["ipc://crashy-out.sock"] }
intensity = { max_restarts = 2, within = 30 }
""",
    )
    with Up(config) as up:
        devices = up.wait_states()
        for kill in (1, 2):
            pid = devices["crashy"]["pid"]
            psutil.Process(pid).kill()
            devices = up.wait_states(
                check=replaced("crashy", pid, kill), timeout=15, what=f"crashy to be restarted after kill {kill}"
            )
            assert f"restart {kill} of 2 allowed in 30s" in devices["crashy"]["last_exit"], devices["crashy"]

        psutil.Process(devices["crashy"]["pid"]).kill()
        devices = up.wait_states({"crashy": "FATAL"}, timeout=15)
        crashy = devices["crashy"]
        assert crashy["last_exit"] == "gave up: 3 restarts within 30s (limit 2)", crashy
        assert crashy["pid"] is None and crashy["restarts"] == 2, crashy
        status = up.cli("status")
        assert status.returncode == 3, describe(status)
        # the neighbours were never touched
        assert devices["pipe"]["restarts"] == devices["broker"]["restarts"] == 0
        pipe_forwards(zmq_ctx, short_tmp)
        broker_forwards(zmq_ctx, short_tmp)

        # FATAL is not final for an operator: `start` gives it a fresh restart budget
        started = up.cli("start", "crashy")
        assert started.returncode == 0 and "crashy: RUNNING" in started.stdout, describe(started)
        push_pull(zmq_ctx, f"ipc://{short_tmp}/crashy-in.sock", f"ipc://{short_tmp}/crashy-out.sock", [b"back"])
        assert up.cli("status").returncode == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT to the process group"])
def test_a_signalled_supervisor_stops_every_device_through_its_control_socket(
    how: str, short_tmp: Path, zmq_ctx: Ctx
) -> None:
    # SIGINT goes to the whole group, as Ctrl-C in a terminal does: devices must ignore it and
    # wait for their supervisor's stop; so must the pool worker, even one still starting up
    # (tests/integration/test_ctrl_c_startup.py covers the moments of start-up).
    config = write_topology(short_tmp, NEIGHBOURS, pool_size=1)
    with Up(config) as up:
        up.wait_states()
        broker_forwards(zmq_ctx, short_tmp)
        if how == "SIGTERM":
            up.signal(signal.SIGTERM)
        else:
            up.signal(signal.SIGINT, group=True)
        assert up.wait_exit() == 0, up.log_tail()
        signame = how.split()[0]
        assert f"stopping every device (received {signame})" in up.log(), up.log_tail()
        up.assert_clean_stop(["broker", "pipe"])


@pytest.mark.timeout(90)
def test_a_killed_supervisor_leaves_no_device_and_the_next_up_starts_cleanly(short_tmp: Path, zmq_ctx: Ctx) -> None:
    # A fixed tcp port: a device surviving its supervisor would keep it and make the next
    # `up` fail with "Address already in use" (an ipc bind would silently take over instead).
    port = free_tcp_port()
    config = write_topology(
        short_tmp,
        f"""
[devices.broker]
kind = "queue"
in  = {{ bind = ["tcp://127.0.0.1:{port}"] }}
out = {{ bind = ["ipc://broker-out.sock"] }}

[devices.pipe]
kind = "streamer"
in  = {{ bind = ["ipc://pipe-in.sock"] }}
out = {{ bind = ["ipc://pipe-out.sock"] }}
""",
    )
    front, back = f"tcp://127.0.0.1:{port}", f"ipc://{short_tmp}/broker-out.sock"
    with Up(config, label="first") as first:
        devices = first.wait_states()
        request_reply(zmq_ctx, front, back)
        procs = [psutil.Process(d["pid"]) for d in devices.values()]

        first.signal(signal.SIGKILL)
        assert first.wait_exit() == -signal.SIGKILL
        # Its control socket file is left behind: a command waits for an answer (5 s), then
        # says that nobody answered. Runs while the devices wind down.
        status_command = first.start_cli("status")
        try:
            # The devices watch their parent and stop on their own...
            wait_for(
                lambda: all(is_gone(p) for p in procs),
                2.5,
                "the devices of the killed supervisor to exit",
                wake=processes_exit(lambda: procs),
                detail=first.describe_leftovers,
            )
            # ...and so does everything else it started (pool worker, resource tracker).
            first.assert_nothing_left(timeout=3.0)
        finally:
            status = finish_cli(status_command)
        assert status.returncode == 4, describe(status)
        assert "no supervisor answered" in status.stderr, describe(status)

    with Up(config, label="second") as second:
        second.wait_states()
        log = second.log()
        assert "Address already in use" not in log, second.log_tail()
        assert "removed stale socket file" in log and "supervisor.sock" in log, second.log_tail()
        request_reply(zmq_ctx, front, back)
        pipe_forwards(zmq_ctx, short_tmp)


@pytest.mark.timeout(60)
def test_up_refuses_a_second_supervisor_on_the_same_run_dir_even_during_start(short_tmp: Path) -> None:
    """Covered while running in test_supervisor_cli; here: the lock is taken before anything is
    started, so two `up` launched together never both run."""
    config = write_topology(short_tmp, NEIGHBOURS, pool_size=0)
    with Up(config, label="a") as a, Up(config, label="b") as b:
        wait_for(
            lambda: not (a.running() and b.running()),
            20,
            "one of two racing `up` to give up",
            wake=processes_exit(lambda: [p for p in (a.me, b.me) if p is not None]),
        )
        loser, winner = (a, b) if not a.running() else (b, a)
        assert loser.wait_exit() == 4, loser.log()
        assert "another procdevices supervisor (pid " in loser.log(), loser.log()
        # The winner writes its pid into the lock file as soon as it holds the lock.
        assert f"(pid {winner.pid})" in loser.log(), loser.log()
        winner.wait_states()
        assert identify(winner.pid) is not None
