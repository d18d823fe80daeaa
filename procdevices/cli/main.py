"""``procdevices`` / ``python -m procdevices``: the command table and the option parser.

Global options (``-c``, ``--run-dir``, ``--log-format``, ``--log-level``) are accepted before
or after the command. A bad option of a command prints that command's usage; a bare
``procdevices`` prints a short help.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from procdevices import exitcodes, logs
from procdevices.cli import interrupts
from procdevices.supervisor.config import ConfigError
from procdevices.supervisor.runstate import RunDirError

Handler = Callable[[argparse.Namespace], int]

EXAMPLES = (
    ("up", "run ./procdevices.toml, or the embedded default topology"),
    ("check -c topo.toml", "validate a file, start nothing"),
    ("status --json", "every device process, as JSON (from anywhere: -c, $PROCDEVICES_CONFIG or $PROCDEVICES_RUN_DIR)"),
    ("pause broker", "stop forwarding, keep the device alive"),
    ("events", "follow state changes live"),
)


def examples(prog: str) -> str:
    width = max(len(command) for command, _ in EXAMPLES)
    return "examples:\n" + "\n".join(f"  {prog} {command:<{width}}  {what}" for command, what in EXAMPLES)


NAME_HELP = "device name (all its replicas) or replica name (NAME.N)"


class Command(NamedTuple):
    """A row of the command table. ``handler`` names its function as "module:function" under
    ``procdevices``: a command's module is imported only when that command runs, so that `up`
    never loads what `tap`, `top`, `web` or the clients need."""

    name: str
    handler: str
    help: str
    name_arg: str | None = None  # "required" | "optional" | None
    json: bool = False
    wait: bool = False


COMMANDS = (
    Command("up", "cli.serve:up", "run the topology in the foreground until SIGTERM, SIGINT or `down`"),
    Command("check", "cli.serve:check", "validate the topology and the run dir; start nothing (78 when invalid)"),
    # status and the device commands reach a device on another host through its control
    # endpoint; `status --all` asks every host (cli/cluster.py, docs/multihost.md).
    Command(
        "status", "cli.cluster:status", "show every device process (exit 3 if one is FATAL)", "optional", json=True
    ),
    Command("stats", "cli.client:stats", "traffic counters of running devices", "optional", json=True),
    Command("start", "cli.client:lifecycle", "start a stopped, exited or FATAL device", "required", wait=True),
    Command("stop", "cli.client:lifecycle", "stop a device through its control socket", "required", wait=True),
    Command("restart", "cli.client:lifecycle", "stop, then start a device", "required", wait=True),
    Command("pause", "cli.client:steer", "pause forwarding (messages wait in queues)", "required"),
    Command("resume", "cli.client:steer", "resume forwarding", "required"),
    Command("logs", "cli.client:logs", "show a device process's own output (stdout and stderr)", "required"),
    Command(
        "reload", "cli.client:reload", "re-read the topology and apply the difference (SIGHUP to `up` does the same)"
    ),
    Command("scale", "cli.client:scale", "run N replicas of a device (the file is not changed)", "required", wait=True),
    Command("down", "cli.client:down", "stop every device and the supervisor; returns once it has exited"),
    Command(
        "upgrade",
        "cli.client:upgrade",
        "re-execute `up` with the procdevices installed now, keeping every device (SIGUSR2 too)",
    ),
    Command(
        "events",
        "cli.client:events",
        "follow the supervisor's events live (state changes, decisions, commands)",
        json=True,
    ),
    Command("tap", "cli.tap:run", "print the messages passing through a running device (Ctrl-C to leave)", "required"),
    Command("top", "cli.top:top", "a live, refreshing view of every device process (Ctrl-C to leave)", "optional"),
    Command(
        "web",
        "web.command:run",
        "serve a live picture of the topology in the browser (read-only unless --allow-actions)",
    ),
    Command(
        "run", "cli.serve:run", "run one device process in the foreground (supervisord's per-device mode)", "required"
    ),
    Command(
        "supervisord-conf",
        "cli.serve:supervisord_conf",
        "print a supervisord [group], one [program] per device process",
    ),
    Command("completion", "cli.main:completion", "print a shell completion script"),
    # Multi-host (docs/multihost.md)
    Command("endpoints", "cli.cluster:endpoints", "every device's bound endpoints, as clients reach them", json=True),
    Command("export", "cli.cluster:export", "print a systemd unit or supervisord program running `up --host NAME`"),
    Command("keys", "cli.cluster:keys", "`keys generate DIR`: CURVE keys for the hosts' control endpoints"),
)

# Device commands sent to the device's host when it is another one (cli/cluster.py).
_ROUTED = ("stats", "start", "stop", "restart", "pause", "resume")


def _resolve(path: str) -> Callable[..., Any]:
    """The function named "module:function" under procdevices, its module imported now."""
    module, _, function = path.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(f"procdevices.{module}"), function)
    return found


def handler_of(command: str, path: str) -> Handler:
    """The function a command runs, its module imported now."""
    handler: Handler = _resolve(path)
    if command in _ROUTED:
        from procdevices.cli import cluster

        handler = cluster.routed(handler)
    return handler


def main(argv: list[str] | None = None, *, held: interrupts.Held | None = None) -> int:
    """``held``: the signals the entry point has held since it started (interrupts.py). ``up``
    hands them to its event loop; every other command releases them first thing (a Ctrl-C
    that came meanwhile is then the KeyboardInterrupt it would have been, handled below).
    Without ``held`` (a call from Python), main holds them itself and puts the handlers back
    when it returns; the entry point's process ends instead."""
    own = held is None
    held = held or interrupts.hold()
    try:
        return _main(argv, held)
    finally:
        if own:
            held.restore()


def _main(argv: list[str] | None, held: interrupts.Held) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, commands = build_parser(only=command_in(argv))
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "command", None) is None:
        held.release()
        print(short_help(parser))
        return exitcodes.EXIT_OK
    if extra:
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    for option, default in _GLOBAL_DEFAULTS.items():
        if not hasattr(args, option):
            setattr(args, option, default)
    args.held = held
    try:
        if args.command != "up":
            held.release()
        logs.configure(args.log_format, args.log_level)
        code: int = handler_of(args.command, args.handler)(args)
        return code
    except ConfigError as e:
        print(f"procdevices: invalid configuration: {e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    except RunDirError as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    except exitcodes.CommandFailed as e:
        return e.code
    except BrokenPipeError:
        # `procdevices status | head -1`: the reader left, which is not our failure. Python
        # would complain again when flushing stdout at exit; point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.EXIT_OK
    except KeyboardInterrupt:
        return exitcodes.EXIT_FAILED


_GLOBAL_DEFAULTS = {"config": None, "run_dir": None, "log_format": "text", "log_level": "info"}


def short_help(parser: argparse.ArgumentParser) -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = [parser.format_usage().rstrip(), "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.help}" for c in COMMANDS]
    lines += ["", examples(parser.prog), "", f"`{parser.prog} --help` lists the options; `COMMAND --help` a command's."]
    return "\n".join(lines)


def program_name() -> str:
    """The name the user typed: ``procdevices``, or ``python -m procdevices``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "procdevices"
    return "python -m procdevices" if invoked in ("__main__.py", "-c", "") else invoked


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import zmq

    try:
        ours = version("procdevices")
    except PackageNotFoundError:
        ours = "unknown"
    from procdevices.devices.cloop import proxy_loop_text
    from procdevices.devices.monitoredqueuedevice import loop_text

    python = ".".join(map(str, sys.version_info[:3]))
    return (
        f"procdevices {ours} (pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, Python {python}; "
        f"forwarding loop: {proxy_loop_text()}; monitored-queue loop: {loop_text()})"
    )


class _Version(argparse.Action):
    """``--version``: the text is made only when asked for (it loads the device layer)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help=str(kwargs.get("help")))

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On a command's parser the defaults are suppressed, so that an option given before the
    # command is not overwritten by the command parser's default.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "-c",
        "--config",
        default=default(None),
        help="topology file (default: $PROCDEVICES_CONFIG, else ./procdevices.toml, else the embedded default)",
    )
    group.add_argument(
        "--run-dir", default=default(None), help="run directory (default: $PROCDEVICES_RUN_DIR, else the topology's)"
    )
    group.add_argument("--log-format", choices=logs.FORMATS, default=default("text"), help="log lines as text or JSON")
    group.add_argument("--log-level", choices=logs.LEVELS, default=default("info"), help="least severe level logged")


def terminal_columns() -> int:
    """The width help is written to, as argparse reads it (``shutil.get_terminal_size``:
    ``$COLUMNS``, else the terminal on stdout, else 80). Read here because argparse's formatter
    imports shutil for it, and shutil bz2 and lzma: ~3 ms of every command's start, `up`'s
    before its first device (docs/performance.md, "Session 11")."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    if sys.__stdout__ is None:
        return 80
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):  # no fileno, not a terminal, or closed
        return 80


def build_parser(
    prog: str | None = None, *, only: str | None = None
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of every command, or with ``only`` of that command alone: a command line
    that names its command is parsed exactly as by the whole parser, without building (and
    importing the modules of) the two dozen others."""
    prog = prog or program_name()
    width = terminal_columns() - 2  # as argparse's formatter takes it
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run ZeroMQ devices from a TOML topology, keep them alive, steer them.",
        epilog=examples(prog),
        formatter_class=functools.partial(argparse.RawDescriptionHelpFormatter, width=width),
    )
    parser.add_argument("--version", action=_Version, help="show the versions (and the forwarding loops) and exit")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}
    for command in COMMANDS:
        if only is not None and command.name != only:
            continue
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            formatter_class=functools.partial(argparse.HelpFormatter, width=width),
        )
        _global_options(p, suppress=True)
        if command.name_arg == "required":
            p.add_argument("name", help=NAME_HELP)
        elif command.name_arg == "optional":
            p.add_argument("name", nargs="?", help=NAME_HELP + " (default: all)")
        if command.json:
            p.add_argument("--json", action="store_true", help="JSON output, for scripts")
        if command.wait:
            p.add_argument("--no-wait", action="store_true", help="return once the supervisor accepted the command")
        p.set_defaults(handler=command.handler)
        for add in _ARGUMENTS.get(command.name, ()):
            add(p)
        commands[command.name] = p
    return parser, commands


# Global options that take a value (_global_options; tests/unit/test_cli_parser.py checks the
# two agree): what may come before the command's name, as "-c FILE", "--config=FILE", "-cFILE".
_GLOBAL_VALUED = ("-c", "--config", "--run-dir", "--log-format", "--log-level")
# ... and the starts of the forms with the value joined on: "--config=", "-c".
_GLOBAL_JOINED = tuple(f"{option}=" if option.startswith("--") else option for option in _GLOBAL_VALUED)


def command_in(argv: list[str]) -> str | None:
    """The command ``argv`` names when nothing but global options comes before it; None
    otherwise (no command, ``--help``, an abbreviated or unknown option, a typo), and then the
    whole parser is built, so that help and errors name every command."""
    names = {command.name for command in COMMANDS}
    tokens: Iterator[str] = iter(argv)
    for token in tokens:
        if token in names:
            return token
        if token in _GLOBAL_VALUED:
            next(tokens, None)
        elif not token.startswith(_GLOBAL_JOINED):
            return None
    return None


# -- options of single commands: main.py's own, or (_lazy) the owning module's, imported only
# -- when that command's parser is built ------------------------------------------------------


def _supervisord_conf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument(
        "--program",
        action="store_true",
        help="print instead the one-program file that runs `up` (supervisor.d/procdevices.conf)",
    )


def _completion_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"))


def _scale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("replicas", type=int, help="how many instances to run (1 to 64)")


def _logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--lines", type=int, default=20, help="how many last lines (default 20)")
    p.add_argument("-f", "--follow", action="store_true", help="then print what the device appends")


def _lazy(path: str, *args: str) -> Callable[[argparse.ArgumentParser], None]:
    """The option adder ``path`` ("module:function" under procdevices) with ``args``, its
    module imported only when the parser of its command is built."""

    def add(p: argparse.ArgumentParser) -> None:
        _resolve(path)(p, *args)

    return add


_HOST = "cli.cluster:add_host_argument"
_ARGUMENTS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], ...]] = {
    "supervisord-conf": (_supervisord_conf_arguments,),
    "completion": (_completion_arguments,),
    "scale": (_scale_arguments,),
    "logs": (_logs_arguments,),
    "up": (_lazy("cli.serve:add_up_arguments"), _lazy(_HOST, "run this host's devices only")),
    "export": (_lazy("cli.cluster:add_export_arguments"),),
    "keys": (_lazy("cli.cluster:add_keys_arguments"),),
    "status": (
        _lazy("cli.cluster:add_status_arguments"),
        _lazy(_HOST, "with --all or NAME: the host this machine is"),
    ),
    "top": (_lazy("cli.top:add_arguments"),),
    "tap": (_lazy("cli.tap:add_arguments"), _lazy(_HOST, "the host this machine is")),
    "web": (_lazy("web.command:add_arguments"),),
    **{name: (_lazy(_HOST, "the host this machine is"),) for name in _ROUTED},
}


def completion(args: argparse.Namespace) -> int:
    return print_completion(args.shell)


def print_completion(shell: str) -> int:
    """The script comes from shtab, which reads this very parser: it cannot drift from it.
    Install: ``procdevices completion bash > ~/.local/share/bash-completion/completions/procdevices``."""
    import shtab

    parser, _ = build_parser(prog="procdevices")  # completes the installed console script
    print(shtab.complete(parser, shell=shell))
    return exitcodes.EXIT_OK
