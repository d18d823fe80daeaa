"""Fixtures shared by the whole test suite. Keep them generic and small.

- ``short_tmp``: a short, private directory under /tmp for ipc:// endpoints (an ipc path must
  be shorter than 107 bytes, and pytest's ``tmp_path`` often is not), removed afterwards.
- ``zmq_ctx``: a fresh ``zmq.Context`` for the test's own sockets, destroyed with linger 0.
- ``no_leftover_children`` (autouse): fails a test that leaves a child process behind.
- ``helper_script``: the path of a script in ``tests/helpers/``, to run as a subprocess.
- ``mq_loop``: runs the test once with the monitored queue's C loop, once with its Python
  loop (through ``PROCDEVICES_MQ_LOOP``, which spawned device processes inherit).
- ``immutable``: a directory nobody, root included, can write into (``chattr +i``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

HELPERS = Path(__file__).parent / "helpers"

# How long a child that is already on its way out may take before it counts as left behind.
_EXIT_GRACE = 1.0


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A per-test directory like ``/tmp/pdt-k3j9x2a1``; removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="pdt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _KeepingContext(zmq.Context):  # type: ignore[type-arg]
    """Holds every socket it made until destroy(): a test's sockets are never garbage-collected
    unclosed (a ResourceWarning, which the suite turns into an error)."""

    _kept: list[zmq.Socket[bytes]]

    def socket(self, *args: Any, **kwargs: Any) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = super().socket(*args, **kwargs)
        self._kept.append(sock)
        return sock


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A private context for the test's own sockets; all of them are closed with linger 0
    after the test."""
    ctx = _KeepingContext()
    ctx._kept = []
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)
        ctx._kept.clear()


@pytest.fixture
def helper_script() -> Callable[[str], str]:
    """``helper_script("name.py")`` -> absolute path of ``tests/helpers/name.py``."""

    def locate(name: str) -> str:
        path = HELPERS / name
        assert path.is_file(), f"no helper script {path}"
        return str(path)

    return locate


@pytest.fixture(params=["c", "python"])
def mq_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``"c"`` or ``"python"``: the loop every monitored queue of the test runs, in this
    process and in the device processes it starts."""
    from procdevices.devices import monitoredqueuedevice as mq

    loop: str = request.param
    if loop == "c":
        if mq.C_LOOP_UNAVAILABLE is not None:
            # tests/integration/test_mq_loops.py fails when it should have been built
            pytest.skip(f"the C loop is unavailable: {mq.C_LOOP_UNAVAILABLE}")
        monkeypatch.delenv(mq.LOOP_ENV, raising=False)
    else:
        monkeypatch.setenv(mq.LOOP_ENV, "python")
    assert mq.monitored_queue_loop() == loop
    return loop


def _is_resource_tracker(proc: psutil.Process) -> bool:
    # multiprocessing keeps one resource_tracker per process that ever used spawn; it lives
    # as long as the test process and is not a leak.
    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:  # gone, a zombie, or not ours to inspect
        return False


def leftover_children(grace: float = _EXIT_GRACE) -> list[str]:
    """Children of this process (recursively) still running after ``grace`` seconds, except
    multiprocessing's resource_tracker. Each one found is killed and reaped, so one leaking
    test does not make the next fail."""
    me = psutil.Process()
    children = [c for c in me.children(recursive=True) if not _is_resource_tracker(c)]
    if not children:
        return []
    _, alive = psutil.wait_procs(children, timeout=grace)
    descriptions = []
    for child in alive:
        try:
            descriptions.append(f"pid {child.pid}: {' '.join(child.cmdline())[:200]}")
        except psutil.Error:
            descriptions.append(f"pid {child.pid}")
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return descriptions


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """Asserts that a test leaves no child process behind (resource_tracker allowed)."""
    yield
    leaked = leftover_children()
    assert not leaked, "the test left child processes running:\n  " + "\n  ".join(leaked)


@pytest.fixture
def immutable(short_tmp: Path) -> Iterator[Path]:
    """A directory even root cannot write into (chattr +i: root ignores mode bits)."""
    path = short_tmp / "frozen"
    path.mkdir(mode=0o700)
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
