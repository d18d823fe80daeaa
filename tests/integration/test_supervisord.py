"""procdevices under a real supervisord (the `supervisor` package), in both modes.

- one program running `python -m procdevices up`: the repository's supervisor.d/procdevices.conf,
  included by absolute path (and supervisor.d/supervisord.conf.example, the quick start);
- one program per device process: the group written by `python -m procdevices supervisord-conf`.

Every supervisord runs in the foreground (-n) in a short private directory, on a unix socket,
driven over XML-RPC (supervisor.xmlrpc.SupervisorTransport) and supervisorctl. The topology uses
ipc endpoints in the same directory, so nothing depends on a fixed port. Every pid seen
(supervisord, procdevices, devices) is checked to be gone at the end, by pid and create time.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from supervisor.datatypes import RestartUnconditionally, RestartWhenExitUnexpected
from supervisor.options import ServerOptions
from supervisor.xmlrpc import SupervisorTransport
from support.cli import FileChanges, SupervisorEvents, processes_exit, wait_for

from procdevices.control.client import call_supervisor
from procdevices.control.protocol import SupervisorCommand
from procdevices.supervisor import policy
from procdevices.supervisor.config import load_topology
from procdevices.supervisor.supervisord import render_group, supervisord_quote

REPO = Path(__file__).resolve().parents[2]
PROCDEVICES_CONF = REPO / "supervisor.d" / "procdevices.conf"
EXAMPLE_CONF = REPO / "supervisor.d" / "supervisord.conf.example"
INSTANCES = ("relay", "stage.0", "stage.1")
# supervisord's own SIGKILL after stopwaitsecs: "killing 'x' (pid) with SIGKILL" (warn) and, at
# debug level, "killing x (pid N) process group with signal SIGKILL".
SUPERVISORD_SIGKILL = re.compile(r"killing .* with (signal )?SIGKILL")

# Relative ipc endpoints resolve against the topology file's directory.
# orphan_grace = 0: the SIGKILL tests here are about devices following a killed `up` at once.
TOPOLOGY = """\
[supervisor]
run_dir = "run"
pool_size = 0
orphan_grace = 0

[devices.relay]
kind = "streamer"
in = { bind = ["ipc://relay-in.sock"] }
out = { bind = ["ipc://relay-out.sock"] }

[devices.stage]
kind = "streamer"
replicas = 2
in = { bind = ["ipc://stage-{replica}-in.sock"] }
out = { bind = ["ipc://stage-{replica}-out.sock"] }
"""


# -- helpers ----------------------------------------------------------------------------------


def endpoints(directory: Path, instance: str) -> tuple[str, str]:
    stem = instance.replace(".", "-")
    return f"ipc://{directory}/{stem}-in.sock", f"ipc://{directory}/{stem}-out.sock"


def forwards(ctx: zmq.Context[zmq.Socket[bytes]], in_ep: str, out_ep: str, timeout: float = 15.0) -> None:
    """A message pushed into the streamer's in socket comes out of its out socket."""
    push = ctx.socket(zmq.PUSH)
    pull = ctx.socket(zmq.PULL)
    push.linger = pull.linger = 0
    push.sndtimeo = 0
    try:
        push.connect(in_ep)
        pull.connect(out_ep)
        token = uuid.uuid4().hex.encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                push.send(token)
            except zmq.Again:
                pass
            if pull.poll(100) and pull.recv() == token:
                return
        pytest.fail(f"nothing forwarded from {in_ep} to {out_ep} within {timeout}s")
    finally:
        push.close(linger=0)
        pull.close(linger=0)


def identity(pid: int) -> tuple[int, float]:
    return pid, psutil.Process(pid).create_time()


def alive(ident: tuple[int, float]) -> bool:
    """Running (not a zombie waiting for its reaper) and the very process recorded."""
    try:
        proc = psutil.Process(ident[0])
        return bool(abs(proc.create_time() - ident[1]) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


_subscribers: dict[Path, SupervisorEvents] = {}


def changes(topo: Path) -> SupervisorEvents:
    """A wake-up on the event stream of the procdevices supervisor that runs ``topo``."""
    if topo not in _subscribers:
        _subscribers[topo] = SupervisorEvents(load_topology(topo).supervisor.run_dir)
    return _subscribers[topo]


@pytest.fixture(autouse=True)
def _close_subscribers() -> Iterator[None]:
    yield
    for subscriber in _subscribers.values():
        subscriber.close()
    _subscribers.clear()


def live(idents: Iterable[tuple[int, float]]) -> list[psutil.Process]:
    """The processes of ``idents`` that are still alive, for a wait on their exits."""
    return [psutil.Process(pid) for pid, created in idents if alive((pid, created))]


def device_pids(topo: Path) -> dict[str, int]:
    """Device pids from `procdevices up`'s control endpoint; {} until every device is RUNNING."""
    topology = load_topology(topo)
    try:
        reply = call_supervisor(topology.supervisor.control_endpoint, SupervisorCommand.STATUS, None, timeout=1.0)
    except Exception:
        return {}
    devices = reply.get("result", {}).get("devices", [])
    if len(devices) != len(INSTANCES) or any(d["state"] != "RUNNING" for d in devices):
        return {}
    return {d["name"]: d["pid"] for d in devices}


def write_topology(directory: Path, orphan_grace: float = 0) -> Path:
    topo = directory / "topo.toml"
    topo.write_text(TOPOLOGY.replace("orphan_grace = 0", f"orphan_grace = {orphan_grace}"))
    return topo


class Supervisord:
    """A foreground supervisord in ``directory`` with ``include`` (absolute paths)."""

    def __init__(
        self, directory: Path, include: list[Path], env: dict[str, str] | None = None, conf: Path | None = None
    ) -> None:
        """With ``conf``, that file is used as is; it must keep its socket and log next to itself."""
        self.directory = directory
        self.socket = directory / "sd.sock" if conf is None else conf.parent / "supervisor.sock"
        self.log = directory / "supervisord.log" if conf is None else conf.parent / "supervisord.log"
        if conf is None:
            conf = directory / "supervisord.conf"
            (directory / "logs").mkdir()
            # Included files are copied here: the program's log file is %(here)s/procdevices.log,
            # and each test's must be its own.
            (directory / "include").mkdir()
            include = [Path(shutil.copy(path, directory / "include" / path.name)) for path in include]
            conf.write_text(
                "[unix_http_server]\n"
                f"file = {self.socket}\n"
                "[supervisord]\n"
                f"logfile = {directory}/supervisord.log\n"
                f"pidfile = {directory}/supervisord.pid\n"
                f"childlogdir = {directory}/logs\n"
                "loglevel = debug\n"
                "[rpcinterface:supervisor]\n"
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
                "[supervisorctl]\n"
                f"serverurl = unix://{self.socket}\n"
                "[include]\n"
                f"files = {' '.join(str(p) for p in include)}\n"
            )
        self.conf = conf
        environment = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "PROCDEVICES_CONFIG")}
        environment["PROCDEVICES_PYTHON"] = sys.executable
        environment.update(env or {})
        self.output = open(directory / "supervisord.out", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
            env=environment,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        self.seen: set[tuple[int, float]] = {identity(self.process.pid)}
        with FileChanges(self.socket.parent) as created:
            wait_for(self._up, 20, "supervisord to answer on its socket", wake=created)

    def _up(self) -> bool:
        try:
            return bool(self.rpc("getState")["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            assert self.process.poll() is None, self.read(self.directory / "supervisord.out")
            return False

    def rpc(self, method: str, *args: Any) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        try:
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            return getattr(proxy.supervisor, method)(*args)
        finally:
            transport.close()

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.rpc("getProcessInfo", name)
        if info["pid"]:
            try:
                self.seen.add(identity(info["pid"]))
            except psutil.Error:
                pass
        return info

    def running(
        self, name: str, timeout: float = 20.0, not_pid: int | None = None, allow_backoff: bool = False
    ) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            info = self.info(name)
            failed = ("FATAL",) if allow_backoff else ("FATAL", "BACKOFF")
            assert info["statename"] not in failed, (info, self.program_log(name))
            return info if info["statename"] == "RUNNING" and info["pid"] != not_pid else None

        # supervisord logs every state change of its programs.
        with FileChanges(self.log) as logged:
            result: dict[str, Any] = wait_for(ready, timeout, f"{name} to be RUNNING", wake=logged)
        return result

    def program_log(self, name: str) -> str:
        return self.read(Path(self.rpc("getProcessInfo", name)["stdout_logfile"]))

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    @staticmethod
    def read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def shutdown(self) -> None:
        """SIGTERM to supervisord: it stops every program (stopsignal, stopwaitsecs) and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.output.close()

    def assert_nothing_left(self) -> None:
        wait_for(
            lambda: not [i for i in self.seen if alive(i)],
            10,
            f"every process to exit: {self.seen}",
            wake=processes_exit(lambda: live(self.seen)),
        )


@pytest.fixture
def supervisord(short_tmp: Path) -> Iterator[Callable[..., Supervisord]]:
    """``supervisord(include=[...], env={...})`` starts one; it is always shut down and every
    process it was seen running is checked to be gone."""
    started: list[Supervisord] = []

    def start(**kwargs: Any) -> Supervisord:
        sd = Supervisord(short_tmp, **kwargs)
        started.append(sd)
        return sd

    yield start
    for sd in started:
        sd.shutdown()
    for sd in started:
        sd.assert_nothing_left()


# -- rendering (no processes) -----------------------------------------------------------------


def read_with_supervisord(conf: Path) -> Any:
    """supervisord's own reading of a configuration file: its process group configs."""
    options = ServerOptions()
    options.configfile = str(conf)
    options.here = str(conf.parent)
    return options.read_config(str(conf))


def supervisord_main_conf(directory: Path, include: Path) -> Path:
    conf = directory / "main.conf"
    conf.write_text(
        f"[supervisord]\nlogfile = {directory}/x.log\npidfile = {directory}/x.pid\n[include]\nfiles = {include}\n"
    )
    return conf


def test_procdevices_conf_settings_as_supervisord_reads_them(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Parsing must not need PROCDEVICES_CONFIG: a missing variable fails the program, not supervisord.
    monkeypatch.delenv("PROCDEVICES_CONFIG", raising=False)
    section = read_with_supervisord(supervisord_main_conf(short_tmp, PROCDEVICES_CONF))
    [group] = section.process_group_configs
    [program] = group.process_configs
    assert program.name == "procdevices"
    argv = shlex.split(program.command)
    assert argv[:2] == ["/bin/sh", "-c"] and argv[2].count("exec ") == 1
    assert '-m procdevices up -c "$PROCDEVICES_CONFIG"' in argv[2]
    # SIGUSR1: `up` leaves its devices to the next `up` (a restart keeps them all).
    assert program.stopsignal == signal.SIGUSR1
    assert program.stopasgroup is False and program.killasgroup is True
    # Longer than procdevices' own worst-case stop with the default timeouts, with room to spare.
    assert program.stopwaitsecs >= policy.worst_case_stop_seconds(5.0, 2.0) + 2
    assert program.exitcodes == [0]
    assert program.autorestart is RestartWhenExitUnexpected
    assert 1 <= program.startsecs <= 3
    assert program.redirect_stderr is True
    assert program.stdout_logfile_maxbytes > 0 and program.stdout_logfile_backups > 0
    # Not AUTO: supervisord deletes AUTO log files when it restarts, and the history with them.
    assert program.stdout_logfile == str(PROCDEVICES_CONF.parent / "procdevices.log")


def test_example_conf_includes_procdevices_conf_relative_to_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # includes and %(here)s do not depend on the current directory
    section = read_with_supervisord(EXAMPLE_CONF)
    assert [g.name for g in section.process_group_configs] == ["procdevices"]
    assert section.server_configs[0]["file"] == str(EXAMPLE_CONF.parent / "supervisor.sock")
    assert section.childlogdir == str(EXAMPLE_CONF.parent)
    assert section.nodaemon is False  # nodaemon is left commented out


def test_render_group_as_supervisord_reads_it(short_tmp: Path) -> None:
    topo = short_tmp / "topo.toml"
    topo.write_text(
        TOPOLOGY + '\n[devices.edge]\nkind = "queue"\nrestart = "on-failure"\nstop_timeout = 1.5\n'
        'kill_timeout = 0.25\nin = { bind = ["ipc://e-in.sock"] }\nout = { bind = ["ipc://e-out.sock"] }\n'
        '\n[devices.once]\nkind = "queue"\nrestart = "never"\nintensity = { max_restarts = 7, within = 9.0 }\n'
        'in = { bind = ["ipc://o-in.sock"] }\nout = { bind = ["ipc://o-out.sock"] }\n'
    )
    topology = load_topology(topo)
    group_conf = short_tmp / "group.conf"
    group_conf.write_text(
        render_group(topology, config_path=Path("topo.toml"), python="/opt/py/bin/python3", cwd=short_tmp)
    )
    section = read_with_supervisord(supervisord_main_conf(short_tmp, group_conf))
    [group] = section.process_group_configs
    assert group.name == "procdevices"
    programs = {p.name: p for p in group.process_configs}
    assert sorted(programs) == sorted([*INSTANCES, "edge", "once"])
    for name, program in programs.items():
        assert shlex.split(program.command) == [
            "/opt/py/bin/python3",
            "-m",
            "procdevices",
            "run",
            name,
            "-c",
            str(topo),
            "--run-dir",
            str(short_tmp / "run"),
        ]
        assert program.directory == str(short_tmp)
        assert program.stopsignal == signal.SIGTERM and program.stopasgroup is False and program.killasgroup is True
        assert program.exitcodes == [0] and program.redirect_stderr is True
    assert programs["relay"].stopwaitsecs == math.ceil(policy.worst_case_stop_seconds(5.0, 2.0)) == 8
    assert programs["edge"].stopwaitsecs == math.ceil(policy.worst_case_stop_seconds(1.5, 0.25)) == 3
    assert programs["relay"].autorestart is RestartUnconditionally  # restart = "always" (the default)
    assert programs["edge"].autorestart is RestartWhenExitUnexpected  # restart = "on-failure"
    assert programs["once"].autorestart is False  # restart = "never"
    assert programs["once"].startretries == 7 and programs["edge"].startretries == 5  # intensity.max_restarts


@pytest.mark.parametrize(
    "path",
    [
        "/srv/a b/t.toml",
        "/srv/100%/t.toml",
        "/srv/x #y/t.toml",
        "/srv/x ;y/t.toml",
        "/srv/it's/t.toml",
        '/srv/"q"/$HOME/t.toml',
        "/srv/\\n/t.toml",
    ],
)
def test_every_path_survives_supervisord_syntax(short_tmp: Path, path: str) -> None:
    conf = short_tmp / "p.conf"
    conf.write_text(f"[program:p]\ncommand = {supervisord_quote('/bin/true')} -c {supervisord_quote(path)} --next\n")
    section = read_with_supervisord(supervisord_main_conf(short_tmp, conf))
    assert shlex.split(section.process_group_configs[0].process_configs[0].command) == [
        "/bin/true",
        "-c",
        path,
        "--next",
    ]


def test_render_group_refuses_what_supervisord_cannot_carry(short_tmp: Path) -> None:
    topology = load_topology(write_topology(short_tmp))
    with pytest.raises(ValueError, match="line break"):
        render_group(topology, config_path=Path("/srv/a\nb.toml"), python=sys.executable, cwd=short_tmp)
    with pytest.raises(ValueError, match="directory"):
        render_group(topology, config_path=None, python=sys.executable, cwd=Path("/srv/x #y"))


# -- one program running `procdevices up` -------------------------------------------------------


@pytest.mark.timeout(60)
def test_up_runs_forwards_and_stops_through_control_sockets(
    short_tmp: Path, supervisord: Callable[..., Supervisord], zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    topo = write_topology(short_tmp)
    sd = supervisord(include=[PROCDEVICES_CONF], env={"PROCDEVICES_CONFIG": str(topo)})
    procdevices = identity(sd.running("procdevices")["pid"])
    pids = wait_for(lambda: device_pids(topo), 20, "every device RUNNING in procdevices", wake=changes(topo))
    devices = {identity(pid) for pid in pids.values()}
    sd.seen |= devices
    for instance in INSTANCES:
        forwards(zmq_ctx, *endpoints(short_tmp, instance))

    started = time.monotonic()
    result = sd.ctl("stop", "procdevices")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "procdevices: stopped" in result.stdout
    stopped = sd.info("procdevices")
    assert stopped["statename"] == "STOPPED" and stopped["exitstatus"] == 0, stopped
    assert elapsed < 5.0  # well before stopwaitsecs (15): no escalation anywhere
    log = sd.program_log("procdevices")
    # SIGUSR1 (the program's stopsignal): `up` left; with orphan_grace = 0 each device then
    # stops itself at once, through its own control loop (drain, LINGER, exit 0).
    assert "leaving; orphan_grace is 0" in log, log
    wait_for(
        lambda: not [i for i in devices if alive(i)],
        10,
        "the devices to stop",
        wake=processes_exit(lambda: live(devices)),
    )
    assert "SIGTERM;" not in log and "SIGKILL" not in log, log  # procdevices' own escalation lines
    assert not SUPERVISORD_SIGKILL.search(sd.read(sd.log))
    assert not [i for i in {procdevices} | devices if alive(i)]


@pytest.mark.timeout(90)
def test_supervisorctl_restart_keeps_every_device(
    short_tmp: Path, supervisord: Callable[..., Supervisord], zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    topo = write_topology(short_tmp, orphan_grace=20)
    sd = supervisord(include=[PROCDEVICES_CONF], env={"PROCDEVICES_CONFIG": str(topo)})
    first = sd.running("procdevices")
    pids = wait_for(lambda: device_pids(topo), 20, "every device RUNNING in procdevices", wake=changes(topo))
    sd.seen |= {identity(pid) for pid in pids.values()}
    result = sd.ctl("restart", "procdevices")
    assert result.returncode == 0, result.stdout + result.stderr
    second = sd.running("procdevices", not_pid=first["pid"])
    after = wait_for(
        lambda: (found := device_pids(topo)) and _adopted(topo) and found,
        30,
        "the devices adopted",
        wake=changes(topo),
        detail=lambda: sd.program_log("procdevices"),
    )
    assert after == pids, "a device process changed across `supervisorctl restart`"
    for instance in INSTANCES:
        forwards(zmq_ctx, *endpoints(short_tmp, instance))
    assert second["pid"] != first["pid"]
    sd.seen.add(identity(second["pid"]))
    assert f"adopted {len(INSTANCES)} of the {len(INSTANCES)}" in sd.program_log("procdevices")
    # `down` stops the devices at once (supervisord's own stop would leave them their grace).
    down = subprocess.run(
        [sys.executable, "-m", "procdevices", "down", "-c", str(topo)], capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 0, down.stderr


def _adopted(topo: Path) -> bool:
    reply = call_supervisor(load_topology(topo).supervisor.control_endpoint, SupervisorCommand.STATUS, None, 1.0)
    return bool(reply.get("result", {}).get("supervisor", {}).get("adopted"))


@pytest.mark.timeout(90)
def test_sigkill_of_up_is_restarted_and_forwards_again(
    short_tmp: Path, supervisord: Callable[..., Supervisord], zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    topo = write_topology(short_tmp)
    sd = supervisord(include=[PROCDEVICES_CONF], env={"PROCDEVICES_CONFIG": str(topo)})
    first = sd.running("procdevices")
    old = {
        identity(pid) for pid in wait_for(lambda: device_pids(topo), 20, "devices RUNNING", wake=changes(topo)).values()
    }
    sd.seen |= old
    logfile = Path(first["stdout_logfile"])
    offset = logfile.stat().st_size

    os.kill(first["pid"], signal.SIGKILL)
    second = sd.running("procdevices", not_pid=first["pid"])
    new = wait_for(lambda: device_pids(topo), 30, "devices RUNNING again", wake=changes(topo))
    sd.seen |= {identity(pid) for pid in new.values()}
    # The orphaned devices noticed their parent's death and stopped by themselves.
    wait_for(
        lambda: not [i for i in old if alive(i)],
        10,
        "the orphaned devices to exit",
        wake=processes_exit(lambda: live(old)),
    )
    for instance in INSTANCES:
        forwards(zmq_ctx, *endpoints(short_tmp, instance))
    after = logfile.read_text()[offset:]
    assert "Address already in use" not in after, after
    assert "ready: 3 device process(es) running" in after, after
    assert second["pid"] != first["pid"]


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on: bool) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


@pytest.mark.timeout(90)
def test_restart_after_sigkill_does_not_wait_for_devices_that_stopped_themselves(
    short_tmp: Path, supervisord: Callable[..., Supervisord]
) -> None:
    """Like a container whose PID 1 does not reap: this test process becomes the subreaper of the
    orphaned devices and leaves them zombies until the restarted `up` is ready."""
    topo = write_topology(short_tmp)
    set_child_subreaper(True)
    old: dict[str, int] = {}
    try:
        sd = supervisord(include=[PROCDEVICES_CONF], env={"PROCDEVICES_CONFIG": str(topo)})
        first = sd.running("procdevices")
        old = wait_for(lambda: device_pids(topo), 20, "devices RUNNING", wake=changes(topo))
        sd.seen |= {identity(pid) for pid in old.values()}
        logfile = Path(first["stdout_logfile"])
        offset = logfile.stat().st_size

        os.kill(first["pid"], signal.SIGKILL)
        killed_at = time.monotonic()

        # They stop by themselves at once (and stay zombies: we are their parent now).
        def running() -> list[psutil.Process]:
            return [proc for p in old.values() if (proc := psutil.Process(p)).status() != psutil.STATUS_ZOMBIE]

        wait_for(lambda: not running(), 10, "the orphaned devices to exit", wake=processes_exit(running))
        # A restart costs an interpreter start and three device spawns: ~1.5 s here. (With the bug:
        # STOP timeout 1 s + SIGTERM wait 3 s + SIGKILL wait 3 s before anything starts.)
        new = wait_for(
            lambda: device_pids(topo), 6.0 - (time.monotonic() - killed_at), "devices RUNNING again", wake=changes(topo)
        )
        sd.seen |= {identity(pid) for pid in new.values()}
        after = logfile.read_text()[offset:]
        assert "leftover" not in after and "Traceback" not in after, after
    finally:
        set_child_subreaper(False)
        for pid in old.values():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


@pytest.mark.timeout(60)
def test_quick_start_example(
    short_tmp: Path, supervisord: Callable[..., Supervisord], zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """`PROCDEVICES_CONFIG=... supervisord -c supervisor.d/supervisord.conf.example`, on a copy of
    supervisor.d/ (everything supervisord writes goes next to the example)."""
    copy = short_tmp / "sd"
    copy.mkdir()
    shutil.copy(EXAMPLE_CONF, copy / EXAMPLE_CONF.name)
    shutil.copy(PROCDEVICES_CONF, copy / PROCDEVICES_CONF.name)
    topo = write_topology(short_tmp)
    sd = supervisord(include=[], env={"PROCDEVICES_CONFIG": str(topo)}, conf=copy / EXAMPLE_CONF.name)
    sd.running("procdevices")
    sd.seen |= {
        identity(pid) for pid in wait_for(lambda: device_pids(topo), 20, "devices RUNNING", wake=changes(topo)).values()
    }
    forwards(zmq_ctx, *endpoints(short_tmp, "relay"))
    status = sd.ctl("status")
    assert re.search(r"^procdevices\s+RUNNING\s+pid", status.stdout, re.M), status.stdout


@pytest.mark.timeout(60)
def test_missing_procdevices_config_fails_only_this_program(
    short_tmp: Path, supervisord: Callable[..., Supervisord]
) -> None:
    sd = supervisord(include=[PROCDEVICES_CONF], env={})
    # An exit within startsecs is a failed start: supervisord logs the code, keeps no exitstatus,
    # and goes BACKOFF (then FATAL after startretries), never RUNNING.
    with FileChanges(sd.log) as logged:
        wait_for(
            lambda: "exited: procdevices (exit status 78; not expected)" in sd.read(sd.log),
            20,
            "procdevices to exit 78",
            wake=logged,
        )
    assert sd.info("procdevices")["statename"] in ("BACKOFF", "STARTING", "FATAL")
    assert "PROCDEVICES_CONFIG is not set" in sd.program_log("procdevices")
    assert sd.rpc("getState")["statename"] == "RUNNING"  # supervisord itself is fine


# -- one program per device process (supervisord-conf) ------------------------------------------


@pytest.mark.timeout(90)
def test_per_device_programs_restart_only_the_killed_device(
    short_tmp: Path, supervisord: Callable[..., Supervisord], zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    topo = write_topology(short_tmp)
    group_conf = short_tmp / "group.conf"
    generated = subprocess.run(
        [sys.executable, "-m", "procdevices", "supervisord-conf", "-c", str(topo), "-o", str(group_conf)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=short_tmp,
    )
    assert generated.returncode == 0, generated.stderr
    sd = supervisord(include=[group_conf])
    names = [f"procdevices:{i}" for i in INSTANCES]
    pids = {name: sd.running(name)["pid"] for name in names}
    status = sd.ctl("status")
    for name in names:
        assert re.search(rf"^{re.escape(name)}\s+RUNNING\s+pid {pids[name]},", status.stdout, re.M), status.stdout
    for instance in INSTANCES:
        forwards(zmq_ctx, *endpoints(short_tmp, instance))

    victim = "procdevices:stage.0"
    os.kill(pids[victim], signal.SIGKILL)
    restarted = sd.running(victim, not_pid=pids[victim])
    forwards(zmq_ctx, *endpoints(short_tmp, "stage.0"))
    for name in names:
        if name != victim:
            assert sd.info(name)["pid"] == pids[name]  # the others were left alone
    assert "ready (pid" in sd.program_log(victim)

    # A stop of the whole group: every device stops itself on SIGTERM and exits 0.
    result = sd.ctl("stop", "procdevices:*")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in names:
        info = sd.info(name)
        assert info["statename"] == "STOPPED" and info["exitstatus"] == 0, info
        instance = name.split(":")[1]
        assert f"procdevices: {instance} stopped (signal)" in sd.program_log(name)
    assert not SUPERVISORD_SIGKILL.search(sd.read(sd.log))
    assert restarted["pid"] != pids[victim]
