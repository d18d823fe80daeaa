"""Run as a script: ``orphaned_devices.py DIR MODE``. Starts a ProcessProxy and a
ProcessMonitoredQueue (daemonic, as by default), plus in MODE "block" a ProcessDevice with
daemon=False, all bound to ipc endpoints in DIR, prints one line of JSON (pids, control endpoints, bound
endpoints), then never calls stop():

- MODE "block": waits on stdin, to be killed by the test with SIGKILL;
- MODE "exit": returns at once, letting the interpreter exit normally (multiprocessing joins
  a non-daemonic child at exit, so that mode has none).

Either way the devices must stop by themselves, cleanly (they remove their ipc files).
"""

import json
import sys

import zmq

from procdevices import ProcessDevice, ProcessMonitoredQueue, ProcessProxy


def main() -> None:
    directory, mode = sys.argv[1], sys.argv[2]
    proxy = ProcessProxy(zmq.PULL, zmq.PUSH)
    queue = ProcessMonitoredQueue(zmq.PULL, zmq.PUSH)
    devices: dict[str, ProcessDevice] = {"proxy": proxy, "queue": queue}
    if mode == "block":
        plain = ProcessDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
        plain.daemon = False
        devices["plain"] = plain
    for name, dev in devices.items():
        dev.bind_in(f"ipc://{directory}/{name}-in")
        dev.bind_out(f"ipc://{directory}/{name}-out")
        if hasattr(dev, "bind_mon"):
            dev.bind_mon(f"ipc://{directory}/{name}-mon")
    for dev in devices.values():
        dev.start()
    report = {
        name: {"pid": dev.pid, "control": dev.control_endpoint, "endpoints": dev.endpoints}
        for name, dev in devices.items()
    }
    print(json.dumps(report), flush=True)
    if mode == "block":
        sys.stdin.read()
    # mode "exit": multiprocessing's exit handler terminates the daemonic devices (SIGTERM).


if __name__ == "__main__":
    main()
