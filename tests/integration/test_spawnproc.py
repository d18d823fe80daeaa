"""procdevices' own spawn (devices/spawnproc.py, devices/boot.py) where it differs from
multiprocessing's and a user could notice: which procdevices the child imports, the parent's
sys.path and argv in the child, the interpreter flags, nested starts, and no descriptor left
behind by a start that failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.scripts import FORWARD_ONE, custom_dir, run_script

from procdevices.devices.channel import Channel

# Starts a device of procdevices' own class, forwards nothing, stops it; prints what the
# device process was started with.
START_ONE = """
import json, sys
import psutil, zmq
from procdevices import ProcessDevice

def main():
    dev = ProcessDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.start()
    try:
        print(json.dumps({"pid": dev.pid, "cmdline": psutil.Process(dev.pid).cmdline()}))
    finally:
        dev.stop()

if __name__ == "__main__":
    main()
"""


def _run(script: Path, cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, str(script)], cwd=cwd, capture_output=True, text=True, timeout=50, check=False
    )


def _with_module(short_tmp: Path, name: str, module: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``short_tmp/modules`` (holding ``module`` as ``name``) as its first
    argument: a directory only the script's own sys.path names."""
    modules = short_tmp / "modules"
    modules.mkdir()
    (modules / f"{name}.py").write_text(module)
    path = short_tmp / "script.py"
    path.write_text(script)
    return subprocess.run(
        [sys.executable, str(path), str(modules), *args], capture_output=True, text=True, timeout=50, check=False
    )


@pytest.mark.timeout(60)
def test_a_procdevices_in_the_current_directory_does_not_replace_the_parents(short_tmp: Path) -> None:
    # A `-c` interpreter has the current directory first on its path: a checkout's
    # `procdevices` there must not be what the device process imports.
    cwd = short_tmp / "checkout"
    (cwd / "procdevices").mkdir(parents=True)
    (cwd / "procdevices" / "__init__.py").write_text("raise ImportError('the procdevices of the cwd was imported')\n")
    script = short_tmp / "start_one.py"
    script.write_text(START_ONE)
    done = _run(script, cwd)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["pid"] > 0


@pytest.mark.timeout(60)
def test_the_interpreter_flags_reach_the_device_process(short_tmp: Path) -> None:
    script = short_tmp / "start_one.py"
    script.write_text(START_ONE)
    done = _run(script, short_tmp, "-O", "-X", "dev")
    assert done.returncode == 0, done.stderr
    cmdline = json.loads(done.stdout.splitlines()[-1])["cmdline"]
    assert "-O" in cmdline and "dev" in cmdline and any("procdevices.devices.boot" in a for a in cmdline), cmdline


# Imported (not run): starts a device of its own class at import, as some scripts do. The
# device process imports this module to find the class, and would start one more there, and
# so on: it must be refused at once, as multiprocessing refuses a daemonic process children.
NESTED = """
import zmq
from procdevices import ProcessDevice

class Nested(ProcessDevice):
    '''Exists only in this module, which starts one when it is imported.'''

dev = Nested(zmq.QUEUE, zmq.PULL, zmq.PUSH)
dev.bind_in("tcp://127.0.0.1:*")
dev.start_timeout = 40.0
dev.start()
"""

IMPORT_NESTED = """
import json, sys
sys.path.insert(0, sys.argv[1])  # the module is found only through this, as in the device
try:
    import nested_at_import
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
else:
    nested_at_import.dev.stop()
    print(json.dumps({"error": None}))
"""


@pytest.mark.timeout(60)
def test_a_module_that_starts_a_device_at_import_is_refused_in_the_device(short_tmp: Path) -> None:
    done = _with_module(short_tmp, "nested_at_import", NESTED, IMPORT_NESTED)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # The device process found the module through the parent's sys.path, and refused there.
    assert result["error"] == "DeviceStartError", result
    assert "daemonic processes are not allowed to have children" in result["message"], result


# A device class whose module, each time it is imported, writes down the sys.argv of the
# process importing it: the script's own, then the device process's (which imports it to find
# the class, once boot.main has set its argv and path).
ARGV_PROBE = """
import json, os, sys
from procdevices import ProcessDevice

with open(os.path.join(os.path.dirname(__file__), f"argv-{os.getpid()}.json"), "w") as f:
    json.dump(sys.argv, f)

class Probe(ProcessDevice):
    pass
"""

START_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import zmq
from argv_probe import Probe

def main():
    dev = Probe(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.start()
    print(dev.pid)
    dev.stop()

if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(60)
def test_the_device_process_has_the_parents_argv_and_path(short_tmp: Path) -> None:
    done = _with_module(short_tmp, "argv_probe", ARGV_PROBE, START_PROBE, "alpha")
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[-1])
    modules = short_tmp / "modules"
    expected = [str(short_tmp / "script.py"), str(modules), "alpha"]
    assert json.loads((modules / f"argv-{pid}.json").read_text()) == expected


def test_a_failed_start_leaves_no_descriptor_open() -> None:
    before = set(os.listdir("/proc/self/fd"))

    def start(child_end: Channel) -> None:
        raise OSError("no process today")

    with pytest.raises(OSError, match="no process today"):
        Channel.to_child(start)
    assert set(os.listdir("/proc/self/fd")) == before


# Starts a device with an inheritable descriptor open, then reads what the running device
# process holds and has loaded.
INSIDE = """
import json, os, sys
import zmq
from procdevices import ProcessDevice

def main():
    marker = os.open(sys.argv[1], os.O_RDONLY)
    os.set_inheritable(marker, True)  # what a careless caller leaves open for its children
    dev = ProcessDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.start()
    try:
        fds = []
        for fd in os.listdir(f"/proc/{dev.pid}/fd"):
            try:
                fds.append(os.readlink(f"/proc/{dev.pid}/fd/{fd}"))
            except OSError:
                pass
        with open(f"/proc/{dev.pid}/maps") as f:
            maps = f.read()
    finally:
        dev.stop()
    print(json.dumps({"fds": fds, "maps": maps}))

if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(60)
def test_a_device_process_inherits_no_stray_descriptor_and_loads_no_socket_module(short_tmp: Path) -> None:
    marker = short_tmp / "marker"
    marker.write_text("x")
    script = short_tmp / "inside.py"
    script.write_text(INSIDE)
    done = subprocess.run(
        [sys.executable, str(script), str(marker)], capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stderr
    inside = json.loads(done.stdout.splitlines()[-1])
    assert str(marker) not in inside["fds"], "the device inherited a descriptor nobody gave it"
    # Extension modules show in the process's mappings: multiprocessing's spawn would have
    # loaded both (docs/performance.md, "Session 7").
    loaded = {Path(line.split()[-1]).name.split(".")[0] for line in inside["maps"].splitlines() if ".so" in line}
    assert not loaded & {"_socket", "_multiprocessing"}, sorted(loaded)


# Run by every interpreter the test starts (its directory is on PYTHONPATH): a Python built
# without os.pidfd_open (headers older than Linux 5.3). Each process that ran it leaves a mark.
NO_PIDFD = """
import os
del os.pidfd_open
open(os.path.join(os.path.dirname(__file__), f"no-pidfd-{os.getpid()}"), "w").close()
"""


@pytest.mark.timeout(60)
def test_a_python_without_pidfd_open_still_runs_and_stops_a_device(short_tmp: Path) -> None:
    # docs/devices.md: without pidfds a device does not notice its parent's death, and runs.
    done = run_script(short_tmp, FORWARD_ONE, str(short_tmp), "procdevices:ProcessDevice", sitecustomize=NO_PIDFD)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["got"] == "through" and result["exitcode"] == 0, result
    assert (custom_dir(short_tmp) / f"no-pidfd-{result['pid']}").exists(), "the device process had os.pidfd_open"
