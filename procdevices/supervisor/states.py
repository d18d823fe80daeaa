"""The lifecycle of one supervised device, as a table.

This is a leaf module: it imports nothing from ``procdevices`` so that every
other part of the supervisor (and the docs test) can depend on it freely.

The whole state machine is the ``TRANSITIONS`` mapping. ``next_state`` is the
only function that moves a device from one state to another; anything not in
the table is a bug in the caller and raises ``InvalidTransition`` instead of
being silently ignored. ``docs/states.md`` contains the same table and a test
keeps the two identical.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping

__all__ = [
    "PROCESS_STATES",
    "TRANSITIONS",
    "Event",
    "InvalidTransition",
    "State",
    "next_state",
]


class State(enum.Enum):
    """Where a device is in its lifecycle. The value is what ``status`` prints."""

    STOPPED = "STOPPED"
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class Event(enum.Enum):
    """Something that happened to a device. The supervisor turns observations
    (operator commands, readiness messages, exits plus the restart policy's
    verdict) into exactly one of these."""

    START = "START"  # operator asked to start (or the initial start)
    RETRY = "RETRY"  # the backoff delay elapsed: start again
    SPAWNED = "SPAWNED"  # its turn came: a process now exists for the queued device
    READY = "READY"  # the child reported its sockets bound and connected
    FAIL = "FAIL"  # the start cannot succeed (bind error, config rejected, spawn failure, intensity exceeded)
    EXIT_RESTART = "EXIT_RESTART"  # the child died and the policy says restart after a backoff
    EXIT_FINAL = "EXIT_FINAL"  # the child died and the policy says stay down
    STOP = "STOP"  # operator asked to stop
    STOPPED = "STOPPED"  # the child exited while being stopped (or there was nothing to stop)
    ADOPTED = "ADOPTED"  # a running process of an earlier supervisor is now followed by this one


_S = State
_E = Event

# One row per allowed (state, event) pair. Every pair that is absent is
# deliberately invalid; the notes say why the less obvious ones are (not) here.
_TABLE: dict[tuple[State, Event], State] = {
    # Down, nothing to do: an operator START queues a spawn. STOP is accepted
    # so that "stop" is safe to run on any device, and it clears EXITED/FATAL
    # back to the neutral STOPPED.
    (_S.STOPPED, _E.START): _S.QUEUED,
    (_S.STOPPED, _E.STOP): _S.STOPPED,
    (_S.EXITED, _E.START): _S.QUEUED,
    (_S.EXITED, _E.STOP): _S.STOPPED,
    (_S.FATAL, _E.START): _S.QUEUED,
    (_S.FATAL, _E.STOP): _S.STOPPED,
    # A new supervisor (after a crash, or re-executed by `upgrade`) takes over a process
    # the previous one started and that proved it belongs to this run: it is serving already.
    (_S.STOPPED, _E.ADOPTED): _S.RUNNING,
    # Waiting for its turn to spawn (only so many devices start at once) with
    # no process yet. SPAWNED when its process exists; a STOP has nothing to
    # kill, so it goes straight to STOPPED (no STOPPING); FAIL when the spawn
    # itself is impossible (out of processes or descriptors).
    (_S.QUEUED, _E.SPAWNED): _S.STARTING,
    (_S.QUEUED, _E.STOP): _S.STOPPED,
    (_S.QUEUED, _E.FAIL): _S.FATAL,
    # A child exists but has not reported ready yet. Any way it can end is
    # covered: ready, a definitive failure, an exit (restart or not), or a stop.
    (_S.STARTING, _E.READY): _S.RUNNING,
    (_S.STARTING, _E.FAIL): _S.FATAL,
    (_S.STARTING, _E.EXIT_RESTART): _S.BACKOFF,
    (_S.STARTING, _E.EXIT_FINAL): _S.EXITED,
    (_S.STARTING, _E.STOP): _S.STOPPING,
    # Serving. READY again is invalid: a second readiness report means the
    # supervisor confused two children. FAIL here is the exit decision
    # "restart intensity exceeded" (or a fatal report) after the child is gone.
    (_S.RUNNING, _E.EXIT_RESTART): _S.BACKOFF,
    (_S.RUNNING, _E.EXIT_FINAL): _S.EXITED,
    (_S.RUNNING, _E.FAIL): _S.FATAL,
    (_S.RUNNING, _E.STOP): _S.STOPPING,
    # Waiting out a restart delay with no child. The operator may skip the
    # wait (START), cancel it (STOP, nothing to kill so straight to STOPPED),
    # or the restart itself may be refused (FAIL, e.g. spawn impossible).
    (_S.BACKOFF, _E.RETRY): _S.QUEUED,
    (_S.BACKOFF, _E.START): _S.QUEUED,
    (_S.BACKOFF, _E.STOP): _S.STOPPED,
    (_S.BACKOFF, _E.FAIL): _S.FATAL,
    # Being stopped. However the child ends, the operator asked for it to be
    # down, so every ending completes the stop: the policy's verdict on the
    # exit is irrelevant, and a FAIL (which only arrives once the child is
    # gone) must not turn an intended stop into FATAL. A repeated STOP is a
    # no-op. START is refused: the child still exists and we have committed to
    # ending it; a restart is "stop, wait for STOPPED, start".
    (_S.STOPPING, _E.STOPPED): _S.STOPPED,
    (_S.STOPPING, _E.EXIT_RESTART): _S.STOPPED,
    (_S.STOPPING, _E.EXIT_FINAL): _S.STOPPED,
    (_S.STOPPING, _E.FAIL): _S.STOPPED,
    (_S.STOPPING, _E.STOP): _S.STOPPING,
    # Deliberately absent, among others:
    # - START in QUEUED/STARTING/RUNNING: would queue or spawn a second child;
    #   the caller reports "already running" instead.
    # - SPAWNED outside QUEUED: a process for a device that was not waiting
    #   for one.
    # - RETRY outside BACKOFF: a stale backoff timer that should have been
    #   cancelled.
    # - READY/EXIT_* in states without a child (STOPPED, QUEUED, BACKOFF,
    #   EXITED, FATAL): reports about a child we are not tracking.
}

TRANSITIONS: Mapping[tuple[State, Event], State] = types.MappingProxyType(_TABLE)

# The states in which a child process exists and must be watched and reaped (QUEUED and
# BACKOFF wait for one; the others have none). The one spelling of the set. The only
# process outside it: one that reported a setup error is FATAL before its exit is reaped.
PROCESS_STATES: frozenset[State] = frozenset({State.STARTING, State.RUNNING, State.STOPPING})


class InvalidTransition(Exception):
    """An event arrived in a state where the table does not allow it."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"invalid transition: event {event.value} in state {state.value}")
        self.state = state
        self.event = event


def next_state(state: State, event: Event) -> State:
    """Return the state that ``event`` leads to from ``state``.

    The one place state changes are decided, so the table above is the whole
    truth about the lifecycle.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None
