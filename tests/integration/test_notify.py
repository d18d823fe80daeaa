"""sd_notify, systemd's readiness protocol: datagrams to the AF_UNIX socket named by NOTIFY_SOCKET.

Each test binds a real SOCK_DGRAM socket in a short private directory, the way systemd does for
a Type=notify service, with SO_PASSCRED so that every datagram carries its sender's pid:
systemd's default NotifyAccess=main only accepts the service's main process.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import FileChanges, wait_for

from procdevices.supervisor.notify import sd_notify

TOPOLOGY = """\
[supervisor]
run_dir = "run"
pool_size = 0

[devices.relay]
kind = "streamer"
in = { bind = ["ipc://relay-in.sock"] }
out = { bind = ["ipc://relay-out.sock"] }

[devices.fanout]
kind = "forwarder"
in = { bind = ["ipc://fanout-in.sock"] }
out = { bind = ["ipc://fanout-out.sock"] }
"""

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))

    def receive(self, timeout: float) -> tuple[dict[str, str], int | None]:
        """One datagram as {VAR: value}, and the sender's pid."""
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        return fields, pid

    def nothing_more(self) -> list[dict[str, str]]:
        """Datagrams still queued (none expected)."""
        self.sock.setblocking(False)
        extra: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return extra
            extra.append(dict(line.split("=", 1) for line in data.decode().splitlines() if line))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(short_tmp / "notify.sock")
    try:
        yield ns
    finally:
        ns.close()


def start(args: list[str], short_tmp: Path, notify: NotifySocket) -> subprocess.Popen[bytes]:
    topo = short_tmp / "topo.toml"
    topo.write_text(TOPOLOGY)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    return subprocess.Popen(
        [sys.executable, "-m", "procdevices", *args, "-c", str(topo)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=short_tmp,
    )


def finish(process: subprocess.Popen[bytes], signalled: bool) -> tuple[int, str]:
    """Wait for the exit. One SIGTERM only: a second one may land while the interpreter is
    finalizing, after Python restored the default handlers, and kill it (-15)."""
    if not signalled and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err.decode(errors="replace")


@pytest.mark.timeout(60)
def test_up_notifies_ready_once_every_device_runs_and_stopping_on_sigterm(
    short_tmp: Path, notify_socket: NotifySocket
) -> None:
    up = start(["up"], short_tmp, notify_socket)
    signalled = False
    try:
        ready, sender = notify_socket.receive(timeout=30)
        assert ready.get("READY") == "1", ready
        assert ready.get("STATUS") == "2 devices running", ready
        assert sender == up.pid  # the main process: enough for NotifyAccess=main
        # Readiness means every device has bound its sockets.
        for name in ("relay-in", "relay-out", "fanout-in", "fanout-out"):
            assert (short_tmp / f"{name}.sock").exists(), name

        up.send_signal(signal.SIGTERM)
        signalled = True
        stopping, sender = notify_socket.receive(timeout=20)
        assert stopping == {"STOPPING": "1"} and sender == up.pid
    finally:
        code, err = finish(up, signalled)
    assert code == 0, err
    assert "stopped through the control socket" in err
    assert notify_socket.nothing_more() == []


@pytest.mark.timeout(60)
def test_up_interrupted_before_ready_sends_no_ready(short_tmp: Path, notify_socket: NotifySocket) -> None:
    """SIGINT (Ctrl-C) right away: a stop may come before readiness; it must not claim READY."""
    up = start(["up"], short_tmp, notify_socket)
    signalled = False
    try:
        # Wait until the supervisor has its signal handlers: it has written its first state.json
        # (after installing them, when it spawns the devices).
        state = short_tmp / "run" / "state.json"
        with FileChanges(short_tmp, state.parent) as written:
            wait_for(lambda: state.exists() or up.poll() is not None, 20, "up to spawn its devices", wake=written)
        assert up.poll() is None, "up exited before it was signalled"
        up.send_signal(signal.SIGINT)
        signalled = True
        received = [notify_socket.receive(timeout=20)[0]]
        while "STOPPING" not in received[-1]:
            received.append(notify_socket.receive(timeout=20)[0])
    finally:
        code, err = finish(up, signalled)
    assert code == 0, err
    # Either the devices were all ready before the signal was handled (READY first), or not.
    assert [list(r) for r in received] in ([["STOPPING"]], [["READY", "STATUS"], ["STOPPING"]]), received


@pytest.mark.timeout(60)
def test_run_notifies_ready_and_stopping(short_tmp: Path, notify_socket: NotifySocket) -> None:
    device = start(["run", "relay"], short_tmp, notify_socket)
    signalled = False
    try:
        ready, sender = notify_socket.receive(timeout=30)
        assert ready == {"READY": "1"} and sender == device.pid
        assert (short_tmp / "relay-in.sock").exists()
        device.send_signal(signal.SIGTERM)
        signalled = True
        stopping, sender = notify_socket.receive(timeout=20)
        assert stopping == {"STOPPING": "1"} and sender == device.pid
    finally:
        code, err = finish(device, signalled)
    assert code == 0, err
    assert notify_socket.nothing_more() == []


# -- sd_notify itself ---------------------------------------------------------------------------


def test_sd_notify_without_notify_socket_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sd_notify("READY=1") is False


def test_sd_notify_to_a_path(monkeypatch: pytest.MonkeyPatch, notify_socket: NotifySocket) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    assert sd_notify("READY=1\nSTATUS=ok") is True
    assert notify_socket.receive(timeout=5) == ({"READY": "1", "STATUS": "ok"}, os.getpid())


def test_sd_notify_to_an_abstract_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd passes an abstract socket as "@name"."""
    name = f"procdevices-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_sd_notify_to_nobody_is_not_an_error(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> None:
    """A service manager that went away must not take the service down with it."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "gone.sock"))
    assert sd_notify("READY=1") is False


BIND_CONFLICT = """\
[supervisor]
run_dir = "run"
pool_size = 0

[devices.relay]
kind = "streamer"
in = {{ bind = ["ipc://relay-in.sock"] }}
out = {{ bind = ["ipc://relay-out.sock"] }}

[devices.taken]
kind = "streamer"
in = {{ bind = ["tcp://127.0.0.1:{port}"] }}
out = {{ bind = ["ipc://taken-out.sock"] }}
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("trial", range(8))
def test_ready_is_sent_once_even_when_the_last_device_to_start_fails(
    short_tmp: Path, notify_socket: NotifySocket, trial: int
) -> None:
    """A setup error (the port is taken) makes its device FATAL; whichever device finishes
    starting last, READY=1 must come exactly once, or systemd waits in "activating" for ever."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        topo = short_tmp / "topo.toml"
        topo.write_text(BIND_CONFLICT.format(port=holder.getsockname()[1]))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path)}
        up = subprocess.Popen(
            [sys.executable, "-m", "procdevices", "up", "-c", str(topo)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=short_tmp,
        )
        try:
            ready, sender = notify_socket.receive(timeout=30)
            assert ready.get("READY") == "1" and ready.get("STATUS") == "1 devices running", ready
            assert sender == up.pid
        finally:
            code, err = finish(up, signalled=False)
    finally:
        holder.close()
    assert code == 3, err  # a device was FATAL
    assert "Address already in use" in err and err.count("ready: 1 device process(es) running, 1 not") == 1, err
    assert notify_socket.nothing_more() == [{"STOPPING": "1"}]


@pytest.mark.timeout(60)
def test_an_upgrade_reloads_and_is_ready_again_from_the_same_pid(short_tmp: Path, notify_socket: NotifySocket) -> None:
    up = start(["up"], short_tmp, notify_socket)
    signalled = False
    try:
        ready, sender = notify_socket.receive(timeout=30)
        assert ready.get("READY") == "1" and sender == up.pid, ready
        up.send_signal(signal.SIGUSR2)
        reloading, sender = notify_socket.receive(timeout=30)
        assert reloading.get("RELOADING") == "1" and int(reloading["MONOTONIC_USEC"]) > 0, reloading
        assert sender == up.pid
        # The re-executed image adopts its devices and says so, still as the main pid.
        ready, sender = notify_socket.receive(timeout=30)
        assert ready.get("READY") == "1" and ready.get("STATUS") == "2 devices running", ready
        assert sender == up.pid and up.poll() is None
    finally:
        code, err = finish(up, signalled)
    assert code == 0, err
    assert "relay: adopted (pid" in err and "fanout: adopted (pid" in err, err
