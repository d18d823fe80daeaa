"""`python -m procdevices up` and the commands that talk to it, end to end: the real CLI in
subprocesses, real device processes, real traffic through them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psutil
import pytest
import zmq
from support.cli import (
    Up,
    accepts_connections,
    cli,
    connect,
    describe,
    expect_silence,
    is_gone,
    publish_until_received,
    push_pull,
    recv_within,
    request_reply,
    request_reply_monitored,
    write_topology,
)

STATUS_FIELDS = {"name", "state", "pid", "restarts", "uptime", "last_exit"}

FOUR_KINDS = """\
[devices.broker]
kind = "queue"
in  = { bind = ["ipc://broker-in.sock"] }
out = { bind = ["ipc://broker-out.sock"] }

[devices.hub]
kind = "forwarder"
in  = { bind = ["tcp://127.0.0.1:*"] }
out = { bind = ["tcp://127.0.0.1:*"] }

[devices.pipe]
kind = "streamer"
replicas = 2
in  = { bind = ["ipc://pipe-{replica}-in.sock"] }
out = { bind = ["ipc://pipe-{replica}-out.sock"] }

[devices.audited]
kind = "monitored_queue"
in  = { bind = ["ipc://audited-in.sock"] }
out = { bind = ["ipc://audited-out.sock"] }
mon = { bind = ["tcp://127.0.0.1:*"] }
"""


@pytest.mark.timeout(90)
def test_every_kind_forwards_status_describes_each_process_and_down_stops_all(
    short_tmp: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config = write_topology(short_tmp, FOUR_KINDS)
    with Up(config) as up:
        devices = up.wait_states()
        names = ["broker", "hub", "pipe.0", "pipe.1", "audited"]
        assert list(devices) == names, "one status entry per process, in topology order"

        # -- status --json: the fields scripts rely on, and real processes behind them
        supervisor = up.status()["supervisor"]
        assert supervisor["pid"] == up.pid
        assert supervisor["run_dir"] == str(short_tmp / "run")
        for name, d in devices.items():
            assert STATUS_FIELDS <= d.keys(), f"{name}: missing {STATUS_FIELDS - d.keys()}"
            assert d["state"] == "RUNNING" and d["restarts"] == 0 and d["last_exit"] is None, d
            assert isinstance(d["uptime"], float) and d["uptime"] >= 0, d
            device_process = psutil.Process(d["pid"])
            assert device_process.ppid() == up.pid, f"{name} is not a child of the supervisor"
        # replicas = 2: two processes of one device, each with its own endpoints
        assert devices["pipe.0"]["device"] == devices["pipe.1"]["device"] == "pipe"
        assert devices["pipe.0"]["pid"] != devices["pipe.1"]["pid"]
        assert devices["pipe.0"]["endpoints"]["in"] == [f"ipc://{short_tmp}/pipe-0-in.sock"]
        assert devices["pipe.1"]["endpoints"]["in"] == [f"ipc://{short_tmp}/pipe-1-in.sock"]
        # port * is reported resolved
        hub = devices["hub"]["endpoints"]
        assert all(re.fullmatch(r"tcp://127\.0\.0\.1:\d+", e) for e in hub["in"] + hub["out"]), hub

        # -- every device forwards
        ep = {name: d["endpoints"] for name, d in devices.items()}
        request_reply(zmq_ctx, ep["broker"]["in"][0], ep["broker"]["out"][0])
        publish_until_received(zmq_ctx, ep["hub"]["in"][0], ep["hub"]["out"][0])
        for replica in ("pipe.0", "pipe.1"):
            push_pull(zmq_ctx, ep[replica]["in"][0], ep[replica]["out"][0], [replica.encode(), b"2", b"3"])
        copy = request_reply_monitored(
            zmq_ctx, ep["audited"]["in"][0], ep["audited"]["out"][0], ep["audited"]["mon"][0], b"watched"
        )
        assert copy[0] in (b"in", b"out") and copy[-1] == b"watched", copy

        # -- the text form: a header, then per process a line and its resolved endpoints
        text = up.cli("status")
        assert text.returncode == 0, describe(text)
        lines = text.stdout.splitlines()
        assert lines[0].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST", "EXIT"]
        rows, endpoint_rows = lines[1::2], lines[2::2]
        for name, line, endpoints in zip(names, rows, endpoint_rows, strict=True):
            fields = line.split()
            assert [fields[0], fields[1], fields[2], fields[4]] == [name, "RUNNING", str(devices[name]["pid"]), "0"]
            resolved = " ".join(f"{role}={','.join(eps)}" for role, eps in devices[name]["endpoints"].items() if eps)
            assert endpoints.strip() == resolved, (endpoints, resolved)
        assert ":*" not in text.stdout, "tcp://...:* must show the port it resolved to"

        # -- status of one device, or of all replicas of one
        one = up.cli("status", "pipe", "--json")
        assert one.returncode == 0, describe(one)
        assert [d["name"] for d in json.loads(one.stdout)["devices"]] == ["pipe.0", "pipe.1"]

        # -- monitored_queue is steerable like every kind (tests/test_device_monitored.py)
        for command in ("pause", "resume"):
            steered = up.cli(command, "audited")
            assert steered.returncode == 0, describe(steered)

        # -- a second supervisor on the same run dir is refused and names the first
        second = cli("up", config=config)
        assert second.returncode == 4, describe(second)
        assert f"pid {up.pid}" in second.stderr and str(short_tmp / "run") in second.stderr, describe(second)
        after = up.devices()
        assert {name: (d["state"], d["pid"]) for name, d in after.items()} == {
            name: ("RUNNING", d["pid"]) for name, d in devices.items()
        }, "the refused `up` disturbed the running one"

        # -- down: every device stopped through its control socket, nothing left. `down` must
        # return although its caller (this test) reaps the supervisor only afterwards.
        down = up.cli("down", timeout=20)
        assert down.returncode == 0, describe(down)
        assert f"supervisor {up.pid} stopped" in down.stdout, describe(down)
        assert up.proc is not None and up.proc.poll() == 0, "`down` returned before the supervisor had exited"
        up.assert_clean_stop(names)
        assert not accepts_connections(ep["broker"]["in"][0]), "the queue still listens after down"


LIFECYCLE = """\
[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://pipe-in.sock"] }
out = { bind = ["ipc://pipe-out.sock"] }

[devices.hub]
kind = "forwarder"
in  = { bind = ["tcp://127.0.0.1:*"] }
out = { bind = ["tcp://127.0.0.1:*"] }
"""


@pytest.mark.timeout(90)
def test_stop_start_restart_pause_resume_and_stats_from_the_cli(
    short_tmp: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config = write_topology(short_tmp, LIFECYCLE)
    front, back = f"ipc://{short_tmp}/pipe-in.sock", f"ipc://{short_tmp}/pipe-out.sock"
    with Up(config) as up:
        devices = up.wait_states()
        hub_pid = devices["hub"]["pid"]

        # -- stats counts exactly what went through (frames in on the front, out on the back)
        push_pull(zmq_ctx, front, back, [b"a", b"bb", b"ccc"])
        stats = up.cli("stats", "pipe", "--json")
        assert stats.returncode == 0, describe(stats)
        counters = json.loads(stats.stdout)["pipe"]
        assert (counters["front_msgs_in"], counters["front_bytes_in"]) == (3, 6), counters
        assert (counters["back_msgs_out"], counters["back_bytes_out"]) == (3, 6), counters

        # -- pause: messages wait; resume: they flow, in order
        pull = connect(zmq_ctx, zmq.PULL, back)
        push = connect(zmq_ctx, zmq.PUSH, front)
        push.send(b"before")
        assert recv_within(pull, "traffic before the pause") == [b"before"]
        paused = up.cli("pause", "pipe")
        assert paused.returncode == 0 and "paused: pipe" in paused.stdout, describe(paused)
        assert up.devices()["pipe"]["paused"] is True
        push.send(b"held-1")
        push.send(b"held-2")
        expect_silence(pull, "the device is paused")
        resumed = up.cli("resume", "pipe")
        assert resumed.returncode == 0 and "resumed: pipe" in resumed.stdout, describe(resumed)
        assert [recv_within(pull, "held traffic after resume")[0] for _ in range(2)] == [b"held-1", b"held-2"]
        assert up.devices()["pipe"]["paused"] is False
        push.close()
        pull.close()

        # -- stop: STOPPED; the neighbour is untouched. The supervisor keeps the stopped device's
        # listening socket (own_sockets): a client connecting now waits for the next start.
        pid = devices["pipe"]["pid"]
        first_process = psutil.Process(pid)
        stopped = up.cli("stop", "pipe")
        assert stopped.returncode == 0, describe(stopped)
        assert "pipe: STOPPED" in stopped.stdout, describe(stopped)
        now = up.devices()
        pipe = now["pipe"]
        assert (pipe["state"], pipe["pid"]) == ("STOPPED", None), pipe
        assert pipe["last_exit"] == "stopped through the control socket", pipe
        assert is_gone(first_process), "the stopped device's process is still running"
        assert accepts_connections(front), "the supervisor no longer holds the stopped device's address"
        assert (now["hub"]["state"], now["hub"]["pid"]) == ("RUNNING", hub_pid), "stopping pipe touched hub"

        # -- start: RUNNING again, a new process, forwarding on the same endpoints
        started = up.cli("start", "pipe")
        assert started.returncode == 0 and "pipe: RUNNING" in started.stdout, describe(started)
        pipe = up.devices()["pipe"]
        assert pipe["state"] == "RUNNING" and pipe["pid"] not in (None, pid), pipe
        push_pull(zmq_ctx, front, back, [b"after start"])

        # -- restart: a new pid; an operator restart is not a crash, so restarts stays 0
        restarted = up.cli("restart", "pipe")
        assert restarted.returncode == 0 and "pipe: RUNNING" in restarted.stdout, describe(restarted)
        now = up.devices()
        again = now["pipe"]
        assert again["state"] == "RUNNING" and again["pid"] not in (None, pid, pipe["pid"]), again
        assert again["restarts"] == 0, again
        push_pull(zmq_ctx, front, back, [b"after restart"])
        assert now["hub"]["pid"] == hub_pid, "restarting pipe touched hub"

        # -- an unknown name: a non-zero exit and a message that lists the devices
        for command in (["stop", "nosuch"], ["pause", "nosuch"]):
            unknown = up.cli(*command)
            assert unknown.returncode == 1, describe(unknown)
            assert "no device named 'nosuch' (devices: hub, pipe)" in unknown.stderr, describe(unknown)
        # start of a running device is refused
        busy = up.cli("start", "hub")
        assert busy.returncode == 1 and "already running: hub" in busy.stderr, describe(busy)


@pytest.mark.timeout(30)
def test_commands_without_a_supervisor_exit_4(short_tmp: Path) -> None:
    config = write_topology(short_tmp, LIFECYCLE)
    for command in (["status"], ["status", "--json"], ["stop", "pipe"], ["down"]):
        result = cli(*command, config=config)
        assert result.returncode == 4, describe(result)
        assert f"no supervisor is running with run dir {short_tmp / 'run'}" in result.stderr, describe(result)
        assert result.stdout == "", describe(result)
