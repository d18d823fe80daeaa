"""A real, non-editable install: the wheel holds everything `up` needs, run from elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import describe, write_topology
from support.topologies import STREAMER

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_a_wheel_installed_elsewhere_runs_up_from_another_directory(short_tmp: Path) -> None:
    wheels, target, elsewhere = short_tmp / "wheels", short_tmp / "site", short_tmp / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=200
    )
    assert built.returncode == 0, describe(built)
    [wheel] = wheels.glob("procdevices-*.whl")
    # Only procdevices itself into a directory of its own; its dependencies come from this
    # environment. PYTHONPATH puts it ahead of the editable checkout.
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=120
    )
    assert installed.returncode == 0, describe(installed)
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
        )

    where = run("-c", "import procdevices; print(procdevices.__file__)")
    assert where.stdout.strip().startswith(str(target)), describe(where)
    assert (target / "bin" / "procdevices").is_file(), "the console script is installed"
    assert run("-m", "procdevices", "check").returncode == 0, "the embedded default topology is in the wheel"
    program = run("-m", "procdevices", "supervisord-conf", "--program")
    assert program.returncode == 0 and "[program:procdevices]" in program.stdout, describe(program)

    config = write_topology(short_tmp, STREAMER, pool_size=1)
    up = subprocess.Popen(
        [sys.executable, "-m", "procdevices", "up", "-c", str(config)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert up.stderr is not None
        for line in up.stderr:
            if "ready: 1 device process(es) running" in line:
                break
        status = run("-m", "procdevices", "status", "-c", str(config))
        assert status.returncode == 0 and "RUNNING" in status.stdout, describe(status)
        assert run("-m", "procdevices", "down", "-c", str(config)).returncode == 0
        _, rest = up.communicate(timeout=30)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, 9)
            up.communicate()
    assert up.returncode == 0, rest
