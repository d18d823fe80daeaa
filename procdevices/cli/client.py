"""The client commands: they talk to a running supervisor through its run dir and never need
a valid topology (see locate.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procdevices import exitcodes, runlayout
from procdevices.cli import locate, render
from procdevices.control.protocol import ErrorCode, SupervisorCommand
from procdevices.exitcodes import CommandFailed

if TYPE_CHECKING:
    from procdevices.control.waiter import SupervisorWaiter


def _fail(message: str, code: int) -> CommandFailed:
    print(f"procdevices: {message}", file=sys.stderr)
    return CommandFailed(code)


def run_dir(args: argparse.Namespace) -> Path:
    return locate.client_run_dir(args.config, args.run_dir)


def call(args: argparse.Namespace, command: SupervisorCommand, **call_args: Any) -> dict[str, Any]:
    """The supervisor's reply; CommandFailed (exit 4) when none answers."""
    from procdevices.control.client import SupervisorUnreachable, call_supervisor

    remote = getattr(args, "remote", None)  # the device runs on another host (cli/cluster.py)
    if remote is not None:
        try:
            reply: dict[str, Any] = remote(command, call_args)
        except SupervisorUnreachable as e:
            raise _fail(str(e), exitcodes.EXIT_NOT_RUNNING) from None
        return reply
    directory = run_dir(args)
    if not Path(runlayout.supervisor_socket(directory)).is_socket():
        raise _fail(f"no supervisor is running with run dir {directory}", exitcodes.EXIT_NOT_RUNNING)
    try:
        return call_supervisor(runlayout.supervisor_endpoint(directory), command, call_args)
    except SupervisorUnreachable as e:
        raise _fail(str(e), exitcodes.EXIT_NOT_RUNNING) from None


def request(
    args: argparse.Namespace, command: SupervisorCommand, *, on_behalf: str | None = None, **call_args: Any
) -> Any:
    """The result of a command that must succeed (CommandFailed with exit 1 otherwise).
    ``on_behalf``: the command the user typed, when this request is a step of it (``stop``
    asks for ``status`` first): errors name what the user typed."""
    reply = call(args, command, **call_args)
    if not reply["ok"]:
        code = exitcodes.EXIT_CONFIG if reply.get("code") == ErrorCode.INVALID_CONFIG.value else exitcodes.EXIT_FAILED
        raise _fail(_prefixed(on_behalf or command.value, str(reply["error"])), code)
    return reply["result"]


def _prefixed(command: str, error: str) -> str:
    """``command: error``, once: the supervisor's own message may start with it already."""
    return error if error.startswith(f"{command}: ") or error.startswith(f"{command} ") else f"{command}: {error}"


def status(args: argparse.Namespace) -> int:
    result = request(args, SupervisorCommand.STATUS, name=args.name)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(render.status_table(result["devices"]))
    fatal = any(d["state"] == "FATAL" for d in result["devices"])
    return exitcodes.EXIT_FATAL if fatal else exitcodes.EXIT_OK


def stats(args: argparse.Namespace) -> int:
    reply = call(args, SupervisorCommand.STATS, name=args.name)
    results = reply.get("result") or {}
    if results or args.json:
        print(json.dumps(results, indent=1) if args.json else render.stats_lines(results))
    if not reply["ok"]:
        _report_device_errors("stats", reply)
        return exitcodes.EXIT_FAILED
    return exitcodes.EXIT_OK


def steer(args: argparse.Namespace) -> int:
    """pause, resume: every selected device answers; each failure is named."""
    command = SupervisorCommand(args.command)
    reply = call(args, command, name=args.name)
    done = sorted(reply.get("result") or {})
    if done:
        print(f"{command.value}d: {', '.join(done)}")
    if not reply["ok"]:
        _report_device_errors(command.value, reply)
        return exitcodes.EXIT_FAILED
    return exitcodes.EXIT_OK


def _report_device_errors(command: str, reply: dict[str, Any]) -> None:
    errors = reply.get("errors")
    if errors:
        for name, why in sorted(errors.items()):
            print(f"procdevices: {command} {name}: {why}", file=sys.stderr)
    else:
        print(f"procdevices: {_prefixed(command, str(reply.get('error')))}", file=sys.stderr)


_SETTLED = {"start": {"RUNNING", "FATAL", "EXITED"}, "restart": {"RUNNING", "FATAL", "EXITED"}, "stop": {"STOPPED"}}
LIFECYCLE_TIMEOUT = 60.0


def _waiter(args: argparse.Namespace) -> SupervisorWaiter:
    """Subscribed to the supervisor's events before the command is sent, so none is missed;
    a supervisor on another host has no local event stream (the waiter re-checks on its own)."""
    from procdevices.control.waiter import SupervisorWaiter

    return SupervisorWaiter(None if getattr(args, "remote", None) is not None else run_dir(args))


def lifecycle(args: argparse.Namespace) -> int:
    """start, stop, restart: ask, then wait until the supervisor reports the outcome."""
    command = SupervisorCommand(args.command)
    before = request(args, SupervisorCommand.STATUS, on_behalf=command.value, name=args.name)
    old_pids = {d["pid"] for d in before["devices"] if d["pid"]}
    with _waiter(args) as waiter:
        request(args, command, name=args.name)
        if args.no_wait:
            return exitcodes.EXIT_OK

        def settled() -> list[dict[str, Any]] | None:
            devices: list[dict[str, Any]] = request(
                args, SupervisorCommand.STATUS, on_behalf=command.value, name=args.name
            )["devices"]
            states = {d["state"] for d in devices}
            replaced = all(d["pid"] not in old_pids for d in devices)
            done = states <= _SETTLED[command.value] and (command is not SupervisorCommand.RESTART or replaced)
            return devices if done else None

        devices = waiter.wait(settled, LIFECYCLE_TIMEOUT)
    if devices is None:
        raise _fail(f"{command.value} {args.name}: no outcome within {LIFECYCLE_TIMEOUT:g}s", exitcodes.EXIT_FAILED)
    for d in devices:
        print(
            f"{d['name']}: "
            + (d["state"] if d["state"] == "RUNNING" or not d["last_exit"] else f"{d['state']} ({d['last_exit']})")
        )
    states = {d["state"] for d in devices}
    if "FATAL" in states or (command is not SupervisorCommand.STOP and "EXITED" in states):
        return exitcodes.EXIT_FAILED
    return exitcodes.EXIT_OK


def down(args: argparse.Namespace) -> int:
    from procdevices.supervisor.runstate import wait_gone

    pid = request(args, SupervisorCommand.DOWN)["pid"]
    if wait_gone(pid, 120.0):
        print(f"procdevices: supervisor {pid} stopped")
        return exitcodes.EXIT_OK
    raise _fail(f"supervisor {pid} is still running", exitcodes.EXIT_FAILED)


# An upgrade checks the new version, then re-executes `up`, which adopts every device again.
UPGRADE_TIMEOUT = 120.0
# How long `upgrade` waits for another `up` once the one it asked has exited.
UPGRADE_GONE_GRACE = 5.0


def upgrade(args: argparse.Namespace) -> int:
    """Re-execute `up` with the procdevices installed now (same pid; every device keeps
    running and is adopted again); returns once it runs again, or with the reason it did not."""
    import psutil  # here: the other commands need none of it

    with _waiter(args) as waiter:
        before = request(args, SupervisorCommand.STATUS, on_behalf="upgrade")["supervisor"]
        request(args, SupervisorCommand.UPGRADE)

        gone_since: float | None = None  # when its pid was first seen gone

        def outcome() -> tuple[str, Any] | None:
            """("upgraded" or "failed", its status), ("stopped", why); None: not yet."""
            nonlocal gone_since
            status = waiter.status(timeout=1.0)
            if status is None:
                # Re-executing (same pid): nobody answers for a moment. Its pid gone, it
                # stopped, or its new image failed after the exec and an outer supervisor
                # (systemd, supervisord) starts `up` again: give that one time to answer.
                if psutil.pid_exists(before["pid"]):
                    return None
                if gone_since is None:
                    gone_since = time.monotonic()
                if time.monotonic() - gone_since < UPGRADE_GONE_GRACE:
                    return None
                return "stopped", f"supervisor {before['pid']} exited before it ran the new version: see its log"
            now = status["supervisor"]
            if now["started"] != before["started"]:
                return "upgraded", status
            attempt = now.get("upgrade") or {}
            if attempt != before.get("upgrade"):  # not an earlier attempt's outcome
                if attempt.get("state") == "failed":
                    return "failed", status
                if attempt.get("state") == "cancelled":
                    return "stopped", "cancelled: the supervisor is stopping (down, SIGTERM or SIGUSR1)"
            return None

        result = waiter.wait(outcome, UPGRADE_TIMEOUT)
    if result is None:
        raise _fail(f"upgrade: no outcome within {UPGRADE_TIMEOUT:g}s", exitcodes.EXIT_FAILED)
    kind, status = result
    if kind == "stopped":
        raise _fail(f"upgrade: {status}", exitcodes.EXIT_FAILED)
    now = status["supervisor"]
    if kind == "failed":
        raise _fail(f"upgrade: {now['upgrade']['error']}", exitcodes.EXIT_FAILED)
    if now["pid"] != before["pid"]:
        # Another `up` answers: the new image failed after its exec and an outer supervisor
        # started `up` again (which adopted the devices).
        raise _fail(
            f"upgrade: supervisor {before['pid']} ended after its re-exec; supervisor {now['pid']} runs now "
            f"(procdevices {now['version']}, {now['adopted']} device process(es) adopted): see its log",
            exitcodes.EXIT_FAILED,
        )
    running = sum(d["state"] == "RUNNING" for d in status["devices"])
    print(
        f"procdevices: upgraded: supervisor {now['pid']} runs procdevices {now['version']} "
        f"(was {before['version']}); {now['adopted']} device process(es) adopted, {running} running"
    )
    return exitcodes.EXIT_OK


def events(args: argparse.Namespace) -> int:
    import zmq

    from procdevices.control.client import private_context
    from procdevices.supervisor.events import describe, events_endpoint

    directory = run_dir(args)
    if not Path(runlayout.events_socket(directory)).is_socket():
        raise _fail(f"no supervisor is running with run dir {directory}", exitcodes.EXIT_NOT_RUNNING)
    sock = private_context().socket(zmq.SUB)
    sock.linger = 0
    sock.subscribe(b"")
    sock.connect(events_endpoint(directory))
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


def reload(args: argparse.Namespace) -> int:
    """Re-read the topology (the supervisor's own file, or ``-c FILE`` given here)."""
    explicit = str(Path(args.config).resolve()) if args.config else None
    summary = request(args, SupervisorCommand.RELOAD, config=explicit)
    print(render.changes("reloaded", summary))
    return exitcodes.EXIT_OK


def scale(args: argparse.Namespace) -> int:
    with _waiter(args) as waiter:
        summary = request(args, SupervisorCommand.SCALE, name=args.name, replicas=args.replicas)
        print(render.changes(f"scaled {args.name} to {args.replicas}", summary))
        if args.no_wait:
            return exitcodes.EXIT_OK

        def settled() -> list[dict[str, Any]] | None:
            devices: list[dict[str, Any]] = request(args, SupervisorCommand.STATUS, on_behalf="scale", name=args.name)[
                "devices"
            ]
            done = len(devices) == args.replicas and all(d["state"] in ("RUNNING", "FATAL", "EXITED") for d in devices)
            return devices if done else None

        devices = waiter.wait(settled, LIFECYCLE_TIMEOUT)
    if devices is None:
        raise _fail(f"scale {args.name}: no outcome within {LIFECYCLE_TIMEOUT:g}s", exitcodes.EXIT_FAILED)
    print("\n".join(f"{d['name']}: {d['state']}" for d in devices))
    return exitcodes.EXIT_OK if all(d["state"] == "RUNNING" for d in devices) else exitcodes.EXIT_FAILED


def logs(args: argparse.Namespace) -> int:
    """A device's own output: the last lines, then (``-f``) what it appends."""
    from procdevices.supervisor import devicelogs

    directory = devicelogs.log_dir(run_dir(args))
    paths = sorted(directory.glob(f"{args.name}.log")) or sorted(directory.glob(f"{args.name}.*.log"))
    if not paths:
        known = sorted(p.name.removesuffix(".log") for p in directory.glob("*.log")) if directory.is_dir() else []
        raise _fail(
            f"logs: no log of a device named {args.name!r} in {directory}"
            + (f" (devices with logs: {', '.join(known)})" if known else ""),
            exitcodes.EXIT_FAILED,
        )
    many = len(paths) > 1
    for path in paths:
        prefix = f"{path.name.removesuffix('.log')}: " if many else ""
        lines = devicelogs.tail(path, args.lines)
        if not lines and args.lines > 0:
            # Printing nothing would look like a failure, or like the wrong device.
            print(
                f"procdevices: logs: {path.name.removesuffix('.log')} has written nothing ({path} is empty)",
                file=sys.stderr,
            )
        for line in lines:
            print(prefix + line)
    if not args.follow:
        return exitcodes.EXIT_OK
    if many:
        raise _fail("logs -f follows one device process: name a replica (NAME.N)", exitcodes.EXIT_FAILED)
    try:
        for line in devicelogs.follow(paths[0]):
            print(line, flush=True)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return exitcodes.EXIT_OK
