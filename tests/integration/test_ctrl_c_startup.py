"""Ctrl-C at any moment of ``up``'s start-up: one clean stop, exit 0, no traceback, nothing
left running.

A terminal's Ctrl-C is SIGINT to the whole foreground process group: the supervisor, its
device interpreters (some still starting), its pool worker and multiprocessing's resource
tracker. The moments are spread over the start-up by what can be observed of it, in order:
the command line holding its signals (before its heavy imports), the run dir and its lock,
supervisor.sock, the first device's log file (a device process exists), the control
sockets of the devices (they are up) and the pool worker; each milestone plus a small delay
of its own. The delays are the test's input (where the signal lands), never a wait for a
result: every outcome is waited for on an event.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import RUN_DIR, FileChanges, Up, processes_exit, wait_for, write_topology

DEVICES = """\
[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://pipe-in"] }
out = { bind = ["ipc://pipe-out"] }

[devices.broker]
kind = "queue"
in  = { bind = ["ipc://broker-in"] }
out = { bind = ["ipc://broker-out"] }

[devices.watched]
kind = "monitored_queue"
in  = { bind = ["ipc://watched-in"] }
out = { bind = ["ipc://watched-out"] }
mon = { bind = ["ipc://watched-mon"] }
"""
NAMES = ["pipe", "broker", "watched"]

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def holds_signals(pid: int) -> bool:
    """The command line's first act is to catch SIGTERM (and SIGINT, SIGHUP) itself; a fresh
    interpreter catches only SIGINT. /proc shows which signals a process catches."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True  # gone: nothing left to wait for (the test then fails on the outcome)
    caught = next(line for line in text.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & SIGTERM_BIT)


Milestone = Callable[[Up, Path], bool]

MILESTONES: dict[str, Milestone] = {
    "signals held": lambda up, run: holds_signals(up.pid),
    "run dir locked": lambda up, run: (run / "lock").exists(),
    "supervisor.sock bound": lambda up, run: (run / "supervisor.sock").exists(),
    "a device process exists": lambda up, run: any((run / "logs").glob("*.log")),
    "a device is up": lambda up, run: any((run / "ctl").glob("*.sock")),
    "every device is up": lambda up, run: len(list((run / "ctl").glob("*.sock"))) == len(NAMES),
}

# (milestone, then this many seconds): 20 moments from the first line of procdevices' code
# (its imports take ~0.1-0.3 s after that) to devices running with a pool worker starting.
MOMENTS = [
    ("signals held", 0.0),
    ("signals held", 0.01),
    ("signals held", 0.03),
    ("signals held", 0.06),
    ("signals held", 0.1),
    ("signals held", 0.15),
    ("signals held", 0.2),
    ("run dir locked", 0.0),
    ("run dir locked", 0.01),
    ("supervisor.sock bound", 0.0),
    ("supervisor.sock bound", 0.005),
    ("a device process exists", 0.0),
    ("a device process exists", 0.01),
    ("a device process exists", 0.03),
    ("a device process exists", 0.06),
    ("a device is up", 0.0),
    ("a device is up", 0.02),
    ("every device is up", 0.0),
    ("every device is up", 0.05),
    ("every device is up", 0.15),
]


def wait_milestone(up: Up, run: Path, name: str) -> None:
    reached = MILESTONES[name]
    if name == "signals held":
        # No file marks it: /proc is looked at every millisecond, or at once when the
        # supervisor exits (its pidfd becomes readable).
        pidfd = os.pidfd_open(up.pid)
        try:
            wait_for(
                lambda: reached(up, run),
                30.0,
                name,
                wake=lambda seconds: select.select([pidfd], [], [], min(seconds, 0.001)),
                detail=up.log_tail,
            )
        finally:
            os.close(pidfd)
        return
    run.parent.mkdir(exist_ok=True)
    with FileChanges(run.parent, run, run / "logs", run / "ctl") as changes:
        wait_for(lambda: reached(up, run) or not up.running(), 30.0, name, wake=changes, detail=up.log_tail)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("milestone", "delay"), MOMENTS, ids=[f"{m} +{d * 1000:g}ms" for m, d in MOMENTS])
def test_ctrl_c_at_any_moment_of_start_up_is_one_clean_stop(milestone: str, delay: float, short_tmp: Path) -> None:
    # A pool worker too: it starts while the devices do, and is one more interpreter the
    # signal reaches during its start-up.
    config = write_topology(short_tmp, DEVICES, pool_size=1)
    run = short_tmp / RUN_DIR
    with Up(config) as up:
        wait_milestone(up, run, milestone)
        if delay:
            # Where the signal lands (the test's input): ``delay`` after the milestone, unless
            # the supervisor ends before, which the pidfd it waits on tells at once.
            processes_exit(lambda: [up.me] if up.me is not None else [])(delay)
        up.signal(signal.SIGINT, group=True)
        code = up.wait_exit()
        log = up.log()
        assert code == 0, f"exit {code}\n{up.log_tail()}"
        for marker in ("Traceback", "Fatal Python error", "KeyboardInterrupt"):
            assert marker not in log, f"{marker} on the supervisor's stderr\n{up.log_tail()}"
        for device_log in sorted((run / "logs").glob("*.log")):
            text = device_log.read_text(errors="replace")
            assert "Traceback" not in text and "Fatal Python error" not in text, f"{device_log.name}:\n{text}"
        # One stop, nothing restarted, nothing escalated: a running device stopped through
        # its control socket; one not ready yet through SIGTERM, at once, and said so.
        assert log.count("stopping every device") <= 1, up.log_tail()
        assert log.rstrip().endswith("procdevices: stopped"), up.log_tail()
        for bad in ("BACKOFF", "EXITED", "FATAL", "exited with code", "SIGKILL", "after the control-socket stop"):
            assert bad not in log, f"{bad!r} in the supervisor's log\n{up.log_tail()}"
        for name in NAMES:
            if f"{name}: STOPPED (stopped through the SIGTERM" in log:
                assert f"{name}: stopped before it was ready; SIGTERM" in log, up.log_tail()
            elif f"{name}: STOPPED" in log:
                assert f"{name}: STOPPED (stopped through the control socket)\n" in log, up.log_tail()
        up.assert_nothing_left(timeout=10.0)
