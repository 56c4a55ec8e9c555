"""Failure detectors offered as the ``dynamo`` plugin: ``timeout`` and ``phi-accrual``.

A failure detector is one node's local, private opinion of which peers are alive (the
Dynamo paper, section 4.8.3): nothing here is gossiped, and two nodes may disagree. The
runtime reports every message heard from a peer (:meth:`heard_from`) and every request to
it that failed (:meth:`request_failed`), and asks :meth:`state` while it walks a
preference list. Time always comes in as ``now`` (seconds, any monotonic origin), so the
detectors are pure bookkeeping and are tested by driving ``now`` by hand.

``timeout``
    The paper's detector: a peer that fails to answer is marked down locally, and any
    message from it brings it back. Cheap and obvious, but the only knob is a count.

``phi-accrual``
    Hayashibara et al.'s accrual detector: instead of a yes/no verdict it keeps the
    distribution of a peer's inter-arrival times and reports ``phi``, how surprising the
    current silence is (``phi = 1`` means a 10% chance the peer is merely slow, ``phi = 8``
    one in 10^8). It adapts to each peer's own rhythm and to network jitter. The
    ``acceptable_pause`` and ``min_std_dev`` refinements follow the Akka and Cassandra
    documentation, so a short GC pause or a perfectly regular sender is not a failure.

Both read the ``[failure_detector]`` config table. Keys belonging to another detector (and
``plugin`` itself) are ignored; a key a detector uses is validated, and a bad value raises
a :class:`ValueError` that names the key and the expected range.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dynamo_core.hookspecs import FailureDetectorFactory, hookimpl

#: The config table every option lives in, for error messages.
TABLE = "[failure_detector]"

#: phi never exceeds this: a silence far beyond anything seen is "certainly down", and a
#: finite cap keeps ``dynamo status`` printable and arithmetic on phi safe.
PHI_CAP = 1e6

#: Beyond this standardised distance (in units of std * sqrt(2)) ``math.erfc`` heads for
#: underflow (erfc(26.5) is about 1e-307), so the tail switches to its asymptotic form.
_ERFC_SWITCH = 25.0

_SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------- options


def _number(options: Mapping[str, Any], key: str, default: float) -> float:
    """The finite real option ``key``; bools are refused (``pause = true`` is a typo)."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{TABLE} {key} must be a finite number, got {value!r}")
    return float(value)


def _positive(options: Mapping[str, Any], key: str, default: float) -> float:
    """A number > 0: used for durations and thresholds where 0 would make no sense."""
    value = _number(options, key, default)
    if value <= 0:
        raise ValueError(f"{TABLE} {key} must be a number > 0, got {value!r}")
    return value


def _non_negative(options: Mapping[str, Any], key: str, default: float) -> float:
    """A number >= 0: used for allowances that may legitimately be switched off."""
    value = _number(options, key, default)
    if value < 0:
        raise ValueError(f"{TABLE} {key} must be a number >= 0, got {value!r}")
    return value


def _count(options: Mapping[str, Any], key: str, default: int) -> int:
    """An integer >= 1: counts of failures and window sizes."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{TABLE} {key} must be an integer >= 1, got {value!r}")
    return value


# --------------------------------------------------------------------------- timeout


@dataclass
class _TimeoutPeer:
    """What the timeout detector remembers of one peer."""

    last_heard: float | None = None
    failures: int = 0


class TimeoutDetector:
    """The paper's detector: consecutive request failures mark a peer down locally.

    * ``failures_to_down`` (default 2) consecutive :meth:`request_failed` make a peer
      ``down``; a single one makes it ``suspect``. Two, not one, because a lone timeout is
      as often a slow disk or a full queue as a dead node, and a down peer's keys go to
      fallback nodes (hinted handoff), which costs a hand-off later.
    * Any :meth:`heard_from` makes it ``up`` at once and clears the failure count: the
      peer evidently works.
    * A peer heard from at least once that has been silent for more than
      ``silence_timeout`` seconds (default 5.0) is ``suspect``, never ``down`` on silence
      alone: gossip is periodic, so a long silence is worth routing around but only a
      failed request is evidence of death.
    * A peer never heard of is ``up``: the coordinator tries it, as the paper's does, and
      learns from the outcome.
    """

    DEFAULT_FAILURES_TO_DOWN = 2
    DEFAULT_SILENCE_TIMEOUT = 5.0

    def __init__(
        self,
        failures_to_down: int = DEFAULT_FAILURES_TO_DOWN,
        silence_timeout: float = DEFAULT_SILENCE_TIMEOUT,
    ) -> None:
        self.failures_to_down = failures_to_down
        self.silence_timeout = silence_timeout
        self._peers: dict[str, _TimeoutPeer] = {}

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TimeoutDetector:
        """Build from the ``[failure_detector]`` table, validating the keys it uses."""
        return cls(
            failures_to_down=_count(options, "failures_to_down", cls.DEFAULT_FAILURES_TO_DOWN),
            silence_timeout=_positive(options, "silence_timeout", cls.DEFAULT_SILENCE_TIMEOUT),
        )

    def heard_from(self, peer: str, now: float) -> None:
        """A message arrived: the peer works, so forget its failures."""
        record = self._peers.setdefault(peer, _TimeoutPeer())
        # max(): reports may arrive slightly out of order; silence is measured from the latest.
        record.last_heard = now if record.last_heard is None else max(record.last_heard, now)
        record.failures = 0

    def request_failed(self, peer: str, now: float) -> None:
        """A request timed out or could not be sent: one more consecutive failure."""
        self._peers.setdefault(peer, _TimeoutPeer()).failures += 1

    def state(self, peer: str, now: float) -> str:
        """``down`` on enough failures, ``suspect`` on one or on long silence, else ``up``."""
        record = self._peers.get(peer)
        if record is None:
            return "up"
        if record.failures >= self.failures_to_down:
            return "down"
        if record.failures > 0 or self._silent(record, now):
            return "suspect"
        return "up"

    def forget(self, peer: str) -> None:
        """The peer left the cluster: drop its record."""
        self._peers.pop(peer, None)

    def _silent(self, record: _TimeoutPeer, now: float) -> bool:
        """True when a known peer has said nothing for longer than ``silence_timeout``."""
        return record.last_heard is not None and now - record.last_heard > self.silence_timeout


# --------------------------------------------------------------------------- phi accrual


def normal_tail_phi(elapsed: float, mean: float, std: float) -> float:
    """``-log10(P(X > elapsed))`` for ``X ~ Normal(mean, std)``, finite and in ``[0, PHI_CAP]``.

    The upper tail is ``erfc(x) / 2`` with ``x = (elapsed - mean) / (std * sqrt(2))``.
    ``math.erfc`` is exact where it matters and never overflows, but it underflows to 0
    near ``x = 27``; there we switch to the leading term of the asymptotic expansion,
    ``-log10(erfc(x)) ~ x^2 / ln 10 + log10(x * sqrt(pi))``, shifted so the two pieces
    meet at the switch point. Both pieces increase with ``x``, so phi stays monotone in
    ``elapsed`` (a silence can only get more suspicious as it lasts) and never takes a
    log of 0.
    """
    x = (elapsed - mean) / (std * _SQRT2)
    if x <= _ERFC_SWITCH:
        phi = -math.log10(0.5 * math.erfc(x))
    else:
        phi = _PHI_AT_SWITCH + _asymptotic_log10_tail(x) - _asymptotic_log10_tail(_ERFC_SWITCH)
    return min(max(phi, 0.0), PHI_CAP)


def _asymptotic_log10_tail(x: float) -> float:
    """Leading term of ``-log10(erfc(x))`` for large ``x``; may be ``inf``, never raises."""
    return x * x / math.log(10) + math.log10(x * math.sqrt(math.pi))


_PHI_AT_SWITCH = -math.log10(0.5 * math.erfc(_ERFC_SWITCH))


@dataclass
class _Arrivals:
    """One peer's heartbeat history: a bounded window of intervals and its cached moments.

    Mean and standard deviation are recomputed on each arrival (O(window)) rather than on
    each :meth:`PhiAccrualDetector.state` call, which the preference-list walk makes far
    more often than peers send messages.
    """

    window: int
    last_arrival: float | None = None
    intervals: deque[float] = field(init=False)
    mean: float = 0.0
    std: float = 0.0
    failures: int = 0

    def __post_init__(self) -> None:
        self.intervals = deque(maxlen=self.window)

    def record(self, now: float) -> None:
        """Add the interval since the previous arrival (if any) and refresh the moments."""
        if self.last_arrival is not None:
            # An out-of-order report (now earlier than the last arrival) adds no interval:
            # a negative interval is meaningless, and zero would only shrink the mean.
            if now < self.last_arrival:
                return
            self.intervals.append(now - self.last_arrival)
            self._refresh()
        self.last_arrival = now

    def _refresh(self) -> None:
        """Population mean and standard deviation of the window."""
        count = len(self.intervals)
        self.mean = math.fsum(self.intervals) / count
        variance = math.fsum((i - self.mean) ** 2 for i in self.intervals) / count
        self.std = math.sqrt(variance)


class PhiAccrualDetector:
    """Hayashibara et al.'s phi-accrual detector, with the Akka/Cassandra refinements.

    For each peer a window of the last ``window`` inter-arrival times (default 100) is kept.
    ``phi(now) = -log10(P(interval > now - last_arrival))`` under a normal distribution
    whose mean is the window's mean plus ``acceptable_pause`` (default 0.5 s, so a short
    GC or scheduling pause is not a failure) and whose standard deviation is at least
    ``min_std_dev`` (default 0.1 s, so a perfectly regular sender does not become "down"
    a millisecond after its usual beat).

    ``phi >= threshold`` (default 8.0) is ``down``; ``phi >= threshold / 2`` is
    ``suspect``, an early warning the coordinator can use to prefer other replicas.
    With heartbeats every 0.5 s that is suspect after about 1.4 s of silence and down
    after about 1.6 s.

    Until a peer has sent two messages there is no interval to learn from; a guess of
    ``first_interval`` (default 1.0 s) with a deliberately wide standard deviation of a
    quarter of the guess stands in, so a peer heard from once and then silent still goes
    suspect and down eventually (about 2.9 s with the defaults).

    ``request_failed`` is mostly redundant here, and that is deliberate: a peer that
    accepts connections but never answers still sends nothing, so its phi rises on its
    own. But ``failures_to_down`` (default 3) consecutive failed requests with no message
    in between make it ``down`` straight away: the failure count only speeds up the
    obvious case (a refused connection, a crashed process) instead of waiting for the
    silence to become statistically convincing, and it is the only evidence there is
    about a peer never heard from at all. Any arrival clears the count.
    """

    DEFAULT_THRESHOLD = 8.0
    DEFAULT_WINDOW = 100
    DEFAULT_MIN_STD_DEV = 0.1
    DEFAULT_ACCEPTABLE_PAUSE = 0.5
    DEFAULT_FIRST_INTERVAL = 1.0
    DEFAULT_FAILURES_TO_DOWN = 3

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        window: int = DEFAULT_WINDOW,
        min_std_dev: float = DEFAULT_MIN_STD_DEV,
        acceptable_pause: float = DEFAULT_ACCEPTABLE_PAUSE,
        first_interval: float = DEFAULT_FIRST_INTERVAL,
        failures_to_down: int = DEFAULT_FAILURES_TO_DOWN,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.min_std_dev = min_std_dev
        self.acceptable_pause = acceptable_pause
        self.first_interval = first_interval
        self.failures_to_down = failures_to_down
        self._peers: dict[str, _Arrivals] = {}

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PhiAccrualDetector:
        """Build from the ``[failure_detector]`` table, validating the keys it uses."""
        return cls(
            threshold=_positive(options, "threshold", cls.DEFAULT_THRESHOLD),
            window=_count(options, "window", cls.DEFAULT_WINDOW),
            min_std_dev=_positive(options, "min_std_dev", cls.DEFAULT_MIN_STD_DEV),
            acceptable_pause=_non_negative(
                options, "acceptable_pause", cls.DEFAULT_ACCEPTABLE_PAUSE
            ),
            first_interval=_positive(options, "first_interval", cls.DEFAULT_FIRST_INTERVAL),
            failures_to_down=_count(options, "failures_to_down", cls.DEFAULT_FAILURES_TO_DOWN),
        )

    def heard_from(self, peer: str, now: float) -> None:
        """An arrival: one more interval for the peer's window, and its failures are cleared."""
        record = self._peers.get(peer)
        if record is None:
            record = self._peers[peer] = _Arrivals(self.window)
        record.record(now)
        record.failures = 0

    def request_failed(self, peer: str, now: float) -> None:
        """One more consecutive failed request (see the class docstring for why it counts)."""
        record = self._peers.get(peer)
        if record is None:
            record = self._peers[peer] = _Arrivals(self.window)
        record.failures += 1

    def phi(self, peer: str, now: float) -> float:
        """How suspicious the peer's current silence is; 0.0 for a peer never heard from."""
        record = self._peers.get(peer)
        if record is None or record.last_arrival is None:
            return 0.0
        mean, std = self._distribution(record)
        elapsed = max(0.0, now - record.last_arrival)
        return normal_tail_phi(elapsed, mean + self.acceptable_pause, std)

    def state(self, peer: str, now: float) -> str:
        """``down`` at ``phi >= threshold`` or enough failures, ``suspect`` at half, else ``up``."""
        record = self._peers.get(peer)
        if record is not None and record.failures >= self.failures_to_down:
            return "down"
        phi = self.phi(peer, now)
        if phi >= self.threshold:
            return "down"
        if phi >= self.threshold / 2:
            return "suspect"
        return "up"

    def forget(self, peer: str) -> None:
        """The peer left the cluster: drop its history."""
        self._peers.pop(peer, None)

    def _distribution(self, record: _Arrivals) -> tuple[float, float]:
        """Mean and (floored) std of the peer's intervals, or the first-interval guess."""
        if not record.intervals:
            return self.first_interval, max(self.first_interval / 4, self.min_std_dev)
        return record.mean, max(record.std, self.min_std_dev)


# --------------------------------------------------------------------------- registration


@hookimpl
def dynamo_failure_detectors() -> Mapping[str, FailureDetectorFactory]:
    """Both detectors, by the name ``[failure_detector] plugin`` selects."""
    return {"timeout": TimeoutDetector.from_options, "phi-accrual": PhiAccrualDetector.from_options}

