"""Device output to a file: a worker given ``log_path`` makes it its fds 1 and 2 before the
device runs, so everything the device process writes (Python's print, raw fd writes) lands
there, appended, in a file created 0600."""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from multiprocessing.connection import wait
from pathlib import Path

import pytest
import zmq
from support.devices import run_and_stop, stop_through

from procdevices import ProcessDevice
from procdevices.devices import launch
from procdevices.supervisor.launcher import ProcessLauncher

pytestmark = pytest.mark.timeout(30)


class TalkingDevice(ProcessDevice):
    """Writes through Python's streams and straight to the fds, then forwards."""

    steerable = True  # its run_device still forwards through _forward

    def run_device(self) -> None:
        print("python stdout line")
        print("python stderr line", file=sys.stderr)
        os.write(1, b"raw fd 1\n")
        os.write(2, b"raw fd 2\n")
        # C code writes to fd 1 itself: only the dup2, not a replaced sys.stdout, catches it.
        ctypes.CDLL(None).printf(b"C stdout line\n")
        super().run_device()


def _device(short_tmp: Path) -> bytes:
    dev = TalkingDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    return launch.pickle_device(dev)


def _expect_output(log: Path) -> None:
    text = log.read_text()
    for line in ("python stdout line", "python stderr line", "raw fd 1", "raw fd 2", "C stdout line"):
        assert line in text, text


def test_spawned_device_writes_everything_to_its_log(short_tmp: Path) -> None:
    log = short_tmp / "device.log"
    control = f"ipc://{short_tmp}/ctl"
    pending = launch.spawn_device(_device(short_tmp), control, label="talking", log_path=str(log))
    run_and_stop(pending, control)
    _expect_output(log)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_the_log_is_appended_to_by_a_pooled_worker(short_tmp: Path) -> None:
    log = short_tmp / "device.log"
    log.write_text("an earlier run\n")
    log.chmod(0o600)
    control = f"ipc://{short_tmp}/ctl"
    pool = launch.WorkerPool(1)
    try:
        pool.refill()
        pending = pool.take(_device(short_tmp), control, label="talking", log_path=str(log))
        assert pending is not None
        run_and_stop(pending, control)
    finally:
        pool.close()
    assert log.read_text().startswith("an earlier run\n")
    _expect_output(log)


def test_an_unusable_log_path_does_not_keep_the_device_from_running(
    short_tmp: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    control = f"ipc://{short_tmp}/ctl"
    missing = short_tmp / "no-such-dir" / "device.log"
    pending = launch.spawn_device(_device(short_tmp), control, label="talking", log_path=str(missing))
    run_and_stop(pending, control)
    assert "cannot open the device's log" in capfd.readouterr().err
    assert not missing.exists()


def test_the_supervisors_launcher_passes_the_log_path(short_tmp: Path) -> None:
    # spawn only: a fork server would outlive the test (it lives as long as its parent, the
    # test process). Forked devices run the same process_main, which applies the log.
    log = short_tmp / "talking.log"  # <log_dir>/<instance>.log
    control = f"ipc://{short_tmp}/ctl"
    launcher = ProcessLauncher(0, log_dir=short_tmp)
    device = launcher.launch(_device(short_tmp), control, "talking")
    try:
        report = device.report_fd
        assert report is not None
        assert wait([report, device.sentinel], 20), "the device was not ready in time"
        device.read_report()
        stop_through(control)
        assert wait([device.sentinel], 10), "the device did not stop"
    finally:
        if not wait([device.sentinel], 0):
            device.kill()
        exitcode = device.reap()
        launcher.close()
    assert exitcode == 0
    _expect_output(log)
