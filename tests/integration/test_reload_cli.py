"""`reload`, SIGHUP and `scale` against a real `up`: which processes are kept, which replaced."""

from __future__ import annotations

import select
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from support.cli import Up, describe, push_pull, write_topology

from procdevices.supervisor.config import IPC_PATH_MAX


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


STAR_DEVICE = """\
[devices.star]
kind = "streamer"
in  = { bind = ["tcp://127.0.0.1:*"] }
out = { bind = ["tcp://127.0.0.1:*"] }

"""


class SequenceFlow:
    """Sequence numbers pushed into ``front`` and pulled from ``back`` by two threads, while
    the test does something else; ``finish`` says what never arrived."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], front: str, back: str) -> None:
        self.ctx, self.front, self.back = ctx, front, back
        self.sent = 0
        self.received: list[int] = []
        self.stop_sending = threading.Event()
        self.receiver_ready = threading.Event()
        self.threads = [threading.Thread(target=self._receive), threading.Thread(target=self._send)]
        self.errors: list[BaseException] = []

    def __enter__(self) -> SequenceFlow:
        self.threads[0].start()
        assert self.receiver_ready.wait(10), "the receiver did not connect"
        self.threads[1].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_sending.set()
        self.received_all = self._wait_received()
        for thread in self.threads:
            thread.join(10)

    def _send(self) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.linger = 5000
        push.connect(self.front)
        try:
            while not self.stop_sending.is_set():
                push.send(self.sent.to_bytes(8, "big"))
                self.sent += 1
        except BaseException as e:  # pragma: no cover - reported by the test
            self.errors.append(e)
        finally:
            push.close()

    def _receive(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.linger = 0
        pull.connect(self.back)
        self.receiver_ready.set()
        try:
            while True:
                if not pull.poll(3000):  # 3 s with nothing: whatever was lost stays lost
                    if self.stop_sending.is_set():
                        return
                    continue
                self.received.append(int.from_bytes(pull.recv(), "big"))
                if self.stop_sending.is_set() and len(self.received) >= self.sent:
                    return
        finally:
            pull.close()

    def _wait_received(self) -> bool:
        self.threads[1].join(10)
        self.threads[0].join(30)
        return len(self.received) == self.sent


@pytest.mark.timeout(150)
def test_an_unchanged_star_device_keeps_its_process_and_every_message(
    short_tmp: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """An unchanged `reload`, a SIGHUP and a `scale` of another device leave a device bound to
    `tcp://127.0.0.1:*` alone: same pid, and a sequence-numbered flow through it loses nothing."""
    config = write_topology(short_tmp, STAR_DEVICE + streamer("other", replicas=2), pool_size=1)
    with Up(config) as up:
        devices = up.wait_states()
        pid = devices["star"]["pid"]
        front, back = devices["star"]["endpoints"]["in"][0], devices["star"]["endpoints"]["out"][0]
        assert front.startswith("tcp://127.0.0.1:") and not front.endswith(":*"), devices["star"]
        with SequenceFlow(zmq_ctx, front, back) as flow:
            up.wait_until(lambda: len(flow.received) > 1000, 20, "the flow to start")
            result = up.cli("reload")
            assert result.returncode == 0, describe(result)
            assert "unchanged  other.0, other.1, star" in result.stdout, result.stdout
            reloads = up.log().count("reloaded ")
            up.signal(signal.SIGHUP)
            up.wait_until(lambda: up.log().count("reloaded ") > reloads, 20, "the SIGHUP reload")
            result = up.cli("scale", "other", "3")
            assert result.returncode == 0, describe(result)
            seen = len(flow.received)
            up.wait_until(lambda: len(flow.received) > seen + 1000, 20, "the flow to go on after the changes")
        assert not flow.errors, flow.errors
        missing = flow.sent - len(set(flow.received))
        assert flow.received_all and missing == 0, f"{missing} of {flow.sent} messages lost"
        assert flow.received == sorted(flow.received), "messages arrived out of order"
        assert up.devices()["star"]["pid"] == pid, "the unchanged device was restarted"
        assert "restarted star" not in up.log() and "star: STOPPING" not in up.log(), up.log_tail()


@pytest.mark.timeout(120)
def test_scale_past_the_path_limit_is_refused_like_check_and_changes_nothing(short_tmp: Path) -> None:
    """Replica 10 of this device would bind an ipc path one byte over the unix socket limit:
    `scale` refuses it before touching anything, with the line `check` prints for a file
    that asks for the same."""
    stem = f"{short_tmp}/"
    path = stem + "p" * (IPC_PATH_MAX - len(stem) - 1) + "{replica}"
    long = f'[devices.long]\nkind = "streamer"\nin = {{ bind = ["ipc://{path}"] }}\nout = {{ bind = ["tcp://127.0.0.1:*"] }}\n'
    config = write_topology(short_tmp, long + streamer("other"), pool_size=0)
    with Up(config) as up:
        before = {n: d["pid"] for n, d in up.wait_states().items()}
        running = config.read_text()
        config.write_text(
            running.replace(
                'kind = "streamer"\nin = { bind = ["ipc', 'kind = "streamer"\nreplicas = 11\nin = { bind = ["ipc', 1
            )
        )
        checked = up.cli("check")
        config.write_text(running)
        assert checked.returncode == 78 and "is 108 bytes" in checked.stderr, describe(checked)
        why = checked.stderr.removeprefix("procdevices: ")

        result = up.cli("scale", "long", "11")

        assert result.returncode == 78, describe(result)
        assert result.stderr == f"procdevices: scale: {why}", describe(result)
        assert pids(up) == before, "a running instance changed"
        assert up.status()["supervisor"]["scaled"] == {}
        assert "scale long to 11 refused, nothing changed" in up.log(), up.log_tail()


@pytest.mark.timeout(150)
def test_renaming_reloads_leave_no_connection_to_removed_devices(short_tmp: Path) -> None:
    """Each reload renames the device: the supervisor must forget the control socket of every
    device it removed. Before, it kept trying to connect to each one, ten times a second, for
    the life of the supervisor (994 failed connects a second after 150 renames)."""
    config = write_topology(short_tmp, streamer("keep") + streamer("name0"), pool_size=1)
    renames = 4
    with Up(config) as up:
        up.wait_states()
        for n in range(1, renames + 1):
            write_topology(short_tmp, streamer("keep") + streamer(f"name{n}"), pool_size=1)
            result = up.cli("reload")
            assert result.returncode == 0, describe(result)
            up.wait_states({"keep": "RUNNING", f"name{n}": "RUNNING"})
            up.wait_until(_removed(up, f"name{n - 1}"), 20, f"name{n - 1} to be removed")
        ctl = short_tmp / "run" / "ctl"
        for n in range(renames):
            path = ctl / f"name{n}.sock"
            assert not path.exists(), "a removed device left its control socket"
            assert not _connects_within(path, 1.0), f"the supervisor still tries to reach removed name{n}"
        assert up.running() and set(pids(up)) == {"keep", f"name{renames}"}


def _removed(up: Up, name: str) -> Callable[[], bool]:
    return lambda: name not in pids(up)


def _connects_within(path: Path, seconds: float) -> bool:
    """Whether anything connects to a unix socket listening at ``path`` within ``seconds``
    (libzmq retries a lost ipc connection every 100 ms)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(8)
        return bool(select.select([listener], [], [], seconds)[0])
    finally:
        listener.close()
        path.unlink(missing_ok=True)
