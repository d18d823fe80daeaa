"""The multi-host commands (docs/multihost.md): ``endpoints``, ``keys generate``, ``export``,
``status --all``, and the routing of a device command to the device's host."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from procdevices import exitcodes
from procdevices.cli import locate
from procdevices.supervisor.config import Topology
from procdevices.supervisor.config.hosts import HostChoiceError, bound_endpoints, select_host, this_host
from procdevices.supervisor.config.model import HostConfig

__all__ = ["HostChoiceError", "endpoints", "this_hosts_part"]

ENV_HOST = "PROCDEVICES_HOST"


def chosen_host_name(args: argparse.Namespace) -> str | None:
    """``--host``, else ``$PROCDEVICES_HOST``, else None (the host is then found by address)."""
    flag = getattr(args, "host", None)
    return flag if flag else os.environ.get(ENV_HOST) or None


def host_error(e: HostChoiceError) -> int:
    print(f"procdevices: {e}", file=sys.stderr)
    return exitcodes.EXIT_CONFIG


def this_hosts_part(args: argparse.Namespace) -> tuple[Topology, HostConfig | None, Callable[[str | None], Topology]]:
    """What `up` runs: the topology cut to this host's devices, the host, and the re-reader a
    reload uses (cut to the same host). HostChoiceError when the host cannot be chosen."""
    whole = locate.topology(args.config, args.run_dir)
    host = this_host(whole, chosen_host_name(args))
    reread = locate.reloader(args.config, args.run_dir)
    if host is None:
        return whole, None, reread
    return select_host(whole, host), host, lambda path: select_host(reread(path), host)


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
    path = locate.config_path(args.config)
    if path is None:
        print("procdevices: export: name the topology file (-c FILE or $PROCDEVICES_CONFIG)", file=sys.stderr)
        return exitcodes.EXIT_USAGE
    whole = locate.topology(args.config, args.run_dir)
    try:
        host = this_host(whole, chosen_host_name(args))
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
