"""Admission control for background work (paper section 6.5).

Dynamo runs hint delivery, anti-entropy and repair in the background, but lets them take
slices of time only while foreground requests are fast: a controller watches foreground
latencies and hands out fewer slices when they degrade, more when they are healthy.

:class:`BackgroundBudget` is that controller, with no clock of its own (``now`` comes in):

* a **token bucket** paces background task starts at ``effective_rate`` per second with a
  burst allowance, and a **concurrency cap** bounds how many run at once;
* an **AIMD** loop sets ``effective_rate``: every ``interval`` seconds it looks at the
  foreground latency percentile of that interval; above ``latency_target`` it halves the rate
  (down to ``rate / floor_divisor``), otherwise it adds ``rate / recover_steps`` back (up to
  ``rate``). Halving reacts fast to trouble; additive recovery avoids oscillating back into it.

Every structure is bounded (the latency window is a fixed-size ring) and the result is a
deterministic function of the calls made.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

#: A token short of one by less than this counts as one: float sums of earned fractions
#: (0.1 + 0.2 ...) must not leave a caller waiting for a billionth of a token.
TOKEN_SLACK = 1e-9


class BackgroundBudget:
    """Decides whether a background task may start now."""

    def __init__(self, rate: float, burst: int, max_concurrent: int, latency_target: float,
                 *, interval: float = 1.0, percentile: float = 0.99, window: int = 1024,
                 floor_divisor: float = 32.0, recover_steps: int = 8) -> None:
        if rate <= 0 or burst < 1 or max_concurrent < 1 or latency_target <= 0:
            raise ValueError("rate, burst, max_concurrent and latency_target must be positive")
        if interval <= 0 or not 0 < percentile <= 1 or window < 1:
            raise ValueError("interval and window must be positive, percentile in (0, 1]")
        if floor_divisor < 1 or recover_steps < 1:
            raise ValueError("floor_divisor and recover_steps must be at least 1")
        self.rate = float(rate)
        self.burst = burst
        self.max_concurrent = max_concurrent
        self.latency_target = latency_target
        self.interval = interval
        self.percentile = percentile
        self.floor = self.rate / floor_divisor
        self.step = self.rate / recover_steps
        self._effective = self.rate
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self._interval_start: float | None = None
        #: Foreground latencies of the current interval (the most recent ``window`` of them).
        self._samples: deque[float] = deque(maxlen=window)
        self._last_percentile: float | None = None
        self._active = 0
        self._started = 0
        self._refused = 0

    # ----------------------------------------------------------------- the bucket

    @property
    def effective_rate(self) -> float:
        """Background starts per second allowed right now."""
        return self._effective

    def _capacity(self) -> float:
        """The burst shrinks with the rate, so a throttled budget cannot save up a full burst."""
        return max(1.0, self.burst * self._effective / self.rate)

    def _refill(self, now: float) -> None:
        """Add tokens for the time since the last refill; time running backwards adds none."""
        if self._refilled_at is None:
            self._refilled_at = now
            return
        if now <= self._refilled_at:
            return
        elapsed = now - self._refilled_at
        self._tokens = min(self._capacity(), self._tokens + elapsed * self._effective)
        self._refilled_at = now

    def try_start(self, now: float) -> bool:
        """Take a token and a concurrency slot if both are free; the caller then runs a task."""
        self._tick(now)
        self._refill(now)
        if self._active >= self.max_concurrent or self._tokens < 1.0 - TOKEN_SLACK:
            self._refused += 1
            return False
        self._tokens -= 1.0
        self._active += 1
        self._started += 1
        return True

    def ready_at(self, now: float) -> float | None:
        """When :meth:`try_start` could next succeed: ``now`` or the time the next token is
        earned; None while every slot is taken (a :meth:`done` frees one).

        It lets a caller that was refused wait for exactly that moment instead of polling.
        """
        if self._active >= self.max_concurrent:
            return None
        self._refill(now)
        if self._tokens >= 1.0 - TOKEN_SLACK:
            return now
        # Never "now" for a token not yet earned, however tiny the wait: a caller would
        # be woken again and again at one instant.
        return max(now + (1.0 - self._tokens) / self._effective, math.nextafter(now, math.inf))

    def done(self) -> None:
        """A task that :meth:`try_start` admitted has ended: free its slot."""
        if self._active == 0:
            raise RuntimeError("done() without a matching successful try_start()")
        self._active -= 1

    # ----------------------------------------------------------------- the AIMD loop

    def observe(self, latency: float, now: float) -> None:
        """Record one foreground request's latency (seconds)."""
        self._tick(now)
        if math.isfinite(latency) and latency >= 0:
            self._samples.append(latency)

    def _tick(self, now: float) -> None:
        """Close every interval that has ended by ``now`` and adjust the rate for each."""
        if self._interval_start is None:
            self._interval_start = now
            return
        if now < self._interval_start:
            return
        elapsed = int((now - self._interval_start) // self.interval)
        if elapsed == 0:
            return
        self._refill(now)  # tokens earned so far are earned at the old rate
        self._close_interval()
        # Intervals with no foreground traffic at all are healthy: each recovers one step.
        # Past the number of steps to full rate, more iterations change nothing.
        quiet = min(elapsed - 1, math.ceil(self.rate / self.step))
        for _ in range(quiet):
            self._increase()
        self._interval_start += elapsed * self.interval

    def _close_interval(self) -> None:
        """Judge the interval just ended by its latency percentile, then start a fresh one."""
        p = self._percentile()
        self._last_percentile = p
        self._samples.clear()
        if p is not None and p > self.latency_target:
            self._effective = max(self.floor, self._effective / 2.0)
            self._tokens = min(self._tokens, self._capacity())
        else:
            self._increase()

    def _increase(self) -> None:
        self._effective = min(self.rate, self._effective + self.step)

    def _percentile(self) -> float | None:
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        rank = max(0, math.ceil(self.percentile * len(ordered)) - 1)
        return ordered[rank]

    # ----------------------------------------------------------------- status

    def stats(self) -> dict[str, Any]:
        """What ``dynamo status`` shows about background throttling."""
        return {
            "rate": self.rate,
            "effective_rate": self._effective,
            "throttled": self._effective < self.rate,
            "tokens": round(self._tokens, 3),
            "active": self._active,
            "max_concurrent": self.max_concurrent,
            "latency_target": self.latency_target,
            "last_interval_percentile": self._last_percentile,
            "started": self._started,
            "refused": self._refused,
        }
