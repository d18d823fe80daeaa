"""``procdevices tap`` and ``procdevices.tap()``: every kind tapped with known traffic (content,
order, direction where the device knows it), the CLI's -n, --duration, --grep, --sample and
jsonl, a tap across a SIGKILL restart, a SIGSTOPped tap reader that must not slow the device,
two taps at once, and one clear line (exit 1) for a stopped or FATAL device."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from support.cli import Up, cli, describe, finish_cli, wait_for, write_topology

from procdevices import Tap, TapMessage

pytestmark = pytest.mark.timeout(120)

Ctx = zmq.Context[zmq.Socket[bytes]]
Sock = zmq.Socket[bytes]

TWO_WAY = """\
[devices.dev]
kind = "{kind}"
in  = {{ bind = ["ipc://in.sock"] }}
out = {{ bind = ["ipc://out.sock"] }}
"""
ONE_WAY = {
    "forwarder": TWO_WAY,
    "streamer": TWO_WAY,
}
MONITORED = TWO_WAY + 'mon = {{ bind = ["ipc://mon.sock"] }}\n'
REPLICATED = """\
[devices.dev]
kind = "streamer"
replicas = 2
in  = { bind = ["ipc://in-{replica}.sock"] }
out = { bind = ["ipc://out-{replica}.sock"] }
"""
# The device binds itself (own_sockets = false) inside a directory that does not exist: FATAL.
UNBINDABLE = """\
[devices.broken]
kind = "streamer"
own_sockets = false
intensity = { max_restarts = 0, within = 30.0 }
in  = { bind = ["ipc://missing/in.sock"] }
out = { bind = ["ipc://missing/out.sock"] }
"""

DEADLINE = 15.0


def _no_wait(seconds: float) -> None:
    """Each check below blocks on a socket itself (the tap's poll, a round trip)."""


def topology_for(kind: str) -> str:
    if kind in ("proxy", "monitored_queue"):
        return MONITORED.format(kind=kind)
    return TWO_WAY.format(kind=kind)


class Traffic:
    """Known traffic through a device bound at ``in.sock``/``out.sock`` (suffix for replicas):
    request/reply round trips for the two-way kinds, one-way messages for the others."""

    def __init__(self, ctx: Ctx, directory: Path, kind: str, suffix: str = "") -> None:
        self.kind = kind
        self.one_way = kind in ("forwarder", "streamer")
        front, back = f"ipc://{directory}/in{suffix}.sock", f"ipc://{directory}/out{suffix}.sock"
        if kind == "forwarder":
            self.sender, self.receiver = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
            self.receiver.subscribe(b"")
        elif kind == "streamer":
            self.sender, self.receiver = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        else:
            self.sender, self.receiver = ctx.socket(zmq.REQ), ctx.socket(zmq.REP)
            # A request lost with a killed device is given up, not waited for forever.
            self.sender.setsockopt(zmq.REQ_RELAXED, 1)
            self.sender.setsockopt(zmq.REQ_CORRELATE, 1)
        for sock in (self.sender, self.receiver):
            sock.linger = 0
        self.sender.connect(front)
        self.receiver.connect(back)

    def close(self) -> None:
        self.sender.close(linger=0)
        self.receiver.close(linger=0)

    def send(self, payload: bytes) -> bool:
        """One message (one round trip); whether it made it through the device in time."""
        self.sender.send(payload)
        if not self.receiver.poll(200 if self.one_way else 5000):
            return False
        got = self.receiver.recv()
        if self.one_way:
            return got == payload
        self.receiver.send(b"re:" + got)
        assert self.sender.poll(5000), "no reply"
        self.sender.recv()
        return True


def last_frame(message: TapMessage) -> bytes:
    return message.frames[-1]


def attach(tap: Tap, traffic: Traffic) -> None:
    """Send warm-up messages until the tap sees one: the subscription has reached the device
    (a PUB drops everything before that). Warm-up messages are ignored afterwards."""

    def seen() -> bool:
        traffic.send(b"warm")
        message = tap.next(time.monotonic() + 0.2)
        return message is not None and b"warm" in last_frame(message)

    wait_for(lambda: seen() or None, DEADLINE, "the tap to see the warm-up traffic", wake=_no_wait)


def collect(tap: Tap, count: int) -> list[TapMessage]:
    """The next ``count`` messages that are not warm-up traffic."""
    deadline = time.monotonic() + DEADLINE
    got: list[TapMessage] = []
    while len(got) < count:
        message = tap.next(deadline)
        assert message is not None, f"the tap showed {len(got)} of {count} messages: {got}"
        if b"warm" not in last_frame(message):
            got.append(message)
    return got


@pytest.mark.parametrize("kind", ["queue", "forwarder", "streamer", "proxy", "steerable", "monitored_queue"])
def test_each_kind_is_tapped_in_order_with_content_and_direction(short_tmp: Path, zmq_ctx: Ctx, kind: str) -> None:
    config = write_topology(short_tmp, topology_for(kind))
    with Up(config) as up:
        up.wait_states({"dev": "RUNNING"})
        traffic = Traffic(zmq_ctx, short_tmp, kind)
        with Tap("dev", short_tmp / "run") as tap:
            attach(tap, traffic)
            payloads = [b"m%d" % i for i in range(5)]
            for payload in payloads:
                assert traffic.send(payload), f"{payload!r} did not pass the device"
            if traffic.one_way:
                seen = collect(tap, len(payloads))
                assert [last_frame(m) for m in seen] == payloads
                assert {m.dir for m in seen} == {"in"}  # a one-way device: everything goes in -> out
            else:
                seen = collect(tap, 2 * len(payloads))
                expected = [frame for p in payloads for frame in (p, b"re:" + p)]
                assert [last_frame(m) for m in seen] == expected
                # The whole envelope passes: [routing id, request id (REQ_CORRELATE), b"", payload].
                assert all(len(m.frames) == 4 and m.frames[2] == b"" for m in seen), seen
                if kind == "monitored_queue":
                    assert [m.dir for m in seen] == ["in", "out"] * len(payloads)
                else:
                    assert {m.dir for m in seen} == {"?"}  # libzmq's capture carries no direction
            assert all(m.device == "dev" for m in seen)
            assert [m.seq for m in seen] == sorted(m.seq for m in seen)


def test_a_replica_is_tapped_as_name_dot_n(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, REPLICATED)
    with Up(config) as up:
        up.wait_states({"dev.0": "RUNNING", "dev.1": "RUNNING"})
        traffic = Traffic(zmq_ctx, short_tmp, "streamer", "-1")
        with Tap("dev.1", short_tmp / "run") as tap:
            attach(tap, traffic)
            assert traffic.send(b"to-one")
            (message,) = collect(tap, 1)
            assert message.device == "dev.1" and message.frames == (b"to-one",)
        result = up.cli("tap", "dev", "-n", "1")
        assert result.returncode == 1, describe(result)
        assert "tap one of them, as NAME.N" in result.stderr


def run_tap_cli(
    up: Up, traffic: Traffic, *args: str, payload: Callable[[int], bytes] = lambda i: b"p%d" % i
) -> subprocess.CompletedProcess[str]:
    """Run ``tap dev ARGS --format jsonl``, sending ``payload(i)`` until it exits."""
    proc = up.start_cli("tap", "dev", "--format", "jsonl", *args)
    deadline = time.monotonic() + DEADLINE
    i = 0
    while proc.poll() is None and time.monotonic() < deadline:
        traffic.send(payload(i))
        i += 1
        # A steady trickle, not a flood (the point is the filters), ended by the tap's exit.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.005)
    return finish_cli(proc)


def jsonl(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for line in lines:
        assert set(line) == {"ts", "device", "dir", "seq", "frames"}, line
    return lines


def payload_text(line: dict[str, object]) -> str:
    frames = line["frames"]
    assert isinstance(frames, list)
    return str(frames[-1]["text"])


@pytest.fixture
def streamer(short_tmp: Path, zmq_ctx: Ctx) -> Iterator[tuple[Up, Traffic]]:
    config = write_topology(short_tmp, TWO_WAY.format(kind="streamer"))
    with Up(config) as up:
        up.wait_states({"dev": "RUNNING"})
        yield up, Traffic(zmq_ctx, short_tmp, "streamer")


def test_cli_n_stops_after_count_and_prints_jsonl_and_a_trailer(streamer: tuple[Up, Traffic]) -> None:
    up, traffic = streamer
    result = run_tap_cli(up, traffic, "-n", "3")
    assert result.returncode == 0, describe(result)
    lines = jsonl(result)
    assert len(lines) == 3
    first = lines[0]
    assert first["device"] == "dev" and first["dir"] == "in"
    frames = first["frames"]
    assert isinstance(frames, list) and frames[0]["len"] == len(frames[0]["text"])
    numbers = [int(payload_text(line)[1:]) for line in lines]
    assert numbers == sorted(numbers)
    assert "3 messages shown (3 frames)" in result.stderr, describe(result)


def test_cli_grep_shows_only_matching_messages(streamer: tuple[Up, Traffic]) -> None:
    up, traffic = streamer
    result = run_tap_cli(
        up, traffic, "-n", "4", "--grep", "^keep", payload=lambda i: b"keep%d" % i if i % 2 else b"drop%d" % i
    )
    assert result.returncode == 0, describe(result)
    texts = [payload_text(line) for line in jsonl(result)]
    assert len(texts) == 4 and all(t.startswith("keep") for t in texts), texts


def test_cli_prefix_shows_only_messages_whose_first_frame_starts_so(streamer: tuple[Up, Traffic]) -> None:
    up, traffic = streamer
    result = run_tap_cli(
        up, traffic, "-n", "3", "--prefix", "keep", payload=lambda i: b"keep%d" % i if i % 3 == 0 else b"x-keep%d" % i
    )
    assert result.returncode == 0, describe(result)
    texts = [payload_text(line) for line in jsonl(result)]
    assert len(texts) == 3 and all(t.startswith("keep") for t in texts), texts


def test_cli_sample_shows_every_nth_message(streamer: tuple[Up, Traffic]) -> None:
    up, traffic = streamer
    result = run_tap_cli(up, traffic, "-n", "4", "--sample", "3")
    assert result.returncode == 0, describe(result)
    lines = jsonl(result)
    seqs = [int(str(line["seq"])) for line in lines]
    numbers = [int(payload_text(line)[1:]) for line in lines]
    # Nothing is dropped at this rate: every third message received is shown.
    assert [b - a for a, b in itertools.pairwise(seqs)] == [3, 3, 3], seqs
    assert [b - a for a, b in itertools.pairwise(numbers)] == [3, 3, 3], numbers


def test_cli_duration_ends_the_tap_with_its_trailer(streamer: tuple[Up, Traffic]) -> None:
    up, _ = streamer
    started = time.monotonic()
    result = up.cli("tap", "dev", "--duration", "1")
    took = time.monotonic() - started
    assert result.returncode == 0, describe(result)
    assert 1.0 <= took < 10.0, took
    assert result.stdout == ""
    assert "0 messages shown" in result.stderr, describe(result)


def test_a_tap_follows_the_device_across_a_sigkill_restart(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, TWO_WAY.format(kind="queue"))
    with Up(config) as up:
        first = up.wait_states({"dev": "RUNNING"})["dev"]["pid"]
        traffic = Traffic(zmq_ctx, short_tmp, "queue")
        notes: list[str] = []
        with Tap("dev", short_tmp / "run", on_note=notes.append) as tap:
            attach(tap, traffic)
            assert traffic.send(b"before")
            assert [last_frame(m) for m in collect(tap, 2)] == [b"before", b"re:before"]
            os.kill(first, signal.SIGKILL)
            up.wait_states({"dev": "RUNNING"}, check=lambda d: d["dev"]["pid"] not in (None, first))
            traffic.close()  # a request lost with the killed device is nobody's to answer
            traffic = Traffic(zmq_ctx, short_tmp, "queue")
            attach(tap, traffic)
            assert traffic.send(b"after")
            assert [last_frame(m) for m in collect(tap, 2)] == [b"after", b"re:after"]
            wait_for(lambda: notes or None, DEADLINE, "the restart note", wake=lambda s: tap.next(time.monotonic() + s))
            assert len([n for n in notes if "restarted" in n]) == 1, notes


def test_two_taps_at_once_both_see_everything(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, MONITORED.format(kind="monitored_queue"))
    with Up(config) as up:
        up.wait_states({"dev": "RUNNING"})
        traffic = Traffic(zmq_ctx, short_tmp, "monitored_queue")
        with Tap("dev", short_tmp / "run") as one, Tap("dev", short_tmp / "run", side="out") as two:
            attach(one, traffic)
            wait_for(
                lambda: (traffic.send(b"warm") and two.next(time.monotonic() + 0.2)) or None,
                DEADLINE,
                "tap 2",
                wake=_no_wait,
            )
            for payload in (b"a", b"b"):
                assert traffic.send(payload)
            assert [last_frame(m) for m in collect(one, 4)] == [b"a", b"re:a", b"b", b"re:b"]
            seen = collect(two, 2)
            assert [(m.dir, last_frame(m)) for m in seen] == [("out", b"re:a"), ("out", b"re:b")]


def test_a_stalled_tap_reader_does_not_slow_the_device(short_tmp: Path, zmq_ctx: Ctx) -> None:
    """A SIGSTOPped tap: the device drops the copies it cannot queue and forwards everything;
    the same traffic takes about the same time as without the tap."""
    config = write_topology(short_tmp, TWO_WAY.format(kind="streamer"))
    total, payload = 4000, b"x" * 2000  # 8 MB: far more than the tap's queue and socket buffers
    with Up(config) as up:
        up.wait_states({"dev": "RUNNING"})
        traffic = Traffic(zmq_ctx, short_tmp, "streamer")
        proc = up.start_cli("tap", "dev", "--format", "raw")
        try:
            wait_for(
                lambda: (traffic.send(b"warm") and _has_output(proc)) or None,
                DEADLINE,
                "the tap to print",
                wake=_no_wait,
            )
            proc.send_signal(signal.SIGSTOP)
            sent = received = 0
            deadline = time.monotonic() + 60.0
            while received < total and time.monotonic() < deadline:
                if sent < total and traffic.sender.poll(0, zmq.POLLOUT):
                    traffic.sender.send(payload, zmq.NOBLOCK)
                    sent += 1
                elif traffic.receiver.poll(100):
                    traffic.receiver.recv()
                    received += 1
            assert received == total, f"the device forwarded {received} of {total} with a stalled tap"
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGINT)
            finish_cli(proc)


def _has_output(proc: subprocess.Popen[str]) -> bool:
    import select

    assert proc.stdout is not None
    return bool(select.select([proc.stdout], [], [], 0.2)[0])


@pytest.mark.parametrize("how", ["stopped", "fatal"])
def test_tapping_a_stopped_or_fatal_device_is_one_line_and_exit_1(short_tmp: Path, how: str) -> None:
    if how == "stopped":
        config = write_topology(short_tmp, TWO_WAY.format(kind="streamer"))
        name, state = "dev", "STOPPED"
    else:
        config = write_topology(short_tmp, UNBINDABLE, pool_size=0)
        name, state = "broken", "FATAL"
    with Up(config) as up:
        if how == "stopped":
            up.wait_states({name: "RUNNING"})
            assert up.cli("stop", name).returncode == 0
        up.wait_states({name: state})
        result = up.cli("tap", name)
        assert result.returncode == 1, describe(result)
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"procdevices: tap: {name} is {state}: nothing passes through it; start it first"
        ]


TWO_HOSTS = """\
[hosts.a]
address = "10.77.0.1"

[hosts.b]
address = "10.77.0.2"

[devices.edge]
host = "a"
kind = "streamer"
in = { bind = ["tcp://127.0.0.1:7101"] }
out = { bind = ["tcp://127.0.0.1:7102"] }

[devices.worker]
host = "b"
kind = "streamer"
in = { bind = ["tcp://127.0.0.1:7201"] }
out = { bind = ["tcp://127.0.0.1:7202"] }
"""


@pytest.mark.timeout(60)
def test_a_device_of_another_host_is_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "hosts.toml"
    config.write_text(TWO_HOSTS)
    result = cli("tap", "worker", "--host", "a", config=config)
    assert result.returncode == 1, describe(result)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "procdevices: tap: worker runs on host b; a tap is read only on the device's own host "
        "(run `procdevices tap worker` there)"
    ]


@pytest.mark.timeout(60)
def test_without_a_supervisor_tap_exits_4_in_one_line(short_tmp: Path) -> None:
    config = write_topology(short_tmp, TWO_WAY.format(kind="streamer"))
    result = cli("tap", "dev", config=config)
    assert result.returncode == 4, describe(result)
    assert result.stderr.splitlines() == [
        f"procdevices: tap: no supervisor is running with run dir {short_tmp / 'run'}"
    ]


def test_a_tap_follows_the_event_stream_and_does_not_poll_the_supervisor(short_tmp: Path, zmq_ctx: Ctx) -> None:
    config = write_topology(short_tmp, TWO_WAY.format(kind="streamer"))
    with Up(config) as up:
        first = up.wait_states({"dev": "RUNNING"})["dev"]["pid"]
        events = zmq_ctx.socket(zmq.SUB)
        events.linger = 0
        events.subscribe(b"")
        events.connect(f"ipc://{short_tmp}/run/events.sock")
        notes: list[str] = []
        with Tap("dev", short_tmp / "run", on_note=notes.append) as tap:
            # The restart is told by the event stream at once (no status poll is due for 5 s).
            killed = time.monotonic()
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: notes or None, 4.0, "the restart note", wake=lambda s: tap.next(time.monotonic() + s))
            assert time.monotonic() - killed < 4.0 and "restarted" in notes[0], notes
            quiet_from = time.time()
            tap.next(time.monotonic() + 3.0)  # a quiet spell: the tap reads the device, not `status`
        asked = []
        while events.poll(0):
            payload = json.loads(events.recv())
            if payload.get("type") == "command" and payload["command"] == "status":
                asked.append(payload["time"])
        events.close()
        # Polled, the supervisor would have been asked six times in that spell.
        assert [t for t in asked if t > quiet_from] == [], asked
