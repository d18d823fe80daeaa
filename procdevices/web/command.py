"""``procdevices web``: its options and its start. Imports nothing heavy, so the command table
stays cheap to load; aiohttp is imported when the command runs."""

from __future__ import annotations

import argparse
import sys

from procdevices import exitcodes

DEFAULT_LISTEN = "127.0.0.1:9465"


def listen_address(text: str) -> str:
    from procdevices.supervisor.config.settings import split_host_port

    try:
        split_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


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

    import asyncio

    from procdevices.web.server import serve

    def ready(url: str) -> None:
        mode = "actions allowed" if args.allow_actions else "read-only"
        print(f"procdevices: web: {url} ({mode}; run dir {run_dir})", file=sys.stderr, flush=True)

    try:
        asyncio.run(serve(host, port, run_dir, token=token, allow_actions=args.allow_actions, ready=ready))
    except OSError as e:
        print(f"procdevices: web: cannot listen on {args.listen}: {e.strerror or e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    return exitcodes.EXIT_OK
