"""Each device process's own output (stdout and stderr, Python's and libzmq's alike) goes to
``<run_dir>/logs/<instance>.log``; ``procdevices logs NAME`` shows it.

The device process appends to its file itself (the worker points fds 1 and 2 at it before it
runs the device), so its output never mixes into the supervisor's log and survives the
supervisor. Files are rotated when a device process starts and its file is over
``MAX_BYTES``: ``NAME.log`` becomes ``NAME.log.1`` (and so on, ``BACKUPS`` kept).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from pathlib import Path
from typing import BinaryIO

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3


def log_dir(run_dir: Path) -> Path:
    return run_dir / "logs"


def log_path(run_dir: Path, instance: str) -> Path:
    return log_dir(run_dir) / f"{instance}.log"


def prepare(run_dir: Path) -> None:
    directory = log_dir(run_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)


def rotate_if_large(path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> bool:
    """Shift ``path`` to ``path.1`` (``.1`` to ``.2``, ...) when it is over ``max_bytes``.
    Never raises: a log that cannot be rotated must not keep a device from starting."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        for index in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
        return True
    except OSError:
        return False


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
