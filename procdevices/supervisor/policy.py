"""Restart, backoff, intensity, stop-escalation and health decisions.

Everything here is a pure function of its arguments: no processes, no I/O and
no clock reads. Time is always passed in as ``now`` (monotonic seconds), so the
supervisor owns the clock and tests can use plain floats.

``RestartPolicy``, ``Backoff`` and ``Intensity`` are defined here (not in
``config.py``) so there is a single copy; ``config.py`` imports them. This
module therefore must not import ``config.py``.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple, Self

__all__ = [
    "REAP_MARGIN",
    "Backoff",
    "ExitDecision",
    "ExitEventName",
    "Intensity",
    "ProbeState",
    "RestartHistory",
    "RestartPolicy",
    "StopAction",
    "after_probe",
    "backoff_delay",
    "consecutive_failures_after_exit",
    "decide_after_exit",
    "memory_exceeded",
    "next_stop_deadline",
    "record_restart",
    "should_restart",
    "stop_action",
    "worst_case_stop_seconds",
]


class RestartPolicy(enum.Enum):
    """What to do when a child exits without being asked to."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


# The records here are NamedTuples, as on the rest of `up`'s path (supervisor/__init__.py says why).


class _BackoffFields(NamedTuple):
    initial: float
    max: float
    factor: float


class Backoff(_BackoffFields):
    """Exponential delay between restarts: initial, initial*factor, ... capped at max."""

    __slots__ = ()

    def __new__(cls, initial: float = 0.05, max: float = 5.0, factor: float = 2.0) -> Backoff:  # noqa: A002
        # Checked here so a bad config fails at load time, not at the first crash.
        if initial < 0 or max < 0:
            raise ValueError(f"backoff delays must be >= 0, got initial={initial} max={max}")
        if factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {factor}")
        return super().__new__(cls, initial, max, factor)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]  # mypy sees a generic _cls
        return cls(*iterable)  # checked: _replace (copy.replace on 3.13) builds through _make


class _IntensityFields(NamedTuple):
    max_restarts: int
    within: float


class Intensity(_IntensityFields):
    """Give up when more than ``max_restarts`` restarts happen within ``within`` seconds."""

    __slots__ = ()

    def __new__(cls, max_restarts: int = 5, within: float = 30.0) -> Intensity:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if within <= 0:
            raise ValueError(f"intensity window must be > 0 seconds, got {within}")
        return super().__new__(cls, max_restarts, within)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]  # mypy sees a generic _cls
        return cls(*iterable)


# --------------------------------------------------------------------------
# Restart decisions


def should_restart(policy: RestartPolicy, exit_code: int | None, *, requested_stop: bool) -> bool:
    """Whether the policy wants a child restarted after it exited.

    ``exit_code`` is the process return code: 0 is a clean exit, > 0 an error
    exit, < 0 death by signal, and ``None`` no code: the supervisor killed it as
    unhealthy (hung, over its memory limit), or it was not this supervisor's child
    (adopted). Only 0 counts as success.
    """
    if requested_stop:
        # The operator asked for it to go down; restarting would undo that.
        return False
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.NEVER:
        return False
    return exit_code != 0


def backoff_delay(backoff: Backoff, consecutive_failures: int) -> float:
    """Seconds to wait before the next start.

    0 or 1 failures -> 0.0: the first start, and the first restart after a stable run, are
    immediate (a warm worker makes that restart cost milliseconds; waiting would only add
    downtime). n >= 2 consecutive failures -> ``min(max, initial * factor ** (n - 2))``:
    only a crash loop backs off.
    """
    if consecutive_failures < 0:
        raise ValueError(f"consecutive_failures must be >= 0, got {consecutive_failures}")
    if consecutive_failures <= 1:
        return 0.0
    try:
        delay = backoff.initial * backoff.factor ** (consecutive_failures - 2)
    except OverflowError:
        # A very long crash loop (with intensity effectively disabled) would
        # overflow the float power; it is far past the cap anyway.
        return backoff.max
    return min(backoff.max, delay)


class RestartHistory(NamedTuple):
    """Monotonic times of recent restarts, oldest first, trimmed to the intensity window."""

    times: tuple[float, ...] = ()


def record_restart(history: RestartHistory, now: float, intensity: Intensity) -> tuple[RestartHistory, bool]:
    """Add a restart at ``now`` and report whether the intensity limit is exceeded.

    Entries older than ``now - within`` are dropped (an entry exactly at the
    edge still counts). Exceeded means *more than* ``max_restarts`` restarts in
    the window, as in Erlang/OTP supervisors: ``max_restarts`` is allowed,
    one more is not.
    """
    cutoff = now - intensity.within
    kept = tuple(t for t in history.times if t >= cutoff)
    new = RestartHistory(kept + (now,))
    return new, len(new.times) > intensity.max_restarts


def consecutive_failures_after_exit(previous: int, run_seconds: float, stable_after: float) -> int:
    """Update the consecutive-failure count after an exit.

    A run that lasted at least ``stable_after`` seconds shows the device can
    work, so the streak starts over and the next delay is the short one again.
    """
    if run_seconds >= stable_after:
        return 1
    return previous + 1


ExitEventName = Literal["EXIT_RESTART", "EXIT_FINAL", "FAIL"]


class ExitDecision(NamedTuple):
    """What to do after an exit; ``event_name`` is a ``states.Event`` member name.

    ``history`` and ``failures`` are the values the supervisor should keep for
    the next exit. ``delay`` is only non-zero for ``EXIT_RESTART``.
    """

    event_name: ExitEventName
    delay: float
    history: RestartHistory
    failures: int
    reason: str


def _describe_exit(exit_code: int | None, *, unhealthy: bool) -> str:
    if exit_code is None:
        # Not ours to reap (an adopted device after a supervisor crash): the code is unknown.
        return "was killed as unhealthy" if unhealthy else "exited (exit code unknown: not this supervisor's child)"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            return f"was killed by signal {-exit_code}"
        return f"was killed by signal {-exit_code} ({name})"
    if exit_code == 0:
        return "exited cleanly (code 0)"
    return f"exited with code {exit_code}"


def decide_after_exit(
    *,
    policy: RestartPolicy,
    exit_code: int | None,
    requested_stop: bool,
    run_seconds: float,
    now: float,
    backoff: Backoff,
    intensity: Intensity,
    stable_after: float,
    history: RestartHistory,
    failures: int,
    unhealthy: bool,
) -> ExitDecision:
    """Combine policy, failure streak, intensity and backoff into one decision.

    When the device stays down (a requested stop or the policy says no) the
    failure streak ends, so ``failures`` goes back to 0 and the restart
    history is left untouched: neither was a restart. ``unhealthy``: the supervisor killed it
    (hung, over its memory limit); with ``exit_code`` None and not unhealthy, the code is
    unknown (an adopted device, not this supervisor's child).
    """
    what = _describe_exit(exit_code, unhealthy=unhealthy)
    if requested_stop:
        return ExitDecision("EXIT_FINAL", 0.0, history, 0, f"{what}; stopped on request")
    if not should_restart(policy, exit_code, requested_stop=False):
        return ExitDecision("EXIT_FINAL", 0.0, history, 0, f"{what}; restart={policy.value}")

    new_failures = consecutive_failures_after_exit(failures, run_seconds, stable_after)
    new_history, exceeded = record_restart(history, now, intensity)
    count = len(new_history.times)
    window = f"{intensity.within:g}s"
    if exceeded:
        return ExitDecision(
            "FAIL",
            0.0,
            new_history,
            new_failures,
            f"gave up: {count} restarts within {window} (limit {intensity.max_restarts})",
        )
    delay = backoff_delay(backoff, new_failures)
    when = f"restarting in {delay:.2f}s" if delay > 0 else "restarting at once"
    return ExitDecision(
        "EXIT_RESTART",
        delay,
        new_history,
        new_failures,
        f"{what}; {when} (restart {count} of {intensity.max_restarts} allowed in {window})",
    )


# --------------------------------------------------------------------------
# Stop escalation


class StopAction(enum.Enum):
    """What the supervisor should do to a child it is stopping, right now."""

    WAIT = "wait"
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"


# Allowance after SIGKILL for the kernel to tear the process down and for the
# supervisor's next poll to reap it. SIGKILL cannot be ignored, so this only
# covers scheduling latency, not the child's behaviour.
REAP_MARGIN = 1.0


def _check_timeouts(stop_timeout: float, kill_timeout: float) -> None:
    if stop_timeout < 0 or kill_timeout < 0:
        raise ValueError(f"stop timeouts must be >= 0, got stop={stop_timeout} kill={kill_timeout}")


def stop_action(
    *,
    requested_at: float,
    now: float,
    stop_timeout: float,
    kill_timeout: float,
    term_sent: bool,
    kill_sent: bool,
) -> StopAction:
    """The escalation step due at ``now`` for a stop sent over the control socket at ``requested_at``.

    Timeline: WAIT until ``requested_at + stop_timeout``; then SIGTERM (once);
    from ``requested_at + stop_timeout + kill_timeout`` SIGKILL (once); then
    WAIT for the exit. Deadlines are absolute from ``requested_at``, so a late
    SIGTERM does not push SIGKILL back. SIGTERM is never skipped: if the
    supervisor wakes up after both deadlines it sends SIGTERM now and SIGKILL
    on its next look, which is immediately due.
    """
    _check_timeouts(stop_timeout, kill_timeout)
    if kill_sent:
        return StopAction.WAIT  # nothing stronger exists; wait to reap
    term_at = requested_at + stop_timeout
    if now < term_at:
        return StopAction.WAIT
    if not term_sent:
        return StopAction.SIGTERM
    if now >= term_at + kill_timeout:
        return StopAction.SIGKILL
    return StopAction.WAIT


def next_stop_deadline(
    *,
    requested_at: float,
    stop_timeout: float,
    kill_timeout: float,
    term_sent: bool,
    kill_sent: bool,
) -> float | None:
    """When ``stop_action`` will next return something other than WAIT.

    ``None`` once SIGKILL was sent: only the exit itself is left to wait for.
    The result may be in the past, meaning "act now".
    """
    _check_timeouts(stop_timeout, kill_timeout)
    if kill_sent:
        return None
    term_at = requested_at + stop_timeout
    if not term_sent:
        return term_at
    return term_at + kill_timeout


def worst_case_stop_seconds(stop_timeout: float, kill_timeout: float) -> float:
    """Upper bound on how long a stop can take: both timeouts plus ``REAP_MARGIN``."""
    _check_timeouts(stop_timeout, kill_timeout)
    return stop_timeout + kill_timeout + REAP_MARGIN


# --------------------------------------------------------------------------
# Health


def memory_exceeded(rss_bytes: int, limit: int | None) -> bool:
    """Whether resident memory is over the limit (``None`` = no limit; equal is fine)."""
    return limit is not None and rss_bytes > limit


class ProbeState(NamedTuple):
    """Consecutive failed liveness probes of one child."""

    consecutive_failures: int = 0


def after_probe(state: ProbeState, ok: bool, failures_allowed: int) -> tuple[ProbeState, bool]:
    """Update the probe streak; returns ``(new state, hung)``.

    One answered probe proves the child is alive, so it resets the streak; the
    child is declared hung once ``failures_allowed`` probes in a row failed.
    """
    if failures_allowed < 1:
        raise ValueError(f"failures_allowed must be >= 1, got {failures_allowed}")
    if ok:
        return ProbeState(), False
    failed = state.consecutive_failures + 1
    return ProbeState(failed), failed >= failures_allowed


# --------------------------------------------------------------------------
# Start

# Device processes being started at once, per CPU. Spawning every device of a big topology at
# once shares the CPUs between all of them: under load each start then takes as long as all of
# them and overruns its start_timeout (seen: 256 spawned devices on 2 loaded CPUs, 28 killed
# for it). The bound is loose on purpose: fewer in flight also slowed a quiet machine's start
# of 256 spawned devices (4 per CPU: 14-15 s against 12 s unbounded).
STARTS_PER_CPU = 16

# Processes started per turn of the supervisor's loop.
LAUNCHES_PER_TURN = 8

# Seconds the warm pool waits, once the devices of `up`'s first start are all up, before it is
# first filled (at the loop's next turn after that: within a second): its workers' interpreters
# (~50 ms of CPU each) would otherwise compete with the devices' first messages
# (docs/performance.md). Later refills follow each hand-out at once.
FIRST_POOL_FILL_DELAY = 0.5


def max_starting(cpus: int | None) -> int:
    """How many devices may be starting at once on a machine with ``cpus`` CPUs."""
    return STARTS_PER_CPU * max(1, cpus or 1)
