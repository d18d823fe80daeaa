"""The startup phase: time until N devices forward, and their memory; pyzmq's
spawn baseline runs scripts/pyzmq_spawn_devices.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import psutil
import zmq
import zmq.devices

from bench.devices import PdDevice, PyzmqDevice, Supervised, check_stop_log, ipc_path
from bench.harness import SCRIPTS, PhaseTimeout, Profile, deadline, kill_tree, log, median, record_error, summary
from bench.worker import now, rotate

# ------------------------------------------------------------------------------------------
# start-up, memory and stop of N devices


class Prober:
    """Binds a PUSH and a PULL per device; each device connects its in (PULL) to the PUSH and
    its out (PUSH) to the PULL. A device "forwards" when a message sent on its PUSH comes back
    on its PULL. Binding on this side means no reconnect interval blurs the measurement."""

    def __init__(self, tmp: str, n: int) -> None:
        self.ctx = zmq.Context()
        self.n = n
        self.ins = [ipc_path(tmp, f"i{k}") for k in range(n)]
        self.outs = [ipc_path(tmp, f"o{k}") for k in range(n)]
        self.push: list[zmq.Socket[bytes]] = []
        self.pull: list[zmq.Socket[bytes]] = []
        for a, b in zip(self.ins, self.outs, strict=True):
            p = self.ctx.socket(zmq.PUSH)
            p.linger = 0
            p.bind(a)
            q = self.ctx.socket(zmq.PULL)
            q.linger = 0
            q.bind(b)
            self.push.append(p)
            self.pull.append(q)

    def wait_all(self, t0: float, timeout: float) -> list[float]:
        """Seconds from t0 until each device forwarded its probe. A probe is sent as soon as
        the device's in socket is connected, and again every 0.5 s until one comes back (a
        device replaced meanwhile, e.g. killed by start_timeout, took the first one along)."""
        poller = zmq.Poller()
        for p in self.push:
            poller.register(p, zmq.POLLOUT)
        push_index = {p: k for k, p in enumerate(self.push)}
        index = {q: k for k, q in enumerate(self.pull)}
        for q in self.pull:
            poller.register(q, zmq.POLLIN)
        done: dict[int, float] = {}
        resend_at: dict[int, float] = {}
        end = t0 + timeout
        while len(done) < self.n:
            t = now()
            left = end - t
            if left <= 0:
                missing = [k for k in range(self.n) if k not in done]
                raise PhaseTimeout(
                    f"only {len(done)} of {self.n} devices forwarded within {timeout}s (missing replicas {missing})"
                )
            for k, at in list(resend_at.items()):
                if t >= at and k not in done:
                    del resend_at[k]
                    poller.register(self.push[k], zmq.POLLOUT)
            wait = min([left] + [at - t for at in resend_at.values()])
            for sock, ev in poller.poll(max(1, int(wait * 1000) + 1)):
                if ev & zmq.POLLOUT and sock in push_index:
                    k = push_index[sock]
                    sock.send(b"probe", zmq.NOBLOCK)
                    poller.unregister(sock)
                    resend_at[k] = now() + 0.5
                elif ev & zmq.POLLIN:
                    sock.recv()
                    k = index[sock]
                    done[k] = now() - t0
                    resend_at.pop(k, None)
                    poller.unregister(sock)
        return [done[k] for k in range(self.n)]

    def close(self) -> None:
        for s in self.push + self.pull:
            s.close(linger=0)
        self.ctx.term()


def memory_of(pids: list[int]) -> dict[str, Any]:
    rss, uss, pss = [], [], []
    for pid in pids:
        try:
            m = psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue
        rss.append(m.rss / 2**20)
        uss.append(m.uss / 2**20)
        pss.append(getattr(m, "pss", 0) / 2**20)
    return {"processes": len(rss), "rss_mib": median(rss), "uss_mib": median(uss), "pss_mib": median(pss)}


def startup_local(case: str, n: int, tmp: str) -> dict[str, Any]:
    prober = Prober(tmp, n)
    devices: list[Any] = []
    try:
        for k in range(n):
            d: PyzmqDevice | PdDevice
            if case.startswith("pyzmq"):
                d = PyzmqDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
            else:
                d = PdDevice(zmq.STREAMER, zmq.PULL, zmq.PUSH)
            d.dev.connect_in(prober.ins[k])
            d.dev.connect_out(prober.outs[k])
            devices.append(d)
        t0 = now()
        if case == "procdevices-threads":
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=n) as pool:
                list(pool.map(lambda d: d.start(), devices))
        else:
            for d in devices:
                d.start()
        started = now() - t0
        times = prober.wait_all(t0, 60.0)
        mem = memory_of([d.pid for d in devices if d.pid])
        t1 = now()
        for d in devices:
            d.stop()
        stop_s = now() - t1
        devices = []
        return {
            "all_forwarding_s": max(times),
            "first_forwarding_s": min(times),
            "start_calls_s": started,
            "memory": mem,
            "stop_all_s": stop_s,
        }
    finally:
        for d in devices:
            with contextlib.suppress(Exception):
                d.stop()
        prober.close()


# pyzmq's spawned devices are started by a script of their own: each device re-imports its
# parent's main script, and it must be a small user script, not this one (1,700 lines).
PYZMQ_SPAWN_MAIN = os.path.join(SCRIPTS, "pyzmq_spawn_devices.py")


def startup_pyzmq_spawn(n: int, tmp: str) -> dict[str, Any]:
    """N pyzmq ProcessDevices started with spawn by scripts/pyzmq_spawn_devices.py: from its
    Popen (its interpreter start included, as for `up`) until every device forwarded."""
    prober = Prober(tmp, n)
    proc: subprocess.Popen[str] | None = None
    try:
        t0 = now()
        proc = subprocess.Popen(
            [sys.executable, PYZMQ_SPAWN_MAIN, tmp, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdin is not None
        times = prober.wait_all(t0, 60.0)
        pids = [int(pid) for pid in proc.stdout.readline().split()]
        mem = memory_of(pids)
        t1 = now()
        proc.stdin.close()
        proc.wait(30.0)
        return {
            "all_forwarding_s": max(times),
            "first_forwarding_s": min(times),
            "memory": mem,
            "stop_all_s": now() - t1,
        }
    finally:
        if proc is not None:
            if proc.poll() is None:
                kill_tree([c.pid for c in psutil.Process(proc.pid).children(recursive=True)] + [proc.pid])
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        prober.close()


def startup_supervised(n: int, tmp: str, start_method: str = "spawn") -> dict[str, Any]:
    prober = Prober(tmp, n)
    sup = Supervised(
        tmp,
        (
            '\n[devices.s]\nkind = "streamer"\n'
            f"replicas = {n}\n"
            f'in = {{ type = "PULL", connect = ["ipc://{tmp}/i{{replica}}"] }}\n'
            f'out = {{ type = "PUSH", connect = ["ipc://{tmp}/o{{replica}}"] }}\n'
        ),
        start_method,
    )
    try:
        t0 = now()
        sup.start()
        try:
            times = prober.wait_all(t0, 60.0)
        except PhaseTimeout as e:
            raise PhaseTimeout(f"{e}; {supervisor_trouble(sup)}") from None
        st = sup.status(5.0)
        mem = memory_of([d["pid"] for d in st["devices"] if d["pid"]])
        restarts = sum(d["restarts"] for d in st["devices"])
        trouble = supervisor_trouble(sup) if restarts else ""
        stop_s = sup.terminate_and_time(30.0)
        return {
            "all_forwarding_s": max(times),
            "first_forwarding_s": min(times),
            "memory": mem,
            "restarts_during_startup": restarts,
            "trouble": trouble,
            "stop_s": stop_s,
            "stop_log": check_stop_log(sup.log_text(), n),
        }
    finally:
        sup.close()
        prober.close()


def supervisor_trouble(sup: Supervised) -> str:
    """What went wrong, from the supervisor's own view: states, restarts, log lines."""
    parts = []
    with contextlib.suppress(Exception):
        st = sup.status(2.0)
        states: dict[str, int] = {}
        for d in st["devices"]:
            states[d["state"]] = states.get(d["state"], 0) + 1
        parts.append(f"states {states}, restarts {sum(d['restarts'] for d in st['devices'])}")
    lines = [ln for ln in sup.log_text().splitlines() if "RUNNING" not in ln][:12]
    parts.append("log: " + " | ".join(lines))
    return "; ".join(parts)


STARTUP_CASES = ("pyzmq", "pyzmq-spawn", "procdevices", "procdevices-threads", "supervised", "supervised-forkserver")


def phase_startup(prof: Profile, tmp: str) -> dict[str, Any]:
    cases = prof.startup_cases or STARTUP_CASES
    raw: dict[int, dict[str, list[dict[str, Any]]]] = {n: {c: [] for c in cases} for n in prof.startup_ns}
    for rep in range(prof.startup_reps):
        for n in prof.startup_ns:
            for case in rotate(cases, rep):
                log(f"startup rep {rep + 1}/{prof.startup_reps} n={n} {case}")
                d = tempfile.mkdtemp(prefix="s-", dir=tmp)
                try:
                    with deadline(120, f"startup {case} n={n}"):
                        if case.startswith("supervised"):
                            r = startup_supervised(n, d, "forkserver" if case.endswith("forkserver") else "spawn")
                        elif case == "pyzmq-spawn":
                            r = startup_pyzmq_spawn(n, d)
                        else:
                            r = startup_local(case, n, d)
                    raw[n][case].append({**r, "rep": rep})
                except Exception as e:
                    record_error("startup", f"{case} n={n}", e)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
    out: dict[str, Any] = {"raw": {str(n): v for n, v in raw.items()}, "summary": []}
    for n in prof.startup_ns:
        base = summary([r["all_forwarding_s"] for r in raw[n].get("pyzmq", [])])
        spawned = raw[n].get("pyzmq-spawn", [])
        base_spawn = summary([r["all_forwarding_s"] for r in spawned])
        for c in cases:
            rs = raw[n][c]
            row = {"n": n, "case": c, "all_forwarding_s": summary([r["all_forwarding_s"] for r in rs])}
            if rs:
                row["rss_mib"] = median([r["memory"]["rss_mib"] for r in rs if r["memory"]["rss_mib"]])
                row["uss_mib"] = median([r["memory"]["uss_mib"] for r in rs if r["memory"]["uss_mib"]])
                row["pss_mib"] = median([r["memory"]["pss_mib"] for r in rs if r["memory"]["pss_mib"]])
            if c.startswith("supervised"):
                row["stop_s"] = summary([r["stop_s"] for r in rs])
                row["stop_log_ok"] = all(r["stop_log"]["ok"] for r in rs) if rs else None
            elif not c.startswith("pyzmq"):
                row["stop_all_s"] = summary([r["stop_all_s"] for r in rs])
            if base["median"] and row["all_forwarding_s"]["median"]:
                row["ratio_vs_pyzmq"] = row["all_forwarding_s"]["median"] / base["median"]
            if base_spawn["median"] and row["all_forwarding_s"]["median"]:
                row["ratio_vs_pyzmq_spawn"] = row["all_forwarding_s"]["median"] / base_spawn["median"]
                # The same ratio rep by rep (the cases of a rep run one after the other), which
                # holds better when the machine's speed drifts between reps; and the USS ratio.
                by_rep = {b["rep"]: b for b in spawned}
                pairs = [(a, by_rep[a["rep"]]) for a in rs if a["rep"] in by_rep]
                row["ratio_vs_pyzmq_spawn_per_rep"] = summary(
                    [a["all_forwarding_s"] / b["all_forwarding_s"] for a, b in pairs]
                )
                uss_pairs = [(a["memory"]["uss_mib"], b["memory"]["uss_mib"]) for a, b in pairs]
                row["uss_ratio_vs_pyzmq_spawn"] = median([a / b for a, b in uss_pairs if a and b])
            out["summary"].append(row)
    return out


# ------------------------------------------------------------------------------------------
# restart after SIGKILL

#: The two settings of the restart phase, measured alternately: the supervisor keeps the
#: device's listening sockets (the default) or the device binds its own.
