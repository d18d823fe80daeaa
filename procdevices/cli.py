"""``python -m procdevices``: run a topology, inspect it, steer it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from procdevices import exitcodes, logs
from procdevices.control.protocol import SupervisorCommand
from procdevices.supervisor.config import ConfigError, Topology, default_topology, find_config, load_topology
from procdevices.supervisor.runstate import RunDir, RunDirError

USAGE_EXAMPLES = """\
examples:
  python -m procdevices up                     run ./procdevices.toml, or the default topology
  python -m procdevices check -c topo.toml     validate a file, start nothing
  python -m procdevices status --json          one JSON object, for scripts
  python -m procdevices pause broker           stop forwarding, keep the device alive
"""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as e:
        print(f"procdevices: invalid configuration: {e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    except RunDirError as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    except _CommandFailed as e:
        return e.code
    except KeyboardInterrupt:
        return exitcodes.EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m procdevices",
        description="Run ZeroMQ devices from a TOML topology, keep them alive, steer them.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str, *, name_arg: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("-c", "--config", help="topology file (default: ./procdevices.toml, else the embedded default)")
        p.add_argument("--run-dir", help="override the run directory of the topology")
        p.add_argument("--log-format", choices=logs.FORMATS, default="text", help="log line format (default: text)")
        p.add_argument("--log-level", choices=logs.LEVELS, default="info", help="least severe level logged")
        if name_arg == "required":
            p.add_argument("name", help="device name (all its replicas) or replica name (NAME.N)")
        elif name_arg == "optional":
            p.add_argument("name", nargs="?", help="device or replica name (default: all)")
        p.set_defaults(handler=handler)
        return p

    command("up", _up, "run the topology in the foreground until SIGTERM, SIGINT or `down`")
    command("check", _check, "validate the topology and exit (78 when invalid)")
    status = command("status", _status, "show every device process (exit 3 if one is FATAL)", name_arg="optional")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    stats = command("stats", _stats, "traffic counters of running devices", name_arg="optional")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    for verb, help in (
        ("start", "start a stopped, exited or FATAL device"),
        ("stop", "stop a device through its control socket"),
        ("restart", "stop, then start a device"),
    ):
        p = command(verb, _lifecycle, help, name_arg="required")
        p.add_argument("--no-wait", action="store_true", help="return once the supervisor accepted the command")
    command("pause", _steer, "pause forwarding (messages wait in queues)", name_arg="required")
    command("resume", _steer, "resume forwarding", name_arg="required")
    command("down", _down, "stop every device and the supervisor")
    events = command("events", _events, "follow the supervisor's events live (state changes, decisions, commands)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    run = command("run", _run, "run one device in the foreground (for supervisord's per-device mode)", name_arg="required")
    run.set_defaults(handler=_run)
    conf = command("supervisord-conf", _supervisord_conf, "print a supervisord [group] with one [program] per device process")
    conf.add_argument("-o", "--output", help="write to this file instead of stdout")
    return parser


# -- topology and run dir -------------------------------------------------------------------

def _topology(args: argparse.Namespace) -> Topology:
    path = find_config(args.config, Path.cwd())
    topology = load_topology(path) if path is not None else default_topology()
    if args.run_dir:
        import dataclasses
        import os

        # abspath, not resolve(): a symlinked run dir must reach RunDir as given, to be refused.
        supervisor = dataclasses.replace(topology.supervisor, run_dir=Path(os.path.abspath(args.run_dir)))
        topology = dataclasses.replace(topology, supervisor=supervisor)
    return topology


def _run_dir(args: argparse.Namespace) -> RunDir:
    return RunDir(_topology(args).supervisor.run_dir)


def _call(args: argparse.Namespace, command: SupervisorCommand, call_args: dict[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any] | None:
    from procdevices.control.client import SupervisorUnreachable, call_supervisor

    run_dir = _run_dir(args)
    if not (run_dir.path / "supervisor.sock").is_socket():
        print(f"procdevices: no supervisor is running with run dir {run_dir.path}", file=sys.stderr)
        return None
    try:
        return call_supervisor(run_dir.control_endpoint, command, call_args, timeout)
    except SupervisorUnreachable as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return None


class _CommandFailed(Exception):
    """Ends a command with an exit code; the reason has been printed already."""

    def __init__(self, code: int) -> None:
        self.code = code


def _request(args: argparse.Namespace, command: SupervisorCommand, call_args: dict[str, Any] | None = None, *, what: str = "") -> Any:
    """The supervisor's result for ``command``, or _CommandFailed with the right exit code."""
    reply = _call(args, command, call_args)
    if reply is None:
        raise _CommandFailed(exitcodes.EXIT_NOT_RUNNING)
    if not reply["ok"]:
        print(f"procdevices: {what}{reply['error']}", file=sys.stderr)
        raise _CommandFailed(exitcodes.EXIT_FAILED)
    return reply["result"]


# -- commands -------------------------------------------------------------------------------

def _check(args: argparse.Namespace) -> int:
    topology = _topology(args)
    instances = topology.instances()
    try:
        RunDir(topology.supervisor.run_dir).validate(c.name for c in instances)
    except RunDirError as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    print(f"{topology.source}: ok, {len(topology.devices)} device(s), {len(instances)} process(es)")
    for config in instances:
        print(f"  {config.name:<20} {config.kind:<16} " + " ".join(
            f"{role}={spec.type_name}" for role, spec in config.sockets()))
    return exitcodes.EXIT_OK


def _up(args: argparse.Namespace) -> int:
    from procdevices.supervisor.runstate import RunDirBusy, issue_run_token, remove_stale_sockets, stop_leftovers
    from procdevices.supervisor.service import run_supervisor

    topology = _topology(args)
    # The state file only serves clean-up after an unclean end: the supervisor logs a failed
    # write as a warning and goes on.
    run_dir = RunDir(topology.supervisor.run_dir)
    try:
        run_dir.validate(c.name for c in topology.instances())
        with run_dir.locked():
            for line in stop_leftovers(run_dir):
                print(f"procdevices: {line}", file=sys.stderr)
            stale = [run_dir.path / "supervisor.sock", *sorted((run_dir.path / "ctl").glob("*.sock"))]
            stale += [Path(e[len("ipc://"):]) for c in topology.instances() for _, s in c.sockets()
                      for e in s.bind if e.startswith("ipc://")]
            for path in remove_stale_sockets(stale):
                print(f"procdevices: removed stale socket file {path}", file=sys.stderr)
            if topology.source == "<default>":
                _print_default_endpoints(topology)
            # Before anything is spawned: every device inherits it, and state.json records it.
            issue_run_token()
            return run_supervisor(topology, run_dir)
    except RunDirBusy as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return exitcodes.EXIT_NOT_RUNNING
    except RunDirError as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG


def _print_default_endpoints(topology: Topology) -> None:
    print("procdevices: no procdevices.toml here; running the embedded default topology:", file=sys.stderr)
    for config in topology.devices:
        sockets = ", ".join(f"{role} {spec.type_name} {' '.join(spec.bind)}" for role, spec in config.sockets())
        print(f"  {config.name:<9} {config.kind:<10} {sockets}", file=sys.stderr)


def _status(args: argparse.Namespace) -> int:
    result = _request(args, SupervisorCommand.STATUS, {"name": args.name})
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{'NAME':<16} {'STATE':<9} {'PID':>7} {'RESTARTS':>8} {'UPTIME':>9}  LAST EXIT")
        for d in result["devices"]:
            uptime = f"{d['uptime']:.1f}s" if d["uptime"] is not None else "-"
            print(f"{d['name']:<16} {d['state']:<9} {d['pid'] or '-':>7} {d['restarts']:>8} {uptime:>9}  {d['last_exit'] or ''}")
    fatal = any(d["state"] == "FATAL" for d in result["devices"])
    return exitcodes.EXIT_FATAL if fatal else exitcodes.EXIT_OK


def _stats(args: argparse.Namespace) -> int:
    reply = _call(args, SupervisorCommand.STATS, {"name": args.name})
    if reply is None:
        return exitcodes.EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps(reply.get("result", {}), indent=1))
    else:
        for name, counters in sorted(reply.get("result", {}).items()):
            print(f"{name}: " + " ".join(f"{k}={v}" for k, v in counters.items()))
    if not reply["ok"]:
        print(f"procdevices: {reply['error']}", file=sys.stderr)
        return exitcodes.EXIT_FAILED
    return exitcodes.EXIT_OK


def _steer(args: argparse.Namespace) -> int:
    result = _request(args, SupervisorCommand(args.command), {"name": args.name}, what=f"{args.command} {args.name}: ")
    print(f"{args.command}d: {', '.join(sorted(result))}")
    return exitcodes.EXIT_OK


_SETTLED = {"start": {"RUNNING", "FATAL", "EXITED"}, "restart": {"RUNNING", "FATAL", "EXITED"}, "stop": {"STOPPED"}}


def _lifecycle(args: argparse.Namespace) -> int:
    before = _call(args, SupervisorCommand.STATUS, {"name": args.name})
    old_pids = {d["pid"] for d in before["result"]["devices"] if d["pid"]} if before and before["ok"] else set()
    _request(args, SupervisorCommand(args.command), {"name": args.name}, what=f"{args.command} {args.name}: ")
    if args.no_wait:
        return exitcodes.EXIT_OK
    # Wait until the supervisor reports the outcome; the supervisor itself never blocks.
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        status = _call(args, SupervisorCommand.STATUS, {"name": args.name})
        if status is None or not status["ok"]:
            return exitcodes.EXIT_FAILED
        devices = status["result"]["devices"]
        states = {d["state"] for d in devices}
        replaced = all(d["pid"] not in old_pids for d in devices)
        if states <= _SETTLED[args.command] and (args.command != "restart" or replaced):
            for d in devices:
                print(f"{d['name']}: {d['state']}" + (f" ({d['last_exit']})" if d["state"] != "RUNNING" and d["last_exit"] else ""))
            if "FATAL" in states or (args.command != "stop" and "EXITED" in states):
                return exitcodes.EXIT_FAILED
            return exitcodes.EXIT_OK
        time.sleep(0.05)
    print(f"procdevices: {args.command} {args.name}: no outcome within 60s", file=sys.stderr)
    return exitcodes.EXIT_FAILED


def _down(args: argparse.Namespace) -> int:
    from procdevices.supervisor.runstate import wait_gone

    pid = _request(args, SupervisorCommand.DOWN)["pid"]
    if wait_gone(pid, 120.0):
        print(f"procdevices: supervisor {pid} stopped")
        return exitcodes.EXIT_OK
    print(f"procdevices: supervisor {pid} is still running", file=sys.stderr)
    return exitcodes.EXIT_FAILED


def _events(args: argparse.Namespace) -> int:
    import zmq

    from procdevices.control.client import private_context
    from procdevices.supervisor.events import describe, events_endpoint

    run_dir = _run_dir(args)
    if not (run_dir.path / "events.sock").exists():
        print(f"procdevices: no supervisor is running with run dir {run_dir.path}", file=sys.stderr)
        return exitcodes.EXIT_NOT_RUNNING
    sock = private_context().socket(zmq.SUB)
    sock.linger = 0
    sock.subscribe(b"")
    sock.connect(events_endpoint(run_dir.path))
    try:
        while True:
            payload = json.loads(sock.recv())
            print(json.dumps(payload) if args.json else describe(payload), flush=True)
            if payload.get("type") == "supervisor" and payload.get("state") == "stopped":
                return exitcodes.EXIT_OK
    except (KeyboardInterrupt, BrokenPipeError):
        return exitcodes.EXIT_OK
    finally:
        sock.close(linger=0)


def _run(args: argparse.Namespace) -> int:
    from procdevices.supervisor.foreground import run_one

    return run_one(_topology(args), args.name)


def _supervisord_conf(args: argparse.Namespace) -> int:
    from procdevices.supervisor.supervisord import render_group

    path = find_config(args.config, Path.cwd())
    try:
        text = render_group(_topology(args), config_path=path, python=sys.executable, cwd=Path.cwd())
    except ValueError as e:
        print(f"procdevices: supervisord-conf: {e}", file=sys.stderr)
        return exitcodes.EXIT_FAILED
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return exitcodes.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
