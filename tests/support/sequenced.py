"""Traffic with sequence numbers, to count what a supervisor's crash, restart or upgrade loses:
through a streamer (PUSH → PULL) and a queue (DEALER client → REP worker, echoed back), one
message each per millisecond, from threads."""

from __future__ import annotations

import threading
from typing import Any

import zmq

Ctx = zmq.Context[zmq.Socket[bytes]]


class Sequenced:
    """Sequence-numbered traffic through the streamer (PUSH → PULL) and the queue (DEALER
    client → REP worker, echoed back), one message each per millisecond, from threads."""

    def __init__(self, ctx: Ctx, pipe_in: str, pipe_out: str, broker_in: str, broker_out: str) -> None:
        self.ctx = ctx
        self.endpoints = (pipe_in, pipe_out, broker_in, broker_out)
        self.running = threading.Event()
        self.sent_pipe = 0
        self.sent_broker = 0
        self.got_pipe: list[int] = []
        self.got_broker: list[int] = []
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._guard, args=(f,), daemon=True)
            for f in (self._produce, self._consume, self._client, self._worker)
        ]
        self._done = threading.Event()
        self.progress = threading.Event()  # set on every message received: what waits wake on

    @classmethod
    def through(cls, ctx: Ctx, endpoints: dict[str, dict[str, list[str]]]) -> Sequenced:
        """Through the devices ``pipe`` (a streamer) and ``broker`` (a queue) of a status's
        endpoints (name → role → endpoints)."""
        pipe, broker = endpoints["pipe"], endpoints["broker"]
        return cls(ctx, pipe["in"][0], pipe["out"][0], broker["in"][0], broker["out"][0])

    def wake(self, seconds: float) -> None:
        self.progress.wait(seconds)
        self.progress.clear()

    def __enter__(self) -> Sequenced:
        self.running.set()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running.clear()
        self._done.set()
        for thread in self._threads:
            thread.join(10)

    def stop_sending(self) -> None:
        self.running.clear()

    def _guard(self, target: Any) -> None:
        try:
            target()
        except BaseException as e:  # reported by the test, not lost in a thread
            self.errors.append(e)

    def _socket(self, kind: int, endpoint: str) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.linger = 2000
        sock.connect(endpoint)
        return sock

    def _produce(self) -> None:
        push = self._socket(zmq.PUSH, self.endpoints[0])
        while self.running.wait(0) and not self._done.is_set():
            push.send(self.sent_pipe.to_bytes(8, "big"))
            self.sent_pipe += 1
            self._done.wait(0.001)
        push.close()

    def _consume(self) -> None:
        pull = self._socket(zmq.PULL, self.endpoints[1])
        while not self._done.is_set():
            if pull.poll(50):
                self.got_pipe.append(int.from_bytes(pull.recv(), "big"))
                self.progress.set()
        pull.close(0)

    def _client(self) -> None:
        dealer = self._socket(zmq.DEALER, self.endpoints[2])
        while not self._done.is_set():
            if self.running.is_set():
                dealer.send_multipart([b"", self.sent_broker.to_bytes(8, "big")])
                self.sent_broker += 1
            if dealer.poll(1):
                while dealer.poll(0):
                    self.got_broker.append(int.from_bytes(dealer.recv_multipart()[1], "big"))
                    self.progress.set()
        dealer.close(0)

    def _worker(self) -> None:
        rep = self._socket(zmq.REP, self.endpoints[3])
        while not self._done.is_set():
            if rep.poll(50):
                rep.send(rep.recv())
        rep.close(0)

    def complete(self) -> bool:
        return len(self.got_pipe) >= self.sent_pipe and len(self.got_broker) >= self.sent_broker
