"""The run directory: lock, run state, and clean-up after an unclean end.

    <run_dir>/            mode 0700, owned by us: only this user reaches the sockets inside
        lock              flock()ed by the running supervisor (released even by SIGKILL)
        supervisor.sock   the supervisor's control endpoint
        state.json        run token, pid + create time of the supervisor and of every device
        ctl/<name>.sock   each device's control socket

A device of a supervisor that died waits ``orphan_grace`` seconds to be adopted (it watches
its parent), and state.json lets the next ``up`` find it: adopt it, or stop it when the file no
longer names it (supervisor/adoption.py). A process named there is only touched if it is
verifiably a device of that run: same uid as us, same create time (a
reused pid never matches), not a zombie, and the run's random token in its environment (which
only its own user and root can read). So a forged or stale state file can at worst be ignored.

Trust: the run dir must be a real directory (not a symlink) owned by us and writable by nobody
else; its parents may be symlinks but none may be writable by others unless sticky (like /tmp).
Anything else is refused with a one-line ``RunDirError``; nothing that is not ours is chmod'ed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from procdevices import runlayout
from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command
from procdevices.errors import DeviceError
from procdevices.supervisor.config import IPC_PATH_MAX

# psutil is imported where it is used: not on `up`'s way to its first spawn (test_up_imports.py).
if TYPE_CHECKING:
    import psutil

RUN_TOKEN_ENV = "PROCDEVICES_RUN_TOKEN"

# Linux caps pids at 2**22; anything beyond a C int is not a pid on any system we run on.
_PID_MAX = 2**31 - 1


class RunDirBusy(Exception):
    """Another supervisor holds the run directory."""


class RunDirError(Exception):
    """The run directory cannot be used (bad path, not ours, unsafe permissions); the message
    is one line naming the path. Nothing was started."""


class StateWriteError(OSError):
    """state.json could not be written (ENOSPC, EROFS, EACCES...); one-line message. The state
    is only needed to clean up after an unclean end, so supervision can go on without it."""

    def __init__(self, errno: int | None, message: str) -> None:
        super().__init__(errno, message)

    def __str__(self) -> str:
        return str(self.strerror)


class StateCorrupt(ValueError):
    """state.json is unreadable or not what a supervisor writes; one-line message."""


# -- the run token --------------------------------------------------------------------------

_issued_token: str | None = None


def issue_run_token(resume: str | None = None) -> str:
    """The token of this supervisor run, set in ``os.environ`` so every process spawned after
    this call carries it. Idempotent within a process; a token inherited from a parent process
    is replaced, never trusted. ``resume``: the token of the run whose devices this supervisor
    adopted (read from our own state.json, after the run dir was checked to be ours): the run
    goes on, and a later adopter proves itself to old and new devices alike."""
    global _issued_token
    if resume is not None:
        _issued_token = resume
    elif _issued_token is None:
        _issued_token = os.urandom(16).hex()
    os.environ[RUN_TOKEN_ENV] = _issued_token
    return _issued_token


def current_run_token() -> str | None:
    """The token this process issued, if any (what write_state records by default)."""
    if _issued_token is not None and os.environ.get(RUN_TOKEN_ENV) == _issued_token:
        return _issued_token
    return None


# -- the state file ---------------------------------------------------------------------------


class DeviceRecord(NamedTuple):
    name: str
    pid: int
    create_time: float
    control_endpoint: str | None
    # What an adopting supervisor resumes from (supervisor/adoption.py): the [devices.NAME]
    # the instance belongs to, what its process runs (a fingerprint of the file's instance),
    # and its bookkeeping (restarts, history, traffic, listening sockets), checked there.
    device: str | None
    fingerprint: str | None
    books: dict[str, Any]


class RunState(NamedTuple):
    token: str | None
    devices: tuple[DeviceRecord, ...]


def parse_state(data: bytes) -> RunState:
    """The run state in ``data``; StateCorrupt unless it is exactly what write_state writes."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StateCorrupt(f"not JSON ({_one_line(e)})") from None
    if not isinstance(doc, dict):
        raise StateCorrupt(f"top level is {_kind(doc)}, not an object")
    token = doc.get("token")
    if token is not None and (not isinstance(token, str) or not token):
        raise StateCorrupt("'token' is not a non-empty string")
    devices = doc.get("devices", {})
    if not isinstance(devices, dict):
        raise StateCorrupt(f"'devices' is {_kind(devices)}, not an object")
    records = []
    for name, record in devices.items():
        if not isinstance(record, dict):
            raise StateCorrupt(f"device {name[:40]!r} is {_kind(record)}, not an object")
        pid = record.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= _PID_MAX:
            raise StateCorrupt(f"device {name[:40]!r}: pid {str(pid)[:40]!r} is not a pid")
        created = record.get("create_time")
        if (
            not isinstance(created, int | float)
            or isinstance(created, bool)
            or not math.isfinite(created)
            or created < 0
        ):
            raise StateCorrupt(f"device {name[:40]!r}: create_time {str(created)[:40]!r} is not a time")
        endpoint = record.get("control_endpoint")
        if endpoint is not None and not isinstance(endpoint, str):
            raise StateCorrupt(f"device {name[:40]!r}: control_endpoint is not a string")
        device, fingerprint, books = record.get("device"), record.get("fingerprint"), record.get("books", {})
        if not isinstance(device, str | None) or not isinstance(fingerprint, str | None):
            raise StateCorrupt(f"device {name[:40]!r}: device or fingerprint is not a string")
        if not isinstance(books, dict):
            raise StateCorrupt(f"device {name[:40]!r}: books is {_kind(books)}, not an object")
        records.append(DeviceRecord(name, pid, float(created), endpoint, device, fingerprint, books))
    return RunState(token, tuple(records))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


# -- the run directory ------------------------------------------------------------------------


class RunDir(NamedTuple):
    path: Path

    @property
    def control_endpoint(self) -> str:
        return runlayout.supervisor_endpoint(self.path)

    @property
    def state_file(self) -> Path:
        return runlayout.state_file(self.path)

    def device_control_endpoint(self, name: str) -> str:
        return runlayout.control_endpoint(self.path, name)

    def device_tap_endpoint(self, name: str) -> str:
        """Where the device publishes the copy ``procdevices tap`` reads, beside its control
        socket (devices/tapsocket.py spells the rule; it holds payloads: owner-only)."""
        from procdevices.devices.tapsocket import tap_endpoint

        endpoint = tap_endpoint(self.device_control_endpoint(name))
        assert endpoint is not None
        return endpoint

    def socket_paths(self, device_names: Iterable[str] = ()) -> list[Path]:
        return [
            Path(runlayout.supervisor_socket(self.path)),
            *(Path(runlayout.control_socket(self.path, name)) for name in device_names),
        ]

    # -- validation (no side effects: what `check` can tell) -----------------------------------
    def validate(self, device_names: Iterable[str] = ()) -> None:
        """RunDirError (one line) unless ``up`` can use this run dir for these devices."""
        sockets = self.socket_paths(device_names)
        for path in sockets:
            size = len(os.fsencode(path))
            if size > IPC_PATH_MAX:
                raise RunDirError(
                    f"run dir {self.path}: socket path {path} is {size} bytes, "
                    f"over the {IPC_PATH_MAX}-byte unix socket limit; use a shorter run dir"
                )
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self._check_creatable()
            return
        except OSError as e:
            raise self._path_error(e) from None
        self._check_ancestors()
        _check_private_dir(self.path, st)
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunDirError(f"run dir {self.path} is not writable")
        ctl = runlayout.ctl_dir(self.path)
        with contextlib.suppress(FileNotFoundError):
            _check_private_dir(ctl, os.lstat(ctl))
            if not os.access(ctl, os.W_OK | os.X_OK):
                raise RunDirError(f"run dir {self.path}: {ctl} is not writable")
        for path in sockets:
            _check_not_squatted(path)

    def check_trusted(self) -> None:
        """RunDirError (one line) unless a client may believe what it finds here: the same
        owner and mode checks ``up`` applies (ours, a real directory, writable by nobody else,
        no parent others may rename it in). A run dir that does not exist is fine: no
        supervisor runs there, which the client then says. Without this, whoever creates
        ``/tmp/procdevices-UID`` first answers every ``status`` with what they like."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise self._path_error(e) from None
        self._check_ancestors()
        _check_private_dir(self.path, st)

    def _check_creatable(self) -> None:
        parent = self.path.parent
        while True:
            try:
                st = os.stat(parent)
                break
            except FileNotFoundError:
                parent = parent.parent
            except OSError as e:
                raise self._path_error(e) from None
        if not stat.S_ISDIR(st.st_mode):
            raise RunDirError(f"cannot create run dir {self.path}: {parent} is not a directory")
        self._check_ancestors()
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunDirError(f"cannot create run dir {self.path}: {parent} is not writable")

    def _check_ancestors(self) -> None:
        # Whoever may write a parent may rename our run dir away and put theirs in its place.
        for parent in self.path.parents:
            try:
                st = os.stat(parent)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self._path_error(e) from None
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                raise RunDirError(
                    f"run dir {self.path}: parent {parent} is writable by others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}) and not sticky"
                )

    def _path_error(self, e: OSError) -> RunDirError:
        if e.errno == errno.ENOTDIR:
            for parent in reversed(self.path.parents):
                with contextlib.suppress(OSError):
                    if not stat.S_ISDIR(os.stat(parent).st_mode):
                        return RunDirError(f"run dir {self.path}: {parent} is not a directory")
        return RunDirError(f"run dir {self.path}: {e.strerror or _one_line(e)}")

    # -- creation and locking -------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the run dir (0700, parents as needed) and its ``ctl``; RunDirError when it
        is not ours or not safe. Permissions are tightened only on what we verified is ours."""
        fd = self._open_dir()
        os.close(fd)

    def _open_dir(self) -> int:
        """The run dir, created if need be and checked, as an O_DIRECTORY fd (caller closes)."""
        self.validate()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.path, 0o700)
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RunDirError(f"run dir {self.path} is a symlink; give the real directory") from None
            raise RunDirError(f"cannot create run dir {self.path}: {e.strerror or _one_line(e)}") from None
        try:
            # Checked on the fd we hold: the directory cannot be swapped between check and chmod.
            _make_private(fd, self.path)
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(runlayout.CTL_DIR, 0o700, dir_fd=fd)
                ctl = os.open(runlayout.CTL_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                what = "is a symlink" if e.errno == errno.ELOOP else f"cannot be created: {e.strerror or _one_line(e)}"
                raise RunDirError(f"run dir {self.path}: ctl {what}") from None
            try:
                _make_private(ctl, runlayout.ctl_dir(self.path))
            finally:
                os.close(ctl)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def locked(self, inherited: int | None = None) -> Iterator[IO[str]]:
        """Hold the run directory for the lifetime of a supervisor. ``inherited``: the lock
        this very process held before it re-executed itself (supervisor/upgrade.py), used
        only if it is this run dir's lock file; no other ``up`` could take it in between."""
        dir_fd = self._open_dir()
        try:
            fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as e:
            raise RunDirError(f"run dir {self.path}: cannot open lock: {e.strerror or _one_line(e)}") from None
        finally:
            os.close(dir_fd)
        if inherited is not None:
            try:
                same = os.path.samestat(os.fstat(inherited), os.fstat(fd))
            except OSError:
                same = False
            if same:
                os.close(fd)
                fd = inherited  # flock below succeeds at once: this open file holds it
            else:
                with contextlib.suppress(OSError):
                    os.close(inherited)
        with os.fdopen(fd, "r+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _holder_pid(lock)
                raise RunDirBusy(
                    f"another procdevices supervisor (pid {owner}) is running with run dir {self.path}"
                ) from None
            # The holder's pid, for the message above: readable from the moment it holds it.
            # Only a courtesy: on a full disk the lock works without it.
            # Unbuffered, so that a failed write leaves nothing to fail again at close.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield lock

    # -- state.json -----------------------------------------------------------------------------
    def read_state(self) -> RunState | None:
        """The recorded run state; None when there is none; StateCorrupt when it is unusable."""
        try:
            fd = os.open(self.state_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateCorrupt(f"cannot open it: {e.strerror or _one_line(e)}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateCorrupt("not a regular file")
            # A supervisor's state is a few hundred bytes per device: cap what we parse.
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(16 * 1024 * 1024 + 1)
        except OSError as e:
            raise StateCorrupt(f"cannot read it: {e.strerror or _one_line(e)}") from None
        finally:
            os.close(fd)
        if len(data) > 16 * 1024 * 1024:
            raise StateCorrupt("larger than 16 MiB")
        return parse_state(data)

    def write_state(self, devices: dict[str, dict[str, Any]], *, token: str | None = None) -> None:
        """Record this run atomically (a reader sees the old or the new file, never a part).

        ``token`` defaults to the one issue_run_token() set; without one, the next ``up`` can
        verify no process and leaves them all alone. StateWriteError on failure: the caller
        (the supervisor) logs it and goes on."""
        import psutil

        me = psutil.Process()
        state = {
            "token": token if token is not None else current_run_token(),
            "supervisor": {"pid": me.pid, "create_time": me.create_time()},
            "devices": devices,
        }
        # Compact: json's C encoder runs only without indent, ~5x faster; a reader who wants
        # it indented has `python -m json.tool`.
        self._write_atomically(json.dumps(state, separators=(",", ":")).encode())

    def _write_atomically(self, data: bytes) -> None:
        # No fsync, of the file or of the directory: the state file serves the next `up` after
        # this one ends (a crash, SIGUSR1, an upgrade), and the page cache it reads from
        # outlives any process. What an fsync adds is only survival of a kernel crash or a
        # power loss, after which no device the file names is running; a file torn by one is
        # ignored with a warning (read_usable_state). Two fsyncs per write blocked the
        # supervisor's loop 5-40 ms each time, 0.14 s in all while 32 devices started.
        tmp = self.path / f".state.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise self._write_error(e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.state_file)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._write_error(e) from None

    def _write_error(self, e: OSError) -> StateWriteError:
        return StateWriteError(e.errno, f"cannot write {self.state_file}: {e.strerror or _one_line(e)}")

    def clear_state(self) -> None:
        with contextlib.suppress(OSError):
            self.state_file.unlink()


def _check_private_dir(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise RunDirError(f"run dir {path} is a symlink; give the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"run dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise RunDirError(f"run dir {path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise RunDirError(
            f"run dir {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}); its content cannot be trusted"
        )


def _make_private(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    _check_private_dir(path, st)
    if stat.S_IMODE(st.st_mode) != 0o700:
        try:
            os.fchmod(fd, 0o700)
        except OSError as e:
            raise RunDirError(f"run dir {path}: cannot chmod 0700: {e.strerror or _one_line(e)}") from None


def _check_not_squatted(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise RunDirError(f"{path}: {e.strerror or _one_line(e)}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise RunDirError(f"{path} exists and is not a socket; remove it or use another run dir")


def _holder_pid(lock: IO[str]) -> str:
    # The holder writes its pid just after taking the lock: give it a moment to do so.
    deadline = time.monotonic() + 0.5
    while True:
        lock.seek(0)
        pid = lock.read().strip()
        if pid or time.monotonic() > deadline:
            return pid or "?"
        time.sleep(0.01)


# -- leftovers ------------------------------------------------------------------------------


def identify(pid: int, create_time: float, token: str | None) -> psutil.Process | None:
    """The process with this pid, only if it is verifiably the device recorded: ours (same
    uid), the very process (same create time), alive (not a zombie), and of that run (it
    carries ``token`` in its environment). None otherwise, and always None without a token."""
    import psutil

    if not token:
        return None
    try:
        proc = psutil.Process(pid)
        uids = proc.uids()
        if uids.real != os.getuid() or uids.effective != os.geteuid():
            return None
        if abs(proc.create_time() - create_time) >= 0.01:
            return None
        # A zombie has already exited: it only waits for its (new) parent to reap it.
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        from hmac import compare_digest  # here: only an adopting `up` compares tokens

        if not compare_digest(proc.environ().get(RUN_TOKEN_ENV, ""), token):
            return None
        # psutil.Process checks the create time again before every signal it sends.
        return proc
    except (psutil.Error, OSError, ValueError, OverflowError, TypeError):
        return None


def stop_leftovers(run_dir: RunDir, stop_timeout: float = 3.0) -> list[str]:
    """Stop devices recorded by a supervisor that is gone; returns what was done (including a
    warning when the state file is unusable: it is then ignored and removed). Never raises
    for anything found in the state file."""
    state, done = read_usable_state(run_dir)
    if state is not None:
        done += stop_recorded(run_dir, state.devices, state.token, stop_timeout)
    run_dir.clear_state()
    return done


def read_usable_state(run_dir: RunDir) -> tuple[RunState | None, list[str]]:
    """The recorded run, if anything in it can be verified, and the warnings to say (a state
    file that is corrupt or has no token is removed: nothing in it can be trusted)."""
    try:
        state = run_dir.read_state()
    except StateCorrupt as e:
        run_dir.clear_state()
        return None, [f"warning: ignoring corrupt state file {run_dir.state_file}: {e}"]
    if state is not None and state.token is None and state.devices:
        # Written before run tokens existed (or forged): nothing in it can be verified.
        run_dir.clear_state()
        return None, [
            f"warning: state file {run_dir.state_file} has no run token: its {len(state.devices)} "
            "recorded device(s) cannot be verified and are left alone"
        ]
    return state, []


def own_control_endpoint(run_dir: RunDir, record: DeviceRecord) -> str | None:
    """The recorded control endpoint, only if it is one of this run dir's: a state file must
    not make us connect elsewhere."""
    endpoint = record.control_endpoint
    ctl_prefix = runlayout.control_endpoint_prefix(run_dir.path)
    if endpoint is None or not endpoint.startswith(ctl_prefix) or "/" in endpoint[len(ctl_prefix) :]:
        return None
    return endpoint


def stop_recorded(
    run_dir: RunDir, records: Iterable[DeviceRecord], token: str | None, stop_timeout: float = 3.0
) -> list[str]:
    """Stop the recorded devices that are verifiably of run ``token`` (identify()): through
    their control socket, else SIGTERM, then SIGKILL past ``stop_timeout``; returns what was
    done. Anything not verifiably ours is left alone."""
    import psutil

    done: list[str] = []
    leftovers: list[psutil.Process] = []
    for record in records:
        proc = identify(record.pid, record.create_time, token)
        if proc is None:
            continue
        endpoint = own_control_endpoint(run_dir, record)
        stopped = False
        if endpoint is not None:
            client = ControlClient(endpoint)
            try:
                client.request(Command.STOP, timeout=1.0)
                stopped = True
                done.append(f"stopped leftover device {record.name} (pid {proc.pid}) through its control socket")
            except DeviceError:
                pass
            finally:
                client.close()
        if not stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
                done.append(f"sent SIGTERM to leftover device {record.name} (pid {proc.pid})")
        leftovers.append(proc)
    _, alive = psutil.wait_procs(leftovers, timeout=stop_timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            done.append(f"killed leftover device pid {proc.pid}")
    psutil.wait_procs(alive, timeout=stop_timeout)
    return done


def remove_stale_sockets(paths: list[Path]) -> list[str]:
    """Remove unix socket files nobody listens on any more (never a live one, never a file
    that is not a socket)."""
    removed = []
    for path in paths:
        try:
            if not stat.S_ISSOCK(path.lstat().st_mode) or _listening(path):
                continue
            path.unlink()
            removed.append(str(path))
        except OSError:
            continue
    return removed


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            # EAGAIN: a full backlog is someone listening; anything else we cannot judge.
            return True
    return True


def wait_gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie has: only its parent has yet to reap it)."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
