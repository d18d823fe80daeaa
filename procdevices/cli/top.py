"""``procdevices top``: a live view of every device process, refreshed from ``status``.

Each refresh is one ``status`` request: the supervisor answers from what it already knows
(traffic rates are computed from the counters it reads on its probe tick), so watching costs
the devices nothing. Columns (docs/observability.md):

- IN/s, OUT/s: message frames the device received (on both its sockets) and sent (on both),
  per second. For a streamer or forwarder that is clients in, backend out; for a queue it
  counts requests and replies. IN above OUT means messages wait inside the device (paused,
  blocked) or are dropped (a PUB at its high-water mark).
- MB/s IN, MB/s OUT: the same in megabytes (10^6 bytes) per second.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from procdevices import exitcodes
from procdevices.cli import client
from procdevices.cli.render import duration, state_text
from procdevices.control.protocol import SupervisorCommand

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.table import Table

SIDES = ("front", "back")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sort",
        choices=tuple(SORT_KEYS),
        default="name",
        help="order of the rows: name (ascending), or the largest cpu, rss, restarts, msgs (IN/s + OUT/s) first",
    )
    parser.add_argument(
        "-n", "--interval", type=_interval, default=1.0, metavar="SECONDS", help="refresh interval (default: 1)"
    )
    parser.add_argument("--once", action="store_true", help="print one frame and exit (plain text when not a terminal)")


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.1 <= value <= 3600:  # faster would only load the supervisor with status requests
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 3600 seconds, got {text}")
    return value


def rate(device: dict[str, Any], unit: str, direction: str) -> float:
    """Per-second rate of ``unit`` (msgs, bytes) received (in) or sent (out), both sockets."""
    rates = (device.get("traffic") or {}).get("rates") or {}
    return float(sum(rates.get(f"{side}_{unit}_{direction}", 0.0) for side in SIDES))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else -1.0


SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "name": lambda d: str(d["name"]),
    "cpu": lambda d: -_number(d.get("cpu_percent")),
    "rss": lambda d: -_number(d.get("rss")),
    "restarts": lambda d: -_number(d.get("restarts")),
    "msgs": lambda d: -(rate(d, "msgs", "in") + rate(d, "msgs", "out")),
}


def sorted_devices(devices: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return sorted(devices, key=lambda d: (SORT_KEYS[key](d), str(d["name"])))


def _msgs(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _megabytes(value: float) -> str:
    return f"{value / 1e6:.2f}"


def _rss(value: Any) -> str:
    return f"{value / 1024**2:.1f}M" if isinstance(value, int | float) else "-"


def _cpu(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


COLUMNS = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "IN/s", "OUT/s", "MB/s IN", "MB/s OUT", "RSS", "CPU%")


def rows(devices: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per device, LAST EXIT last."""
    return [
        (
            str(d["name"]),
            state_text(d),
            str(d["pid"] or "-"),
            duration(d["uptime"]),
            str(d["restarts"]),
            _msgs(rate(d, "msgs", "in")),
            _msgs(rate(d, "msgs", "out")),
            _megabytes(rate(d, "bytes", "in")),
            _megabytes(rate(d, "bytes", "out")),
            _rss(d.get("rss")),
            _cpu(d.get("cpu_percent")),
            str(d.get("last_exit") or ""),
        )
        for d in devices
    ]


def header(status: dict[str, Any], sort: str) -> str:
    supervisor = status["supervisor"]
    devices = status["devices"]
    counts: dict[str, int] = {}
    for d in devices:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    metrics = supervisor.get("metrics")
    return (
        f"supervisor pid {supervisor['pid']}, up {duration(supervisor.get('uptime'))}; "
        f"{len(devices)} device process(es): {states or 'none'}; sorted by {sort}"
        + (f"; metrics http://{metrics}/metrics" if metrics else "")
    )


def frame(status: dict[str, Any], sort: str, *, styled: bool) -> Group:
    """The header line, then the table."""
    from rich.console import Group
    from rich.text import Text

    return Group(Text(header(status, sort), style="bold" if styled else ""), device_table(status, sort, styled=styled))


def device_table(status: dict[str, Any], sort: str, *, styled: bool) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD if styled else None,
        show_edge=False,
        header_style="bold" if styled else "",
        pad_edge=False,
        # The box's own separator is one column: a terminal may be only 80 wide.
        padding=(0, 0 if styled else 2, 0, 0),
    )
    cells = rows(sorted_devices(status["devices"], sort))
    names = (*COLUMNS, "LAST EXIT")
    for index, name in enumerate(names):
        if name == "LAST EXIT":
            # The one column that gives way in a narrow terminal: folded, never cut.
            table.add_column(name, overflow="fold")
            continue
        widest = max((len(row[index]) for row in cells), default=0)
        right = 2 <= index < len(COLUMNS)
        table.add_column(name, justify="right" if right else "left", no_wrap=True, min_width=max(widest, len(name)))
    for row in cells:
        state = row[1]
        style = ""
        if styled:
            style = "red" if state.startswith(("FATAL", "BACKOFF")) else "yellow" if "(" in state else ""
        table.add_row(*row, style=style)
    return table


def top(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(highlight=False)
    if args.once and console.is_terminal:
        console.print(frame(_status(args), args.sort, styled=True))
        return exitcodes.EXIT_OK
    if args.once or not console.is_terminal:
        return _print_frames(args, console)
    try:
        return _live(args, console)
    except KeyboardInterrupt:
        return exitcodes.EXIT_OK


def _status(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = client.request(args, SupervisorCommand.STATUS, name=args.name)
    return result


def _print_frames(args: argparse.Namespace, console: Console) -> int:
    """``--once``, or stdout not a terminal: frames as plain lines, one after another (like
    ``top -b``), never cut to a terminal width that is not there."""
    from rich.console import Console

    plain = Console(file=console.file, width=100_000, no_color=True, highlight=False, emoji=False, force_terminal=False)
    try:
        while True:
            with plain.capture() as captured:
                plain.print(frame(_status(args), args.sort, styled=False))
            text = "\n".join(line.rstrip() for line in captured.get().splitlines())
            console.file.write(text + "\n")
            console.file.flush()
            if args.once:
                return exitcodes.EXIT_OK
            time.sleep(args.interval)
            console.file.write("\n")
    except KeyboardInterrupt:
        return exitcodes.EXIT_OK


def _live(args: argparse.Namespace, console: Console) -> int:
    from rich.live import Live

    with Live(frame(_status(args), args.sort, styled=True), console=console, auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(args.interval)
            live.update(frame(_status(args), args.sort, styled=True), refresh=True)
