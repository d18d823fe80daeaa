"""The pytest plugin, run the way users run it: user test files in a fresh pytest process
(pytester), under xdist, with the plugin found through its entry point. Every process such a
run starts inherits a unique environment mark, so that anything left behind is found
independently of the toolkit's own bookkeeping."""

from __future__ import annotations

import re
import shutil
import socket
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest
from support.cli import FileChanges, wait_for

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
MARK = "PROCDEVICES_TOOLKIT_TEST_MARK"

# Warnings are errors in the user's run too: the toolkit must not leak a socket or a file.
# Plugins the user's runs do not need, left out for speed (hypothesis is slow to import).
QUIET = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")

INI = """\
[pytest]
filterwarnings = error
"""

# In the user's run: each test must have cleaned up by the end of its own teardown (the
# watchdogs would otherwise hide a fixture that never cleans up until the run ends).
USER_CONFTEST = """
import psutil
import pytest


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield  # autouse: set up first, torn down after procdevices_topology
    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(child.cmdline()))
        except psutil.Error:
            pass
    assert not left, f"left running after the test: {left}"
"""

USER_TESTS = '''
import os
import signal
import threading
import time

import pytest
import zmq

QUEUE = """
[devices.broker]
kind = "queue"
in = { bind = ["tcp://127.0.0.1:*"] }
out = { bind = ["ipc://{tmp}/workers.sock"] }
"""


@pytest.fixture
def connect():
    """connect(kind, endpoints, subscribe=None): a socket connected to each endpoint; every one
    is closed after the test."""
    context = zmq.Context()
    made = []

    def make(kind, endpoints, subscribe=None):
        sock = context.socket(kind)
        sock.linger = 0
        made.append(sock)
        if subscribe is not None:
            sock.subscribe(subscribe)
        for endpoint in [endpoints] if isinstance(endpoints, str) else endpoints:
            sock.connect(endpoint)
        return sock

    yield make
    for sock in made:
        sock.close()
    context.term()


def recv(sock):
    assert sock.poll(10_000), "nothing arrived within 10s"
    return sock.recv_multipart()


def test_request_reply(procdevices_topology, connect):
    topo = procdevices_topology(QUEUE)
    worker = connect(zmq.REP, topo.endpoint("broker", "out"))
    client = connect(zmq.REQ, topo.endpoint("broker"))
    for n in range(3):
        client.send(b"req %d" % n)
        worker.send_multipart(recv(worker))
        assert recv(client) == [b"req %d" % n]


def test_pubsub(procdevices_topology, connect):
    topo = procdevices_topology({"devices": {"hub": {
        "kind": "forwarder", "in": {"bind": ["tcp://127.0.0.1:*"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}}}})
    sub = connect(zmq.SUB, topo.endpoint("hub", "out"), subscribe=b"")
    pub = connect(zmq.PUB, topo.endpoint("hub"))
    deadline = time.monotonic() + 10
    while not sub.poll(50):  # slow joiner: publish until the subscription is through
        assert time.monotonic() < deadline, "nothing published reached the subscriber"
        pub.send(b"tick")
    assert sub.recv() == b"tick"


def test_pipeline_replicas(procdevices_topology, connect):
    topo = procdevices_topology("""
        [devices.stage]
        kind = "streamer"
        replicas = 2
        in = { bind = ["ipc://{tmp}/stage-{replica}.sock"] }
        out = { bind = ["tcp://127.0.0.1:*"] }
    """.replace("\\n        ", "\\n"))
    pull = connect(zmq.PULL, topo.endpoints["stage"]["out"])
    push = connect(zmq.PUSH, topo.endpoints["stage"]["in"])
    sent = {b"%d" % n for n in range(6)}
    for payload in sorted(sent):
        push.send(payload)
    assert {recv(pull)[0] for _ in sent} == sent


def test_restart_and_pause(procdevices_topology, connect):
    topo = procdevices_topology(QUEUE)
    old = topo.pid("broker")
    topo.kill("broker")
    assert topo.wait_state("broker", "RUNNING")["broker"]["pid"] != old
    worker = connect(zmq.REP, topo.endpoint("broker", "out"))
    client = connect(zmq.REQ, topo.endpoint("broker"))
    topo.pause("broker")
    client.send(b"held")
    assert not worker.poll(300), "a message went through a paused broker"
    topo.resume("broker")
    assert recv(worker) == [b"held"]


def test_fails_after_start(procdevices_topology):
    topo = procdevices_topology(QUEUE)
    assert topo.pid("broker") == -1, "this test fails on purpose"


@pytest.mark.timeout(3)
def test_times_out(procdevices_topology):
    procdevices_topology(QUEUE)
    threading.Event().wait()  # hangs (nothing will set it) until pytest-timeout ends the test


def test_crashes(procdevices_topology):
    procdevices_topology(QUEUE)
    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies: no teardown of any kind
'''

CANNOT_START = '''
import sys


def test_the_plugin_imports_the_toolkit_only_when_used():
    assert "procdevices.pytest_plugin" in sys.modules
    assert "procdevices.testing" not in sys.modules


def test_invalid(procdevices_topology):
    procdevices_topology({"devices": {"broker": {
        "kind": "quoue", "in": {"bind": ["tcp://127.0.0.1:*"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}}}})


def test_bind_fails(procdevices_topology):
    procdevices_topology("""
[devices.blocked]
kind = "streamer"
in = { bind = ["tcp://127.0.0.1:PORT"] }
out = { bind = ["tcp://127.0.0.1:*"] }
""")
'''


def marked(mark: str) -> list[psutil.Process]:
    """Live processes that inherited ``MARK=mark`` (whatever their parent or session)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:160]}")
        except psutil.Error:
            lines.append(f"pid {proc.pid}")
    return "left running:\n  " + "\n  ".join(lines)


@pytest.fixture
def run_mark(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> tuple[str, Path]:
    """A unique environment mark for the user's run, and a short base dir for its topologies.
    Whatever the run leaves is reported (by the test) and then killed (here)."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    monkeypatch.setenv("COLUMNS", "400")  # whole lines in the short test summary
    return mark, short_tmp


def assert_nothing_left(mark: str, base: Path) -> None:
    try:
        # A crashed worker's watchdog finishes its clean-up after the run (its files go last):
        # wait, with a deadline.
        with FileChanges(base) as removed:
            wait_for(
                lambda: not marked(mark) and not any(base.iterdir()),
                20.0,
                "every process and file of the user's run to be gone",
                wake=removed,
                detail=lambda: f"{describe(marked(mark))}\nfiles: {sorted(base.rglob('*'))}",
            )
    finally:
        for proc in marked(mark):
            proc.kill()
        for path in base.iterdir():
            shutil.rmtree(path, ignore_errors=True)


def docs_blocks() -> list[str]:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    return blocks


def docs_example() -> str:
    """The first pytest example of docs/testing.md, verbatim."""
    examples = [b for b in docs_blocks() if "def test_" in b]
    assert examples, f"no pytest example in {DOCS}"
    return examples[0]


def test_the_docs_example_without_pytest_runs_as_a_script(
    pytester: pytest.Pytester, run_mark: tuple[str, Path]
) -> None:
    # Verbatim, alone: a reader pastes it into a file and runs it.
    (script,) = [b for b in docs_blocks() if "class BrokerTest(unittest.TestCase)" in b]
    mark, _ = run_mark
    path = pytester.makepyfile(docs_script=script)
    result = pytester.run(sys.executable, str(path), timeout=50)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["tcp://127.0.0.1:*"])
    result.stderr.fnmatch_lines(["Ran 1 test in *", "OK"])
    assert not marked(mark), describe(marked(mark))


def test_user_tests_run_in_parallel_pass_fail_and_leave_nothing(
    pytester: pytest.Pytester, run_mark: tuple[str, Path]
) -> None:
    mark, base = run_mark
    pytester.makeini(INI)
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user=USER_TESTS, test_docs_example=docs_example())
    result = pytester.runpytest_subprocess(
        "-n", "4", "-p", "procdevices", *QUIET, f"--procdevices-base-dir={base}", "-rA", timeout=50
    )
    try:
        result.assert_outcomes(passed=6, failed=3)  # and no error: every teardown found nothing left
        result.stdout.fnmatch_lines_random(
            [
                "PASSED test_user.py::test_request_reply",
                "PASSED test_user.py::test_pubsub",
                "PASSED test_user.py::test_pipeline_replicas",
                "PASSED test_user.py::test_restart_and_pause",
                "PASSED test_docs_example.py::test_request_reply_through_the_broker",
                "PASSED test_docs_example.py::test_the_broker_comes_back_after_a_crash",
                "FAILED test_user.py::test_fails_after_start - AssertionError: this test fails on purpose*",
                "FAILED test_user.py::test_times_out - Failed: Timeout (>3.0s) from pytest-timeout.",
                "FAILED test_user.py::test_crashes - worker 'gw*' crashed while running 'test_user.py::test_crashes'",
                # A failed test carries its supervisor's log.
                "*- procdevices topology 1 log -*",
                "*procdevices: broker: RUNNING (pid *) in=tcp://127.0.0.1:* out=ipc://*/workers.sock",
            ]
        )
    finally:
        assert_nothing_left(mark, base)


def test_a_topology_that_cannot_start_fails_the_test_with_the_reason_and_the_log(
    pytester: pytest.Pytester, run_mark: tuple[str, Path]
) -> None:
    mark, base = run_mark
    pytester.makeini(INI)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        pytester.makeconftest(USER_CONFTEST)
        pytester.makepyfile(test_cannot_start=CANNOT_START.replace("PORT", str(port)))
        result = pytester.runpytest_subprocess(
            "-p", "procdevices", *QUIET, f"--procdevices-base-dir={base}", "-rA", timeout=50
        )
    try:
        result.assert_outcomes(passed=1, failed=2)
        result.stdout.fnmatch_lines_random(
            [
                "FAILED test_cannot_start.py::test_invalid - Failed: procdevices topology 1 did not come up: procdevices: "
                f"invalid configuration: {base}/pdt-*/topology.toml: devices.broker.kind: unknown kind 'quoue': *did you "
                "mean 'queue'?",
                "FAILED test_cannot_start.py::test_bind_fails - Failed: procdevices topology 1 did not come up: device "
                f"blocked is FATAL: could not start: in socket: bind to tcp://127.0.0.1:{port} failed: Address already "
                "in use*",
                "*- procdevices topology 1 log -*",
                f"*procdevices: blocked: could not start: in socket: bind to tcp://127.0.0.1:{port} failed*",
                "*procdevices: blocked: FATAL*",
            ]
        )
        # The reason is the message, not a traceback into the toolkit.
        output = result.stdout.str()
        assert "pytest_plugin.py" not in output and "testing.py" not in output, output
        assert "During handling" not in output, output
    finally:
        assert_nothing_left(mark, base)


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_disabled=textwrap.dedent("""\
        def test_uses_the_fixture(procdevices_topology):
            pass
        """)
    )
    result = pytester.runpytest_subprocess("-p", "no:procdevices", *QUIET, timeout=50)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'procdevices_topology' not found*"])
