"""Run a real, supervised topology for the duration of a test.

``with topology(toml_text_or_dict) as topo:`` starts ``python -m procdevices up`` as a
subprocess in a session of its own, in a private directory, and returns once every device is
RUNNING; leaving the block stops everything through ``down``, kills whatever is left of the
session and removes the directory. ``procdevices.pytest_plugin`` is a thin layer over this
module (the ``procdevices_topology`` fixture). See docs/testing.md.

This module drives the public command line (``up``, ``stats --json``,
``start``/``stop``/``restart``/``pause``/``resume NAME``, ``down``, always with ``-c FILE``),
so it tests what users run. Its waits are the library's own
(:class:`procdevices.control.waiter.SupervisorWaiter`): woken by the supervisor's event
stream, each re-check reads ``status`` (what ``status --json`` prints) over the supervisor's
control socket, with no interpreter started per check. It does not import pytest, and ``import procdevices`` does not
import it.

How the clean-up is guaranteed::

    test process ──Popen(start_new_session)──► up (session leader) ──► devices, pool workers
         │                                        every descendant carries its session id
         └──Popen, stdin pipe──► watchdog (python -m procdevices.testing)
                                  EOF without "done" (the test process died): SIGTERM up,
                                  then SIGKILL the session, remove the directory

A normal close does the same work itself and then tells the watchdog "done".
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import psutil

from procdevices.control.waiter import SupervisorWaiter, WaitFailed

__all__ = [
    "DEFAULT_TIMEOUT",
    "FAST_DEFAULTS",
    "STATES",
    "LiveTopology",
    "TopologyError",
    "prepare_topology",
    "topology",
]

_T = TypeVar("_T")

TopologySource = str | Mapping[str, Any]

#: How long ``start()`` and ``wait_state()`` wait by default. It only matters when something
#: is wrong; a loaded CI machine running tests in parallel needs the margin.
DEFAULT_TIMEOUT = 30.0

#: ``[supervisor.defaults]`` filled in where the topology does not set them: a hung device is
#: found within ~2.5 s and a stop escalates quickly, yet a slow answer on a loaded machine is
#: not mistaken for a hang. ``probe`` is merged field by field.
FAST_DEFAULTS: Mapping[str, Any] = {
    "probe": {"interval": 0.2, "timeout": 1.0, "failures": 2},
    "stop_timeout": 2.0,
    "kill_timeout": 1.0,
}

#: ``[supervisor] pool_size`` unless the topology sets it: one warm worker keeps restarts fast
#: without a second idle interpreter per test.
DEFAULT_POOL_SIZE = 1

#: The device states of ``status --json`` (docs/states.md).
STATES = ("STOPPED", "QUEUED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")

_ROLES = ("in", "out", "mon", "ctrl")
_CLI = (sys.executable, "-m", "procdevices")
# Environment that would redirect the commands to another topology, run dir or notify
# socket (a test run under a systemd unit must not report READY=1 to it).
_SCRUBBED_ENV = ("PROCDEVICES_CONFIG", "PROCDEVICES_RUN_DIR", "NOTIFY_SOCKET")
_CLI_TIMEOUT = 30.0
# start/stop/restart wait up to 60 s for the outcome themselves.
_LIFECYCLE_TIMEOUT = 70.0
# `down` returns once the supervisor exited; each device may take stop_timeout + kill_timeout.
_DOWN_TIMEOUT = 30.0
# Between two `status --json` (each costs an interpreter start); a file check is cheap.
_POLL_INTERVAL = 0.1
_FILE_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 60


class TopologyError(Exception):
    """The topology did not come up, a command on it failed, or a wait timed out.

    ``reason`` is the one-line cause; ``log`` the supervisor's output so far. ``str()`` gives
    both, so an uncaught error in a test shows everything needed to understand it.
    """

    def __init__(self, reason: str, log: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log = log

    def __str__(self) -> str:
        if not self.log:
            return self.reason
        lines = self.log.rstrip("\n").splitlines()
        shown = "\n".join(lines[-_LOG_TAIL_LINES:])
        cut = f" (last {_LOG_TAIL_LINES} of {len(lines)} lines)" if len(lines) > _LOG_TAIL_LINES else ""
        return f"{self.reason}\n--- procdevices supervisor log{cut}\n{shown}"


# -- the topology file --------------------------------------------------------------------------


def prepare_topology(source: TopologySource, directory: Path) -> str:
    """The TOML text actually run for ``source`` in the private ``directory``.

    - ``[supervisor] run_dir`` is always ``directory/run`` (a value in ``source`` is
      overridden: two tests must never share a run dir);
    - ``[supervisor] pool_size`` defaults to 1 and ``[supervisor.defaults]`` gets
      :data:`FAST_DEFAULTS` where ``source`` does not set them;
    - ``{tmp}`` in any bind or connect endpoint becomes ``directory`` (``ipc://{tmp}/x.sock``).

    Text that is not valid TOML is returned unchanged, so that ``up`` rejects it with its own
    one-line reason.
    """
    if isinstance(source, str):
        try:
            data: dict[str, Any] = tomllib.loads(source)
        except tomllib.TOMLDecodeError:
            return source
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        raise TypeError(f"a topology is TOML text or a mapping, not {type(source).__name__}")
    # [supervisor] first, as a hand-written file would have it.
    supervisor = data.pop("supervisor", {})
    data = {"supervisor": supervisor, **data}
    # Anything malformed is left alone for the config loader to name precisely.
    if isinstance(supervisor, dict):
        supervisor["run_dir"] = str(directory / "run")
        supervisor.setdefault("pool_size", DEFAULT_POOL_SIZE)
        defaults = supervisor.setdefault("defaults", {})
        if isinstance(defaults, dict):
            for key, value in FAST_DEFAULTS.items():
                mine = defaults.get(key)
                if isinstance(value, Mapping) and isinstance(mine, dict):
                    defaults[key] = {**value, **mine}
                elif key not in defaults:
                    defaults[key] = copy.deepcopy(value)
    devices = data.get("devices")
    if isinstance(devices, dict):
        for device in devices.values():
            if not isinstance(device, dict):
                continue
            for role in _ROLES:
                spec = device.get(role)
                if not isinstance(spec, dict):
                    continue
                for direction in ("bind", "connect"):
                    endpoints = spec.get(direction)
                    if isinstance(endpoints, list):
                        spec[direction] = [
                            e.replace("{tmp}", str(directory)) if isinstance(e, str) else e for e in endpoints
                        ]
    try:
        return _to_toml(data)
    except TypeError:
        if isinstance(source, str):
            return source  # a TOML date or time: no topology key takes one; `up` says which
        raise


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _to_toml(data: Mapping[str, Any]) -> str:
    """TOML for the subset a topology uses. ``[supervisor]``, ``[supervisor.defaults]`` and
    ``[devices.NAME]`` become table headers, anything deeper an inline table, so the file
    reads like a hand-written one."""
    lines: list[str] = []

    def table(path: list[str], values: Mapping[str, Any]) -> None:
        nested = [(k, v) for k, v in values.items() if isinstance(v, Mapping) and len(path) < 2]
        plain = [(k, v) for k, v in values.items() if not (isinstance(v, Mapping) and len(path) < 2)]
        if path and (plain or not nested):
            lines.append(f"[{'.'.join(_toml_key(p) for p in path)}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain)
        if plain:
            lines.append("")
        for key, value in nested:
            table([*path, key], value)

    table([], data)
    return "\n".join(lines) + "\n"


def _toml_key(key: object) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else _toml_string(text)


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, except that JSON leaves DEL unescaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to a topology file")


# -- processes ----------------------------------------------------------------------------------


def _alive(proc: psutil.Process) -> bool:
    """Running (a zombie runs nothing and holds no socket: it counts as gone)."""
    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _session(leader_pid: int, leader_created: float) -> list[psutil.Process]:
    """Live processes of the session ``leader_pid`` started (the leader included while alive).
    The creation time rules out an older session whose leader had the same pid."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == leader_pid and proc.create_time() >= leader_created - 0.05 and _alive(proc):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def kill_all(procs: Iterable[psutil.Process], timeout: float = 10.0) -> None:
    """SIGCONT then SIGKILL each of ``procs`` (a stopped one too), and wait up to ``timeout``
    until none is alive (a zombie counts as gone); never raises for one already gone."""
    procs = list(procs)
    for proc in procs:
        for sig in (signal.SIGCONT, signal.SIGKILL):  # SIGCONT: a stopped process too
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}


def _short_tmp(base_dir: str | os.PathLike[str] | None) -> Path:
    # Unix socket paths are limited to 107 bytes: /tmp/pdt-XXXXXXXX/run/ctl/NAME.sock fits,
    # a pytest tmp_path or a macOS $TMPDIR often does not.
    if base_dir is None:
        base_dir = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="pdt-", dir=base_dir))


# -- the running topology -----------------------------------------------------------------------


class LiveTopology:
    """One supervised topology run for a test. Made by :func:`topology` (a context manager)
    or the ``procdevices_topology`` fixture.

    Attributes: ``directory`` (private; ``{tmp}`` in endpoints), ``config_path`` (the
    file run), ``run_dir``, ``supervisor_pid``, ``returncode`` (of ``up``, once it exited).
    """

    def __init__(
        self,
        source: TopologySource,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        states: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        label: str = "topology",
    ) -> None:
        self.label = label
        self._ready_states = dict(states or {})
        for state in self._ready_states.values():
            _check_state(state)
        self.timeout = timeout
        self.directory = _short_tmp(base_dir)
        self.config_path = self.directory / "topology.toml"
        self.run_dir = self.directory / "run"
        self.log_path = self.directory / "supervisor.log"
        self._source = source
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: psutil.Process | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._devices_seen: dict[int, psutil.Process] = {}
        self._last_status: dict[str, Any] | None = None
        self._stale = True
        self._closed = False
        self._final_log: str | None = None
        self._log_reader: BinaryIO | None = None
        self._waiter: SupervisorWaiter | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def up(self) -> LiveTopology:
        """Write the topology, start ``up`` and wait until every device is RUNNING (or in its
        state from ``states``, e.g. ``{"blocked": "FATAL"}`` for a test of a failure). Raises
        :class:`TopologyError` (after cleaning up) when it does not come up."""
        if self._proc is not None:
            raise RuntimeError("this topology was started already")
        try:
            self.config_path.write_text(prepare_topology(self._source, self.directory))
            # Subscribed before `up` starts: the first transitions are not missed.
            self._waiter = SupervisorWaiter(self.run_dir)
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    [*_CLI, "up", "-c", str(self.config_path)],
                    cwd=self.directory,
                    env=_clean_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._log_reader = open(self.log_path, "rb")  # closed by close()
            self._leader = psutil.Process(self._proc.pid)
            self._watchdog = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "procdevices.testing",
                    "--watchdog",
                    str(self._proc.pid),
                    repr(self._leader.create_time()),
                    str(self.directory),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=_clean_env(),
            )
            self.wait_states(self._ready_states, timeout=self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> LiveTopology:
        return self.up()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def supervisor_pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the topology was not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code of ``up`` once it has exited (0 after a clean ``down``), else None."""
        return None if self._proc is None else self._proc.poll()

    def running(self) -> bool:
        """Whether the supervisor still runs."""
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop everything and remove the private directory; safe to call more than once.

        ``down`` through the supervisor's control socket first (each device stops through
        its own control socket); then whatever is left of the supervisor's session (or a
        device process seen in a status) is killed. Never raises because of the topology."""
        if self._closed:
            return
        self._closed = True
        finished = False
        try:
            if self._proc is not None and self._leader is not None:
                if self._proc.poll() is None:
                    try:
                        down = subprocess.run(
                            [*_CLI, "down", "-c", str(self.config_path)],
                            cwd=self.directory,
                            env=_clean_env(),
                            capture_output=True,
                            timeout=_DOWN_TIMEOUT,
                        ).returncode
                    except subprocess.TimeoutExpired:
                        down = None
                    if down != 0 and self._proc.poll() is None:
                        # Not answering yet (interrupted while starting): SIGTERM is the same
                        # orderly stop as `down`.
                        self._proc.terminate()
                try:
                    self._proc.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    kill_all([self._leader])
                    self._proc.wait()
                left = self.leftovers()
                if left:
                    # Devices of a dead supervisor stop by themselves: a moment's grace first.
                    psutil.wait_procs(left, timeout=2.0)
                    kill_all(self.leftovers())
            finished = True
        finally:
            if self._watchdog is not None:
                try:
                    assert self._watchdog.stdin is not None
                    # Interrupted half-way (a timeout, Ctrl-C): EOF alone, the watchdog finishes.
                    if finished:
                        self._watchdog.stdin.write(b"done")
                    self._watchdog.stdin.close()
                except OSError:
                    pass
                try:
                    self._watchdog.wait(timeout=10.0 if finished else _DOWN_TIMEOUT + 15.0)
                except subprocess.TimeoutExpired:
                    if finished:  # otherwise it is the only one left to clean up: let it
                        self._watchdog.kill()
                        self._watchdog.wait()
            if self._proc is not None:
                self._proc.poll()  # reap `up` if the watchdog stopped it
            self._final_log = self._read_log()
            if self._log_reader is not None:
                self._log_reader.close()
            if self._waiter is not None:
                self._waiter.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this run: the supervisor's session (the supervisor, devices, pool
        workers, multiprocessing's resource tracker, even re-parented ones) and every device
        process seen in a status. Empty after :meth:`close`."""
        if self._leader is None:
            return []
        found = {p.pid: p for p in _session(self._leader.pid, self._leader.create_time())}
        for pid, proc in self._devices_seen.items():
            if _alive(proc):
                found[pid] = proc
        return sorted(found.values(), key=lambda p: p.pid)

    # -- the supervisor's output ----------------------------------------------------------------
    @property
    def log(self) -> str:
        """Everything ``up`` wrote (stdout and stderr) so far; kept after :meth:`close`."""
        return self._final_log if self._final_log is not None else self._read_log()

    def _read_log(self) -> str:
        # Through a descriptor opened at the start: it still reads the file after the
        # watchdog removed the directory.
        if self._log_reader is None or self._log_reader.closed:
            return ""
        self._log_reader.seek(0)
        return self._log_reader.read().decode(errors="replace")

    def _error(self, reason: str) -> TopologyError:
        return TopologyError(reason, self.log)

    # -- commands ---------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = _CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``python -m procdevices ARGS -c FILE`` against this topology; the result,
        whatever the exit code."""
        try:
            return subprocess.run(
                [*_CLI, *args, "-c", str(self.config_path)],
                cwd=self.directory,
                env=_clean_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise self._error(f"`procdevices {' '.join(args)}` did not finish within {timeout:g}s") from None

    def _command(self, *args: str, timeout: float = _CLI_TIMEOUT) -> str:
        result = self.cli(*args, timeout=timeout)
        self._stale = True
        if result.returncode != 0:
            message = result.stderr.strip() or result.stdout.strip()
            raise self._error(f"`procdevices {' '.join(args)}` exited {result.returncode}: {message}")
        return result.stdout

    def pause(self, name: str) -> None:
        """Stop forwarding (the process keeps running; messages wait in its queues)."""
        self._command("pause", name)

    def resume(self, name: str) -> None:
        self._command("resume", name)

    def stop(self, name: str) -> None:
        """Stop through the control socket; returns once it is STOPPED (not restarted)."""
        self._command("stop", name, timeout=_LIFECYCLE_TIMEOUT)

    def start(self, name: str) -> None:
        """Start a STOPPED, EXITED or FATAL device; returns once it is RUNNING."""
        self._command("start", name, timeout=_LIFECYCLE_TIMEOUT)

    def restart(self, name: str) -> None:
        """Stop, then start: returns once every instance runs as a new process."""
        self._command("restart", name, timeout=_LIFECYCLE_TIMEOUT)

    def down(self) -> None:
        """Alias of :meth:`close`."""
        self.close()

    # -- status -----------------------------------------------------------------------------------
    def try_status(self) -> dict[str, Any] | None:
        """``status --json``, or None while no supervisor answers yet."""
        if self._waiter is None:
            return None
        try:
            data = self._waiter.status()
        except WaitFailed as e:
            raise self._error(str(e)) from None
        if data is None:
            return None
        for device in data["devices"]:
            pid = device.get("pid")
            if pid and pid not in self._devices_seen:
                try:
                    self._devices_seen[pid] = psutil.Process(pid)
                except psutil.Error:
                    pass
        self._last_status = data
        self._stale = False
        return data

    def status(self) -> dict[str, Any]:
        """The whole ``status --json`` object: ``{"supervisor": {...}, "devices": [...]}``."""
        data = self.try_status()
        if data is None:
            raise self._error("no supervisor answers `status`" + self._exit_note())
        return data

    def devices(self) -> dict[str, dict[str, Any]]:
        """Instance name -> its ``status --json`` entry (state, pid, restarts, last_exit, ...)."""
        return {d["name"]: d for d in self.status()["devices"]}

    def device(self, name: str) -> dict[str, Any]:
        """The ``status --json`` entry of the one process ``name``."""
        (entry,) = self._select(self.status(), name, single=True)
        return entry

    def pid(self, name: str) -> int:
        """The pid of the process ``name``; TopologyError while it has none (not running)."""
        entry = self.device(name)
        if not entry["pid"]:
            raise self._error(f"{entry['name']} has no process (state {entry['state']}: {entry['last_exit']})")
        pid: int = entry["pid"]
        return pid

    def stats(self, name: str) -> dict[str, int]:
        """Traffic counters of ``name`` since its process started (``stats NAME --json``):
        ``front_msgs_in``, ``front_bytes_in``, ..., ``back_bytes_out``. For a device with
        replicas, the sums over its running instances."""
        counters: dict[str, dict[str, int]] = json.loads(self._command("stats", name, "--json"))
        total: dict[str, int] = {}
        for per_instance in counters.values():
            for key, value in per_instance.items():
                if isinstance(value, int):  # the process's own counters, not "totals"/"rates"
                    total[key] = total.get(key, 0) + value
        return total

    @property
    def endpoints(self) -> dict[str, dict[str, list[str]]]:
        """name -> role (``in``, ``out``, ``mon``, ``ctrl``) -> the endpoints its running process
        bound, port ``*`` resolved: ``topo.endpoints["broker"]["in"]`` ==
        ``["tcp://127.0.0.1:41234"]``. Keyed by instance name; a device with replicas is also
        listed under its own name, with the endpoints of all its instances in order. A fresh
        status is read after any command (with `own_sockets = false` a restart binds new ports)."""
        data = self._snapshot()
        result: dict[str, dict[str, list[str]]] = {}
        for entry in data["devices"]:
            # A process that is gone leaves its last endpoints in the status: not an address.
            bound = entry["endpoints"] if entry["state"] == "RUNNING" else {}
            roles = {role: list(eps) for role, eps in bound.items()}
            result[entry["name"]] = roles
            if entry["device"] != entry["name"]:
                group = result.setdefault(entry["device"], {})
                for role, eps in roles.items():
                    group.setdefault(role, []).extend(eps)
        return result

    def _snapshot(self) -> dict[str, Any]:
        """The last status read, unless a command may have changed things since."""
        if self._stale or self._last_status is None:
            return self.status()
        return self._last_status

    def endpoint(self, name: str, role: str = "in") -> str:
        """The first endpoint ``name``'s ``role`` socket bound: what a client connects to.
        ``topo.endpoint("broker")`` is the broker's ``in`` address, ``topo.endpoint("broker",
        "out")`` its ``out``."""
        roles = self.endpoints.get(name)
        if roles is None:
            raise self._error(f"no device named {name!r} (devices: {', '.join(self.endpoints)})")
        bound = roles.get(role)
        if not bound:
            states = ", ".join(f"{e['name']} {e['state']}" for e in self._select(self._snapshot(), name))
            raise self._error(f"{name} has no bound {role!r} endpoint (bound: {roles}; {states})")
        return bound[0]

    # -- waiting ----------------------------------------------------------------------------------
    def wait_state(self, name: str | None, state: str, *, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Wait until every process of ``name`` (all devices for None) is in
        ``state``; returns their entries by instance name. Fails fast when the supervisor exits
        or a device goes FATAL while another state is awaited; TopologyError naming what was
        awaited and what was last seen at the deadline (``timeout``, default the topology's)."""
        _check_state(state)
        what = f"{'every device' if name is None else name} to be {state}"
        return self._settle(lambda data: {e["name"]: state for e in self._select(data, name)}, what, timeout)

    def wait_states(
        self, states: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """Wait until every process is in its state from ``states`` (keys: device or instance
        names), RUNNING for the others; returns every entry by instance name. Fails fast as
        :meth:`wait_state` does (a device FATAL that should not be)."""
        wanted = dict(states or {})
        for state in wanted.values():
            _check_state(state)

        def targets(data: dict[str, Any]) -> dict[str, str]:
            for name in wanted:
                self._select(data, name)  # an unknown name is an error, not a wait
            return {e["name"]: wanted.get(e["name"], wanted.get(e["device"], "RUNNING")) for e in data["devices"]}

        what = "every device to be RUNNING" + (
            f" except {', '.join(f'{n} {s}' for n, s in wanted.items())}" if wanted else ""
        )
        return self._settle(targets, what, timeout)

    def _settle(
        self, targets: Callable[[dict[str, Any]], dict[str, str]], what: str, timeout: float | None
    ) -> dict[str, dict[str, Any]]:
        def settled(data: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
            wanted = targets(data)
            entries = [e for e in data["devices"] if e["name"] in wanted]
            fatal = [e for e in entries if e["state"] == "FATAL" != wanted[e["name"]]]
            if fatal:
                raise self._error(
                    "; ".join(f"device {e['name']} is FATAL: {e['last_exit']}" for e in fatal)
                    + f" (while waiting for {what})"
                )
            if all(e["state"] == wanted[e["name"]] for e in entries):
                return {e["name"]: e for e in entries}
            return None

        return self._wait_for(settled, what, self.timeout if timeout is None else timeout)

    def wait(self, predicate: Callable[[dict[str, Any]], _T | None], what: str, *, timeout: float | None = None) -> _T:
        """Wait until ``predicate(status)`` (``status`` as ``status --json`` prints it) returns something truthy; return
        it. TopologyError "timed out after Ns waiting for WHAT" at the deadline."""
        return self._wait_for(predicate, what, self.timeout if timeout is None else timeout)

    def _wait_for(self, predicate: Callable[[dict[str, Any]], _T | None], what: str, timeout: float) -> _T:
        last: dict[str, Any] | None = None

        def check() -> _T | None:
            nonlocal last
            if not self.running():
                raise self._exited(what)
            last = self.try_status()
            return predicate(last) if last is not None else None

        assert self._waiter is not None, "up() first"
        value = self._waiter.wait(check, timeout)
        if value:
            return value
        seen = (
            "no answer from the supervisor yet"
            if last is None
            else ", ".join(
                f"{d['name']} {d['state']}"
                + (f" ({d['last_exit']})" if d["last_exit"] and d["state"] != "RUNNING" else "")
                for d in last["devices"]
            )
        )
        raise self._error(f"timed out after {timeout:g}s waiting for {what}; last seen: {seen}")

    def _exited(self, what: str) -> TopologyError:
        assert self._proc is not None
        code = self._proc.wait()
        log = self.log
        if code == 78:
            reason = next(
                (line for line in reversed(log.splitlines()) if "invalid configuration" in line),
                "invalid configuration",
            )
            return self._error(reason)
        return self._error(f"the supervisor exited with {code} while waiting for {what}")

    def _exit_note(self) -> str:
        return "" if self.running() else f" (the supervisor exited with {self.returncode})"

    def _select(self, data: dict[str, Any], name: str | None, *, single: bool = False) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = data["devices"]
        if name is None:
            return entries
        exact = [e for e in entries if e["name"] == name]
        chosen = exact or [e for e in entries if e["device"] == name]
        if not chosen:
            raise self._error(f"no device named {name!r} (devices: {', '.join(e['name'] for e in entries)})")
        if single and len(chosen) > 1:
            raise self._error(f"{name} runs {len(chosen)} processes ({', '.join(e['name'] for e in chosen)}): name one")
        return chosen

    # -- faults -----------------------------------------------------------------------------------
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL) to the process(es) of ``name``; returns once each is gone and
        the supervisor no longer reports it as its RUNNING process. Then, e.g.,
        ``topo.wait_state(name, "RUNNING")`` waits for the restart. ``sig`` must end the
        process (for SIGSTOP, signal ``topo.pid(name)`` yourself)."""
        victims = {}
        for entry in self._select(self.status(), name):
            if not entry["pid"]:
                raise self._error(f"{entry['name']} has no process to kill (state {entry['state']})")
            proc = self._devices_seen.get(entry["pid"])
            if proc is not None:
                victims[entry["name"]] = proc
        for proc in victims.values():
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + self.timeout
        while any(_alive(p) for p in victims.values()):
            if time.monotonic() >= deadline:
                raise self._error(f"{name} survived signal {sig} for {self.timeout:g}s")
            time.sleep(_POLL_INTERVAL)
        old = {n: p.pid for n, p in victims.items()}

        def noticed(data: dict[str, Any]) -> bool:
            now = {e["name"]: e for e in data["devices"]}
            return all(now[n]["pid"] != pid or now[n]["state"] != "RUNNING" for n, pid in old.items())

        self._wait_for(noticed, f"the supervisor to notice that {name} died", self.timeout)

    def __repr__(self) -> str:
        return f"<LiveTopology {self.label} {self.directory}>"


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}: expected one of {', '.join(STATES)}")


def topology(
    source: TopologySource,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    states: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> LiveTopology:
    """A supervised topology for a test, as a context manager::

        with procdevices.testing.topology(TOML_TEXT_OR_DICT) as topo:
            client.connect(topo.endpoint("broker"))

    Entering starts ``python -m procdevices up`` and returns once every device is RUNNING,
    or in its state from ``states`` (TopologyError otherwise, after cleaning up); leaving stops
    and removes everything.
    ``timeout`` bounds the start and is the default of every wait; ``base_dir`` is where the
    private directory is made (default ``/tmp``: unix socket paths must stay short).
    """
    return LiveTopology(source, timeout=timeout, states=states, base_dir=base_dir)


# -- the watchdog -------------------------------------------------------------------------------


def _watchdog(leader_pid: int, leader_created: float, directory: str) -> None:
    """Wait for EOF on stdin. "done" first: the test process cleaned up. Anything else: it
    died without cleaning up (SIGKILL, os._exit, a crashed xdist worker), so do it here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the test run
    if sys.stdin.buffer.read() == b"done":
        return
    try:
        leader = psutil.Process(leader_pid)
        if abs(leader.create_time() - leader_created) < 0.01 and _alive(leader):
            # SIGTERM first: the supervisor stops its devices through their control sockets.
            leader.terminate()
            # Not leader.wait(): a zombie (its parent, the test process, may still be alive
            # and not reaping) counts as gone.
            deadline = time.monotonic() + _DOWN_TIMEOUT
            while _alive(leader) and time.monotonic() < deadline:
                time.sleep(_FILE_POLL_INTERVAL)
    except psutil.Error:
        pass
    left = _session(leader_pid, leader_created)
    if left:
        psutil.wait_procs(left, timeout=2.0)
        kill_all(_session(leader_pid, leader_created))
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--watchdog":
        _watchdog(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    else:
        sys.exit("usage: python -m procdevices.testing --watchdog PID CREATE_TIME DIRECTORY (internal)")
