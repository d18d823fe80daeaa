"""Each device process's own output (stdout and stderr, Python's and libzmq's alike) goes to
``<run_dir>/logs/<instance>.log``; ``procdevices logs NAME`` shows it.

The device process appends to its file itself (the worker points fds 1 and 2 at it, opened
``O_APPEND``, before it runs the device), so its output never mixes into the supervisor's log
and survives the supervisor. Files are kept under ``[supervisor] device_log_max_bytes``, with
``device_log_backups`` older files (``NAME.log.1`` the newest):

- when a device process starts, a file over the limit is renamed (nobody writes to it then);
- while processes run, a ``Rotator`` thread of the supervisor looks every second (sooner for
  a log that grows fast enough to pass the limit before then: at its rate, when it would
  reach it, at most every 50 ms) and copies a file over the limit to ``NAME.log.1``, then
  truncates it (like logrotate's
  ``copytruncate``): the device keeps its descriptor, and its appends land at the start of
  the emptied file. A line written in the microseconds between the end of the copy and the
  truncation is lost; the device is never paused nor signalled for its log. The copy runs in
  that thread, never in the supervisor's loop.

So each of a device's ``backups + 1`` files holds at most ``max_bytes`` plus what the device
writes between two looks: at most a second's output, and once its rate is known (after the
first look) what it writes until the look timed for when the file reaches the limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from procdevices import runlayout
from procdevices.logs import Log

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
CHECK_INTERVAL = 1.0  # seconds between two looks at the running devices' logs, at most
MIN_INTERVAL = 0.05  # and at least (a log that fills fast is looked at sooner)
RATE_MEMORY = 0.9  # per look, how much of a log's last growth rate is still believed

# The start of a process (the loop's thread) and the Rotator must never shift one file's
# backups at the same time.
_shifting = threading.Lock()


class Rotation(NamedTuple):
    max_bytes: int = MAX_BYTES
    backups: int = BACKUPS


def log_dir(run_dir: Path) -> Path:
    return runlayout.log_dir(run_dir)


def log_path(run_dir: Path, instance: str) -> Path:
    return runlayout.log_file(run_dir, instance)


def prepare(run_dir: Path) -> None:
    directory = log_dir(run_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)


def _backup(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def _shift(path: Path, backups: int) -> None:
    """``.1`` → ``.2`` ... (the oldest beyond ``backups`` replaced)."""
    for index in range(backups - 1, 0, -1):
        older = _backup(path, index)
        if older.exists():
            older.replace(_backup(path, index + 1))


def rotate_if_large(path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> bool:
    """Shift ``path`` to ``path.1`` (``.1`` to ``.2``, ...) when it is over ``max_bytes``; for a
    file no process writes (a device about to start). Never raises: a log that cannot be
    rotated must not keep a device from starting."""
    with _shifting:
        try:
            if path.stat().st_size <= max_bytes:
                return False
            if backups <= 0:
                path.unlink()
                return True
            _shift(path, backups)
            path.replace(_backup(path, 1))
            return True
        except OSError:
            return False


def rotate_live(path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> bool:
    """Copy ``path`` to ``path.1`` and truncate it, when it is over ``max_bytes``: for a file a
    running process appends to (its descriptor stays valid). OSError is for the caller."""
    with _shifting:
        if path.stat().st_size <= max_bytes:
            return False
        if backups > 0:
            _shift(path, backups)
        partial = path.with_name(f".{path.name}.rotating")
        with open(path, "rb") as src, open(os.open(path, os.O_WRONLY | os.O_CLOEXEC), "wb") as live:
            if backups > 0:
                with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                    # At the end of what was written: truncate at once, the window stays tiny.
                    os.ftruncate(live.fileno(), 0)
                partial.replace(_backup(path, 1))
            else:
                os.ftruncate(live.fileno(), 0)
        return True


class Rotator:
    """The supervisor's thread that keeps every ``*.log`` of a log directory under its bound."""

    def __init__(self, directory: Path, rotation: Rotation, log: Log, interval: float = CHECK_INTERVAL) -> None:
        self.directory = directory
        self.rotation = rotation
        self.log = log
        self.interval = interval
        self.rotated = 0
        self._sizes: dict[str, int] = {}  # each log's size at the last look (after rotation)
        self._rates: dict[str, float] = {}  # each log's recent growth, bytes per second
        self._last = time.monotonic()
        self._failed: set[str] = set()  # files whose failure was reported (once each)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device-log-rotator", daemon=True)

    def start(self) -> Rotator:
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.check()

    def check(self) -> float:
        """One look at every log (never raises: a log must not cost supervision anything);
        returns when to look again: ``interval``, or sooner when a file grows fast enough to
        pass its bound before then (never more often than every ``MIN_INTERVAL``)."""
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        try:
            entries = [e for e in os.scandir(self.directory) if e.name.endswith(".log")]
        except OSError:
            return self.interval
        wait = self.interval
        sizes: dict[str, int] = {}
        rates: dict[str, float] = {}
        for entry in entries:  # no Path per entry: with 256 logs, a look each second adds up
            try:
                size = observed = entry.stat().st_size
                if size > self.rotation.max_bytes and rotate_live(
                    Path(entry.path), self.rotation.max_bytes, self.rotation.backups
                ):
                    self.rotated += 1
                    size = 0
                self._failed.discard(entry.name)
            except FileNotFoundError:
                continue
            except OSError as e:
                if entry.name not in self._failed:
                    self._failed.add(entry.name)
                    self.log(f"cannot rotate device log {entry.path}: {e.strerror or e}", level=logging.WARNING)
                continue
            sizes[entry.name] = size
            # A log new since the last look grew from nothing (one there since before we started
            # looks fast once; the rate fades).
            growth = (observed - self._sizes.get(entry.name, 0)) / elapsed if elapsed > 0 else 0.0
            # Output comes in bursts: a quiet 50 ms says little. Remember the rate, fading.
            growth = rates[entry.name] = max(growth, RATE_MEMORY * self._rates.get(entry.name, 0.0))
            if growth > 0:
                wait = min(wait, max(MIN_INTERVAL, (self.rotation.max_bytes - size) / growth))
        self._sizes = sizes
        self._rates = rates
        return wait

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (read from the end: logs may be large)."""
    if lines <= 0:
        return []
    with open(path, "rb") as f:
        position = f.seek(0, os.SEEK_END)
        data = b""
        while position > 0 and data.count(b"\n") <= lines:
            step = min(65536, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    text = data.decode(errors="replace").splitlines()
    return text[-lines:]


def follow(path: Path, wait: float = 0.2) -> Generator[str, None, None]:
    """Lines appended to ``path`` from this call on (the file is opened now, not at the first
    ``next``); starts over when the file is rotated or truncated. Runs until the caller stops
    iterating."""
    handle = open(path, "rb")  # noqa: SIM115 - owned by the generator below, which closes it
    handle.seek(0, os.SEEK_END)
    return _appended(path, handle, wait)


def _appended(path: Path, handle: BinaryIO, wait: float) -> Generator[str, None, None]:
    import time

    try:
        identity = os.fstat(handle.fileno()).st_ino
        partial = b""
        while True:
            chunk = handle.readline()
            if chunk:
                partial += chunk
                if partial.endswith(b"\n"):
                    yield partial.decode(errors="replace").rstrip("\n")
                    partial = b""
                continue
            with contextlib.suppress(OSError):
                current = path.stat()
                if current.st_ino != identity or current.st_size < handle.tell():
                    handle.close()
                    handle = open(path, "rb")  # noqa: SIM115
                    identity = os.fstat(handle.fileno()).st_ino
                    continue
            time.sleep(wait)  # a file has no readiness event to wait on
    finally:
        handle.close()
