"""The multi-host commands (docs/multihost.md): ``endpoints``, ``keys generate``, ``export``,
``status --all``, and the routing of a device command to the device's host."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procdevices import exitcodes, runlayout
from procdevices.cli import locate
from procdevices.supervisor.config import Topology
from procdevices.supervisor.config.hosts import (
    HostChoiceError,
    bound_endpoints,
    control_connect,
    select_host,
    this_host,
)
from procdevices.supervisor.config.model import HostConfig

if TYPE_CHECKING:
    from procdevices.cluster.control import ControlEndpoint
    from procdevices.cluster.remote import HostReply, Target

__all__ = ["HostChoiceError", "endpoints", "this_hosts_part"]

ENV_HOST = "PROCDEVICES_HOST"


def chosen_host_name(args: argparse.Namespace) -> str | None:
    """``--host``, else ``$PROCDEVICES_HOST``, else None (the host is then found by address)."""
    flag = getattr(args, "host", None)
    return flag if flag else os.environ.get(ENV_HOST) or None


def _explicit_host(args: argparse.Namespace, topology: Topology) -> str | None:
    """The host asked for. $PROCDEVICES_HOST counts only for a file with [hosts]: a file
    without them runs as it always did whatever the environment says (``--host`` is refused)."""
    if getattr(args, "host", None):
        return str(args.host)
    return chosen_host_name(args) if topology.hosts else None


def host_error(e: HostChoiceError) -> int:
    print(f"procdevices: {e}", file=sys.stderr)
    return exitcodes.EXIT_CONFIG


def this_hosts_part(args: argparse.Namespace) -> tuple[Topology, HostConfig | None, Callable[[str | None], Topology]]:
    """What `up` runs: the topology cut to this host's devices, the host, and the re-reader a
    reload uses (cut to the same host). HostChoiceError when the host cannot be chosen."""
    whole = locate.topology(args.config, args.run_dir)
    host = this_host(whole, _explicit_host(args, whole))
    reread = locate.reloader(args.config, args.run_dir)
    if host is None:
        return whole, None, reread
    return select_host(whole, host), host, lambda path: select_host(reread(path), host)


def control_endpoint(topology: Topology, host: HostConfig | None) -> ControlEndpoint | None:
    """What `up --host` serves to other hosts: the host's ``control`` with the cluster keys."""
    from procdevices.cluster.control import ControlEndpoint

    if host is None or host.control is None or topology.cluster.keys is None:
        return None
    return ControlEndpoint(host.control, topology.cluster.keys)


def resolved_endpoints(topology: Topology) -> dict[str, dict[str, list[str]]]:
    """``{"DEVICE": {"ROLE": ["tcp://ADDRESS:PORT"]}}``: what clients connect to."""
    hosts = {h.name: h for h in topology.hosts}
    return {d.name: bound_endpoints(d, hosts[d.host] if d.host is not None else None) for d in topology.devices}


def endpoints(args: argparse.Namespace) -> int:
    topology = locate.topology(args.config, args.run_dir)
    found = resolved_endpoints(topology)
    if args.json:
        print(json.dumps(found, indent=1))
        return exitcodes.EXIT_OK
    host_of = {d.name: d.host or "" for d in topology.devices}
    header: tuple[str, ...] = (
        ("HOST", "DEVICE", "ROLE", "ENDPOINT") if topology.hosts else ("DEVICE", "ROLE", "ENDPOINT")
    )
    rows = [header]
    for device, roles in found.items():
        for role, items in roles.items():
            for endpoint in items:
                row: tuple[str, ...] = (device, role, endpoint)
                rows.append((host_of[device], *row) if topology.hosts else row)
    print(_table(rows))
    return exitcodes.EXIT_OK


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def add_host_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--host",
        default=None,
        help=f"{what} (default: ${ENV_HOST}, else the one host whose address is this machine's)",
    )


# `export TARGET`: one renderer per engine, each (topology, host, config, python, cwd, run dir)
# -> text. Another engine (nomad, kubernetes) is one more row.
EXPORT_TARGETS = ("supervisord", "systemd")


def export(args: argparse.Namespace) -> int:
    from procdevices.supervisor.supervisord import render_host_program
    from procdevices.supervisor.systemd import render_unit

    renderers = {"supervisord": render_host_program, "systemd": render_unit}
    extra: dict[str, Any] = {}
    if args.web is not None:
        if args.target != "supervisord":
            print(f"procdevices: export {args.target}: --web is for supervisord only", file=sys.stderr)
            return exitcodes.EXIT_USAGE
        from procdevices.supervisor.config.settings import split_host_port
        from procdevices.web.security import is_loopback

        if not is_loopback(split_host_port(args.web)[0]):
            print(
                f"procdevices: export supervisord: --web {args.web} is not a loopback address "
                "(such a page needs --token-file: add it to the program by hand)",
                file=sys.stderr,
            )
            return exitcodes.EXIT_USAGE
        extra["web"] = args.web
    path = locate.config_path(args.config)
    if path is None:
        print("procdevices: export: name the topology file (-c FILE or $PROCDEVICES_CONFIG)", file=sys.stderr)
        return exitcodes.EXIT_USAGE
    whole = locate.topology(args.config, args.run_dir)
    try:
        host = this_host(whole, _explicit_host(args, whole))
    except HostChoiceError as e:
        return host_error(e)
    try:
        text = renderers[args.target](
            select_host(whole, host),
            host=None if host is None else host.name,
            config_path=path,
            python=sys.executable,
            cwd=Path.cwd(),
            run_dir=locate.run_dir_override(args.run_dir),
            **extra,
        )
    except ValueError as e:
        print(f"procdevices: export {args.target}: {e}", file=sys.stderr)
        return exitcodes.EXIT_FAILED
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return exitcodes.EXIT_OK


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=EXPORT_TARGETS, help="the engine that will run `up --host NAME`")
    add_host_argument(parser, "the host whose engine runs it")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    from procdevices.web.security import DEFAULT_LISTEN, listen_address

    parser.add_argument(
        "--web",
        nargs="?",
        const=DEFAULT_LISTEN,
        default=None,
        type=listen_address,
        metavar="HOST:PORT",
        help=f"supervisord: also a program running `procdevices web` on HOST:PORT (default {DEFAULT_LISTEN})",
    )


# -- keys -----------------------------------------------------------------------------------


def keys(args: argparse.Namespace) -> int:
    from procdevices.cluster import keys as cluster_keys

    try:
        written = cluster_keys.generate(Path(args.directory))
    except (cluster_keys.KeyError_, OSError) as e:
        print(f"procdevices: keys generate: {e}", file=sys.stderr)
        return exitcodes.EXIT_FAILED
    for path in written:
        print(path)
    return exitcodes.EXIT_OK


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("generate",), help="write a server and a client key pair")
    parser.add_argument("directory", help="where (created if missing; existing keys are never overwritten)")


# -- reaching other hosts -------------------------------------------------------------------

DEFAULT_TIMEOUT = 2.0


def _local_host(topology: Topology, args: argparse.Namespace) -> HostConfig | None:
    """The host this command runs on, as for `up`; None when it is none of them (an operator's
    own machine, say): every host is then reached through its control endpoint."""
    try:
        return this_host(topology, _explicit_host(args, topology))
    except HostChoiceError:
        return None


def _target(topology: Topology, host: HostConfig, local: HostConfig | None, args: argparse.Namespace) -> Target:
    from procdevices.cluster.remote import Target

    if local is not None and host.name == local.name:
        run_dir = locate.client_run_dir(args.config, args.run_dir)
        return Target(host.name, runlayout.supervisor_endpoint(run_dir))
    if host.control is None:
        return Target(
            host.name, None, why_not=f"host {host.name} has no control endpoint ([hosts.{host.name}] control)"
        )
    return Target(host.name, control_connect(host), topology.cluster.keys)


def host_targets(topology: Topology, args: argparse.Namespace) -> list[Target]:
    """How to reach every host of ``topology``: this host through its run dir, the others
    through their control endpoints (``status --all``, ``web --all``)."""
    local = _local_host(topology, args)
    return [_target(topology, h, local, args) for h in topology.hosts]


def status(args: argparse.Namespace) -> int:
    """`status`, or with ``--all`` every host's, concurrently: one table with a HOST column."""
    from procdevices.cli import client
    from procdevices.cluster.remote import ask_all

    if not args.all:
        return routed(client.status)(args)
    topology = locate.topology(args.config, args.run_dir)
    if not topology.hosts:
        print(f"procdevices: status --all: {topology.source} defines no [hosts]", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    replies = ask_all(host_targets(topology, args), args.name, args.timeout)
    if args.json:
        print(json.dumps({"hosts": {name: r.as_json() for name, r in replies.items()}}, indent=1))
    else:
        print(_status_text(replies))
    if any(not r.reachable for r in replies.values()):
        return exitcodes.EXIT_UNREACHABLE
    fatal = any(d["state"] == "FATAL" for r in replies.values() if r.status is not None for d in r.status["devices"])
    return exitcodes.EXIT_FATAL if fatal else exitcodes.EXIT_OK


def _status_text(replies: dict[str, HostReply]) -> str:
    """One table for every host (the columns aligned across hosts), HOST first; a host that
    did not answer is one line after it."""
    from procdevices.cli import render

    devices: list[dict[str, Any]] = []
    owners: list[str] = []
    for name, reply in replies.items():
        if reply.status is not None:
            devices += reply.status["devices"]
            owners += [name] * len(reply.status["devices"])
    width = max(4, *(len(n) for n in replies))
    lines: list[str] = []
    index = -1
    for i, line in enumerate(render.status_table(devices).splitlines()):
        if i > 0 and not line.startswith(" "):
            index += 1  # a device's row; indented lines below it (its endpoints) are its own
        host = "HOST" if i == 0 else owners[index]
        lines.append(f"{host:<{width}}  {line}")
    for name, reply in replies.items():
        if not reply.reachable:
            lines.append(f"{name:<{width}}  UNREACHABLE ({reply.error})")
        elif reply.status is None:
            lines.append(f"{name:<{width}}  error: {reply.error}")
    return "\n".join(lines)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="every host of the topology, one table with a HOST column")
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"with --all: seconds to wait for each host (default {DEFAULT_TIMEOUT:g}); others show UNREACHABLE",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: expected seconds > 0 and <= 3600")
    return value


def routed(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A device command (status/stats/start/stop/restart/pause/resume NAME) sent to the host the
    device runs on, through its control endpoint, when that is not this host."""

    def run(args: argparse.Namespace) -> int:
        name = getattr(args, "name", None)
        if name:
            target = _remote_target(args, name)
            if target is not None:
                from procdevices.cluster.remote import call_remote

                args.remote = lambda command, call_args: call_remote(target, command, call_args)
        return handler(args)

    return run


def _remote_target(args: argparse.Namespace, name: str) -> Target | None:
    from procdevices.supervisor.config import ConfigError
    from procdevices.supervisor.config.hosts import host_of

    path = locate.config_path(args.config)
    if path is None or not _mentions_hosts(path):
        return None  # a one-host file: the command goes to the local supervisor, as always
    try:
        topology = locate.topology(args.config, args.run_dir)
    except ConfigError:
        return None  # as for every client command: the local supervisor is the truth
    host = host_of(topology, name)
    if host is None:
        return None
    local = _local_host(topology, args)
    if local is not None and local.name == host.name:
        return None
    return _target(topology, host, local, args)


def _mentions_hosts(path: Path) -> bool:
    """Whether the file has a [hosts] table, read without validating it: a one-host file
    costs a client command no full load (the libzmq trial included)."""
    import tomllib

    try:
        if not path.is_file() or path.stat().st_size > locate.MAX_RAW_BYTES:
            return False
        with open(path, "rb") as f:
            return "hosts" in tomllib.load(f)
    except (OSError, ValueError, RecursionError):
        return False
