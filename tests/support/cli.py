"""Helpers for the tests that drive the real ``python -m procdevices`` command line.

- ``write_topology``: a topology TOML in the test's short directory (relative ipc paths and
  the run dir resolve next to it), with the fast supervisor settings tests want.
- ``cli``: run one command (``sys.executable -m procdevices ...``) to completion.
- ``Up``: ``python -m procdevices up -c FILE`` as a subprocess in a session of its own, with
  ``wait_states`` (poll ``status --json`` until the devices settle), and ``close`` that kills
  and reaps whatever is left and asserts that no process of the run survives. The supervisor
  is the session leader, so every process it starts (devices are its grandchildren through
  multiprocessing, pool workers, the resource tracker) carries its session id, even after
  being re-parented when the supervisor dies: ``leftovers`` finds them all.
- traffic checks (request/reply, pub/sub, push/pull, the monitor socket) with deadlines, and
  ``expect_silence`` (a bounded poll) to prove that nothing flows.
- ``wait_for``: the library's one waiting loop (``procdevices.control.waiter.wait_until``)
  with a clear failure message, and a wake-up on the events that can change the answer
  (``SupervisorEvents``, ``processes_exit``, ``FileChanges``, ``readable``).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import psutil
import pytest
import zmq

from procdevices.control.waiter import SupervisorWaiter, wait_until
from procdevices.testing import kill_all

T = TypeVar("T")

CLI = [sys.executable, "-m", "procdevices"]

# Fast supervision for tests: hangs found within ~2.5 s, stops escalate quickly. Neither is so
# quick that a loaded machine (a 2-core CI box running the suite in parallel) turns a slow
# answer into a false "hung" or a clean stop into a SIGTERM.
FAST_DEFAULTS = """\
probe = { interval = 0.2, timeout = 1.0, failures = 2 }
stop_timeout = 2.0
kill_timeout = 1.0
"""

# write_topology puts the run dir here, next to the topology file.
RUN_DIR = "run"

# How long a bounded poll waits before concluding that nothing flows.
SILENCE_MS = 300
# Generous deadlines: they only matter when something is wrong.
SETTLE_TIMEOUT = 30.0
TRAFFIC_TIMEOUT = 10.0
CLI_TIMEOUT = 30.0

Ctx = zmq.Context[zmq.Socket[bytes]]
Sock = zmq.Socket[bytes]


# -- polling ---------------------------------------------------------------------------------


Wake = Callable[[float], object]


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    wake: Wake,
    detail: Callable[[], str] | None = None,
) -> T:
    """Check ``predicate`` until it returns something truthy and return that; fail the test
    with "timed out after Ns waiting for <what>" (plus ``detail()``) at the deadline.

    Between checks it waits on ``wake(seconds)``, which returns when something that could
    change the answer happened (the supervisor's event stream, a process exit, a file
    written or removed, a pipe with output) or the given seconds passed. Each wait is at
    most WAKE_SLICE, so a wake-up that missed its event costs a second, not the test."""
    value = wait_until(predicate, timeout, lambda left: wake(min(left, WAKE_SLICE)))
    if value:
        return value
    extra = f"\n{detail()}" if detail is not None else ""
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}{extra}", pytrace=False)


# A waker may miss an event (a subscriber that is still joining): re-check this often anyway.
WAKE_SLICE = 1.0


def readable(*fds: int) -> Wake:
    """A wake-up for output another process writes to a pipe we read."""
    return lambda seconds: select.select(fds, [], [], seconds)


class FileChanges:
    """A wake-up for a condition on files another process writes: returns as soon as
    something in one of ``paths`` (a file, or a directory's entries) is created, written,
    moved or removed. A path that does not exist yet is watched from when it does (list its
    parent first). Linux inotify, through libc: the standard library has no binding."""

    _MASK = 0x2 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x4  # MODIFY CLOSE_WRITE MOVED_* CREATE DELETE* ATTRIB

    def __init__(self, *paths: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._unwatched = list(paths)
        self._watch_new()

    def _watch_new(self) -> bool:
        """Watch the paths that exist now; True if there was one."""
        added = [
            path
            for path in self._unwatched
            if self._libc.inotify_add_watch(self.fd, os.fsencode(path), self._MASK) >= 0
        ]
        self._unwatched = [path for path in self._unwatched if path not in added]
        return bool(added)

    def __call__(self, seconds: float) -> None:
        if self._unwatched and self._watch_new():
            return  # what it holds may have changed before the watch began: look again now
        if select.select([self.fd], [], [], seconds)[0]:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> FileChanges:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def processes_exit(procs: Callable[[], list[psutil.Process]]) -> Wake:
    """A wake-up for waits on processes: returns as soon as one of ``procs()`` exits. It
    waits on pidfds, so it reaps nothing (a Popen keeps its child's exit status)."""

    def wake(seconds: float) -> None:
        fds: list[int] = []
        try:
            for proc in procs():
                try:
                    fds.append(os.pidfd_open(proc.pid))
                except ProcessLookupError:
                    return  # already gone: let the caller look again at once
            if fds:
                select.select(fds, [], [], seconds)
        finally:
            for fd in fds:
                os.close(fd)

    return wake


class SupervisorEvents(SupervisorWaiter):
    """A wake-up for waits on a supervisor's state: the library's own waiter
    (:class:`procdevices.control.waiter.SupervisorWaiter`), subscribed to the supervisor's
    event stream at once (libzmq keeps trying until the supervisor binds it)."""

    def __call__(self, seconds: float) -> None:
        self.changed(seconds)


# -- topology files and one-shot commands ---------------------------------------------------


def write_topology(
    directory: Path,
    devices: str,
    *,
    pool_size: int = 1,
    defaults: str = FAST_DEFAULTS,
    name: str = "topology.toml",
    orphan_grace: float = 0,
) -> Path:
    """Write ``[supervisor]`` (run dir ``run`` next to the file) plus ``devices`` (TOML text
    with ``[devices.NAME]`` tables) to ``directory/name``. ``orphan_grace`` is 0 unless asked:
    most tests rely on devices following a killed supervisor at once (and stay fast)."""
    text = (
        "[supervisor]\n"
        f'run_dir = "{RUN_DIR}"\n'
        f"pool_size = {pool_size}\n"
        f"orphan_grace = {orphan_grace}\n\n"
        "[supervisor.defaults]\n"
        f"{textwrap.dedent(defaults)}\n"
        f"{textwrap.dedent(devices)}"
    )
    path = directory / name
    path.write_text(text)
    return path


def cli(
    *args: str, config: Path | None = None, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m procdevices ARGS [-c CONFIG]`` to completion and return the result."""
    command = [*CLI, *args]
    if config is not None:
        command += ["-c", str(config)]
    return subprocess.run(
        command,
        cwd=cwd or (config.parent if config is not None else None),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args: str, config: Path | None = None, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start ``python -m procdevices ARGS [-c CONFIG]`` without waiting; see ``finish_cli``."""
    command = [*CLI, *args]
    if config is not None:
        command += ["-c", str(config)]
    return subprocess.Popen(
        command,
        cwd=cwd or (config.parent if config is not None else None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_cli(process: subprocess.Popen[str], timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Wait for a command started by ``start_cli``; killed and reaped if it overruns."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        args = " ".join(str(a) for a in process.args[2:])  # type: ignore[index]
        pytest.fail(
            f"`{args}` did not finish within {timeout:g}s\n--- stdout\n{stdout}--- stderr\n{stderr}", pytrace=False
        )
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A command's exit code and output, for assertion messages."""
    return (
        f"`{' '.join(result.args[2:])}` exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )


# -- processes --------------------------------------------------------------------------------


def is_gone(proc: psutil.Process) -> bool:
    """Dead (a zombie counts: it runs nothing and holds no socket)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def recorded_state(run_dir: Path, holds: Callable[[Any], bool], what: str) -> dict[str, Any]:
    """state.json once ``holds`` is true of it. The supervisor writes it at the end of a turn
    of its loop (supervisor/statekeeper.py), maybe after the status that said RUNNING; it
    replaces the file whole, so a read never sees half of one it wrote."""

    def state() -> dict[str, Any] | None:
        try:
            found = json.loads((run_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return None  # not written yet, or an earlier file (a test's corrupt one) not yet replaced
        return found if isinstance(found, dict) and holds(found) else None

    with FileChanges(run_dir) as changes:
        return wait_for(state, 10.0, f"state.json {what}", wake=changes)


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; returns those still running at the deadline. A
    zombie has exited: reaping it is its parent's job, and an orphan's parent (init, here a
    process of the sandbox) may take its time, which psutil.wait_procs would wait out."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if not is_gone(p)]
        left = deadline - time.monotonic()
        if not alive or left <= 0:
            return alive
        processes_exit(functools.partial(list, alive))(min(left, WAKE_SLICE))


def identify(pid: int) -> psutil.Process | None:
    """The live process ``pid`` (psutil remembers its create time: a reused pid never
    matches it later)."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    return None if is_gone(proc) else proc


def kill_and_reap(procs: list[psutil.Process]) -> None:
    kill_all(procs)  # the library's: a stopped process too, waited for up to 10 s
    survivors = [p for p in procs if not is_gone(p)]
    assert not survivors, f"still alive 10 s after SIGKILL: {survivors}"


class Up:
    """``python -m procdevices up -c CONFIG``, run in its own session; a context manager
    whose exit kills and reaps everything and checks that nothing survived."""

    def __init__(self, config: Path, *, label: str = "up") -> None:
        self.config = config
        self.directory = config.parent
        self.stdout_path = self.directory / f"{label}.stdout"
        self.stderr_path = self.directory / f"{label}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.me: psutil.Process | None = None
        # Every device process seen in a status, keyed by pid (psutil.Process keeps the
        # create time, so a reused pid is never mistaken for it).
        self.devices_seen: dict[int, psutil.Process] = {}
        from procdevices.cli.locate import client_run_dir

        self.changes = SupervisorEvents(client_run_dir(str(config), None))

    # -- running ------------------------------------------------------------------------
    def start(self) -> Self:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "up", "-c", str(self.config)],
                cwd=self.directory,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.me = psutil.Process(self.proc.pid)
        return self

    def __enter__(self) -> Self:
        # Not `__enter__ = start`: that binds this class's start, and a subclass's (HostUp,
        # LimitedUp) would never run.
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close(check=exc_info[0] is None)  # after a failure, its report comes first

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """The supervisor's stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self) -> str:
        return "--- supervisor stderr (tail)\n" + "\n".join(self.log().splitlines()[-40:])

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return cli(*args, config=self.config, cwd=self.directory, timeout=timeout)

    def start_cli(self, *args: str) -> subprocess.Popen[str]:
        return start_cli(*args, config=self.config, cwd=self.directory)

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the supervisor, or to its whole process group (what a terminal's
        Ctrl-C does)."""
        assert self.running(), "the supervisor is not running"
        if group:
            os.killpg(self.pid, sig)
        else:
            os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not exit within {timeout:g}s\n{self.log_tail()}", pytrace=False)

    # -- status ---------------------------------------------------------------------------
    def try_status(self) -> dict[str, Any] | None:
        """``status --json``; None while no supervisor answers yet (exit 4). Through the CLI
        on purpose: these tests check what users run (the waits between two reads are the
        library's, ``self.changes``)."""
        result = self.cli("status", "--json")
        if result.returncode == 4:
            return None
        assert result.returncode in (0, 3), describe(result)
        data: dict[str, Any] = json.loads(result.stdout)
        for device in data["devices"]:
            if device["pid"] and device["pid"] not in self.devices_seen:
                proc = identify(device["pid"])
                if proc is not None:
                    self.devices_seen[device["pid"]] = proc
        return data

    def status(self) -> dict[str, Any]:
        data = self.try_status()
        assert data is not None, f"no supervisor answers status\n{self.log_tail()}"
        return data

    def devices(self) -> dict[str, dict[str, Any]]:
        """name -> the device's status entry."""
        return {d["name"]: d for d in self.status()["devices"]}

    def wait_states(
        self,
        states: dict[str, str] | None = None,
        *,
        timeout: float = SETTLE_TIMEOUT,
        check: Callable[[dict[str, dict[str, Any]]], bool] | None = None,
        what: str = "",
    ) -> dict[str, dict[str, Any]]:
        """Poll ``status --json`` until every device is in its state from ``states`` (default
        RUNNING) and ``check(devices)`` holds; returns name -> status entry. Fails early,
        with the supervisor's log, if the supervisor exits."""
        wanted = states or {}
        last: dict[str, dict[str, Any]] = {}

        def settled() -> dict[str, dict[str, Any]] | None:
            nonlocal last
            if not self.running():
                pytest.fail(
                    f"the supervisor exited with {self.proc.returncode if self.proc else '?'}\n{self.log_tail()}",
                    pytrace=False,
                )
            data = self.try_status()
            if data is None:
                return None
            last = {d["name"]: d for d in data["devices"]}
            unknown = set(wanted) - set(last)
            assert not unknown, f"status has no device {sorted(unknown)}; it has {sorted(last)}"
            if any(d["state"] != wanted.get(name, "RUNNING") for name, d in last.items()):
                return None
            if check is not None and not check(last):
                return None
            return last

        def detail() -> str:
            states_now = {name: (d["state"], d["pid"], d["last_exit"]) for name, d in last.items()}
            return f"last seen: {states_now}\n{self.log_tail()}"

        return wait_for(
            settled,
            timeout,
            what or f"the devices to settle ({wanted or 'all RUNNING'})",
            wake=self.until_changed,
            detail=detail,
        )

    def until_changed(self, seconds: float) -> None:
        """Wait until the supervisor reports a change, or it exits, or ``seconds`` pass."""
        if self.running():
            self.changes(seconds)

    def wait_until(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """``wait_for`` a condition of this supervisor's state, re-checked on its events."""
        return wait_for(predicate, timeout, what, wake=self.until_changed, detail=self.log_tail)

    # -- leftovers -----------------------------------------------------------------------
    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this run: anything in the supervisor's session (its descendants,
        re-parented or not) and every device process ever seen in a status."""
        found: dict[int, psutil.Process] = {}
        if self.me is None:
            return []
        if not is_gone(self.me):
            found[self.me.pid] = self.me
        for proc in psutil.process_iter():
            try:
                if (
                    proc.pid != self.me.pid
                    and os.getsid(proc.pid) == self.me.pid
                    and proc.create_time() >= self.me.create_time() - 0.05
                    and not is_gone(proc)
                ):
                    found[proc.pid] = proc
            except (OSError, psutil.Error):
                continue
        for pid, proc in self.devices_seen.items():
            if not is_gone(proc):
                found[pid] = proc
        return sorted(found.values(), key=lambda p: p.pid)

    def describe_leftovers(self) -> str:
        lines = []
        for proc in self.leftovers():
            try:
                lines.append(f"pid {proc.pid} ({proc.status()}): {' '.join(proc.cmdline())[:160]}")
            except psutil.Error:
                lines.append(f"pid {proc.pid}")
        return "left running:\n  " + "\n  ".join(lines) + "\n" + self.log_tail()

    def assert_nothing_left(self, timeout: float) -> None:
        """Poll until no process of this run is alive (supervisor, devices, pool workers,
        resource tracker); fail naming the survivors."""
        wait_for(
            lambda: not self.leftovers(),
            timeout,
            "every process of the run to end",
            wake=processes_exit(self.leftovers),
            detail=self.describe_leftovers,
        )

    def assert_clean_stop(self, names: list[str]) -> None:
        """After a graceful end: each device stopped through its control socket (no
        escalation to SIGTERM/SIGKILL), no process left, the run state removed."""
        log = self.log()
        for name in names:
            assert f"{name}: STOPPED (stopped through the control socket)\n" in log, self.log_tail()
        escalations = [
            line
            for line in log.splitlines()
            if line.endswith(("; SIGTERM", "; SIGKILL")) or "stopped through the SIG" in line
        ]
        assert not escalations, f"the stop escalated to signals: {escalations}"
        self.assert_nothing_left(timeout=5.0)
        run_dir = self.directory / RUN_DIR
        assert not (run_dir / "state.json").exists(), "state.json survived a clean stop"
        assert not (run_dir / "supervisor.sock").exists(), "supervisor.sock survived a clean stop"
        assert not list((run_dir / "ctl").glob("*.sock")), "device control sockets survived a clean stop"

    def close(self, *, check: bool = True) -> None:
        """Kill the supervisor's process group if it still runs, reap it, then kill any
        process of the run that outlived it; with ``check``, fail if there was one."""
        self.changes.close()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Devices and pool workers share the supervisor's process group: one SIGKILL.
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        survivors = self.leftovers()
        if survivors:
            # Devices of a dead supervisor stop by themselves: wait for their exits.
            psutil.wait_procs(survivors, timeout=2.0)
            survivors = self.leftovers()
        report = self.describe_leftovers() if survivors else ""
        if survivors:
            kill_and_reap(survivors)
        if check:
            assert not survivors, f"processes outlived the supervisor:\n{report}"


# -- traffic --------------------------------------------------------------------------------


def connect(ctx: Ctx, kind: int, endpoint: str, subscribe: bytes | None = None) -> Sock:
    sock: Sock = ctx.socket(kind)
    sock.linger = 0
    if subscribe is not None:
        sock.subscribe(subscribe)
    sock.connect(endpoint)
    return sock


def recv_within(sock: Sock, what: str, timeout: float = TRAFFIC_TIMEOUT) -> list[bytes]:
    assert sock.poll(int(timeout * 1000)), f"nothing arrived within {timeout:g}s: {what}"
    return sock.recv_multipart()


def expect_silence(sock: Sock, what: str, ms: int = SILENCE_MS) -> None:
    """A bounded poll: fails if anything arrives within ``ms``."""
    assert not sock.poll(ms), f"a message arrived although {what}: {sock.recv_multipart()}"


def request_reply(ctx: Ctx, front: str, back: str, payload: bytes = b"ping") -> None:
    """A REQ client on ``front``, a REP worker on ``back`` that echoes: the echo comes back."""
    worker = connect(ctx, zmq.REP, back)
    client = connect(ctx, zmq.REQ, front)
    try:
        client.send(payload)
        worker.send_multipart(recv_within(worker, f"the request {front} -> {back}"))
        assert recv_within(client, f"the reply {back} -> {front}") == [payload]
    finally:
        client.close()
        worker.close()


def publish_until_received(ctx: Ctx, front: str, back: str, payload: bytes = b"tick") -> None:
    """A PUB on ``front`` publishes repeatedly until a SUB on ``back`` gets one message (the
    slow joiner: subscriptions take a moment to reach the device and the publisher)."""
    sub = connect(ctx, zmq.SUB, back, subscribe=b"")
    pub = connect(ctx, zmq.PUB, front)
    try:
        deadline = time.monotonic() + TRAFFIC_TIMEOUT
        while time.monotonic() < deadline:
            pub.send(payload)
            if sub.poll(50):
                assert sub.recv_multipart() == [payload]
                return
        pytest.fail(f"nothing published on {front} reached {back} within {TRAFFIC_TIMEOUT:g}s", pytrace=False)
    finally:
        pub.close()
        sub.close()


def push_pull(ctx: Ctx, front: str, back: str, payloads: list[bytes]) -> None:
    """PUSH ``payloads`` into ``front``; a PULL on ``back`` receives exactly them, in order."""
    pull = connect(ctx, zmq.PULL, back)
    push = connect(ctx, zmq.PUSH, front)
    try:
        for payload in payloads:
            push.send(payload)
        received = [recv_within(pull, f"{front} -> {back}")[0] for _ in payloads]
        assert received == payloads
    finally:
        push.close()
        pull.close()


def request_reply_monitored(ctx: Ctx, front: str, back: str, mon: str, payload: bytes = b"watched") -> list[bytes]:
    """Request/reply through a monitored device until its monitor PUB shows a copy; returns
    the first monitor message (the monitor SUB is a slow joiner too)."""
    watcher = connect(ctx, zmq.SUB, mon, subscribe=b"")
    worker = connect(ctx, zmq.REP, back)
    client = connect(ctx, zmq.REQ, front)
    try:
        deadline = time.monotonic() + TRAFFIC_TIMEOUT
        while time.monotonic() < deadline:
            client.send(payload)
            worker.send_multipart(recv_within(worker, f"the request {front} -> {back}"))
            assert recv_within(client, f"the reply {back} -> {front}") == [payload]
            if watcher.poll(50):
                return watcher.recv_multipart()
        pytest.fail(f"no copy of the traffic appeared on the monitor {mon}", pytrace=False)
    finally:
        client.close()
        worker.close()
        watcher.close()


def accepts_connections(endpoint: str) -> bool:
    """Whether something listens on a tcp:// or ipc:// endpoint (a plain socket connect)."""
    scheme, _, address = endpoint.partition("://")
    if scheme == "ipc":
        family: int = socket.AF_UNIX
        target: Any = address
    else:
        host, _, port = address.rpartition(":")
        family, target = socket.AF_INET, (host, int(port))
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(target)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except BlockingIOError:
            # EAGAIN from a unix socket's connect: it listens, and its accept queue is full for
            # now (a probe per message fills it faster than libzmq accepts). Not a refusal.
            return True
    return True


def free_tcp_port() -> int:
    """A loopback port the OS just handed out and released (for a topology that must bind the
    same fixed port twice in a row); another process could take it in between, but the OS
    cycles through its ephemeral range, so that is very unlikely."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
