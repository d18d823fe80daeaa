"""A host's control endpoint on one machine: CURVE with the cluster keys, `status --all`
(concurrent, UNREACHABLE within --timeout, exit 5, the JSON shape), a device command routed
to its host, and a peer without an admitted key getting nothing. Hosts as network namespaces
are in test_multihost_netns.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from support.cli import Up, cli, describe, free_tcp_port

from procdevices.control.protocol import SupervisorCommand, supervisor_request


def topology(directory: Path, port: int) -> Path:
    """Host `here` is this machine (127.0.0.1) and serves control; `there` is not."""
    path = directory / "topology.toml"
    path.write_text(
        f"""\
[supervisor]
run_dir = "run"
pool_size = 0

[cluster]
keys = "keys"

[hosts.here]
address = "127.0.0.1"
control = "tcp://127.0.0.1:{port}"

[hosts.there]
address = "10.77.0.2"

[devices.mine]
host = "here"
kind = "queue"
in = {{ bind = ["ipc://mine-in.sock"] }}
out = {{ bind = ["ipc://mine-out.sock"] }}

[devices.theirs]
host = "there"
kind = "queue"
in = {{ bind = ["tcp://*:7001"] }}
out = {{ bind = ["tcp://*:7002"] }}
"""
    )
    return path


@pytest.fixture
def cluster(short_tmp: Path) -> tuple[Path, int]:
    result = cli("keys", "generate", str(short_tmp / "keys"), cwd=short_tmp)
    assert result.returncode == 0, describe(result)
    assert sorted(p.name for p in (short_tmp / "keys").iterdir()) == [
        "client.key",
        "client.key_secret",
        "server.key",
        "server.key_secret",
    ]
    assert (short_tmp / "keys" / "server.key_secret").stat().st_mode & 0o077 == 0
    again = cli("keys", "generate", str(short_tmp / "keys"), cwd=short_tmp)
    assert again.returncode == 1 and "remove the old keys first" in again.stderr, describe(again)
    port = free_tcp_port()
    return topology(short_tmp, port), port


@pytest.mark.timeout(90)
def test_status_all_reaches_a_host_through_curve_and_names_the_unreachable(cluster: tuple[Path, int]) -> None:
    config, port = cluster
    with Up(config) as up:
        up.wait_states({"mine": "RUNNING"})
        # Acting as host `there`: `here` is then reached over tcp with CURVE, and `there`
        # (no supervisor on its own run dir) is UNREACHABLE.
        elsewhere = str(config.parent / "there-run")
        started = time.monotonic()
        result = up.cli("status", "--all", "--json", "--host", "there", "--run-dir", elsewhere, "--timeout", "1")
        assert result.returncode == 5, describe(result)
        data = json.loads(result.stdout)
        assert sorted(data) == ["hosts"] and sorted(data["hosts"]) == ["here", "there"]
        here, there = data["hosts"]["here"], data["hosts"]["there"]
        assert here["reachable"] is True and here["error"] is None
        assert [d["name"] for d in here["status"]["devices"]] == ["mine"]
        assert here["status"]["supervisor"]["remote_control"] == f"tcp://127.0.0.1:{port}"
        assert there == {"reachable": False, "error": there["error"], "status": None} and there["error"]
        text = up.cli("status", "--all", "--host", "there", "--run-dir", elsewhere, "--timeout", "1")
        assert text.returncode == 5, describe(text)
        assert text.stdout.splitlines()[0].split()[:3] == ["HOST", "NAME", "STATE"], text.stdout
        assert any(line.split()[:3] == ["here", "mine", "RUNNING"] for line in text.stdout.splitlines()), text.stdout
        assert any(line.split()[:2] == ["there", "UNREACHABLE"] for line in text.stdout.splitlines()), text.stdout
        assert time.monotonic() - started < 20  # bounded by --timeout, never a hang

        # A device command for a device of `here`, given as host `there`: routed over CURVE.
        old = up.devices()["mine"]["pid"]
        restart = up.cli("restart", "mine", "--host", "there", "--run-dir", elsewhere)
        assert restart.returncode == 0, describe(restart)
        assert up.devices()["mine"]["pid"] != old


@pytest.mark.timeout(90)
def test_a_peer_without_an_admitted_key_gets_no_answer(
    cluster: tuple[Path, int], zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config, port = cluster
    keys = config.parent / "keys"
    outsider = config.parent / "outsider"
    outsider.mkdir()
    zmq.auth.create_certificates(outsider, "intruder")
    endpoint = f"tcp://127.0.0.1:{port}"
    server_key, _ = zmq.auth.load_certificate(keys / "server.key")

    def ask(sock: zmq.Socket[bytes]) -> bool:
        sock.linger = 0
        sock.connect(endpoint)
        sock.send(supervisor_request(SupervisorCommand.STATUS))
        return bool(sock.poll(1500))

    with Up(config) as up:
        up.wait_states({"mine": "RUNNING"})
        plain = zmq_ctx.socket(zmq.REQ)
        assert not ask(plain), "a peer without CURVE got an answer"
        stranger = zmq_ctx.socket(zmq.REQ)
        stranger.curve_serverkey = server_key
        stranger.curve_publickey, stranger.curve_secretkey = zmq.auth.load_certificate(outsider / "intruder.key_secret")
        assert not ask(stranger), "a CURVE peer with a key not in the keys directory got an answer"
        admitted = zmq_ctx.socket(zmq.REQ)
        admitted.curve_serverkey = server_key
        admitted.curve_publickey, admitted.curve_secretkey = zmq.auth.load_certificate(keys / "client.key_secret")
        assert ask(admitted), "the admitted client got no answer"
        assert json.loads(admitted.recv())["ok"] is True
        # A crowd of refused handshakes at once: the authenticator thread takes them, the
        # supervisor's loop never sees them; it answers, and its device was never restarted.
        pid = up.devices()["mine"]["pid"]
        crowd = []
        for _ in range(100):
            peer = zmq_ctx.socket(zmq.DEALER)
            peer.linger = 0
            peer.curve_serverkey = server_key
            peer.curve_publickey, peer.curve_secretkey = zmq.auth.load_certificate(outsider / "intruder.key_secret")
            peer.connect(endpoint)
            crowd.append(peer)
        again = zmq_ctx.socket(zmq.REQ)
        again.curve_serverkey = server_key
        again.curve_publickey, again.curve_secretkey = zmq.auth.load_certificate(keys / "client.key_secret")
        assert ask(again), "the admitted client got no answer while refused peers knocked"
        assert json.loads(again.recv())["ok"] is True
        mine = up.devices()["mine"]
        assert (mine["state"], mine["pid"], mine["restarts"]) == ("RUNNING", pid, 0)
