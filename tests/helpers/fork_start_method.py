"""Run as a script: set the global start method to fork, then start a ProcessDevice.

procdevices must still spawn it (a forked child would inherit this process's threads and
zmq context). Forwards one message through it, reads the child's command line, stops it,
and prints one line of JSON; exits 0 only if every check passed.
"""

import json
import multiprocessing
import sys

import psutil
import zmq

from procdevices import ProcessDevice


def main() -> int:
    multiprocessing.set_start_method("fork")
    # A context (and its I/O thread) in the parent: exactly what a forked child must not inherit.
    ctx = zmq.Context()
    dev = ProcessDevice(zmq.QUEUE, zmq.PULL, zmq.PUSH)
    dev.bind_in("tcp://127.0.0.1:*")
    dev.bind_out("tcp://127.0.0.1:*")
    dev.start()
    try:
        push = ctx.socket(zmq.PUSH)
        push.connect(dev.endpoints["in"][0])
        pull = ctx.socket(zmq.PULL)
        pull.connect(dev.endpoints["out"][0])
        push.send(b"through a spawned device")
        forwarded = pull.recv_multipart() if pull.poll(5000) else None
        cmdline = psutil.Process(dev.pid).cmdline()
    finally:
        dev.stop()
    ctx.destroy(linger=0)
    result = {
        "start_method": multiprocessing.get_start_method(),
        "forwarded": forwarded == [b"through a spawned device"],
        "cmdline": cmdline,
        "exitcode": dev.exitcode,
    }
    print(json.dumps(result), flush=True)
    # A fresh interpreter: procdevices' own spawn (devices/spawnproc.py), not a fork.
    spawned = any("procdevices.devices.boot" in part for part in cmdline)
    ok = result["forwarded"] and spawned and dev.exitcode == 0 and result["start_method"] == "fork"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
