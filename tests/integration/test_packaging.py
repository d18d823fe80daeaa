"""A real, non-editable install: the wheel holds everything `up` needs, run from elsewhere,
the monitored queue's C loop included where it can be built; without a C compiler the wheel
builds all the same, and the monitored queue runs its Python loop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.cli import describe, write_topology
from support.devices import c_toolchain
from support.topologies import STREAMER

REPO = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
WHICH_LOOP = "from procdevices.devices import monitoredqueuedevice as mq; print(mq.monitored_queue_loop(), mq.C_LOOP_UNAVAILABLE)"


def _install_elsewhere(wheel: Path, target: Path) -> dict[str, str]:
    """Only procdevices itself into a directory of its own; its dependencies come from this
    environment. PYTHONPATH (in the returned environment) puts it ahead of the checkout."""
    installed = subprocess.run(
        [*PIP, "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=120
    )
    assert installed.returncode == 0, describe(installed)
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("PROCDEVICES_MQ_LOOP", None)
    return env


@pytest.mark.timeout(240)
def test_a_wheel_installed_elsewhere_runs_up_from_another_directory(short_tmp: Path) -> None:
    wheels, target, elsewhere = short_tmp / "wheels", short_tmp / "site", short_tmp / "elsewhere"
    elsewhere.mkdir()
    built = subprocess.run(
        [*PIP, "wheel", "--no-deps", "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=200
    )
    assert built.returncode == 0, describe(built)
    [wheel] = wheels.glob("procdevices-*.whl")
    env = _install_elsewhere(wheel, target)

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
    buildable, toolchain = c_toolchain()
    loop = run("-c", WHICH_LOOP)
    assert loop.returncode == 0, describe(loop)
    assert loop.stdout.split()[0] == ("c" if buildable else "python"), f"{toolchain}: {describe(loop)}"
    assert "procdevices/devices/_mqloop.pyi" in zipfile.ZipFile(wheel).namelist(), "the C loop's stub"

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


@pytest.mark.timeout(240)
def test_without_a_c_compiler_the_wheel_builds_and_the_monitored_queue_runs_python(short_tmp: Path) -> None:
    # A copy of the source: the other packaging test builds in the checkout's build/ meanwhile.
    source, wheels, target = short_tmp / "src", short_tmp / "wheels", short_tmp / "site"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "*.so", "__pycache__", ".*_cache", ".procdevices", "bench-results*"
        ),
    )
    env = {**os.environ, "CC": str(short_tmp / "no-such-cc")}
    built = subprocess.run(
        [*PIP, "wheel", "--no-deps", "-w", str(wheels), str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert built.returncode == 0, describe(built)
    [wheel] = wheels.glob("procdevices-*.whl")
    assert not [name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".so")], "no extension built"
    loop = subprocess.run(
        [sys.executable, "-c", WHICH_LOOP],
        cwd=short_tmp,
        env=_install_elsewhere(wheel, target),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loop.returncode == 0, describe(loop)
    assert loop.stdout.startswith("python the extension procdevices.devices._mqloop is not built"), describe(loop)
