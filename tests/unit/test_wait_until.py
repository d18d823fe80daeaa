"""The one waiting loop (procdevices.control.waiter.wait_until) that the library's waiter and
the tests' wait_for share: what it returns, when it pauses, and that it ends at its deadline."""

from __future__ import annotations

import pytest

from procdevices.control.waiter import wait_until

pytestmark = pytest.mark.timeout(10)


def test_it_returns_the_first_truthy_answer_pausing_between_checks_within_the_time_left() -> None:
    answers = iter([None, 0, "ready", "later"])
    pauses: list[float] = []
    assert wait_until(lambda: next(answers), 30.0, pauses.append) == "ready"
    assert len(pauses) == 2 and all(0 < left <= 30.0 for left in pauses)
    assert next(answers) == "later", "checked again after it had its answer"


def test_past_its_deadline_it_answers_none_without_pausing_again() -> None:
    checks: list[None] = []
    pauses: list[float] = []

    def never() -> None:
        checks.append(None)

    assert wait_until(never, 0.0, pauses.append) is None
    assert (len(checks), pauses) == (1, [])


def test_what_a_pause_raises_ends_the_wait() -> None:
    def interrupted(left: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wait_until(lambda: None, 30.0, interrupted)
