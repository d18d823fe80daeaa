"""The run directory through the real command line: `check` and `up` refuse a run dir they
cannot use or trust with one line and exit 78, without touching it; `up` survives any corrupt
state file and a full disk; a process named in a planted state file is never signalled unless
it carries the recorded run's token."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.cli import RUN_DIR, Up, cli, describe, recorded_state, write_topology
from support.topologies import PIPELINE
from test_rundir_state import CORRUPT_STATES, start_sleep

from procdevices.supervisor.runstate import RUN_TOKEN_ENV

NOBODY = 65534


@pytest.fixture
def config(short_tmp: Path) -> Path:
    return write_topology(short_tmp, PIPELINE, pool_size=0)


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 78 with exactly one line on stderr (no traceback) containing every needle."""
    assert result.returncode == 78, describe(result)
    assert result.stderr.startswith("procdevices: ") and result.stderr.count("\n") == 1, describe(result)
    for needle in needles:
        assert needle in result.stderr, describe(result)
    assert result.stdout == "", describe(result)


def check_and_up(config: Path, *extra: str) -> list[subprocess.CompletedProcess[str]]:
    return [cli(command, *extra, config=config) for command in ("check", "up")]


def test_check_passes_and_up_runs_with_a_fresh_run_dir(config: Path) -> None:
    # The baseline the refusals below are measured against.
    assert cli("check", config=config).returncode == 0
    with Up(config) as up:
        up.wait_states()
        run_dir = config.parent / RUN_DIR
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert up.cli("down").returncode == 0
        assert up.wait_exit() == 0
        up.assert_clean_stop(["pipe"])


# -- corrupt state ----------------------------------------------------------------------------


def _records(state: dict[str, Any], pid: int) -> bool:
    """Whether a state file records the device ``pipe`` as process ``pid``."""
    devices = state.get("devices")
    record = devices.get("pipe") if isinstance(devices, dict) else None
    return isinstance(record, dict) and record.get("pid") == pid


@pytest.mark.parametrize("content", [c for _, c in CORRUPT_STATES], ids=[i for i, _ in CORRUPT_STATES])
@pytest.mark.timeout(60)
def test_up_starts_despite_a_corrupt_state_file_with_one_warning(config: Path, content: bytes) -> None:
    run_dir = config.parent / RUN_DIR
    run_dir.mkdir(mode=0o700)
    (run_dir / "state.json").write_bytes(content)
    with Up(config) as up:
        pid = up.wait_states()["pipe"]["pid"]
        warnings = [line for line in up.log().splitlines() if "corrupt state file" in line]
        assert len(warnings) == 1 and warnings[0].split(" ", 1)[1].startswith(
            f"WARNING procdevices: ignoring corrupt state file {run_dir}/state.json: "
        ), up.log_tail()
        assert "Traceback" not in up.log()
        # The running supervisor has replaced it with its own, valid state.
        recorded = recorded_state(run_dir, lambda state: _records(state, pid), f"naming pipe's pid {pid}")
        assert set(recorded["devices"]) == {"pipe"}


# -- trust ------------------------------------------------------------------------------------


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A real process of ours that is no device (no run token), or a forged one."""
    proc = start_sleep("not-the-recorded-token")
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("token", [None, "forged-token"])
@pytest.mark.timeout(60)
def test_up_never_signals_a_planted_process_without_the_run_token(
    config: Path, bystander: subprocess.Popen[bytes], token: str | None
) -> None:
    # What a user with write access to the state file could plant: one of our processes, by
    # its world-readable pid and create time.
    run_dir = config.parent / RUN_DIR
    run_dir.mkdir(mode=0o700)
    ps = psutil.Process(bystander.pid)
    state: dict[str, object] = {
        "devices": {
            "pipe": {
                "pid": ps.pid,
                "create_time": ps.create_time(),
                "control_endpoint": f"ipc://{run_dir}/ctl/pipe.sock",
            }
        }
    }
    if token is not None:
        state["token"] = token
    (run_dir / "state.json").write_text(json.dumps(state))
    with Up(config) as up:
        up.wait_states()
        assert bystander.poll() is None
        assert up.cli("down").returncode == 0
        assert up.wait_exit() == 0
    assert bystander.poll() is None and ps.is_running()
    assert "leftover" not in up.log()
    if token is None:
        assert f"WARNING procdevices: state file {run_dir}/state.json has no run token" in up.log(), up.log_tail()


@pytest.mark.timeout(60)
def test_up_stops_a_real_leftover_that_carries_the_recorded_token(config: Path) -> None:
    run_dir = config.parent / RUN_DIR
    run_dir.mkdir(mode=0o700)
    leftover = start_sleep("the-dead-run")
    try:
        ps = psutil.Process(leftover.pid)
        (run_dir / "state.json").write_text(
            json.dumps(
                {
                    "token": "the-dead-run",
                    "supervisor": {"pid": 1, "create_time": 0.0},
                    "devices": {
                        "pipe": {
                            "pid": ps.pid,
                            "create_time": ps.create_time(),
                            "control_endpoint": f"ipc://{run_dir}/ctl/pipe.sock",
                        }
                    },
                }
            )
        )
        with Up(config) as up:
            up.wait_states()
            # Nothing listens on its control socket: `up` falls back to SIGTERM.
            assert leftover.wait(10) == -15
            assert f"sent SIGTERM to leftover device pipe (pid {ps.pid})" in up.log(), up.log_tail()
    finally:
        if leftover.poll() is None:
            leftover.kill()
        leftover.wait(10)


@pytest.mark.timeout(60)
def test_the_devices_carry_the_token_recorded_in_the_state_file(config: Path) -> None:
    with Up(config) as up:
        pid = up.wait_states()["pipe"]["pid"]
        recorded = recorded_state(config.parent / RUN_DIR, lambda state: _records(state, pid), f"naming pid {pid}")
        assert len(recorded["token"]) == 32
        assert psutil.Process(pid).environ()[RUN_TOKEN_ENV] == recorded["token"]


@pytest.mark.timeout(60)
def test_a_foreign_owned_run_dir_is_refused_and_left_as_it_was(config: Path) -> None:
    run_dir = config.parent / RUN_DIR
    run_dir.mkdir()
    run_dir.chmod(0o755)
    os.chown(run_dir, NOBODY, NOBODY)
    for result in check_and_up(config):
        assert_refused(result, f"run dir {run_dir} is owned by uid {NOBODY}, not by us")
    st = run_dir.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, NOBODY, NOBODY)
    assert list(run_dir.iterdir()) == []


@pytest.mark.parametrize("via", ["config", "flag"])
@pytest.mark.timeout(60)
def test_a_symlinked_run_dir_is_refused_and_its_target_keeps_its_mode(config: Path, via: str) -> None:
    shared = config.parent / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    link = config.parent / (RUN_DIR if via == "config" else "link")
    link.symlink_to(shared)
    extra = ["--run-dir", str(link)] if via == "flag" else []
    for result in check_and_up(config, *extra):
        assert_refused(result, f"run dir {link} is a symlink")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_run_dir_writable_by_others_is_refused(config: Path) -> None:
    run_dir = config.parent / RUN_DIR
    run_dir.mkdir()
    run_dir.chmod(0o777)
    for result in check_and_up(config):
        assert_refused(result, f"run dir {run_dir} is writable by others (mode 0777)")
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o777


# -- bad paths --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_run_dir_that_is_a_file_or_under_a_file_is_refused(config: Path) -> None:
    file = config.parent / "file"
    file.write_text("not a directory")
    for run_dir in (file, file / "run", file / "a" / "run"):
        for result in check_and_up(config, "--run-dir", str(run_dir)):
            assert_refused(result, f"{file} is not a directory")
    assert file.read_text() == "not a directory"


@pytest.mark.timeout(60)
def test_an_unwritable_run_dir_or_parent_is_refused(config: Path, immutable: Path) -> None:
    for result in check_and_up(config, "--run-dir", str(immutable)):
        assert_refused(result, f"run dir {immutable} is not writable")
    for result in check_and_up(config, "--run-dir", str(immutable / "run")):
        assert_refused(result, f"cannot create run dir {immutable}/run: {immutable} is not writable")


@pytest.mark.parametrize("where", ["supervisor.sock", "ctl/pipe.sock"])
@pytest.mark.timeout(60)
def test_a_directory_at_a_socket_path_is_refused_and_kept(config: Path, where: str) -> None:
    run_dir = config.parent / RUN_DIR
    squatter = run_dir / where
    (run_dir / "ctl").mkdir(mode=0o700, parents=True)
    run_dir.chmod(0o700)
    squatter.mkdir()
    for result in check_and_up(config):
        assert_refused(result, f"{squatter} exists and is not a socket")
    assert squatter.is_dir()


@pytest.mark.parametrize("room", [0, 1])
@pytest.mark.timeout(60)
def test_a_run_dir_flag_too_long_for_the_sockets_is_refused(short_tmp: Path, room: int) -> None:
    # room 0: fits supervisor.sock but not the device's control socket (names count too);
    # room 1: one byte too long for supervisor.sock itself.
    config = write_topology(short_tmp, PIPELINE.replace("[devices.pipe]", "[devices.long-named-pipe]"), pool_size=0)
    run_dir = short_tmp / ("d" * (107 - len(f"{short_tmp}/") - len("/supervisor.sock") + room))
    socket_path = f"{run_dir}/supervisor.sock" if room else f"{run_dir}/ctl/long-named-pipe.sock"
    for result in check_and_up(config, "--run-dir", str(run_dir)):
        # Refused by the topology's own check of the run dir, which names the key too.
        assert_refused(result, socket_path, "107 bytes")
    assert not run_dir.exists()


# -- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def full_run_dir(short_tmp: Path) -> Iterator[Path]:
    """The run dir is a one-page tmpfs (mode 0700), filled to the last byte."""
    run_dir = short_tmp / RUN_DIR
    run_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", str(run_dir)], check=True)
    try:
        fd = os.open(run_dir / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space left on device"):
                while True:
                    os.write(fd, b"x" * 1024)
        finally:
            os.close(fd)
        yield run_dir
    finally:
        subprocess.run(["umount", str(run_dir)], check=True)


@pytest.mark.timeout(60)
def test_up_supervises_on_a_full_disk_with_one_warning(short_tmp: Path, full_run_dir: Path) -> None:
    config = write_topology(short_tmp, PIPELINE, pool_size=1)
    with Up(config) as up:
        up.wait_states()
        assert up.cli("restart", "pipe").returncode == 0, "each restart tries to write the state again"
        warnings = [line for line in up.log().splitlines() if "state.json" in line]
        assert len(warnings) == 1, up.log_tail()
        assert warnings[0].endswith(
            f" WARNING procdevices: cannot write {full_run_dir}/state.json: No space left on device; "
            "supervising without it (after an unclean end, the next `up` can neither adopt nor stop the devices of this run)"
        ), up.log_tail()
        assert not (full_run_dir / "state.json").exists()
        assert up.cli("down").returncode == 0
        assert up.wait_exit() == 0
        up.assert_nothing_left(timeout=10.0)
    assert "Traceback" not in up.log()
    assert sorted(p.name for p in full_run_dir.iterdir()) == ["ctl", "filler", "lock", "logs"], "a temp file was left"
