"""The listener handback's two ends (devices/handback.py, supervisor/handback.py) with real
unix sockets and real descriptors: what a device sends arrives as the very listening socket,
and nothing a bad peer sends is kept or raises. The device's side inside ADOPT is tested with
real processes in tests/integration/test_adopt_handback.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procdevices import runlayout
from procdevices.devices.handback import MAX_FDS, MAX_HEADER, HandbackFailed, encode_header, hand_back
from procdevices.supervisor.handback import HandbackServer

pytestmark = pytest.mark.timeout(30)


def _open_fds() -> set[int]:
    return {fd for fd in map(int, os.listdir("/proc/self/fd")) if _is_open(fd)}


def _is_open(fd: int) -> bool:
    # The listing's own descriptor is in the listing, and closed by now.
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HandbackServer]:
    with HandbackServer(runlayout.handback_socket(tmp_path)) as s:
        yield s


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def _send_raw(path: str, header: bytes, fds: list[int], *, close: bool = True) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    socket.send_fds(client, [header], fds)
    if close:
        client.close()
    return client


def test_a_handed_back_socket_is_the_very_listening_socket(server: HandbackServer, tcp_listener: socket.socket) -> None:
    endpoint = f"tcp://127.0.0.1:{tcp_listener.getsockname()[1]}"
    assert hand_back(server.path, {endpoint: tcp_listener.fileno()}, os.getpid()) == [endpoint]
    new = server.collect()
    assert list(new) == [os.getpid()] and list(new[os.getpid()]) == [endpoint]
    received = server.take(os.getpid())[endpoint]
    try:
        assert received.fileno() != tcp_listener.fileno()  # a duplicate: the sender keeps its own
        assert received.getsockname() == tcp_listener.getsockname()
        # One socket, two descriptors: a connection accepted through one is the other's too.
        with socket.create_connection(tcp_listener.getsockname(), timeout=5):
            received.settimeout(5)
            conn, _ = received.accept()
            conn.close()
        assert not os.get_inheritable(received.fileno()), "a received socket must be close-on-exec"
    finally:
        received.close()
    assert server.received == {} and server.take(os.getpid()) == {}


def test_sockets_from_a_device_process_outlive_it(server: HandbackServer) -> None:
    # A stand-in device: another process listens, hands its socket back, and exits.
    script = (
        "import os, socket, sys\n"
        "from procdevices.devices.handback import hand_back\n"
        "s = socket.create_server(('127.0.0.1', 0))\n"
        "e = 'tcp://127.0.0.1:%d' % s.getsockname()[1]\n"
        "hand_back(sys.argv[1], {e: s.fileno()}, int(sys.argv[2]))\n"
        "print(os.getpid(), e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, server.path, str(os.getpid())], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    pid_text, endpoint = done.stdout.split()
    sockets = server.collect()[int(pid_text)]
    listener = sockets[endpoint]
    port = int(endpoint.rsplit(":", 1)[1])
    assert listener.getsockname() == ("127.0.0.1", port)
    # Its process is gone; the socket still listens, here.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        listener.settimeout(5)
        listener.accept()[0].close()


def test_every_socket_in_order_and_an_empty_handback(server: HandbackServer, tmp_path: Path) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "a.sock"))
    unix.listen()
    with unix, socket.create_server(("127.0.0.1", 0)) as tcp:
        listeners = {"ipc://a.sock": unix.fileno(), "tcp://x": tcp.fileno()}
        hand_back(server.path, listeners, os.getpid())
        got = server.collect()[os.getpid()]
        assert got["ipc://a.sock"].getsockname() == str(tmp_path / "a.sock")
        assert got["tcp://x"].getsockname() == tcp.getsockname()
    # A device without listening sockets still says so: the adopter knows it answered. The
    # same device again: its newer message replaces what it sent before (closed).
    hand_back(server.path, {}, os.getpid())
    assert server.collect() == {os.getpid(): {}}
    assert got["tcp://x"].fileno() == got["ipc://a.sock"].fileno() == -1


def test_a_header_whose_pid_is_not_the_senders_is_dropped(server: HandbackServer, tcp_listener: socket.socket) -> None:
    before = _open_fds()
    _send_raw(server.path, encode_header(os.getpid() + 1, ["tcp://lie"]), [tcp_listener.fileno()])
    assert server.collect() == {} and server.received == {}
    assert "header says pid" in server.rejected[-1]
    assert _open_fds() == before, "the liar's descriptor was kept open"


@pytest.mark.parametrize(
    "header",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({"pid": "me", "endpoints": ["tcp://x"]}).encode(),
        json.dumps({"pid": 1, "endpoints": "tcp://x"}).encode(),
        json.dumps({"endpoints": ["tcp://x"]}).encode(),
        b"[" * 100_000,
    ],
)
def test_a_garbage_header_is_dropped(server: HandbackServer, tcp_listener: socket.socket, header: bytes) -> None:
    before = _open_fds()
    _send_raw(server.path, header.replace(b"1,", f"{os.getpid()},".encode()), [tcp_listener.fileno()])
    assert server.collect() == {}
    assert server.rejected and _open_fds() == before


def test_endpoints_and_descriptors_must_match(server: HandbackServer, tcp_listener: socket.socket) -> None:
    before = _open_fds()
    _send_raw(server.path, encode_header(os.getpid(), ["tcp://a", "tcp://b"]), [tcp_listener.fileno()])
    _send_raw(server.path, encode_header(os.getpid(), ["tcp://a", "tcp://a"]), [tcp_listener.fileno()] * 2)
    assert server.collect() == {}
    assert len(server.rejected) == 2 and _open_fds() == before


def test_too_many_descriptors_are_dropped_and_closed(server: HandbackServer, tcp_listener: socket.socket) -> None:
    before = _open_fds()
    count = MAX_FDS + 1
    endpoints = [f"tcp://e{i}" for i in range(count)]
    _send_raw(server.path, encode_header(os.getpid(), endpoints), [tcp_listener.fileno()] * count)
    assert server.collect() == {}
    assert f"more than {MAX_FDS} descriptors" in server.rejected[-1]
    assert _open_fds() == before
    # The device's side never sends what the other side would drop.
    with pytest.raises(HandbackFailed, match="more than"):
        hand_back(server.path, dict.fromkeys(endpoints, tcp_listener.fileno()), os.getpid())


def test_a_header_too_large_is_dropped(server: HandbackServer, tcp_listener: socket.socket) -> None:
    before = _open_fds()
    header = encode_header(os.getpid(), ["tcp://" + "x" * MAX_HEADER])
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(server.path)
    client.setblocking(False)
    socket.send_fds(client, [header[:1000]], [tcp_listener.fileno()])
    sent = 1000
    while sent < len(header):  # more than a socket buffer: feed it as the server reads
        try:
            sent += client.send(header[sent:])
        except BlockingIOError:
            server.collect()
    client.close()
    assert server.collect() == {}
    assert f"larger than {MAX_HEADER}" in server.rejected[-1]
    assert _open_fds() == before


def test_something_else_than_a_listening_socket_is_closed(server: HandbackServer, tcp_listener: socket.socket) -> None:
    before = _open_fds() - {server.fileno()}
    r, w = os.pipe()
    plain = socket.socket()
    try:
        fds = [r, plain.fileno(), tcp_listener.fileno()]
        _send_raw(server.path, encode_header(os.getpid(), ["pipe", "plain", "tcp://ok"]), fds)
        got = server.collect()[os.getpid()]
        assert list(got) == ["tcp://ok"]
        server.close()  # closes the one it kept
        assert got["tcp://ok"].fileno() == -1
    finally:
        os.close(r)
        os.close(w)
        plain.close()
    assert _open_fds() == before


def test_a_message_that_arrives_in_parts_is_finished_by_a_later_collect(
    server: HandbackServer, tcp_listener: socket.socket
) -> None:
    header = encode_header(os.getpid(), ["tcp://slow"])
    client = _send_raw(server.path, header[:5], [tcp_listener.fileno()], close=False)
    try:
        assert server.collect() == {}  # incomplete: kept, not dropped
        client.sendall(header[5:])
    finally:
        client.close()
    assert list(server.collect()[os.getpid()]) == ["tcp://slow"]


def test_the_device_side_refuses_anyone_but_the_adopter(server: HandbackServer, tcp_listener: socket.socket) -> None:
    # The process listening at the path is this one, not "pid 1": nothing is sent.
    with pytest.raises(HandbackFailed, match="not by the adopter"):
        hand_back(server.path, {"tcp://x": tcp_listener.fileno()}, 1)
    assert server.collect() == {} and server.received == {}
    with pytest.raises(HandbackFailed, match="No such file"):
        hand_back(server.path + ".missing", {}, os.getpid())


def test_the_socket_file_is_owner_only_and_replaces_a_stale_one(tmp_path: Path) -> None:
    path = runlayout.handback_socket(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a dead adopter's file
    with HandbackServer(path) as server:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        hand_back(server.path, {}, os.getpid())
        assert server.collect() == {os.getpid(): {}}
    assert not os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = runlayout.handback_socket(tmp_path)
    Path(path).write_text("mine")
    with pytest.raises(OSError, match="in use"):
        HandbackServer(path)
    assert Path(path).read_text() == "mine"


def test_close_closes_what_nobody_took(tmp_path: Path, tcp_listener: socket.socket) -> None:
    before = _open_fds()
    server = HandbackServer(runlayout.handback_socket(tmp_path))
    hand_back(server.path, {"tcp://a": tcp_listener.fileno()}, os.getpid())
    unfinished = _send_raw(server.path, encode_header(os.getpid(), []), [], close=False)
    assert list(server.collect()) == [os.getpid()]
    server.close()
    unfinished.close()
    assert _open_fds() == before
    assert not os.path.exists(server.path)
    with pytest.raises(ValueError, match="closed"):
        server.collect()
