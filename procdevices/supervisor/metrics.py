"""Prometheus metrics of the supervisor and its devices, served over HTTP when asked for.

    supervisor thread                              HTTP threads (httpserve.py, bounded)
    ─────────────────                              ───────────────────────────────
    probe answered ──rtt_observers──► Metrics.on_probe ── RTT histogram
                                       └─ psutil: CPU seconds, RSS ──► usage[instance]
    Child fields (state, restarts, traffic, ...) ◄── read ── DeviceCollector.collect() ◄── GET /metrics

Everything a scrape shows is already in the supervisor's memory: the devices are asked on
the probe tick, never per scrape, so a scrape costs them nothing, and nothing here touches
the data path. The collector runs in the server's threads: it only reads (attribute reads
are atomic; the supervisor replaces the objects it changes), and it never raises: a device
whose row cannot be read is left out of that scrape and counted in
``procdevices_metrics_errors_total``.

`up` imports this module only when a metrics server is configured (service.py); catching
its error needs metricserror.py only.

The registry is private, never prometheus_client's global one: tests and several
supervisors in one process stay independent.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from procdevices import runlayout
from procdevices.logs import Log, to_logger
from procdevices.supervisor.child import Child
from procdevices.supervisor.config.settings import split_host_port
from procdevices.supervisor.health import Health
from procdevices.supervisor.httpserve import BoundedServer, listen_tcp, listen_unix
from procdevices.supervisor.launcher import DeviceProcess
from procdevices.supervisor.metricserror import MetricsUnavailable
from procdevices.supervisor.states import PROCESS_STATES, State
from procdevices.supervisor.traffic import COUNTERS

LABELS = ("device", "instance", "kind")
# Probe round trips are sub-millisecond on an idle machine, seconds when one is overloaded
# (probe.timeout is at least 10 ms and defaults to 1 s).
RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Supervised(Protocol):
    """What the metrics read of the supervisor."""

    @property
    def children(self) -> list[Child]: ...

    @property
    def health(self) -> Health: ...


@dataclass(frozen=True)
class Usage:
    """A device instance's CPU and memory, as last sampled on the probe tick. Replaced, never
    changed, so the HTTP thread always reads a consistent one."""

    pid: int
    create_time: float | None
    cpu_ended: float  # CPU seconds of the instance's earlier processes
    cpu_current: float  # of the process ``pid``
    rss: int

    @property
    def cpu_total(self) -> float:
        return self.cpu_ended + self.cpu_current

    def sampled(self, pid: int, create_time: float | None, cpu: float, rss: int) -> Usage:
        if (pid, create_time) == (self.pid, self.create_time):
            return Usage(pid, create_time, self.cpu_ended, max(cpu, self.cpu_current), rss)
        # A new process: what the last one used (up to its last sample) is in the past now.
        return Usage(pid, create_time, self.cpu_total, cpu, rss)


# (process) -> (CPU seconds user+system, RSS bytes), or None when it cannot be read.
ReadUsage = Callable[[DeviceProcess], tuple[float, int] | None]


class PsutilReader:
    """Reads a device process's CPU times and RSS through psutil, one handle per process,
    checked against the process's create time so that a reused pid is never read."""

    def __init__(self) -> None:
        self._handles: dict[int, psutil.Process] = {}

    def __call__(self, process: DeviceProcess) -> tuple[float, int] | None:
        pid = process.pid
        handle = self._handles.get(pid)
        try:
            if handle is None or handle.create_time() != process.create_time():
                handle = psutil.Process(pid)
                if process.create_time() is not None and handle.create_time() != process.create_time():
                    return None
                self._handles = {p: h for p, h in self._handles.items() if h.is_running()}
                self._handles[pid] = handle
            with handle.oneshot():
                times = handle.cpu_times()
                return float(times.user + times.system), int(handle.memory_info().rss)
        except psutil.Error:
            self._handles.pop(pid, None)
            return None


class Metrics:
    """The registry and what feeds it from the supervisor's thread."""

    def __init__(self, supervisor: Supervised, log: Log, read_usage: ReadUsage | None = None) -> None:
        self.supervisor = supervisor
        self.log = log
        self.read_usage: ReadUsage = read_usage if read_usage is not None else PsutilReader()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # the supervisor's own process_* metrics
        self.usage: dict[int, Usage] = {}  # by id(child)
        self.rtt = Histogram(
            "procdevices_device_probe_rtt_seconds",
            "Round-trip time of each answered liveness probe.",
            LABELS,
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        for child in supervisor.children:
            self.rtt.labels(*_labels(child))  # every instance has a histogram from the start
        # Instances by id(): a successor after a reload is a new Child even under the same name.
        self._seen = {id(c) for c in supervisor.children}
        self._rtt_labels = {_labels(c) for c in supervisor.children}
        self.collector = DeviceCollector(supervisor, self.usage, log)
        self.registry.register(self.collector)
        supervisor.health.rtt_observers.append(self.on_probe)

    def on_probe(self, child: Child, rtt: float) -> None:
        """An answered probe (supervisor thread): observe its RTT, sample the process."""
        try:
            if id(child) not in self._seen or len(self.supervisor.children) != len(self._seen):
                self._forget_gone()
            self.rtt.labels(*_labels(child)).observe(rtt)
            process = child.process
            if process is None:
                return
            sample = self.read_usage(process)
            if sample is None:
                return
            cpu, rss = sample
            previous = self.usage.get(id(child))
            create_time = process.create_time()
            if previous is None:
                self.usage[id(child)] = Usage(process.pid, create_time, 0.0, cpu, rss)
            else:
                self.usage[id(child)] = previous.sampled(process.pid, create_time, cpu, rss)
        except Exception:
            # The probe's own bookkeeping runs after the observers: it must not pay for a bug here.
            self.collector.failed("sampling " + child.name)

    def _forget_gone(self) -> None:
        """A reload or a scale changed the instances: drop what belonged to those that are
        gone (their series end; a successor of the same name starts its own from zero)."""
        children = list(self.supervisor.children)
        self._seen = {id(c) for c in children}
        for key in [k for k in self.usage if k not in self._seen]:
            del self.usage[key]
        current = {_labels(c) for c in children}
        for labels in self._rtt_labels - current:
            self.rtt.remove(*labels)
        self._rtt_labels = current

    def detach(self) -> None:
        observers = self.supervisor.health.rtt_observers
        if self.on_probe in observers:
            observers.remove(self.on_probe)


@dataclass(frozen=True)
class Row:
    """One device instance as a scrape shows it, read in one go."""

    labels: tuple[str, str, str]
    state: State
    restarts: int
    paused: bool
    blocked: bool
    traffic: dict[str, int]
    cpu_seconds: float | None  # None: never sampled
    rss: int | None  # None: no live process sampled
    last_exit: str


class DeviceCollector(Collector):
    def __init__(self, supervisor: Supervised, usage: dict[int, Usage], log: Log) -> None:
        self.supervisor = supervisor
        self.usage = usage
        self.log = log
        # Scrapes run concurrently (one thread per request): the high-water marks and the
        # error count are shared.
        self._lock = threading.Lock()
        # Counters never go backwards, even if a scrape catches the supervisor between the
        # two steps of folding an ended process's traffic into the totals.
        self._high: dict[tuple[int, str], int] = {}  # by (id(child), counter)
        self.errors = 0

    def failed(self, what: str) -> None:
        with self._lock:
            self.errors += 1
            first = self.errors == 1
        if first:  # once: a scrape every few seconds must not flood the log
            self.log(f"metrics: error while {what} (reported once):\n{traceback.format_exc()}", level=logging.ERROR)

    def collect(self) -> Iterator[Metric]:
        rows = []
        children = list(self.supervisor.children)
        for child in children:
            try:
                rows.append(self._row(child))
            except Exception:
                self.failed("reading " + child.name)
        with self._lock:
            errors = self.errors
            live = {id(c) for c in children}
            self._high = {k: v for k, v in self._high.items() if k[0] in live}
        yield from families(rows, errors)

    def _row(self, child: Child) -> Row:
        state = child.state
        process = child.process
        usage = self.usage.get(id(child))
        live = state in PROCESS_STATES and process is not None
        current = usage is not None and live and process is not None and usage.pid == process.pid
        totals = child.traffic.totals()
        with self._lock:
            for key in COUNTERS:
                mark = (id(child), key)
                totals[key] = self._high[mark] = max(self._high.get(mark, 0), totals[key])
        return Row(
            labels=_labels(child),
            state=state,
            restarts=child.restarts,
            paused=child.paused,
            blocked=child.blocked is not None and state is State.RUNNING,
            traffic=totals,
            cpu_seconds=usage.cpu_total if usage is not None else None,
            rss=usage.rss if usage is not None and current else None,
            last_exit=child.last_exit,
        )


def families(rows: Iterable[Row], errors: int) -> Iterator[Metric]:
    """The metric families of one scrape, from rows already read."""
    rows = list(rows)
    state = GaugeMetricFamily(
        "procdevices_device_state",
        "1 for the state the device instance is in, 0 for the others.",
        labels=[*LABELS, "state"],
    )
    up = GaugeMetricFamily("procdevices_device_up", "1 when the device instance is RUNNING, else 0.", labels=LABELS)
    restarts = CounterMetricFamily(
        "procdevices_device_restarts", "Restarts the supervisor decided after the instance exited.", labels=LABELS
    )
    messages = CounterMetricFamily(
        "procdevices_device_messages",
        "Message frames through the instance's sockets, across restarts (side: front = in socket, back = out socket).",
        labels=[*LABELS, "side", "direction"],
    )
    traffic_bytes = CounterMetricFamily(
        "procdevices_device_bytes",
        "Bytes through the instance's sockets, across restarts.",
        labels=[*LABELS, "side", "direction"],
    )
    paused = GaugeMetricFamily("procdevices_device_paused", "1 while forwarding is paused.", labels=LABELS)
    blocked = GaugeMetricFamily(
        "procdevices_device_blocked", "1 while the last probe found forwarding waiting on a full peer.", labels=LABELS
    )
    rss = GaugeMetricFamily(
        "procdevices_device_resident_memory_bytes", "Resident memory of the device process.", labels=LABELS
    )
    cpu = CounterMetricFamily(
        "procdevices_device_cpu_seconds", "User and system CPU time of the instance's processes.", labels=LABELS
    )
    last_exit = InfoMetricFamily(
        "procdevices_device_last_exit", "How the instance's last process ended.", labels=LABELS
    )
    for row in rows:
        labels = list(row.labels)
        for value in State:
            state.add_metric([*labels, value.value], 1.0 if row.state is value else 0.0)
        up.add_metric(labels, 1.0 if row.state is State.RUNNING else 0.0)
        restarts.add_metric(labels, row.restarts)
        for key, number in row.traffic.items():
            side, kind, direction = key.split("_")  # front_msgs_in
            family = messages if kind == "msgs" else traffic_bytes
            family.add_metric([*labels, side, direction], number)
        paused.add_metric(labels, 1.0 if row.paused else 0.0)
        blocked.add_metric(labels, 1.0 if row.blocked else 0.0)
        if row.cpu_seconds is not None:
            cpu.add_metric(labels, row.cpu_seconds)
        if row.rss is not None:
            rss.add_metric(labels, row.rss)
        if row.last_exit:
            last_exit.add_metric(labels, {"reason": row.last_exit})
    yield from (state, up, restarts, messages, traffic_bytes, paused, blocked, rss, cpu, last_exit)
    yield CounterMetricFamily(
        "procdevices_metrics_errors",
        "Errors met while reading the supervisor for metrics (the log has the first).",
        value=errors,
    )


def _labels(child: Child) -> tuple[str, str, str]:
    return child.device_name, child.name, child.config.kind


def metrics_socket_path(run_dir: Path) -> Path:
    """Where ``metrics_socket = true`` serves the metrics: reachable by the run dir's owner only."""
    return Path(runlayout.metrics_socket(run_dir))


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """The running HTTP server (httpserve.py): ``address`` is where it listens ("HOST:PORT",
    the real port when 0 was asked for, or the unix socket's path); ``close()`` stops it and
    frees the port."""

    def __init__(self, metrics: Metrics, server: BoundedServer, address: str, url: str) -> None:
        self.metrics = metrics
        self.server = server
        self.address = address
        self.url = url

    def close(self) -> None:
        self.metrics.detach()
        self.server.close()


def start_metrics(
    supervisor: Supervised, address: str | None = None, log: Log | None = None, *, unix_path: str | None = None
) -> MetricsServer:
    """Serve ``/metrics`` at ``address`` ("HOST:PORT", port 0: any free one), or on the unix
    socket ``unix_path``, from a bounded server's threads (httpserve.py); MetricsUnavailable
    with one line when it cannot listen there."""
    log = log or to_logger()
    where = unix_path if unix_path is not None else address
    assert where is not None, "an address or a unix socket path"
    try:
        if unix_path is not None:
            listener = listen_unix(unix_path)
        else:
            assert address is not None
            try:
                host, port = split_host_port(address)
            except ValueError as e:
                raise MetricsUnavailable(f"metrics: invalid address {address!r}: {e}") from None
            listener = listen_tcp(host, port)
    except (OSError, UnicodeError) as e:
        strerror = e.strerror if isinstance(e, OSError) else None
        raise MetricsUnavailable(f"metrics: cannot listen on {where}: {strerror or e}") from None
    metrics = Metrics(supervisor, log)
    server = BoundedServer(listener, make_wsgi_app(metrics.registry), log)
    if unix_path is not None:
        return MetricsServer(
            metrics, server, unix_path, f"unix:{unix_path} (curl --unix-socket {unix_path} http://localhost/metrics)"
        )
    bound_host, bound_port = listener.getsockname()[:2]
    shown = format_address(str(bound_host), int(bound_port))
    return MetricsServer(metrics, server, shown, f"http://{shown}/metrics")
