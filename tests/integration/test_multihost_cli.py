"""Multi-host commands on one machine (no namespaces needed): endpoints, host choice, export,
keys. The namespace scenarios are in test_multihost_netns.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from support.cli import Up, cli, connect, describe, expect_silence, free_tcp_port, push_pull, request_reply

THREE_HOSTS = """\
[hosts.a]
address = "10.77.0.1"

[hosts.b]
address = "10.77.0.2"

[hosts.c]
address = "10.77.0.3"

[supervisor.defaults]
host = "b"

[devices.broker]
kind = "queue"
in = { bind = ["tcp://*:7001"] }
out = { bind = ["tcp://0.0.0.0:7002"] }

[devices.edge]
host = "a"
kind = "streamer"
in = { bind = ["tcp://127.0.0.1:7101"] }
out = { connect = ["@broker.in"] }

[devices.worker]
host = "c"
kind = "streamer"
replicas = 2
in = { connect = ["@broker.out"] }
out = { bind = ["tcp://*:720{replica}"] }
"""


@pytest.fixture
def three(tmp_path: Path) -> Path:
    path = tmp_path / "three.toml"
    path.write_text(THREE_HOSTS)
    return path


@pytest.mark.timeout(60)
def test_endpoints_json_is_device_role_endpoints(three: Path) -> None:
    result = cli("endpoints", "--json", "-c", str(three), cwd=three.parent)
    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout) == {
        "broker": {"in": ["tcp://10.77.0.2:7001"], "out": ["tcp://10.77.0.2:7002"]},
        "edge": {"in": ["tcp://127.0.0.1:7101"]},
        "worker": {"out": ["tcp://10.77.0.3:7200", "tcp://10.77.0.3:7201"]},
    }
    checked = cli("check", "-c", str(three), cwd=three.parent)
    assert checked.returncode == 0, describe(checked)
    assert "  host b: 10.77.0.2\n" in checked.stdout and "worker.1" in checked.stdout, checked.stdout
    assert any(line.split()[0] == "worker.1" and line.endswith(" on c") for line in checked.stdout.splitlines())
    text = cli("endpoints", "-c", str(three), cwd=three.parent)
    assert text.returncode == 0, describe(text)
    assert text.stdout.splitlines()[0].split() == ["HOST", "DEVICE", "ROLE", "ENDPOINT"]
    assert "c     worker  out   tcp://10.77.0.3:7201" in text.stdout, text.stdout


LOCAL_AND_REMOTE = """\
[supervisor]
run_dir = "run"
pool_size = 0

[hosts.here]
address = "127.0.0.1"

[hosts.there]
address = "10.77.0.2"

[devices.mine]
host = "here"
kind = "queue"
in = { bind = ["ipc://mine-in.sock"] }
out = { bind = ["ipc://mine-out.sock"] }

[devices.theirs]
host = "there"
kind = "queue"
in = { bind = ["tcp://*:*"] }
out = { connect = ["tcp://10.77.0.1:7000"] }
"""


@pytest.mark.timeout(60)
def test_up_runs_only_the_devices_of_the_host_this_machine_is(
    short_tmp: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config = short_tmp / "topology.toml"
    config.write_text(LOCAL_AND_REMOTE)
    with Up(config) as up:  # no --host: 127.0.0.1 is this machine's, 10.77.0.2 is not
        devices = up.wait_states({"mine": "RUNNING"})
        assert sorted(devices) == ["mine"], devices
        request_reply(zmq_ctx, f"ipc://{short_tmp}/mine-in.sock", f"ipc://{short_tmp}/mine-out.sock")
        # A reload keeps to this host: a new device of `here` starts, one of `there` does not.
        config.write_text(
            LOCAL_AND_REMOTE
            + '\n[devices.more]\nhost = "here"\nkind = "queue"\nin = { bind = ["ipc://more-in.sock"] }\n'
            + 'out = { bind = ["ipc://more-out.sock"] }\n'
            + '\n[devices.far]\nhost = "there"\nkind = "queue"\nin = { bind = ["tcp://*:*"] }\n'
            + 'out = { bind = ["tcp://*:*"] }\n'
        )
        reloaded = up.cli("reload")
        assert reloaded.returncode == 0, describe(reloaded)
        devices = up.wait_states({"mine": "RUNNING", "more": "RUNNING"})
        assert sorted(devices) == ["mine", "more"], devices
    down = cli("up", "--host", "nowhere", "-c", str(config), cwd=short_tmp)
    assert down.returncode == 78, describe(down)
    assert "unknown host 'nowhere'" in down.stderr and "defines here, there" in down.stderr, describe(down)


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_export_systemd_passes_systemd_analyze_verify(three: Path) -> None:
    result = cli("export", "systemd", "--host", "b", "-c", str(three), cwd=three.parent)
    assert result.returncode == 0, describe(result)
    unit = three.parent / "procdevices-b.service"
    unit.write_text(result.stdout)
    assert "Type=notify" in result.stdout and "KillMode=process" in result.stdout
    assert f'"up" "-c" "{three}" "--host" "b"' in result.stdout
    assert "PrivateTmp" not in result.stdout.replace("No PrivateTmp", "")  # ipc files stay visible
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30, cwd=three.parent
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


@pytest.mark.timeout(60)
def test_export_supervisord_runs_up_for_the_host(three: Path) -> None:
    result = cli("export", "supervisord", "--host", "c", "-c", str(three), cwd=three.parent)
    assert result.returncode == 0, describe(result)
    assert "[program:procdevices-c]" in result.stdout
    assert f"command = {sys.executable} -m procdevices up -c {three} --host c\n" in result.stdout
    # The same generator as supervisord-conf: the same stop budget rules and program keys.
    assert "stopasgroup = false\n" in result.stdout and "killasgroup = true\n" in result.stdout
    unknown = cli("export", "systemd", "--host", "d", "-c", str(three), cwd=three.parent)
    assert unknown.returncode == 78 and "unknown host 'd'" in unknown.stderr, describe(unknown)


@pytest.mark.timeout(60)
def test_a_file_without_hosts_ignores_procdevices_host_but_refuses_the_flag(short_tmp: Path) -> None:
    config = short_tmp / "one.toml"
    config.write_text(
        '[devices.q]\nkind = "queue"\nin = { bind = ["tcp://127.0.0.1:*"] }\nout = { bind = ["tcp://127.0.0.1:*"] }\n'
    )
    env = {**os.environ, "PROCDEVICES_HOST": "elsewhere"}
    exported = subprocess.run(
        [sys.executable, "-m", "procdevices", "export", "systemd", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=short_tmp,
        env=env,
    )
    assert exported.returncode == 0, exported.stderr
    assert '"up" "-c"' in exported.stdout and "--host" not in exported.stdout
    flagged = cli("up", "--host", "a", "-c", str(config), cwd=short_tmp)
    assert flagged.returncode == 78 and "defines no [hosts]" in flagged.stderr, describe(flagged)
    bad = cli("status", "--all", "--timeout", "-1", "-c", str(config), cwd=short_tmp)
    assert bad.returncode == 2 and "expected seconds > 0" in bad.stderr, describe(bad)


@pytest.mark.timeout(90)
def test_curve_server_socket_carries_referenced_traffic_and_refuses_plain_peers(
    short_tmp: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    assert cli("keys", "generate", str(short_tmp / "keys"), cwd=short_tmp).returncode == 0
    port = free_tcp_port()
    config = short_tmp / "topology.toml"
    config.write_text(
        f"""\
[supervisor]
run_dir = "run"
pool_size = 0

[cluster]
keys = "keys"

[devices.x]
kind = "streamer"
in = {{ bind = ["tcp://127.0.0.1:{port}"], curve = "server" }}
out = {{ bind = ["ipc://x-out.sock"] }}

[devices.y]
kind = "streamer"
in = {{ bind = ["ipc://y-in.sock"] }}
out = {{ connect = ["@x.in"] }}
"""
    )
    with Up(config) as up:
        up.wait_states({"x": "RUNNING", "y": "RUNNING"})
        # y's out got the client keys: encrypted all the way, every message arrives.
        push_pull(zmq_ctx, f"ipc://{short_tmp}/y-in.sock", f"ipc://{short_tmp}/x-out.sock", [b"a", b"b", b"c"])
        # A plain peer on x's CURVE socket: its messages never come out.
        pull = connect(zmq_ctx, zmq.PULL, f"ipc://{short_tmp}/x-out.sock")
        plain = connect(zmq_ctx, zmq.PUSH, f"tcp://127.0.0.1:{port}")
        if plain.poll(1000, zmq.POLLOUT):  # a PUSH is writable only once a handshake succeeded
            plain.send(b"plain")
        expect_silence(pull, "x's out, from a peer without CURVE", ms=1000)
