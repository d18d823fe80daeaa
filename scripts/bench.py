#!/usr/bin/env python
"""Benchmark procdevices against pyzmq's zmq.devices, side by side, in one run.

    python scripts/bench.py              # full run (~6-10 min on 2 cores)
    python scripts/bench.py --quick      # < 2 min: fewer reps, messages and kills, 8 devices
    python scripts/bench.py --json out.json --reps 7
    python scripts/bench.py --only startup --scale 256   # start-up, then 256 devices under one up
    python scripts/bench.py --quick --only tap           # the supervised streamer with and without a tap

What is measured (docs/performance.md explains each figure and the targets):

  throughput  64 B and 4 KiB PUSH -> PULL messages over ipc and tcp through: no device (the
              ceiling), pyzmq's zmq.devices.ProcessDevice (forks: the global start method, as
              pyzmq does), procdevices.ProcessDevice (spawn), and a device under the
              supervisor (`python -m procdevices up`). Sender and receiver are spawned
              processes; a warm-up precedes the timed part; the receiver counts and times
              from its first to its last timed message. Case order rotates every repetition;
              every device case is also a ratio to pyzmq's in the same repetition.
  latency     REQ -> ROUTER/DEALER queue -> REP echo, round trips interleaved in blocks over
              pyzmq's ProcessDevice, procdevices' ProcessDevice and a supervised queue.
  mq          the same for a monitored queue (PUB monitor): pyzmq's ProcessMonitoredQueue
              (pyzmq's C loop, no control) against procdevices' (its steerable loop: C when
              built, else Python; PROCDEVICES_MQ_LOOP=python forces Python; the report says).
  startup     time until 1, 8, 32 devices all forward a message; memory (RSS, USS, PSS) per
              device process; pyzmq's ProcessDevice with fork and with spawn (the like-for-like
              base for procdevices' spawned devices), and `up` with spawn and forkserver.
  scale       (--scale N) N devices as 4 x N/4 replicas over ipc under one `up`, with spawn and
              with forkserver: time to all RUNNING, idle supervisor CPU, `down` time.
  restart     SIGKILL a supervised streamer that binds over ipc: time until the replacement
              answers PING on its control socket, and until a message is forwarded again;
              connects refused meanwhile; own_sockets true (the default) and false run
              alternately, 3 runs of 10 kills each; then once with pool_size 0.
  stop        SIGTERM to `up` until it exits, with its log checked for clean stops.
  overhead    CPU of the idle supervisor (and of its idle devices) with 32 devices.

Only stdlib, pyzmq, psutil and procdevices. Every case cleans up in `finally`; a failing
case is reported and the run goes on.
"""

from __future__ import annotations

import argparse
import array
import compileall
import contextlib
import json
import multiprocessing
import os
import platform
import re
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import zmq

if __name__ != "__mp_main__":
    # A spawned child (helpers here, and every procdevices device started from this script)
    # re-imports this module as __mp_main__ before it runs. Keep that import to what the
    # helpers need, so spawn start-up figures show procdevices' cost, not this script's.
    import psutil
    import zmq.devices

    import procdevices
    from procdevices.control.client import ControlClient, SupervisorUnreachable, call_supervisor
    from procdevices.control.protocol import Command, SupervisorCommand
    from procdevices.devices.monitoredqueuedevice import monitored_queue_loop
    from procdevices.errors import DeviceError

SPAWN = multiprocessing.get_context("spawn")
now = time.perf_counter

KIB = 1024
SIZES = (64, 4 * KIB)
TRANSPORTS = ("ipc", "tcp")
TP_CASES = ("direct", "pyzmq", "procdevices", "supervised")
# A monitored queue (PULL -> PUSH, PUB monitor): pyzmq's C loop against procdevices' steerable
# loop (meta["mq_loop"] says which: "c" or "python").
MQ_CASES = ("pyzmq-mq", "procdevices-mq")
# `--only tap`: the supervised streamer alone, then with `procdevices tap` reading its copy.
TAP_CASES = ("supervised", "supervised-tap")
LAT_CASES = ("pyzmq", "procdevices", "supervised")
LABELS = {
    "direct": "direct PUSH->PULL (no device)",
    "pyzmq": "pyzmq ProcessDevice (fork)",
    "pyzmq-spawn": "pyzmq ProcessDevice (spawn)",
    "pyzmq-mq": "pyzmq ProcessMonitoredQueue (fork)",
    "procdevices-mq": "procdevices ProcessMonitoredQueue",
    "supervised-forkserver": "supervised (up, forkserver)",
    "procdevices": "procdevices ProcessDevice",
    "procdevices-threads": "procdevices ProcessDevice, N threads",
    "supervised": "supervised (up)",
    "supervised-tap": "supervised (up), `procdevices tap` attached",
}


@dataclass(frozen=True)
class Profile:
    name: str
    reps: int
    tp_msgs: dict[int, tuple[int, int]]  # size -> (warm-up, timed) messages
    lat_warm: int
    lat_trips: int
    lat_block: int
    startup_ns: tuple[int, ...]
    startup_reps: int
    kills: int
    restart_runs: int  # runs of `kills` kills per own_sockets setting, alternately
    idle_seconds: float
    big_n: int  # devices for the stop and overhead phases
    # pool_size of the supervised device in the throughput, mq and latency phases; None: the
    # supervisor's default (2), and each case waits until the pool is full first
    supervised_pool: int | None = None


FULL = Profile(
    name="full",
    reps=5,
    tp_msgs={64: (150_000, 500_000), 4 * KIB: (20_000, 120_000)},
    lat_warm=2_000,
    lat_trips=20_000,
    lat_block=500,
    startup_ns=(1, 8, 32),
    startup_reps=3,
    kills=10,
    restart_runs=3,
    idle_seconds=30.0,
    big_n=32,
)
QUICK = Profile(
    name="quick",
    reps=2,
    tp_msgs={64: (60_000, 120_000), 4 * KIB: (5_000, 25_000)},
    lat_warm=1_000,
    lat_trips=4_000,
    lat_block=500,
    startup_ns=(1, 8),
    startup_reps=1,
    kills=3,
    restart_runs=1,
    idle_seconds=10.0,
    big_n=8,
)


# ------------------------------------------------------------------------------------------
# small utilities


class PhaseTimeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise PhaseTimeout in the main thread when ``what`` takes longer than ``seconds``."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise PhaseTimeout(f"{what}: no result within {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def percentile(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


def summary(xs: list[float]) -> dict[str, Any]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def rotate(seq: tuple[str, ...] | list[str], k: int) -> list[str]:
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


def short_tmp(prefix: str) -> str:
    # ipc paths must stay under 107 bytes; /tmp is short. mkdtemp: other users share /tmp.
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


ERRORS: list[dict[str, Any]] = []


def record_error(phase: str, case: str, exc: BaseException) -> None:
    text = f"{type(exc).__name__}: {exc}"
    ERRORS.append({"phase": phase, "case": case, "error": text, "traceback": traceback.format_exc()})
    log(f"ERROR in {phase} / {case}: {text}")


def wait_pid_exit(pidfd: int, timeout: float) -> bool:
    """Exact wait for a process to exit (a pidfd becomes readable), without reaping it."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def kill_tree(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(psutil.Error, OSError):
            psutil.Process(pid).kill()


# ------------------------------------------------------------------------------------------
# spawned helper processes: sender, receiver, REQ client, REP echo


def _worker_main(conn: Any) -> None:
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


class Worker:
    """A spawned helper process driven through a pipe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=_worker_main, args=(child,), name=f"bench-{name}", daemon=True)
        self.proc.start()
        child.close()

    def send(self, *cmd: Any) -> None:
        self.conn.send(cmd)

    def reply(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise PhaseTimeout(f"helper {self.name}: no reply within {timeout:.0f}s")
        kind, payload = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"helper {self.name}: {payload}")
        return payload

    def call(self, *cmd: Any, timeout: float = 10.0) -> Any:
        self.send(*cmd)
        return self.reply(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("exit",))
        self.proc.join(2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5.0)
        self.conn.close()


class Helpers:
    """Four helper processes, recreated after a failure (a helper may be stuck mid-case)."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.renew()

    def renew(self) -> None:
        self.close()
        self.workers = [Worker(f"w{i}") for i in range(4)]

    def reset(self) -> None:
        for w in self.workers:
            w.call("reset", timeout=10.0)

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []


# ------------------------------------------------------------------------------------------
# devices: pyzmq's, procdevices', and a supervised one


def _ipc(tmp: str, tag: str) -> str:
    return f"ipc://{tmp}/{tag}"


class PyzmqDevice:
    """pyzmq's ProcessDevice, used as-is: multiprocessing's default (global) start method,
    which forks on Linux, or spawn (``start_method="spawn"``: the same start method as
    procdevices, for a like-for-like start-up and memory comparison). It has no stop; it is
    terminated with SIGTERM. ``monitored``: a ProcessMonitoredQueue (PUB monitor)."""

    def __init__(
        self, device_type: int, in_type: int, out_type: int, start_method: str | None = None, monitored: bool = False
    ) -> None:
        self.dev: Any
        if monitored:
            self.dev = zmq.devices.ProcessMonitoredQueue(in_type, out_type, zmq.PUB)  # type: ignore[no-untyped-call]
            self.dev.bind_mon("tcp://127.0.0.1:*")
        else:
            self.dev = zmq.devices.ProcessDevice(device_type, in_type, out_type)
        if start_method is not None:
            self.dev._launch_class = multiprocessing.get_context(start_method).Process  # type: ignore[attr-defined]

    def bind(self, transport: str, tmp: str, tag: str) -> tuple[str, str]:
        if transport == "ipc":
            a, b = _ipc(tmp, f"{tag}-in"), _ipc(tmp, f"{tag}-out")
            self.dev.bind_in(a)
            self.dev.bind_out(b)
            return a, b
        pin = self.dev.bind_in_to_random_port("tcp://127.0.0.1")
        pout = self.dev.bind_out_to_random_port("tcp://127.0.0.1")
        return f"tcp://127.0.0.1:{pin}", f"tcp://127.0.0.1:{pout}"

    def start(self) -> None:
        self.dev.start()

    @property
    def pid(self) -> int | None:
        return self.dev.launcher.pid if self.dev.launcher is not None else None

    def stop(self) -> None:
        launcher = self.dev.launcher
        if launcher is None:
            return
        if launcher.is_alive():
            launcher.terminate()
            launcher.join(5.0)
        if launcher.is_alive():
            launcher.kill()
            launcher.join(5.0)


class PdDevice:
    """procdevices.ProcessDevice: spawn; start() returns when ready; stop() via control.
    ``monitored``: a ProcessMonitoredQueue (PUB monitor)."""

    def __init__(self, device_type: int, in_type: int, out_type: int, monitored: bool = False) -> None:
        self.dev: Any
        if monitored:
            self.dev = procdevices.ProcessMonitoredQueue(in_type, out_type, zmq.PUB)
            self.dev.bind_mon("tcp://127.0.0.1:*")
        else:
            self.dev = procdevices.ProcessDevice(device_type, in_type, out_type)

    def bind(self, transport: str, tmp: str, tag: str) -> None:
        if transport == "ipc":
            self.dev.bind_in(_ipc(tmp, f"{tag}-in"))
            self.dev.bind_out(_ipc(tmp, f"{tag}-out"))
        else:
            self.dev.bind_in("tcp://127.0.0.1:*")
            self.dev.bind_out("tcp://127.0.0.1:*")

    def endpoints(self) -> tuple[str, str]:
        eps = self.dev.endpoints
        return eps["in"][0], eps["out"][0]

    def start(self) -> None:
        self.dev.start()

    @property
    def pid(self) -> int | None:
        return self.dev.pid

    def stop(self) -> None:
        if self.dev.launcher is None:
            return
        try:
            self.dev.stop(timeout=5.0)
        except DeviceError:
            pass
        if self.dev.launcher.is_alive():
            self.dev.launcher.kill()
            self.dev.launcher.join(5.0)


class NotReady(Exception):
    pass


class Supervised:
    """`python -m procdevices up -c TOPOLOGY` as a subprocess in its own process group."""

    def __init__(self, workdir: str, topology: str, start_method: str = "spawn", pool: int | None = None) -> None:
        self.dir = workdir
        self.pool = 2 if pool is None else pool  # idle warm workers once settled
        self.path = os.path.join(workdir, "topology.toml")
        self.run_dir = os.path.join(workdir, "run")
        with open(self.path, "w") as f:
            pool_line = "" if pool is None else f"pool_size = {pool}\n"
            f.write(
                f'[supervisor]\nrun_dir = "{self.run_dir}"\nstart_method = "{start_method}"\n{pool_line}' + topology
            )
        self.sock = os.path.join(self.run_dir, "supervisor.sock")
        self.endpoint = f"ipc://{self.sock}"
        self.log_path = os.path.join(workdir, "up.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.started_at = 0.0
        self.up_argv = [sys.executable, "-m", "procdevices", "up", "-c", self.path]  # restart_steps.py changes it

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.started_at = now()
        self.proc = subprocess.Popen(
            self.up_argv,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group (to kill it whole), but the same session: with the kernel's
            # autogroup scheduling a new session would get a CPU share of its own and the
            # supervised device would not compete with sender and receiver like the others.
            process_group=0,
        )
        self.pidfd = os.pidfd_open(self.proc.pid)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        if not os.path.exists(self.sock):
            raise NotReady("no supervisor socket yet")
        try:
            reply = call_supervisor(self.endpoint, SupervisorCommand.STATUS, None, timeout)
        except SupervisorUnreachable as e:
            raise NotReady(str(e)) from None
        if not reply.get("ok"):
            raise RuntimeError(f"status: {reply}")
        result: dict[str, Any] = reply["result"]
        return result

    def status_cli(self) -> dict[str, Any]:
        """`python -m procdevices status --json`, as a user would read the endpoints."""
        out = subprocess.run(
            [sys.executable, "-m", "procdevices", "status", "-c", self.path, "--json"],
            cwd=self.dir,
            capture_output=True,
            timeout=30,
            check=True,
        )
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def wait_running(self, n: int, timeout: float, pool_idle: int | None = None) -> dict[str, Any]:
        end = now() + timeout
        last: Any = None
        while now() < end:
            if not self.alive():
                raise RuntimeError(f"up exited with {self.proc.returncode if self.proc else None}: {self.log_tail()}")
            try:
                st = self.status(1.0)
                last = [(d["name"], d["state"]) for d in st["devices"]]
                if len(st["devices"]) == n and all(d["state"] == "RUNNING" for d in st["devices"]):
                    if pool_idle is None or st["supervisor"]["pool_idle"] >= pool_idle:
                        return st
            except NotReady:
                pass
            time.sleep(0.01)
        raise PhaseTimeout(f"devices not RUNNING within {timeout}s (last: {last}); log: {self.log_tail()}")

    def terminate_and_time(self, timeout: float) -> float:
        """SIGTERM to `up`; seconds until it exited (exact, through a pidfd)."""
        assert self.proc is not None and self.pidfd is not None
        t0 = now()
        os.kill(self.proc.pid, signal.SIGTERM)
        if not wait_pid_exit(self.pidfd, timeout):
            raise PhaseTimeout(f"up did not exit within {timeout}s of SIGTERM")
        elapsed = now() - t0
        self.proc.wait(5.0)
        return elapsed

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n: int = 8) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-n:])

    def close(self) -> None:
        if self.proc is not None:
            # The whole group: up, its devices, pool workers and resource tracker.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10.0)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if getattr(self, "_log", None) is not None:
            self._log.close()


def settle(sup: Supervised) -> None:
    """Wait until the device runs, the warm pool (2 workers by default, spawned once the
    device is ready) is full and every process of the supervisor's but the device is idle:
    the workers' interpreter start-up must not compete with the measurement for the 2 CPUs.
    (`pool_idle` counts a worker as soon as it is started, not once it has imported what it
    imports: a fixed wait after it could end too soon on a loaded machine.)"""
    st = sup.wait_running(1, 30.0, pool_idle=sup.pool)
    device = st["devices"][0]["pid"]
    end = now() + 30.0
    while now() < end:
        others = [sup.pid] + [p.pid for p in psutil.Process(sup.pid).children(recursive=True) if p.pid != device]
        before = cpu_seconds(others)
        time.sleep(0.3)
        if cpu_seconds(others) - before < 0.01:  # less than one clock tick: asleep
            break
    time.sleep(0.2)


def check_stop_log(text: str, n: int) -> dict[str, Any]:
    clean = len(re.findall(r"STOPPED \(stopped through the control socket\)", text))
    escalations = [
        ln
        for ln in text.splitlines()
        if "after the control-socket stop; SIGTERM" in ln or "SIGKILL" in ln or "stopped through the SIGTERM" in ln
    ]
    return {
        "expected": n,
        "stopped_through_control_socket": clean,
        "escalations": escalations,
        "ok": clean == n and not escalations,
    }


# ------------------------------------------------------------------------------------------
# throughput


@contextlib.contextmanager
def tp_device(
    case: str, transport: str, tmp: str, tag: str, pool: int | None = None
) -> Iterator[tuple[str | None, str | None, int | None]]:
    """Yields (in endpoint, out endpoint, device pid) of a running streamer; Nones for direct."""
    if case == "direct":
        yield None, None, None
        return
    if case in ("pyzmq", "pyzmq-mq"):
        d = PyzmqDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH, monitored=case == "pyzmq-mq")
        try:
            eps = d.bind(transport, tmp, tag)
            d.start()
            yield eps[0], eps[1], d.pid
        finally:
            d.stop()
        return
    if case in ("procdevices", "procdevices-mq"):
        p = PdDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH, monitored=case == "procdevices-mq")
        try:
            p.bind(transport, tmp, tag)
            p.start()
            yield p.endpoints() + (p.pid,)
        finally:
            p.stop()
        return
    workdir = tempfile.mkdtemp(prefix=f"{tag}-", dir=tmp)
    if transport == "ipc":
        sockets = f'in = {{ bind = ["ipc://{workdir}/in"] }}\nout = {{ bind = ["ipc://{workdir}/out"] }}\n'
    else:
        sockets = 'in = { bind = ["tcp://127.0.0.1:*"] }\nout = { bind = ["tcp://127.0.0.1:*"] }\n'
    sup = Supervised(workdir, f'\n[devices.tp]\nkind = "streamer"\n{sockets}', pool=pool)
    tap: subprocess.Popen[bytes] | None = None
    try:
        sup.start()
        settle(sup)
        st = sup.status_cli()
        eps = st["devices"][0]["endpoints"]
        if case == "supervised-tap":
            # A reader that keeps up as well as it can; what it cannot take, the device drops.
            command = [sys.executable, "-m", "procdevices", "tap", "tp", "--run-dir", sup.run_dir, "--format", "raw"]
            tap = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield eps["in"][0], eps["out"][0], st["devices"][0]["pid"]
    finally:
        if tap is not None:
            tap.send_signal(signal.SIGINT)
            try:
                tap.wait(10)
            except subprocess.TimeoutExpired:
                tap.kill()
                tap.wait()
        sup.close()


def supervisor_beside(device: int) -> list[int]:
    """The supervisor of a supervised device and its other processes (warm workers, resource
    tracker): what runs beside the device and could take CPU from the measurement."""
    try:
        up = psutil.Process(device).parent()
        if up is None:
            return []
        return [up.pid] + [p.pid for p in up.children(recursive=True) if p.pid != device]
    except psutil.Error:
        return []


def run_tp_case(
    helpers: Helpers, case: str, transport: str, tmp: str, tag: str, prof: Profile
) -> dict[int, dict[str, Any]]:
    recv_w, send_w = helpers.workers[0], helpers.workers[1]
    results: dict[int, dict[str, Any]] = {}
    with tp_device(case, transport, tmp, tag, prof.supervised_pool) as (in_ep, out_ep, pid):
        for size in SIZES:
            warm, timed = prof.tp_msgs[size]
            extra = 3000
            try:
                if case == "direct":
                    bind_ep = _ipc(tmp, f"{tag}-direct-{size}") if transport == "ipc" else "tcp://127.0.0.1:*"
                    actual = recv_w.call("recv", bind_ep, True, warm, timed, extra, 10.0)
                    target = actual
                else:
                    recv_w.call("recv", out_ep, False, warm, timed, extra, 10.0)
                    target = in_ep
                cpu0 = cpu_seconds([pid]) if pid else None
                beside = supervisor_beside(pid) if case.startswith("supervised") and pid else []
                beside0 = cpu_seconds(beside)
                send_w.send("send", target, size, warm + timed + extra, 10.0)
                done = recv_w.reply(180.0)
                send_w.reply(30.0)
                cpu1 = cpu_seconds([pid]) if pid else None
                elapsed = done["t_last"] - done["t_first"]
                n = done["messages"] - 1
                results[size] = {
                    "msgs_per_s": n / elapsed,
                    "mb_per_s": n * size / elapsed / 1e6,
                    "seconds": elapsed,
                    "messages": done["messages"],
                    "warmup": warm,
                    "loadavg1": os.getloadavg()[0],
                    # CPU the device process used per forwarded message (warm-up
                    # included): insensitive to how the 2 CPUs were shared.
                    "device_cpu_us_per_msg": (cpu1 - cpu0) / (warm + timed + extra) * 1e6 if pid else None,
                    # CPU that `up`, its warm workers and its resource tracker used meanwhile
                    "supervisor_cpu_ms": (cpu_seconds(beside) - beside0) * 1000 if beside else None,
                    "lost": done["lost"],
                }
            except Exception as e:
                record_error("throughput", f"{case} {transport} {size}B", e)
                helpers.renew()
            finally:
                with contextlib.suppress(Exception):
                    helpers.reset()
    return results


def phase_throughput(
    helpers: Helpers, prof: Profile, tmp: str, cases: tuple[str, ...] = TP_CASES, base_case: str = "pyzmq"
) -> dict[str, Any]:
    # raw[transport][size][case] -> list of per-rep rates; ratios likewise (vs base_case, same rep)
    raw: dict[str, Any] = {t: {s: {c: [] for c in cases} for s in SIZES} for t in TRANSPORTS}
    mb: dict[str, Any] = {t: {s: {c: [] for c in cases} for s in SIZES} for t in TRANSPORTS}
    cpu: dict[str, Any] = {t: {s: {c: [] for c in cases} for s in SIZES} for t in TRANSPORTS}
    cpu_ratios: dict[str, Any] = {t: {s: {c: [] for c in cases} for s in SIZES} for t in TRANSPORTS}
    ratios: dict[str, Any] = {t: {s: {c: [] for c in cases if c != base_case} for s in SIZES} for t in TRANSPORTS}
    order_log = []
    samples: list[dict[str, Any]] = []
    for rep in range(prof.reps):
        for transport in rotate(TRANSPORTS, rep):
            order = rotate(cases, rep)
            order_log.append({"rep": rep, "transport": transport, "order": order})
            per_rep: dict[str, dict[int, dict[str, Any]]] = {}
            for case in order:
                log(f"throughput rep {rep + 1}/{prof.reps} {transport} {case}")
                try:
                    with deadline(300, f"throughput {case} {transport}"):
                        per_rep[case] = run_tp_case(helpers, case, transport, tmp, f"t{rep}{transport}{case[:3]}", prof)
                except Exception as e:
                    record_error("throughput", f"{case} {transport}", e)
                    helpers.renew()
            for size in SIZES:
                base = per_rep.get(base_case, {}).get(size)
                for case in cases:
                    r = per_rep.get(case, {}).get(size)
                    if r is None:
                        continue
                    samples.append({"rep": rep, "transport": transport, "size": size, "case": case, **r})
                    raw[transport][size][case].append(r["msgs_per_s"])
                    mb[transport][size][case].append(r["mb_per_s"])
                    if r["device_cpu_us_per_msg"] is not None:
                        cpu[transport][size][case].append(r["device_cpu_us_per_msg"])
                        if case not in (base_case, "direct") and base is not None and base["device_cpu_us_per_msg"]:
                            cpu_ratios[transport][size][case].append(
                                r["device_cpu_us_per_msg"] / base["device_cpu_us_per_msg"]
                            )
                    if case != base_case and base is not None:
                        ratios[transport][size][case].append(r["msgs_per_s"] / base["msgs_per_s"])
    out: dict[str, Any] = {
        "order": order_log,
        "samples": samples,
        "results": [],
        "losses": [{k: x[k] for k in ("rep", "transport", "size", "case", "lost")} for x in samples if x.get("lost")],
    }
    for t in TRANSPORTS:
        for s in SIZES:
            for c in cases:
                out["results"].append(
                    {
                        "transport": t,
                        "size": s,
                        "case": c,
                        "msgs_per_s": summary(raw[t][s][c]),
                        "mb_per_s": summary(mb[t][s][c]),
                        "ratio_vs_pyzmq": summary(ratios[t][s][c]) if c != base_case else None,
                        "device_cpu_us_per_msg": summary(cpu[t][s][c]),
                        "device_cpu_ratio_vs_pyzmq": summary(cpu_ratios[t][s][c]),
                    }
                )
    return out


# ------------------------------------------------------------------------------------------
# latency


@contextlib.contextmanager
def queue_device(case: str, transport: str, tmp: str, tag: str, pool: int | None = None) -> Iterator[tuple[str, str]]:
    if case == "pyzmq":
        d = PyzmqDevice(zmq.QUEUE, zmq.ROUTER, zmq.DEALER)
        try:
            eps = d.bind(transport, tmp, tag)
            d.start()
            yield eps
        finally:
            d.stop()
    elif case == "procdevices":
        p = PdDevice(zmq.QUEUE, zmq.ROUTER, zmq.DEALER)
        try:
            p.bind(transport, tmp, tag)
            p.start()
            yield p.endpoints()
        finally:
            p.stop()
    else:
        workdir = tempfile.mkdtemp(prefix=f"{tag}-", dir=tmp)
        if transport == "ipc":
            sockets = f'in = {{ bind = ["ipc://{workdir}/in"] }}\nout = {{ bind = ["ipc://{workdir}/out"] }}\n'
        else:
            sockets = 'in = { bind = ["tcp://127.0.0.1:*"] }\nout = { bind = ["tcp://127.0.0.1:*"] }\n'
        sup = Supervised(workdir, f'\n[devices.lat]\nkind = "queue"\n{sockets}', pool=pool)
        try:
            sup.start()
            settle(sup)
            eps = sup.status_cli()["devices"][0]["endpoints"]
            yield eps["in"][0], eps["out"][0]
        finally:
            sup.close()


def phase_latency(helpers: Helpers, prof: Profile, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for transport in TRANSPORTS:
        log(f"latency {transport}: {prof.lat_trips} round trips per device after {prof.lat_warm} warm-up")
        try:
            with deadline(240, f"latency {transport}"), contextlib.ExitStack() as stack:
                eps = {
                    c: stack.enter_context(
                        queue_device(c, transport, tmp, f"l{transport}{c[:3]}", prof.supervised_pool)
                    )
                    for c in LAT_CASES
                }
                client, echoes = helpers.workers[0], helpers.workers[1:]
                try:
                    for echo, case in zip(echoes, LAT_CASES, strict=False):
                        echo.call("echo", eps[case][1], 10.0)
                    res = client.call(
                        "latency",
                        {c: eps[c][0] for c in LAT_CASES},
                        prof.lat_warm,
                        prof.lat_trips,
                        prof.lat_block,
                        10.0,
                        timeout=200.0,
                    )
                finally:
                    with contextlib.suppress(Exception):
                        helpers.reset()
            lat = {c: [v / 1000 for v in array.array("q", res[c])] for c in LAT_CASES}  # microseconds
            block = prof.lat_block
            rounds = len(lat["pyzmq"]) // block
            block_p50 = {c: [median(lat[c][i * block : (i + 1) * block]) for i in range(rounds)] for c in LAT_CASES}
            entry: dict[str, Any] = {}
            for c in LAT_CASES:
                entry[c] = {
                    "p50_us": percentile(lat[c], 50),
                    "p99_us": percentile(lat[c], 99),
                    "mean_us": statistics.fmean(lat[c]),
                    "round_trips": len(lat[c]),
                }
                if c != "pyzmq":
                    entry[c]["p50_ratio"] = entry[c]["p50_us"] / entry["pyzmq"]["p50_us"]
                    entry[c]["p99_ratio"] = entry[c]["p99_us"] / entry["pyzmq"]["p99_us"]
                    entry[c]["block_p50_ratio"] = summary(
                        [a / b for a, b in zip(block_p50[c], block_p50["pyzmq"], strict=True)]
                    )
                    entry[c]["block_p50_ratio"].pop("samples", None)
            out[transport] = entry
        except Exception as e:
            record_error("latency", transport, e)
            helpers.renew()
    return out


# ------------------------------------------------------------------------------------------
# start-up, memory and stop of N devices


class Prober:
    """Binds a PUSH and a PULL per device; each device connects its in (PULL) to the PUSH and
    its out (PUSH) to the PULL. A device "forwards" when a message sent on its PUSH comes back
    on its PULL. Binding on this side means no reconnect interval blurs the measurement."""

    def __init__(self, tmp: str, n: int) -> None:
        self.ctx = zmq.Context()
        self.n = n
        self.ins = [_ipc(tmp, f"i{k}") for k in range(n)]
        self.outs = [_ipc(tmp, f"o{k}") for k in range(n)]
        self.push: list[zmq.Socket[bytes]] = []
        self.pull: list[zmq.Socket[bytes]] = []
        for a, b in zip(self.ins, self.outs, strict=True):
            p = self.ctx.socket(zmq.PUSH)
            p.linger = 0
            p.bind(a)
            q = self.ctx.socket(zmq.PULL)
            q.linger = 0
            q.bind(b)
            self.push.append(p)
            self.pull.append(q)

    def wait_all(self, t0: float, timeout: float) -> list[float]:
        """Seconds from t0 until each device forwarded its probe. A probe is sent as soon as
        the device's in socket is connected, and again every 0.5 s until one comes back (a
        device replaced meanwhile, e.g. killed by start_timeout, took the first one along)."""
        poller = zmq.Poller()
        for p in self.push:
            poller.register(p, zmq.POLLOUT)
        push_index = {p: k for k, p in enumerate(self.push)}
        index = {q: k for k, q in enumerate(self.pull)}
        for q in self.pull:
            poller.register(q, zmq.POLLIN)
        done: dict[int, float] = {}
        resend_at: dict[int, float] = {}
        end = t0 + timeout
        while len(done) < self.n:
            t = now()
            left = end - t
            if left <= 0:
                missing = [k for k in range(self.n) if k not in done]
                raise PhaseTimeout(
                    f"only {len(done)} of {self.n} devices forwarded within {timeout}s (missing replicas {missing})"
                )
            for k, at in list(resend_at.items()):
                if t >= at and k not in done:
                    del resend_at[k]
                    poller.register(self.push[k], zmq.POLLOUT)
            wait = min([left] + [at - t for at in resend_at.values()])
            for sock, ev in poller.poll(max(1, int(wait * 1000) + 1)):
                if ev & zmq.POLLOUT and sock in push_index:
                    k = push_index[sock]
                    sock.send(b"probe", zmq.NOBLOCK)
                    poller.unregister(sock)
                    resend_at[k] = now() + 0.5
                elif ev & zmq.POLLIN:
                    sock.recv()
                    k = index[sock]
                    done[k] = now() - t0
                    resend_at.pop(k, None)
                    poller.unregister(sock)
        return [done[k] for k in range(self.n)]

    def close(self) -> None:
        for s in self.push + self.pull:
            s.close(linger=0)
        self.ctx.term()


def memory_of(pids: list[int]) -> dict[str, Any]:
    rss, uss, pss = [], [], []
    for pid in pids:
        try:
            m = psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue
        rss.append(m.rss / 2**20)
        uss.append(m.uss / 2**20)
        pss.append(getattr(m, "pss", 0) / 2**20)
    return {"processes": len(rss), "rss_mib": median(rss), "uss_mib": median(uss), "pss_mib": median(pss)}


def startup_local(case: str, n: int, tmp: str) -> dict[str, Any]:
    prober = Prober(tmp, n)
    devices: list[Any] = []
    try:
        for k in range(n):
            d: PyzmqDevice | PdDevice
            if case.startswith("pyzmq"):
                d = PyzmqDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
            else:
                d = PdDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
            d.dev.connect_in(prober.ins[k])
            d.dev.connect_out(prober.outs[k])
            devices.append(d)
        t0 = now()
        if case == "procdevices-threads":
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=n) as pool:
                list(pool.map(lambda d: d.start(), devices))
        else:
            for d in devices:
                d.start()
        started = now() - t0
        times = prober.wait_all(t0, 60.0)
        mem = memory_of([d.pid for d in devices if d.pid])
        t1 = now()
        for d in devices:
            d.stop()
        stop_s = now() - t1
        devices = []
        return {
            "all_forwarding_s": max(times),
            "first_forwarding_s": min(times),
            "start_calls_s": started,
            "memory": mem,
            "stop_all_s": stop_s,
        }
    finally:
        for d in devices:
            with contextlib.suppress(Exception):
                d.stop()
        prober.close()


# pyzmq's spawned devices are started by a script of their own: each device re-imports its
# parent's main script, and it must be a small user script, not this one (1,700 lines).
PYZMQ_SPAWN_MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyzmq_spawn_devices.py")


def startup_pyzmq_spawn(n: int, tmp: str) -> dict[str, Any]:
    """N pyzmq ProcessDevices started with spawn by scripts/pyzmq_spawn_devices.py: from its
    Popen (its interpreter start included, as for `up`) until every device forwarded."""
    prober = Prober(tmp, n)
    proc: subprocess.Popen[str] | None = None
    try:
        t0 = now()
        proc = subprocess.Popen(
            [sys.executable, PYZMQ_SPAWN_MAIN, tmp, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdin is not None
        times = prober.wait_all(t0, 60.0)
        pids = [int(pid) for pid in proc.stdout.readline().split()]
        mem = memory_of(pids)
        t1 = now()
        proc.stdin.close()
        proc.wait(30.0)
        return {
            "all_forwarding_s": max(times),
            "first_forwarding_s": min(times),
            "memory": mem,
            "stop_all_s": now() - t1,
        }
    finally:
        if proc is not None:
            if proc.poll() is None:
                kill_tree([c.pid for c in psutil.Process(proc.pid).children(recursive=True)] + [proc.pid])
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        prober.close()


def startup_supervised(n: int, tmp: str, start_method: str = "spawn") -> dict[str, Any]:
    prober = Prober(tmp, n)
    sup = Supervised(
        tmp,
        (
            '\n[devices.s]\nkind = "streamer"\n'
            f"replicas = {n}\n"
            f'in = {{ type = "PULL", connect = ["ipc://{tmp}/i{{replica}}"] }}\n'
            f'out = {{ type = "PUSH", connect = ["ipc://{tmp}/o{{replica}}"] }}\n'
        ),
        start_method,
    )
    try:
        t0 = now()
        sup.start()
        try:
            times = prober.wait_all(t0, 60.0)
        except PhaseTimeout as e:
            raise PhaseTimeout(f"{e}; {supervisor_trouble(sup)}") from None
        st = sup.status(5.0)
        mem = memory_of([d["pid"] for d in st["devices"] if d["pid"]])
        restarts = sum(d["restarts"] for d in st["devices"])
        trouble = supervisor_trouble(sup) if restarts else ""
        stop_s = sup.terminate_and_time(30.0)
        return {
            "all_forwarding_s": max(times),
            "first_forwarding_s": min(times),
            "memory": mem,
            "restarts_during_startup": restarts,
            "trouble": trouble,
            "stop_s": stop_s,
            "stop_log": check_stop_log(sup.log_text(), n),
        }
    finally:
        sup.close()
        prober.close()


def supervisor_trouble(sup: Supervised) -> str:
    """What went wrong, from the supervisor's own view: states, restarts, log lines."""
    parts = []
    with contextlib.suppress(Exception):
        st = sup.status(2.0)
        states: dict[str, int] = {}
        for d in st["devices"]:
            states[d["state"]] = states.get(d["state"], 0) + 1
        parts.append(f"states {states}, restarts {sum(d['restarts'] for d in st['devices'])}")
    lines = [ln for ln in sup.log_text().splitlines() if "RUNNING" not in ln][:12]
    parts.append("log: " + " | ".join(lines))
    return "; ".join(parts)


def phase_startup(prof: Profile, tmp: str) -> dict[str, Any]:
    cases = ("pyzmq", "pyzmq-spawn", "procdevices", "procdevices-threads", "supervised", "supervised-forkserver")
    raw: dict[int, dict[str, list[dict[str, Any]]]] = {n: {c: [] for c in cases} for n in prof.startup_ns}
    for rep in range(prof.startup_reps):
        for n in prof.startup_ns:
            for case in rotate(cases, rep):
                log(f"startup rep {rep + 1}/{prof.startup_reps} n={n} {case}")
                d = tempfile.mkdtemp(prefix="s-", dir=tmp)
                try:
                    with deadline(120, f"startup {case} n={n}"):
                        if case.startswith("supervised"):
                            r = startup_supervised(n, d, "forkserver" if case.endswith("forkserver") else "spawn")
                        elif case == "pyzmq-spawn":
                            r = startup_pyzmq_spawn(n, d)
                        else:
                            r = startup_local(case, n, d)
                    raw[n][case].append(r)
                except Exception as e:
                    record_error("startup", f"{case} n={n}", e)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
    out: dict[str, Any] = {"raw": {str(n): v for n, v in raw.items()}, "summary": []}
    for n in prof.startup_ns:
        base = summary([r["all_forwarding_s"] for r in raw[n]["pyzmq"]])
        base_spawn = summary([r["all_forwarding_s"] for r in raw[n]["pyzmq-spawn"]])
        for c in cases:
            rs = raw[n][c]
            row = {"n": n, "case": c, "all_forwarding_s": summary([r["all_forwarding_s"] for r in rs])}
            if rs:
                row["rss_mib"] = median([r["memory"]["rss_mib"] for r in rs if r["memory"]["rss_mib"]])
                row["uss_mib"] = median([r["memory"]["uss_mib"] for r in rs if r["memory"]["uss_mib"]])
                row["pss_mib"] = median([r["memory"]["pss_mib"] for r in rs if r["memory"]["pss_mib"]])
            if c.startswith("supervised"):
                row["stop_s"] = summary([r["stop_s"] for r in rs])
                row["stop_log_ok"] = all(r["stop_log"]["ok"] for r in rs) if rs else None
            elif not c.startswith("pyzmq"):
                row["stop_all_s"] = summary([r["stop_all_s"] for r in rs])
            if base["median"] and row["all_forwarding_s"]["median"]:
                row["ratio_vs_pyzmq"] = row["all_forwarding_s"]["median"] / base["median"]
            if base_spawn["median"] and row["all_forwarding_s"]["median"]:
                row["ratio_vs_pyzmq_spawn"] = row["all_forwarding_s"]["median"] / base_spawn["median"]
            out["summary"].append(row)
    return out


# ------------------------------------------------------------------------------------------
# restart after SIGKILL

#: The two settings of the restart phase, measured alternately: the supervisor keeps the
#: device's listening sockets (the default) or the device binds its own.
RESTART_SETTINGS = ("own_sockets", "own_sockets_false")


class Traffic(threading.Thread):
    """After ``go`` is set: sends a message every ~1 ms (non-blocking) and records when the
    first one comes back through the device."""

    def __init__(self, push: zmq.Socket[bytes], pull: zmq.Socket[bytes]) -> None:
        super().__init__(daemon=True)
        self.push, self.pull = push, pull
        self.go = threading.Event()
        self.t_forwarded: float | None = None
        self.abort = False

    def run(self) -> None:
        self.go.wait()
        seq = 0
        end = now() + 10.0
        while now() < end and not self.abort:
            seq += 1
            with contextlib.suppress(zmq.Again):
                self.push.send(struct.pack("<Q", seq), zmq.NOBLOCK)
            if self.pull.poll(1):
                self.pull.recv()
                self.t_forwarded = now()
                return


def drain(sock: zmq.Socket[bytes]) -> None:
    while sock.poll(0):
        sock.recv()


def refused_connects(monitors: list[zmq.Socket[bytes]]) -> int:
    """Connects refused since the last call. libzmq announces every reconnect timer it sets
    as ZMQ_EVENT_CONNECT_RETRIED: one after each lost connection (ZMQ_EVENT_DISCONNECTED),
    and one after each connect that failed; over ipc to a path that exists, failed means
    refused (nobody listening)."""
    retried = disconnected = 0
    for m in monitors:
        while m.poll(0):
            frames = m.recv_multipart()
            event = struct.unpack("=hi", frames[0][:6])[0]
            if event == zmq.EVENT_CONNECT_RETRIED:
                retried += 1
            elif event == zmq.EVENT_DISCONNECTED:
                disconnected += 1
    return max(0, retried - disconnected)


def one_kill(
    sup: Supervised,
    ctl: str,
    push: zmq.Socket[bytes],
    pull: zmq.Socket[bytes],
    monitors: list[zmq.Socket[bytes]],
    ping_ctx: zmq.Context[zmq.Socket[bytes]],
    pool: int,
) -> dict[str, Any]:
    st = sup.wait_running(1, 30.0, pool_idle=pool)
    dev = st["devices"][0]
    old = dev["pid"]
    endpoints = dev["endpoints"]
    # It forwards now: one message through, then nothing left in flight.
    push.send(b"before", zmq.NOBLOCK)
    end = now() + 5.0
    while True:  # late messages of the previous kill may come first
        if not pull.poll(max(1, int((end - now()) * 1000))):
            raise PhaseTimeout("device does not forward before the kill")
        if pull.recv() == b"before":
            break
    drain(pull)
    refused_connects(monitors)  # only the ones from now on count
    traffic = Traffic(push, pull)
    traffic.start()
    reaped: list[float] = []

    def watch_reap() -> None:  # the supervisor reaps the old process when it handles the exit
        end = now() + 10.0
        while now() < end:
            try:
                os.kill(old, 0)
            except ProcessLookupError:
                reaped.append(now())
                return
            time.sleep(0.0005)

    reaper = threading.Thread(target=watch_reap, daemon=True)
    reaper.start()
    # Processes that exist before the kill: a replacement among them came from the warm pool.
    before = {p.pid for p in psutil.Process(sup.pid).children(recursive=True)}
    t0 = now()
    os.kill(old, signal.SIGKILL)
    traffic.go.set()
    t_probe = None
    new_pid = None
    end = t0 + 10.0
    while now() < end:
        client = ControlClient(ctl, ping_ctx)  # fresh socket each try: connects at once
        try:
            body = client.request(Command.PING, 0.02)
            if body.get("pid") != old:
                t_probe, new_pid = now(), body.get("pid")
                break
        except DeviceError:
            pass
        finally:
            client.close()
    traffic.join(10.0)
    traffic.abort = True
    reaper.join(10.0)
    if t_probe is None:
        raise PhaseTimeout(f"no new device answered PING within 10s; log: {sup.log_tail()}")
    # The endpoints the new process reported (its ready report may still be on its way).
    end = now() + 5.0
    while True:
        now_dev = sup.status(2.0)["devices"][0]
        if (now_dev["pid"] == new_pid and now_dev["state"] == "RUNNING") or now() > end:
            break
        time.sleep(0.005)
    after = now_dev["endpoints"]
    return {
        "probe_ms": (t_probe - t0) * 1000,
        "forward_ms": (traffic.t_forwarded - t0) * 1000 if traffic.t_forwarded else None,
        "reaped_ms": (reaped[0] - t0) * 1000 if reaped else None,
        "refused_connects": refused_connects(monitors),
        "t_kill": t0,  # this process's perf_counter (CLOCK_MONOTONIC): for restart_steps.py
        "t_forwarded": traffic.t_forwarded,
        "endpoints_kept": after == endpoints,
        "old_pid": old,
        "new_pid": new_pid,
        "new_from_warm_pool": new_pid in before,
    }


def restart_series(prof: Profile, tmp: str, *, pool: int | None, own_sockets: bool) -> dict[str, Any]:
    """``prof.kills`` SIGKILLs of a supervised streamer that binds its PULL and PUSH over ipc;
    a PUSH and a PULL client connect to it and reconnect every 1 ms."""
    pool_line = f"pool_size = {pool}\n" if pool is not None else ""  # None: the default (2)
    effective_pool = 2 if pool is None else pool
    stable = 0.5
    topology = (
        pool_line
        + "\n[supervisor.defaults]\n"
        + "probe = { interval = 0.05, timeout = 0.5, failures = 3 }\n"
        + f"stable_after = {stable}\n"
        + "intensity = { max_restarts = 1000, within = 30.0 }\n"
        + ("" if own_sockets else "own_sockets = false\n")
        + '\n[devices.r]\nkind = "streamer"\n'
        + f'in = {{ type = "PULL", bind = ["ipc://{tmp}/ri"] }}\n'
        + f'out = {{ type = "PUSH", bind = ["ipc://{tmp}/ro"] }}\n'
    )
    ctx = zmq.Context()
    ctx.setsockopt(zmq.RECONNECT_IVL, 1)  # a lost peer is retried every 1 ms
    ping_ctx = zmq.Context()
    ping_ctx.setsockopt(zmq.RECONNECT_IVL, 1)
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    monitors = [s.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED) for s in (push, pull)]
    sup = Supervised(tmp, topology)
    kills: list[dict[str, Any]] = []
    label = f"{'own_sockets' if own_sockets else 'own_sockets = false'}, pool {effective_pool}"
    try:
        sup.start()
        sup.wait_running(1, 30.0, pool_idle=effective_pool)
        push.connect(f"ipc://{tmp}/ri")
        pull.connect(f"ipc://{tmp}/ro")
        ctl = f"ipc://{sup.run_dir}/ctl/r.sock"
        for k in range(prof.kills):
            time.sleep(stable + 0.2)  # a stable run: the restart is immediate (no backoff)
            try:
                r = one_kill(sup, ctl, push, pull, monitors, ping_ctx, effective_pool)
                kills.append(r)
                log(
                    f"  kill {k + 1}/{prof.kills} ({label}): probe {r['probe_ms']:.1f} ms, "
                    f"forward {r['forward_ms'] if r['forward_ms'] is None else round(r['forward_ms'], 1)} ms, "
                    f"reaped {r['reaped_ms'] if r['reaped_ms'] is None else round(r['reaped_ms'], 1)} ms, "
                    f"refused {r['refused_connects']}"
                )
            except Exception as e:
                record_error("restart", f"{label} kill {k + 1}", e)
        restarts = sup.status(2.0)["devices"][0]["restarts"]
    finally:
        sup.close()
        for s in (*monitors, push, pull):
            s.close(0)
        ctx.term()
        ping_ctx.term()

    return {
        "pool_size": effective_pool,
        "own_sockets": own_sockets,
        "kills": kills,
        "supervisor_restarts": restarts,
        "probe_ms": kill_stat(kills, "probe_ms"),
        "forward_ms": kill_stat(kills, "forward_ms"),
        "reaped_ms": kill_stat(kills, "reaped_ms"),
        "refused_connects": sum(k["refused_connects"] for k in kills),
        "endpoints_kept": all(k["endpoints_kept"] for k in kills),
        "topology": topology,
    }


def kill_stat(kills: list[dict[str, Any]], key: str) -> dict[str, Any]:
    xs = [k[key] for k in kills if k.get(key) is not None]
    s = summary(xs)
    s.pop("samples", None)
    s["worst"] = s.pop("max")
    return s


def phase_restart(prof: Profile, tmp: str) -> dict[str, Any]:
    """``prof.restart_runs`` runs of each setting, alternately (the first setting of a run
    alternates too), then one run with ``pool_size = 0`` (every restart spawns)."""
    out: dict[str, Any] = {s: {"runs": []} for s in RESTART_SETTINGS}
    plan: list[tuple[str, int | None]] = [
        (s, None) for run in range(prof.restart_runs) for s in rotate(RESTART_SETTINGS, run)
    ]
    plan.append(("own_sockets", 0))
    for setting, pool in plan:
        own = setting == "own_sockets"
        log(f"restart: {prof.kills} kills, {setting}, pool_size {'default' if pool is None else pool}")
        d = tempfile.mkdtemp(prefix="r-", dir=tmp)
        try:
            with deadline(60 + prof.kills * 15, f"restart {setting} pool {pool}"):
                series = restart_series(prof, d, pool=pool, own_sockets=own)
            if pool is None:
                out[setting]["runs"].append(series)
            else:
                out["pool_0"] = series
        except Exception as e:
            record_error("restart", f"{setting} pool {pool}", e)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    for setting in RESTART_SETTINGS:
        runs = out[setting]["runs"]
        kills = [k for r in runs for k in r["kills"]]
        out[setting].update(
            forward_ms=kill_stat(kills, "forward_ms"),
            probe_ms=kill_stat(kills, "probe_ms"),
            reaped_ms=kill_stat(kills, "reaped_ms"),
            forward_median_of_run_medians=median([r["forward_ms"]["median"] for r in runs if r["forward_ms"]["n"]]),
            refused_connects=sum(r["refused_connects"] for r in runs),
            endpoints_kept=all(r["endpoints_kept"] for r in runs),
        )
    return out


# ------------------------------------------------------------------------------------------
# idle overhead and stop of big_n devices


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def phase_overhead(prof: Profile, tmp: str) -> dict[str, Any]:
    n = prof.big_n
    log(f"overhead: {n} idle supervised devices for {prof.idle_seconds:.0f}s, then stop")
    d = tempfile.mkdtemp(prefix="o-", dir=tmp)
    sup = Supervised(
        d,
        (
            '\n[devices.idle]\nkind = "streamer"\n'
            f"replicas = {n}\n"
            f'in = {{ bind = ["ipc://{d}/i{{replica}}"] }}\n'
            f'out = {{ bind = ["ipc://{d}/o{{replica}}"] }}\n'
        ),
    )
    try:
        with deadline(90 + prof.idle_seconds, "overhead"):
            sup.start()
            sup.wait_running(n, 60.0, pool_idle=2)
            time.sleep(1.0)  # let the pool's fresh workers finish importing
            st = sup.status(2.0)
            devices = [x["pid"] for x in st["devices"] if x["pid"]]
            tree = {p.pid for p in psutil.Process(sup.pid).children(recursive=True)}
            others = sorted(tree - set(devices))  # warm pool workers and the resource tracker
            up = psutil.Process(sup.pid)
            t0 = now()
            c0 = up.cpu_times()
            d0, o0 = cpu_seconds(devices), cpu_seconds(others)
            time.sleep(prof.idle_seconds)
            c1 = up.cpu_times()
            d1, o1 = cpu_seconds(devices), cpu_seconds(others)
            wall = now() - t0
            sup_cpu = (c1.user + c1.system) - (c0.user + c0.system)
            stop_s = sup.terminate_and_time(30.0)
            check = check_stop_log(sup.log_text(), n)
        return {
            "devices": n,
            "seconds": wall,
            "supervisor_cpu_s": sup_cpu,
            "supervisor_pct_of_core": 100 * sup_cpu / wall,
            "devices_cpu_s": d1 - d0,
            "devices_pct_of_core": 100 * (d1 - d0) / wall,
            "per_device_pct_of_core": 100 * (d1 - d0) / wall / max(1, len(devices)),
            "pool_and_tracker_cpu_s": o1 - o0,
            "stop_s": stop_s,
            "stop_log": check,
        }
    except Exception as e:
        record_error("overhead", f"{n} devices", e)
        return {}
    finally:
        sup.close()
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# scale: N devices under one `up`


def scale_run(n: int, start_method: str, idle_seconds: float, tmp: str) -> dict[str, Any]:
    """N streamers as 4 devices x N/4 replicas over ipc: Popen of `up` until all RUNNING,
    the idle supervisor's CPU, then `procdevices down` until it returns."""
    per = n // 4
    d = tempfile.mkdtemp(prefix="sc-", dir=tmp)
    topology = "".join(
        f'\n[devices.d{k}]\nkind = "streamer"\nreplicas = {per}\n'
        f'in = {{ bind = ["ipc://{d}/{k}i{{replica}}"] }}\nout = {{ bind = ["ipc://{d}/{k}o{{replica}}"] }}\n'
        for k in range(4)
    )
    sup = Supervised(d, topology, start_method)
    try:
        with deadline(240 + idle_seconds, f"scale {n} {start_method}"):
            sup.start()
            st = sup.wait_running(4 * per, 180.0)
            running_s = now() - sup.started_at
            restarts = sum(x["restarts"] for x in st["devices"])
            time.sleep(2.0)  # the pool's fresh workers finish importing
            up = psutil.Process(sup.pid)
            c0, t0 = up.cpu_times(), now()
            time.sleep(idle_seconds)
            c1, wall = up.cpu_times(), now() - t0
            idle_pct = 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / wall
            t1 = now()
            down = subprocess.run(
                [sys.executable, "-m", "procdevices", "down", "-c", sup.path],
                cwd=d,
                capture_output=True,
                timeout=120,
                check=False,
            )
            down_s = now() - t1
            assert sup.pidfd is not None
            exited = wait_pid_exit(sup.pidfd, 30.0)
        return {
            "devices": 4 * per,
            "start_method": start_method,
            "all_running_s": running_s,
            "restarts_during_startup": restarts,
            "idle_supervisor_pct_of_core": idle_pct,
            "idle_seconds": wall,
            "down_s": down_s,
            "down_rc": down.returncode,
            "up_exited": exited,
            "stop_log": check_stop_log(sup.log_text(), 4 * per),
        }
    finally:
        sup.close()
        shutil.rmtree(d, ignore_errors=True)


def phase_scale(n: int, prof: Profile, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in ("spawn", "forkserver"):
        log(f"scale: {n} devices under one up, {method}")
        try:
            out[method] = scale_run(n, method, min(prof.idle_seconds, 20.0), tmp)
        except Exception as e:
            record_error("scale", f"{n} {method}", e)
    return out


# ------------------------------------------------------------------------------------------
# report


def fmt_rate(s: dict[str, Any], scale: float = 1.0, digits: int = 0) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    m, lo, hi = s["median"] / scale, s["min"] / scale, s["max"] / scale
    return f"{m:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def fmt_ratio(s: dict[str, Any] | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def print_report(res: dict[str, Any]) -> None:
    p = print
    meta = res["meta"]
    p()
    p(
        f"procdevices bench ({meta['profile']}): {meta['cpu_model']}, {meta['nproc']} cpus, "
        f"Python {meta['python']}, pyzmq {meta['pyzmq']}, libzmq {meta['libzmq']}"
    )
    if meta["profile"] == "quick":
        p(
            f"QUICK: {res['profile']['reps']} reps, fewer messages, start-up N={list(res['profile']['startup_ns'])}, "
            f"{res['profile']['kills']} kills, stop/overhead with {res['profile']['big_n']} devices (not 32)"
        )
    mq_title = f"MONITORED QUEUE THROUGHPUT (base: pyzmq's, fork; procdevices' loop: {meta.get('mq_loop')})"
    tap_title = "TAP (base: the supervised streamer without a tap; the ratio column is vs that base)"
    for key, title in (("throughput", "THROUGHPUT"), ("mq", mq_title), ("tap", tap_title)):
        tp = res.get(key)
        if not tp:
            continue
        p()
        p(f"{title}  median (min-max) over reps; ratio = rate / pyzmq's device in the same rep")
        p("            device CPU = CPU time of the device process per forwarded message (us), and its ratio")
        p(
            f"{'transport':<5} {'size':>5}  {'case':<36} {'msgs/s':>26} {'MB/s':>20}  {'ratio vs pyzmq':>20}"
            f"  {'device CPU us/msg':>20} {'CPU ratio':>20}"
        )
        for r in tp["results"]:
            p(
                f"{r['transport']:<5} {r['size']:>5}  {LABELS[r['case']]:<36} {fmt_rate(r['msgs_per_s'], 1e3, 1) + ' k':>26} "
                f"{fmt_rate(r['mb_per_s'], 1, 1):>20}  {fmt_ratio(r['ratio_vs_pyzmq']):>20}"
                f"  {fmt_rate(r['device_cpu_us_per_msg'], 1, 2) if r['device_cpu_us_per_msg']['n'] else '-':>20}"
                f" {fmt_ratio(r['device_cpu_ratio_vs_pyzmq']):>20}"
            )
        beside = [x["supervisor_cpu_ms"] for x in tp["samples"] if x.get("supervisor_cpu_ms") is not None]
        if beside:
            p(
                f"  supervised cases: `up`, its warm workers and tracker used {median(beside):.0f} ms of CPU "
                f"(median; most {max(beside):.0f} ms) while a case ran"
            )
        for x in tp.get("losses", []):
            p(
                f"  note: {x['lost']} messages lost at the start of rep {x['rep'] + 1} {x['transport']} {x['size']} B "
                f"{x['case']} (a pipe to the previous receiver; not counted, see _receive)"
            )
    lat = res.get("latency")
    if lat:
        p()
        p("LATENCY  REQ -> ROUTER/DEALER queue -> REP echo, interleaved blocks (us)")
        p(
            f"{'transport':<5} {'case':<34} {'p50':>8} {'p99':>8} {'p50 ratio':>10} {'p99 ratio':>10}  block-p50 ratio (min-max)"
        )
        for t, entry in lat.items():
            for c in LAT_CASES:
                e = entry[c]
                p(
                    f"{t:<5} {LABELS[c]:<34} {e['p50_us']:>8.1f} {e['p99_us']:>8.1f} "
                    f"{e.get('p50_ratio', 1.0):>10.3f} {e.get('p99_ratio', 1.0):>10.3f}  {fmt_ratio(e.get('block_p50_ratio'))}"
                )
    su = res.get("startup")
    if su:
        p()
        p("START-UP  seconds from the first start call (or Popen of `up`) until every device forwarded a message;")
        p("          memory per device process (median, MiB)")
        p(
            f"{'N':>3} {'case':<38} {'all forwarding s':>24} {'vs fork':>8} {'vs spawn':>9} {'RSS':>7} {'USS':>7} "
            f"{'PSS':>7}  stop"
        )
        for r in su["summary"]:
            stop = ""
            if "stop_s" in r:
                stop = f"up SIGTERM->exit {fmt_rate(r['stop_s'], 1, 3)} s, log ok={r['stop_log_ok']}"
            elif "stop_all_s" in r:
                stop = f"stop() x N sequential {fmt_rate(r['stop_all_s'], 1, 3)} s"
            ratio = f"{r['ratio_vs_pyzmq']:.2f}x" if r.get("ratio_vs_pyzmq") else "-"
            ratio_spawn = f"{r['ratio_vs_pyzmq_spawn']:.2f}x" if r.get("ratio_vs_pyzmq_spawn") else "-"
            rss = f"{r['rss_mib']:.1f}" if r.get("rss_mib") else "-"
            uss = f"{r['uss_mib']:.1f}" if r.get("uss_mib") else "-"
            pss = f"{r['pss_mib']:.1f}" if r.get("pss_mib") else "-"
            p(
                f"{r['n']:>3} {LABELS[r['case']]:<38} {fmt_rate(r['all_forwarding_s'], 1, 3):>24} {ratio:>8} {ratio_spawn:>9} "
                f"{rss:>7} {uss:>7} {pss:>7}  {stop}"
            )
    rs = res.get("restart")
    if rs:
        p()
        p("RESTART  SIGKILL of a supervised streamer (PULL/PUSH bound over ipc, clients reconnect every 1 ms)")
        p("         -> its replacement answers PING / forwards the first message sent after the kill (ms)")

        def f(s: dict[str, Any]) -> str:
            return "n/a" if s.get("median") is None else f"median {s['median']:.1f} worst {s['worst']:.1f}"

        def line(r: dict[str, Any]) -> str:
            return (
                f"forward {f(r['forward_ms'])}; probe {f(r['probe_ms'])}; reaped {f(r['reaped_ms'])}; "
                f"refused connects {r['refused_connects']}; endpoints kept {r['endpoints_kept']}"
            )

        for setting in RESTART_SETTINGS:
            entry = rs.get(setting)
            if not entry or not entry["runs"]:
                continue
            title = "own_sockets = true (default)" if setting == "own_sockets" else "own_sockets = false"
            p(f"{title}, pool_size 2:")
            for i, r in enumerate(entry["runs"]):
                p(f"  run {i + 1}: {len(r['kills'])} kills; {line(r)}; restarts counted {r['supervisor_restarts']}")
            mom = entry["forward_median_of_run_medians"]
            p(
                f"  all runs: {line(entry)}; median of the runs' forward medians "
                f"{'n/a' if mom is None else f'{mom:.1f}'}"
            )
        if rs.get("pool_0"):
            r = rs["pool_0"]
            p(f"own_sockets = true, pool_size 0: {len(r['kills'])} kills; {line(r)}")
    ov = res.get("overhead")
    if ov:
        p()
        p(
            f"IDLE/STOP  {ov['devices']} supervised devices, {ov['seconds']:.0f}s idle: supervisor "
            f"{ov['supervisor_pct_of_core']:.2f}% of a core; devices total {ov['devices_pct_of_core']:.2f}% "
            f"({ov['per_device_pct_of_core']:.3f}% each); pool+tracker {ov['pool_and_tracker_cpu_s']:.2f} cpu-s"
        )
        p(
            f"           SIGTERM -> up exited: {ov['stop_s']:.3f}s; log: {ov['stop_log']['stopped_through_control_socket']}"
            f"/{ov['stop_log']['expected']} stopped through the control socket, escalations: {len(ov['stop_log']['escalations'])}"
        )
    sc = res.get("scale")
    if sc:
        p()
        p("SCALE  N devices (4 x N/4 replicas, ipc) under one `up`")
        for method, r in sc.items():
            p(
                f"{method:<10} {r['devices']} devices: all RUNNING {r['all_running_s']:.2f}s "
                f"(restarts {r['restarts_during_startup']}); idle supervisor {r['idle_supervisor_pct_of_core']:.2f}% of a "
                f"core over {r['idle_seconds']:.0f}s; `down` {r['down_s']:.2f}s (rc {r['down_rc']}); "
                f"{r['stop_log']['stopped_through_control_socket']}/{r['devices']} stopped through the control socket"
            )
    if res["errors"]:
        p()
        p(f"ERRORS ({len(res['errors'])}):")
        for e in res["errors"]:
            p(f"  {e['phase']} / {e['case']}: {e['error']}")
    p()
    phases = ", ".join(
        f"{k} {v['seconds']:.0f}s (load {v['loadavg1_start']:.1f}->{v['loadavg1_end']:.1f})"
        for k, v in meta.get("phases", {}).items()
    )
    p(f"phases: {phases}")
    p(f"wall time {res['meta']['wall_s']:.0f}s; JSON: {res['meta']['json']}")


def machine_meta() -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(Exception):
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.abspath(__file__)),
                timeout=5,
            ).stdout.strip()
            or None
        )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "psutil": psutil.__version__,
        "procdevices": procdevices.__version__,
        # the loop procdevices' monitored queues run here (their processes inherit the environment)
        "mq_loop": monitored_queue_loop(),
        "commit": commit,
        "kernel": platform.release(),
        "start_method_default": multiprocessing.get_start_method(allow_none=True) or "(unset: fork on Linux)",
        "loadavg_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run (< 2 min): fewer reps/messages/kills, 8 devices")
    ap.add_argument("--reps", type=int, default=None, help="throughput repetitions (default 5, quick 2)")
    ap.add_argument(
        "--json", default="bench-results.json", help="where to write the results (default ./bench-results.json)"
    )
    ap.add_argument(
        "--only",
        default="throughput,mq,latency,startup,restart,overhead",
        help="comma-separated phases to run (default: all but scale)",
    )
    ap.add_argument(
        "--scale",
        type=int,
        default=None,
        metavar="N",
        help="also run the scale phase: N devices (a multiple of 4, at most 256) under one up, "
        "with spawn and with forkserver",
    )
    ap.add_argument(
        "--supervised-pool",
        type=int,
        default=None,
        metavar="N",
        help="pool_size of the supervised device in the throughput, mq and latency phases "
        "(default: the supervisor's, 2; 0 runs it without idle warm workers)",
    )
    ap.add_argument("--kills", type=int, default=None, help="restart: kills per run (default 10, quick 3)")
    ap.add_argument(
        "--restart-runs", type=int, default=None, help="restart: runs per own_sockets setting (default 3, quick 1)"
    )
    args = ap.parse_args(argv)
    prof = QUICK if args.quick else FULL
    overrides = {
        "reps": args.reps,
        "kills": args.kills,
        "restart_runs": args.restart_runs,
        "supervised_pool": args.supervised_pool,
    }
    prof = Profile(**{**asdict(prof), **{k: v for k, v in overrides.items() if v is not None}})
    phases = [x.strip() for x in args.only.split(",") if x.strip()]
    if args.scale is not None:
        if args.scale % 4 or not 4 <= args.scale <= 256:
            ap.error("--scale N: N must be a multiple of 4 between 4 and 256 (4 devices of at most 64 replicas)")
        phases.append("scale")
    # Like pyzmq's from its wheel, procdevices' modules must be compiled before devices start:
    # an editable install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile them in
    # every spawned device and count that as procdevices' start-up.
    compileall.compile_dir(os.path.dirname(procdevices.__file__), quiet=1)
    t_start = now()
    meta = machine_meta()
    meta.update(profile=prof.name, argv=sys.argv, json=os.path.abspath(args.json), phases={})
    res: dict[str, Any] = {"meta": meta, "profile": asdict(prof), "errors": ERRORS}
    res["profile"]["tp_msgs"] = {str(k): v for k, v in prof.tp_msgs.items()}
    tmp = short_tmp("pdbench-")
    helpers: Helpers | None = None
    try:
        helpers = Helpers()
        h = helpers
        runners = {
            "throughput": lambda: phase_throughput(h, prof, tmp),
            "mq": lambda: phase_throughput(h, prof, tmp, MQ_CASES, "pyzmq-mq"),
            "tap": lambda: phase_throughput(h, prof, tmp, TAP_CASES, "supervised"),
            "latency": lambda: phase_latency(h, prof, tmp),
            "startup": lambda: phase_startup(prof, tmp),
            "restart": lambda: phase_restart(prof, tmp),
            "overhead": lambda: phase_overhead(prof, tmp),
            "scale": lambda: phase_scale(args.scale or 0, prof, tmp),
        }
        for name, run in runners.items():
            if name in phases:
                load0, t0 = os.getloadavg()[0], now()
                res[name] = run()
                meta["phases"][name] = {
                    "seconds": now() - t0,
                    "loadavg1_start": load0,
                    "loadavg1_end": os.getloadavg()[0],
                }
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        ERRORS.append({"phase": "run", "case": "-", "error": "interrupted", "traceback": ""})
    finally:
        if helpers is not None:
            helpers.close()
        shutil.rmtree(tmp, ignore_errors=True)
        meta["wall_s"] = now() - t_start
        meta["loadavg_end"] = os.getloadavg()
        leftovers = []
        for c in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "resource_tracker" not in " ".join(c.cmdline() or []):
                    leftovers.append(c.pid)
        if leftovers:
            log(f"killing leftover child processes {leftovers}")
            kill_tree(leftovers)
        meta["leftover_children"] = leftovers
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    print_report(res)
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
