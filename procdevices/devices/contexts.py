"""Which zmq context a device may terminate, and that it is terminated once.

libzmq's ``zmq_ctx_term`` must run once per context. A second call made while the first one
waits for the sockets to close waits on the same mailbox; whichever returns first frees the
context under the other, which then aborts the process (``Assertion failed: pfd.revents &
POLLIN (src/signaler.cpp:238)``), fails with EFAULT, or hangs. pyzmq's ``Context.term()``
does not prevent it: it releases the GIL around ``zmq_ctx_term`` and only marks the context
closed once that returns. A thread device meets exactly this when its caller stops it the way
pyzmq's own tests do, with ``dev._context.term()`` from another thread, while the device ends
its run by terminating the same context.

The rule (docs/devices.md, "Who terminates a device's context"):

- A device terminates its context only when its ``context_factory`` is a class, such as
  ``zmq.Context``: calling a class makes a context for this run alone. A shared context
  (``Context.instance()``, or whatever a factory function returns) belongs to the program,
  which terminates it; the device only closes its sockets, as pyzmq's devices do.
- A context the device made gets a once-only ``term()`` (:class:`TermOnce`): the first call,
  from whichever thread, terminates it; a call made meanwhile waits for that one to finish;
  the device's own final term is skipped when somebody else has begun one.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import zmq

Context = zmq.Context[zmq.Socket[bytes]]


def makes_own_context(factory: Callable[[], Any]) -> bool:
    """Whether ``factory`` makes a new context on every call that nobody else holds: a
    context class (``zmq.Context`` or a subclass), not ``Context.instance`` nor a function
    that may hand out a context shared with the rest of the program."""
    return isinstance(factory, type) and issubclass(factory, zmq.Context)


class TermOnce:
    """Makes ``ctx.term()`` (and so ``destroy()`` and ``with ctx``) safe to call from several
    threads: it is installed on the context object itself, because the caller's ``term()``
    (``dev._context.term()``) must go through the same gate as the device's."""

    def __init__(self, ctx: Context) -> None:
        # A weak reference: the context holds this object (its ``term``), not the reverse.
        self._ctx = weakref.ref(ctx)
        self._class_term = type(ctx).term
        self._lock = threading.Lock()
        self._started = False
        self._done = threading.Event()
        # An instance attribute hides the class's method: every ctx.term() comes here.
        ctx.term = self.term  # type: ignore[method-assign]

    @property
    def started(self) -> bool:
        return self._started

    def _claim(self) -> bool:
        with self._lock:
            if self._started:
                return False
            self._started = True
            return True

    def _run(self) -> None:
        try:
            ctx = self._ctx()
            if ctx is not None:
                self._class_term(ctx)
        finally:
            self._done.set()

    def term(self) -> None:
        """Terminate the context, or wait for the termination already under way."""
        if self._claim():
            self._run()
        else:
            self._done.wait()

    def term_unless_started(self) -> bool:
        """Terminate the context unless somebody has begun to: never waits for another
        thread's term (which ends once the sockets are closed, the device's own included).
        True when this call terminated it."""
        if not self._claim():
            return False
        self._run()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a termination that has begun; True once it is over."""
        return self._done.wait(timeout)
