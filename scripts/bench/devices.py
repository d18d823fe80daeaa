"""The devices measured: pyzmq's, procdevices', and one under the supervisor."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import zmq
import zmq.devices

import procdevices
from bench.harness import PhaseTimeout, cpu_seconds, wait_pid_exit
from bench.worker import now
from procdevices.control.client import SupervisorUnreachable, call_supervisor
from procdevices.control.protocol import SupervisorCommand
from procdevices.errors import DeviceError


def ipc_path(tmp: str, tag: str) -> str:
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
            a, b = ipc_path(tmp, f"{tag}-in"), ipc_path(tmp, f"{tag}-out")
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
            self.dev.bind_in(ipc_path(tmp, f"{tag}-in"))
            self.dev.bind_out(ipc_path(tmp, f"{tag}-out"))
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
