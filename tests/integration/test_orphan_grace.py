"""``[supervisor] orphan_grace``: a device whose supervisor died goes on forwarding for up to
the grace, waiting to be adopted (ADOPT with the run's token); not adopted, it stops itself
cleanly. Real `up`, real device processes, real traffic."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import zmq
from support.cli import Up, connect, recorded_state, recv_within, wait_gone, write_topology

from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command
from procdevices.errors import DeviceError

Ctx = zmq.Context[zmq.Socket[bytes]]
GRACE = 1.5

PIPE = """\
[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://in.sock"] }
out = { bind = ["ipc://out.sock"] }
"""


def _flows(ctx: Ctx, tmp: Path, payload: bytes) -> None:
    """``payload`` goes through the pipe (the device forwards)."""
    pull = connect(ctx, zmq.PULL, f"ipc://{tmp}/out.sock")
    push = connect(ctx, zmq.PUSH, f"ipc://{tmp}/in.sock")
    try:
        push.send(payload)
        assert recv_within(pull, f"{payload!r} through the orphaned device") == [payload]
    finally:
        push.close(0)
        pull.close(0)


def _device(up: Up) -> tuple[psutil.Process, str]:
    entry = up.wait_states({"pipe": "RUNNING"})["pipe"]
    return psutil.Process(entry["pid"]), f"ipc://{up.directory}/run/ctl/pipe.sock"


def _token(up: Up) -> str:
    token = recorded_state(up.directory / "run", lambda state: "token" in state, "with the run's token")["token"]
    assert isinstance(token, str)
    return token


def _kill_supervisor(up: Up) -> float:
    up.signal(signal.SIGKILL)
    assert up.wait_exit() == -signal.SIGKILL
    return time.monotonic()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_an_orphan_forwards_through_the_grace_then_stops_cleanly(
    short_tmp: Path, zmq_ctx: Ctx, start_method: str
) -> None:
    config = write_topology(short_tmp, PIPE, pool_size=0, orphan_grace=GRACE)
    # A forked device's multiprocessing parent is the fork server: it must follow `up` by pid.
    config.write_text(
        config.read_text().replace("[supervisor]\n", f'[supervisor]\nstart_method = "{start_method}"\n', 1)
    )
    with Up(config) as up:
        device, _ = _device(up)
        killed_at = _kill_supervisor(up)
        _flows(zmq_ctx, short_tmp, b"after the supervisor died")
        alive = wait_gone([device], GRACE + 2.0)
        ended_after = time.monotonic() - killed_at
        assert not alive, "the orphan outlived orphan_grace + 2 s"
        # It waited for an adopter (not stopped at once) and then stopped through its own
        # control loop: the log names the reason, and no forced stop shows.
        assert ended_after >= GRACE * 0.9, ended_after
        log = (short_tmp / "run" / "logs" / "pipe.log").read_text()
        assert "waiting to be adopted" in log, log
        assert "control loop error" not in log and "Traceback" not in log, log
        up.assert_nothing_left(5.0)


@pytest.mark.timeout(60)
def test_adopt_with_the_run_token_keeps_the_orphan_past_the_grace(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, PIPE, pool_size=0, orphan_grace=GRACE)
    with Up(config) as up:
        device, endpoint = _device(up)
        token = _token(up)
        client = ControlClient(endpoint, zmq_ctx)
        try:
            # Its supervisor lives: nobody may take the device from it, token or not.
            with pytest.raises(DeviceError, match="supervisor is alive"):
                client.request(Command.ADOPT, 2.0, {"token": token, "pid": os.getpid()})
            _kill_supervisor(up)
            with pytest.raises(DeviceError, match="wrong run token"):
                client.request(Command.ADOPT, 2.0, {"token": "0" * 32, "pid": os.getpid()})
            with pytest.raises(DeviceError, match="payload"):
                client.request(Command.ADOPT, 2.0, {"token": token, "pid": "me"})
            answer = client.request(Command.ADOPT, 2.0, {"token": token, "pid": os.getpid()})
            assert answer["adopted"] is True and answer["pid"] == device.pid, answer
            # Adopted: the grace no longer runs out. Waiting is the measure here.
            alive = wait_gone([device], GRACE + 1.0)
            assert alive, "the adopted device stopped when the grace ran out"
            _flows(zmq_ctx, short_tmp, b"adopted")
            # Adopted by another process while the adopter (this test) lives: refused. By the
            # adopter itself again (a supervisor that re-executed itself keeps its pid): accepted.
            other = psutil.Popen(["sleep", "60"])
            try:
                with pytest.raises(DeviceError, match="supervisor is alive"):
                    client.request(Command.ADOPT, 2.0, {"token": token, "pid": other.pid})
            finally:
                other.kill()
                other.wait(5)
            again = client.request(Command.ADOPT, 2.0, {"token": token, "pid": os.getpid()})
            assert again["adopted"] is True and again["orphaned_for"] == 0.0, again
            client.request(Command.STOP, 2.0)
        finally:
            client.close()
        alive = wait_gone([device], 5.0)
        assert not alive
        up.assert_nothing_left(5.0)


@pytest.mark.timeout(60)
def test_a_device_adopted_by_a_process_that_dies_is_orphaned_again(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, PIPE, pool_size=0, orphan_grace=GRACE)
    with Up(config) as up:
        device, endpoint = _device(up)
        token = _token(up)
        _kill_supervisor(up)
        # A stand-in adopter that we can kill: a short-lived child of this test.
        adopter = psutil.Popen(["sleep", "60"])
        client = ControlClient(endpoint, zmq_ctx)
        try:
            client.request(Command.ADOPT, 2.0, {"token": token, "pid": adopter.pid})
        finally:
            client.close()
            adopter.kill()
            adopter.wait(5)
        # The adopter's death starts a new grace: the device stops within it.
        alive = wait_gone([device], GRACE + 2.0)
        assert not alive, "the device outlived its adopter by more than orphan_grace + 2 s"
        up.assert_nothing_left(5.0)


@pytest.mark.timeout(60)
def test_adopt_on_a_python_without_pidfd_open_is_refused_with_one_line(
    short_tmp: Path, zmq_ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every process of this `up` runs on a Python without os.pidfd_open (a sitecustomize takes
    # it away). A forked device still sees its fork server die after `up`, so it is orphaned,
    # but it has nothing to watch an adopter with.
    custom = short_tmp / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text("import os\ndel os.pidfd_open\n")
    monkeypatch.setenv("PYTHONPATH", str(custom))
    config = write_topology(short_tmp, PIPE, pool_size=0, orphan_grace=GRACE)
    config.write_text(config.read_text().replace("[supervisor]\n", '[supervisor]\nstart_method = "forkserver"\n', 1))
    with Up(config) as up:
        device, endpoint = _device(up)
        token = _token(up)
        _kill_supervisor(up)
        client = ControlClient(endpoint, zmq_ctx)
        try:
            deadline = time.monotonic() + 10.0
            while True:  # until the device has seen its fork server go (it is then an orphan)
                try:
                    client.request(Command.ADOPT, 2.0, {"token": token, "pid": os.getpid()})
                except DeviceError as e:
                    if "supervisor is alive" in str(e) and time.monotonic() < deadline:
                        continue
                    assert "this Python has no os.pidfd_open" in str(e), e
                    break
                pytest.fail("adopted without a pidfd to watch the adopter with")
        finally:
            client.close()
        alive = wait_gone([device], GRACE + 2.0)
        assert not alive, "the orphan outlived orphan_grace + 2 s"
        log = (short_tmp / "run" / "logs" / "pipe.log").read_text()
        assert "control loop error" not in log and "Traceback" not in log, log
        up.assert_nothing_left(5.0)
