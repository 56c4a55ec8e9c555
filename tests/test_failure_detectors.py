"""The built-in failure detectors: ``timeout`` and ``phi-accrual``.

Time is driven by hand (``now`` is an argument), so nothing sleeps. Scenario tests pin the
documented state transitions; the phi tests also check the numbers the docstrings promise
(when a silent peer goes suspect and down) against the closed form of the normal tail, and
a Hypothesis property checks that a silence can only grow more suspicious as it lasts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import pluggy
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import dynamo_core.hookspecs
from dynamo_core.hookspecs import PEER_STATES, FailureDetector
from dynamo_plugins.failure_detectors import (
    PHI_CAP,
    PhiAccrualDetector,
    TimeoutDetector,
    normal_tail_phi,
)

HEARTBEAT = 0.5


def heartbeats(detector: FailureDetector, peer: str, count: int, every: float = HEARTBEAT,
               start: float = 0.0) -> float:
    """Report ``count`` regular arrivals from ``peer``; returns the time of the last one."""
    now = start
    for i in range(count):
        now = start + i * every
        detector.heard_from(peer, now)
    return now


def first_time_in_state(detector: FailureDetector, peer: str, state: str, since: float,
                        until: float, step: float = 0.001) -> float | None:
    """The first silence (seconds after ``since``) at which the peer reads as ``state``."""
    for i in range(int((until - since) / step) + 1):
        if detector.state(peer, since + i * step) == state:
            return i * step
    return None


# --------------------------------------------------------------------------- registration


def loaded_detectors() -> dict[str, Any]:
    """The failure detectors a real plugin manager finds through the entry points."""
    pm = pluggy.PluginManager("dynamo")
    pm.add_hookspecs(dynamo_core.hookspecs)
    pm.load_setuptools_entrypoints("dynamo")
    merged: dict[str, Any] = {}
    for offered in pm.hook.dynamo_failure_detectors():
        merged.update(offered)
    return merged


def test_both_detectors_register_through_the_dynamo_entry_point() -> None:
    detectors = loaded_detectors()
    assert {"timeout", "phi-accrual"} <= set(detectors)


@pytest.mark.parametrize("name", ["timeout", "phi-accrual"])
def test_registered_factories_build_failure_detectors(name: str) -> None:
    detector = loaded_detectors()[name]({"plugin": name})
    assert isinstance(detector, FailureDetector)
    assert detector.state("never-seen", 0.0) in PEER_STATES


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("factory", "key", "value"),
    [
        (TimeoutDetector.from_options, "failures_to_down", 0),
        (TimeoutDetector.from_options, "failures_to_down", 2.0),
        (TimeoutDetector.from_options, "failures_to_down", True),
        (TimeoutDetector.from_options, "silence_timeout", 0),
        (TimeoutDetector.from_options, "silence_timeout", -1.0),
        (TimeoutDetector.from_options, "silence_timeout", "5"),
        (PhiAccrualDetector.from_options, "threshold", 0),
        (PhiAccrualDetector.from_options, "threshold", float("nan")),
        (PhiAccrualDetector.from_options, "threshold", float("inf")),
        (PhiAccrualDetector.from_options, "threshold", True),
        (PhiAccrualDetector.from_options, "window", 0),
        (PhiAccrualDetector.from_options, "window", 10.5),
        (PhiAccrualDetector.from_options, "min_std_dev", 0.0),
        (PhiAccrualDetector.from_options, "acceptable_pause", -0.1),
        (PhiAccrualDetector.from_options, "first_interval", 0),
        (PhiAccrualDetector.from_options, "failures_to_down", 0),
    ],
)
def test_bad_option_is_a_value_error_naming_the_key(factory: Any, key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"\[failure_detector\] {key} must be"):
        factory({"plugin": "x", key: value})


def test_options_of_other_detectors_and_unknown_keys_are_ignored() -> None:
    shared: Mapping[str, Any] = {
        "plugin": "phi-accrual", "threshold": 12, "window": 10, "silence_timeout": 3,
        "acceptable_pause": 0, "something_new": "whatever",
    }
    phi = PhiAccrualDetector.from_options(shared)
    timeout = TimeoutDetector.from_options(shared)
    assert (phi.threshold, phi.window, phi.acceptable_pause) == (12.0, 10, 0.0)
    assert timeout.silence_timeout == 3.0


def test_defaults_are_the_documented_ones() -> None:
    phi = PhiAccrualDetector.from_options({})
    timeout = TimeoutDetector.from_options({})
    assert (phi.threshold, phi.window, phi.min_std_dev, phi.acceptable_pause,
            phi.first_interval, phi.failures_to_down) == (8.0, 100, 0.1, 0.5, 1.0, 3)
    assert (timeout.failures_to_down, timeout.silence_timeout) == (2, 5.0)


# --------------------------------------------------------------------------- timeout


def test_timeout_never_heard_peer_is_up() -> None:
    assert TimeoutDetector().state("n9", 1000.0) == "up"


def test_timeout_one_failure_suspects_two_mark_down() -> None:
    detector = TimeoutDetector()
    detector.heard_from("n2", 0.0)
    detector.request_failed("n2", 1.0)
    assert detector.state("n2", 1.0) == "suspect"
    detector.request_failed("n2", 2.0)
    assert detector.state("n2", 2.0) == "down"


def test_timeout_down_holds_until_the_peer_is_heard_from_again() -> None:
    detector = TimeoutDetector()
    detector.request_failed("n2", 0.0)
    detector.request_failed("n2", 0.1)
    assert detector.state("n2", 100.0) == "down"
    detector.heard_from("n2", 100.0)
    assert detector.state("n2", 100.0) == "up"


def test_timeout_hearing_from_a_peer_resets_its_failure_count() -> None:
    detector = TimeoutDetector()
    detector.request_failed("n2", 0.0)
    detector.heard_from("n2", 0.5)
    detector.request_failed("n2", 1.0)
    assert detector.state("n2", 1.0) == "suspect"


def test_timeout_failures_to_down_option_is_honoured() -> None:
    detector = TimeoutDetector.from_options({"failures_to_down": 1})
    detector.request_failed("n2", 0.0)
    assert detector.state("n2", 0.0) == "down"


def test_timeout_long_silence_of_a_known_peer_is_suspect_not_down() -> None:
    detector = TimeoutDetector()
    detector.heard_from("n2", 10.0)
    assert detector.state("n2", 15.0) == "up"
    assert detector.state("n2", 15.01) == "suspect"
    assert detector.state("n2", 1e6) == "suspect"
    detector.heard_from("n2", 1e6)
    assert detector.state("n2", 1e6) == "up"


def test_timeout_forget_drops_the_failure_count() -> None:
    detector = TimeoutDetector()
    detector.request_failed("n2", 0.0)
    detector.request_failed("n2", 0.0)
    detector.forget("n2")
    assert detector.state("n2", 0.0) == "up"
    detector.request_failed("n2", 0.0)
    assert detector.state("n2", 0.0) == "suspect"
    detector.forget("never-known")  # forgetting a stranger is harmless


# --------------------------------------------------------------------------- phi accrual


def test_phi_never_heard_peer_is_up_with_phi_zero() -> None:
    detector = PhiAccrualDetector()
    assert detector.phi("n9", 1e9) == 0.0
    assert detector.state("n9", 1e9) == "up"


def test_phi_regular_heartbeats_keep_a_peer_up() -> None:
    detector = PhiAccrualDetector()
    for i in range(1000):
        now = i * HEARTBEAT
        # Checked just before each beat: the longest silence a healthy peer shows.
        assert detector.state("n2", now) == "up"
        detector.heard_from("n2", now)
    assert detector.phi("n2", 999 * HEARTBEAT + HEARTBEAT) < 1.0


def test_phi_silent_peer_goes_suspect_then_down_within_bounded_silence() -> None:
    detector = PhiAccrualDetector()  # threshold 8, min_std 0.1, acceptable_pause 0.5
    last = heartbeats(detector, "n2", 200)
    suspect_after = first_time_in_state(detector, "n2", "suspect", last, last + 5.0)
    down_after = first_time_in_state(detector, "n2", "down", last, last + 5.0)
    assert suspect_after is not None and down_after is not None
    assert 1.0 < suspect_after < down_after < 3.0
    # Closed form: intervals are all 0.5 s, so std is floored to 0.1 and the mean becomes
    # 0.5 + 0.5 = 1.0; phi reaches 8 where the normal tail is 1e-8, i.e. 5.6 std past it.
    normal = NormalDist()
    expected_down = 1.0 + 0.1 * normal.inv_cdf(1 - 1e-8)
    expected_suspect = 1.0 + 0.1 * normal.inv_cdf(1 - 1e-4)
    assert down_after == pytest.approx(expected_down, abs=0.002)  # ~1.56 s
    assert suspect_after == pytest.approx(expected_suspect, abs=0.002)  # ~1.37 s


def test_phi_tolerates_jittery_heartbeats() -> None:
    detector = PhiAccrualDetector()
    rng = random.Random(20070101)
    now = 0.0
    for _ in range(2000):
        detector.heard_from("n2", now)
        gap = rng.uniform(0.2, 1.0)
        for fraction in (0.5, 1.0):
            assert detector.state("n2", now + gap * fraction) == "up"
        now += gap


def test_phi_single_gc_pause_does_not_mark_down() -> None:
    detector = PhiAccrualDetector()
    last = heartbeats(detector, "n2", 100)
    pause = HEARTBEAT + 0.8  # the beat that should come at +0.5 s is 0.8 s late
    assert first_time_in_state(detector, "n2", "down", last, last + pause) is None
    assert first_time_in_state(detector, "n2", "suspect", last, last + pause) is None
    detector.heard_from("n2", last + pause)
    after = heartbeats(detector, "n2", 20, start=last + pause + HEARTBEAT)
    assert detector.state("n2", after + HEARTBEAT) == "up"


def test_phi_peer_heard_once_then_silent_still_goes_down() -> None:
    detector = PhiAccrualDetector()  # first_interval 1.0 s guessed, std a quarter of it
    detector.heard_from("n2", 0.0)
    assert detector.state("n2", 1.0) == "up"
    down_after = first_time_in_state(detector, "n2", "down", 0.0, 10.0, step=0.01)
    assert down_after is not None and 2.0 < down_after < 4.0


def test_phi_window_stays_bounded() -> None:
    detector = PhiAccrualDetector()
    heartbeats(detector, "n2", 10_000)
    assert len(detector._peers["n2"].intervals) <= detector.window == 100
    small = PhiAccrualDetector.from_options({"window": 5})
    heartbeats(small, "n2", 10_000)
    assert len(small._peers["n2"].intervals) == 5


def test_phi_adapts_to_a_peer_changing_its_rhythm() -> None:
    detector = PhiAccrualDetector.from_options({"window": 50, "acceptable_pause": 0})
    last = heartbeats(detector, "n2", 1000, every=2.0)
    last = heartbeats(detector, "n2", 100, every=0.2, start=last + 0.2)
    # Only the fast rhythm is remembered: a 2 s silence is now very suspicious.
    assert detector.state("n2", last + 2.0) == "down"


def test_phi_repeated_request_failures_mark_down_and_an_arrival_clears_them() -> None:
    detector = PhiAccrualDetector()
    last = heartbeats(detector, "n2", 50)
    detector.request_failed("n2", last + 0.1)
    detector.request_failed("n2", last + 0.2)
    assert detector.state("n2", last + 0.2) == "up"  # phi alone says nothing is wrong yet
    detector.request_failed("n2", last + 0.3)
    assert detector.state("n2", last + 0.3) == "down"
    detector.heard_from("n2", last + 0.4)
    assert detector.state("n2", last + 0.4) == "up"


def test_phi_request_failures_can_mark_a_never_heard_peer_down() -> None:
    detector = PhiAccrualDetector()
    for i in range(3):
        detector.request_failed("n3", float(i))
    assert detector.state("n3", 3.0) == "down"


def test_phi_forget_drops_the_history() -> None:
    detector = PhiAccrualDetector()
    last = heartbeats(detector, "n2", 50)
    assert detector.state("n2", last + 60.0) == "down"
    detector.forget("n2")
    assert detector.phi("n2", last + 60.0) == 0.0
    assert detector.state("n2", last + 60.0) == "up"
    assert "n2" not in detector._peers


def test_phi_is_finite_and_capped_for_absurd_silences() -> None:
    detector = PhiAccrualDetector()
    last = heartbeats(detector, "n2", 10)
    for silence in (10.0, 1e3, 1e150, 1e308, math.inf):
        phi = detector.phi("n2", last + silence)
        assert 0.0 <= phi <= PHI_CAP and not math.isnan(phi)
    assert detector.phi("n2", last + 1e300) == PHI_CAP


def test_phi_out_of_order_report_adds_no_negative_interval() -> None:
    detector = PhiAccrualDetector()
    detector.heard_from("n2", 10.0)
    detector.heard_from("n2", 9.0)
    assert list(detector._peers["n2"].intervals) == []
    detector.heard_from("n2", 10.5)
    assert list(detector._peers["n2"].intervals) == [0.5]


@given(
    intervals=st.lists(st.floats(min_value=0.0, max_value=30.0), max_size=40),
    silences=st.tuples(
        st.floats(min_value=-5.0, max_value=1e7), st.floats(min_value=-5.0, max_value=1e7)
    ),
    min_std_dev=st.floats(min_value=0.001, max_value=2.0),
    acceptable_pause=st.floats(min_value=0.0, max_value=2.0),
)
def test_phi_is_non_decreasing_in_now_for_a_fixed_history(
    intervals: list[float], silences: tuple[float, float], min_std_dev: float,
    acceptable_pause: float,
) -> None:
    detector = PhiAccrualDetector(min_std_dev=min_std_dev, acceptable_pause=acceptable_pause)
    now = 1000.0
    detector.heard_from("n2", now)
    for interval in intervals:
        now += interval
        detector.heard_from("n2", now)
    earlier, later = sorted(silences)
    phi_earlier, phi_later = detector.phi("n2", now + earlier), detector.phi("n2", now + later)
    assert 0.0 <= phi_earlier <= phi_later <= PHI_CAP


@given(st.floats(min_value=-50.0, max_value=1e6))
@example(25.0)
@example(24.9999999)
def test_normal_tail_phi_is_monotone_across_the_asymptotic_switch(x: float) -> None:
    # math.erfc underflows near x = 27, so the tail hands over to its asymptotic form at 25.
    below = normal_tail_phi(x * math.sqrt(2.0), 0.0, 1.0)
    above = normal_tail_phi((x + 1e-6) * math.sqrt(2.0), 0.0, 1.0)
    assert below <= above


def test_normal_tail_phi_has_no_jump_at_the_asymptotic_switch() -> None:
    just_below = normal_tail_phi((25.0 - 1e-9) * math.sqrt(2.0), 0.0, 1.0)
    just_above = normal_tail_phi((25.0 + 1e-9) * math.sqrt(2.0), 0.0, 1.0)
    assert just_above - just_below == pytest.approx(0.0, abs=1e-6)
