"""The commands that run something and therefore need the whole topology valid: ``up``,
``check``, ``run`` and ``supervisord-conf``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from procdevices import exitcodes, runlayout
from procdevices.cli import locate
from procdevices.supervisor import fdplan
from procdevices.supervisor.config import Topology
from procdevices.supervisor.runstate import RunDir, RunDirBusy


def check(args: argparse.Namespace) -> int:
    topology = locate.topology(args.config, args.run_dir)
    instances = topology.instances()
    RunDir(topology.supervisor.run_dir).validate(c.name for c in instances)
    if not _fits_descriptors(topology):
        return exitcodes.EXIT_CONFIG
    print(
        f"{topology.source}: ok, {len(topology.devices)} device(s), {len(instances)} process(es); "
        f"run dir {topology.supervisor.run_dir}"
    )
    for host in topology.hosts:  # multi-host: docs/multihost.md
        control = f", control {host.control}" if host.control else ""
        print(f"  host {host.name}: {host.address}{control}")
    for config in instances:
        sockets = " ".join(f"{role}={spec.type_name}" for role, spec in config.sockets())
        where = f" on {config.host}" if config.host else ""
        print(f"  {config.name:<20} {config.kind:<16} {sockets}{where}")
    return exitcodes.EXIT_OK


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=_listen_address,
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port); "
        "overrides [supervisor] metrics",
    )


def _listen_address(text: str) -> str:
    from procdevices.supervisor.config.settings import split_host_port

    try:
        split_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def up(args: argparse.Namespace) -> int:
    import os

    from procdevices.cli import cluster
    from procdevices.cluster.control import ControlUnavailable
    from procdevices.devices.orphans import ORPHAN_GRACE_ENV
    from procdevices.supervisor import upgrade
    from procdevices.supervisor.adoption import take_inventory
    from procdevices.supervisor.metricserror import MetricsUnavailable
    from procdevices.supervisor.runstate import issue_run_token, remove_stale_sockets
    from procdevices.supervisor.service import run_supervisor

    try:
        # Multi-host: this host's devices only (a file without [hosts]: all of them).
        topology, host, load = cluster.this_hosts_part(args)
    except cluster.HostChoiceError as e:
        return cluster.host_error(e)
    if not _fits_descriptors(topology):
        return exitcodes.EXIT_CONFIG
    fdplan.raise_soft_limit()
    # The state file only serves clean-up after an unclean end: the supervisor logs a failed
    # write as a warning and goes on.
    run_dir = RunDir(topology.supervisor.run_dir)
    instances = topology.instances()  # built at each call (model.py): once here
    try:
        run_dir.validate(c.name for c in instances)
        handed_lock = upgrade.inherited_lock_fd()  # set only in an upgrade's new image
        with run_dir.locked(handed_lock) as lock:
            # What the previous supervisor of this run dir left running: adopted, or stopped
            # when the file no longer names it (supervisor/adoption.py).
            inventory = take_inventory(run_dir)
            for line in inventory.lines:
                _say(line)
            stale = [
                Path(runlayout.supervisor_socket(run_dir.path)),
                *sorted(runlayout.ctl_dir(run_dir.path).glob("*.sock")),
            ]
            stale += [
                Path(e[len("ipc://") :])
                for c in instances
                for _, s in c.sockets()
                for e in s.bind
                if e.startswith("ipc://")
            ]
            for path in remove_stale_sockets(stale):
                _say(f"removed stale socket file {path}")
            if topology.source == "<default>":
                _announce_default_endpoints(topology)
            # Before anything is spawned: every device inherits it, and state.json records it.
            # Devices to adopt: their run goes on, under its token.
            issue_run_token(inventory.token if inventory.alive else None)
            # Read by every device at its start (devices/orphans.py), like the token.
            os.environ[ORPHAN_GRACE_ENV] = repr(topology.supervisor.orphan_grace)
            return run_supervisor(
                topology,
                run_dir,
                load=load,
                metrics=getattr(args, "metrics", None),
                remote=cluster.control_endpoint(topology, host),
                # A Ctrl-C since the command line started: the loop stops what was started.
                signals_ready=args.held.replay if getattr(args, "held", None) else None,
                inventory=inventory,
                lock_fd=lock.fileno(),
                preflight=_preflight(args),
                reexecuted=handed_lock is not None,
            )
    except (MetricsUnavailable, ControlUnavailable) as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    except RunDirBusy as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return exitcodes.EXIT_NOT_RUNNING


#: What `up` imports: its command line's modules, and those up() below imports (the
#: supervisor's service pulls in the rest). The upgrade's preflight imports them all;
#: tests/unit/test_up_imports.py checks what they bring along.
UP_MODULES = (
    "procdevices.cli.main",
    "procdevices.cli.serve",
    "procdevices.cli.cluster",
    "procdevices.cluster.control",
    "procdevices.devices.orphans",
    "procdevices.supervisor.upgrade",
    "procdevices.supervisor.adoption",
    "procdevices.supervisor.metricserror",
    "procdevices.supervisor.runstate",
    "procdevices.supervisor.service",
)

# The new code imports everything `up` runs on and builds `up`'s parser (its options come from
# cli/serve.py and cli/cluster.py), then checks the topology and the run dir as `check` does.
# "New" may be older than this code (a roll-back): where it has no UP_MODULES, it imports its
# service as versions did then, and its `check` builds every command's parser, `up`'s included.
_PREFLIGHT = (
    "import importlib, sys; from procdevices.cli import serve; "
    "listed = getattr(serve, 'UP_MODULES', None); "
    "[importlib.import_module(name) for name in listed or ['procdevices.supervisor.service']]; "
    "from procdevices.cli.main import build_parser, main; "
    "listed and build_parser(only='up'); "
    "sys.exit(main(['check', *sys.argv[1:]]))"
)


def _preflight(args: argparse.Namespace) -> list[str]:
    """What `upgrade` runs with the newly installed code before re-executing `up` on it:
    its imports, and `check` of the same topology and run dir (supervisor/upgrade.py)."""
    command = [sys.executable, "-c", _PREFLIGHT]
    if args.config:
        command += ["-c", str(Path(args.config).resolve())]
    if args.run_dir:
        command += ["--run-dir", str(Path(args.run_dir).resolve())]
    return command


def _fits_descriptors(topology: Topology) -> bool:
    """False, with one line said, when the open-file limit cannot carry the topology."""
    try:
        fdplan.check(topology)
    except fdplan.DescriptorLimit as e:
        print(f"procdevices: {e}", file=sys.stderr)
        return False
    return True


def _say(line: str) -> None:
    import logging

    from procdevices.logs import to_logger

    warning = line.startswith("warning: ")
    to_logger()(line.removeprefix("warning: "), level=logging.WARNING if warning else logging.INFO)


def _announce_default_endpoints(topology: Topology) -> None:
    _say(f"no topology file given; running the embedded default topology (run dir {topology.supervisor.run_dir}):")
    for config in topology.devices:
        sockets = ", ".join(f"{role} {spec.type_name} {' '.join(spec.bind)}" for role, spec in config.sockets())
        _say(f"  {config.name:<9} {config.kind:<10} {sockets}")


def run(args: argparse.Namespace) -> int:
    from procdevices.supervisor.foreground import run_one

    return run_one(locate.topology(args.config, args.run_dir), args.name)


def supervisord_conf(args: argparse.Namespace) -> int:
    from procdevices.supervisor.supervisord import render_group

    if args.program:
        import importlib.resources

        text = importlib.resources.files("procdevices").joinpath("data/procdevices.conf").read_text()
        return _write(text, args.output)
    path = locate.config_path(args.config)
    try:
        text = render_group(
            locate.topology(args.config, args.run_dir), config_path=path, python=sys.executable, cwd=Path.cwd()
        )
    except ValueError as e:
        print(f"procdevices: supervisord-conf: {e}", file=sys.stderr)
        return exitcodes.EXIT_FAILED
    return _write(text, args.output)


def _write(text: str, output: str | None) -> int:
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
    return exitcodes.EXIT_OK
