"""The shared harness: profiles, deadlines, statistics, logging and errors, process
clean-up, and the spawned helper processes (:mod:`bench.worker`) driven through pipes."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil

from bench.worker import worker_main

#: scripts/, where the package and pyzmq_spawn_devices.py live.
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPAWN = multiprocessing.get_context("spawn")


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
    # the start-up phase's cases (None: every one of startup.STARTUP_CASES)
    startup_cases: tuple[str, ...] | None = None


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


class Worker:
    """A spawned helper process driven through a pipe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=worker_main, args=(child,), name=f"bench-{name}", daemon=True)
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


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total
