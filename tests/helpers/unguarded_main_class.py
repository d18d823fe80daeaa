"""Run as a script: a device class defined in this script, and the device created and started
at module level with no ``if __name__ == "__main__":`` guard.

The device process must re-run this script to find the class, which starts the device again
there, and multiprocessing refuses: start() must raise an error that says so and shows the
guard. Prints one line of JSON: {"error": <type name or null>, "message": ...}.
"""

import json

import zmq

from procdevices import DeviceError, ProcessDevice


class ScriptDevice(ProcessDevice):
    """Exists only in this script."""


result: dict[str, object] = {"error": None, "message": ""}
dev = ScriptDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
dev.bind_in("tcp://127.0.0.1:*")
try:
    dev.start()
except DeviceError as e:
    result.update(error=type(e).__name__, message=str(e))
else:
    dev.stop()
print(json.dumps(result), flush=True)
