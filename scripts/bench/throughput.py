"""The throughput and mq phases: PUSH -> PULL through each kind of device."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import psutil
import zmq
import zmq.devices

from bench.devices import PdDevice, PyzmqDevice, Supervised, ipc_path, settle
from bench.harness import (
    SIZES,
    TP_CASES,
    TRANSPORTS,
    Helpers,
    Profile,
    cpu_seconds,
    deadline,
    log,
    record_error,
    summary,
)
from bench.worker import rotate


@contextlib.contextmanager
def tp_device(
    case: str, transport: str, tmp: str, tag: str, pool: int | None = None
) -> Iterator[tuple[str | None, str | None, int | None]]:
    """Yields (in endpoint, out endpoint, device pid) of a running streamer; Nones for direct."""
    if case == "direct":
        yield None, None, None
        return
    if case in ("pyzmq", "pyzmq-mq"):
        d = PyzmqDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH, monitored=case == "pyzmq-mq")
        try:
            eps = d.bind(transport, tmp, tag)
            d.start()
            yield eps[0], eps[1], d.pid
        finally:
            d.stop()
        return
    if case in ("procdevices", "procdevices-mq"):
        p = PdDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH, monitored=case == "procdevices-mq")
        try:
            p.bind(transport, tmp, tag)
            p.start()
            yield p.endpoints() + (p.pid,)
        finally:
            p.stop()
        return
    workdir = tempfile.mkdtemp(prefix=f"{tag}-", dir=tmp)
    if transport == "ipc":
        sockets = f'in = {{ bind = ["ipc://{workdir}/in"] }}\nout = {{ bind = ["ipc://{workdir}/out"] }}\n'
    else:
        sockets = 'in = { bind = ["tcp://127.0.0.1:*"] }\nout = { bind = ["tcp://127.0.0.1:*"] }\n'
    sup = Supervised(workdir, f'\n[devices.tp]\nkind = "streamer"\n{sockets}', pool=pool)
    tap: subprocess.Popen[bytes] | None = None
    try:
        sup.start()
        settle(sup)
        st = sup.status_cli()
        eps = st["devices"][0]["endpoints"]
        if case == "supervised-tap":
            # A reader that keeps up as well as it can; what it cannot take, the device drops.
            command = [sys.executable, "-m", "procdevices", "tap", "tp", "--run-dir", sup.run_dir, "--format", "raw"]
            tap = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield eps["in"][0], eps["out"][0], st["devices"][0]["pid"]
    finally:
        if tap is not None:
            tap.send_signal(signal.SIGINT)
            try:
                tap.wait(10)
            except subprocess.TimeoutExpired:
                tap.kill()
                tap.wait()
        sup.close()


def supervisor_beside(device: int) -> list[int]:
    """The supervisor of a supervised device and its other processes (warm workers, resource
    tracker): what runs beside the device and could take CPU from the measurement."""
    try:
        up = psutil.Process(device).parent()
        if up is None:
            return []
        return [up.pid] + [p.pid for p in up.children(recursive=True) if p.pid != device]
    except psutil.Error:
        return []


def run_tp_case(
    helpers: Helpers, case: str, transport: str, tmp: str, tag: str, prof: Profile
) -> dict[int, dict[str, Any]]:
    recv_w, send_w = helpers.workers[0], helpers.workers[1]
    results: dict[int, dict[str, Any]] = {}
    with tp_device(case, transport, tmp, tag, prof.supervised_pool) as (in_ep, out_ep, pid):
        for size in SIZES:
            warm, timed = prof.tp_msgs[size]
            extra = 3000
            try:
                if case == "direct":
                    bind_ep = ipc_path(tmp, f"{tag}-direct-{size}") if transport == "ipc" else "tcp://127.0.0.1:*"
                    actual = recv_w.call("recv", bind_ep, True, warm, timed, extra, 10.0)
                    target = actual
                else:
                    recv_w.call("recv", out_ep, False, warm, timed, extra, 10.0)
                    target = in_ep
                cpu0 = cpu_seconds([pid]) if pid else None
                beside = supervisor_beside(pid) if case.startswith("supervised") and pid else []
                beside0 = cpu_seconds(beside)
                send_w.send("send", target, size, warm + timed + extra, 10.0)
                done = recv_w.reply(180.0)
                send_w.reply(30.0)
                cpu1 = cpu_seconds([pid]) if pid else None
                elapsed = done["t_last"] - done["t_first"]
                n = done["messages"] - 1
                results[size] = {
                    "msgs_per_s": n / elapsed,
                    "mb_per_s": n * size / elapsed / 1e6,
                    "seconds": elapsed,
                    "messages": done["messages"],
                    "warmup": warm,
                    "loadavg1": os.getloadavg()[0],
                    # CPU the device process used per forwarded message (warm-up
                    # included): insensitive to how the 2 CPUs were shared.
                    "device_cpu_us_per_msg": (cpu1 - cpu0) / (warm + timed + extra) * 1e6 if pid else None,
                    # CPU that `up`, its warm workers and its resource tracker used meanwhile
                    "supervisor_cpu_ms": (cpu_seconds(beside) - beside0) * 1000 if beside else None,
                    "lost": done["lost"],
                }
            except Exception as e:
                record_error("throughput", f"{case} {transport} {size}B", e)
                helpers.renew()
            finally:
                with contextlib.suppress(Exception):
                    helpers.reset()
    return results


def phase_throughput(
    helpers: Helpers, prof: Profile, tmp: str, cases: tuple[str, ...] = TP_CASES, base_case: str = "pyzmq"
) -> dict[str, Any]:
    # raw[transport][size][case] -> list of per-rep rates; ratios likewise (vs base_case, same rep)
    raw: dict[str, Any] = {t: {s: {c: [] for c in cases} for s in SIZES} for t in TRANSPORTS}
    mb: dict[str, Any] = {t: {s: {c: [] for c in cases} for s in SIZES} for t in TRANSPORTS}
    cpu: dict[str, Any] = {t: {s: {c: [] for c in cases} for s in SIZES} for t in TRANSPORTS}
    cpu_ratios: dict[str, Any] = {t: {s: {c: [] for c in cases} for s in SIZES} for t in TRANSPORTS}
    ratios: dict[str, Any] = {t: {s: {c: [] for c in cases if c != base_case} for s in SIZES} for t in TRANSPORTS}
    order_log = []
    samples: list[dict[str, Any]] = []
    for rep in range(prof.reps):
        for transport in rotate(TRANSPORTS, rep):
            order = rotate(cases, rep)
            order_log.append({"rep": rep, "transport": transport, "order": order})
            per_rep: dict[str, dict[int, dict[str, Any]]] = {}
            for case in order:
                log(f"throughput rep {rep + 1}/{prof.reps} {transport} {case}")
                try:
                    with deadline(300, f"throughput {case} {transport}"):
                        per_rep[case] = run_tp_case(helpers, case, transport, tmp, f"t{rep}{transport}{case[:3]}", prof)
                except Exception as e:
                    record_error("throughput", f"{case} {transport}", e)
                    helpers.renew()
            for size in SIZES:
                base = per_rep.get(base_case, {}).get(size)
                for case in cases:
                    r = per_rep.get(case, {}).get(size)
                    if r is None:
                        continue
                    samples.append({"rep": rep, "transport": transport, "size": size, "case": case, **r})
                    raw[transport][size][case].append(r["msgs_per_s"])
                    mb[transport][size][case].append(r["mb_per_s"])
                    if r["device_cpu_us_per_msg"] is not None:
                        cpu[transport][size][case].append(r["device_cpu_us_per_msg"])
                        if case not in (base_case, "direct") and base is not None and base["device_cpu_us_per_msg"]:
                            cpu_ratios[transport][size][case].append(
                                r["device_cpu_us_per_msg"] / base["device_cpu_us_per_msg"]
                            )
                    if case != base_case and base is not None:
                        ratios[transport][size][case].append(r["msgs_per_s"] / base["msgs_per_s"])
    out: dict[str, Any] = {
        "order": order_log,
        "samples": samples,
        "results": [],
        "losses": [{k: x[k] for k in ("rep", "transport", "size", "case", "lost")} for x in samples if x.get("lost")],
    }
    for t in TRANSPORTS:
        for s in SIZES:
            for c in cases:
                out["results"].append(
                    {
                        "transport": t,
                        "size": s,
                        "case": c,
                        "msgs_per_s": summary(raw[t][s][c]),
                        "mb_per_s": summary(mb[t][s][c]),
                        "ratio_vs_pyzmq": summary(ratios[t][s][c]) if c != base_case else None,
                        "device_cpu_us_per_msg": summary(cpu[t][s][c]),
                        "device_cpu_ratio_vs_pyzmq": summary(cpu_ratios[t][s][c]),
                    }
                )
    return out


# ------------------------------------------------------------------------------------------
# latency
