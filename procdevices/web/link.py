"""The ``web`` process's side of the supervisor: what the page shows, kept up to date.

    supervisor.sock ◄── status (REQ, call_supervisor in a thread) ── every POLL_VIEWED s while a
                                                                      page is open (POLL_IDLE s
                                                                      otherwise), and at once
                                                                      after an event
    events.sock ──► SUB (zmq.asyncio) ── state/decision/command events ──► every open page
                                          (pushed as they come: a restart that takes 30 ms still
                                          shows as BACKOFF → QUEUED → STARTING → RUNNING)

The supervisor is never waited on by anything but this process: a page that does not keep up
loses its stream (it reconnects and gets a fresh snapshot), and a supervisor that is not there
is shown as unreachable and looked for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from procdevices import runlayout
from procdevices.control.client import SupervisorUnreachable, call_supervisor
from procdevices.control.protocol import SupervisorCommand
from procdevices.web import graph
from procdevices.web.history import RateHistory

if TYPE_CHECKING:
    from procdevices.cluster.remote import Target

log = logging.getLogger("procdevices.web")

API_VERSION = 1
POLL_VIEWED = 1.0  # status polls while a page is open: rates and uptimes move every second
POLL_IDLE = 5.0  # otherwise, only to keep the sparklines' history
EVENT_SETTLE = 0.05  # after an event, wait this long for its siblings before asking status
STATUS_TIMEOUT = 2.0
SUBSCRIBER_BACKLOG = 256  # messages queued for one page before it is dropped (it reconnects)
# Commands whose `command` events say nothing changed: our own polls among them.
READ_COMMANDS = frozenset({"status", "stats"})
TRANSITIONS_KEPT = 8
# `web --all`: each host's wait; an unreachable host is greyed after about this long, and the
# others' figures are at most this late meanwhile (the page itself never waits: it is pushed).
HOSTS_TIMEOUT = 1.5


@dataclass(frozen=True)
class Cluster:
    """``web --all``: every host of the topology file ``source`` (``[hosts]``), each reached as
    ``status --all`` reaches it (procdevices.cluster.remote)."""

    source: str
    targets: tuple[Target, ...]

    def target(self, host: str | None) -> Target | None:
        return next((t for t in self.targets if t.name == host), None)


class Subscriber:
    """One open page's stream: messages (SSE event name, JSON text) in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)

    def send(self, kind: str, data: str) -> bool:
        try:
            self.queue.put_nowait((kind, data))
            return True
        except asyncio.QueueFull:
            return False


class SupervisorLink:
    def __init__(self, run_dir: Path, *, allow_actions: bool, cluster: Cluster | None = None) -> None:
        self.run_dir = run_dir
        self.cluster = cluster
        self._host_last: dict[str, list[dict[str, Any]]] = {}  # --all: each host's devices last seen
        self.endpoint = runlayout.supervisor_endpoint(run_dir)
        self.allow_actions = allow_actions
        self.history = RateHistory()
        self.subscribers: set[Subscriber] = set()
        self._transitions: dict[str, list[dict[str, Any]]] = {}
        self._sockets: graph.TopologySockets = {}
        self._topology_key: tuple[str, float, tuple[str, ...]] | None = None
        self._topology_error: str | None = None
        self._last_status: dict[str, Any] | None = None
        self.state: dict[str, Any] = self._snapshot(None, "not asked yet")
        self._wake = asyncio.Event()
        self._ctx = zmq.asyncio.Context()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()  # the first page or /api/state already has the supervisor's answer
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._follow())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.end_streams()
        self._ctx.destroy(linger=0)

    def end_streams(self) -> None:
        """Every open page's stream ends (the server is stopping): none is waited for."""
        for subscriber in list(self.subscribers):
            self.subscribers.discard(subscriber)
            if subscriber.queue.full():
                subscriber.queue.get_nowait()
            subscriber.queue.put_nowait(None)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        subscriber.send("state", json.dumps(self.state))
        self.subscribers.add(subscriber)
        self._wake.set()  # a new viewer: fresh rates now, then the viewed cadence
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def _broadcast(self, kind: str, payload: dict[str, Any]) -> None:
        data = json.dumps(payload)
        for subscriber in list(self.subscribers):
            if not subscriber.send(kind, data):
                # Too slow: dropped, never waited for. Its page reconnects and starts afresh.
                self.subscribers.discard(subscriber)
                subscriber.queue.get_nowait()
                subscriber.queue.put_nowait(None)

    # -- status ------------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not freeze the page: logged, tried again
                log.exception("web: refreshing the state failed")
            interval = POLL_VIEWED if self.subscribers else POLL_IDLE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
                await asyncio.sleep(EVENT_SETTLE)
            self._wake.clear()

    async def refresh(self) -> None:
        if self.cluster is not None:
            await self._refresh_hosts(self.cluster)
            return
        status: dict[str, Any] | None = None
        error: str | None = None
        if not Path(runlayout.supervisor_socket(self.run_dir)).is_socket():
            error = f"no supervisor is running with run dir {self.run_dir}"
        else:
            try:
                reply = await asyncio.to_thread(
                    call_supervisor, self.endpoint, SupervisorCommand.STATUS, None, STATUS_TIMEOUT
                )
            except SupervisorUnreachable as e:
                error = str(e)
            else:
                if reply.get("ok"):
                    status = reply["result"]
                else:
                    error = f"status: {reply.get('error')}"
        await self._publish(status, error)

    async def _refresh_hosts(self, cluster: Cluster) -> None:
        """``--all``: every host at once (the threads of ``ask_all``), merged into one status;
        the picture is reachable while one host answers, and each host's region says its own."""
        from procdevices.cluster.remote import ask_all

        replies = await asyncio.to_thread(ask_all, list(cluster.targets), None, HOSTS_TIMEOUT)
        for host, reply in replies.items():
            if reply.reachable and reply.status is not None:
                self._host_last[host] = reply.status["devices"]
        merged = graph.merge_hosts({h: r.as_json() for h, r in replies.items()}, self._host_last)
        missing = [f"{h}: {r.error}" for h, r in replies.items() if not r.reachable or r.status is None]
        if len(missing) == len(replies):
            await self._publish(None, "no host answered (" + "; ".join(missing) + ")", merged)
        else:
            unanswered = "; ".join(f"host {m}" for m in missing) or None  # shown above the picture
            await self._publish({"supervisor": {"source": cluster.source}, **merged}, unanswered)

    async def _publish(
        self, status: dict[str, Any] | None, error: str | None, unreachable: dict[str, Any] | None = None
    ) -> None:
        """The new ``/api/state`` to every page; ``unreachable``: what to draw greyed instead of
        the last status seen (``--all``, no host answered: every region greyed)."""
        if unreachable is not None:
            self._last_status = {"supervisor": None, **unreachable}
        now = time.time()
        if status is not None:
            await self._load_topology(status)
            names = [d["name"] for d in status["devices"]]
            self._transitions = {n: self._transitions.get(n, []) for n in names}
            self._last_status = status
        self.state = self._snapshot(status, error, now)
        if status is not None:
            self.history.add(now, {g["device"]: g["rates"] for g in self.state["devices"]})
        for group in self.state["devices"]:
            group["history"] = self.history.series(group["device"], now)
        self._broadcast("state", self.state)

    async def _load_topology(self, status: dict[str, Any]) -> None:
        """Socket types and connect endpoints come from the topology file the supervisor
        reports as its source (``status`` does not carry them); read again when the source or
        its modification time changes, or after a ``reload``."""
        from procdevices.supervisor.config import DEFAULT_SOURCE

        source = str(status["supervisor"].get("source") or DEFAULT_SOURCE)
        try:
            mtime = os.stat(source).st_mtime if source != DEFAULT_SOURCE else 0.0
        except OSError:
            mtime = -1.0
        names = tuple(sorted(d["name"] for d in status["devices"]))
        key = (source, mtime, names)
        if key == self._topology_key:
            return
        self._topology_key = key
        try:
            self._sockets = await asyncio.to_thread(_read_sockets, source, names)
            self._topology_error = None
        except Exception as e:  # a file edited since, or gone: the picture loses its arrows, not more
            self._sockets = {}
            self._topology_error = f"{source}: {e}"
            log.warning("web: cannot read the topology's sockets: %s", self._topology_error)

    def _snapshot(self, status: dict[str, Any] | None, error: str | None, now: float | None = None) -> dict[str, Any]:
        """``/api/state``. While the supervisor does not answer, the devices last seen are
        still drawn (the page greys them) with ``reachable`` false."""
        drawn = graph.build(status or self._last_status or {"devices": []}, self._sockets)
        for group in drawn["devices"]:
            for instance in group["instances"]:
                instance["transitions"] = list(self._transitions.get(instance["name"], []))
        return {
            "api": API_VERSION,
            "time": round(now or time.time(), 3),
            "reachable": status is not None,
            "error": error,
            "actions": self.allow_actions,
            "run_dir": str(self.run_dir),
            "supervisor": status["supervisor"] if status and self.cluster is None else None,
            "all": self.cluster is not None,
            "topology": {
                "source": status["supervisor"].get("source") if status else None,
                "error": self._topology_error,
            },
            **drawn,
        }

    # -- events ------------------------------------------------------------------------------
    async def _follow(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.linger = 0
        sock.subscribe(b"")
        # libzmq keeps trying until the supervisor binds it, and again after it restarts.
        sock.connect(runlayout.events_endpoint(self.run_dir))
        try:
            while True:
                raw = await sock.recv()
                try:
                    payload = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(payload, dict):
                    self.on_event(payload)
        finally:
            sock.close(linger=0)

    def on_event(self, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "command" and payload.get("command") in READ_COMMANDS:
            return  # a read (ours among them) changes nothing
        if kind == "state" and isinstance(payload.get("instance"), str):
            kept = self._transitions.setdefault(payload["instance"], [])
            kept.append({k: payload.get(k) for k in ("time", "from", "to", "reason", "pid")})
            del kept[:-TRANSITIONS_KEPT]
        self._broadcast("event", payload)
        self.poke()

    def poke(self) -> None:
        """Ask ``status`` again now (after an event settles)."""
        self._wake.set()


def _read_sockets(source: str, names: tuple[str, ...]) -> dict[str, dict[str, graph.SocketTopology]]:
    from procdevices.supervisor.config import DEFAULT_SOURCE, default_topology, load_topology

    topology = default_topology() if source == DEFAULT_SOURCE else load_topology(source)
    return graph.sockets_from_topology(topology.devices, names, topology.references)
