"""A device process this supervisor did not start: one it adopted (supervisor/adoption.py).

After a supervisor crash, the devices it started are no longer anybody's children here: the
kernel gave them to the nearest child subreaper (else init), which reaps them. After an
upgrade (``up`` re-executed itself, same pid), they are still this process's children. Either
way the supervisor follows them through a pidfd, which is:

- the exit watch: it becomes readable when the process exits, like a multiprocessing sentinel;
- the only way it signals them: ``pidfd_send_signal`` reaches that very process, never a
  later one that reused its pid;
- the reaper where the process is our child (``waitid(P_PIDFD)``): its exit code, and no
  zombie. Where it is not, the exit code is unknown (``None``) and its parent reaps it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING

from procdevices.devices.runtime import ReadyInfo
from procdevices.errors import DeviceExitedEarly
from procdevices.supervisor.launcher import Resources, resources_of, rss_of

# psutil is imported where it is used: not on `up`'s way to its first spawn (test_up_imports.py).
if TYPE_CHECKING:
    import psutil


class AdoptedProcess:
    """A :class:`~procdevices.supervisor.launcher.DeviceProcess` followed by a pidfd."""

    def __init__(self, proc: psutil.Process, pidfd: int) -> None:
        import psutil

        self._ps: psutil.Process | None = proc
        self._pid: int = proc.pid
        self._pidfd: int | None = pidfd
        self._create_time = float(proc.create_time())
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)  # the first call only starts the measurement

    @classmethod
    def open(cls, proc: psutil.Process) -> AdoptedProcess:
        """Follow ``proc`` (already identified as ours); ProcessLookupError once it is gone."""
        pidfd = os.pidfd_open(proc.pid)
        try:
            # The pidfd names whatever process has the pid *now*: check it is still the one
            # identified, so a pid reused in between is never followed (nor signalled).
            if not proc.is_running():
                raise ProcessLookupError(proc.pid)
        except BaseException:
            os.close(pidfd)
            raise
        return cls(proc, pidfd)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def sentinel(self) -> int:
        assert self._pidfd is not None, "the sentinel of a reaped process"
        return self._pidfd

    @property
    def report_fd(self) -> int | None:
        return None  # it reported ready to the supervisor that started it

    def report_waiting(self) -> bool:
        return False

    def read_report(self) -> ReadyInfo:
        raise DeviceExitedEarly("an adopted device has no ready report")

    def discard_report(self) -> None:
        pass

    def reap(self) -> int | None:
        """The exit code where the process is our child (an upgrade), else None."""
        pidfd, self._pidfd, self._ps = self._pidfd, None, None
        if pidfd is None:
            return None
        try:
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        except ChildProcessError:
            return None  # not ours to reap: its parent (a subreaper, else init) does
        finally:
            os.close(pidfd)
        if result is None:
            return None
        return -result.si_status if result.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else result.si_status

    def _signal(self, signum: int) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def create_time(self) -> float | None:
        return self._create_time

    def rss(self) -> int | None:
        return rss_of(self._ps)

    def resources(self) -> Resources | None:
        return resources_of(self._ps)
