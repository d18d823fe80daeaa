"""A socket table: its type, endpoints (syntax via ``endpoints``) and socket options.

Option values are first checked against what the option's C type can hold
(a message naming the range reads better than libzmq's "Invalid argument"),
then tried on the real libzmq (``libzmq_trial``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import zmq
from zmq.utils import z85

from procdevices.supervisor.config.endpoints import check_endpoint
from procdevices.supervisor.config.errors import (
    Invalid,
    as_table,
    check_keys,
    expected,
    join_key,
    one_of,
    show,
    suggest,
    utf8,
)
from procdevices.supervisor.config.hosts import check_reference, is_reference
from procdevices.supervisor.config.kinds import SOCKET_TYPE_NAMES
from procdevices.supervisor.config.libzmq_trial import LibzmqTrial
from procdevices.supervisor.config.model import SocketSpec

__all__ = ["parse_socket"]

SOCKET_KEYS = ("type", "bind", "connect", "sockopts")

_SUBSCRIPTION_OPTIONS = frozenset({zmq.SocketOption.SUBSCRIBE, zmq.SocketOption.UNSUBSCRIBE})
# Options that can only be read, never set.
READ_ONLY_OPTIONS = frozenset(
    getattr(zmq.SocketOption, name)
    for name in ("FD", "EVENTS", "RCVMORE", "TYPE", "LAST_ENDPOINT", "MECHANISM", "THREAD_SAFE", "TOPICS_COUNT")
    if hasattr(zmq.SocketOption, name)
)
# A file descriptor number means nothing in another process: a device is spawned.
_PROCESS_LOCAL_OPTIONS = frozenset(
    getattr(zmq.SocketOption, name) for name in ("USE_FD",) if hasattr(zmq.SocketOption, name)
)
_CURVE_KEYS = frozenset(
    getattr(zmq.SocketOption, name)
    for name in ("CURVE_PUBLICKEY", "CURVE_SECRETKEY", "CURVE_SERVERKEY")
    if hasattr(zmq.SocketOption, name)
)
_Z85_ALPHABET = frozenset(z85.Z85CHARS.decode("ascii"))
# The C types behind pyzmq's option types: what a value must fit.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "int": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
# libzmq refuses negative high-water marks with a bare EINVAL: say why (other options'
# ranges are left to the trial on libzmq itself).
_NON_NEGATIVE = frozenset(
    getattr(zmq.SocketOption, name) for name in ("SNDHWM", "RCVHWM", "HWM") if hasattr(zmq.SocketOption, name)
)


def parse_socket(value: object, prefix: str, default_type: str, base_dir: str, trial: LibzmqTrial) -> SocketSpec:
    table = as_table(value, prefix)
    check_keys(table, SOCKET_KEYS, prefix)
    type_name = default_type
    if "type" in table:
        key = f"{prefix}.type"
        text = table["type"]
        if not isinstance(text, str):
            raise expected(key, "a string", text)
        type_name = text.upper()
        if type_name not in SOCKET_TYPE_NAMES:
            raise Invalid(
                key,
                f"unknown socket type '{text}': expected one of {one_of(SOCKET_TYPE_NAMES)}"
                f"{suggest(type_name, SOCKET_TYPE_NAMES)}",
            )
    socket_type = int(zmq.SocketType[type_name])

    endpoints: dict[str, tuple[str, ...]] = {}
    for direction in ("bind", "connect"):
        key = f"{prefix}.{direction}"
        raw = table.get(direction, [])
        if not isinstance(raw, (list, tuple)):
            raise expected(key, "an array of endpoint strings", raw)
        endpoints[direction] = tuple(
            # "@DEVICE.ROLE" stays as written until every device is known (rules.check resolves it).
            check_reference(item, f"{key}[{i}]")
            if direction == "connect" and is_reference(item)
            else check_endpoint(item, f"{key}[{i}]", bind=direction == "bind", base_dir=base_dir)
            for i, item in enumerate(raw)
        )
    if not endpoints["bind"] and not endpoints["connect"]:
        raise Invalid(prefix, "socket needs at least one bind or connect endpoint")

    sockopts: tuple[tuple[int, int | bytes], ...] = ()
    if "sockopts" in table:
        key = f"{prefix}.sockopts"
        named = parse_sockopts(table["sockopts"], key, type_name)
        sockopts = tuple((option, value) for _, option, value in named)
        refused = trial.options(socket_type, sockopts)
        if refused is not None:
            index, why = refused
            name, option, value = named[index]
            raise Invalid(
                join_key(key, name),
                f"libzmq refuses {zmq.SocketOption(option).name} = {show(_readable(value))} "
                f"on a {type_name} socket: {why}",
            )
    return SocketSpec(type=socket_type, bind=endpoints["bind"], connect=endpoints["connect"], sockopts=sockopts)


def _readable(value: int | bytes) -> object:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def parse_sockopts(value: object, prefix: str, socket_type: str) -> list[tuple[str, int, int | bytes]]:
    """(name as written, option, value) in the order written."""
    table: Mapping[str, Any] = as_table(value, prefix)
    result: list[tuple[str, int, int | bytes]] = []
    seen: dict[zmq.SocketOption, str] = {}
    members = zmq.SocketOption.__members__
    for raw_name, raw_value in table.items():
        name = str(raw_name)
        key = join_key(prefix, name)
        option = members.get(name.upper())
        if option is None:
            raise Invalid(key, f"unknown socket option '{name}'{suggest(name.upper(), members)}")
        if option in READ_ONLY_OPTIONS:
            raise Invalid(key, f"socket option '{name}' is read-only")
        if option in _PROCESS_LOCAL_OPTIONS:
            raise Invalid(
                key,
                f"socket option '{name}' cannot be configured: a file descriptor "
                "number means nothing inside a device process",
            )
        if option in seen:
            raise Invalid(key, f"socket option '{name}' is set twice (also as '{seen[option]}')")
        seen[option] = name
        opt_type = getattr(getattr(option, "_opt_type", None), "value", None)
        if option in _SUBSCRIPTION_OPTIONS:
            if socket_type != "SUB":
                raise Invalid(key, f"'{option.name}' is only valid on SUB sockets, not {socket_type}")
            items = (
                [(f"{key}[{i}]", item) for i, item in enumerate(raw_value)]
                if isinstance(raw_value, (list, tuple))
                else [(key, raw_value)]
            )
            for item_key, item in items:
                if not isinstance(item, str):
                    raise expected(item_key, "a string (or an array of strings)", item)
                result.append((name, int(option), utf8(item, item_key)))
            continue
        converted: int | bytes
        if isinstance(raw_value, bool):
            converted = int(raw_value)
        elif isinstance(raw_value, int):
            converted = raw_value
        elif isinstance(raw_value, str):
            converted = utf8(raw_value, key)
        else:
            raise expected(key, "an integer, string or boolean", raw_value)
        if opt_type == "bytes" and not isinstance(converted, bytes):
            raise expected(key, f"a string for socket option '{option.name}'", raw_value)
        if opt_type in _INT_RANGES:
            if isinstance(converted, bytes):
                raise expected(key, f"an integer for socket option '{option.name}'", raw_value)
            low, high = _INT_RANGES[opt_type]
            if option in _NON_NEGATIVE:
                low = 0
            if not low <= converted <= high:
                raise Invalid(
                    key, f"socket option '{option.name}' must be between {low} and {high}, got {show(converted)}"
                )
        if option in _CURVE_KEYS and isinstance(converted, bytes):
            _check_curve_key(key, option.name, converted)
        result.append((name, int(option), converted))
    return result


def _check_curve_key(key: str, name: str, value: bytes) -> None:
    if len(value) == 32:
        return
    if len(value) == 40 and set(value.decode("utf-8")) <= _Z85_ALPHABET:
        return
    raise Invalid(key, f"{name} must be a 40-character Z85 key (or 32 raw bytes), got {len(value)} bytes")
