"""Admission control for background work: token bucket, concurrency cap, AIMD on latency.

Time is driven by hand (``now``), so every test is deterministic and none sleeps.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_core.admission import BackgroundBudget

RATE = 100.0


def budget(**overrides) -> BackgroundBudget:
    args = dict(rate=RATE, burst=10, max_concurrent=1000, latency_target=0.05)
    args.update(overrides)
    return BackgroundBudget(**args)


def feed(b: BackgroundBudget, latency: float, start: float, seconds: float,
         per_second: int = 20) -> float:
    """Foreground traffic of one latency for ``seconds``; returns the time it ends."""
    steps = int(seconds * per_second)
    for i in range(steps):
        b.observe(latency, start + i / per_second)
    return start + steps / per_second


# =========================================================================== token bucket


#: Gaps mix bursts (no time passing) with idle stretches, where an unclamped bucket would
#: save up more than ``burst`` tokens.
gaps = st.one_of(st.just(0.0), st.floats(0.0, 0.05), st.floats(0.0, 5.0))
events = st.lists(st.tuples(gaps, st.sampled_from(["start", "start", "fast", "slow"])),
                  min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.5, 200.0), burst=st.integers(1, 20), events=events)
def test_starts_never_exceed_rate_times_t_plus_burst(rate: float, burst: int, events) -> None:
    b = BackgroundBudget(rate, burst, max_concurrent=10**6, latency_target=0.05)
    now = 0.0
    starts: list[float] = []
    for gap, kind in events:
        now += gap
        if kind == "start":
            if b.try_start(now):
                starts.append(now)
                b.done()
        else:
            b.observe(0.2 if kind == "slow" else 0.001, now)
    # Every window between two starts: the count in it is within the bucket's promise.
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= rate * (starts[j] - first) + burst + 1e-9


def test_a_full_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    b = budget(burst=5)
    assert sum(b.try_start(0.0) for _ in range(10)) == 5
    assert b.try_start(0.0) is False
    assert b.try_start(0.0 + 1 / RATE) is True
    assert b.try_start(0.0 + 1 / RATE) is False


def test_time_running_backwards_mints_no_tokens() -> None:
    b = budget(burst=1)
    assert b.try_start(10.0)
    assert not b.try_start(5.0)
    assert not b.try_start(10.0)


def test_the_concurrency_cap_holds_until_a_task_is_done() -> None:
    b = budget(burst=100, max_concurrent=3)
    assert [b.try_start(0.0) for _ in range(4)] == [True, True, True, False]
    b.done()
    assert b.try_start(0.0) is True
    assert b.try_start(0.0) is False
    assert b.stats()["active"] == 3


def test_done_without_a_start_is_a_bug_and_says_so() -> None:
    with pytest.raises(RuntimeError, match="without a matching"):
        budget().done()


def test_constructor_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        BackgroundBudget(0, 1, 1, 0.1)
    with pytest.raises(ValueError):
        BackgroundBudget(1, 1, 0, 0.1)


# =========================================================================== AIMD


def test_sustained_slow_foreground_drives_the_rate_to_the_floor() -> None:
    b = budget()
    rates = []
    now = 0.0
    for _ in range(10):
        now = feed(b, 0.2, now, 1.0)
        rates.append(b.effective_rate)
    assert rates == sorted(rates, reverse=True)
    assert b.effective_rate == RATE / 32
    assert b.stats()["throttled"] is True


def test_fast_foreground_recovers_the_rate_to_its_configured_value() -> None:
    b = budget()
    now = feed(b, 0.2, 0.0, 10.0)
    assert b.effective_rate == RATE / 32
    rates = []
    for _ in range(12):
        now = feed(b, 0.001, now, 1.0)
        rates.append(b.effective_rate)
    assert rates == sorted(rates)
    assert rates[0] < RATE  # additive: not all at once
    assert b.effective_rate == RATE
    assert b.stats()["throttled"] is False


def test_decrease_is_multiplicative_and_increase_additive() -> None:
    b = budget(recover_steps=10)
    now = feed(b, 0.2, 0.0, 1.0)
    b.observe(0.001, now)  # closes the slow interval, opens a fast one
    assert b.effective_rate == RATE / 2
    now = feed(b, 0.001, now, 1.0)
    b.observe(0.001, now)
    assert b.effective_rate == pytest.approx(RATE / 2 + RATE / 10)


def test_a_rare_outlier_below_the_percentile_does_not_throttle() -> None:
    b = budget()
    for i in range(1000):
        b.observe(5.0 if i == 500 else 0.001, i / 1000)
    b.observe(0.001, 1.0)
    assert b.effective_rate == RATE


def test_quiet_foreground_lets_background_recover_without_any_request() -> None:
    b = budget()
    feed(b, 0.2, 0.0, 10.0)
    assert b.effective_rate == RATE / 32
    b.try_start(1000.0)  # no foreground traffic for a long while
    assert b.effective_rate == RATE


def test_a_throttled_budget_starts_at_most_the_floor_rate() -> None:
    b = budget(burst=10)
    now = feed(b, 0.2, 0.0, 10.0)
    started = 0
    t0 = now
    for i in range(200):
        t = t0 + i * 0.005
        b.observe(0.2, t)  # still slow: stays at the floor
        if b.try_start(t):
            started += 1
            b.done()
    elapsed = 200 * 0.005
    assert b.effective_rate == RATE / 32
    # A throttled bucket holds at most max(1, burst * floor / rate) tokens.
    assert started <= RATE / 32 * elapsed + 1 + 1e-9


def test_stats_report_the_controller_state() -> None:
    b = budget()
    b.try_start(0.0)
    stats = b.stats()
    assert stats["rate"] == RATE and stats["effective_rate"] == RATE
    assert stats["started"] == 1 and stats["refused"] == 0 and stats["active"] == 1
    assert {"tokens", "max_concurrent", "latency_target", "last_interval_percentile"} <= set(stats)
