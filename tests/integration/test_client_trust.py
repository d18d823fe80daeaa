"""Client commands trust only a run dir ``up`` would trust: a foreign-owned or group/world
writable run dir is refused with one line and exit 78, even when a socket in it answers (the
squatter's "supervisor" never gets to speak)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from support.cli import CLI, RUN_DIR, cli, describe, write_topology
from support.topologies import PIPELINE

NOBODY = 65534

# What a squatter's fake supervisor answers to everything: all RUNNING, exit 0 for `status`.
FAKE_STATUS = {
    "ok": True,
    "result": {"devices": [{"name": "pipe", "state": "RUNNING", "pid": 1, "last_exit": ""}], "pid": 1},
}

CLIENT_COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("stop", "pipe"),
    ("down",),
    ("events",),
    ("logs", "pipe"),
    ("tap", "pipe"),
]


@pytest.fixture
def config(short_tmp: Path) -> Path:
    return write_topology(short_tmp, PIPELINE, pool_size=0)


@pytest.fixture
def fake_supervisor(config: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Path]:
    """A run dir with a socket that answers every request like a healthy supervisor."""
    run_dir = config.parent / RUN_DIR
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "pipe.log").write_text("forged log line\n")
    sock = zmq_ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(f"ipc://{run_dir}/supervisor.sock")
    pub = zmq_ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind(f"ipc://{run_dir}/events.sock")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(50):
                *envelope, _ = sock.recv_multipart()
                sock.send_multipart([*envelope, json.dumps(FAKE_STATUS).encode()])
            pub.send(json.dumps({"type": "supervisor", "state": "stopped"}).encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield run_dir
    finally:
        stop.set()
        thread.join(5)


def assert_refused(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 78, describe(result)
    assert result.stderr.startswith("procdevices: ") and result.stderr.count("\n") == 1, describe(result)
    assert needle in result.stderr, describe(result)
    assert "RUNNING" not in result.stdout and "forged" not in result.stdout, describe(result)


@pytest.mark.timeout(120)
def test_a_baseline_trusted_run_dir_reaches_the_fake(config: Path, fake_supervisor: Path) -> None:
    # The refusals below are refusals, not a fake that does not answer: ours is believed.
    fake_supervisor.chmod(0o700)
    result = cli("status", "--json", config=config)
    assert result.returncode == 0 and "RUNNING" in result.stdout, describe(result)


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
@pytest.mark.timeout(120)
def test_clients_refuse_a_foreign_owned_run_dir(config: Path, fake_supervisor: Path, command: tuple[str, ...]) -> None:
    fake_supervisor.chmod(0o755)
    os.chown(fake_supervisor, NOBODY, NOBODY)
    assert_refused(cli(*command, config=config), f"run dir {fake_supervisor} is owned by uid {NOBODY}, not by us")


@pytest.mark.parametrize("mode", [0o770, 0o707], ids=["0770", "0707"])
@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
@pytest.mark.timeout(120)
def test_clients_refuse_a_run_dir_writable_by_others(
    config: Path, fake_supervisor: Path, command: tuple[str, ...], mode: int
) -> None:
    fake_supervisor.chmod(mode)
    assert_refused(cli(*command, config=config), f"run dir {fake_supervisor} is writable by others (mode {mode:04o})")


@pytest.mark.timeout(60)
def test_the_default_run_dir_squatted_is_refused_too(short_tmp: Path, fake_supervisor: Path) -> None:
    # Through --run-dir and $PROCDEVICES_RUN_DIR alike (how /tmp/procdevices-UID is reached).
    fake_supervisor.chmod(0o777)
    assert_refused(cli("status", "--run-dir", str(fake_supervisor)), "is writable by others")
    env = {**os.environ, "PROCDEVICES_RUN_DIR": str(fake_supervisor)}
    result = subprocess.run(
        [*CLI, "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=short_tmp,
    )
    assert_refused(result, "is writable by others")
