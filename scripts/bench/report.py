"""The report: the text summary of a run, and the machine it ran on."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import subprocess
from typing import Any

import psutil
import zmq
import zmq.devices

import procdevices
from bench.harness import LABELS, LAT_CASES, SCRIPTS, median
from bench.restart import RESTART_SETTINGS
from procdevices.devices.monitoredqueuedevice import monitored_queue_loop


def fmt_rate(s: dict[str, Any], scale: float = 1.0, digits: int = 0) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    m, lo, hi = s["median"] / scale, s["min"] / scale, s["max"] / scale
    return f"{m:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def fmt_ratio(s: dict[str, Any] | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def print_report(res: dict[str, Any]) -> None:
    p = print
    meta = res["meta"]
    p()
    p(
        f"procdevices bench ({meta['profile']}): {meta['cpu_model']}, {meta['nproc']} cpus, "
        f"Python {meta['python']}, pyzmq {meta['pyzmq']}, libzmq {meta['libzmq']}"
    )
    if meta.get("procdevices_install") == "editable":
        p(
            "NOTE: procdevices is an editable install here: every device process, pyzmq's and procdevices',"
            " imports its finder (~6 ms each); for start-up ratios, compare in a regular install"
        )
    if meta["profile"] == "quick":
        p(
            f"QUICK: {res['profile']['reps']} reps, fewer messages, start-up N={list(res['profile']['startup_ns'])}, "
            f"{res['profile']['kills']} kills, stop/overhead with {res['profile']['big_n']} devices (not 32)"
        )
    mq_title = f"MONITORED QUEUE THROUGHPUT (base: pyzmq's, fork; procdevices' loop: {meta.get('mq_loop')})"
    tap_title = "TAP (base: the supervised streamer without a tap; the ratio column is vs that base)"
    for key, title in (("throughput", "THROUGHPUT"), ("mq", mq_title), ("tap", tap_title)):
        tp = res.get(key)
        if not tp:
            continue
        p()
        p(f"{title}  median (min-max) over reps; ratio = rate / pyzmq's device in the same rep")
        p("            device CPU = CPU time of the device process per forwarded message (us), and its ratio")
        p(
            f"{'transport':<5} {'size':>5}  {'case':<36} {'msgs/s':>26} {'MB/s':>20}  {'ratio vs pyzmq':>20}"
            f"  {'device CPU us/msg':>20} {'CPU ratio':>20}"
        )
        for r in tp["results"]:
            p(
                f"{r['transport']:<5} {r['size']:>5}  {LABELS[r['case']]:<36} {fmt_rate(r['msgs_per_s'], 1e3, 1) + ' k':>26} "
                f"{fmt_rate(r['mb_per_s'], 1, 1):>20}  {fmt_ratio(r['ratio_vs_pyzmq']):>20}"
                f"  {fmt_rate(r['device_cpu_us_per_msg'], 1, 2) if r['device_cpu_us_per_msg']['n'] else '-':>20}"
                f" {fmt_ratio(r['device_cpu_ratio_vs_pyzmq']):>20}"
            )
        beside = [x["supervisor_cpu_ms"] for x in tp["samples"] if x.get("supervisor_cpu_ms") is not None]
        if beside:
            p(
                f"  supervised cases: `up`, its warm workers and tracker used {median(beside):.0f} ms of CPU "
                f"(median; most {max(beside):.0f} ms) while a case ran"
            )
        for x in tp.get("losses", []):
            p(
                f"  note: {x['lost']} messages lost at the start of rep {x['rep'] + 1} {x['transport']} {x['size']} B "
                f"{x['case']} (a pipe to the previous receiver; not counted, see _receive)"
            )
    lat = res.get("latency")
    if lat:
        p()
        p("LATENCY  REQ -> ROUTER/DEALER queue -> REP echo, interleaved blocks (us)")
        p(
            f"{'transport':<5} {'case':<34} {'p50':>8} {'p99':>8} {'p50 ratio':>10} {'p99 ratio':>10}  block-p50 ratio (min-max)"
        )
        for t, entry in lat.items():
            for c in LAT_CASES:
                e = entry[c]
                p(
                    f"{t:<5} {LABELS[c]:<34} {e['p50_us']:>8.1f} {e['p99_us']:>8.1f} "
                    f"{e.get('p50_ratio', 1.0):>10.3f} {e.get('p99_ratio', 1.0):>10.3f}  {fmt_ratio(e.get('block_p50_ratio'))}"
                )
    su = res.get("startup")
    if su:
        p()
        p("START-UP  seconds from the first start call (or Popen of `up`) until every device forwarded a message;")
        p("          memory per device process (median, MiB)")
        p(
            f"{'N':>3} {'case':<38} {'all forwarding s':>24} {'vs fork':>8} {'vs spawn':>9} {'RSS':>7} {'USS':>7} "
            f"{'PSS':>7}  stop"
        )
        for r in su["summary"]:
            stop = ""
            if "stop_s" in r:
                stop = f"up SIGTERM->exit {fmt_rate(r['stop_s'], 1, 3)} s, log ok={r['stop_log_ok']}"
            elif "stop_all_s" in r:
                stop = f"stop() x N sequential {fmt_rate(r['stop_all_s'], 1, 3)} s"
            ratio = f"{r['ratio_vs_pyzmq']:.2f}x" if r.get("ratio_vs_pyzmq") else "-"
            ratio_spawn = f"{r['ratio_vs_pyzmq_spawn']:.2f}x" if r.get("ratio_vs_pyzmq_spawn") else "-"
            rss = f"{r['rss_mib']:.1f}" if r.get("rss_mib") else "-"
            uss = f"{r['uss_mib']:.1f}" if r.get("uss_mib") else "-"
            pss = f"{r['pss_mib']:.1f}" if r.get("pss_mib") else "-"
            p(
                f"{r['n']:>3} {LABELS[r['case']]:<38} {fmt_rate(r['all_forwarding_s'], 1, 3):>24} {ratio:>8} {ratio_spawn:>9} "
                f"{rss:>7} {uss:>7} {pss:>7}  {stop}"
            )
            if r.get("ratio_vs_pyzmq_spawn_per_rep", {}).get("median") and r["case"] != "pyzmq-spawn":
                uss_ratio = r.get("uss_ratio_vs_pyzmq_spawn")
                p(
                    f"{'':>3} {'':<38} vs spawn rep by rep {fmt_ratio(r['ratio_vs_pyzmq_spawn_per_rep'])}"
                    + (f", USS {uss_ratio:.2f}x" if uss_ratio else "")
                )
    rs = res.get("restart")
    if rs:
        p()
        p("RESTART  SIGKILL of a supervised streamer (PULL/PUSH bound over ipc, clients reconnect every 1 ms)")
        p("         -> its replacement answers PING / forwards the first message sent after the kill (ms)")

        def f(s: dict[str, Any]) -> str:
            return "n/a" if s.get("median") is None else f"median {s['median']:.1f} worst {s['worst']:.1f}"

        def line(r: dict[str, Any]) -> str:
            return (
                f"forward {f(r['forward_ms'])}; probe {f(r['probe_ms'])}; reaped {f(r['reaped_ms'])}; "
                f"refused connects {r['refused_connects']}; endpoints kept {r['endpoints_kept']}"
            )

        for setting in RESTART_SETTINGS:
            entry = rs.get(setting)
            if not entry or not entry["runs"]:
                continue
            title = "own_sockets = true (default)" if setting == "own_sockets" else "own_sockets = false"
            p(f"{title}, pool_size 2:")
            for i, r in enumerate(entry["runs"]):
                p(f"  run {i + 1}: {len(r['kills'])} kills; {line(r)}; restarts counted {r['supervisor_restarts']}")
            mom = entry["forward_median_of_run_medians"]
            p(
                f"  all runs: {line(entry)}; median of the runs' forward medians "
                f"{'n/a' if mom is None else f'{mom:.1f}'}"
            )
        if rs.get("pool_0"):
            r = rs["pool_0"]
            p(f"own_sockets = true, pool_size 0: {len(r['kills'])} kills; {line(r)}")
    ov = res.get("overhead")
    if ov:
        p()
        p(
            f"IDLE/STOP  {ov['devices']} supervised devices, {ov['seconds']:.0f}s idle: supervisor "
            f"{ov['supervisor_pct_of_core']:.2f}% of a core; devices total {ov['devices_pct_of_core']:.2f}% "
            f"({ov['per_device_pct_of_core']:.3f}% each); pool+tracker {ov['pool_and_tracker_cpu_s']:.2f} cpu-s"
        )
        p(
            f"           SIGTERM -> up exited: {ov['stop_s']:.3f}s; log: {ov['stop_log']['stopped_through_control_socket']}"
            f"/{ov['stop_log']['expected']} stopped through the control socket, escalations: {len(ov['stop_log']['escalations'])}"
        )
    sc = res.get("scale")
    if sc:
        p()
        p("SCALE  N devices (4 x N/4 replicas, ipc) under one `up`")
        for method, r in sc.items():
            p(
                f"{method:<10} {r['devices']} devices: all RUNNING {r['all_running_s']:.2f}s "
                f"(restarts {r['restarts_during_startup']}); idle supervisor {r['idle_supervisor_pct_of_core']:.2f}% of a "
                f"core over {r['idle_seconds']:.0f}s; `down` {r['down_s']:.2f}s (rc {r['down_rc']}); "
                f"{r['stop_log']['stopped_through_control_socket']}/{r['devices']} stopped through the control socket"
            )
    if res["errors"]:
        p()
        p(f"ERRORS ({len(res['errors'])}):")
        for e in res["errors"]:
            p(f"  {e['phase']} / {e['case']}: {e['error']}")
    p()
    phases = ", ".join(
        f"{k} {v['seconds']:.0f}s (load {v['loadavg1_start']:.1f}->{v['loadavg1_end']:.1f})"
        for k, v in meta.get("phases", {}).items()
    )
    p(f"phases: {phases}")
    p(f"wall time {res['meta']['wall_s']:.0f}s; JSON: {res['meta']['json']}")


def procdevices_install() -> str:
    """How the procdevices distribution of this environment is installed: ``editable``,
    ``regular``, or ``unknown`` (none installed, or its record unreadable). It is the installed
    distribution that counts, whichever procdevices is imported: an editable install's ``.pth``
    makes the ``site`` of every interpreter started here import its finder (pathlib, re,
    urllib.parse: ~6 ms of CPU), pyzmq's device processes and procdevices' alike, which pulls
    the start-up ratios towards 1 (docs/performance.md, "Session 9")."""
    import importlib.metadata
    import json

    try:
        direct_url = importlib.metadata.distribution("procdevices").read_text("direct_url.json")
        editable = bool(direct_url) and json.loads(direct_url).get("dir_info", {}).get("editable") is True
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        return "unknown"
    return "editable" if editable else "regular"


def machine_meta() -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(Exception):
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=SCRIPTS,
                timeout=5,
            ).stdout.strip()
            or None
        )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "psutil": psutil.__version__,
        "procdevices": procdevices.__version__,
        "procdevices_install": procdevices_install(),
        # the loop procdevices' monitored queues run here (their processes inherit the environment)
        "mq_loop": monitored_queue_loop(),
        "commit": commit,
        "kernel": platform.release(),
        "start_method_default": multiprocessing.get_start_method(allow_none=True) or "(unset: fork on Linux)",
        "loadavg_start": os.getloadavg(),
    }
