"""The latency phase: REQ -> ROUTER/DEALER queue -> REP round trips; and the PING prober."""

from __future__ import annotations

import array
import contextlib
import statistics
import tempfile
from collections.abc import Iterator
from typing import Any

import zmq
import zmq.devices

from bench.devices import PdDevice, PyzmqDevice, Supervised, settle
from bench.harness import (
    LAT_CASES,
    TRANSPORTS,
    Helpers,
    Profile,
    deadline,
    log,
    median,
    percentile,
    record_error,
    summary,
)


@contextlib.contextmanager
def queue_device(case: str, transport: str, tmp: str, tag: str, pool: int | None = None) -> Iterator[tuple[str, str]]:
    if case == "pyzmq":
        d = PyzmqDevice(zmq.QUEUE, zmq.ROUTER, zmq.DEALER)
        try:
            eps = d.bind(transport, tmp, tag)
            d.start()
            yield eps
        finally:
            d.stop()
    elif case == "procdevices":
        p = PdDevice(zmq.QUEUE, zmq.ROUTER, zmq.DEALER)
        try:
            p.bind(transport, tmp, tag)
            p.start()
            yield p.endpoints()
        finally:
            p.stop()
    else:
        workdir = tempfile.mkdtemp(prefix=f"{tag}-", dir=tmp)
        if transport == "ipc":
            sockets = f'in = {{ bind = ["ipc://{workdir}/in"] }}\nout = {{ bind = ["ipc://{workdir}/out"] }}\n'
        else:
            sockets = 'in = { bind = ["tcp://127.0.0.1:*"] }\nout = { bind = ["tcp://127.0.0.1:*"] }\n'
        sup = Supervised(workdir, f'\n[devices.lat]\nkind = "queue"\n{sockets}', pool=pool)
        try:
            sup.start()
            settle(sup)
            eps = sup.status_cli()["devices"][0]["endpoints"]
            yield eps["in"][0], eps["out"][0]
        finally:
            sup.close()


def phase_latency(helpers: Helpers, prof: Profile, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for transport in TRANSPORTS:
        log(f"latency {transport}: {prof.lat_trips} round trips per device after {prof.lat_warm} warm-up")
        try:
            with deadline(240, f"latency {transport}"), contextlib.ExitStack() as stack:
                eps = {
                    c: stack.enter_context(
                        queue_device(c, transport, tmp, f"l{transport}{c[:3]}", prof.supervised_pool)
                    )
                    for c in LAT_CASES
                }
                client, echoes = helpers.workers[0], helpers.workers[1:]
                try:
                    for echo, case in zip(echoes, LAT_CASES, strict=False):
                        echo.call("echo", eps[case][1], 10.0)
                    res = client.call(
                        "latency",
                        {c: eps[c][0] for c in LAT_CASES},
                        prof.lat_warm,
                        prof.lat_trips,
                        prof.lat_block,
                        10.0,
                        timeout=200.0,
                    )
                finally:
                    with contextlib.suppress(Exception):
                        helpers.reset()
            lat = {c: [v / 1000 for v in array.array("q", res[c])] for c in LAT_CASES}  # microseconds
            block = prof.lat_block
            rounds = len(lat["pyzmq"]) // block
            block_p50 = {c: [median(lat[c][i * block : (i + 1) * block]) for i in range(rounds)] for c in LAT_CASES}
            entry: dict[str, Any] = {}
            for c in LAT_CASES:
                entry[c] = {
                    "p50_us": percentile(lat[c], 50),
                    "p99_us": percentile(lat[c], 99),
                    "mean_us": statistics.fmean(lat[c]),
                    "round_trips": len(lat[c]),
                }
                if c != "pyzmq":
                    entry[c]["p50_ratio"] = entry[c]["p50_us"] / entry["pyzmq"]["p50_us"]
                    entry[c]["p99_ratio"] = entry[c]["p99_us"] / entry["pyzmq"]["p99_us"]
                    entry[c]["block_p50_ratio"] = summary(
                        [a / b for a, b in zip(block_p50[c], block_p50["pyzmq"], strict=True)]
                    )
                    entry[c]["block_p50_ratio"].pop("samples", None)
            out[transport] = entry
        except Exception as e:
            record_error("latency", transport, e)
            helpers.renew()
    return out
