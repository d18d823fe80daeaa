"""The run directory at unit level: which paths are refused, what is never chmod'ed, how
state.json is read (every corruption ignored), written (atomically, one exception type on
failure, on a real full tmpfs too) and trusted (a process is signalled only when it carries
the run's token, under our uid, with the recorded create time)."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.cli import processes_exit, wait_for

from procdevices.supervisor import runstate
from procdevices.supervisor.runstate import (
    RUN_TOKEN_ENV,
    RunDir,
    RunDirError,
    StateCorrupt,
    StateWriteError,
    identify,
    issue_run_token,
    parse_state,
    remove_stale_sockets,
    stop_leftovers,
)

NOBODY = 65534

# Every way a state file seen in the field (or planted) was broken: (id, file content).
CORRUPT_STATES: list[tuple[str, bytes]] = [
    ("devices-is-a-list", b'{"token": "t", "devices": []}'),
    ("record-is-a-list", b'{"token": "t", "devices": {"pipe": [1, 2]}}'),
    ("pid-is-a-string", b'{"token": "t", "devices": {"pipe": {"pid": "x", "create_time": 1.0}}}'),
    ("pid-is-negative", b'{"token": "t", "devices": {"pipe": {"pid": -1, "create_time": 1.0}}}'),
    ("pid-is-huge", b'{"token": "t", "devices": {"pipe": {"pid": 99999999999999999999, "create_time": 1.0}}}'),
    ("pid-is-a-bool", b'{"token": "t", "devices": {"pipe": {"pid": true, "create_time": 1.0}}}'),
    ("create-time-is-a-string", b'{"token": "t", "devices": {"pipe": {"pid": 5, "create_time": "x"}}}'),
    ("create-time-is-nan", b'{"token": "t", "devices": {"pipe": {"pid": 5, "create_time": NaN}}}'),
    ("token-is-a-number", b'{"token": 5, "devices": {}}'),
    ("top-level-is-a-list", b"[]"),
    ("invalid-json", b"{not json"),
    ("truncated", b'{"token": "t", "supervisor": {"pid": 1, "create_ti'),
    ("empty", b""),
    ("not-utf8", b"\xff\xfe{}"),
]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process of ours, without any run token."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def start_sleep(token: str | None = None, user: int | None = None) -> subprocess.Popen[bytes]:
    """``sleep`` with ``token`` in its environment, returned once /proc shows that environment:
    right after exec (when Popen returns) the kernel may not have set it up yet."""
    env = {**os.environ, RUN_TOKEN_ENV: token} if token is not None else None
    proc = subprocess.Popen(["sleep", "60"], env=env, user=user)
    if token is not None:
        ps = psutil.Process(proc.pid)
        wait_for(
            lambda: ps.environ().get(RUN_TOKEN_ENV) == token,
            10.0,
            "the new process's environment",
            wake=processes_exit(lambda: [ps]),
        )
    return proc


def _plant(run_dir: Path, token: str | None, proc: psutil.Process, name: str = "pipe") -> None:
    run_dir.mkdir(mode=0o700, exist_ok=True)
    state: dict[str, Any] = {
        "supervisor": {"pid": 1, "create_time": 0.0},
        "devices": {name: {"pid": proc.pid, "create_time": proc.create_time()}},
    }
    if token is not None:
        state["token"] = token
    (run_dir / "state.json").write_text(json.dumps(state))


# -- state.json: reading -------------------------------------------------------------------


@pytest.mark.parametrize("content", [c for _, c in CORRUPT_STATES], ids=[i for i, _ in CORRUPT_STATES])
def test_a_corrupt_state_file_is_ignored_with_one_warning_and_removed(short_tmp: Path, content: bytes) -> None:
    run_dir = RunDir(short_tmp / "run")
    run_dir.prepare()
    run_dir.state_file.write_bytes(content)
    with pytest.raises(StateCorrupt):
        parse_state(content)
    lines = stop_leftovers(run_dir)
    assert len(lines) == 1 and lines[0].startswith(f"warning: ignoring corrupt state file {run_dir.state_file}: "), (
        lines
    )
    assert "\n" not in lines[0]
    assert not run_dir.state_file.exists()


def test_a_state_file_that_is_a_directory_or_a_fifo_is_ignored(short_tmp: Path) -> None:
    run_dir = RunDir(short_tmp / "run")
    run_dir.prepare()
    run_dir.state_file.mkdir()
    assert stop_leftovers(run_dir)[0].startswith("warning: ignoring corrupt state file")
    run_dir.state_file.rmdir()
    # A FIFO would block a plain open() for ever.
    os.mkfifo(run_dir.state_file)
    assert stop_leftovers(run_dir)[0].startswith("warning: ignoring corrupt state file")


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=12,
    )


def _state_like() -> st.SearchStrategy[bytes]:
    """Documents shaped like a state file, with arbitrary values where the fields go."""
    record = st.fixed_dictionaries(
        {},
        optional={
            "pid": _json_values() | st.integers(),
            "create_time": _json_values(),
            "control_endpoint": _json_values(),
        },
    )
    doc = st.fixed_dictionaries(
        {},
        optional={
            "token": _json_values(),
            "supervisor": _json_values(),
            "devices": st.dictionaries(st.text(max_size=6), record | _json_values(), max_size=3) | _json_values(),
        },
    )
    return doc.map(lambda d: json.dumps(d).encode())


@settings(max_examples=300, deadline=None)
@given(content=st.binary(max_size=200) | _state_like())
def test_any_bytes_in_the_state_file_never_make_leftover_handling_raise(content: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="pdt-", dir="/tmp") as d:
        run_dir = RunDir(Path(d) / "run")
        run_dir.prepare()
        run_dir.state_file.write_bytes(content)
        # No live process can carry the random token of another run: nothing is ever signalled.
        lines = stop_leftovers(run_dir, stop_timeout=0.1)
        assert all(line.startswith("warning: ") and "\n" not in line for line in lines), lines
        assert not run_dir.state_file.exists()


# -- state.json: writing -------------------------------------------------------------------


def test_write_state_records_the_issued_token_and_reads_back(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runstate, "_issued_token", None)
    monkeypatch.delenv(RUN_TOKEN_ENV, raising=False)
    run_dir = RunDir(short_tmp / "run")
    run_dir.prepare()
    run_dir.write_state({})
    state = run_dir.read_state()
    assert state is not None and state.token is None, "no token issued: none may be recorded"
    monkeypatch.setenv(RUN_TOKEN_ENV, "inherited-from-a-parent")
    token = issue_run_token()
    assert token != "inherited-from-a-parent" and os.environ[RUN_TOKEN_ENV] == token
    assert issue_run_token() == token, "a second call must not orphan the devices already started"
    run_dir.write_state(
        {"pipe": {"pid": 42, "create_time": 1.5, "control_endpoint": run_dir.device_control_endpoint("pipe")}}
    )
    state = run_dir.read_state()
    assert state is not None and state.token == token
    assert [(d.name, d.pid, d.create_time) for d in state.devices] == [("pipe", 42, 1.5)]
    assert stat.S_IMODE(run_dir.state_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["ctl", "state.json"], "a temp file was left"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO])
@pytest.mark.parametrize("failing", ["write", "replace"])
def test_a_failed_state_write_raises_StateWriteError_keeps_the_old_file_and_no_temp_file(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, code: int, failing: str
) -> None:
    run_dir = RunDir(short_tmp / "run")
    run_dir.prepare()
    run_dir.write_state({}, token="old")

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    if failing == "write":
        real_fdopen = os.fdopen

        class FailingFile:
            def __init__(self, fd: int, mode: str) -> None:
                self.f = real_fdopen(fd, mode)

            def __enter__(self) -> FailingFile:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> int:
                raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fdopen", FailingFile)
    else:
        monkeypatch.setattr(os, failing, fail)
    with pytest.raises(StateWriteError) as raised:
        run_dir.write_state({}, token="new")
    monkeypatch.undo()
    assert raised.value.errno == code
    assert str(raised.value) == f"cannot write {run_dir.state_file}: {os.strerror(code)}"
    state = run_dir.read_state()
    assert state is not None and state.token == "old", "the previous state must survive a failed write"
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["ctl", "state.json"], "a temp file was left"


@pytest.fixture
def full_tmpfs(short_tmp: Path) -> Iterator[Path]:
    """A real, full filesystem: a one-page tmpfs (mode 0700) filled to the last byte."""
    mount = short_tmp / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as raised:
                while True:
                    os.write(fd, b"x" * 1024)
        finally:
            os.close(fd)
        assert raised.value.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_filesystem_gives_StateWriteError_and_leaves_no_temp_file(full_tmpfs: Path) -> None:
    run_dir = RunDir(full_tmpfs / "run")
    # Directories, the lock and sockets need inodes only: the run dir still works.
    with run_dir.locked():
        with pytest.raises(StateWriteError) as raised:
            run_dir.write_state({"pipe": {"pid": 1, "create_time": 1.0}}, token="t")
        assert raised.value.errno == errno.ENOSPC
        assert str(raised.value) == f"cannot write {run_dir.state_file}: No space left on device"
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["ctl", "lock"]


# -- validation and creation ----------------------------------------------------------------


def test_a_missing_run_dir_is_created_0700_with_its_parents(short_tmp: Path) -> None:
    run_dir = RunDir(short_tmp / "a" / "b" / "run")
    run_dir.validate(["pipe"])
    run_dir.prepare()
    assert stat.S_IMODE(run_dir.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir.path / "ctl").stat().st_mode) == 0o700


def test_our_own_run_dir_readable_by_others_is_tightened_to_0700(short_tmp: Path) -> None:
    path = short_tmp / "run"
    path.mkdir()
    path.chmod(0o755)
    RunDir(path).prepare()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_symlinked_parents_are_followed(short_tmp: Path) -> None:
    (short_tmp / "real").mkdir(mode=0o700)
    (short_tmp / "link").symlink_to(short_tmp / "real")
    RunDir(short_tmp / "link" / "run").prepare()
    assert (short_tmp / "real" / "run" / "ctl").is_dir()


def _mode_and_owner(path: Path) -> tuple[int, int]:
    st_ = os.stat(path)
    return st_.st_mode, st_.st_uid


def test_a_foreign_owned_run_dir_is_refused_and_never_chmodded(short_tmp: Path) -> None:
    path = short_tmp / "run"
    path.mkdir()
    path.chmod(0o755)
    os.chown(path, NOBODY, NOBODY)
    before = _mode_and_owner(path)
    for attempt in (RunDir(path).validate, RunDir(path).prepare):
        with pytest.raises(RunDirError, match=f"is owned by uid {NOBODY}, not by us"):
            attempt()
    with pytest.raises(RunDirError), RunDir(path).locked():
        pass
    assert _mode_and_owner(path) == before
    assert list(path.iterdir()) == []


def test_a_symlinked_run_dir_is_refused_and_its_target_untouched(short_tmp: Path) -> None:
    shared = short_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (short_tmp / "run").symlink_to(shared)
    for attempt in (RunDir(short_tmp / "run").validate, RunDir(short_tmp / "run").prepare):
        with pytest.raises(RunDirError, match="is a symlink"):
            attempt()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_run_dir_writable_by_others_is_refused(short_tmp: Path, mode: int) -> None:
    path = short_tmp / "run"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(RunDirError, match="is writable by others"):
        RunDir(path).prepare()
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_parent_writable_by_others_without_sticky_bit_is_refused(short_tmp: Path) -> None:
    open_dir = short_tmp / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(RunDirError, match=f"parent {open_dir} is writable by others"):
        RunDir(open_dir / "run").validate()
    open_dir.chmod(0o1777)  # sticky, like /tmp: nobody can rename our entries
    RunDir(open_dir / "run").prepare()


def test_a_foreign_or_symlinked_ctl_is_refused(short_tmp: Path) -> None:
    run_dir = RunDir(short_tmp / "run")
    run_dir.prepare()
    ctl = run_dir.path / "ctl"
    os.chown(ctl, NOBODY, NOBODY)
    with pytest.raises(RunDirError, match="ctl is owned by uid"):
        run_dir.prepare()
    ctl.rmdir()
    (short_tmp / "elsewhere").mkdir()
    ctl.symlink_to(short_tmp / "elsewhere")
    with pytest.raises(RunDirError, match="is a symlink"):
        run_dir.validate()
    with pytest.raises(RunDirError, match="ctl is a symlink"):
        run_dir.prepare()


def test_paths_that_are_files_are_refused(short_tmp: Path) -> None:
    (short_tmp / "file").write_text("")
    with pytest.raises(RunDirError, match=f"run dir {short_tmp}/file is not a directory"):
        RunDir(short_tmp / "file").validate()
    for below in ("file/run", "file/a/run"):
        with pytest.raises(RunDirError, match=f"{short_tmp}/file is not a directory"):
            RunDir(short_tmp / below).validate()
        with pytest.raises(RunDirError, match=f"{short_tmp}/file is not a directory"):
            RunDir(short_tmp / below).prepare()


def test_an_unwritable_run_dir_or_parent_is_refused(immutable: Path) -> None:
    with pytest.raises(RunDirError, match=f"run dir {immutable} is not writable"):
        RunDir(immutable).validate()
    with pytest.raises(RunDirError, match=f"cannot create run dir {immutable}/run: {immutable} is not writable"):
        RunDir(immutable / "run").validate()


def test_socket_paths_must_fit_the_unix_socket_limit(short_tmp: Path) -> None:
    base = short_tmp / ("d" * (107 - len(f"{short_tmp}/") - len("/supervisor.sock")))
    RunDir(base).validate()
    with pytest.raises(RunDirError, match=r"ctl/long-name\.sock is 1\d\d bytes, over the 107-byte unix socket limit"):
        RunDir(base).validate(["long-name"])
    with pytest.raises(RunDirError, match="supervisor.sock is 108 bytes"):
        RunDir(Path(f"{base}x")).validate()


@pytest.mark.parametrize("where", ["supervisor.sock", "ctl/pipe.sock"])
@pytest.mark.parametrize("what", ["directory", "file"])
def test_something_not_a_socket_at_a_socket_path_is_refused_and_kept(short_tmp: Path, where: str, what: str) -> None:
    run_dir = RunDir(short_tmp / "run")
    run_dir.prepare()
    squatter = run_dir.path / where
    squatter.mkdir() if what == "directory" else squatter.write_text("keep me")
    with pytest.raises(RunDirError, match=f"{squatter} exists and is not a socket"):
        run_dir.validate(["pipe"])
    assert remove_stale_sockets([squatter]) == []
    assert squatter.exists()


def test_only_sockets_nobody_listens_on_are_removed(short_tmp: Path) -> None:
    stale, live = short_tmp / "stale.sock", short_tmp / "live.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(live))
        listener.listen()
        assert remove_stale_sockets([stale, live]) == [str(stale)]
        assert live.exists() and not stale.exists()


# -- trust: which process may be signalled --------------------------------------------------


def test_identify_needs_the_token_in_the_process_environment(sleeper: subprocess.Popen[bytes]) -> None:
    proc = psutil.Process(sleeper.pid)
    assert identify(proc.pid, proc.create_time(), None) is None
    assert identify(proc.pid, proc.create_time(), "some-token") is None
    tokened = start_sleep("some-token")
    try:
        ps = psutil.Process(tokened.pid)
        found = identify(ps.pid, ps.create_time(), "some-token")
        assert found is not None and found.pid == tokened.pid
        assert identify(ps.pid, ps.create_time(), "other-token") is None
        assert identify(ps.pid, ps.create_time() - 100.0, "some-token") is None, "a reused pid"
    finally:
        tokened.kill()
        tokened.wait(10)
    assert identify(ps.pid, ps.create_time(), "some-token") is None, "a dead process"


def test_identify_refuses_a_process_of_another_user_even_with_the_token() -> None:
    foreign = start_sleep("some-token", user=NOBODY)
    try:
        ps = psutil.Process(foreign.pid)
        assert ps.uids().real == NOBODY
        assert identify(ps.pid, ps.create_time(), "some-token") is None
    finally:
        foreign.kill()
        foreign.wait(10)


def test_stop_leftovers_never_signals_a_planted_process_without_the_token(
    short_tmp: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    run_dir = RunDir(short_tmp / "run")
    proc = psutil.Process(sleeper.pid)
    _plant(run_dir.path, None, proc)
    assert stop_leftovers(run_dir, stop_timeout=0.5) == [
        f"warning: state file {run_dir.state_file} has no run token: its 1 recorded device(s) cannot be "
        "verified and are left alone"
    ]
    assert sleeper.poll() is None
    _plant(run_dir.path, "forged", proc)
    assert stop_leftovers(run_dir, stop_timeout=0.5) == []
    assert sleeper.poll() is None


def test_stop_leftovers_terminates_a_real_leftover_of_the_recorded_run(short_tmp: Path) -> None:
    run_dir = RunDir(short_tmp / "run")
    leftover = start_sleep("the-run")
    try:
        _plant(run_dir.path, "the-run", psutil.Process(leftover.pid))
        # No control socket: the planted record has none, so SIGTERM it is.
        ps = psutil.Process(leftover.pid)
        assert stop_leftovers(run_dir, stop_timeout=5.0) == [
            f"sent SIGTERM to leftover device pipe (pid {leftover.pid})"
        ]
        assert not ps.is_running(), "stop_leftovers waits for (and, being its parent here, reaps) the leftover"
    finally:
        leftover.kill()
        leftover.wait(10)


def test_a_recorded_control_endpoint_outside_our_ctl_dir_is_never_used(short_tmp: Path) -> None:
    run_dir = RunDir(short_tmp / "run")
    leftover = start_sleep("the-run")
    elsewhere = short_tmp / "elsewhere.sock"
    try:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(elsewhere))
            listener.listen()
            ps = psutil.Process(leftover.pid)
            run_dir.path.mkdir(mode=0o700)
            run_dir.state_file.write_text(
                json.dumps(
                    {
                        "token": "the-run",
                        "devices": {
                            "pipe": {
                                "pid": ps.pid,
                                "create_time": ps.create_time(),
                                "control_endpoint": f"ipc://{elsewhere}",
                            }
                        },
                    }
                )
            )
            assert stop_leftovers(run_dir, stop_timeout=5.0) == [
                f"sent SIGTERM to leftover device pipe (pid {leftover.pid})"
            ]
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()
    finally:
        leftover.kill()
        leftover.wait(10)
