"""Run as a script inside a host's network namespace: the users' own clients of a multi-host
topology (tests/integration/test_multihost_netns.py). Prints one JSON line when done.

  rep ENDPOINT                     REP connected to ENDPOINT, echoing until SIGTERM
  req ENDPOINT COUNT SECONDS       COUNT round trips (a lost reply: a new socket, the lazy
                                   pirate pattern), within SECONDS; exit 0 when all came back
  push ENDPOINT COUNT TAG          COUNT messages TAG-i, delivered before exit (bounded linger)
  pull ENDPOINT COUNT TAG SECONDS  until COUNT distinct TAG-i arrived, or SECONDS; exit 0 if all
"""

import json
import signal
import sys
import time

import zmq


def rep(endpoint: str) -> int:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.connect(endpoint)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"ready": True}), flush=True)
    while True:
        sock.send(sock.recv())


def req(endpoint: str, count: int, seconds: float) -> int:
    ctx = zmq.Context()
    deadline = time.monotonic() + seconds
    done = 0
    sock = None
    while done < count and time.monotonic() < deadline:
        if sock is None:
            sock = ctx.socket(zmq.REQ)
            sock.linger = 0
            sock.connect(endpoint)
        payload = f"ping-{done}".encode()
        sock.send(payload)
        if sock.poll(1000) and sock.recv() == payload:
            done += 1
        else:
            sock.close(linger=0)  # REQ is stuck after a lost reply: start over
            sock = None
    print(json.dumps({"round_trips": done}), flush=True)
    return 0 if done == count else 1


def push(endpoint: str, count: int, tag: str) -> int:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(endpoint)
    for i in range(count):
        sock.send(f"{tag}-{i}".encode())
    sock.close(linger=10_000)
    ctx.term()
    print(json.dumps({"sent": count}), flush=True)
    return 0


def pull(endpoint: str, count: int, tag: str, seconds: float) -> int:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(endpoint)
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + seconds
    seen: set[str] = set()
    while len(seen) < count and time.monotonic() < deadline:
        if sock.poll(100):
            text = sock.recv().decode()
            if text.startswith(f"{tag}-"):
                seen.add(text)
    print(json.dumps({"received": len(seen)}), flush=True)
    return 0 if len(seen) == count else 1


def main() -> int:
    mode, endpoint, *rest = sys.argv[1:]
    if mode == "rep":
        return rep(endpoint)
    if mode == "req":
        return req(endpoint, int(rest[0]), float(rest[1]))
    if mode == "push":
        return push(endpoint, int(rest[0]), rest[1])
    if mode == "pull":
        return pull(endpoint, int(rest[0]), rest[1], float(rest[2]))
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
