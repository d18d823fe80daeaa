"""Clients of other hosts' control endpoints: one request with CURVE and a deadline, and
``status`` of every host at once (threads: each host's wait is its own, so one unreachable
host costs the others nothing and the whole answer comes within the timeout)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from procdevices.cluster import keys
from procdevices.control.client import SupervisorUnreachable, call_supervisor
from procdevices.control.protocol import SupervisorCommand

__all__ = ["HostReply", "Target", "call_remote", "ask_all"]


@dataclass(frozen=True)
class Target:
    """How to reach one host's supervisor: a tcp control endpoint with the cluster keys, or
    (this host) its local ipc endpoint; ``why_not`` when neither exists."""

    name: str
    endpoint: str | None
    keys: Path | None = None
    why_not: str | None = None


def call_remote(
    target: Target, command: SupervisorCommand, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """One request to ``target``'s supervisor; its reply object, or SupervisorUnreachable."""
    if target.endpoint is None:
        raise SupervisorUnreachable(target.why_not or f"host {target.name} has no control endpoint")
    configure = None
    if target.keys is not None:
        try:
            server = keys.server_public(target.keys)
            public, secret = keys.client_pair(target.keys)
        except keys.KeyError_ as e:
            raise SupervisorUnreachable(f"host {target.name}: {e}") from None

        def configure(sock: zmq.Socket[bytes]) -> None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server, public, secret

    try:
        return call_supervisor(target.endpoint, command, args, timeout, configure=configure)
    except SupervisorUnreachable as e:
        raise SupervisorUnreachable(f"host {target.name}: {e}") from None


@dataclass(frozen=True)
class HostReply:
    reachable: bool
    error: str | None
    status: Any

    def as_json(self) -> dict[str, Any]:
        return {"reachable": self.reachable, "error": self.error, "status": self.status}


def _status(target: Target, name: str | None, timeout: float) -> HostReply:
    try:
        reply = call_remote(target, SupervisorCommand.STATUS, {"name": name}, timeout)
    except SupervisorUnreachable as e:
        return HostReply(False, str(e), None)
    if not reply["ok"]:
        # It answered: reachable, but this request failed (an unknown device name, say).
        return HostReply(True, str(reply.get("error")), None)
    return HostReply(True, None, reply["result"])


def ask_all(targets: list[Target], name: str | None, timeout: float) -> dict[str, HostReply]:
    """``status`` of every target at once, each within ``timeout``, in the targets' order."""
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        futures = {t.name: pool.submit(_status, t, name, timeout) for t in targets}
        return {host: future.result() for host, future in futures.items()}
