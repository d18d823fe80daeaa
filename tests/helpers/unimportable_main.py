"""Run as ``python - < unimportable_main.py``: a device subclass defined in a ``__main__`` that
a spawned interpreter cannot re-import (it was read from stdin, so there is no file to run).

pyzmq's ProcessDevice would start, its child would die with a traceback, and the parent would
never know. procdevices must raise DeviceStartError from start(). Prints one line of JSON:
{"error": <type name or null>, "message": ..., "exitcode": ..., "control_dir_left": ...,
"alive": [...]}.
"""

import json
import os

import psutil
import zmq

from procdevices import DeviceError, ProcessDevice


class MainOnlyDevice(ProcessDevice):
    """Exists only in this interpreter's __main__."""


def main() -> None:
    dev = MainOnlyDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    result: dict[str, object] = {"error": None, "message": "", "exitcode": None}
    try:
        dev.start()
    except DeviceError as e:
        result.update(error=type(e).__name__, message=str(e), exitcode=dev.exitcode)
        control_dir = os.path.dirname((dev.control_endpoint or "").removeprefix("ipc://"))
        result["control_dir_left"] = os.path.exists(control_dir)
    else:
        dev.stop()
    children = psutil.Process().children(recursive=True)
    result["alive"] = [c.pid for c in children if not any("resource_tracker" in a for a in c.cmdline())]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
