"""Stops thread devices the ways their users do, over and over, in this one process.

    thread_device_stops.py PATTERN ITERATIONS DIRECTORY

Each iteration starts a device (or two) of every thread variant, checks that a message goes
through, stops it by PATTERN and prints one JSON line: ``{"pattern", "variant", "factory",
"stop_s", "error"}``. The last line is ``{"summary": ..., "threads_before", "threads_after"}``
(OS threads of this process: a context left behind keeps two). libzmq aborts the process when
one context is terminated twice at once: the test that runs this script sees the signal.

PATTERN:
  term-context    dev._context.term() from another thread, as pyzmq's own tests stop a
                  thread device (context_factory = zmq.Context)
  term-instance   zmq.Context.instance().term() from another thread (the default factory)
  control-stop    dev.stop(), then pyzmq's teardown: dev._context.term() in a thread
  stop-and-term   dev.stop() and a term of the device's context at the same moment
  two-devices     two devices on one shared context: one stopped by stop(), the other must
                  still forward; then the program terminates the shared context
  exit            start every variant, then let the interpreter exit (run once per process)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

import procdevices as pd
from procdevices.control.client import private_context

Ctx = zmq.Context[zmq.Socket[bytes]]

# A stop or a message slower than this is reported as an error, not waited for longer.
HANG = 5.0


class Variant:
    """A device class, and how its user runs it: a foreground Device runs in a thread of the
    user's (pyzmq's way), a ThreadDevice starts its own."""

    def __init__(self, name: str, cls: type[Any], env: dict[str, str] | None = None) -> None:
        self.name, self.cls, self.env = name, cls, env or {}

    def make(self, factory: Callable[[], Ctx]) -> Any:
        cls = type(f"{self.cls.__name__}WithFactory", (self.cls,), {"context_factory": staticmethod(factory)})
        if issubclass(self.cls, pd.Proxy | pd.ThreadProxy):
            return cls(zmq.PULL, zmq.PUSH)
        return cls(zmq.QUEUE, zmq.PULL, zmq.PUSH)

    @property
    def foreground(self) -> bool:
        return not issubclass(self.cls, pd.ThreadDevice)


VARIANTS = [
    Variant("Device", pd.Device),
    Variant("ThreadDevice", pd.ThreadDevice),
    Variant("ThreadProxy", pd.ThreadProxy),
    Variant("ThreadProxySteerable", pd.ThreadProxySteerable),
    Variant("ThreadMonitoredQueue", pd.ThreadMonitoredQueue),
    Variant("ThreadMonitoredQueue/python-loop", pd.ThreadMonitoredQueue, {"PROCDEVICES_MQ_LOOP": "python"}),
]


class Running:
    """One started device with the user's PUSH and PULL around it (in the user's context)."""

    def __init__(self, variant: Variant, factory: Callable[[], Ctx], user: Ctx, directory: str) -> None:
        self.variant = variant
        self.dev = variant.make(factory)
        base = f"ipc://{directory}/{uuid.uuid4().hex[:12]}"
        self.push = user.socket(zmq.PUSH)
        self.pull = user.socket(zmq.PULL)
        for sock in (self.push, self.pull):
            sock.linger = 0
        self.push.bind(f"{base}-in")
        self.pull.bind(f"{base}-out")
        self.dev.connect_in(f"{base}-in")
        self.dev.connect_out(f"{base}-out")
        self.thread: threading.Thread | None = None
        if variant.foreground:
            self.thread = threading.Thread(target=self.dev.start, daemon=True)
            self.thread.start()
        else:
            self.dev.start()

    def forwards(self) -> bool:
        self.push.send(b"ping")
        return bool(self.pull.poll(int(HANG * 1000))) and self.pull.recv() == b"ping"

    def ended(self) -> bool:
        if self.thread is not None:
            return not self.thread.is_alive()
        return not self.dev.is_alive()

    def join(self, deadline: float) -> None:
        if self.thread is not None:
            self.thread.join(max(0.0, deadline - time.monotonic()))
        else:
            self.dev.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.push.close()
        self.pull.close()


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def os_threads_settled(expected: int) -> int:
    """This process's thread count once it is down to ``expected``, or after 2 s. A thread
    whose join() has returned may still be leaving the kernel's list for a moment, and
    nothing signals that: the count is looked at again until then. libzmq joins its own
    threads before a context's term() returns, so a context left behind (two threads, its
    I/O thread and its reaper) stays counted."""
    deadline = time.monotonic() + 2.0
    count = os_threads()
    while count > expected and time.monotonic() < deadline:
        threading.Event().wait(0.01)
        count = os_threads()
    return count


def in_thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def wait_all(threads: list[threading.Thread], devices: list[Running], started: float) -> str | None:
    deadline = started + HANG
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for running in devices:
        running.join(deadline)
    if any(thread.is_alive() for thread in threads):
        return "a term() or stop() did not return"
    if not all(running.ended() for running in devices):
        return "the device did not end"
    return None


# -- the patterns: each returns (seconds the stop took, error or None) -------------------------


def term_context(variant: Variant, factory_name: str, user: Ctx, directory: str) -> tuple[float, str | None]:
    running = Running(variant, zmq.Context, user, directory)
    if not running.forwards():
        return 0.0, "no message went through"
    started = time.monotonic()
    terminator = in_thread(running.dev._context.term)
    running.close()
    error = wait_all([terminator], [running], started)
    return time.monotonic() - started, error


def term_instance(variant: Variant, factory_name: str, user: Ctx, directory: str) -> tuple[float, str | None]:
    running = Running(variant, zmq.Context.instance, user, directory)
    if not running.forwards():
        return 0.0, "no message went through"
    started = time.monotonic()
    terminator = in_thread(zmq.Context.instance().term)
    running.close()
    error = wait_all([terminator], [running], started)
    return time.monotonic() - started, error


def factory_of(name: str) -> Callable[[], Ctx]:
    return zmq.Context if name == "own" else zmq.Context.instance


def control_stop(variant: Variant, factory_name: str, user: Ctx, directory: str) -> tuple[float, str | None]:
    running = Running(variant, factory_of(factory_name), user, directory)
    if not running.forwards():
        return 0.0, "no message went through"
    started = time.monotonic()
    running.dev.stop(timeout=HANG)
    threads = []
    if factory_name == "own":  # pyzmq's teardown after the test's own stop
        threads.append(in_thread(running.dev._context.term))
    running.close()
    error = wait_all(threads, [running], started)
    return time.monotonic() - started, error


def stop_and_term(variant: Variant, factory_name: str, user: Ctx, directory: str) -> tuple[float, str | None]:
    running = Running(variant, factory_of(factory_name), user, directory)
    if not running.forwards():
        return 0.0, "no message went through"
    failures: list[str] = []

    def stop() -> None:
        try:
            running.dev.stop(timeout=HANG)
        except Exception as e:  # reported, not raised: the other thread is still at work
            failures.append(f"stop(): {type(e).__name__}: {e}")

    context = running.dev._context
    started = time.monotonic()
    threads = [in_thread(stop), in_thread(context.term)]
    running.close()
    error = wait_all(threads, [running], started)
    return time.monotonic() - started, error or (failures[0] if failures else None)


def two_devices(variant: Variant, factory_name: str, user: Ctx, directory: str) -> tuple[float, str | None]:
    shared: Ctx = zmq.Context.instance() if factory_name == "instance" else zmq.Context()
    first = Running(variant, lambda: shared, user, directory)
    second = Running(variant, lambda: shared, user, directory)
    if not (first.forwards() and second.forwards()):
        return 0.0, "no message went through"
    started = time.monotonic()
    first.dev.stop(timeout=HANG)
    first.close()
    if not first.ended():
        first.join(started + HANG)
    if not second.forwards():
        return time.monotonic() - started, "stopping one device broke the other"
    elapsed = time.monotonic() - started
    started = time.monotonic()
    terminator = in_thread(shared.term)  # the program ends its shared context
    second.close()
    error = wait_all([terminator], [first, second], started)
    return max(elapsed, time.monotonic() - started), error


PATTERNS: dict[str, tuple[Callable[[Variant, str, Ctx, str], tuple[float, str | None]], list[str]]] = {
    "term-context": (term_context, ["own"]),
    "term-instance": (term_instance, ["instance"]),
    "control-stop": (control_stop, ["own", "instance"]),
    "stop-and-term": (stop_and_term, ["own", "instance"]),
    "two-devices": (two_devices, ["instance", "shared"]),
}


def at_exit(factory_name: str, directory: str) -> None:
    """Start every variant, show they forward, and return: the interpreter exits with them
    running (daemon threads), which must neither abort nor hang."""
    user: Ctx = zmq.Context()
    devices = [Running(variant, factory_of(factory_name), user, directory) for variant in VARIANTS]
    assert all(running.forwards() for running in devices)
    print(json.dumps({"exiting": len(devices)}), flush=True)


def main(pattern: str, iterations: int, directory: str) -> int:
    if pattern == "exit":
        at_exit(sys.argv[4] if len(sys.argv) > 4 else "own", directory)
        return 0
    run, factories = PATTERNS[pattern]
    user: Ctx = zmq.Context()
    # Contexts that live as long as the process, made before counting: procdevices' control
    # context (the first thread device makes it) and pyzmq's Context.instance().
    for ctx in (private_context(), zmq.Context.instance()):
        ctx.socket(zmq.PAIR).close()  # libzmq starts a context's threads with its first socket
    threads_before = os_threads()
    failed = 0
    for _ in range(iterations):
        for factory_name in factories:
            for variant in VARIANTS:
                os.environ.pop("PROCDEVICES_MQ_LOOP", None)
                os.environ.update(variant.env)
                try:
                    seconds, error = run(variant, factory_name, user, directory)
                except Exception as e:
                    seconds, error = 0.0, f"{type(e).__name__}: {e}"
                failed += error is not None
                line = {"pattern": pattern, "variant": variant.name, "factory": factory_name}
                print(json.dumps({**line, "stop_s": round(seconds, 4), "error": error}), flush=True)
    user.destroy(linger=0)
    summary = {
        "summary": pattern,
        "failed": failed,
        "threads_before": threads_before,
        "threads_after": os_threads_settled(threads_before),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    sys.stdout.flush()
    # A device that did not end must not keep the process: its failure is already reported.
    os._exit(code)
