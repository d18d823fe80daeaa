"""Live changes: what a reload (or a scale) changes, device instance by device instance.

    new Topology ──plan()──► Plan (pure: which instances keep, update, restart, stop, start)
                                 │
                                 └──apply()──► Supervisor verbs (add, retire, replace, update)

What counts as a change (docs/cli.md, "reload"): an instance whose *process* would run
differently (kind, sockets, socket options, prefixes, stop_linger) is restarted with the new
configuration; one whose supervision settings alone changed (restart policy, backoff,
intensity, probe, timeouts, memory limit) keeps its process and gets the new settings; an
instance that is gone is stopped through its control socket; a new one is started; the rest
is untouched (same pid, no message lost). Replicas are instances: a change of ``replicas``
starts or stops only the difference (from 1 to more, the single ``NAME`` becomes ``NAME.0``:
that one is restarted under its new name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from procdevices.control.protocol import ErrorCode, ProtocolError
from procdevices.supervisor import fdplan
from procdevices.supervisor.child import Child
from procdevices.supervisor.config import ConfigError, DeviceConfig, SupervisorConfig, Topology, rules, settings
from procdevices.supervisor.config.settings import OnReload

# Every DeviceConfig field, by what a change of it means on reload: derived from the settings
# rows' ``on_reload`` (config/settings.py; a test holds that every field has one, so a new
# setting cannot slip in unclassified). What the device process itself runs with: a change
# restarts it.
_ON_RELOAD = settings.device_field_on_reload()
PROCESS_FIELDS = tuple(f for f, r in _ON_RELOAD.items() if r is OnReload.RESTART)
# How the supervisor treats the process: a change applies to the running process.
SUPERVISION_FIELDS = tuple(f for f, r in _ON_RELOAD.items() if r is OnReload.LIVE)
# Which instance it is: instances are matched by name; an instance always has replicas = 1.
# ``host`` (multi-host): a supervisor runs only its own host's devices and reloads cut to the
# same host, so a device moved to another host is gone here, stopped, never changed.
INSTANCE_FIELDS = tuple(f for f, r in _ON_RELOAD.items() if r is OnReload.INSTANCES)


def runs_the_same(a: DeviceConfig, b: DeviceConfig) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in PROCESS_FIELDS)


class Instance(NamedTuple):
    device: str  # the [devices.NAME] it belongs to
    config: DeviceConfig  # the instance's own config (replica expanded)


class Plan:
    __slots__ = ("unchanged", "updated", "restarted", "stopped", "started", "handovers")

    def __init__(self) -> None:
        self.unchanged: list[str] = []
        self.updated: list[Instance] = []  # same process, new supervision settings
        self.restarted: list[Instance] = []  # a new process with the new config
        self.stopped: list[str] = []
        self.started: list[Instance] = []
        # A new instance that binds what a stopped one holds starts once that one has exited.
        self.handovers: list[tuple[str, Instance]] = []

    def summary(self) -> dict[str, list[str]]:
        return {
            "unchanged": sorted(self.unchanged),
            "updated": sorted(i.config.name for i in self.updated),
            "restarted": sorted(i.config.name for i in self.restarted),
            "stopped": sorted([*self.stopped, *(old for old, _ in self.handovers)]),
            "started": sorted([*(i.config.name for i in self.started), *(i.config.name for _, i in self.handovers)]),
        }


def instances(topology: Topology) -> dict[str, Instance]:
    return {i.name: Instance(d.name, i) for d in topology.devices for i in d.instances()}


def running_instances(children: list[Child], applied: Topology) -> dict[str, Instance]:
    """What each live instance runs, *as written*: its instance of ``applied`` (the topology
    last applied). A child's own config is not comparable with a file: it carries what the
    supervisor resolved when it made the listening sockets (``tcp://HOST:*`` became a port), so
    comparing it with the file's ``*`` would restart an unchanged device and lose what it
    queues. An instance ``applied`` no longer names (the old half of a pending hand-over)
    keeps its own config."""
    written = instances(applied)
    result: dict[str, Instance] = {}
    for child in children:
        if child.retiring:
            continue
        as_written = written.get(child.name)
        if as_written is not None and as_written.device == child.device_name:
            result[child.name] = as_written
        else:
            result[child.name] = Instance(child.device_name, child.config)
    return result


def plan(running: dict[str, Instance], wanted: dict[str, Instance]) -> Plan:
    """Pure: what turns the instances ``running`` into the instances ``wanted``."""
    result = Plan()
    for name, old in running.items():
        new = wanted.get(name)
        if new is None or new.device != old.device:
            result.stopped.append(name)
            if new is not None:
                result.started.append(new)
        elif new.config == old.config:
            result.unchanged.append(name)
        elif runs_the_same(old.config, new.config):
            result.updated.append(new)
        else:
            result.restarted.append(new)
    result.started += [new for name, new in wanted.items() if name not in running]
    _pair_handovers(result, running)
    return result


def _binds(config: DeviceConfig) -> set[str]:
    return {e for _, spec in config.sockets() for e in spec.bind if not e.endswith(":*")}


def _pair_handovers(result: Plan, running: dict[str, Instance]) -> None:
    for new in list(result.started):
        wants = _binds(new.config)
        holder = next((old for old in result.stopped if wants & _binds(running[old].config)), None)
        if holder is not None:
            result.stopped.remove(holder)
            result.started.remove(new)
            result.handovers.append((holder, new))


def scaled(topology: Topology, device: str, replicas: int) -> Topology:
    """``topology`` with ``device`` at ``replicas`` instances, checked with the loader's own
    rules (config/rules.py) before anything changes: ProtocolError for an unknown device,
    INVALID_CONFIG with the message ``check`` gives for a file asking for the same (a count
    out of range, replicas that would share an address, a control socket path or an ipc
    path too long, a ``{replica}`` port past 65535, more processes than the open-file limit
    can carry)."""
    names = [d.name for d in topology.devices]
    if device not in names:
        raise ProtocolError(ErrorCode.NO_SUCH_DEVICE, f"no device named {device!r} (devices: {', '.join(names)})")
    devices = tuple(d._replace(replicas=replicas) if d.name == device else d for d in topology.devices)
    result = topology._replace(devices=devices)
    try:
        result = rules.validate(result)
    except ConfigError as e:
        raise ProtocolError(ErrorCode.INVALID_CONFIG, f"invalid configuration: {e}") from None
    fits_descriptors(result)
    return result


def fits_descriptors(topology: Topology) -> None:
    """INVALID_CONFIG, with the line `check` gives, when the supervisor's open-file limit
    cannot carry ``topology`` (fdplan.py)."""
    try:
        fdplan.check(topology)
    except fdplan.DescriptorLimit as e:
        raise ProtocolError(ErrorCode.INVALID_CONFIG, str(e)) from None


class Changes(Protocol):
    """The supervisor verbs a plan is applied through."""

    def add(self, child: Child) -> None: ...

    def retire(self, child: Child) -> None: ...

    def replace(self, child: Child, successor: Child) -> None: ...

    def child_named(self, name: str) -> Child: ...


# Builds the Child of one instance: (its config, the device it belongs to).
ChildFactory = Callable[[DeviceConfig, str], Child]


def apply(result: Plan, supervisor: Changes, make_child: ChildFactory) -> dict[str, Any]:
    """Apply ``result``: every new instance is made first (its listening sockets, its pickled
    device), and only when all are made does any running instance change; a failure to make
    one is a ProtocolError and changes nothing."""
    try:
        restarted = [(i.config.name, make_child(i.config, i.device)) for i in result.restarted]
        handovers = [(old, make_child(i.config, i.device)) for old, i in result.handovers]
        started = [make_child(i.config, i.device) for i in result.started]
    except Exception as e:  # an OSError, a device that cannot be pickled: nothing is applied
        raise ProtocolError(ErrorCode.FAILED, f"nothing changed: cannot make a new device instance: {e}") from None
    for instance in result.updated:
        child = supervisor.child_named(instance.config.name)
        # The new supervision settings; the process's own fields stay as the child resolved them.
        kept = {f: getattr(child.config, f) for f in PROCESS_FIELDS}
        child.reconfigure(instance.config._replace(**kept))
    for name, successor in restarted:
        supervisor.replace(supervisor.child_named(name), successor)
    for name in result.stopped:
        supervisor.retire(supervisor.child_named(name))
    for old, successor in handovers:
        supervisor.replace(supervisor.child_named(old), successor)
    for child in started:
        supervisor.add(child)
    return result.summary()


class SupervisorChanges:
    """What a reload changes in ``[supervisor]``, by each key's ``on_reload``."""

    __slots__ = ("refused", "live", "next_up")

    def __init__(self) -> None:
        self.refused: list[str] = []  # a reload that changes these changes nothing
        self.live: list[str] = []  # the supervisor applies these at once
        self.next_up: list[str] = []  # read once at `up`: reported, not applied


def supervisor_changes(old: SupervisorConfig, new: SupervisorConfig) -> SupervisorChanges:
    changes = SupervisorChanges()
    by_kind = {OnReload.REFUSED: changes.refused, OnReload.LIVE: changes.live, OnReload.NEXT_UP: changes.next_up}
    for setting in settings.SUPERVISOR_SETTINGS:
        if getattr(old, setting.path) != getattr(new, setting.path):
            assert setting.on_reload is not None, f"[supervisor] {setting.path} has no on_reload"
            by_kind[setting.on_reload].append(setting.path)
    return changes
