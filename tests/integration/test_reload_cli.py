"""`reload`, SIGHUP and `scale` against a real `up`: which processes are kept, which replaced."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import zmq
from support.cli import Up, describe, push_pull, write_topology


def streamer(name: str, *, kind: str = "streamer", replicas: int = 1) -> str:
    suffix = "-{replica}" if replicas > 1 else ""
    return (
        f'[devices.{name}]\nkind = "{kind}"\nreplicas = {replicas}\n'
        f'in  = {{ bind = ["ipc://{name}{suffix}-in.sock"] }}\n'
        f'out = {{ bind = ["ipc://{name}{suffix}-out.sock"] }}\n\n'
    )


def pids(up: Up) -> dict[str, int]:
    return {name: d["pid"] for name, d in up.devices().items()}


@pytest.mark.timeout(120)
def test_reload_applies_the_difference_and_keeps_unchanged_processes(
    short_tmp: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config = write_topology(short_tmp, streamer("same") + streamer("changed") + streamer("removed"), pool_size=1)
    with Up(config) as up:
        before = {n: d["pid"] for n, d in up.wait_states().items()}
        write_topology(short_tmp, streamer("same") + streamer("changed", kind="queue") + streamer("added"), pool_size=1)
        result = up.cli("reload")
        assert result.returncode == 0, describe(result)
        assert "restarted  changed" in result.stdout and "started    added" in result.stdout, result.stdout
        assert "stopped    removed" in result.stdout and "unchanged  same" in result.stdout, result.stdout
        after = {
            n: d["pid"]
            for n, d in up.wait_states({"same": "RUNNING", "changed": "RUNNING", "added": "RUNNING"}).items()
        }
        assert set(after) == {"same", "changed", "added"}
        assert after["same"] == before["same"], "an unchanged device was restarted"
        assert after["changed"] != before["changed"]
        assert up.devices()["changed"]["kind"] == "queue"
        push_pull(zmq_ctx, f"ipc://{short_tmp}/same-in.sock", f"ipc://{short_tmp}/same-out.sock", [b"kept"])
        assert "removed: STOPPED (stopped through the control socket)" in up.log(), up.log_tail()


@pytest.mark.timeout(90)
def test_an_invalid_file_on_reload_changes_nothing(short_tmp: Path) -> None:
    config = write_topology(short_tmp, streamer("pipe"), pool_size=0)
    with Up(config) as up:
        before = pids(up) if up.wait_states() else {}
        config.write_text(config.read_text().replace('kind = "streamer"', 'kind = "streamr"'))
        result = up.cli("reload")
        assert result.returncode == 78, describe(result)
        assert result.stderr.count("\n") == 1 and "devices.pipe.kind" in result.stderr, describe(result)
        assert "reload refused, nothing changed" in up.log(), up.log_tail()
        assert pids(up) == before


@pytest.mark.timeout(90)
def test_sighup_reloads_the_file(short_tmp: Path) -> None:
    config = write_topology(short_tmp, streamer("pipe"), pool_size=0)
    with Up(config) as up:
        before = up.wait_states()["pipe"]["pid"]
        write_topology(short_tmp, streamer("pipe") + streamer("extra"), pool_size=0)
        up.signal(signal.SIGHUP)
        up.wait_until(lambda: "extra" in pids(up), 20, "the reload to add the new device")
        devices = up.wait_states({"pipe": "RUNNING", "extra": "RUNNING"})
        assert devices["pipe"]["pid"] == before
        assert "reloaded" in up.log() and up.running()


@pytest.mark.timeout(90)
def test_scale_up_and_down(short_tmp: Path) -> None:
    config = write_topology(short_tmp, streamer("pipe", replicas=2), pool_size=1)
    with Up(config) as up:
        before = pids(up) if up.wait_states() else {}
        result = up.cli("scale", "pipe", "4")
        assert result.returncode == 0, describe(result)
        now = up.wait_states({f"pipe.{i}": "RUNNING" for i in range(4)})
        assert {n: now[n]["pid"] for n in before} == before, "scaling up restarted running replicas"
        status = up.status()
        assert status["supervisor"]["scaled"] == {"pipe": {"file": 2, "running": 4}}
        result = up.cli("scale", "pipe", "3")
        assert result.returncode == 0, describe(result)
        up.wait_until(lambda: set(pids(up)) == {"pipe.0", "pipe.1", "pipe.2"}, 20, "pipe.3 to be gone")
        assert {n: pids(up)[n] for n in before} == before
