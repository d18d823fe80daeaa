"""The monitored queue's two loops, C and Python, side by side (``mq_loop`` runs each test
with each): pyzmq's semantics (prefixes, multipart, ROUTER/ROUTER id swap, one socket for in
and out, no monitor), libzmq's control protocol (PAUSE, RESUME, STATISTICS, TERMINATE,
anything else), the same counters; a signal in the main thread ends either loop with its
handler's exception, counters kept. And the C loop is the one in use wherever it could be
built, on pyzmq's own libzmq."""

from __future__ import annotations

import array
import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from support.devices import c_toolchain, recv_within

from procdevices.devices import cloop
from procdevices.devices import monitoredqueuedevice as mq
from procdevices.devices.monitoredqueuedevice import monitored_queue_steerable, new_counters

pytestmark = pytest.mark.timeout(60)

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]

QUIET_MS = 200
# The peer a test holds for each type of the loop's sockets.
PEER: dict[int, int] = {
    zmq.PULL: zmq.PUSH,
    zmq.PUSH: zmq.PULL,
    zmq.DEALER: zmq.DEALER,
    zmq.ROUTER: zmq.DEALER,
    zmq.PAIR: zmq.PAIR,
}

# Messages with the shapes that matter: an empty frame, frames around libzmq's 33-byte limit
# for data kept inside the message, one large frame, more frames than the C loop's first
# allocation (8).
MESSAGES = [
    [b"one"],
    [b"", b"empty first"],
    [b"x" * 33, b"y" * 34],
    [b"z" * 100_000],
    [bytes([i]) * i for i in range(20)],
]


def counted(messages: list[list[bytes]]) -> tuple[int, int]:
    """(frames, bytes) as STATISTICS counts them."""
    return sum(len(m) for m in messages), sum(len(f) for m in messages for f in m)


def assert_quiet(*socks: Socket) -> None:
    for sock in socks:
        assert not sock.poll(QUIET_MS), f"got {sock.recv_multipart()!r} while paused"


@dataclass
class Queue:
    """A monitored_queue_steerable running in a thread on inproc sockets, and the test's
    peers: ``front`` (of in), ``back`` (of out; None when in and out are one socket),
    ``mon`` (a PULL from the monitor's PUSH, None without a monitor) and ``steer`` (a REQ to
    the REP control socket)."""

    front: Socket
    back: Socket | None
    mon: Socket | None
    steer: Socket
    counters: array.array[int]
    thread: threading.Thread | None = None
    errors: list[BaseException] = field(default_factory=list)

    def command(self, *frames: bytes) -> list[bytes]:
        self.steer.send_multipart(list(frames))
        return recv_within(self.steer)

    def statistics(self) -> list[int]:
        frames = self.command(b"STATISTICS")
        assert [len(f) for f in frames] == [8] * 8
        return [int.from_bytes(f, sys.byteorder) for f in frames]


@dataclass
class Sockets:
    ins: Socket
    outs: Socket
    mons: Socket | None
    ctrl: Socket


def build(
    ctx: Context,
    in_type: int,
    out_type: int | None,
    *,
    with_mon: bool = True,
    ids: tuple[bytes | None, bytes | None] = (None, None),
    counters: array.array[int] | None = None,
) -> tuple[Sockets, Queue]:
    """The loop's sockets bound over inproc and the test's peers connected to them;
    ``out_type`` None: one socket for in and out."""
    base = f"inproc://mq-{uuid.uuid4().hex}"
    ins = ctx.socket(in_type)
    ins.bind(f"{base}-in")
    outs = ins
    if out_type is not None:
        outs = ctx.socket(out_type)
        outs.bind(f"{base}-out")
    mons = None
    if with_mon:
        mons = ctx.socket(zmq.PUSH)  # never drops: copies are counted exactly
        mons.bind(f"{base}-mon")
    ctrl = ctx.socket(zmq.REP)
    ctrl.bind(f"{base}-ctrl")

    def peer(kind: int, role: str, identity: bytes | None) -> Socket:
        sock = ctx.socket(kind)
        if identity is not None:
            sock.identity = identity
        sock.connect(f"{base}-{role}")
        return sock

    front = peer(PEER[in_type], "in", ids[0])
    back = peer(PEER[out_type], "out", ids[1]) if out_type is not None else None
    mon = peer(zmq.PULL, "mon", None) if with_mon else None
    steer = peer(zmq.REQ, "ctrl", None)
    return Sockets(ins, outs, mons, ctrl), Queue(front, back, mon, steer, counters or new_counters())


@contextlib.contextmanager
def running(ctx: Context, in_type: int, out_type: int | None, **options: Any) -> Iterator[Queue]:
    """``build``, with the loop in a thread (prefixes b"IN" / b"OUT"); TERMINATEd after."""
    socks, q = build(ctx, in_type, out_type, **options)

    def run() -> None:
        try:
            monitored_queue_steerable(socks.ins, socks.outs, socks.mons, socks.ctrl, b"IN", b"OUT", counters=q.counters)
        except BaseException as e:  # reported below
            q.errors.append(e)

    q.thread = threading.Thread(target=run, daemon=True)
    q.thread.start()
    try:
        yield q
    finally:
        if q.thread.is_alive():
            assert q.command(b"TERMINATE") == [b""]
        q.thread.join(5)
    assert not q.thread.is_alive()
    assert q.errors == []


# -- pyzmq's semantics ------------------------------------------------------------------


def test_both_directions_prefixed_copies_multipart_and_counters(mq_loop: str, zmq_ctx: Context) -> None:
    with running(zmq_ctx, zmq.DEALER, zmq.DEALER) as q:
        assert q.back is not None and q.mon is not None
        for message in MESSAGES:
            q.front.send_multipart(message)
            assert recv_within(q.back) == message
            assert recv_within(q.mon) == [b"IN", *message], "the copy: prefix + message"
            q.back.send_multipart(message)
            assert recv_within(q.front) == message
            assert recv_within(q.mon) == [b"OUT", *message]
        frames, size = counted(MESSAGES)
        assert q.statistics() == [frames, size, frames, size, frames, size, frames, size]
        assert list(q.counters) == q.statistics()


def test_router_router_swaps_the_ids(mq_loop: str, zmq_ctx: Context) -> None:
    with running(zmq_ctx, zmq.ROUTER, zmq.ROUTER, ids=(b"client", b"worker")) as q:
        assert q.back is not None and q.mon is not None
        q.front.send_multipart([b"worker", b"job"])
        assert recv_within(q.back) == [b"client", b"job"]
        assert recv_within(q.mon) == [b"IN", b"worker", b"client", b"job"], "the copy as forwarded"
        q.back.send_multipart([b"client", b"done", b"!"])
        assert recv_within(q.front) == [b"worker", b"done", b"!"]
        assert recv_within(q.mon) == [b"OUT", b"client", b"worker", b"done", b"!"]
        # the routing id the ROUTER adds is a frame like any other
        assert q.statistics() == [3, 15, 4, 17, 4, 17, 3, 15]


def test_one_socket_for_in_and_out(mq_loop: str, zmq_ctx: Context) -> None:
    """out_type < 0 in pyzmq: the socket is relayed to itself (an echo), counted as the
    frontend's input and the backend's output, copies prefixed with the in prefix."""
    with running(zmq_ctx, zmq.PAIR, None) as q:
        assert q.back is None and q.mon is not None
        q.front.send_multipart([b"ping", b"pong"])
        assert recv_within(q.front) == [b"ping", b"pong"]
        assert recv_within(q.mon) == [b"IN", b"ping", b"pong"]
        assert q.statistics() == [2, 8, 0, 0, 0, 0, 2, 8]


def test_without_a_monitor(mq_loop: str, zmq_ctx: Context) -> None:
    with running(zmq_ctx, zmq.PULL, zmq.PUSH, with_mon=False) as q:
        assert q.back is not None and q.mon is None
        for message in MESSAGES:
            q.front.send_multipart(message)
            assert recv_within(q.back) == message
        frames, size = counted(MESSAGES)
        assert q.statistics() == [frames, size, 0, 0, 0, 0, frames, size]


# -- the control protocol ---------------------------------------------------------------


def test_pause_stops_both_directions_until_resume(mq_loop: str, zmq_ctx: Context) -> None:
    with running(zmq_ctx, zmq.DEALER, zmq.DEALER) as q:
        assert q.back is not None and q.mon is not None
        q.front.send(b"before")
        assert recv_within(q.back) == [b"before"]
        assert recv_within(q.mon) == [b"IN", b"before"]
        before = q.statistics()

        assert q.command(b"PAUSE") == [b""], "PAUSE pauses (libzmq 4.3.5's swap is not ours)"
        q.front.send(b"to back")
        q.back.send(b"to front")
        assert_quiet(q.back, q.front, q.mon)
        assert q.statistics() == before, "STATISTICS answers while paused; nothing was read"
        assert q.command(b"PAUSE") == [b""]
        assert q.command(b"NONSENSE") == [b""]
        assert_quiet(q.back, q.front, q.mon)

        assert q.command(b"RESUME") == [b""]
        assert recv_within(q.back) == [b"to back"]
        assert recv_within(q.front) == [b"to front"]
        copies = [recv_within(q.mon), recv_within(q.mon)]
        assert sorted(copies) == [[b"IN", b"to back"], [b"OUT", b"to front"]]
        assert q.command(b"RESUME") == [b""], "resuming a running loop is harmless"
        assert q.statistics() == [2, 13, 1, 8, 1, 8, 2, 13]


def test_unknown_and_multi_frame_commands(mq_loop: str, zmq_ctx: Context) -> None:
    with running(zmq_ctx, zmq.PULL, zmq.PUSH) as q:
        assert q.back is not None
        for command in (b"NONSENSE", b"", b"pause", b"PAUSED", b"TERMINATEX", b"STATISTICS\0"):
            assert q.command(command) == [b""], command
        # a multi-frame command is read whole; its last frame is the command
        assert len(q.command(b"junk", b"STATISTICS")) == 8
        assert q.command(b"STATISTICS", b"junk") == [b""]
        assert q.command(b"TERMINATE", b"junk") == [b""]
        q.front.send(b"still running, not paused")
        assert recv_within(q.back) == [b"still running, not paused"]


def test_terminate_returns_and_the_counters_outlive_the_loop(mq_loop: str, zmq_ctx: Context) -> None:
    counters = new_counters()
    with running(zmq_ctx, zmq.PULL, zmq.PUSH, counters=counters) as q:
        assert q.back is not None
        q.front.send(b"first run")
        assert recv_within(q.back) == [b"first run"]
        assert q.command(b"TERMINATE") == [b""]
        assert q.thread is not None
        q.thread.join(5)
        assert not q.thread.is_alive()
    assert list(counters) == [1, 9, 0, 0, 0, 0, 1, 9]
    with running(zmq_ctx, zmq.PULL, zmq.PUSH, counters=counters) as q:
        assert q.back is not None
        q.front.send(b"second")
        assert recv_within(q.back) == [b"second"]
        assert q.statistics() == [2, 15, 0, 0, 0, 0, 2, 15], "counting goes on from the counters given"


def test_the_loops_send_and_count_the_same(zmq_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same traffic through each loop: the same messages, copies and counters."""
    if mq.C_LOOP_UNAVAILABLE is not None:
        pytest.skip(f"the C loop is unavailable: {mq.C_LOOP_UNAVAILABLE}")
    seen: dict[str, tuple[list[list[bytes]], list[int]]] = {}
    for loop in ("c", "python"):
        monkeypatch.setenv(mq.LOOP_ENV, loop)
        assert mq.monitored_queue_loop() == loop
        with running(zmq_ctx, zmq.ROUTER, zmq.ROUTER, ids=(b"client", b"worker")) as q:
            assert q.back is not None and q.mon is not None
            received = []
            for message in MESSAGES:
                q.front.send_multipart([b"worker", *message])
                received.append(recv_within(q.back))
                received.append(recv_within(q.mon))
                q.back.send_multipart([b"client", *message])
                received.append(recv_within(q.front))
                received.append(recv_within(q.mon))
            seen[loop] = (received, q.statistics())
    assert seen["c"] == seen["python"]
    frames, size = counted(MESSAGES)
    n = len(MESSAGES)
    ids = len(b"worker") + len(b"client")
    assert seen["c"][1] == [frames + 2 * n, size + ids * n] * 4


# -- errors -------------------------------------------------------------------------------


def test_a_closed_socket_raises(mq_loop: str, zmq_ctx: Context) -> None:
    socks, _ = build(zmq_ctx, zmq.PULL, zmq.PUSH)
    assert socks.mons is not None
    socks.mons.close()
    with pytest.raises(zmq.ZMQError) as raised:
        monitored_queue_steerable(socks.ins, socks.outs, socks.mons, socks.ctrl)
    assert raised.value.errno == zmq.ENOTSOCK


def test_a_terminated_context_ends_the_loop_with_context_terminated(mq_loop: str) -> None:
    ctx: Context = zmq.Context()
    socks, q = build(ctx, zmq.PULL, zmq.PUSH)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            monitored_queue_steerable(socks.ins, socks.outs, socks.mons, socks.ctrl, counters=q.counters)
        except BaseException as e:
            errors.append(e)

    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    terminator = None
    try:
        assert q.back is not None
        q.front.send(b"running")
        assert recv_within(q.back) == [b"running"]
        terminator = threading.Thread(target=ctx.term, daemon=True)
        terminator.start()
        loop.join(5)
        assert not loop.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], zmq.ContextTerminated), errors
        assert list(q.counters) == [1, 7, 0, 0, 0, 0, 1, 7]
    finally:
        if loop.is_alive():
            q.command(b"TERMINATE")
            loop.join(5)
        for sock in (socks.ins, socks.outs, socks.mons, socks.ctrl, q.front, q.back, q.mon, q.steer):
            if sock is not None:
                sock.close(linger=0)
        if terminator is not None:
            terminator.join(5)
        else:
            ctx.term()
    assert terminator is not None and not terminator.is_alive()


# -- signals: the loop in the main thread -------------------------------------------------


class Interrupted(Exception):
    pass


@contextlib.contextmanager
def handler(signum: int, on_signal: Callable[[int, Any], None]) -> Iterator[None]:
    assert threading.current_thread() is threading.main_thread(), "signal handlers run in the main thread"
    previous = signal.signal(signum, on_signal)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def test_a_signal_runs_its_handler_while_the_loop_waits_and_its_exception_ends_the_loop(
    mq_loop: str, zmq_ctx: Context
) -> None:
    """The loop waits in zmq_poll (in the main thread) when each signal comes: the first
    handler returns and the loop goes on; the second raises, and the loop ends with that
    exception, the counters kept. (SIGUSR1: pytest-timeout owns SIGALRM.)"""
    socks, q = build(zmq_ctx, zmq.PULL, zmq.PUSH)
    back = q.back
    assert back is not None
    handled = threading.Event()
    loop_ended = threading.Event()
    raise_next = threading.Event()
    failures: list[str] = []
    main = threading.main_thread().ident
    assert main is not None

    def on_usr1(signum: int, frame: Any) -> None:
        if raise_next.is_set():
            raise Interrupted()
        handled.set()

    def traffic() -> None:
        try:
            q.front.send(b"one")
            assert recv_within(back) == [b"one"]
            signal.pthread_kill(main, signal.SIGUSR1)
            assert handled.wait(5), "the handler never ran"
            q.front.send(b"two")
            assert recv_within(back) == [b"two"], "the loop goes on after a handler that returned"
            raise_next.set()
            signal.pthread_kill(main, signal.SIGUSR1)
            assert loop_ended.wait(5), "the loop went on after the handler raised"
        except AssertionError as e:
            failures.append(str(e))
            if not loop_ended.is_set():
                q.command(b"TERMINATE")  # end the loop so that the test reports, not hangs

    helper = threading.Thread(target=traffic, daemon=True)
    with handler(signal.SIGUSR1, on_usr1):
        helper.start()
        raised: BaseException | None = None
        try:
            monitored_queue_steerable(socks.ins, socks.outs, socks.mons, socks.ctrl, counters=q.counters)
        except Interrupted as e:
            raised = e
        finally:
            loop_ended.set()
            helper.join(10)
    assert not helper.is_alive()
    assert failures == []
    assert isinstance(raised, Interrupted)
    assert list(q.counters) == [2, 6, 0, 0, 0, 0, 2, 6], "the counters of what was relayed are kept"


def test_a_signal_ends_a_loop_that_never_waits(mq_loop: str, zmq_ctx: Context) -> None:
    """out is connected to in, so one message goes round for ever and the loop never blocks:
    no system call is there to be interrupted, and still the handler runs and its exception
    ends the loop (the C loop looks for pending handlers at least every 50 ms while busy)."""
    base = f"inproc://mq-spin-{uuid.uuid4().hex}"
    ins, outs, ctrl, steer = (zmq_ctx.socket(t) for t in (zmq.PAIR, zmq.PAIR, zmq.REP, zmq.REQ))
    ins.bind(base)
    outs.connect(base)
    ctrl.bind(f"{base}-ctrl")
    steer.connect(f"{base}-ctrl")
    outs.send(b"round and round")  # arrives on in: the loop relays it to out, which sends it to in
    counters = new_counters()
    spinning = threading.Event()
    loop_ended = threading.Event()
    main = threading.main_thread().ident
    assert main is not None
    failures: list[str] = []

    def interrupt() -> None:
        try:
            # The loop is spinning once the counters move (read without the loop's help).
            for _ in range(500):
                if counters[0] > 10 * cloop.BATCH:
                    spinning.set()
                    break
                loop_ended.wait(0.01)
            assert spinning.is_set(), f"the loop is not spinning: {list(counters)}"
            signal.pthread_kill(main, signal.SIGUSR1)
            assert loop_ended.wait(5), "the signal's exception never ended the busy loop"
        except AssertionError as e:
            failures.append(str(e))
            if not loop_ended.is_set():
                steer.send(b"TERMINATE")

    def on_usr1(signum: int, frame: Any) -> None:
        raise Interrupted()

    helper = threading.Thread(target=interrupt, daemon=True)
    with handler(signal.SIGUSR1, on_usr1):
        helper.start()
        try:
            with pytest.raises(Interrupted):
                monitored_queue_steerable(ins, outs, None, ctrl, counters=counters)
        finally:
            loop_ended.set()
            helper.join(10)
    assert not helper.is_alive()
    assert failures == []
    assert counters[0] == counters[6] > 10 * cloop.BATCH
    assert counters[1] == counters[0] * len(b"round and round")


# -- which loop runs --------------------------------------------------------------------


def test_the_c_loop_is_in_use_wherever_it_could_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mq.LOOP_ENV, raising=False)
    buildable, toolchain = c_toolchain()
    if buildable:
        assert mq.C_LOOP_UNAVAILABLE is None, f"{toolchain}, yet: {mq.C_LOOP_UNAVAILABLE}"
        assert mq.monitored_queue_loop() == "c"
    else:
        assert mq.monitored_queue_loop() == "python", toolchain
    monkeypatch.setenv(mq.LOOP_ENV, "python")
    assert mq.monitored_queue_loop() == "python", "the environment can force the Python loop"


def test_the_c_loop_drives_pyzmqs_own_libzmq() -> None:
    """One libzmq in the process, the one pyzmq loaded, and the C loop's functions are its."""
    if mq.C_LOOP_UNAVAILABLE is not None:
        pytest.skip(f"the C loop is unavailable: {mq.C_LOOP_UNAVAILABLE}")
    mapped = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and os.path.basename(fields[5]).startswith("libzmq"):
            mapped.add(os.path.realpath(fields[5]))
    assert mapped == {mq.C_LOOP_LIBZMQ}


def test_bind_resolves_through_libzmq_itself_and_refuses_what_is_not_loaded_or_not_libzmq() -> None:
    """The second way to pyzmq's libzmq (its file, from /proc/self/maps) gives the very
    functions the first did; a library that is not loaded is never loaded by bind()."""
    if mq.C_LOOP_UNAVAILABLE is not None:
        pytest.skip(f"the C loop is unavailable: {mq.C_LOOP_UNAVAILABLE}")
    from procdevices.devices import _mqloop

    assert mq.C_LOOP_LIBZMQ is not None
    path, version = _mqloop.bind(mq.C_LOOP_LIBZMQ)  # a second bind must match the first
    assert os.path.realpath(path) == mq.C_LOOP_LIBZMQ
    assert version == zmq.zmq_version_info()
    with pytest.raises(OSError, match="is not loaded"):
        _mqloop.bind("/nonexistent/libzmq.so.5")
    with pytest.raises(OSError, match="no zmq_msg_init"):
        _mqloop.bind(_mqloop.__file__)  # loaded, but no libzmq in it or below it


def test_a_second_libzmq_in_the_process_refuses_the_c_loop(tmp_path: Path) -> None:
    """A second, distinct libzmq mapped (a copy of pyzmq's, loaded by ctypes as another
    extension might) makes the C loop refuse, with the files named, and the Python loop run,
    logged; the same file under a second name is still one libzmq."""
    if mq.C_LOOP_UNAVAILABLE is not None:
        pytest.skip(f"the C loop is unavailable: {mq.C_LOOP_UNAVAILABLE}")
    assert mq.C_LOOP_LIBZMQ is not None
    link = tmp_path / "libzmq-link.so"
    link.symlink_to(mq.C_LOOP_LIBZMQ)
    assert cloop._distinct_files([mq.C_LOOP_LIBZMQ, str(link)]) == [mq.C_LOOP_LIBZMQ]
    copy = tmp_path / "libzmq-copy.so.5"
    copy.write_bytes(Path(mq.C_LOOP_LIBZMQ).read_bytes())
    script = (
        "import ctypes, sys, zmq\n"
        f"ctypes.CDLL({str(copy)!r})\n"
        "from procdevices.devices import monitoredqueuedevice as mq\n"
        "print(mq.monitored_queue_loop()); print(mq.C_LOOP_UNAVAILABLE)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != mq.LOOP_ENV}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    loop, why = done.stdout.splitlines()
    assert loop == "python"
    assert "2 distinct libzmq files are mapped" in why and str(copy) in why
