"""What a device does when its supervisor dies: the orphan grace and adoption.

A supervised device watches its parent (the supervisor). With an orphan grace of 0 it stops
as soon as the parent dies (no orphans). With a grace of N seconds it goes on forwarding for
up to N seconds, waiting for a new supervisor of the same run to adopt it with ADOPT (the
run's token and the adopter's pid); adopted, it watches the adopter instead; not adopted in
time, it stops itself through the usual path (drain, LINGER, exit 0). ADOPT may also name the
adopter's handback socket: the device then sends it duplicates of its listening sockets
(devices/handback.py) before it answers. ADOPT from the very process the device watches (a
supervisor that re-executed itself: same pid) is accepted while that process lives.

Both values reach the device through its environment, set by ``up`` before any device is
spawned (the run token already travels that way): a device started outside a supervisor
has neither, and keeps the no-orphan rule.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

ORPHAN_GRACE_ENV = "PROCDEVICES_ORPHAN_GRACE"
# The same name as runstate.RUN_TOKEN_ENV (the supervisor's side), kept here so that the
# device's side imports nothing of the supervisor.
RUN_TOKEN_ENV = "PROCDEVICES_RUN_TOKEN"


try:
    # The comparison hmac.compare_digest falls back to, without hmac itself: hmac loads OpenSSL
    # (hashlib), ~3.7 MiB of RSS in every device, and imported at the first ADOPT it cost each
    # of 256 devices adopted at once ~10 ms of CPU (an adoption 4x slower).
    from _operator import _compare_digest
except ImportError:  # another Python than CPython
    from hmac import compare_digest as _compare_digest  # type: ignore[no-redef]


def grace_from_env(environ: dict[str, str] | None = None) -> float:
    """The orphan grace this device was started with; 0 when unset or not a number."""
    text = (os.environ if environ is None else environ).get(ORPHAN_GRACE_ENV, "")
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


class Adoption(NamedTuple):
    """A checked ADOPT request: the pid of the supervisor that adopts the device, and where
    it takes back the listening sockets (None: it does not ask for them)."""

    pid: int
    handback: str | None = None


class AdoptionRefused(Exception):
    """An ADOPT request this device must not follow; one-line message."""


def check_adoption(payload: Any, run_token: str | None, handback_path: str | None = None) -> Adoption:
    """The adoption ``payload`` asks for, if it proves it comes from the device's own run.
    ``handback_path``: the only handback socket this device sends its listening sockets to
    (runlayout.handback_socket of its own run dir); None: it sends them nowhere."""
    if not isinstance(payload, dict):
        raise AdoptionRefused("adopt: the payload is an object {token, pid}")
    token, pid = payload.get("token"), payload.get("pid")
    if not isinstance(token, str) or not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        raise AdoptionRefused("adopt: the payload is an object {token: string, pid: positive integer}")
    if run_token is None:
        raise AdoptionRefused("adopt: this device was not started by a supervisor run")
    # Constant time: the token is the only proof, it must not leak by timing.
    if not _compare_digest(token.encode(), run_token.encode()):
        raise AdoptionRefused("adopt: wrong run token")
    handback = payload.get("handback")
    if handback is not None and (handback_path is None or handback != handback_path):
        # Anywhere else could be somebody else's socket: a listening socket is never given away.
        shown = repr(handback)[:200]
        raise AdoptionRefused(f"adopt: handback {shown} is not this device's run dir handback socket")
    return Adoption(pid, handback)
