"""The socket setup of a device: its roles (in, out, mon, ctrl), recorded in the parent.

pyzmq's ``bind_X``/``connect_X``/``setsockopt_X`` calls never touch a socket: sockets are
built where the device runs (a thread, or a spawned process the device is pickled to).
:class:`RecordedSetup` keeps what they asked, per role, as plain data that pickles with the
device; ``Device._setup_sockets`` replays it on the sockets it builds in the worker.

pyzmq writes ``bind_X``, ``connect_X``, ``setsockopt_X`` and ``bind_X_to_random_port`` out
by hand for every role. Here one table (:data:`ROLES`) describes the roles, and
:func:`role_methods` makes the four methods of a role, so a device class declares a role in
one line of its body::

    bind_mon, bind_mon_to_random_port, connect_mon, setsockopt_mon = role_methods("mon")

Why plain functions assigned in the class body, and not a metaclass, ``__getattr__`` or a
descriptor: they are ordinary functions (``inspect.signature`` shows pyzmq's parameters,
``help()`` shows their docstrings, pickling never sees them), and mypy types the assignment
from :class:`RoleMethods`, so ``dev.bind_mon(42)`` is a type error under ``--strict``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple, Protocol

import zmq

# How many times _reserve_random_port draws again when it draws a port this device already
# reserved (the same bound as pyzmq's).
_RESERVE_DRAWS = 5


class Role(NamedTuple):
    name: str
    what: str  # how pyzmq's docstrings call the socket


# Setup order in the worker follows this table (after pyzmq: in and out first, then mon, ctrl).
ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role("in", "in_socket"),
        Role("out", "out_socket"),
        Role("mon", "mon_socket"),
        Role("ctrl", "ctrl_socket"),
    )
}


class SocketSetup:
    """What the parent records for one socket; the worker replays it (sockopts first). A
    plain class, not a dataclass: the device process imports this module (runtime.py)."""

    __slots__ = ("binds", "connects", "sockopts")

    def __init__(
        self,
        binds: list[str] | None = None,
        connects: list[str] | None = None,
        sockopts: list[tuple[int, Any]] | None = None,
    ) -> None:
        self.binds: list[str] = [] if binds is None else binds
        self.connects: list[str] = [] if connects is None else connects
        self.sockopts: list[tuple[int, Any]] = [] if sockopts is None else sockopts

    def __repr__(self) -> str:
        return f"SocketSetup(binds={self.binds!r}, connects={self.connects!r}, sockopts={self.sockopts!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SocketSetup):
            return NotImplemented
        return (self.binds, self.connects, self.sockopts) == (other.binds, other.connects, other.sockopts)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces


class RecordsSetup(Protocol):
    """What the generated methods need from a device."""

    def _setup_of(self, role: str) -> SocketSetup: ...
    def _reserve_random_port(self, addr: str, *args: int, **kwargs: int) -> int: ...


class RecordedSetup:
    """What a device records of its setup: a :class:`SocketSetup` per role and the random
    ports it reserved. A mixin of ``Device`` (implements :class:`RecordsSetup`); its state is
    plain data, the part of a device that crosses to a spawned worker."""

    socket_roles: ClassVar[tuple[str, ...]]
    _setups: dict[str, SocketSetup]
    _random_addrs: list[str]

    def _start_recording(self) -> None:
        self._setups = {}
        self._random_addrs = []

    def record_setup(
        self,
        role: str,
        *,
        sockopts: Iterable[tuple[int, Any]] = (),
        binds: Iterable[str] = (),
        connects: Iterable[str] = (),
    ) -> None:
        """Record a role's setup at once, as its ``setsockopt_``/``bind_``/``connect_`` calls
        would (the supervisor builds a device from its config this way). A role that this
        class does not have is refused with ValueError: nothing would ever replay it."""
        if role not in type(self).socket_roles:
            raise ValueError(
                f"{type(self).__name__} has no {role!r} socket (its roles: {', '.join(self.socket_roles)})"
            )
        setup = self._setup_of(role)
        setup.sockopts.extend(sockopts)
        setup.binds.extend(binds)
        setup.connects.extend(connects)

    def _setup_of(self, role: str) -> SocketSetup:
        return self._setups.setdefault(role, SocketSetup())

    def _reserve_random_port(self, addr: str, *args: int, **kwargs: int) -> int:
        # The port is only held while this throw-away socket lives: another process may take
        # it before the device binds. Drawing again avoids handing one device the same port
        # twice.
        with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as binder:
            for _ in range(_RESERVE_DRAWS):
                port = binder.bind_to_random_port(addr, *args, **kwargs)
                if f"{addr}:{port}" not in self._random_addrs:
                    break
            else:
                raise zmq.ZMQBindError("Could not reserve random port.")
        self._random_addrs.append(f"{addr}:{port}")
        return port


class RoleMethods(NamedTuple):
    bind: Callable[[Any, str], None]
    bind_to_random_port: Callable[..., int]
    connect: Callable[[Any, str], None]
    setsockopt: Callable[[Any, int, Any], None]


def role_methods(name: str) -> RoleMethods:
    """pyzmq's four recording methods for the role ``name`` (a key of :data:`ROLES`)."""
    what = ROLES[name].what

    def bind(self: RecordsSetup, addr: str) -> None:
        self._setup_of(name).binds.append(addr)

    def bind_to_random_port(self: RecordsSetup, addr: str, *args: int, **kwargs: int) -> int:
        port = self._reserve_random_port(addr, *args, **kwargs)
        self._setup_of(name).binds.append(f"{addr}:{port}")
        return port

    def connect(self: RecordsSetup, addr: str) -> None:
        self._setup_of(name).connects.append(addr)

    def setsockopt(self: RecordsSetup, opt: int, value: Any) -> None:
        self._setup_of(name).sockopts.append((opt, value))

    bind.__doc__ = f"Enqueue ZMQ address for binding on {what}.\n\nSee zmq.Socket.bind for details."
    bind_to_random_port.__doc__ = (
        f"Reserve a random port on ``addr`` and enqueue it for binding on {what}.\n\n"
        "Takes ``min_port``, ``max_port`` (exclusive) and ``max_tries`` like "
        "``zmq.Socket.bind_to_random_port``; raises ``zmq.ZMQBindError`` when no port is free. "
        "The port is only reserved until this call returns (as in pyzmq)."
    )
    connect.__doc__ = f"Enqueue ZMQ address for connecting on {what}.\n\nSee zmq.Socket.connect for details."
    setsockopt.__doc__ = f"Enqueue setsockopt(opt, value) for {what}.\n\nSee zmq.Socket.setsockopt for details."
    methods = RoleMethods(bind, bind_to_random_port, connect, setsockopt)
    for method, public in zip(
        methods, (f"bind_{name}", f"bind_{name}_to_random_port", f"connect_{name}", f"setsockopt_{name}"), strict=True
    ):
        method.__name__ = public
        method.__qualname__ = public
    return methods
