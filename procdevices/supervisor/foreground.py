"""``python -m procdevices run NAME``: one device process in the foreground.

For outer supervisors that manage each device themselves (supervisord's per-device mode,
one systemd unit per device). The process is the device: it reports readiness (stdout line
and sd_notify READY=1), stops through its control socket on SIGTERM or SIGINT, exits 0 on a
clean stop and non-zero with the reason on a failure.
"""

from __future__ import annotations

import signal
import socket as pysocket
import sys

from procdevices import exitcodes
from procdevices.devices import runtime as rt
from procdevices.errors import DeviceError
from procdevices.supervisor.build import build_device
from procdevices.supervisor.config import Topology
from procdevices.supervisor.notify import sd_notify
from procdevices.supervisor.runstate import RunDir


class _AnnounceReady:
    def __init__(self, name: str) -> None:
        self.name = name

    def ready(self, info: rt.ReadyInfo) -> None:
        endpoints = " ".join(f"{role}={','.join(eps)}" for role, eps in info.endpoints.items() if eps)
        print(f"procdevices: {self.name} ready (pid {info.pid}) {endpoints}", flush=True)
        sd_notify("READY=1")

    def failed(self, error: DeviceError) -> None:
        print(f"procdevices: {self.name}: {error}", file=sys.stderr, flush=True)


def run_one(topology: Topology, name: str) -> int:
    instances = {c.name: c for c in topology.instances()}
    if name not in instances:
        print(f"procdevices: no device process named {name!r} (known: {', '.join(instances)})", file=sys.stderr)
        return exitcodes.EXIT_FAILED
    run_dir = RunDir(topology.supervisor.run_dir)
    run_dir.prepare()
    endpoint = run_dir.device_control_endpoint(name)
    device = build_device(instances[name], endpoint)

    wake_r, wake_w = pysocket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

    def on_signal(signum: int, frame: object) -> None:
        # The wake-up fd already told the control loop, which stops the device through its
        # control socket; here we only tell a service manager that the stop has begun.
        if not stopping:
            stopping.append(signum)
            sd_notify("STOPPING=1")

    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    runtime = rt.DeviceRuntime(endpoint, _AnnounceReady(name), whole_process=True, signal_fd=wake_r.fileno())
    code = rt.run_in_worker(device, runtime)
    if code == 0:
        print(f"procdevices: {name} stopped ({runtime.stop_reason or 'forwarding loop ended'})", flush=True)
    return exitcodes.EXIT_OK if code == 0 else exitcodes.EXIT_FAILED
