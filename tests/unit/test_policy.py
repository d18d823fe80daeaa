"""Tests for the pure restart/stop/health decisions (procdevices.supervisor.policy).

The clock is plain floats: no sleeps, no processes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from procdevices.supervisor.policy import (
    REAP_MARGIN,
    Backoff,
    ExitDecision,
    Intensity,
    ProbeState,
    RestartHistory,
    RestartPolicy,
    StopAction,
    after_probe,
    backoff_delay,
    consecutive_failures_after_exit,
    decide_after_exit,
    memory_exceeded,
    next_stop_deadline,
    record_restart,
    should_restart,
    stop_action,
    worst_case_stop_seconds,
)
from procdevices.supervisor.states import Event, State, next_state

# --- types -------------------------------------------------------------------


def test_restart_policy_values_match_config_spelling() -> None:
    assert RestartPolicy("always") is RestartPolicy.ALWAYS
    assert RestartPolicy("on-failure") is RestartPolicy.ON_FAILURE
    assert RestartPolicy("never") is RestartPolicy.NEVER


def test_defaults_and_frozen() -> None:
    assert Backoff() == Backoff(initial=0.05, max=5.0, factor=2.0)
    assert Intensity() == Intensity(max_restarts=5, within=30.0)
    with pytest.raises(AttributeError):
        Backoff().initial = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"initial": -1.0}, {"max": -0.1}, {"factor": 0.5}])
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


@pytest.mark.parametrize("kwargs", [{"max_restarts": -1}, {"within": 0.0}])
def test_intensity_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Intensity(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        lambda: Backoff()._replace(factor=0.5),
        lambda: Backoff._make([-1.0, 5.0, 2.0]),
        lambda: Intensity()._replace(within=0.0),
        lambda: Intensity._make([-1, 30.0]),
    ],
)
def test_a_changed_copy_is_checked_too(change: Callable[[], object]) -> None:
    # As dataclasses.replace re-ran the checks when these were dataclasses.
    with pytest.raises(ValueError):
        change()


# --- should_restart ------------------------------------------------------------

# exit codes: clean, error, killed by SIGKILL, killed by the supervisor as unhealthy
EXIT_CODES: list[int | None] = [0, 1, -9, None]

RESTART_TABLE = {
    RestartPolicy.ALWAYS: {0: True, 1: True, -9: True, None: True},
    RestartPolicy.ON_FAILURE: {0: False, 1: True, -9: True, None: True},
    RestartPolicy.NEVER: {0: False, 1: False, -9: False, None: False},
}


@pytest.mark.parametrize("policy", list(RestartPolicy))
@pytest.mark.parametrize("exit_code", EXIT_CODES)
@pytest.mark.parametrize("requested_stop", [False, True])
def test_should_restart(policy: RestartPolicy, exit_code: int | None, requested_stop: bool) -> None:
    expected = False if requested_stop else RESTART_TABLE[policy][exit_code]
    assert should_restart(policy, exit_code, requested_stop=requested_stop) is expected


# --- backoff ---------------------------------------------------------------------


def test_backoff_sequence_and_cap() -> None:
    b = Backoff()
    delays = [backoff_delay(b, n) for n in range(10)]
    assert delays == pytest.approx([0.0, 0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])


def test_backoff_custom() -> None:
    b = Backoff(initial=1.0, max=10.0, factor=3.0)
    assert [backoff_delay(b, n) for n in range(2, 6)] == [1.0, 3.0, 9.0, 10.0]


def test_backoff_constant_when_factor_is_one() -> None:
    b = Backoff(initial=0.5, max=5.0, factor=1.0)
    assert {backoff_delay(b, n) for n in range(2, 20)} == {0.5}


def test_backoff_huge_failure_count_is_capped_not_an_overflow() -> None:
    assert backoff_delay(Backoff(), 100_000) == 5.0


def test_backoff_rejects_negative_count() -> None:
    with pytest.raises(ValueError):
        backoff_delay(Backoff(), -1)


# --- restart intensity -------------------------------------------------------------


def test_record_restart_appends() -> None:
    history, exceeded = record_restart(RestartHistory(), 10.0, Intensity())
    assert history == RestartHistory((10.0,))
    assert exceeded is False


def test_record_restart_does_not_mutate_input() -> None:
    original = RestartHistory((1.0, 2.0))
    record_restart(original, 3.0, Intensity())
    assert original.times == (1.0, 2.0)


def test_record_restart_window_slides() -> None:
    intensity = Intensity(max_restarts=5, within=30.0)
    history = RestartHistory((0.0, 5.0, 20.0, 29.0))
    new, exceeded = record_restart(history, 40.0, intensity)
    # 0.0 and 5.0 are older than 40 - 30 = 10 and drop out.
    assert new.times == (20.0, 29.0, 40.0)
    assert exceeded is False


def test_record_restart_entry_exactly_at_window_edge_counts() -> None:
    new, _ = record_restart(RestartHistory((10.0,)), 40.0, Intensity(within=30.0))
    assert new.times == (10.0, 40.0)


def test_exceeded_boundary_n_ok_n_plus_one_exceeded() -> None:
    intensity = Intensity(max_restarts=3, within=30.0)
    history = RestartHistory()
    results = []
    for now in (1.0, 2.0, 3.0, 4.0):
        history, exceeded = record_restart(history, now, intensity)
        results.append(exceeded)
    assert results == [False, False, False, True]


def test_slow_crashes_never_exceed() -> None:
    intensity = Intensity(max_restarts=3, within=30.0)
    history = RestartHistory()
    for i in range(50):  # one restart every 11 s: at most 3 in any 30 s window
        history, exceeded = record_restart(history, 11.0 * i, intensity)
        assert not exceeded
    assert len(history.times) == 3  # trimmed, does not grow forever


def test_restarts_exactly_within_apart_share_the_window() -> None:
    # The window is closed at its old end: restarts at 0, 10, 20, 30 are four within 30 s.
    history = RestartHistory((0.0, 10.0, 20.0))
    _, exceeded = record_restart(history, 30.0, Intensity(max_restarts=3, within=30.0))
    assert exceeded is True


def test_zero_max_restarts_gives_up_on_the_first() -> None:
    _, exceeded = record_restart(RestartHistory(), 0.0, Intensity(max_restarts=0))
    assert exceeded is True


# --- consecutive failures ------------------------------------------------------------


def test_short_run_increments_failures() -> None:
    assert consecutive_failures_after_exit(0, 0.5, 10.0) == 1
    assert consecutive_failures_after_exit(3, 9.99, 10.0) == 4


def test_stable_run_resets_failures() -> None:
    assert consecutive_failures_after_exit(7, 10.0, 10.0) == 1  # boundary counts as stable
    assert consecutive_failures_after_exit(7, 3600.0, 10.0) == 1


# --- decide_after_exit ------------------------------------------------------------------


def decide(
    *,
    policy: RestartPolicy = RestartPolicy.ON_FAILURE,
    exit_code: int | None = 1,
    requested_stop: bool = False,
    run_seconds: float = 0.5,
    now: float = 0.0,
    history: RestartHistory = RestartHistory(),
    failures: int = 0,
) -> ExitDecision:
    return decide_after_exit(
        policy=policy,
        exit_code=exit_code,
        requested_stop=requested_stop,
        run_seconds=run_seconds,
        now=now,
        backoff=Backoff(),
        intensity=Intensity(max_restarts=5, within=30.0),
        stable_after=10.0,
        history=history,
        failures=failures,
        unhealthy=exit_code is None,
    )


def test_event_names_are_state_machine_events() -> None:
    for name in ("EXIT_RESTART", "EXIT_FINAL", "FAIL"):
        assert Event[name].name == name


def test_crash_loop_reaches_fail() -> None:
    now = 0.0
    history = RestartHistory()
    failures = 0
    decisions = []
    state = next_state(State.STOPPED, Event.START)
    state = next_state(state, Event.SPAWNED)
    state = next_state(state, Event.READY)
    for _ in range(6):
        now += 0.5  # the child runs half a second, then exits with code 1
        d = decide(now=now, history=history, failures=failures)
        decisions.append(d)
        state = next_state(state, Event[d.event_name])
        if d.event_name != "EXIT_RESTART":
            break
        history, failures = d.history, d.failures
        now += d.delay
        state = next_state(state, Event.RETRY)
        state = next_state(state, Event.SPAWNED)
        state = next_state(state, Event.READY)

    assert [d.event_name for d in decisions] == ["EXIT_RESTART"] * 5 + ["FAIL"]
    assert [d.delay for d in decisions] == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.4, 0.0])
    assert [d.failures for d in decisions] == [1, 2, 3, 4, 5, 6]
    assert state is State.FATAL
    assert decisions[0].reason == "exited with code 1; restarting at once (restart 1 of 5 allowed in 30s)"
    assert decisions[2].reason == "exited with code 1; restarting in 0.10s (restart 3 of 5 allowed in 30s)"
    assert decisions[-1].reason == "gave up: 6 restarts within 30s (limit 5)"


def test_clean_exit_under_on_failure_is_final() -> None:
    history = RestartHistory((1.0,))
    d = decide(policy=RestartPolicy.ON_FAILURE, exit_code=0, now=5.0, history=history, failures=2)
    assert d.event_name == "EXIT_FINAL"
    assert d.delay == 0.0
    assert d.history == history  # not a restart: nothing recorded
    assert d.failures == 0  # the streak ends when the device stays down
    assert d.reason == "exited cleanly (code 0); restart=on-failure"


@pytest.mark.parametrize("exit_code", EXIT_CODES)
def test_never_is_final(exit_code: int | None) -> None:
    d = decide(policy=RestartPolicy.NEVER, exit_code=exit_code)
    assert d.event_name == "EXIT_FINAL"
    assert d.reason.endswith("; restart=never")


def test_requested_stop_is_final_whatever_the_policy() -> None:
    d = decide(policy=RestartPolicy.ALWAYS, exit_code=-15, requested_stop=True, failures=3)
    assert d.event_name == "EXIT_FINAL"
    assert d.failures == 0
    assert d.history == RestartHistory()
    assert d.reason == "was killed by signal 15 (SIGTERM); stopped on request"


def test_clean_exit_under_always_restarts() -> None:
    d = decide(policy=RestartPolicy.ALWAYS, exit_code=0)
    assert d.event_name == "EXIT_RESTART"
    assert d.reason.startswith("exited cleanly (code 0); restarting at once")


def test_unhealthy_kill_reason() -> None:
    d = decide(exit_code=None)
    assert d.event_name == "EXIT_RESTART"
    assert d.reason.startswith("was killed as unhealthy; restarting")


def test_stable_run_then_crash_gets_short_delay_again() -> None:
    # Four quick crashes in a row built up a long delay...
    crashing = decide(now=3.0, failures=3, history=RestartHistory((0.5, 1.0, 2.0)))
    assert crashing.delay == pytest.approx(0.2)
    # ...then the device ran for an hour before crashing: back to the short delay.
    d = decide(now=3603.0, run_seconds=3600.0, failures=crashing.failures, history=crashing.history)
    assert d.event_name == "EXIT_RESTART"
    assert d.failures == 1
    assert d.delay == 0.0
    assert d.history.times == (3603.0,)  # old restarts fell out of the window
    assert "restart 1 of 5" in d.reason


# --- stop escalation ------------------------------------------------------------------

STOP = {"requested_at": 100.0, "stop_timeout": 5.0, "kill_timeout": 2.0}


def act(now: float, *, term_sent: bool = False, kill_sent: bool = False) -> StopAction:
    return stop_action(now=now, term_sent=term_sent, kill_sent=kill_sent, **STOP)


def deadline(*, term_sent: bool = False, kill_sent: bool = False) -> float | None:
    return next_stop_deadline(term_sent=term_sent, kill_sent=kill_sent, **STOP)


def test_stop_action_timeline() -> None:
    # Waiting for the control-socket stop to take effect.
    assert act(100.0) is StopAction.WAIT
    assert act(104.999) is StopAction.WAIT
    # SIGTERM exactly at requested_at + stop_timeout.
    assert act(105.0) is StopAction.SIGTERM
    # After SIGTERM, wait out kill_timeout.
    assert act(105.0, term_sent=True) is StopAction.WAIT
    assert act(106.999, term_sent=True) is StopAction.WAIT
    # SIGKILL at requested_at + stop_timeout + kill_timeout.
    assert act(107.0, term_sent=True) is StopAction.SIGKILL
    # Nothing more to do after SIGKILL.
    assert act(107.0, term_sent=True, kill_sent=True) is StopAction.WAIT
    assert act(1000.0, term_sent=True, kill_sent=True) is StopAction.WAIT


def test_late_supervisor_still_sends_sigterm_first() -> None:
    assert act(200.0) is StopAction.SIGTERM
    assert act(200.0, term_sent=True) is StopAction.SIGKILL


def test_next_stop_deadline() -> None:
    assert deadline() == 105.0
    assert deadline(term_sent=True) == 107.0
    assert deadline(term_sent=True, kill_sent=True) is None


def test_deadline_and_action_agree() -> None:
    # Just before each deadline nothing is due; at the deadline something is.
    for term_sent in (False, True):
        due = deadline(term_sent=term_sent)
        assert due is not None
        assert act(due - 0.001, term_sent=term_sent) is StopAction.WAIT
        assert act(due, term_sent=term_sent) is not StopAction.WAIT


def test_zero_timeouts_escalate_immediately() -> None:
    kwargs = {"requested_at": 0.0, "stop_timeout": 0.0, "kill_timeout": 0.0}
    assert stop_action(now=0.0, term_sent=False, kill_sent=False, **kwargs) is StopAction.SIGTERM
    assert stop_action(now=0.0, term_sent=True, kill_sent=False, **kwargs) is StopAction.SIGKILL


def test_negative_timeouts_rejected() -> None:
    with pytest.raises(ValueError):
        stop_action(requested_at=0.0, now=1.0, stop_timeout=-1.0, kill_timeout=1.0, term_sent=False, kill_sent=False)


def test_worst_case_stop_seconds() -> None:
    assert REAP_MARGIN == 1.0
    assert worst_case_stop_seconds(5.0, 2.0) == 8.0
    # Covers the SIGKILL deadline of the timeline above.
    assert STOP["requested_at"] + worst_case_stop_seconds(5.0, 2.0) > 107.0


# --- health ------------------------------------------------------------------------------


def test_memory_exceeded() -> None:
    assert memory_exceeded(10**9, None) is False
    assert memory_exceeded(100, 100) is False
    assert memory_exceeded(101, 100) is True
    assert memory_exceeded(99, 100) is False


def test_after_probe_counts_and_resets() -> None:
    state = ProbeState()
    state, hung = after_probe(state, False, 3)
    assert (state.consecutive_failures, hung) == (1, False)
    state, hung = after_probe(state, False, 3)
    assert (state.consecutive_failures, hung) == (2, False)
    state, hung = after_probe(state, True, 3)  # one answer proves it is alive
    assert (state, hung) == (ProbeState(), False)
    for _ in range(2):
        state, hung = after_probe(state, False, 3)
        assert not hung
    state, hung = after_probe(state, False, 3)
    assert (state.consecutive_failures, hung) == (3, True)


def test_after_probe_single_failure_allowed() -> None:
    _, hung = after_probe(ProbeState(), False, 1)
    assert hung is True


def test_after_probe_rejects_zero_allowed() -> None:
    with pytest.raises(ValueError):
        after_probe(ProbeState(), True, 0)


def test_an_unknown_exit_code_is_a_failure_and_says_so() -> None:
    # An adopted device that is not our child: no exit code, and not killed as unhealthy.
    unknown = decide_after_exit(
        policy=RestartPolicy.ON_FAILURE,
        exit_code=None,
        requested_stop=False,
        run_seconds=60.0,
        now=100.0,
        backoff=Backoff(),
        intensity=Intensity(max_restarts=5, within=30.0),
        stable_after=10.0,
        history=RestartHistory(),
        failures=0,
        unhealthy=False,
    )
    assert unknown.event_name == "EXIT_RESTART"
    assert unknown.reason.startswith("exited (exit code unknown: not this supervisor's child); restarting")
