"""Run as a script: ``lingering_device.py DIR``. Starts a ProcessDevice (PULL -> PUSH) whose
out socket connects to an ipc endpoint in DIR that nobody ever binds, with the default LINGER
(-1), pushes a few messages through it so that they wait in its out queue, prints one line of
JSON (the device's pid), then waits on stdin, to be killed by the test with SIGKILL.

The device must still exit on its own, within about its stop_linger.
"""

import json
import sys
import time

import zmq

from procdevices import ProcessDevice

QUEUED = 10


def main() -> None:
    directory = sys.argv[1]
    dev = ProcessDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
    dev.bind_in(f"ipc://{directory}/in")
    dev.connect_out(f"ipc://{directory}/nobody")
    dev.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(dev.endpoints["in"][0])
    for i in range(QUEUED):
        push.send(b"%d" % i)
    # Counted by the loop = taken from in and queued on out (the peer never comes).
    deadline = time.monotonic() + 10
    while dev.stats().front_msgs_in < QUEUED:
        if time.monotonic() > deadline:
            raise SystemExit("the device never took the messages")
    print(json.dumps({"pid": dev.pid, "queued": QUEUED}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
