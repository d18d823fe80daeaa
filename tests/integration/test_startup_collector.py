"""The cyclic collector is paused while a process of procdevices starts, and running once it
has (devices/boot.py and runtime.process_main; the command line's entry point, cli/__init__.py).

Paused for the start: a device's modules import with no collection (the benchmark measures
what that saves, docs/performance.md). Running afterwards: a device or a command that runs for
days with the collector off would never free a reference cycle, and would grow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.scripts import FORWARD_ONE, run_script

# Run by every interpreter the test starts (its directory is on PYTHONPATH), before any code
# of procdevices: records each collection that starts, and whether procdevices was imported
# and nothing frozen yet then (a collection during the device process's start).
RECORD_COLLECTIONS = """
import gc, sys
STARTS = []
gc.callbacks.append(
    lambda phase, info: phase == "start" and STARTS.append("procdevices" in sys.modules and gc.get_freeze_count() == 0)
)
"""

# A device class whose module records the collector's state when it is imported (in the
# device process: while the device object is unpickled), and whose run records it again.
GC_PROBE = """
import gc, json, os, sys
from procdevices import ProcessDevice

AT_IMPORT = gc.isenabled()


class GcProbe(ProcessDevice):
    def run_with(self, runtime):
        state = {
            "at_import": AT_IMPORT,
            "during_start": sum(sys.modules["sitecustomize"].STARTS),
            "running": gc.isenabled(),
            "frozen": gc.get_freeze_count(),
        }
        with open(os.path.join(os.path.dirname(__file__), f"gc-{os.getpid()}.json"), "w") as f:
            json.dump(state, f)
        super().run_with(runtime)
"""


@pytest.mark.timeout(60)
def test_a_device_process_imports_with_the_collector_paused_and_runs_with_it(short_tmp: Path) -> None:
    modules = short_tmp / "modules"
    modules.mkdir()
    (modules / "gc_probe.py").write_text(GC_PROBE)
    done = run_script(short_tmp, FORWARD_ONE, str(modules), "gc_probe:GcProbe", sitecustomize=RECORD_COLLECTIONS)
    assert done.returncode == 0, done.stderr
    pid = json.loads(done.stdout.splitlines()[-1])["pid"]
    state = json.loads((modules / f"gc-{pid}.json").read_text())
    assert state["at_import"] is False, "the device class's module was imported with the collector running"
    assert state["during_start"] == 0, "collections walked the device process's imports (pyzmq, the runtime)"
    assert state["running"] is True, "the device runs with the collector off: its cycles would never be freed"
    # What the start made (modules, classes, the device) was frozen, not left for collections.
    assert state["frozen"] > 1000, state


# A device class in the script itself: multiprocessing's spawn runs the script again in the
# device process (as __mp_main__), whose module level turns the collector off for good.
OWN_CHOICE = """
import gc, json, os, sys
import zmq
from procdevices import ProcessDevice

gc.disable()  # this program's choice, in the device process too


class GcProbe(ProcessDevice):
    def run_with(self, runtime):
        state = {"running": gc.isenabled(), "frozen": gc.get_freeze_count()}
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
def test_a_device_process_keeps_a_collector_its_program_turned_off(short_tmp: Path) -> None:
    done = run_script(short_tmp, OWN_CHOICE, str(short_tmp))
    assert done.returncode == 0, done.stderr
    state = json.loads((short_tmp / f"gc-{int(done.stdout.split()[-1])}.json").read_text())
    assert state["running"] is False, "the device process turned on a collector its program had turned off"
    assert state["frozen"] > 1000, state


# The command line as the `procdevices` script runs it (console) and as Python calls it (main),
# for a command that returns (`check`). Every collection that starts is recorded with the
# number of frozen objects at that moment: one that starts before the freeze would walk the
# modules being imported.
ENTRY = """
import gc, json, sys
from procdevices.cli import console, main

entry, topology = sys.argv[1], sys.argv[2]
if entry == "main, collector off":
    gc.disable()  # the caller's choice, which main() keeps
starts = []
gc.callbacks.append(lambda phase, info: phase == "start" and starts.append(gc.get_freeze_count()))
sys.argv = ["procdevices", "check", "-c", topology]
code = console() if entry == "console" else main(sys.argv[1:])
state = {"code": code, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
print(json.dumps({**state, "before_freeze": starts.count(0)}))
"""

TOPOLOGY = """
[supervisor]
run_dir = "{run_dir}"

[devices.s]
kind = "streamer"
in = {{ type = "PULL", connect = ["ipc://{run_dir}/i"] }}
out = {{ type = "PUSH", connect = ["ipc://{run_dir}/o"] }}
"""


def _entry(short_tmp: Path, entry: str) -> dict[str, int | bool]:
    topology = short_tmp / "topology.toml"
    topology.write_text(TOPOLOGY.format(run_dir=short_tmp / "run"))
    done = run_script(short_tmp, ENTRY, entry, str(topology))
    assert done.returncode == 0, done.stderr
    state: dict[str, int | bool] = json.loads(done.stdout.splitlines()[-1])
    assert state["code"] == 0, (state, done.stderr)
    return state


@pytest.mark.timeout(60)
def test_the_script_imports_its_commands_with_the_collector_paused_and_runs_them_with_it(short_tmp: Path) -> None:
    state = _entry(short_tmp, "console")
    assert state["before_freeze"] == 0, "collections walked the command table while it imported"
    assert state["enabled"] is True, "the command ran with the collector off"
    assert state["frozen"] > 1000, state  # the command table's modules, frozen once imported


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", ["main", "main, collector off"])
def test_main_from_python_leaves_the_callers_collector_and_objects_alone(short_tmp: Path, entry: str) -> None:
    state = _entry(short_tmp, entry)
    assert state["enabled"] is (entry == "main"), state
    assert state["frozen"] == 0, "main() froze its caller's objects"
