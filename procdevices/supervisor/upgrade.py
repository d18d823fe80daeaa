"""``procdevices upgrade`` (and SIGUSR2 to ``up``): ``up`` re-executes itself with the
procdevices now installed, and its devices never notice.

    UPGRADE / SIGUSR2 ──► preflight: the code now installed imports what ``up`` runs on,
                          then ``check``s this topology (cli/serve.py ``_PREFLIGHT``; in the
                          background: the loop goes on)
                              │ fails: nothing changes; logged, ``supervisor.upgrade`` says why
                              ▼ passes
                          state.json written, the run dir's lock kept open across exec,
                          SIGTERM/SIGINT/SIGHUP blocked (held by the new image, not lost)
                              ▼
                          execv(python -m procdevices <same arguments>): same pid, so an outer
                          supervisor (supervisord, systemd and its NOTIFY_SOCKET) sees no exit
                              ▼
                          the new image runs ``up`` as ever: it adopts its own devices
                          (adoption.py: a device accepts ADOPT from the pid it follows), and
                          reaps the old image's other children (pool workers, fork server)

The devices follow ``up`` by a pidfd, which an exec does not fire, and their listening
sockets come back through the handback (handback.py). What the old image held in memory and
state.json does not carry (pending client requests, event subscribers' connections) is lost:
clients retry, subscribers reconnect.

A new version that cannot start must not take the devices down: the preflight catches what
fails at import or on the topology, before anything changes. Should the new image still fail
after the exec, ``up`` exits non-zero (the outer supervisor sees and logs it, and restarts
it) and the devices, orphaned, wait ``orphan_grace`` seconds for that restart to adopt them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from procdevices.control.protocol import ErrorCode, ProtocolError
from procdevices.logs import Log
from procdevices.supervisor.loop import Watcher

# The descriptor of the run dir's lock, kept open (and locked) across the exec; the new image
# takes it instead of locking again, so that no other `up` can slip in between.
LOCK_FD_ENV = "PROCDEVICES_UPGRADE_LOCK_FD"
# Signals an exec would otherwise meet with their default action (the end of the process)
# before the new image's handlers are in: blocked across the exec, released by its entry
# point (cli/interrupts.py), which then acts on any that came meanwhile.
BLOCKED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How much of the preflight's error output is kept for the log and `status`.
ERROR_BYTES = 4096


class Upgrader:
    """Runs one upgrade at a time for a running ``up``."""

    def __init__(
        self,
        *,
        preflight: Sequence[str],
        command: Sequence[str],
        lock_fd: int,
        before_exec: Callable[[], None],
        watcher: Watcher,
        log: Log,
        notify: Callable[[str], object] = lambda message: None,
        execv: Callable[[str, list[str]], Any] = os.execv,
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.preflight = list(preflight)
        self.command = list(command)
        self.lock_fd = lock_fd
        self.before_exec = before_exec  # writes state.json (raises OSError when it cannot)
        self.watcher = watcher
        self.log = log
        self.notify = notify
        self.execv = execv
        # False once the supervisor stops or leaves (`down`, SIGTERM, SIGUSR1) while the
        # preflight runs: re-executing then would start the topology again, or adopt devices
        # that are being stopped.
        self.wanted = wanted
        self.state: dict[str, Any] = {"state": "idle", "attempt": 0}
        self._check: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None

    def describe(self) -> dict[str, Any]:
        """What `status` shows as ``supervisor.upgrade``."""
        return dict(self.state)

    def begin(self) -> dict[str, Any]:
        """Start the preflight; ProtocolError (REFUSED) while one is under way."""
        if self._check is not None:
            raise ProtocolError(ErrorCode.REFUSED, "upgrade: one is under way already")
        attempt = self.state["attempt"] + 1
        try:
            self._check = subprocess.Popen(
                self.preflight, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self._pidfd = os.pidfd_open(self._check.pid)
        except OSError as e:
            self._end_check()
            self.state["attempt"] = attempt
            self._failed(f"cannot run the new version's check: {e.strerror or e}")
            raise ProtocolError(ErrorCode.FAILED, f"upgrade: {self.state['error']}") from None
        self.state = {"state": "checking", "attempt": attempt}
        self.watcher.watch(self._pidfd, self._checked)
        self.log("upgrade: checking the installed procdevices (its imports, then `check` of this topology)")
        return {"upgrading": True, "pid": os.getpid()}

    def _checked(self, now: float) -> None:
        check = self._check
        assert check is not None and check.stderr is not None
        code = check.wait()
        errors = check.stderr.read(ERROR_BYTES).decode(errors="replace").strip()
        self._end_check()
        if code != 0:
            last = errors.splitlines()[-1] if errors else f"exit code {code}"
            self._failed(f"the new version's check failed ({last}); still running the old one")
            return
        if not self.wanted():
            self.state = {"state": "cancelled", "attempt": self.state["attempt"]}
            self.log("upgrade cancelled: the supervisor is stopping")
            return
        self._exec()

    def _exec(self) -> None:
        try:
            self.before_exec()
        except OSError as e:
            self._failed(f"cannot hand over ({e}); still running the old one")
            return
        self.log("upgrade: re-executing with the installed procdevices (same pid, the devices keep running)")
        for handler in logging.getLogger().handlers + logging.getLogger("procdevices").handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        # systemd: reloading until the new image says READY=1 again (same main pid).
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        os.set_inheritable(self.lock_fd, True)
        os.environ[LOCK_FD_ENV] = str(self.lock_fd)
        previous_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # ignored until the new loop
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
        try:
            self.execv(self.command[0], self.command)
        except OSError as e:
            self._failed(f"cannot re-execute {self.command[0]} ({e.strerror or e}); still running the old one")
            self.notify("READY=1")
        finally:
            # Only reached when the exec failed (or a test's execv returned).
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            signal.signal(signal.SIGUSR2, previous_usr2)
            os.environ.pop(LOCK_FD_ENV, None)
            os.set_inheritable(self.lock_fd, False)

    def _failed(self, why: str) -> None:
        self.state = {"state": "failed", "attempt": self.state["attempt"], "error": why}
        self.log(f"upgrade failed: {why}", level=logging.ERROR)

    def _end_check(self) -> None:
        if self._pidfd is not None:
            self.watcher.unwatch(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._check is not None:
            if self._check.stderr is not None:
                self._check.stderr.close()
            self._check = None

    def close(self) -> None:
        """The supervisor stops: an unfinished preflight is ended (never left behind)."""
        if self._check is not None:
            with contextlib.suppress(OSError):
                self._check.kill()
            self._check.wait()
        self._end_check()


def reexec_command() -> list[str]:
    """This ``up``'s command line, to run again by the code installed now: the same arguments
    to ``python -m procdevices`` (whether it was started so or by the console script)."""
    return [sys.executable, "-m", "procdevices", *sys.argv[1:]]


def inherited_lock_fd() -> int | None:
    """The run dir lock an upgrading image handed over (LOCK_FD_ENV); None otherwise. Taken
    once: the variable is removed, so no child inherits the claim."""
    text = os.environ.pop(LOCK_FD_ENV, None)
    if text is None or not text.isdigit():
        return None
    fd = int(text)
    try:
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return fd


def children() -> set[int]:
    """The pids of this process's children right now."""
    import psutil

    try:
        return {p.pid for p in psutil.Process().children()}
    except psutil.Error:
        return set()


def reap_strays(watcher: Watcher, pids: set[int]) -> None:
    """Reap, as they exit, children this process did not start: after an exec, the old
    image's children that are not devices (its idle pool workers, fork server and resource
    tracker end when their pipes to it close). Without this they would stay zombies."""
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue

        def reap(now: float, pid: int = pid, pidfd: int = pidfd) -> None:
            watcher.unwatch(pidfd)
            os.close(pidfd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

        watcher.watch(pidfd, reap)
