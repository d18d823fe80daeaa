"""The restart phase: SIGKILL a supervised streamer, time its replacement."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import tempfile
import threading
import time
from typing import Any

import psutil
import zmq
import zmq.devices

from bench.devices import Supervised
from bench.harness import PhaseTimeout, Profile, deadline, log, median, record_error, summary
from bench.worker import now, rotate
from procdevices.control.client import ControlClient
from procdevices.control.protocol import Command
from procdevices.errors import DeviceError

RESTART_SETTINGS = ("own_sockets", "own_sockets_false")


class Traffic(threading.Thread):
    """After ``go`` is set: sends a message every ~1 ms (non-blocking) and records when the
    first one comes back through the device."""

    def __init__(self, push: zmq.Socket[bytes], pull: zmq.Socket[bytes]) -> None:
        super().__init__(daemon=True)
        self.push, self.pull = push, pull
        self.go = threading.Event()
        self.t_forwarded: float | None = None
        self.abort = False

    def run(self) -> None:
        self.go.wait()
        seq = 0
        end = now() + 10.0
        while now() < end and not self.abort:
            seq += 1
            with contextlib.suppress(zmq.Again):
                self.push.send(struct.pack("<Q", seq), zmq.NOBLOCK)
            if self.pull.poll(1):
                self.pull.recv()
                self.t_forwarded = now()
                return


def drain(sock: zmq.Socket[bytes]) -> None:
    while sock.poll(0):
        sock.recv()


def refused_connects(monitors: list[zmq.Socket[bytes]]) -> int:
    """Connects refused since the last call. libzmq announces every reconnect timer it sets
    as ZMQ_EVENT_CONNECT_RETRIED: one after each lost connection (ZMQ_EVENT_DISCONNECTED),
    and one after each connect that failed; over ipc to a path that exists, failed means
    refused (nobody listening)."""
    retried = disconnected = 0
    for m in monitors:
        while m.poll(0):
            frames = m.recv_multipart()
            event = struct.unpack("=hi", frames[0][:6])[0]
            if event == zmq.EVENT_CONNECT_RETRIED:
                retried += 1
            elif event == zmq.EVENT_DISCONNECTED:
                disconnected += 1
    return max(0, retried - disconnected)


def one_kill(
    sup: Supervised,
    ctl: str,
    push: zmq.Socket[bytes],
    pull: zmq.Socket[bytes],
    monitors: list[zmq.Socket[bytes]],
    ping_ctx: zmq.Context[zmq.Socket[bytes]],
    pool: int,
) -> dict[str, Any]:
    st = sup.wait_running(1, 30.0, pool_idle=pool)
    dev = st["devices"][0]
    old = dev["pid"]
    endpoints = dev["endpoints"]
    # It forwards now: one message through, then nothing left in flight.
    push.send(b"before", zmq.NOBLOCK)
    end = now() + 5.0
    while True:  # late messages of the previous kill may come first
        if not pull.poll(max(1, int((end - now()) * 1000))):
            raise PhaseTimeout("device does not forward before the kill")
        if pull.recv() == b"before":
            break
    drain(pull)
    refused_connects(monitors)  # only the ones from now on count
    traffic = Traffic(push, pull)
    traffic.start()
    reaped: list[float] = []

    def watch_reap() -> None:  # the supervisor reaps the old process when it handles the exit
        end = now() + 10.0
        while now() < end:
            try:
                os.kill(old, 0)
            except ProcessLookupError:
                reaped.append(now())
                return
            time.sleep(0.0005)

    reaper = threading.Thread(target=watch_reap, daemon=True)
    reaper.start()
    # Processes that exist before the kill: a replacement among them came from the warm pool.
    before = {p.pid for p in psutil.Process(sup.pid).children(recursive=True)}
    t0 = now()
    os.kill(old, signal.SIGKILL)
    traffic.go.set()
    t_probe = None
    new_pid = None
    end = t0 + 10.0
    while now() < end:
        client = ControlClient(ctl, ping_ctx)  # fresh socket each try: connects at once
        try:
            body = client.request(Command.PING, 0.02)
            if body.get("pid") != old:
                t_probe, new_pid = now(), body.get("pid")
                break
        except DeviceError:
            pass
        finally:
            client.close()
    traffic.join(10.0)
    traffic.abort = True
    reaper.join(10.0)
    if t_probe is None:
        raise PhaseTimeout(f"no new device answered PING within 10s; log: {sup.log_tail()}")
    # The endpoints the new process reported (its ready report may still be on its way).
    end = now() + 5.0
    while True:
        now_dev = sup.status(2.0)["devices"][0]
        if (now_dev["pid"] == new_pid and now_dev["state"] == "RUNNING") or now() > end:
            break
        time.sleep(0.005)
    after = now_dev["endpoints"]
    return {
        "probe_ms": (t_probe - t0) * 1000,
        "forward_ms": (traffic.t_forwarded - t0) * 1000 if traffic.t_forwarded else None,
        "reaped_ms": (reaped[0] - t0) * 1000 if reaped else None,
        "refused_connects": refused_connects(monitors),
        "t_kill": t0,  # this process's perf_counter (CLOCK_MONOTONIC): for restart_steps.py
        "t_forwarded": traffic.t_forwarded,
        "endpoints_kept": after == endpoints,
        "old_pid": old,
        "new_pid": new_pid,
        "new_from_warm_pool": new_pid in before,
    }


def restart_series(prof: Profile, tmp: str, *, pool: int | None, own_sockets: bool) -> dict[str, Any]:
    """``prof.kills`` SIGKILLs of a supervised streamer that binds its PULL and PUSH over ipc;
    a PUSH and a PULL client connect to it and reconnect every 1 ms."""
    pool_line = f"pool_size = {pool}\n" if pool is not None else ""  # None: the default (2)
    effective_pool = 2 if pool is None else pool
    stable = 0.5
    topology = (
        pool_line
        + "\n[supervisor.defaults]\n"
        + "probe = { interval = 0.05, timeout = 0.5, failures = 3 }\n"
        + f"stable_after = {stable}\n"
        + "intensity = { max_restarts = 1000, within = 30.0 }\n"
        + ("" if own_sockets else "own_sockets = false\n")
        + '\n[devices.r]\nkind = "streamer"\n'
        + f'in = {{ type = "PULL", bind = ["ipc://{tmp}/ri"] }}\n'
        + f'out = {{ type = "PUSH", bind = ["ipc://{tmp}/ro"] }}\n'
    )
    ctx = zmq.Context()
    ctx.setsockopt(zmq.RECONNECT_IVL, 1)  # a lost peer is retried every 1 ms
    ping_ctx = zmq.Context()
    ping_ctx.setsockopt(zmq.RECONNECT_IVL, 1)
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    monitors = [s.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED) for s in (push, pull)]
    sup = Supervised(tmp, topology)
    kills: list[dict[str, Any]] = []
    label = f"{'own_sockets' if own_sockets else 'own_sockets = false'}, pool {effective_pool}"
    try:
        sup.start()
        sup.wait_running(1, 30.0, pool_idle=effective_pool)
        push.connect(f"ipc://{tmp}/ri")
        pull.connect(f"ipc://{tmp}/ro")
        ctl = f"ipc://{sup.run_dir}/ctl/r.sock"
        for k in range(prof.kills):
            time.sleep(stable + 0.2)  # a stable run: the restart is immediate (no backoff)
            try:
                r = one_kill(sup, ctl, push, pull, monitors, ping_ctx, effective_pool)
                kills.append(r)
                log(
                    f"  kill {k + 1}/{prof.kills} ({label}): probe {r['probe_ms']:.1f} ms, "
                    f"forward {r['forward_ms'] if r['forward_ms'] is None else round(r['forward_ms'], 1)} ms, "
                    f"reaped {r['reaped_ms'] if r['reaped_ms'] is None else round(r['reaped_ms'], 1)} ms, "
                    f"refused {r['refused_connects']}"
                )
            except Exception as e:
                record_error("restart", f"{label} kill {k + 1}", e)
        restarts = sup.status(2.0)["devices"][0]["restarts"]
    finally:
        sup.close()
        for s in (*monitors, push, pull):
            s.close(0)
        ctx.term()
        ping_ctx.term()

    return {
        "pool_size": effective_pool,
        "own_sockets": own_sockets,
        "kills": kills,
        "supervisor_restarts": restarts,
        "probe_ms": kill_stat(kills, "probe_ms"),
        "forward_ms": kill_stat(kills, "forward_ms"),
        "reaped_ms": kill_stat(kills, "reaped_ms"),
        "refused_connects": sum(k["refused_connects"] for k in kills),
        "endpoints_kept": all(k["endpoints_kept"] for k in kills),
        "topology": topology,
    }


def kill_stat(kills: list[dict[str, Any]], key: str) -> dict[str, Any]:
    xs = [k[key] for k in kills if k.get(key) is not None]
    s = summary(xs)
    s.pop("samples", None)
    s["worst"] = s.pop("max")
    return s


def phase_restart(prof: Profile, tmp: str) -> dict[str, Any]:
    """``prof.restart_runs`` runs of each setting, alternately (the first setting of a run
    alternates too), then one run with ``pool_size = 0`` (every restart spawns)."""
    out: dict[str, Any] = {s: {"runs": []} for s in RESTART_SETTINGS}
    plan: list[tuple[str, int | None]] = [
        (s, None) for run in range(prof.restart_runs) for s in rotate(RESTART_SETTINGS, run)
    ]
    plan.append(("own_sockets", 0))
    for setting, pool in plan:
        own = setting == "own_sockets"
        log(f"restart: {prof.kills} kills, {setting}, pool_size {'default' if pool is None else pool}")
        d = tempfile.mkdtemp(prefix="r-", dir=tmp)
        try:
            with deadline(60 + prof.kills * 15, f"restart {setting} pool {pool}"):
                series = restart_series(prof, d, pool=pool, own_sockets=own)
            if pool is None:
                out[setting]["runs"].append(series)
            else:
                out["pool_0"] = series
        except Exception as e:
            record_error("restart", f"{setting} pool {pool}", e)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    for setting in RESTART_SETTINGS:
        runs = out[setting]["runs"]
        kills = [k for r in runs for k in r["kills"]]
        out[setting].update(
            forward_ms=kill_stat(kills, "forward_ms"),
            probe_ms=kill_stat(kills, "probe_ms"),
            reaped_ms=kill_stat(kills, "reaped_ms"),
            forward_median_of_run_medians=median([r["forward_ms"]["median"] for r in runs if r["forward_ms"]["n"]]),
            refused_connects=sum(r["refused_connects"] for r in runs),
            endpoints_kept=all(r["endpoints_kept"] for r in runs),
        )
    return out


# ------------------------------------------------------------------------------------------
# idle overhead and stop of big_n devices
