"""The scalar settings: ONE table, one row per setting.

A row gives the key (dotted for the ``backoff``/``intensity``/``probe``
sub-tables), its value type, default, range, scope and what a change of it means
on reload (``OnReload``: reload.py derives its behaviour from this column). Everything else is
derived from the table: the keys allowed in ``[supervisor]``, in a device and
in ``[supervisor.defaults]``, the "did you mean" candidates, field-by-field
merging of defaults, and the keyword arguments of ``DeviceConfig``. The table
in docs/configuration.md is checked against it (tests/unit/test_config_schema.py).

Recipe, a new device setting: add a row (with its ``on_reload``), add the field (same
default) to ``DeviceConfig`` (or to its sub-table's record), use it, document it.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from procdevices import runlayout
from procdevices.supervisor.config.errors import Invalid, as_table, check_keys, expected, one_of, show, suggest
from procdevices.supervisor.config.model import BackoffPolicy, Intensity, ProbeSpec, RestartPolicy, StartMethod

__all__ = [
    "DEVICE_SETTINGS",
    "DEVICE_SETTING_KEYS",
    "GROUP_FIELDS",
    "GROUP_TYPES",
    "MAX_DEADLINE_SECONDS",
    "MEMORY_LIMIT_FLOOR",
    "STRUCTURE_ON_RELOAD",
    "OnReload",
    "SETTINGS",
    "SUPERVISOR_SETTINGS",
    "Scope",
    "Setting",
    "ValueType",
    "Values",
    "device_fields",
    "device_field_on_reload",
    "group_origin",
    "merged",
    "parse_memory_size",
    "parse_settings",
    "parse_value",
    "split_host_port",
]


class ValueType(enum.Enum):
    SECONDS = "seconds"
    NUMBER = "number"
    INTEGER = "integer"
    CHOICE = "choice"
    MEMORY = "memory"
    PATH = "path"
    BOOLEAN = "boolean"
    ADDRESS = "string (HOST:PORT)"


class OnReload(enum.Enum):
    """What a change of a setting means when the topology is reloaded."""

    RESTART = "restart the process"  # the device process runs with it: a new process
    LIVE = "apply live"  # how the supervisor treats the process: the running one keeps going
    INSTANCES = "start or stop instances"  # which instances exist (matched by name)
    NEXT_UP = "needs a new `up`"  # read once at `up`: reported as not applied
    REFUSED = "refused while running"  # a reload that changes it changes nothing


class Scope(enum.Enum):
    SUPERVISOR = "supervisor"  # in [supervisor]
    DEVICE = "device"  # in a device, or in [supervisor.defaults]


class Setting(NamedTuple):
    path: str  # "stop_timeout", or "group.field" inside a sub-table
    value_type: ValueType
    default: object  # None: no default (unset means "off")
    minimum: float | None = None
    min_inclusive: bool = False
    maximum: float | None = None
    choices: type[enum.Enum] | None = None  # for CHOICE: the enum whose values are accepted
    label: str = ""  # for CHOICE messages: "invalid <label> 'x'"
    scope: Scope = Scope.DEVICE
    on_reload: OnReload | None = None  # every row says (a test holds it)

    @property
    def group(self) -> str | None:
        return self.path.split(".")[0] if "." in self.path else None

    @property
    def field(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def top_key(self) -> str:
        return self.path.split(".")[0]


#: Every timer the supervisor turns into a poll deadline must fit a C int of
#: milliseconds (zmq_poll's timeout): 2**31 ms is 24.8 days. 10**6 s (11.6 days)
#: is far above any sensible timeout and leaves room for the sum of two.
MAX_DEADLINE_SECONDS = 1_000_000.0

#: The smallest memory_limit accepted. An idle ProcessDevice (zmq.QUEUE) has an
#: RSS of ~22 MiB on Linux x86-64 with Python 3.11 and pyzmq 27 (measured, see
#: docs/configuration.md); any lower limit restarts the device until FATAL.
MEMORY_LIMIT_FLOOR = 32 * 1024**2

_S, _N, _I = ValueType.SECONDS, ValueType.NUMBER, ValueType.INTEGER
_RESTART, _LIVE, _NEXT_UP = OnReload.RESTART, OnReload.LIVE, OnReload.NEXT_UP
_DEADLINE = MAX_DEADLINE_SECONDS

SETTINGS: tuple[Setting, ...] = (
    Setting("run_dir", ValueType.PATH, runlayout.DEFAULT_RUN_DIR, scope=Scope.SUPERVISOR, on_reload=OnReload.REFUSED),
    Setting("pool_size", _I, 2, minimum=0, min_inclusive=True, maximum=64, scope=Scope.SUPERVISOR, on_reload=_LIVE),
    # The metrics server is bound once, before any device starts: a new address needs `up`.
    Setting("metrics", ValueType.ADDRESS, None, scope=Scope.SUPERVISOR, on_reload=_NEXT_UP),
    Setting("metrics_socket", ValueType.BOOLEAN, False, scope=Scope.SUPERVISOR, on_reload=_NEXT_UP),
    # Each device's own log (devicelogs.py): its size before rotation, and the older files kept.
    Setting(
        "device_log_max_bytes",
        _I,
        10 * 1024**2,
        minimum=4096,
        min_inclusive=True,
        scope=Scope.SUPERVISOR,
        on_reload=_NEXT_UP,
    ),
    Setting(
        "device_log_backups",
        _I,
        3,
        minimum=0,
        min_inclusive=True,
        maximum=100,
        scope=Scope.SUPERVISOR,
        on_reload=_NEXT_UP,
    ),
    Setting(
        "start_method",
        ValueType.CHOICE,
        StartMethod.SPAWN,
        choices=StartMethod,
        label="start method",
        scope=Scope.SUPERVISOR,
        on_reload=_NEXT_UP,
    ),
    # How long a device whose supervisor died goes on forwarding, waiting to be adopted by the
    # next `up` (docs/reliability.md, "Supervisor restarts"); 0: it stops at once. Devices read
    # it when they start (from up's environment): a change needs a new `up`.
    Setting(
        "orphan_grace",
        _S,
        10.0,
        minimum=0,
        min_inclusive=True,
        maximum=_DEADLINE,
        scope=Scope.SUPERVISOR,
        on_reload=_NEXT_UP,
    ),
    Setting(
        "restart",
        ValueType.CHOICE,
        RestartPolicy.ALWAYS,
        choices=RestartPolicy,
        label="restart policy",
        on_reload=_LIVE,
    ),
    Setting("backoff.initial", _S, 0.05, minimum=0, maximum=_DEADLINE, on_reload=_LIVE),
    Setting("backoff.max", _S, 5.0, minimum=0, maximum=_DEADLINE, on_reload=_LIVE),
    Setting("backoff.factor", _N, 2.0, minimum=1, min_inclusive=True, on_reload=_LIVE),
    Setting("intensity.max_restarts", _I, 5, minimum=0, min_inclusive=True, on_reload=_LIVE),
    Setting("intensity.within", _S, 30.0, minimum=0, on_reload=_LIVE),
    Setting("stable_after", _S, 10.0, minimum=0, on_reload=_LIVE),
    # Below 50 ms the probes themselves load the machine (1e-4 s burnt 44% of a core).
    Setting("probe.interval", _S, 1.0, minimum=0.05, min_inclusive=True, maximum=_DEADLINE, on_reload=_LIVE),
    # A ping round trip on a busy machine takes milliseconds: less flags healthy devices as hung.
    Setting("probe.timeout", _S, 1.0, minimum=0.01, min_inclusive=True, maximum=_DEADLINE, on_reload=_LIVE),
    Setting("probe.failures", _I, 3, minimum=1, min_inclusive=True, on_reload=_LIVE),
    Setting("memory_limit", ValueType.MEMORY, None, minimum=MEMORY_LIMIT_FLOOR, min_inclusive=True, on_reload=_LIVE),
    Setting("start_timeout", _S, 10.0, minimum=0, maximum=_DEADLINE, on_reload=_LIVE),
    Setting("stop_timeout", _S, 5.0, minimum=0, maximum=_DEADLINE, on_reload=_LIVE),
    Setting("kill_timeout", _S, 2.0, minimum=0, maximum=_DEADLINE, on_reload=_LIVE),
    Setting("stop_linger", _S, 1.0, minimum=0, min_inclusive=True, maximum=_DEADLINE, on_reload=_RESTART),
    Setting("replicas", _I, 1, minimum=1, min_inclusive=True, maximum=64, on_reload=OnReload.INSTANCES),
    Setting("own_sockets", ValueType.BOOLEAN, True, on_reload=_RESTART),
)

DEVICE_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.scope is Scope.DEVICE)
SUPERVISOR_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.scope is Scope.SUPERVISOR)

#: The record each sub-table becomes in DeviceConfig.
GROUP_TYPES: dict[str, type[Any]] = {"backoff": BackoffPolicy, "intensity": Intensity, "probe": ProbeSpec}

#: Keys a device (or [supervisor.defaults]) may hold because of the table, in table order.
DEVICE_SETTING_KEYS: tuple[str, ...] = tuple(dict.fromkeys(s.top_key for s in DEVICE_SETTINGS))
GROUP_FIELDS: dict[str, tuple[str, ...]] = {
    group: tuple(s.field for s in DEVICE_SETTINGS if s.group == group) for group in GROUP_TYPES
}

#: The DeviceConfig fields that are not settings rows (the device's shape and identity):
#: what a change of each means on reload.
STRUCTURE_ON_RELOAD: dict[str, OnReload] = {
    "name": OnReload.INSTANCES,  # instances are matched by name
    # A supervisor runs only its own host's devices: one moved elsewhere is gone here.
    "host": OnReload.INSTANCES,
    **dict.fromkeys(("kind", "in_", "out", "mon", "ctrl", "in_prefix", "out_prefix"), OnReload.RESTART),
}


def device_field_on_reload() -> dict[str, OnReload | None]:
    """Each DeviceConfig field (a sub-table is one field) → what a change of it means on
    reload, from the rows (a sub-table's rows must agree) and STRUCTURE_ON_RELOAD."""
    result: dict[str, OnReload | None] = dict(STRUCTURE_ON_RELOAD)
    for setting in DEVICE_SETTINGS:
        seen = result.setdefault(setting.top_key, setting.on_reload)
        if seen is not setting.on_reload:
            result[setting.top_key] = None  # rows of one sub-table that disagree: unclassified
    return result


# --------------------------------------------------------------------------
# Scalar parsers: value and key path in, converted value out, or Invalid.


def parse_value(setting: Setting, value: object, key: str) -> object:
    if setting.value_type in (ValueType.SECONDS, ValueType.NUMBER):
        return _number(setting, value, key)
    if setting.value_type is ValueType.INTEGER:
        return _integer(setting, value, key)
    if setting.value_type is ValueType.CHOICE:
        return _choice(setting, value, key)
    if setting.value_type is ValueType.MEMORY:
        return _memory(setting, value, key)
    if setting.value_type is ValueType.PATH:
        if not isinstance(value, str):
            raise expected(key, "a string", value)
        if not value:
            raise Invalid(key, "must not be empty")
        if not value.isprintable():
            # It becomes part of every control socket path, and of messages.
            raise Invalid(key, f"'{value}' contains a control character")
        return value
    if setting.value_type is ValueType.BOOLEAN:
        if not isinstance(value, bool):
            raise expected(key, "true or false", value)
        return value
    if setting.value_type is ValueType.ADDRESS:
        if not isinstance(value, str):
            raise expected(key, "a string", value)
        try:
            split_host_port(value)
        except ValueError as e:
            raise Invalid(key, f"invalid address '{show(value)}': {e}") from None
        return value
    raise AssertionError(setting.value_type)  # pragma: no cover - every ValueType is handled above


def split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``"localhost:0"`` -> (host, port); ValueError
    with the reason otherwise. Only IP literals and ``localhost``: a name that needs a resolver
    would make ``up`` depend on DNS, and could resolve to an interface nobody meant to open."""
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]:")
        if not bracket:
            raise ValueError("expected HOST:PORT, with an IPv6 host in brackets, e.g. '[::1]:9464'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{show(host)}' is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError("expected HOST:PORT, e.g. '127.0.0.1:9464'")
        if host != "localhost":
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(
                    f"host '{show(host)}' must be an IPv4 address, an IPv6 address in brackets or 'localhost'"
                ) from None
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"port '{show(port_text)}' must be a number from 0 to 65535 (0: any free port)")
    return host, int(port_text)


def _bound(setting: Setting, value: float, key: str, shown: object) -> None:
    low = setting.minimum
    if low is not None:
        if setting.min_inclusive and value < low:
            raise Invalid(key, f"must be >= {low:g}, got {show(shown)}")
        if not setting.min_inclusive and value <= low:
            raise Invalid(key, f"must be > {low:g}, got {show(shown)}")
    high = setting.maximum
    if high is not None and value > high:
        raise Invalid(key, f"must be <= {high:g}, got {show(shown)}")


def _number(setting: Setting, value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise expected(key, "a number", value)
    try:
        result = float(value)
    except OverflowError:
        raise Invalid(key, f"expected a finite number, got {show(value)}") from None
    if not math.isfinite(result):
        raise Invalid(key, f"expected a finite number, got {value}")
    _bound(setting, result, key, value)
    return result


def _integer(setting: Setting, value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise expected(key, "an integer", value)
    low, high = setting.minimum, setting.maximum
    if high is not None and low is not None and not low <= value <= high:
        raise Invalid(key, f"must be between {low:g} and {high:g}, got {show(value)}")
    _bound(setting, value, key, value)
    return value


def _choice(setting: Setting, value: object, key: str) -> enum.Enum:
    assert setting.choices is not None, "a CHOICE row names its enum"
    if not isinstance(value, str):
        raise expected(key, "a string", value)
    by_value = {str(member.value): member for member in setting.choices}
    if value not in by_value:
        raise Invalid(
            key,
            f"invalid {setting.label} '{value}': expected one of {one_of(by_value)}{suggest(value, by_value)}",
        )
    return by_value[value]


_MEMORY_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}
_MEMORY_RE = re.compile(r"\s*(\d{1,30}(?:\.\d{1,30})?)\s*([A-Za-z]*)\s*")
MEMORY_UNIT_NAMES = ("B", "KiB", "MiB", "GiB", "KB", "MB", "GB")


def parse_memory_size(value: object, key: str) -> int:
    """Bytes from an integer or a string like ``"256MiB"`` / ``"1.5GB"`` (no floor applied)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise expected(key, "an integer number of bytes or a string like '256MiB'", value)
    if isinstance(value, int):
        return value
    match = _MEMORY_RE.fullmatch(value)
    multiplier = _MEMORY_UNITS.get(match.group(2).lower()) if match else None
    if match is None or multiplier is None:
        raise Invalid(
            key,
            f"invalid memory size '{show(value)}': expected a number with an optional unit "
            f"({one_of(MEMORY_UNIT_NAMES)}), e.g. '256MiB'",
        )
    from decimal import Decimal  # exact for "1.5MiB"; imported only where a size is written as text

    return int(Decimal(match.group(1)) * multiplier)


def _memory(setting: Setting, value: object, key: str) -> int:
    result = parse_memory_size(value, key)
    if setting.minimum is not None and result < setting.minimum:
        raise Invalid(
            key,
            f"memory limit {show(value)} ({show(result)} bytes) is below the floor of "
            f"{int(setting.minimum) // 1024**2} MiB: an idle device process already has a resident "
            "size of about 22 MiB, so it would be restarted until FATAL",
        )
    return result


# --------------------------------------------------------------------------
# A table of settings: parse, merge, turn into DeviceConfig fields.


class Values(NamedTuple):
    """The settings one table sets explicitly (by path), and the sub-tables it contains."""

    prefix: str
    values: Mapping[str, object]
    groups: frozenset[str]


def parse_settings(table: Mapping[str, Any], prefix: str, rows: tuple[Setting, ...] = DEVICE_SETTINGS) -> Values:
    """The settings of ``rows`` present in ``table`` (unknown top-level keys already checked)."""
    values: dict[str, object] = {}
    groups: set[str] = set()
    for group, fields in GROUP_FIELDS.items():
        if group in table:
            key = f"{prefix}.{group}"
            check_keys(as_table(table[group], key), fields, key)
            groups.add(group)
    for setting in rows:
        if setting.group is None:
            container: Mapping[str, Any] = table
        elif setting.group in groups:
            container = table[setting.group]
        else:
            continue
        if setting.field in container:
            values[setting.path] = parse_value(setting, container[setting.field], f"{prefix}.{setting.path}")
    return Values(prefix, values, frozenset(groups))


def merged(defaults: Values, device: Values) -> dict[str, object]:
    """Each setting from the device if it sets it, else from the defaults, else the row's default."""
    return {s.path: device.values.get(s.path, defaults.values.get(s.path, s.default)) for s in DEVICE_SETTINGS}


def group_origin(group: str, defaults: Values, device: Values) -> str:
    """The key path of the last table that set sub-table ``group``: where a cross-field error points."""
    for values in (device, defaults):
        if group in values.groups:
            return f"{values.prefix}.{group}"
    return f"{device.prefix}.{group}"


def device_fields(resolved: Mapping[str, object]) -> dict[str, Any]:
    """DeviceConfig keyword arguments from resolved settings (sub-tables as their records)."""
    fields: dict[str, Any] = {}
    grouped: dict[str, dict[str, object]] = {group: {} for group in GROUP_TYPES}
    for setting in DEVICE_SETTINGS:
        value = resolved[setting.path]
        if setting.group is None:
            fields[setting.path] = value
        else:
            grouped[setting.group][setting.field] = value
    for group, kwargs in grouped.items():
        fields[group] = GROUP_TYPES[group](**kwargs)
    return fields
