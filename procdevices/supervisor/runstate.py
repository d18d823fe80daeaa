"""The run directory: lock, run state, and clean-up after an unclean end.

    <run_dir>/            mode 0700: only this user reaches the sockets inside
        lock              flock()ed by the running supervisor (released even by SIGKILL)
        supervisor.sock   the supervisor's control endpoint
        state.json        pid + create time of the supervisor and of every device
        ctl/<name>.sock   each device's control socket

A device of a supervisor that died normally stops by itself (it watches its parent), but
state.json lets the next ``up`` find and stop any device that did not, identified by pid *and*
create time so that a reused pid is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command
from procdevices.errors import DeviceError


class RunDirBusy(Exception):
    """Another supervisor holds the run directory."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def control_endpoint(self) -> str:
        return f"ipc://{self.path}/supervisor.sock"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def device_control_endpoint(self, name: str) -> str:
        return f"ipc://{self.path}/ctl/{name}.sock"

    def prepare(self) -> None:
        (self.path / "ctl").mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    @contextlib.contextmanager
    def locked(self) -> Iterator[IO[str]]:
        """Hold the run directory for the lifetime of a supervisor."""
        self.prepare()
        with open(self.path / "lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _holder_pid(lock)
                raise RunDirBusy(
                    f"another procdevices supervisor (pid {owner}) is running with run dir {self.path}"
                ) from None
            # The holder's pid, for the message above: readable from the moment it holds it.
            lock.seek(0)
            lock.truncate()
            lock.write(str(os.getpid()))
            lock.flush()
            yield lock

    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, devices: dict[str, dict[str, Any]]) -> None:
        me = psutil.Process()
        state = {
            "supervisor": {"pid": me.pid, "create_time": me.create_time()},
            "devices": devices,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def clear_state(self) -> None:
        with contextlib.suppress(OSError):
            self.state_file.unlink()


def _holder_pid(lock: IO[str]) -> str:
    # The holder writes its pid just after taking the lock: give it a moment to do so.
    deadline = time.monotonic() + 0.5
    while True:
        lock.seek(0)
        pid = lock.read().strip()
        if pid or time.monotonic() > deadline:
            return pid or "?"
        time.sleep(0.01)


def identify(pid: int, create_time: float) -> psutil.Process | None:
    """The process with this pid, only if it is the very process recorded (same create time)."""
    try:
        proc = psutil.Process(pid)
        # A zombie has already exited: it only waits for its (new) parent to reap it.
        if abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except psutil.Error:
        pass
    return None


def stop_leftovers(run_dir: RunDir, stop_timeout: float = 3.0) -> list[str]:
    """Stop devices recorded by a supervisor that is gone; returns what was done."""
    done: list[str] = []
    leftovers: list[psutil.Process] = []
    for name, record in run_dir.read_state().get("devices", {}).items():
        proc = identify(int(record.get("pid", 0)), float(record.get("create_time", 0)))
        if proc is None:
            continue
        client = ControlClient(record.get("control_endpoint", run_dir.device_control_endpoint(name)))
        try:
            client.request(Command.STOP, timeout=1.0)
            done.append(f"stopped leftover device {name} (pid {proc.pid}) through its control socket")
        except DeviceError:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
                done.append(f"sent SIGTERM to leftover device {name} (pid {proc.pid})")
        finally:
            client.close()
        leftovers.append(proc)
    _, alive = psutil.wait_procs(leftovers, timeout=stop_timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            done.append(f"killed leftover device pid {proc.pid}")
    psutil.wait_procs(alive, timeout=stop_timeout)
    run_dir.clear_state()
    return done


def remove_stale_sockets(paths: list[Path]) -> list[str]:
    """Remove unix socket files nobody is listening on any more."""
    removed = []
    for path in paths:
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
                removed.append(str(path))
        except OSError:
            continue
    return removed


def wait_gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie has: only its parent has yet to reap it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
