"""Descriptors are planned: ``up`` raises its soft open-file limit to the hard one, and
``check``/``up`` refuse (one line, exit 78, nothing created) a topology whose supervisor would
run out of descriptors, where libzmq would abort it on the next incoming connection."""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from support.cli import CLI, CLI_TIMEOUT, RUN_DIR, Up, describe, write_topology

from procdevices.cli import locate
from procdevices.supervisor import fdplan


def streamers(count: int) -> str:
    """``count`` streamers, each binding two ipc endpoints (5 supervisor descriptors each)."""
    return "\n".join(
        f'[devices.d{i}]\nkind = "streamer"\nin = {{ bind = ["ipc://i{i}"] }}\nout = {{ bind = ["ipc://o{i}"] }}\n'
        for i in range(count)
    )


def limited(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_limited(*args: str, config: Path, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "-c", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT * 2,
        preexec_fn=limited(soft, hard),
    )


class LimitedUp(Up):
    """``up`` started under an open-file limit of (soft, hard)."""

    def __init__(self, config: Path, soft: int, hard: int) -> None:
        super().__init__(config)
        self.rlimit = (soft, hard)

    def start(self) -> LimitedUp:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "up", "-c", str(self.config)],
                cwd=self.directory,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=limited(*self.rlimit),
            )
        self.me = psutil.Process(self.proc.pid)
        return self


def assert_refused(result: subprocess.CompletedProcess[str], count: int, hard: int) -> None:
    assert result.returncode == 78, describe(result)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("procdevices: "), describe(result)
    assert f"{count} device process(es) need about" in result.stderr, describe(result)
    assert f"open-file limit of {hard} (hard)" in result.stderr, describe(result)


@pytest.mark.parametrize(("count", "limit"), [(64, 256), (1024, 1024)])
@pytest.mark.timeout(180)
def test_a_topology_over_the_limit_is_refused_with_one_line_and_nothing_left(
    short_tmp: Path, count: int, limit: int
) -> None:
    config = write_topology(short_tmp, streamers(count), pool_size=0)
    before = sorted(short_tmp.iterdir())
    for command in ("check", "up"):
        assert_refused(run_limited(command, config=config, soft=limit, hard=limit), count, limit)
    # Nothing left behind: no run dir, no socket file, nothing else.
    assert sorted(short_tmp.iterdir()) == before
    assert not (short_tmp / RUN_DIR).exists()


@pytest.mark.timeout(180)
def test_what_fits_runs_with_the_soft_limit_raised_to_the_hard_one(short_tmp: Path) -> None:
    # 24 devices need ~140 descriptors in the supervisor: more than a soft limit of 64 allows,
    # well within the hard 512. A device killed afterwards is restarted.
    count, soft, hard = 24, 64, 512
    config = write_topology(short_tmp, streamers(count), pool_size=0)
    needed = fdplan.plan(locate.topology(str(config), None)).needed
    assert soft < needed <= hard
    assert run_limited("check", config=config, soft=soft, hard=hard).returncode == 0
    with LimitedUp(config, soft, hard) as up:
        devices = up.wait_states(timeout=120)
        assert psutil.Process(up.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
        victim = devices["d7"]["pid"]
        os.kill(victim, 9)
        up.wait_states(timeout=60, check=lambda d: d["d7"]["pid"] not in (None, victim), what="d7 restarted")
        assert not any(d["state"] == "FATAL" for d in up.devices().values())
        assert "internal error" not in up.log() and "Too many open files" not in up.log(), up.log_tail()
        assert up.cli("down").returncode == 0
        assert up.wait_exit(60) == 0
