"""ConfigError, and the helpers that make every message one printable line.

Validation code raises :class:`Invalid` (a key path and a reason); the loader,
which knows the file name, turns it into a :class:`ConfigError`. Every part of
a message is escaped here, once, so a control character in a file name, a key,
a device name or an endpoint can never reach a terminal raw or split a line.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ConfigError",
    "Invalid",
    "as_table",
    "check_keys",
    "describe_type",
    "expected",
    "join_key",
    "one_of",
    "printable",
    "show",
    "suggest",
    "utf8",
]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# A value quoted in a message is cut here: the message stays one readable line.
_SHOW_MAX = 60


def printable(text: str) -> str:
    """``text`` with every non-printable character (newline, tab, ESC, U+2028, a lone
    surrogate from an undecodable file name, ...) written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class ConfigError(Exception):
    """An invalid topology.

    ``file`` is the path as given (or ``"<default>"``), ``key`` the dotted key
    path of the offending value (``""`` for file-level problems) and ``reason``
    a human readable explanation. All three are stored escaped (see
    :func:`printable`), so ``str(error)`` is always a single printable line.
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = printable(file)
        self.key = printable(key)
        self.reason = printable(reason)
        super().__init__(self._message())

    def _message(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.reason}"
        return f"{self.file}: {self.reason}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:
        return (type(self), (self.file, self.key, self.reason))


class Invalid(Exception):
    """A validation failure before the file name is attached: ``key`` and ``reason``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason


def join_key(prefix: str, name: str) -> str:
    """``prefix.name``, with ``name`` quoted as a TOML key when it is not a bare key."""
    if _BARE_KEY_RE.fullmatch(name):
        part = name
    else:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        part = f'"{escaped}"'
    return f"{prefix}.{part}" if prefix else part


def describe_type(value: object) -> str:
    """TOML-ish name of a value's type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, datetime.datetime):
        return "datetime"
    if isinstance(value, datetime.date):
        return "date"
    if isinstance(value, datetime.time):
        return "time"
    return type(value).__name__


def show(value: object) -> str:
    """A value as quoted in a message, cut to a readable length."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 190:
        # str() of a huge int is slow (and refused past 4300 digits).
        return f"{'-' if value < 0 else ''}(an integer of {value.bit_length()} bits)"
    text = str(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def suggest(word: str, candidates: Iterable[str]) -> str:
    import difflib  # only a misspelt name pays for it

    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def one_of(values: Iterable[str]) -> str:
    return ", ".join(values)


# Table helpers shared by every module that walks the document.


def expected(key: str, what: str, value: object) -> Invalid:
    return Invalid(key, f"expected {what}, got {describe_type(value)}")


def check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for name in table:
        if name not in allowed:
            raise Invalid(join_key(prefix, str(name)), f"unknown key '{name}'{suggest(str(name), allowed)}")


def as_table(value: object, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise expected(key, "a table", value)
    return value


def utf8(text: str, key: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (only a hand-built mapping, never TOML, has one) is Invalid."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(key, "not encodable as UTF-8 (a lone surrogate)") from None
