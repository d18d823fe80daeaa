"""The command line: flags, the phases to run, the JSON written, the report printed."""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import sys
from dataclasses import asdict
from typing import Any

import psutil

import bench
import procdevices
from bench.harness import ERRORS, FULL, MQ_CASES, QUICK, TAP_CASES, Helpers, Profile, kill_tree, log, short_tmp
from bench.latency import phase_latency
from bench.overhead import phase_overhead
from bench.report import machine_meta, print_report
from bench.restart import phase_restart
from bench.scale import phase_scale
from bench.startup import STARTUP_CASES, phase_startup
from bench.throughput import phase_throughput
from bench.worker import now


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run (< 2 min): fewer reps/messages/kills, 8 devices")
    ap.add_argument("--reps", type=int, default=None, help="throughput repetitions (default 5, quick 2)")
    ap.add_argument(
        "--json", default="bench-results.json", help="where to write the results (default ./bench-results.json)"
    )
    ap.add_argument(
        "--only",
        default="throughput,mq,latency,startup,restart,overhead",
        help="comma-separated phases to run (default: all but scale)",
    )
    ap.add_argument(
        "--scale",
        type=int,
        default=None,
        metavar="N",
        help="also run the scale phase: N devices (a multiple of 4, at most 256) under one up, "
        "with spawn and with forkserver",
    )
    ap.add_argument(
        "--supervised-pool",
        type=int,
        default=None,
        metavar="N",
        help="pool_size of the supervised device in the throughput, mq and latency phases "
        "(default: the supervisor's, 2; 0 runs it without idle warm workers)",
    )
    ap.add_argument(
        "--startup-n",
        default=None,
        metavar="N[,N...]",
        help="startup: the numbers of devices started at once (default 1,8,32; quick 1,8)",
    )
    ap.add_argument(
        "--startup-cases",
        default=None,
        metavar="CASE[,CASE...]",
        help=f"startup: the cases to run, of {','.join(STARTUP_CASES)} (default: all)",
    )
    ap.add_argument("--startup-reps", type=int, default=None, help="startup: repetitions (default 3, quick 1)")
    ap.add_argument("--kills", type=int, default=None, help="restart: kills per run (default 10, quick 3)")
    ap.add_argument(
        "--restart-runs", type=int, default=None, help="restart: runs per own_sockets setting (default 3, quick 1)"
    )
    args = ap.parse_args(argv)
    prof = QUICK if args.quick else FULL
    startup_ns = tuple(int(n) for n in args.startup_n.split(",")) if args.startup_n else None
    startup_cases = tuple(c.strip() for c in args.startup_cases.split(",")) if args.startup_cases else None
    if startup_cases and not set(startup_cases) <= set(STARTUP_CASES):
        ap.error(f"--startup-cases: each of {', '.join(STARTUP_CASES)}")
    overrides = {
        "reps": args.reps,
        "startup_ns": startup_ns,
        "startup_cases": startup_cases,
        "startup_reps": args.startup_reps,
        "kills": args.kills,
        "restart_runs": args.restart_runs,
        "supervised_pool": args.supervised_pool,
    }
    prof = Profile(**{**asdict(prof), **{k: v for k, v in overrides.items() if v is not None}})
    phases = [x.strip() for x in args.only.split(",") if x.strip()]
    if args.scale is not None:
        if args.scale % 4 or not 4 <= args.scale <= 256:
            ap.error("--scale N: N must be a multiple of 4 between 4 and 256 (4 devices of at most 64 replicas)")
        phases.append("scale")
    # Like pyzmq's from its wheel, procdevices' modules must be compiled before devices start:
    # an editable install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile them in
    # every spawned device and count that as procdevices' start-up.
    compileall.compile_dir(os.path.dirname(procdevices.__file__), quiet=1)
    t_start = now()
    meta = machine_meta()
    meta.update(profile=prof.name, argv=sys.argv, json=os.path.abspath(args.json), phases={})
    res: dict[str, Any] = {"meta": meta, "profile": asdict(prof), "errors": ERRORS}
    res["profile"]["tp_msgs"] = {str(k): v for k, v in prof.tp_msgs.items()}
    tmp = short_tmp("pdbench-")
    helpers: Helpers | None = None
    try:
        helpers = Helpers()
        h = helpers
        runners = {
            "throughput": lambda: phase_throughput(h, prof, tmp),
            "mq": lambda: phase_throughput(h, prof, tmp, MQ_CASES, "pyzmq-mq"),
            "tap": lambda: phase_throughput(h, prof, tmp, TAP_CASES, "supervised"),
            "latency": lambda: phase_latency(h, prof, tmp),
            "startup": lambda: phase_startup(prof, tmp),
            "restart": lambda: phase_restart(prof, tmp),
            "overhead": lambda: phase_overhead(prof, tmp),
            "scale": lambda: phase_scale(args.scale or 0, prof, tmp),
        }
        for name, run in runners.items():
            if name in phases:
                load0, t0 = os.getloadavg()[0], now()
                res[name] = run()
                meta["phases"][name] = {
                    "seconds": now() - t0,
                    "loadavg1_start": load0,
                    "loadavg1_end": os.getloadavg()[0],
                }
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        ERRORS.append({"phase": "run", "case": "-", "error": "interrupted", "traceback": ""})
    finally:
        if helpers is not None:
            helpers.close()
        shutil.rmtree(tmp, ignore_errors=True)
        meta["wall_s"] = now() - t_start
        meta["loadavg_end"] = os.getloadavg()
        leftovers = []
        for c in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "resource_tracker" not in " ".join(c.cmdline() or []):
                    leftovers.append(c.pid)
        if leftovers:
            log(f"killing leftover child processes {leftovers}")
            kill_tree(leftovers)
        meta["leftover_children"] = leftovers
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    print_report(res)
    return 1 if ERRORS else 0
