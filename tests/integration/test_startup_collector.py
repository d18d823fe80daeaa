"""The cyclic collector is paused while a process of procdevices starts, and running once it
has (devices/boot.py and runtime.process_main; the command line's entry point, cli/__init__.py).

Paused for the start: a device's modules import with no collection (the benchmark measures
what that saves, docs/performance.md). Running afterwards: a device or a command that runs for
days with the collector off would never free a reference cycle, and would grow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# A device class whose module records the collector's state when it is imported (in the
# device process: while the device object is unpickled), and whose run records it again.
GC_PROBE = """
import gc, json, os
from procdevices import ProcessDevice

AT_IMPORT = gc.isenabled()


class GcProbe(ProcessDevice):
    def run_with(self, runtime):
        state = {"at_import": AT_IMPORT, "running": gc.isenabled(), "frozen": gc.get_freeze_count()}
        with open(os.path.join(os.path.dirname(__file__), f"gc-{os.getpid()}.json"), "w") as f:
            json.dump(state, f)
        super().run_with(runtime)
"""

FORWARD_ONE = """
import sys
sys.path.insert(0, sys.argv[1])  # the probe's module, found by the device through this too
import zmq
from gc_probe import GcProbe

def main():
    dev = GcProbe(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    port_in = dev.bind_in_to_random_port("tcp://127.0.0.1")
    port_out = dev.bind_out_to_random_port("tcp://127.0.0.1")
    dev.start()
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.connect(f"tcp://127.0.0.1:{port_in}")
    pull.connect(f"tcp://127.0.0.1:{port_out}")
    pull.setsockopt(zmq.RCVTIMEO, 20_000)
    push.send(b"through")
    assert pull.recv() == b"through"
    for s in (push, pull):
        s.close(0)
    ctx.term()
    dev.stop()
    print(dev.pid)

if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(60)
def test_a_device_process_imports_with_the_collector_paused_and_runs_with_it(short_tmp: Path) -> None:
    modules = short_tmp / "modules"
    modules.mkdir()
    (modules / "gc_probe.py").write_text(GC_PROBE)
    script = short_tmp / "forward_one.py"
    script.write_text(FORWARD_ONE)
    done = subprocess.run(
        [sys.executable, str(script), str(modules)], capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[-1])
    state = json.loads((modules / f"gc-{pid}.json").read_text())
    assert state["at_import"] is False, "the device class's module was imported with the collector running"
    assert state["running"] is True, "the device runs with the collector off: its cycles would never be freed"
    # What the start made (modules, classes, the device) was frozen, not left for collections.
    assert state["frozen"] > 1000, state


# The command line's entry point, as the `procdevices` script calls it, for a command that
# returns (`check`); prints the collector's state afterwards.
ENTRY = """
import gc, json, sys
if sys.argv[2] == "off":
    gc.disable()  # the caller's choice, which the entry point keeps
from procdevices.cli import main
sys.argv = ["procdevices", "check", "-c", sys.argv[1]]
code = main()
print(json.dumps({"code": code, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""

TOPOLOGY = """
[supervisor]
run_dir = "{run_dir}"

[devices.s]
kind = "streamer"
in = {{ type = "PULL", connect = ["ipc://{run_dir}/i"] }}
out = {{ type = "PUSH", connect = ["ipc://{run_dir}/o"] }}
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("caller", ["on", "off"])
def test_the_command_line_turns_the_collector_back_on_once_loaded(short_tmp: Path, caller: str) -> None:
    topology = short_tmp / "topology.toml"
    topology.write_text(TOPOLOGY.format(run_dir=short_tmp / "run"))
    script = short_tmp / "entry.py"
    script.write_text(ENTRY)
    done = subprocess.run(
        [sys.executable, str(script), str(topology), caller], capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.splitlines()[-1])
    assert state["code"] == 0, (state, done.stderr)
    if caller == "on":
        assert state["enabled"] is True, "the command ran with the collector off"
        assert state["frozen"] > 1000, state  # the commands' modules, frozen once imported
    else:
        assert state == {"code": 0, "enabled": False, "frozen": 0}, "the entry point changed the caller's collector"
