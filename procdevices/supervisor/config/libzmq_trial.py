"""Ask the real libzmq whether a socket setup would work, without starting anything.

Range tables can only approximate what libzmq accepts (HWMs >= 0, LINGER >= -1,
CURVE keys of 32 or 40 bytes, options valid only on some socket types, IPv6
addresses only with IPV6 = 1, interface names, ...). So ``check`` applies each
socket's options, in order, to a throw-away socket of the same type in a private
context, exactly as the device will, and for a tcp bind binds that socket to
the same host on port ``*`` (an ephemeral port, released at once: it never
collides with a running device). Nothing else is bound, connected or started.

Results are cached by (type, options[, host]), so thousands of devices sharing
a setup cost one trial.
"""

from __future__ import annotations

from types import TracebackType

import zmq

__all__ = ["LibzmqTrial"]

Options = tuple[tuple[int, int | bytes], ...]


class LibzmqTrial:
    def __init__(self) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._options: dict[tuple[int, Options], tuple[int, str] | None] = {}
        self._binds: dict[tuple[int, Options, str], str | None] = {}

    def __enter__(self) -> LibzmqTrial:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    def _socket(self, socket_type: int) -> zmq.Socket[bytes]:
        if self._ctx is None:
            self._ctx = zmq.Context()
        sock = self._ctx.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    def options(self, socket_type: int, options: Options) -> tuple[int, str] | None:
        """None if libzmq accepts every option, else (index of the first refused, libzmq's reason)."""
        key = (socket_type, options)
        if key not in self._options:
            sock = self._socket(socket_type)
            try:
                self._options[key] = _apply(sock, options)
            finally:
                sock.close(linger=0)
        return self._options[key]

    def bind(self, socket_type: int, options: Options, host: str) -> str | None:
        """None if a socket so configured can bind ``tcp://host:*`` on this machine, else why not."""
        key = (socket_type, options, host)
        if key not in self._binds:
            sock = self._socket(socket_type)
            try:
                if _apply(sock, options) is not None:
                    self._binds[key] = None  # reported by options(), not here
                else:
                    try:
                        sock.bind(f"tcp://{host}:*")
                        self._binds[key] = None
                    except zmq.ZMQError as exc:
                        self._binds[key] = _reason(exc)
            finally:
                sock.close(linger=0)
        return self._binds[key]


def _apply(sock: zmq.Socket[bytes], options: Options) -> tuple[int, str] | None:
    for index, (option, value) in enumerate(options):
        try:
            sock.setsockopt(option, value)
        except zmq.ZMQError as exc:
            return index, _reason(exc)
        except (OverflowError, TypeError, ValueError) as exc:
            return index, str(exc)
    return None


def _reason(exc: zmq.ZMQError) -> str:
    # Without pyzmq's "(addr=...)" suffix: the message names the endpoint already.
    return zmq.strerror(exc.errno) if exc.errno is not None else str(exc)
