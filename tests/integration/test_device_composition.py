"""Device is composed of one module per job; what crosses to a device process is its recorded
setup, never live state; and the device process loads none of the caller's modules."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from procdevices import ProcessProxy, ProcessProxySteerable, ThreadDevice
from procdevices.devices.launch import FORKSERVER_PRELOAD

pytestmark = pytest.mark.timeout(30)

# What only callers of a device use: a device process that loaded them paid for them for nothing.
CALLER_MODULES = ["procdevices.devices.remote", "procdevices.control.client", "procdevices.devices.launch"]


def test_a_pickled_device_carries_its_recorded_setup_and_its_settings() -> None:
    dev = ProcessProxySteerable(zmq.ROUTER, zmq.DEALER, zmq.PUB, zmq.PAIR)
    dev.bind_in("tcp://127.0.0.1:1")
    dev.connect_out("tcp://127.0.0.1:2")
    dev.setsockopt_mon(zmq.SNDHWM, 5)
    port = dev.bind_ctrl_to_random_port("tcp://127.0.0.1")
    dev.stop_linger = 0.25
    copy = pickle.loads(pickle.dumps(dev))
    assert copy._setups == dev._setups
    assert copy._setup_of("ctrl").binds == [f"tcp://127.0.0.1:{port}"]
    assert copy._random_addrs == [f"tcp://127.0.0.1:{port}"]
    assert (copy.stop_linger, copy.mon_type, copy.ctrl_type) == (0.25, zmq.PUB, zmq.PAIR)


def test_record_setup_records_what_the_role_methods_would_and_refuses_a_missing_role() -> None:
    by_calls = ProcessProxy(zmq.SUB, zmq.PUB, zmq.PUB)
    by_calls.setsockopt_in(zmq.SUBSCRIBE, b"")
    by_calls.bind_in("ipc://@a")
    by_calls.connect_in("tcp://127.0.0.1:5")
    by_calls.bind_mon("ipc://@m")
    at_once = ProcessProxy(zmq.SUB, zmq.PUB, zmq.PUB)
    at_once.record_setup("in", sockopts=[(zmq.SUBSCRIBE, b"")], binds=["ipc://@a"], connects=["tcp://127.0.0.1:5"])
    at_once.record_setup("mon", binds=["ipc://@m"])
    assert at_once._setups == by_calls._setups
    with pytest.raises(ValueError, match="ProcessProxy has no 'ctrl' socket"):
        at_once.record_setup("ctrl", binds=["ipc://@c"])
    assert "ctrl" not in at_once._setups


def test_a_device_asked_through_its_control_socket_still_pickles_without_its_live_state(short_tmp: Path) -> None:
    dev = ThreadDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.context_factory = zmq.Context  # its own context: nothing shared with the test
    dev.bind_in(f"ipc://{short_tmp}/in")
    dev.bind_out(f"ipc://{short_tmp}/out")
    dev.start()
    try:
        dev.ping()  # the caller's side of the control socket now exists, with a live socket
        assert dev._remote is not None
        copy = pickle.loads(pickle.dumps(dev))
    finally:
        dev.stop()
    assert (copy._remote, copy._runtime, copy._ready, copy.launcher) == (None, None, None, None)
    assert copy._sockets == [] and copy._role_sockets == {}
    assert copy._setup_of("in").binds == [f"ipc://{short_tmp}/in"]
    assert dev.done and dev._remote is None


def test_the_device_process_loads_none_of_the_callers_modules() -> None:
    # What a device process imports: its entry point and every device class (the fork
    # server's and the warm pool's preload).
    probe = (
        "import importlib, sys\n"
        f"for module in {FORKSERVER_PRELOAD!r}:\n"
        "    importlib.import_module(module)\n"
        f"print([m for m in {CALLER_MODULES!r} if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=20, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
