"""pyzmq's own ProcessDevices started with spawn from a minimal ``__main__``.

    python scripts/pyzmq_spawn_devices.py DIRECTORY N

scripts/bench.py's like-for-like baseline for procdevices' spawned devices. Every device
process spawned by multiprocessing re-imports the parent's main script as ``__mp_main__``;
started from bench.py itself, each pyzmq device would re-import those 1,700 lines (and count
them in its start-up time and memory). This script is what a small user script is: its
module level imports nothing but the standard library's ``sys``.

Starts N streamers (``STREAMER``, PULL -> PUSH) whose in socket connects to
``ipc://DIRECTORY/i{k}`` and out socket to ``ipc://DIRECTORY/o{k}``, prints their pids on one
line, waits until stdin closes, then terminates them (pyzmq's devices have no stop).
"""

import sys


def main(directory: str, n: int) -> None:
    import multiprocessing

    import zmq
    import zmq.devices

    spawn = multiprocessing.get_context("spawn")
    devices = []
    for k in range(n):
        dev = zmq.devices.ProcessDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
        dev._launch_class = spawn.Process
        dev.connect_in(f"ipc://{directory}/i{k}")
        dev.connect_out(f"ipc://{directory}/o{k}")
        dev.start()
        devices.append(dev)
    print(" ".join(str(dev.launcher.pid) for dev in devices), flush=True)
    sys.stdin.read()
    for dev in devices:
        dev.launcher.terminate()
    for dev in devices:
        dev.launcher.join(5.0)
        if dev.launcher.is_alive():
            dev.launcher.kill()
            dev.launcher.join()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
