#!/usr/bin/env python
"""Where a supervised restart's time goes, step by step (docs/performance.md, "Restart").

    python scripts/restart_steps.py                      # 10 kills, own_sockets true then false
    python scripts/restart_steps.py --kills 20 --runs 3  # alternately, 3 runs of each

The device and the clients are bench.py's restart phase's (a streamer binding PULL and PUSH
over ipc, clients reconnecting every 1 ms, the default warm pool). The supervisor runs
instrumented from outside: it and its warm workers import this module, which wraps a few
procdevices functions to append CLOCK_MONOTONIC timestamps to a trace file; no line of
procdevices changes. Per kill, each step's time after the SIGKILL (ms):

  sentinel    the supervisor's loop handles the exit (Supervisor.on_exit entered)
  reaped      waitpid done (SpawnedDevice.reap returned)
  launch      Launcher.launch entered: restart decided (state, policy, events, logs)
  handed      job and descriptors written to a warm worker (the pool's take returned)
  launched    Launcher.launch returned (psutil has looked at the new process)
  job         the worker holds its job and its descriptors (process_main adopts them)
  built       its sockets are bound and connected (DeviceRuntime.sockets_built entered)
  ready_sent  its control thread runs, the ready report is sent (sockets_built returned)
  forward     the first message sent after the kill came out of the device (the client)
  ready_read  the supervisor has read the report (Supervisor.on_report returned)

Each line of the trace adds a few microseconds to the step it ends; the figures are for
comparing steps and settings, beside bench.py's uninstrumented restart phase. The worker's
steps (job, built, ready_sent) are traced only in workers that multiprocessing starts (the
fork server, or code from before session 7): procdevices now spawns its warm workers itself,
fresh interpreters that never import this module, and those steps show "-".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

TRACE_ENV = "PROCDEVICES_RESTART_TRACE"
# The step each one follows, where that is not the one listed before it: the worker runs
# while the supervisor looks at the new process with psutil; the supervisor reads the ready
# report while the device forwards.
AFTER = {"job": "handed", "ready_read": "ready_sent"}
STEPS = ("sentinel", "reaped", "launch", "handed", "launched", "job", "built", "ready_sent", "forward", "ready_read")


# -- inside the supervisor and its workers ----------------------------------------------------


def mark(step: str) -> None:
    line = f"{time.monotonic():.7f} {step} {os.getpid()}\n".encode()
    fd = os.open(os.environ[TRACE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _wrap(owner: Any, name: str, before: str | None, after: str | None) -> None:
    original = getattr(owner, name)

    def traced(*args: Any, **kwargs: Any) -> Any:
        if before:
            mark(before)
        result = original(*args, **kwargs)
        if after:
            mark(after)
        return result

    setattr(owner, name, traced)


def _trace_worker() -> None:
    from procdevices.devices import runtime as rt

    _wrap(rt, "adopt_listeners", None, "job")  # process_main has the job and its descriptors
    _wrap(rt.DeviceRuntime, "sockets_built", "built", "ready_sent")


def traced_pool_worker_main(conn: Any) -> None:
    """A warm worker: procdevices' own entry, with the worker's steps traced."""
    from procdevices.devices import launch

    _trace_worker()
    launch.pool_worker_main(conn)


def traced_process_main(conn: Any, job: Any) -> None:
    """The same for code from before pool_worker_main (its workers ran process_main)."""
    from procdevices.devices import runtime as rt

    _trace_worker()
    rt.process_main(conn, job)


def traced_up() -> None:
    """`procdevices up` with the supervisor's steps traced (argv: up -c FILE)."""
    from procdevices import cli
    from procdevices.devices import launch
    from procdevices.devices import runtime as rt
    from procdevices.supervisor import core
    from procdevices.supervisor import launcher as sl

    _wrap(core.Supervisor, "on_exit", "sentinel", None)
    _wrap(sl.SpawnedDevice, "reap", None, "reaped")
    _wrap(sl.ProcessLauncher, "launch", "launch", "launched")
    _wrap(launch.WorkerPool, "take", None, "handed")
    _wrap(core.Supervisor, "on_report", None, "ready_read")
    # What the pool's refill starts, looked up when it runs (a module attribute).
    if hasattr(launch, "pool_worker_main"):
        launch.pool_worker_main = traced_pool_worker_main
    else:
        rt.process_main = traced_process_main
    # The script's own entry where there is one (since session 10: `up` as the script runs it).
    entry = getattr(cli, "console", None) or cli.main
    sys.exit(entry())


# -- the driver --------------------------------------------------------------------------------


def steps_of_kill(trace: list[tuple[float, str]], t_kill: float, t_next: float) -> dict[str, float]:
    """The first occurrence of each step between this kill and the next, in ms after it."""
    out: dict[str, float] = {}
    for t, step in trace:
        if t_kill <= t < t_next and step not in out:
            out[step] = (t - t_kill) * 1000
    return out


def run(kills: int, own_sockets: bool, tmp: str) -> list[dict[str, float]]:
    import zmq
    from bench.devices import Supervised
    from bench.restart import one_kill

    trace_path = os.path.join(tmp, "trace")
    os.environ[TRACE_ENV] = trace_path
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    stable = 0.5
    topology = (
        "\n[supervisor.defaults]\n"
        "probe = { interval = 0.05, timeout = 0.5, failures = 3 }\n"
        f"stable_after = {stable}\n"
        "intensity = { max_restarts = 1000, within = 30.0 }\n"
        + ("" if own_sockets else "own_sockets = false\n")
        + '\n[devices.r]\nkind = "streamer"\n'
        + f'in = {{ type = "PULL", bind = ["ipc://{tmp}/ri"] }}\n'
        + f'out = {{ type = "PUSH", bind = ["ipc://{tmp}/ro"] }}\n'
    )
    sup = Supervised(tmp, topology)
    sup.up_argv = [sys.executable, "-c", "import restart_steps; restart_steps.traced_up()", "up", "-c", sup.path]
    ctx = zmq.Context()
    ctx.setsockopt(zmq.RECONNECT_IVL, 1)
    ping_ctx = zmq.Context()
    ping_ctx.setsockopt(zmq.RECONNECT_IVL, 1)
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.linger = pull.linger = 0
    done: list[dict[str, Any]] = []
    try:
        sup.start()
        sup.wait_running(1, 30.0, pool_idle=2)
        push.connect(f"ipc://{tmp}/ri")
        pull.connect(f"ipc://{tmp}/ro")
        for _ in range(kills):
            time.sleep(stable + 0.2)
            done.append(one_kill(sup, f"ipc://{sup.run_dir}/ctl/r.sock", push, pull, [], ping_ctx, 2))
    finally:
        sup.close()
        push.close(0)
        pull.close(0)
        ctx.term()
        ping_ctx.term()
    with open(trace_path) as f:
        trace = sorted((float(t), step) for t, step, _ in (line.split() for line in f))
    rows = []
    for i, k in enumerate(done):
        t_next = done[i + 1]["t_kill"] if i + 1 < len(done) else float("inf")
        steps = steps_of_kill(trace, k["t_kill"], t_next)
        if k["t_forwarded"] is not None:
            steps["forward"] = (k["t_forwarded"] - k["t_kill"]) * 1000
        rows.append(steps)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--runs", type=int, default=1, help="runs of each setting, alternately")
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"own_sockets = true": [], "own_sockets = false": []}
    for r in range(args.runs):
        for own in (True, False) if r % 2 == 0 else (False, True):
            with tempfile.TemporaryDirectory(prefix="pdsteps-", dir="/tmp") as tmp:
                results[f"own_sockets = {'true' if own else 'false'}"] += run(args.kills, own, tmp)
    print(
        f"median ms after the SIGKILL (the median of the step alone; the worst), {args.kills * args.runs} kills each;"
    )
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':<12}" + "".join(f"{name:>34}" for name in results))
    for i, step in enumerate(STEPS):
        cells = []
        for rows in results.values():
            at = [r[step] for r in rows if step in r]
            prev = AFTER.get(step, STEPS[i - 1] if i else None)
            alone = [r[step] - r[prev] for r in rows if step in r and prev in r] if prev else at
            step_alone = f"{statistics.median(alone):5.2f}" if alone else "    -"
            cells.append(
                f"{statistics.median(at):>9.2f} (step {step_alone}, worst {max(at):6.2f})" if at else f"{'-':>34}"
            )
        print(f"{step:<12}" + "".join(f"{c:>34}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
