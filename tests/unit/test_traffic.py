"""Traffic totals across restarts and rates over recent samples (pure logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from procdevices.supervisor.traffic import COUNTERS, Traffic, parse_counters


def counters(value: int) -> dict[str, int]:
    return dict.fromkeys(COUNTERS, value)


def test_totals_never_go_backwards_across_a_restart() -> None:
    traffic = Traffic()
    traffic.observe(counters(10), 1.0)
    traffic.observe(counters(25), 2.0)
    traffic.process_ended()
    assert traffic.totals() == counters(25)
    traffic.observe(counters(3), 3.0)  # the new process counts from zero
    assert traffic.totals() == counters(28)


def test_a_reset_without_an_exit_seen_keeps_what_was_counted() -> None:
    traffic = Traffic()
    traffic.observe(counters(40), 1.0)
    traffic.observe(counters(5), 2.0)
    assert traffic.totals() == counters(45)


def test_rates_over_the_samples_kept() -> None:
    traffic = Traffic()
    assert traffic.rates() == dict.fromkeys(COUNTERS, 0.0)
    for second in range(10):
        traffic.observe(counters(100 * second), float(second))
    assert traffic.rates() == dict.fromkeys(COUNTERS, 100.0)


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=10**12)), max_size=40))
def test_totals_are_monotonic_whatever_happens(history: list[tuple[bool, int]]) -> None:
    traffic, now, last = Traffic(), 0.0, counters(0)
    for ended, value in history:
        if ended:
            traffic.process_ended()
        else:
            now += 1.0
            traffic.observe(counters(value), now)
        totals = traffic.totals()
        assert all(totals[k] >= last[k] for k in COUNTERS)
        last = totals


def test_only_the_eight_non_negative_counters_parse() -> None:
    assert parse_counters(counters(1)) == counters(1)
    assert parse_counters({**counters(1), "back_bytes_out": -1}) is None
    assert parse_counters({**counters(1), "back_bytes_out": True}) is None
    assert parse_counters({"front_msgs_in": 1}) is None
    assert parse_counters([1] * 8) is None
