"""``procdevices upgrade`` and SIGUSR2: `up` re-executes itself with the procdevices installed
now (same pid) and adopts its own devices; a new version that cannot start changes nothing.

Each test runs `up` from its own copy of the package (PYTHONPATH), so that it can install a
"new version" (a changed ``__version__``, or a broken module) without touching anyone else's."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq
from support.cli import Up, wait_for, write_topology
from support.sequenced import Sequenced
from test_adoption import TOPOLOGY

import procdevices

Ctx = zmq.Context[zmq.Socket[bytes]]


@pytest.fixture
def package(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of procdevices, first on the path of every process the test starts."""
    root = short_tmp / "site"
    shutil.copytree(
        Path(procdevices.__file__).parent, root / "procdevices", ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root / "procdevices"


def _set_version(package: Path, version: str) -> None:
    init = package / "__init__.py"
    text = init.read_text()
    init.write_text(text.replace(f'__version__ = "{procdevices.__version__}"', f'__version__ = "{version}"'))


@pytest.fixture(params=["spawn", "forkserver"])
def up(request: pytest.FixtureRequest, short_tmp: Path, package: Path) -> Iterator[Up]:
    """`up` on the package copy. With forkserver the devices are the fork server's children,
    which exits at the exec: they pass to init, and the new image follows them all the same."""
    config = write_topology(short_tmp, TOPOLOGY, pool_size=1, orphan_grace=20)
    config.write_text(
        config.read_text().replace("[supervisor]\n", f'[supervisor]\nstart_method = "{request.param}"\n', 1)
    )
    with Up(config) as running:
        running.wait_states({"pipe": "RUNNING", "broker": "RUNNING"})
        yield running
        if running.running():
            assert running.cli("down", timeout=30).returncode == 0
        running.assert_nothing_left(10.0)


def _zombies(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]


@pytest.mark.timeout(120)
def test_an_upgrade_under_traffic_runs_the_new_code_and_loses_nothing(up: Up, package: Path, zmq_ctx: Ctx) -> None:
    before = up.devices()
    endpoints = {name: entry["endpoints"] for name, entry in before.items()}
    assert up.status()["supervisor"]["version"] == procdevices.__version__
    _set_version(package, "99.0")
    traffic = Sequenced.through(zmq_ctx, endpoints)
    with traffic:
        wait_for(lambda: len(traffic.got_pipe) > 100, 30, "traffic flows", wake=traffic.wake)
        result = up.cli("upgrade", timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"supervisor {up.pid} runs procdevices 99.0" in result.stdout, result.stdout
        flowing = len(traffic.got_pipe)
        wait_for(lambda: len(traffic.got_pipe) > flowing + 100, 30, "traffic after the upgrade", wake=traffic.wake)
        traffic.stop_sending()
        wait_for(traffic.complete, 30, "every message sent arrived", wake=traffic.wake)
    assert not traffic.errors, traffic.errors
    assert traffic.got_pipe == list(range(traffic.sent_pipe))
    assert sorted(traffic.got_broker) == list(range(traffic.sent_broker))
    status = up.status()
    assert up.running() and status["supervisor"]["pid"] == up.pid, "the pid an outer supervisor watches changed"
    assert status["supervisor"]["version"] == "99.0", "the new code does not run"
    assert status["supervisor"]["adopted"] == 2
    after = {d["name"]: d for d in status["devices"]}
    assert {n: d["pid"] for n, d in after.items()} == {n: d["pid"] for n, d in before.items()}
    assert all(d["restarts"] == 0 and d["state"] == "RUNNING" for d in after.values())
    # The old image's other children (its warm worker, its resource tracker) are reaped as
    # they end: nothing of it stays a zombie.
    up.wait_until(lambda: not _zombies(up.pid) or None, 20, "no zombie child of up")


@pytest.mark.timeout(120)
def test_an_older_version_without_up_modules_is_upgraded_to(up: Up, package: Path) -> None:
    # A roll-back: the version installed now predates serve.UP_MODULES, which this `up`'s
    # preflight reads from it (session 7's cli/serve.py had none).
    serve = package / "cli" / "serve.py"
    text = serve.read_text()
    start = text.index("UP_MODULES = (")
    serve.write_text(text[:start] + text[text.index(")\n", start) + 2 :])
    _set_version(package, "99.0")
    result = up.cli("upgrade", timeout=60)
    assert result.returncode == 0, result.stderr
    assert up.status()["supervisor"]["version"] == "99.0"


# Broken where only `up` looks (the command line still works, as after a bad release): a
# module of the supervisor, or `up`'s own options (cli/main.py builds only the parser of the
# command given, so `check` alone would not see them).
BREAKAGES = {
    "supervisor": ("supervisor/adoption.py", "replace", "this is not python\n"),
    "up-options": ("cli/serve.py", "append", "\n\ndef add_up_arguments(parser):\n    raise RuntimeError('broken')\n"),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("broken", sorted(BREAKAGES))
def test_a_new_version_that_cannot_start_changes_nothing(up: Up, package: Path, zmq_ctx: Ctx, broken: str) -> None:
    before = up.status()
    path, how, text = BREAKAGES[broken]
    module = package / path
    module.write_text(text if how == "replace" else module.read_text() + text)
    result = up.cli("upgrade", timeout=60)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the new version's check failed" in lines[0], result.stderr
    assert "still running the old one" in lines[0]
    status = up.status()
    assert status["supervisor"]["started"] == before["supervisor"]["started"] and up.running()
    assert status["supervisor"]["upgrade"]["state"] == "failed"
    assert {d["pid"] for d in status["devices"]} == {d["pid"] for d in before["devices"]}
    assert "upgrade failed:" in up.log()
    # The devices forwarded all along; a second try is allowed.
    endpoints = {d["name"]: d["endpoints"] for d in status["devices"]}
    traffic = Sequenced.through(zmq_ctx, endpoints)
    with traffic:
        wait_for(lambda: len(traffic.got_pipe) > 10 and len(traffic.got_broker) > 10, 30, "traffic", wake=traffic.wake)
    assert up.cli("upgrade", timeout=60).returncode == 1


@pytest.mark.timeout(90)
def test_sigusr2_upgrades_too(up: Up, package: Path) -> None:
    before = up.status()
    _set_version(package, "98.0")
    # To the whole process group, as `systemctl kill -s USR2` sends it to every process of the
    # unit: the devices ignore it (it is the supervisor's), only `up` upgrades.
    up.signal(signal.SIGUSR2, group=True)
    up.wait_until(
        lambda: (
            (s := up.try_status()) is not None and s["supervisor"]["started"] != before["supervisor"]["started"] or None
        ),
        30,
        "the re-executed supervisor",
    )
    status = up.status()
    assert status["supervisor"]["version"] == "98.0" and status["supervisor"]["pid"] == up.pid
    assert {d["pid"] for d in status["devices"]} == {d["pid"] for d in before["devices"]}
