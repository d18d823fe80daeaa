"""What `curve = "server"` costs: messages per second through one streamer ProcessDevice over
tcp loopback, its in socket plain or a CURVE server (the sender a CURVE client), alternated,
median of --reps runs each (docs/multihost.md quotes the figures).

    python scripts/curve_cost.py                   # 5 reps, 200,000 messages of 100 bytes
    python scripts/curve_cost.py --reps 9 --count 500000 --size 1000
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import zmq

from procdevices import ProcessDevice


def one_run(curve: bool, count: int, size: int) -> float:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    device = ProcessDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
    if curve:
        device.setsockopt_in(zmq.CURVE_SERVER, 1)
        device.setsockopt_in(zmq.CURVE_SECRETKEY, server_secret)
    port_in = device.bind_in_to_random_port("tcp://127.0.0.1")
    port_out = device.bind_out_to_random_port("tcp://127.0.0.1")
    device.start()
    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        pull.connect(f"tcp://127.0.0.1:{port_out}")
        push = ctx.socket(zmq.PUSH)
        if curve:
            push.curve_serverkey = server_public
            push.curve_publickey, push.curve_secretkey = client_public, client_secret
        push.connect(f"tcp://127.0.0.1:{port_in}")
        # One message through first: connections and handshakes are not what is measured.
        push.send(b"warm-up")
        pull.recv()
        payload = b"x" * size

        def send() -> None:
            for _ in range(count):
                push.send(payload)

        started = time.perf_counter()
        sender = threading.Thread(target=send)
        sender.start()
        for _ in range(count):
            pull.recv()
        elapsed = time.perf_counter() - started
        sender.join()
        push.close(linger=0)
        pull.close(linger=0)
        return count / elapsed
    finally:
        ctx.term()
        device.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"plain": [], "curve": []}
    for _ in range(args.reps):
        for mode in ("plain", "curve"):
            rates[mode].append(one_run(mode == "curve", args.count, args.size))
    plain, curve = statistics.median(rates["plain"]), statistics.median(rates["curve"])
    print(f"{args.count} messages of {args.size} bytes, {args.reps} reps, median msg/s:")
    for mode, values in rates.items():
        print(f"  {mode:<5} {statistics.median(values):>10,.0f}   (runs: {', '.join(f'{v:,.0f}' for v in values)})")
    print(f"  curve / plain = {curve / plain:.2f}")


if __name__ == "__main__":
    main()
