"""Reading a topology file: bounded, non-blocking, and only from a regular file.

``-c`` may name anything: a FIFO (a plain open() would wait for a writer for
ever), /dev/zero (a plain read() runs until MemoryError), a directory. The
file is opened with O_NONBLOCK, checked with fstat() before a byte is read,
and read up to a size limit.
"""

from __future__ import annotations

import os
import stat
import tomllib
from typing import Any

from procdevices.supervisor.config.errors import Invalid

__all__ = ["MAX_FILE_SIZE", "decode_toml", "read_config_file"]

#: A topology of thousands of devices is a few hundred KiB; more is a mistake.
MAX_FILE_SIZE = 1024 * 1024

_FILE_TYPES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file at ``path``, or Invalid("", reason)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise Invalid("", "file not found") from None
    except IsADirectoryError:  # pragma: no cover - Linux opens directories read-only
        raise Invalid("", "is a directory, not a file") from None
    except OSError as exc:
        raise Invalid("", f"cannot read file: {exc.strerror or exc}") from None
    except ValueError:
        # A NUL in the path (the only ValueError of os.open). Our words, not Python's: its
        # wording changed in 3.13 ("embedded null character in path").
        raise Invalid("", "cannot read file: the path contains a NUL byte") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise Invalid("", "is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            what = next((name for test, name in _FILE_TYPES if test(info.st_mode)), "not a regular file")
            raise Invalid("", f"is {what}, not a regular file")
        if info.st_size > MAX_FILE_SIZE:
            raise Invalid("", f"file is too large: {info.st_size} bytes, the limit is {MAX_FILE_SIZE} bytes")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while True:
            # The file may grow between fstat() and read(): the limit holds anyway.
            chunk = os.read(fd, MAX_FILE_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_SIZE:
                raise Invalid("", f"file is too large: more than {MAX_FILE_SIZE} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise Invalid("", f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def decode_toml(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid("", f"not valid UTF-8 text: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Invalid("", f"invalid TOML: {exc}") from None
    except RecursionError:
        raise Invalid("", "invalid TOML: values nested too deeply") from None
    except ValueError as exc:
        # e.g. an integer literal past Python's int/str conversion limit
        raise Invalid("", f"invalid TOML: {exc}") from None
