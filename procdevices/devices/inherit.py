"""Listening sockets handed to a device process by its parent (libzmq's ``ZMQ_USE_FD``).

A supervisor that owns a device's listening sockets creates each once and hands a duplicate
to every generation of the device: a restart never meets "Address already in use", a client
that connects while the device restarts waits in the kernel's backlog instead of being
refused, and a ``tcp://...:*`` endpoint keeps its port.

Three ways in, all without a round trip:

- **A new interpreter** (spawn, devices/spawnproc.py): the descriptors are kept open across
  its exec (``pass_fds``), so they have the same numbers there, and the job names them by
  number (:func:`kept_across_exec`).
- **A fork of the fork server**: :class:`InheritedFd` travels inside the job that starts it;
  multiprocessing duplicates the descriptor for the child as it pickles the job (the fork
  server's own descriptor passing) and the child gets a plain int.
- **A warm worker**, already running, idle on its pipe (a socketpair): the job carries
  :class:`FollowingFd` placeholders and the descriptors follow it on that same pipe in one
  ``SCM_RIGHTS`` message (:func:`send_job`, :func:`receive_job`). Pickling an
  :class:`InheritedFd` for a running process would go through multiprocessing's resource
  sharer instead: a thread in the supervisor, and per descriptor a new connection with an
  HMAC challenge both ways, which cost a supervised restart 5-10 ms (docs/performance.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Self, TypeVar

if TYPE_CHECKING:
    from procdevices.devices.channel import Channel

# endpoint → the inherited listening descriptor, in this (device) process.
INHERITED: dict[str, int] = {}


class InheritedFd:
    """A descriptor of the parent's, for a process that is being started."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        from multiprocessing import reduction  # the parent's side: it is starting the process

        return _rebuild, (reduction.DupFd(self.fd),)


def _rebuild(duplicate: Any) -> int:
    fd: int = duplicate.detach()
    return fd


def kept_across_exec(listeners: dict[str, InheritedFd] | None) -> dict[str, int]:
    """The listeners of a job for a new interpreter that keeps their descriptors open across
    its exec: the same numbers."""
    return {endpoint: inherited.fd for endpoint, inherited in (listeners or {}).items()}


class FollowingFd(NamedTuple):
    """Stands in a job for the ``position``-th descriptor of the SCM_RIGHTS message that
    follows the job on a worker's pipe."""

    position: int


class HasListeners(Protocol):
    @property
    def listeners(self) -> dict[str, Any] | None: ...

    def with_listeners(self, listeners: dict[str, Any]) -> Self:
        """A copy of the job with these listeners."""
        ...


J = TypeVar("J", bound=HasListeners)


def send_job(conn: Channel, job: J) -> None:
    """Send ``job`` to a running worker: its :class:`InheritedFd` listeners become
    :class:`FollowingFd` and the descriptors follow the job in one SCM_RIGHTS message.
    Raises OSError when the worker is gone."""
    listeners = job.listeners or {}
    fds = [fd.fd for fd in listeners.values()]
    if fds:
        placeholders = {endpoint: FollowingFd(i) for i, endpoint in enumerate(listeners)}
        job = job.with_listeners(placeholders)
    conn.send(job)
    if fds:
        # The kernel hands the receiver its own duplicates: the supervisor keeps its copies.
        conn.send_fds(fds)


def receive_job(conn: Channel) -> Any:
    """The worker's side of :func:`send_job`: the job, its listeners as plain descriptors.
    Raises EOFError or OSError when the pipe closes first or the descriptors do not come."""
    job = conn.recv()
    listeners = getattr(job, "listeners", None) or {}
    wanted = [p.position for p in listeners.values() if isinstance(p, FollowingFd)]
    if not wanted:
        return job
    fds = conn.recv_fds(len(wanted))
    received = {endpoint: fds[p.position] if isinstance(p, FollowingFd) else p for endpoint, p in listeners.items()}
    return job.with_listeners(received)


def adopt(listeners: dict[str, int] | None) -> None:
    """Called once by the worker with what its job carried (already plain ints)."""
    INHERITED.clear()
    INHERITED.update(listeners or {})
