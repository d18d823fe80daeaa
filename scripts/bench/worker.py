"""Spawned helper processes: sender, receiver, REQ client, REP echo. A helper imports
only this module (and pyzmq): a spawned child must not pay for the rest of the benchmark.
The clock and the case rotation live here, the bottom of the package, for the same reason."""

from __future__ import annotations

import array
import contextlib
import signal
import time
from typing import Any

import zmq

now = time.perf_counter


def rotate(seq: tuple[str, ...] | list[str], k: int) -> list[str]:
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


def worker_main(conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when helpers stop
    ctx = zmq.Context()
    socks: list[zmq.Socket[bytes]] = []

    def reset() -> None:
        while socks:
            socks.pop().close(linger=0)

    try:
        while True:
            try:
                cmd = conn.recv()
            except EOFError:
                return
            op = cmd[0]
            try:
                if op == "exit":
                    return
                if op == "reset":
                    reset()
                    conn.send(("ok", None))
                elif op == "recv":
                    _, ep, bind, warm, timed, extra, timeout = cmd
                    s = ctx.socket(zmq.PULL)
                    socks.append(s)
                    s.rcvtimeo = int(timeout * 1000)
                    if bind:
                        s.bind(ep)
                    else:
                        s.connect(ep)
                    conn.send(("ready", s.last_endpoint.decode() if bind else ep))
                    conn.send(("done", _receive(s, warm, timed, extra)))
                elif op == "send":
                    _, ep, size, total, timeout = cmd
                    s = ctx.socket(zmq.PUSH)
                    socks.append(s)
                    s.sndtimeo = int(timeout * 1000)
                    s.connect(ep)
                    msg = b"x" * size
                    send = s.send
                    t0 = now()
                    for _ in range(total):
                        send(msg)
                    # The socket stays open until "reset": closing a PUSH right after its last
                    # send can drop the tail of its queue over ipc even with LINGER (libzmq).
                    conn.send(("sent", now() - t0))
                elif op == "echo":
                    _, ep, timeout = cmd
                    s = ctx.socket(zmq.REP)
                    socks.append(s)
                    s.rcvtimeo = 100
                    s.connect(ep)
                    conn.send(("ready", ep))
                    served = 0
                    while not conn.poll(0):
                        try:
                            m = s.recv()
                        except zmq.Again:
                            continue
                        s.send(m)
                        served += 1
                    reset()
                    conn.recv()  # the "reset" that ended the loop
                    conn.send(("ok", served))
                elif op == "latency":
                    _, eps, warm, trips, block, timeout = cmd
                    conn.send(("done", _latency(ctx, socks, eps, warm, trips, block, timeout)))
                else:
                    conn.send(("error", f"unknown command {op!r}"))
            except Exception as e:  # reported to the parent, which records the failed case
                reset()
                conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        reset()
        ctx.term()


def _receive(s: zmq.Socket[bytes], warm: int, timed: int, extra: int) -> dict[str, Any]:
    """Warm-up, then the timed messages, then drain the sender's extra tail.

    The tail exists because a device's PUSH may still hold the pipe of the previous case's
    receiver for a moment after it disconnected, and round-robin a few of the first messages
    into it (lost). The sender sends ``extra`` more than counted, so such a loss at the start
    only shortens the drain; the loss is reported."""
    recv = s.recv
    for _ in range(warm):
        recv()
    first = recv()
    t_first = now()
    for _ in range(timed - 2):
        recv()
    last = recv()
    t_last = now()
    nbytes = len(first) * (timed - 1)  # every message has the same size
    s.rcvtimeo = 500
    drained = 0
    with contextlib.suppress(zmq.Again):
        for _ in range(extra):
            recv()
            drained += 1
    return {
        "t_first": t_first,
        "t_last": t_last,
        "messages": timed,
        "size": len(last),
        "bytes": nbytes,
        "lost": extra - drained,
    }


def _latency(
    ctx: zmq.Context[zmq.Socket[bytes]],
    socks: list[zmq.Socket[bytes]],
    eps: dict[str, str],
    warm: int,
    trips: int,
    block: int,
    timeout: float,
) -> dict[str, Any]:
    req: dict[str, zmq.Socket[bytes]] = {}
    for name, ep in eps.items():
        s = ctx.socket(zmq.REQ)
        socks.append(s)
        s.rcvtimeo = int(timeout * 1000)
        s.sndtimeo = int(timeout * 1000)
        s.connect(ep)
        req[name] = s
    msg = b"x" * 64
    names = list(eps)
    for name in names:
        s = req[name]
        for _ in range(warm):
            s.send(msg)
            s.recv()
    out: dict[str, array.array[int]] = {name: array.array("q") for name in names}
    clock = time.perf_counter_ns
    for b in range(max(1, trips // block)):
        for name in rotate(names, b):
            s, lat = req[name], out[name]
            send, recv, append = s.send, s.recv, lat.append
            for _ in range(block):
                t = clock()
                send(msg)
                recv()
                append(clock() - t)
    return {name: a.tobytes() for name, a in out.items()}
