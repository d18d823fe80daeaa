"""Collections wait while a process of procdevices starts, and run once it has
(procdevices/collector.py): a device process until its device is loaded, the ``procdevices``
script while it imports its command table.

Paused for the start: no collection walks what the start imports (the benchmark measures what
that saves, docs/performance.md). Running afterwards: a device or a command that ran for days
without collections would never free a reference cycle, and would grow. A program that turned
the collector off keeps it off."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest
import zmq
from support.cli import write_topology
from support.devices import run_and_stop
from support.scripts import FORWARD_ONE, custom_dir, run_script
from support.topologies import STREAMER

from procdevices import ProcessDevice
from procdevices.devices import launch, spawnproc

# Run first by every interpreter the test starts (its directory is on PYTHONPATH): counts the
# collections that start during a start (once the module $STARTED_BY is imported, before
# anything is frozen), and writes the count, with the collector's state, when the process
# exits normally.
RECORD_COLLECTIONS = """
import atexit, gc, json, os, sys
STARTED_BY = os.environ.get("STARTED_BY", "procdevices")
STARTS = []
gc.callbacks.append(
    lambda phase, info: phase == "start" and STARTS.append(STARTED_BY in sys.modules and gc.get_freeze_count() == 0)
)
OFF = os.environ.get("COLLECTOR_OFF") == "1"
if OFF:
    gc.disable()  # the program's choice, made before any code of procdevices runs

def state():
    return {"during_start": sum(STARTS), "enabled": gc.isenabled(), "threshold": gc.get_threshold()[0]}

def write():
    with open(os.path.join(os.path.dirname(__file__), f"gc-{os.getpid()}.json"), "w") as f:
        json.dump(state(), f)

atexit.register(write)
"""

# A device class whose run writes the collector's state in the device process; with
# GC_OFF_IN_MODULE set, its module turns the collector off when the device process imports it.
GC_PROBE = """
import gc, json, os, sys
from procdevices import ProcessDevice

if os.environ.get("GC_OFF_IN_MODULE") == "1":
    gc.disable()


class GcProbe(ProcessDevice):
    def run_with(self, runtime):
        state = sys.modules["sitecustomize"].state()
        state["frozen"] = not any(o is GcProbe for o in gc.get_objects())  # frozen: outside every generation
        with open(os.path.join(os.path.dirname(__file__), f"gc-{os.getpid()}.json"), "w") as f:
            json.dump(state, f)
        super().run_with(runtime)
"""


def _probe_device(short_tmp: Path, **env: str) -> dict[str, int | bool]:
    """The collector's state in a device process of GcProbe, once it runs."""
    modules = short_tmp / "modules"
    modules.mkdir()
    (modules / "gc_probe.py").write_text(GC_PROBE)
    done = run_script(
        short_tmp, FORWARD_ONE, str(modules), "gc_probe:GcProbe", sitecustomize=RECORD_COLLECTIONS, env=env
    )
    assert done.returncode == 0, done.stderr
    pid = json.loads(done.stdout.splitlines()[-1])["pid"]
    state: dict[str, int | bool] = json.loads((modules / f"gc-{pid}.json").read_text())
    return state


@pytest.mark.timeout(60)
def test_a_device_process_loads_with_collections_paused_and_runs_with_them(short_tmp: Path) -> None:
    state = _probe_device(short_tmp)
    assert state["during_start"] == 0, "collections walked the device process's imports (pyzmq, the runtime, its class)"
    assert state["enabled"] is True and state["threshold"] > 0, f"the device runs without collections: {state}"
    assert state["frozen"] is True, "what the start loaded was left for the collections to walk"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["sitecustomize", "the device's module"])
def test_a_device_process_keeps_a_collector_its_program_turned_off(short_tmp: Path, where: str) -> None:
    state = _probe_device(short_tmp, **{"COLLECTOR_OFF" if where == "sitecustomize" else "GC_OFF_IN_MODULE": "1"})
    assert state["enabled"] is False, "the device process turned on a collector its program had turned off"
    assert state["threshold"] > 0, state  # the pause itself was undone
    assert state["during_start"] == 0, state


# A device class in the script itself: multiprocessing's spawn runs the script again in the
# device process (as __mp_main__), whose module level turns the collector off for good.
OWN_CHOICE = """
import gc, json, os, sys
import zmq
from procdevices import ProcessDevice

gc.disable()  # this program's choice, in the device process too


class GcProbe(ProcessDevice):
    def run_with(self, runtime):
        state = {"running": gc.isenabled(), "threshold": gc.get_threshold()[0]}
        with open(os.path.join(sys.argv[1], f"gc-{os.getpid()}.json"), "w") as f:
            json.dump(state, f)
        super().run_with(runtime)


if __name__ == "__main__":
    dev = GcProbe(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.start()
    dev.stop()
    print(dev.pid)
"""


@pytest.mark.timeout(60)
def test_a_device_class_in_the_script_keeps_the_scripts_choice(short_tmp: Path) -> None:
    done = run_script(short_tmp, OWN_CHOICE, str(short_tmp))
    assert done.returncode == 0, done.stderr
    state = json.loads((short_tmp / f"gc-{int(done.stdout.split()[-1])}.json").read_text())
    assert state == {"running": False, "threshold": state["threshold"]} and state["threshold"] > 0, state


class GcState(ProcessDevice):
    """Prints the collector's state in its device process, then forwards."""

    steerable = True  # its run_device still forwards through _forward

    def run_device(self) -> None:
        state = {"enabled": gc.isenabled(), "threshold": gc.get_threshold()[0]}
        print("gc " + json.dumps(state), flush=True)
        super().run_device()


# The child's command line of a procdevices from before the pause, as a running `up` of that
# version spawns it after a newer one was installed (until `upgrade`): boot.main() with no
# argument, in the new code.
OLDER_BOOT = f"import sys; sys.path.insert(0, {spawnproc._HOME!r}); from procdevices.devices.boot import main; main()"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["spawned", "warm worker", "spawned by an older launcher"])
def test_a_device_runs_with_collections_however_its_process_started(
    short_tmp: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warm worker (`up`'s restarts) waits for its job with collections paused.
    if how == "spawned by an older launcher":
        monkeypatch.setattr(spawnproc, "_BOOT", OLDER_BOOT)
    log = short_tmp / "device.log"
    control = f"ipc://{short_tmp}/ctl"
    dev = GcState(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{short_tmp}/in")
    pickled = launch.pickle_device(dev)
    pool = launch.WorkerPool(1)
    try:
        if how == "warm worker":
            pool.refill()
            pending = pool.take(pickled, control, label="gc", log_path=str(log))
        else:
            pending = launch.spawn_device(pickled, control, label="gc", log_path=str(log))
        assert pending is not None
        run_and_stop(pending, control)
    finally:
        pool.close()
    line = next(line for line in log.read_text().splitlines() if line.startswith("gc "))
    assert json.loads(line[3:]) == {"enabled": True, "threshold": gc.get_threshold()[0]}, line


# The command line as Python calls it, for a command that returns (`check`).
# Python 3.12 starts with objects in the permanent generation already (375 on 3.12.1): what
# main() froze is what it added.
ENTRY = """
import gc, json, sys
frozen = gc.get_freeze_count()
from procdevices.cli import main

if sys.argv[1] == "off":
    gc.disable()  # the caller's choice, which main() keeps
code = main(["check", "-c", sys.argv[2]])
print(json.dumps({"code": code, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count() - frozen}))
"""

# `python -m procdevices` and the installed script; reports from the process's exit.
CHECK_FROM_THE_COMMAND_LINE = """
import runpy, sys
sys.argv = [sys.argv[1], "check", "-c", sys.argv[2]]
if sys.argv[0] == "-m":
    runpy.run_module("procdevices", run_name="__main__", alter_sys=True)
else:
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", ["-m", "script"])
def test_the_command_line_imports_its_commands_with_collections_paused(short_tmp: Path, entry: str) -> None:
    script = str(Path(sys.executable).with_name("procdevices")) if entry == "script" else "-m"
    done = run_script(
        short_tmp,
        CHECK_FROM_THE_COMMAND_LINE,
        script,
        str(write_topology(short_tmp, STREAMER)),
        sitecustomize=RECORD_COLLECTIONS,
        env={"STARTED_BY": "procdevices.cli.main"},  # in sys.modules from its import's first line
    )
    assert done.returncode == 0, done.stderr
    (report,) = custom_dir(short_tmp).glob("gc-*.json")
    state = json.loads(report.read_text())
    assert state["during_start"] == 0, "collections walked the command table while it imported"
    assert state["enabled"] is True and state["threshold"] > 0, f"the command ran without collections: {state}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("caller", ["on", "off"])
def test_main_from_python_leaves_the_callers_collector_and_objects_alone(short_tmp: Path, caller: str) -> None:
    done = run_script(short_tmp, ENTRY, caller, str(write_topology(short_tmp, STREAMER)))
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.splitlines()[-1])
    assert state == {"code": 0, "enabled": caller == "on", "frozen": 0}, state
