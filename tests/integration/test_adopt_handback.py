"""ADOPT with a handback socket: an adopter takes back the listening sockets of a device whose
supervisor died (devices/handback.py, supervisor/handback.py), and a supervisor that
re-executed itself (same pid) adopts its own devices. Real `up`, real device processes; this
test is the adopter."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from support.cli import Up, connect, recv_within, write_topology

from procdevices import runlayout
from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command
from procdevices.control.server import WAKE_EXIT, ControlServer, ControlTarget
from procdevices.errors import DeviceError
from procdevices.supervisor.handback import HandbackServer

Ctx = zmq.Context[zmq.Socket[bytes]]
GRACE = 30  # long enough never to run out here: each test ends its device itself

PIPE = """\
[devices.pipe]
kind = "streamer"
in  = { bind = ["tcp://127.0.0.1:*"] }
out = { bind = ["ipc://out.sock"] }
"""


def _orphan(up: Up) -> tuple[psutil.Process, str, str, Path]:
    """SIGKILL `up` once its device runs: the device, its control endpoint, the run token,
    the run dir."""
    pid = up.wait_states({"pipe": "RUNNING"})["pipe"]["pid"]
    run_dir = up.directory / "run"
    token = json.loads(runlayout.state_file(run_dir).read_text())["token"]
    up.signal(signal.SIGKILL)
    assert up.wait_exit() == -signal.SIGKILL
    return psutil.Process(pid), runlayout.control_endpoint(run_dir, "pipe"), token, run_dir


def _holds(process: psutil.Process, sock: socket.socket) -> bool:
    """Whether ``process`` has a descriptor on the very socket ``sock`` is (same inode)."""
    wanted = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    fd_dir = f"/proc/{process.pid}/fd"
    return any(os.readlink(f"{fd_dir}/{name}") == wanted for name in os.listdir(fd_dir))


@pytest.mark.timeout(60)
def test_an_adopter_takes_back_the_orphans_listening_socket(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, PIPE, pool_size=0, orphan_grace=GRACE)
    with Up(config) as up:
        device, endpoint, token, run_dir = _orphan(up)
        client = ControlClient(endpoint, zmq_ctx)
        try:
            with HandbackServer(runlayout.handback_socket(run_dir)) as server:
                answer = client.request(
                    Command.ADOPT, 5.0, {"token": token, "pid": os.getpid(), "handback": server.path}
                )
                received = server.collect()
                assert answer["adopted"] is True and answer["pid"] == device.pid, answer
                # Both of its binds are own sockets: the tcp port the supervisor chose, and ipc.
                ipc_endpoint = f"ipc://{short_tmp}/out.sock"
                (tcp_endpoint,) = set(answer["listeners"]) - {ipc_endpoint}
                assert sorted(answer["listeners"]) == sorted([tcp_endpoint, ipc_endpoint])
                assert tcp_endpoint.startswith("tcp://127.0.0.1:") and not tcp_endpoint.endswith(":*")
                assert list(received) == [device.pid] and list(received[device.pid]) == answer["listeners"]
                sockets = server.take(device.pid)
            listener = sockets[tcp_endpoint]
            with listener, sockets[ipc_endpoint] as ipc_listener:
                assert ipc_listener.getsockname() == f"{short_tmp}/out.sock" and _holds(device, ipc_listener)
                port = int(tcp_endpoint.rsplit(":", 1)[1])
                assert listener.getsockname() == ("127.0.0.1", port)
                assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
                # Not a socket on the same port: the device's own listening socket.
                assert _holds(device, listener)
                # A client connecting to it is served by the device.
                pull = connect(zmq_ctx, zmq.PULL, f"ipc://{short_tmp}/out.sock")
                push = connect(zmq_ctx, zmq.PUSH, tcp_endpoint)
                push.send(b"through the handed-back socket")
                assert recv_within(pull, "a message through the adopted device") == [b"through the handed-back socket"]
            client.request(Command.STOP, 5.0)
        finally:
            client.close()
        psutil.wait_procs([device], timeout=10.0)
        up.assert_nothing_left(5.0)


@pytest.mark.timeout(60)
def test_a_handback_elsewhere_is_refused_and_a_failed_one_adopts_nothing(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, PIPE, pool_size=0, orphan_grace=GRACE)
    with Up(config) as up:
        device, endpoint, token, run_dir = _orphan(up)
        client = ControlClient(endpoint, zmq_ctx)
        try:
            # A socket outside the run dir: refused, and nothing connects to it.
            with HandbackServer(str(short_tmp / "elsewhere.sock")) as elsewhere:
                with pytest.raises(DeviceError, match="not this device's run dir handback socket"):
                    client.request(Command.ADOPT, 5.0, {"token": token, "pid": os.getpid(), "handback": elsewhere.path})
                assert elsewhere.collect() == {} and elsewhere.accepted == 0, "the device connected elsewhere"
            # The right path with nobody listening: failed, and the device is not adopted...
            payload = {"token": token, "pid": os.getpid(), "handback": runlayout.handback_socket(run_dir)}
            with pytest.raises(DeviceError, match="cannot hand back the listening sockets"):
                client.request(Command.ADOPT, 5.0, payload)
            # ... so a second adoption is still possible (an adopted device refuses anyone else).
            with HandbackServer(runlayout.handback_socket(run_dir)) as server:
                answer = client.request(Command.ADOPT, 5.0, payload)
                assert answer["adopted"] is True and len(answer["listeners"]) == 2, answer
                # Adopted now, as an orphan (not taken for an adopter adopting again).
                assert answer["orphaned_for"] > 0, answer
                assert list(server.collect()) == [device.pid]
            client.request(Command.STOP, 5.0)
        finally:
            client.close()
        psutil.wait_procs([device], timeout=10.0)
        up.assert_nothing_left(5.0)


# -- a supervisor that re-executed itself: ADOPT from the pid the device already watches -----

TOKEN = "ab" * 16


@dataclass
class Served:
    server: ControlServer
    client: ControlClient
    sentinel: int
    endpoint: str
    handback_path: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A device's control loop (no forwarding loop) whose watched parent is this test process,
    with one listening socket to hand back."""
    ctx: zmq.Context[Any] = zmq.Context()
    name = uuid.uuid4().hex
    control: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    control.bind(f"inproc://control-{name}")
    wake_rx: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
    wake_rx.bind(f"inproc://wake-{name}")
    wake: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
    wake.connect(f"inproc://wake-{name}")
    listener = socket.create_server(("127.0.0.1", 0))
    endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    sentinel = os.pidfd_open(os.getpid())
    handback_path = runlayout.handback_socket(tmp_path)
    server = ControlServer(
        ControlTarget(steering=None, info=dict, shutdown=None),
        control,
        wake_rx,
        parent_sentinel=sentinel,
        orphan_grace=GRACE,
        run_token=TOKEN,
        watched_pid=os.getpid(),
        handback_path=handback_path,
        listeners={endpoint: listener.fileno()},
    )
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    client = ControlClient(f"inproc://control-{name}", ctx)
    try:
        yield Served(server, client, sentinel, endpoint, handback_path)
    finally:
        wake.send(WAKE_EXIT)
        thread.join(5)
        assert not thread.is_alive()
        client.close()
        for sock in (control, wake_rx, wake):
            sock.close(linger=0)
        ctx.term()
        listener.close()
        os.close(sentinel)


@pytest.mark.timeout(30)
def test_the_watched_parent_adopts_again_while_it_lives(served: Served) -> None:
    with HandbackServer(served.handback_path) as handback:
        answer = served.client.request(
            Command.ADOPT, 5.0, {"token": TOKEN, "pid": os.getpid(), "handback": handback.path}
        )
        assert answer == {"adopted": True, "pid": os.getpid(), "orphaned_for": 0.0, "listeners": [served.endpoint]}
        assert list(handback.collect()[os.getpid()]) == [served.endpoint]
    # Still the same parent, watched through the same pidfd; never orphaned.
    assert served.server.parent_sentinel == served.sentinel and served.server.watched_pid == os.getpid()
    assert served.server.orphaned_at is None
    # Without a handback: adopted, nothing sent.
    answer = served.client.request(Command.ADOPT, 5.0, {"token": TOKEN, "pid": os.getpid()})
    assert answer["adopted"] is True and answer["listeners"] == []


@pytest.mark.timeout(30)
def test_another_live_supervisor_is_still_refused(served: Served) -> None:
    other = psutil.Popen(["sleep", "60"])
    try:
        with pytest.raises(DeviceError, match="supervisor is alive"):
            served.client.request(Command.ADOPT, 5.0, {"token": TOKEN, "pid": other.pid})
        with pytest.raises(DeviceError, match="wrong run token"):
            served.client.request(Command.ADOPT, 5.0, {"token": "cd" * 16, "pid": os.getpid()})
    finally:
        other.kill()
        other.wait(5)
    assert served.server.watched_pid == os.getpid()


@pytest.mark.timeout(30)
def test_a_failed_handback_to_the_watched_parent_fails_in_one_line(served: Served) -> None:
    # Nobody listens at the handback path.
    with pytest.raises(DeviceError, match="cannot hand back the listening sockets") as failed:
        served.client.request(
            Command.ADOPT, 5.0, {"token": TOKEN, "pid": os.getpid(), "handback": served.handback_path}
        )
    assert "\n" not in str(failed.value)
    assert served.server.parent_sentinel == served.sentinel
