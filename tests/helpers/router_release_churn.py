"""Devices come and go behind the supervisor's ControlRouter while they answer as fast as they
can; each device's connection is closed while an answer from it is already waiting. Exits 0
when it survived ``argv[2]`` seconds. libzmq aborts the whole process (fq.cpp: !_more) when a
ROUTER's connection is disconnected while a reply through it is half read."""

from __future__ import annotations

import sys
import threading
import time

import zmq

from procdevices.control.aclient import ControlRouter
from procdevices.control.protocol import OK, Command, encode


def device(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, stop: threading.Event) -> None:
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(endpoint)
    peers: set[bytes] = set()
    while not stop.is_set():
        if sock.poll(1):
            frames = sock.recv_multipart()
            peers.add(frames[0])
        for peer in peers:
            try:
                sock.send_multipart([peer, b"12345678", OK, encode({})], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
    sock.close()


def main(directory: str, seconds: float) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ControlRouter(ctx)
    started, n = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        endpoint = f"ipc://{directory}/d{n}"
        stop = threading.Event()
        thread = threading.Thread(target=device, args=(ctx, endpoint, stop))
        thread.start()
        connection = router.connect(endpoint)
        connection.send(Command.PING, 0.0, 5.0, lambda ok, body: None)
        deadline = time.monotonic() + 5
        while not router.socket.poll(0) and time.monotonic() < deadline:
            router.socket.poll(10)
        connection.close()
        for _ in range(100):
            router.on_readable()
        stop.set()
        thread.join()
        n += 1
    router.close()
    ctx.term()
    print(f"survived {n} devices")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
