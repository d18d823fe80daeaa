"""Load a topology: walk the TOML tables, using the settings and kinds tables,
the socket parser and the cross-field rules, and build the records (model.py).

Everything is validated before the supervisor starts a single process. The
only side effect is the libzmq trial (a throw-away socket in a private
context, see ``libzmq_trial``); no process is started, no file written.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import zmq

from procdevices.supervisor.config import endpoints, hosts, rules, settings
from procdevices.supervisor.config.errors import (
    ConfigError,
    Invalid,
    as_table,
    check_keys,
    expected,
    join_key,
    one_of,
    suggest,
    utf8,
)
from procdevices.supervisor.config.kinds import (
    CTRL_DEFAULT_TYPE,
    KIND_SPECS,
    KINDS,
    MON_DEFAULT_TYPE,
    Presence,
    kinds_allowing,
)
from procdevices.supervisor.config.libzmq_trial import LibzmqTrial
from procdevices.supervisor.config.model import (
    ClusterConfig,
    DeviceConfig,
    HostConfig,
    SocketSpec,
    StartMethod,
    SupervisorConfig,
    Topology,
)
from procdevices.supervisor.config.settings import Values, parse_settings
from procdevices.supervisor.config.sockets import parse_socket
from procdevices.supervisor.config.source import decode_toml, read_config_file

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_SOURCE",
    "default_topology",
    "find_config",
    "load_topology",
    "parse_topology",
    "validate_run_dir",
]

DEFAULT_SOURCE = "<default>"
CONFIG_FILENAME = "procdevices.toml"

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_TOP_KEYS = ("supervisor", "devices", "hosts", "cluster")
_SUPERVISOR_KEYS = (*(s.path for s in settings.SUPERVISOR_SETTINGS), "defaults")
_DEVICE_ONLY_KEYS = ("kind", "in", "out", "mon", "ctrl", "in_prefix", "out_prefix")
# `host` (multi-host, config/hosts.py) is allowed in a device and in [supervisor.defaults].
_HOST_KEY = "host"
_DEVICE_KEYS = _DEVICE_ONLY_KEYS + settings.DEVICE_SETTING_KEYS + (_HOST_KEY,)


# --------------------------------------------------------------------------
# Public functions


def load_topology(path: str | os.PathLike[str], *, run_dir: pathlib.Path | None = None) -> Topology:
    """Read, parse and validate the TOML topology file at ``path``; ``run_dir`` (``--run-dir``)
    replaces the file's ``[supervisor] run_dir`` before the rules that concern it run."""
    source = os.fspath(path)
    try:
        data = decode_toml(read_config_file(path))
    except Invalid as exc:
        raise ConfigError(source, exc.key, exc.reason) from None
    base_dir = pathlib.Path(os.path.abspath(source)).parent
    return parse_topology(data, source=source, base_dir=base_dir, run_dir=run_dir)


def parse_topology(
    data: Mapping[str, Any], *, source: str, base_dir: pathlib.Path, run_dir: pathlib.Path | None = None
) -> Topology:
    """Validate already-decoded TOML ``data``; relative paths resolve against ``base_dir``;
    ``run_dir``, when given, overrides the file's."""
    try:
        with LibzmqTrial() as trial:
            return _Loader(pathlib.Path(os.path.abspath(base_dir)), trial, run_dir).topology(data, source)
    except Invalid as exc:
        raise ConfigError(source, exc.key, exc.reason) from None
    except RecursionError:
        # Only a hand-built (not TOML-decoded) mapping can nest this deep.
        raise ConfigError(source, "", "values nested too deeply") from None


def validate_run_dir(topology: Topology, run_dir: pathlib.Path) -> None:
    """Check that ``run_dir`` can hold the supervisor's and every device's control
    socket (the unix socket path limit) and exists or can be created; ConfigError naming
    ``supervisor.run_dir`` or the device otherwise. The loader checks the socket paths for
    the run dir it was given (``load_topology(run_dir=...)``); whether it can be created
    depends on the file system, so the command line asks here, for the run dir ``up`` uses."""
    try:
        endpoints.check_socket_paths(topology.devices, run_dir, rules.RUN_DIR_KEY)
        rules.check_run_dir(run_dir)
    except Invalid as exc:
        raise ConfigError(topology.source, exc.key, exc.reason) from None


def default_topology(run_dir: pathlib.Path | None = None) -> Topology:
    """The embedded default topology (``procdevices/default_topology.toml``).

    ``run_dir`` overrides the file's run directory; relative paths (including
    the default ``.procdevices``) resolve against the current directory.
    """
    import importlib.resources  # only without a topology file: ~4 ms of every `up` otherwise

    resource = importlib.resources.files("procdevices").joinpath("default_topology.toml")
    try:
        data = dict(decode_toml(resource.read_bytes()))
    except Invalid as exc:  # pragma: no cover - the embedded file is valid
        raise ConfigError(DEFAULT_SOURCE, exc.key, exc.reason) from None
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
# The walk


class _Loader:
    def __init__(self, base_dir: pathlib.Path, trial: LibzmqTrial, run_dir: pathlib.Path | None = None) -> None:
        self.base_dir = base_dir
        self.trial = trial
        self.run_dir = run_dir
        self.hosts: tuple[HostConfig, ...] = ()
        self.default_host: str | None = None
        self.cluster = ClusterConfig()

    def topology(self, data: Mapping[str, Any], source: str) -> Topology:
        if not isinstance(data, Mapping):
            raise expected("", "a table at the top level", data)
        check_keys(data, _TOP_KEYS, "")
        self.hosts, cluster = hosts.parse_cluster(data, self.base_dir)
        self.cluster = cluster
        supervisor, defaults = self.supervisor(as_table(data.get("supervisor", {}), "supervisor"))
        if "devices" not in data:
            raise Invalid("devices", "no devices defined")
        devices_table = as_table(data["devices"], "devices")
        if not devices_table:
            raise Invalid("devices", "no devices defined")
        devices = tuple(self.device(str(name), value, defaults) for name, value in devices_table.items())
        # The one rule set (rules.py) resolves the "@DEVICE.ROLE" references, then checks.
        devices, references = rules.check(devices, supervisor.run_dir, self.trial, hosts=self.hosts, cluster=cluster)
        return Topology(
            source=source,
            supervisor=supervisor,
            devices=devices,
            hosts=self.hosts,
            cluster=cluster,
            references=references,
        )

    def supervisor(self, table: Mapping[str, Any]) -> tuple[SupervisorConfig, Values]:
        prefix = "supervisor"
        check_keys(table, _SUPERVISOR_KEYS, prefix)
        own = parse_settings(table, prefix, settings.SUPERVISOR_SETTINGS).values
        resolved = {s.path: own.get(s.path, s.default) for s in settings.SUPERVISOR_SETTINGS}
        run_dir = self.run_dir or pathlib.Path(os.path.abspath(self.base_dir / str(resolved["run_dir"])))
        # Checked again with the devices (check_socket_paths); early, so a long run_dir is
        # reported as such and not as a device name problem.
        endpoints.check_socket_paths((), run_dir, f"{prefix}.run_dir")
        pool_size = resolved["pool_size"]
        assert isinstance(pool_size, int)
        metrics = resolved["metrics"]
        assert metrics is None or isinstance(metrics, str)
        metrics_socket = resolved["metrics_socket"]
        assert isinstance(metrics_socket, bool)
        log_max_bytes, log_backups = resolved["device_log_max_bytes"], resolved["device_log_backups"]
        assert isinstance(log_max_bytes, int) and isinstance(log_backups, int)
        defaults = Values("supervisor.defaults", {}, frozenset())
        if "defaults" in table:
            dprefix = f"{prefix}.defaults"
            dtable = as_table(table["defaults"], dprefix)
            for name in dtable:
                if name in _DEVICE_ONLY_KEYS:
                    raise Invalid(
                        join_key(dprefix, name), f"'{name}' cannot be set in [supervisor.defaults], only per device"
                    )
            check_keys(dtable, (*settings.DEVICE_SETTING_KEYS, _HOST_KEY), dprefix)
            defaults = parse_settings(dtable, dprefix)
            if _HOST_KEY in dtable:
                self.default_host = hosts.device_host(dtable[_HOST_KEY], f"{dprefix}.{_HOST_KEY}", self.hosts)
        start_method = resolved["start_method"]
        orphan_grace = resolved["orphan_grace"]
        assert isinstance(orphan_grace, (int, float))
        assert isinstance(start_method, StartMethod)
        return (
            SupervisorConfig(
                run_dir=run_dir,
                pool_size=pool_size,
                metrics=metrics,
                metrics_socket=metrics_socket,
                device_log_max_bytes=log_max_bytes,
                device_log_backups=log_backups,
                start_method=start_method,
                orphan_grace=float(orphan_grace),
            ),
            defaults,
        )

    def device(self, name: str, value: object, defaults: Values) -> DeviceConfig:
        prefix = join_key("devices", name)
        if not _NAME_RE.fullmatch(name):
            raise Invalid(
                prefix,
                f"invalid device name '{name}': must start with a letter and contain only "
                "letters, digits, '_' and '-' (at most 63 characters)",
            )
        table = as_table(value, prefix)
        check_keys(table, _DEVICE_KEYS, prefix)

        if "kind" not in table:
            raise Invalid(f"{prefix}.kind", f"missing required key 'kind' (one of {one_of(KINDS)})")
        kind = table["kind"]
        if not isinstance(kind, str):
            raise expected(f"{prefix}.kind", "a string", kind)
        if kind not in KIND_SPECS:
            raise Invalid(
                f"{prefix}.kind", f"unknown kind '{kind}': expected one of {one_of(KINDS)}{suggest(kind, KINDS)}"
            )
        spec = KIND_SPECS[kind]
        for role in ("mon", "ctrl", "in_prefix", "out_prefix"):
            allowed = kinds_allowing(role)
            if role in table and kind not in allowed:
                plural = "kind" if len(allowed) == 1 else "kinds"
                raise Invalid(
                    f"{prefix}.{role}", f"'{role}' is only allowed for {plural} {one_of(allowed)}, not {kind}"
                )

        own = parse_settings(table, prefix)
        resolved = settings.merged(defaults, own)
        backoff_initial, backoff_max = resolved["backoff.initial"], resolved["backoff.max"]
        assert isinstance(backoff_initial, float) and isinstance(backoff_max, float)
        if backoff_initial > backoff_max:
            raise Invalid(
                settings.group_origin("backoff", defaults, own),
                f"initial ({backoff_initial:g}) must be <= max ({backoff_max:g})",
            )
        for role in ("in", "out"):
            if role not in table:
                raise Invalid(f"{prefix}.{role}", f"missing required key '{role}' (the {role} socket table)")
        in_spec = self.socket(table["in"], f"{prefix}.in", spec.in_type)
        out_spec = self.socket(table["out"], f"{prefix}.out", spec.out_type)
        mon_spec: SocketSpec | None = None
        if "mon" in table:
            mon_spec = self.socket(table["mon"], f"{prefix}.mon", MON_DEFAULT_TYPE)
        elif spec.mon is Presence.REQUIRED:
            raise Invalid(f"{prefix}.mon", f"missing required key 'mon' ({kind} needs a monitor socket)")
        ctrl_spec: SocketSpec | None = None
        if "ctrl" in table:
            ctrl_spec = self.socket(table["ctrl"], f"{prefix}.ctrl", CTRL_DEFAULT_TYPE)

        if spec.subscribe_all and in_spec.type == zmq.SUB:
            if not any(opt == zmq.SocketOption.SUBSCRIBE for opt, _ in in_spec.sockopts):
                in_spec = in_spec._replace(sockopts=in_spec.sockopts + ((int(zmq.SocketOption.SUBSCRIBE), b""),))

        prefixes: dict[str, bytes] = {}
        for pname in ("in_prefix", "out_prefix"):
            if pname in table:
                text = table[pname]
                if not isinstance(text, str):
                    raise expected(f"{prefix}.{pname}", "a string", text)
                prefixes[pname] = utf8(text, f"{prefix}.{pname}")

        host = self.default_host
        if _HOST_KEY in table:
            host = hosts.device_host(table[_HOST_KEY], f"{prefix}.{_HOST_KEY}", self.hosts)
        elif self.hosts and host is None:
            raise Invalid(
                f"{prefix}.{_HOST_KEY}",
                "missing 'host': with [hosts], every device names the host it runs on "
                "(or [supervisor.defaults] host gives one)",
            )

        return DeviceConfig(
            host=host,
            name=name,
            kind=kind,
            in_=in_spec,
            out=out_spec,
            mon=mon_spec,
            ctrl=ctrl_spec,
            in_prefix=prefixes.get("in_prefix", b"in"),
            out_prefix=prefixes.get("out_prefix", b"out"),
            **settings.device_fields(resolved),
        )

    def socket(self, value: object, prefix: str, default_type: str) -> SocketSpec:
        value, curve = hosts.take_curve(value, prefix, self.cluster)  # `curve = "server"`: multi-host
        spec = parse_socket(value, prefix, default_type, os.fspath(self.base_dir), self.trial)
        return spec._replace(sockopts=spec.sockopts + curve) if curve else spec
