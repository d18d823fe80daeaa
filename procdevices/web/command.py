"""``procdevices web``: its options and its start. Imports nothing heavy, so the command table
stays cheap to load; aiohttp is imported when the command runs."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from procdevices import exitcodes
from procdevices.web.security import DEFAULT_LISTEN, listen_address

if TYPE_CHECKING:
    from procdevices.web.link import Cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=listen_address,
        default=DEFAULT_LISTEN,
        help=f"where to serve the page (default {DEFAULT_LISTEN}; port 0: any free port); "
        "an address other than loopback needs --token-file",
    )
    parser.add_argument("--token-file", metavar="FILE", help="require the token in FILE (mode 600) on every request")
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="offer pause, resume, restart, stop and start on the page (default: read-only)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="every host of the topology's [hosts], each through its control endpoint (unreachable hosts greyed)",
    )
    from procdevices.cli.cluster import add_host_argument

    add_host_argument(parser, "with --all: the host this runs on, reached through the run dir")


def run(args: argparse.Namespace) -> int:
    from procdevices.cli.locate import client_run_dir
    from procdevices.supervisor.config.settings import split_host_port
    from procdevices.web.security import is_loopback, read_token

    host, port = split_host_port(args.listen)
    token = None
    if args.token_file:
        try:
            token = read_token(args.token_file)
        except ValueError as e:
            print(f"procdevices: web: {e}", file=sys.stderr)
            return exitcodes.EXIT_CONFIG
    elif not is_loopback(host):
        print(f"procdevices: web: --listen {args.listen} is not a loopback address: give --token-file", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    run_dir = client_run_dir(args.config, args.run_dir)
    cluster = None
    if args.all:
        cluster = _cluster(args)
        if cluster is None:
            return exitcodes.EXIT_CONFIG

    import asyncio

    from procdevices.web.server import serve

    def ready(url: str) -> None:
        mode = "actions allowed" if args.allow_actions else "read-only"
        where = f"hosts {', '.join(t.name for t in cluster.targets)}" if cluster else f"run dir {run_dir}"
        print(f"procdevices: web: {url} ({mode}; {where})", file=sys.stderr, flush=True)

    try:
        asyncio.run(
            serve(host, port, run_dir, token=token, allow_actions=args.allow_actions, ready=ready, cluster=cluster)
        )
    except OSError as e:
        print(f"procdevices: web: cannot listen on {args.listen}: {e.strerror or e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    return exitcodes.EXIT_OK


def _cluster(args: argparse.Namespace) -> Cluster | None:
    """``--all``: every host of the file, reached as ``status --all`` reaches them; None
    (after one line) for a file without ``[hosts]``: there is no other host to show."""
    from procdevices.cli import locate
    from procdevices.cli.cluster import host_targets
    from procdevices.web.link import Cluster

    topology = locate.topology(args.config, args.run_dir)
    if not topology.hosts:
        print(f"procdevices: web --all: {topology.source} defines no [hosts]", file=sys.stderr)
        return None
    return Cluster(str(topology.source), tuple(host_targets(topology, args)))
