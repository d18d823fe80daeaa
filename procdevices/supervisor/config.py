"""Topology configuration: load, validate and represent a TOML topology file.

Everything is validated here, completely, before the supervisor starts a single
process: a :class:`ConfigError` names the file, the dotted key path of the
offending value and the reason.  The result is a tree of frozen dataclasses.

This module is pure logic: it opens no sockets and starts no processes.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import importlib.resources
import os
import pathlib
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn, TypeVar

import zmq

# RestartPolicy, Backoff and Intensity live in policy.py (the single copy the
# restart logic compares against, e.g. ``policy is RestartPolicy.ALWAYS``);
# they are re-exported here under the names the configuration API uses.
from procdevices.supervisor.policy import Backoff, Intensity, RestartPolicy

#: The backoff settings of a device (the same class as ``policy.Backoff``).
BackoffPolicy = Backoff

__all__ = [
    "KINDS",
    "SOCKET_TYPE_NAMES",
    "BackoffPolicy",
    "ConfigError",
    "DeviceConfig",
    "Intensity",
    "ProbeSpec",
    "RestartPolicy",
    "SocketSpec",
    "SupervisorConfig",
    "Topology",
    "default_topology",
    "find_config",
    "load_topology",
    "parse_topology",
]

DEFAULT_SOURCE = "<default>"
CONFIG_FILENAME = "procdevices.toml"

KINDS = ("queue", "forwarder", "streamer", "proxy", "steerable", "monitored_queue")

#: Socket type names accepted in a socket table's ``type`` (case-insensitive).
SOCKET_TYPE_NAMES = (
    "PAIR",
    "PUB",
    "SUB",
    "REQ",
    "REP",
    "DEALER",
    "ROUTER",
    "PULL",
    "PUSH",
    "XPUB",
    "XSUB",
    "STREAM",
)

# Default (in, out) socket types per kind.
_KIND_SOCKET_TYPES: dict[str, tuple[str, str]] = {
    "queue": ("ROUTER", "DEALER"),
    "forwarder": ("SUB", "PUB"),
    "streamer": ("PULL", "PUSH"),
    "proxy": ("ROUTER", "DEALER"),
    "steerable": ("ROUTER", "DEALER"),
    "monitored_queue": ("ROUTER", "DEALER"),
}
_MON_DEFAULT_TYPE = "PUB"
_CTRL_DEFAULT_TYPE = "PAIR"
_MON_KINDS = ("proxy", "steerable", "monitored_queue")
_CTRL_KINDS = ("steerable",)
_PREFIX_KINDS = ("monitored_queue",)

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_REPLICA = "{replica}"
_MAX_REPLICAS = 64
_MAX_POOL_SIZE = 64
#: sizeof(sockaddr_un.sun_path) - 1 on Linux: the longest usable unix socket path.
IPC_PATH_MAX = 107

_PASSTHROUGH_SCHEMES = ("ws", "wss", "pgm", "epgm", "udp")
_WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "[::]"})
_SUBSCRIPTION_OPTIONS = frozenset({zmq.SocketOption.SUBSCRIBE, zmq.SocketOption.UNSUBSCRIBE})
# Options that can only be read, never set.
_READ_ONLY_OPTIONS = frozenset(
    getattr(zmq.SocketOption, name)
    for name in (
        "FD",
        "EVENTS",
        "RCVMORE",
        "TYPE",
        "LAST_ENDPOINT",
        "MECHANISM",
        "THREAD_SAFE",
        "TOPICS_COUNT",
    )
    if hasattr(zmq.SocketOption, name)
)

_STABLE_AFTER = 10.0
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_KILL_TIMEOUT = 2.0

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
_MEMORY_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


# --------------------------------------------------------------------------
# Errors


class ConfigError(Exception):
    """An invalid topology.

    ``file`` is the path as given (or ``"<default>"``), ``key`` the dotted key
    path of the offending value (``""`` for file-level problems) and ``reason``
    a human readable explanation.
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.reason}"
        return f"{self.file}: {self.reason}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:
        return (type(self), (self.file, self.key, self.reason))


# --------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class SocketSpec:
    """One socket of a device."""

    type: int
    bind: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    sockopts: tuple[tuple[int, int | bytes], ...] = ()

    @property
    def type_name(self) -> str:
        try:
            return zmq.SocketType(self.type).name
        except ValueError:
            return str(self.type)

    def _for_replica(self, index: int) -> SocketSpec:
        value = str(index)
        return dataclasses.replace(
            self,
            bind=tuple(ep.replace(_REPLICA, value) for ep in self.bind),
            connect=tuple(ep.replace(_REPLICA, value) for ep in self.connect),
        )


@dataclass(frozen=True)
class ProbeSpec:
    """Liveness probing: ``failures`` consecutive failed probes mark a device hung."""

    interval: float = 1.0
    timeout: float = 1.0
    failures: int = 3


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    kind: str
    in_: SocketSpec
    out: SocketSpec | None
    mon: SocketSpec | None
    ctrl: SocketSpec | None
    in_prefix: bytes = b"in"
    out_prefix: bytes = b"out"
    restart: RestartPolicy = RestartPolicy.ALWAYS
    backoff: BackoffPolicy = BackoffPolicy()
    intensity: Intensity = Intensity()
    stable_after: float = _STABLE_AFTER
    probe: ProbeSpec = ProbeSpec()
    memory_limit: int | None = None
    start_timeout: float = _START_TIMEOUT
    stop_timeout: float = _STOP_TIMEOUT
    kill_timeout: float = _KILL_TIMEOUT
    replicas: int = 1

    def sockets(self) -> Iterator[tuple[str, SocketSpec]]:
        """The (role, spec) pairs of the sockets this device has."""
        for role, spec in (("in", self.in_), ("out", self.out), ("mon", self.mon), ("ctrl", self.ctrl)):
            if spec is not None:
                yield role, spec

    def replica(self, index: int) -> DeviceConfig:
        """Replica ``index`` (0-based): ``{replica}`` in every endpoint replaced by
        ``str(index)``, named ``name.index`` when there is more than one replica."""
        if not 0 <= index < self.replicas:
            raise IndexError(
                f"replica index {index} out of range for {self.name!r} ({self.replicas} replicas)"
            )

        def expand(spec: SocketSpec | None) -> SocketSpec | None:
            return None if spec is None else spec._for_replica(index)

        return dataclasses.replace(
            self,
            name=f"{self.name}.{index}" if self.replicas > 1 else self.name,
            in_=self.in_._for_replica(index),
            out=expand(self.out),
            mon=expand(self.mon),
            ctrl=expand(self.ctrl),
            replicas=1,
        )

    def instances(self) -> tuple[DeviceConfig, ...]:
        return tuple(self.replica(i) for i in range(self.replicas))


@dataclass(frozen=True)
class SupervisorConfig:
    run_dir: pathlib.Path
    pool_size: int = 2

    @property
    def control_endpoint(self) -> str:
        return f"ipc://{self.run_dir}/supervisor.sock"


@dataclass(frozen=True)
class Topology:
    source: str
    supervisor: SupervisorConfig
    devices: tuple[DeviceConfig, ...]

    def instances(self) -> tuple[DeviceConfig, ...]:
        return tuple(inst for device in self.devices for inst in device.instances())


# --------------------------------------------------------------------------
# Public functions


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read, parse and validate the TOML topology file at ``path``."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fp:
            raw = fp.read()
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror or exc}") from None
    data = _decode_toml(raw, source)
    base_dir = pathlib.Path(os.path.abspath(source)).parent
    return parse_topology(data, source=source, base_dir=base_dir)


def parse_topology(data: Mapping[str, Any], *, source: str, base_dir: pathlib.Path) -> Topology:
    """Validate already-decoded TOML ``data``; relative paths resolve against ``base_dir``."""
    return _Parser(source, pathlib.Path(os.path.abspath(base_dir))).topology(data)


def default_topology(run_dir: pathlib.Path | None = None) -> Topology:
    """The embedded default topology (``procdevices/default_topology.toml``).

    ``run_dir`` overrides the file's run directory; relative paths (including
    the default ``.procdevices``) resolve against the current directory.
    """
    resource = importlib.resources.files("procdevices").joinpath("default_topology.toml")
    data = dict(_decode_toml(resource.read_bytes(), DEFAULT_SOURCE))
    if run_dir is not None:
        supervisor = data.get("supervisor", {})
        if isinstance(supervisor, Mapping):
            data["supervisor"] = {**supervisor, "run_dir": os.fspath(run_dir)}
    return parse_topology(data, source=DEFAULT_SOURCE, base_dir=pathlib.Path.cwd())


def find_config(explicit: str | None, cwd: pathlib.Path) -> pathlib.Path | None:
    """The config file to use: ``explicit`` if given (relative to ``cwd``, not
    checked for existence), else ``cwd/procdevices.toml`` if it exists, else None."""
    if explicit is not None:
        return cwd / explicit
    candidate = cwd / CONFIG_FILENAME
    if candidate.is_file():
        return candidate
    return None


# --------------------------------------------------------------------------
# Implementation


def _decode_toml(raw: bytes, source: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not valid UTF-8 text: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None


def _key_part(name: str) -> str:
    """A table key as it would be written in a dotted TOML key."""
    if _BARE_KEY_RE.fullmatch(name):
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _join(prefix: str, name: str) -> str:
    part = _key_part(name)
    return f"{prefix}.{part}" if prefix else part


def _kind_of(value: object) -> str:
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


def _suggest(word: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _one_of(values: Iterable[str]) -> str:
    return ", ".join(values)


@dataclass(frozen=True)
class _Settings:
    """Device settings that may come from ``[supervisor.defaults]``; None = unset."""

    restart: RestartPolicy | None = None
    backoff_initial: float | None = None
    backoff_max: float | None = None
    backoff_factor: float | None = None
    max_restarts: int | None = None
    within: float | None = None
    stable_after: float | None = None
    probe_interval: float | None = None
    probe_timeout: float | None = None
    probe_failures: int | None = None
    memory_limit: int | None = None
    start_timeout: float | None = None
    stop_timeout: float | None = None
    kill_timeout: float | None = None
    replicas: int | None = None
    backoff_key: str | None = None  # key path of the last table that set a backoff field

    def overridden_by(self, other: _Settings) -> _Settings:
        changes = {
            f.name: getattr(other, f.name)
            for f in dataclasses.fields(other)
            if getattr(other, f.name) is not None
        }
        return dataclasses.replace(self, **changes)


_SETTING_KEYS = (
    "restart",
    "backoff",
    "intensity",
    "stable_after",
    "probe",
    "memory_limit",
    "start_timeout",
    "stop_timeout",
    "kill_timeout",
    "replicas",
)
_DEVICE_ONLY_KEYS = ("kind", "in", "out", "mon", "ctrl", "in_prefix", "out_prefix")
_DEVICE_KEYS = _DEVICE_ONLY_KEYS + _SETTING_KEYS
_TOP_KEYS = ("supervisor", "devices")
_SUPERVISOR_KEYS = ("run_dir", "pool_size", "defaults")
_SOCKET_KEYS = ("type", "bind", "connect", "sockopts")
_BACKOFF_KEYS = ("initial", "max", "factor")
_INTENSITY_KEYS = ("max_restarts", "within")
_PROBE_KEYS = ("interval", "timeout", "failures")

_DEFAULT_BACKOFF = BackoffPolicy()
_DEFAULT_INTENSITY = Intensity()
_DEFAULT_PROBE = ProbeSpec()


@dataclass(frozen=True)
class _BindOwner:
    key: str
    replica: int | None

    def describe(self) -> str:
        return self.key if self.replica is None else f"{self.key} (replica {self.replica})"


class _Parser:
    def __init__(self, source: str, base_dir: pathlib.Path) -> None:
        self.source = source
        self.base_dir = base_dir

    # -- error helpers -----------------------------------------------------

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ConfigError(self.source, key, reason)

    def expected(self, key: str, what: str, value: object) -> NoReturn:
        self.fail(key, f"expected {what}, got {_kind_of(value)}")

    def check_keys(self, table: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
        for name in table:
            if name not in allowed:
                self.fail(_join(prefix, str(name)), f"unknown key '{name}'{_suggest(str(name), allowed)}")

    # -- scalar helpers ----------------------------------------------------

    def table(self, value: object, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.expected(key, "a table", value)
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            self.expected(key, "a string", value)
        return value

    def number(self, value: object, key: str, *, minimum: float = 0.0, inclusive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.expected(key, "a number", value)
        result = float(value)
        if result != result or result in (float("inf"), float("-inf")):
            self.fail(key, f"expected a finite number, got {value}")
        if inclusive and result < minimum:
            self.fail(key, f"must be >= {minimum:g}, got {value}")
        if not inclusive and result <= minimum:
            self.fail(key, f"must be > {minimum:g}, got {value}")
        return result

    def integer(self, value: object, key: str, *, minimum: int, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.expected(key, "an integer", value)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            self.fail(key, f"must be {bounds}, got {value}")
        return value

    def memory(self, value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self.expected(key, "an integer number of bytes or a string like '256MiB'", value)
        if isinstance(value, int):
            result = value
        else:
            match = _MEMORY_RE.fullmatch(value)
            multiplier = _MEMORY_UNITS.get(match.group(2).lower()) if match else None
            if match is None or multiplier is None:
                units = _one_of(("B", "KiB", "MiB", "GiB", "KB", "MB", "GB"))
                self.fail(
                    key,
                    f"invalid memory size '{value}': expected a number with an optional unit "
                    f"({units}), e.g. '256MiB'",
                )
            try:
                result = int(Decimal(match.group(1)) * multiplier)
            except InvalidOperation:  # pragma: no cover - the regex only admits decimals
                self.fail(key, f"invalid memory size '{value}'")
        if result < 1:
            self.fail(key, f"memory limit must be at least 1 byte, got {value!r}")
        return result

    # -- top level ---------------------------------------------------------

    def topology(self, data: Mapping[str, Any]) -> Topology:
        if not isinstance(data, Mapping):
            self.expected("", "a table at the top level", data)
        self.check_keys(data, _TOP_KEYS, "")
        supervisor_table = self.table(data.get("supervisor", {}), "supervisor")
        supervisor, defaults = self.supervisor(supervisor_table)

        if "devices" not in data:
            self.fail("devices", "no devices defined")
        devices_table = self.table(data["devices"], "devices")
        if not devices_table:
            self.fail("devices", "no devices defined")
        devices = tuple(
            self.device(str(name), value, defaults) for name, value in devices_table.items()
        )
        self.check_bind_conflicts(devices)
        return Topology(source=self.source, supervisor=supervisor, devices=devices)

    def supervisor(self, table: Mapping[str, Any]) -> tuple[SupervisorConfig, _Settings]:
        prefix = "supervisor"
        self.check_keys(table, _SUPERVISOR_KEYS, prefix)
        raw_run_dir = table.get("run_dir", ".procdevices")
        key = f"{prefix}.run_dir"
        run_dir_text = self.string(raw_run_dir, key)
        if not run_dir_text:
            self.fail(key, "must not be empty")
        run_dir = pathlib.Path(os.path.abspath(self.base_dir / run_dir_text))
        control_path = f"{run_dir}/supervisor.sock"
        if len(os.fsencode(control_path)) > IPC_PATH_MAX:
            self.fail(
                key,
                f"run directory is too long: the control socket path '{control_path}' is "
                f"{len(os.fsencode(control_path))} bytes, but unix socket paths are limited "
                f"to {IPC_PATH_MAX} bytes",
            )
        pool_size = self.integer(
            table.get("pool_size", 2), f"{prefix}.pool_size", minimum=0, maximum=_MAX_POOL_SIZE
        )
        defaults = _Settings()
        if "defaults" in table:
            dprefix = f"{prefix}.defaults"
            dtable = self.table(table["defaults"], dprefix)
            for name in dtable:
                if name in _DEVICE_ONLY_KEYS:
                    self.fail(
                        _join(dprefix, name),
                        f"'{name}' cannot be set in [supervisor.defaults], only per device",
                    )
            self.check_keys(dtable, _SETTING_KEYS, dprefix)
            defaults = self.settings(dtable, dprefix)
        return SupervisorConfig(run_dir=run_dir, pool_size=pool_size), defaults

    # -- per-device settings ---------------------------------------------------

    def settings(self, table: Mapping[str, Any], prefix: str) -> _Settings:
        """Parse the defaultable keys present in ``table`` (unknown keys already checked)."""
        values: dict[str, Any] = {}
        if "restart" in table:
            key = f"{prefix}.restart"
            text = self.string(table["restart"], key)
            names = [p.value for p in RestartPolicy]
            if text not in names:
                self.fail(
                    key,
                    f"invalid restart policy '{text}': expected one of {_one_of(names)}"
                    f"{_suggest(text, names)}",
                )
            values["restart"] = RestartPolicy(text)
        if "backoff" in table:
            key = f"{prefix}.backoff"
            sub = self.table(table["backoff"], key)
            self.check_keys(sub, _BACKOFF_KEYS, key)
            if "initial" in sub:
                values["backoff_initial"] = self.number(sub["initial"], f"{key}.initial")
            if "max" in sub:
                values["backoff_max"] = self.number(sub["max"], f"{key}.max")
            if "factor" in sub:
                values["backoff_factor"] = self.number(
                    sub["factor"], f"{key}.factor", minimum=1.0, inclusive=True
                )
            values["backoff_key"] = key
        if "intensity" in table:
            key = f"{prefix}.intensity"
            sub = self.table(table["intensity"], key)
            self.check_keys(sub, _INTENSITY_KEYS, key)
            if "max_restarts" in sub:
                values["max_restarts"] = self.integer(sub["max_restarts"], f"{key}.max_restarts", minimum=0)
            if "within" in sub:
                values["within"] = self.number(sub["within"], f"{key}.within")
        if "probe" in table:
            key = f"{prefix}.probe"
            sub = self.table(table["probe"], key)
            self.check_keys(sub, _PROBE_KEYS, key)
            if "interval" in sub:
                values["probe_interval"] = self.number(sub["interval"], f"{key}.interval")
            if "timeout" in sub:
                values["probe_timeout"] = self.number(sub["timeout"], f"{key}.timeout")
            if "failures" in sub:
                values["probe_failures"] = self.integer(sub["failures"], f"{key}.failures", minimum=1)
        for name in ("stable_after", "start_timeout", "stop_timeout", "kill_timeout"):
            if name in table:
                values[name] = self.number(table[name], f"{prefix}.{name}")
        if "memory_limit" in table:
            values["memory_limit"] = self.memory(table["memory_limit"], f"{prefix}.memory_limit")
        if "replicas" in table:
            values["replicas"] = self.integer(
                table["replicas"], f"{prefix}.replicas", minimum=1, maximum=_MAX_REPLICAS
            )
        return _Settings(**values)

    # -- devices ---------------------------------------------------------------

    def device(self, name: str, value: object, defaults: _Settings) -> DeviceConfig:
        prefix = _join("devices", name)
        if not _NAME_RE.fullmatch(name):
            self.fail(
                prefix,
                f"invalid device name '{name}': must start with a letter and contain only "
                "letters, digits, '_' and '-' (at most 63 characters)",
            )
        table = self.table(value, prefix)
        self.check_keys(table, _DEVICE_KEYS, prefix)

        if "kind" not in table:
            self.fail(f"{prefix}.kind", f"missing required key 'kind' (one of {_one_of(KINDS)})")
        kind = self.string(table["kind"], f"{prefix}.kind")
        if kind not in KINDS:
            self.fail(
                f"{prefix}.kind",
                f"unknown kind '{kind}': expected one of {_one_of(KINDS)}{_suggest(kind, KINDS)}",
            )

        restricted = (
            ("mon", _MON_KINDS),
            ("ctrl", _CTRL_KINDS),
            ("in_prefix", _PREFIX_KINDS),
            ("out_prefix", _PREFIX_KINDS),
        )
        for role, kinds in restricted:
            if role in table and kind not in kinds:
                plural = "kind" if len(kinds) == 1 else "kinds"
                self.fail(
                    f"{prefix}.{role}",
                    f"'{role}' is only allowed for {plural} {_one_of(kinds)}, not {kind}",
                )

        settings = defaults.overridden_by(self.settings(table, prefix))
        replicas = settings.replicas if settings.replicas is not None else 1

        in_type, out_type = _KIND_SOCKET_TYPES[kind]
        for role in ("in", "out"):
            if role not in table:
                self.fail(f"{prefix}.{role}", f"missing required key '{role}' (the {role} socket table)")
        in_spec = self.socket(table["in"], f"{prefix}.in", in_type, replicas)
        out_spec = self.socket(table["out"], f"{prefix}.out", out_type, replicas)
        mon_spec: SocketSpec | None = None
        if "mon" in table:
            mon_spec = self.socket(table["mon"], f"{prefix}.mon", _MON_DEFAULT_TYPE, replicas)
        elif kind == "monitored_queue":
            self.fail(f"{prefix}.mon", "missing required key 'mon' (monitored_queue needs a monitor socket)")
        ctrl_spec: SocketSpec | None = None
        if "ctrl" in table:
            ctrl_spec = self.socket(table["ctrl"], f"{prefix}.ctrl", _CTRL_DEFAULT_TYPE, replicas)

        if kind == "forwarder" and in_spec.type == zmq.SUB:
            if not any(opt == zmq.SocketOption.SUBSCRIBE for opt, _ in in_spec.sockopts):
                in_spec = dataclasses.replace(
                    in_spec, sockopts=in_spec.sockopts + ((int(zmq.SocketOption.SUBSCRIBE), b""),)
                )

        prefixes: dict[str, bytes] = {}
        for pname in ("in_prefix", "out_prefix"):
            if pname in table:
                prefixes[pname] = self.string(table[pname], f"{prefix}.{pname}").encode("utf-8")

        backoff = BackoffPolicy(
            initial=_pick(settings.backoff_initial, _DEFAULT_BACKOFF.initial),
            max=_pick(settings.backoff_max, _DEFAULT_BACKOFF.max),
            factor=_pick(settings.backoff_factor, _DEFAULT_BACKOFF.factor),
        )
        if backoff.initial > backoff.max:
            self.fail(
                settings.backoff_key or f"{prefix}.backoff",
                f"initial ({backoff.initial:g}) must be <= max ({backoff.max:g})",
            )
        intensity = Intensity(
            max_restarts=_pick(settings.max_restarts, _DEFAULT_INTENSITY.max_restarts),
            within=_pick(settings.within, _DEFAULT_INTENSITY.within),
        )
        probe = ProbeSpec(
            interval=_pick(settings.probe_interval, _DEFAULT_PROBE.interval),
            timeout=_pick(settings.probe_timeout, _DEFAULT_PROBE.timeout),
            failures=_pick(settings.probe_failures, _DEFAULT_PROBE.failures),
        )
        return DeviceConfig(
            name=name,
            kind=kind,
            in_=in_spec,
            out=out_spec,
            mon=mon_spec,
            ctrl=ctrl_spec,
            in_prefix=prefixes.get("in_prefix", b"in"),
            out_prefix=prefixes.get("out_prefix", b"out"),
            restart=_pick(settings.restart, RestartPolicy.ALWAYS),
            backoff=backoff,
            intensity=intensity,
            stable_after=_pick(settings.stable_after, _STABLE_AFTER),
            probe=probe,
            memory_limit=settings.memory_limit,
            start_timeout=_pick(settings.start_timeout, _START_TIMEOUT),
            stop_timeout=_pick(settings.stop_timeout, _STOP_TIMEOUT),
            kill_timeout=_pick(settings.kill_timeout, _KILL_TIMEOUT),
            replicas=replicas,
        )

    # -- sockets ---------------------------------------------------------------

    def socket(self, value: object, prefix: str, default_type: str, replicas: int) -> SocketSpec:
        table = self.table(value, prefix)
        self.check_keys(table, _SOCKET_KEYS, prefix)
        type_name = default_type
        if "type" in table:
            key = f"{prefix}.type"
            text = self.string(table["type"], key)
            type_name = text.upper()
            if type_name not in SOCKET_TYPE_NAMES:
                self.fail(
                    key,
                    f"unknown socket type '{text}': expected one of {_one_of(SOCKET_TYPE_NAMES)}"
                    f"{_suggest(type_name, SOCKET_TYPE_NAMES)}",
                )
        socket_type = int(zmq.SocketType[type_name])

        endpoints: dict[str, tuple[str, ...]] = {}
        for direction in ("bind", "connect"):
            key = f"{prefix}.{direction}"
            raw = table.get(direction, [])
            if not isinstance(raw, (list, tuple)):
                self.expected(key, "an array of endpoint strings", raw)
            endpoints[direction] = tuple(
                self.endpoint(item, f"{key}[{i}]", bind=direction == "bind", replicas=replicas)
                for i, item in enumerate(raw)
            )
        if not endpoints["bind"] and not endpoints["connect"]:
            self.fail(prefix, "socket needs at least one bind or connect endpoint")

        sockopts: list[tuple[int, int | bytes]] = []
        if "sockopts" in table:
            sockopts = self.sockopts(table["sockopts"], f"{prefix}.sockopts", type_name)
        return SocketSpec(
            type=socket_type,
            bind=endpoints["bind"],
            connect=endpoints["connect"],
            sockopts=tuple(sockopts),
        )

    def sockopts(self, value: object, prefix: str, socket_type: str) -> list[tuple[int, int | bytes]]:
        table = self.table(value, prefix)
        result: list[tuple[int, int | bytes]] = []
        seen: dict[zmq.SocketOption, str] = {}
        members = zmq.SocketOption.__members__
        for raw_name, raw_value in table.items():
            name = str(raw_name)
            key = _join(prefix, name)
            option = members.get(name.upper())
            if option is None:
                self.fail(key, f"unknown socket option '{name}'{_suggest(name.upper(), members)}")
            if option in _READ_ONLY_OPTIONS:
                self.fail(key, f"socket option '{name}' is read-only")
            if option in seen:
                self.fail(key, f"socket option '{name}' is set twice (also as '{seen[option]}')")
            seen[option] = name
            opt_type = getattr(getattr(option, "_opt_type", None), "value", None)
            if option in _SUBSCRIPTION_OPTIONS:
                if socket_type != "SUB":
                    self.fail(key, f"'{option.name}' is only valid on SUB sockets, not {socket_type}")
                if isinstance(raw_value, (list, tuple)):
                    items = [(f"{key}[{i}]", item) for i, item in enumerate(raw_value)]
                else:
                    items = [(key, raw_value)]
                for item_key, item in items:
                    if not isinstance(item, str):
                        self.expected(item_key, "a string (or an array of strings)", item)
                    result.append((int(option), item.encode("utf-8")))
                continue
            converted: int | bytes
            if isinstance(raw_value, bool):
                converted = int(raw_value)
            elif isinstance(raw_value, int):
                converted = raw_value
            elif isinstance(raw_value, str):
                converted = raw_value.encode("utf-8")
            else:
                self.expected(key, "an integer, string or boolean", raw_value)
            if opt_type == "bytes" and not isinstance(converted, bytes):
                self.expected(key, f"a string for socket option '{option.name}'", raw_value)
            if opt_type in ("int", "int64") and isinstance(converted, bytes):
                self.expected(key, f"an integer for socket option '{option.name}'", raw_value)
            result.append((int(option), converted))
        return result

    # -- endpoints ---------------------------------------------------------------

    def endpoint(self, value: object, key: str, *, bind: bool, replicas: int) -> str:
        """Validate one endpoint (for every replica) and return it normalized:
        relative ipc paths become absolute; ``{replica}`` is kept."""
        if not isinstance(value, str):
            self.expected(key, "an endpoint string", value)
        scheme, sep, address = value.partition("://")
        if scheme == "inproc" and sep:
            self.fail(key, "inproc endpoints cannot cross processes")
        if not sep or not address or scheme not in ("tcp", "ipc") + _PASSTHROUGH_SCHEMES:
            self.fail(key, f"invalid endpoint '{value}': expected tcp://host:port or ipc://path")

        if scheme == "ipc":
            if address != "*" and not address.startswith("@") and not os.path.isabs(address):
                address = os.path.normpath(os.path.join(self.base_dir, address))
            value = f"ipc://{address}"
        if bind and replicas > 1 and _REPLICA not in value and not _is_wildcard_bind(value):
            self.fail(key, "replicas > 1 need '{replica}' or port * in every bind endpoint")

        for index in range(replicas):
            expanded = value.replace(_REPLICA, str(index))
            self.check_expanded_endpoint(expanded, value, key, bind=bind)
        return value

    def check_expanded_endpoint(self, expanded: str, template: str, key: str, *, bind: bool) -> None:
        scheme, _, address = expanded.partition("://")
        if scheme == "tcp":
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port:
                self.fail(key, f"invalid endpoint '{template}': expected tcp://host:port")
            if port == "*":
                if not bind:
                    self.fail(key, f"invalid endpoint '{template}': port * is only valid for bind")
            elif not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
                self.fail(key, f"invalid endpoint '{template}': port must be 1-65535 or *, got '{port}'")
            if host == "*" and not bind:
                self.fail(key, f"invalid endpoint '{template}': host * is only valid for bind")
        elif scheme == "ipc":
            if address == "*" and not bind:
                self.fail(key, f"invalid endpoint '{template}': ipc://* is only valid for bind")
            size = len(os.fsencode(address))
            if size > IPC_PATH_MAX:
                self.fail(
                    key,
                    f"ipc path '{address}' is {size} bytes, but unix socket paths are limited to "
                    f"{IPC_PATH_MAX} bytes; use a shorter path",
                )

    def check_bind_conflicts(self, devices: Sequence[DeviceConfig]) -> None:
        bound: list[tuple[tuple[str, str, str], str, _BindOwner]] = []
        for device in devices:
            prefix = _join("devices", device.name)
            for index in range(device.replicas):
                for role, spec in device.sockets():
                    for j, template in enumerate(spec.bind):
                        expanded = template.replace(_REPLICA, str(index))
                        ident = _bind_identity(expanded)
                        if ident is None:
                            continue
                        owner = _BindOwner(
                            f"{prefix}.{role}.bind[{j}]", index if device.replicas > 1 else None
                        )
                        for other_ident, _other_ep, other in bound:
                            if _conflicts(ident, other_ident):
                                self.fail(
                                    owner.key,
                                    f"address {expanded} is already bound by {other.describe()}",
                                )
                        bound.append((ident, expanded, owner))


_T = TypeVar("_T")


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _is_wildcard_bind(endpoint: str) -> bool:
    scheme, _, address = endpoint.partition("://")
    if scheme == "tcp":
        return address.rpartition(":")[2] == "*"
    if scheme == "ipc":
        return address == "*"
    return False


def _bind_identity(endpoint: str) -> tuple[str, str, str] | None:
    """What a bind occupies: (family, host, port); None if it never conflicts."""
    scheme, _, address = endpoint.partition("://")
    if scheme == "tcp":
        host, _, port = address.rpartition(":")
        if port == "*":
            return None
        return ("tcp", host.lower(), port)
    if scheme == "ipc":
        if address == "*":
            return None
        return ("ipc", address, "")
    if scheme in ("ws", "wss", "udp"):
        return (scheme, address.lower(), "")
    return None  # pgm/epgm: multicast groups may be shared


def _conflicts(a: tuple[str, str, str], b: tuple[str, str, str]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "tcp":
        if a[2] != b[2]:
            return False
        return a[1] == b[1] or a[1] in _WILDCARD_HOSTS or b[1] in _WILDCARD_HOSTS
    return a == b
