"""How a client retries a request a node refused as :class:`~dynamo_core.errors.Busy`.

A refused request was not carried out (puts included), so it is safe to send again; the
question is when. Sent again at once, every refused client comes back together and the
node stays overloaded. :class:`Backoff` waits a random time between 0 and a ceiling that
doubles with each refusal, up to ``cap``: exponential backoff with *full jitter*, which
spreads the retries of many clients evenly and gives the node the most room (Brooker,
"Exponential Backoff And Jitter", AWS Architecture Blog, 2015). The random numbers come
from ``rng``, so a seeded one makes the waits repeatable.

All attempts share the client's ``timeout``: a retry that could not end before it is not
waited for, and the last refusal is raised instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the ``n``-th wait (from 0) is uniform in
    ``[0, min(cap, base * 2**n)]`` seconds."""

    base: float = 0.005
    cap: float = 0.5
    rng: Random = field(default_factory=Random)

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base {self.base} and "
                             f"cap {self.cap}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` + 1."""
        return self.rng.uniform(0.0, min(self.cap, self.base * 2.0 ** min(attempt, 64)))


class Retries:
    """One request's attempts: all must be over by ``deadline`` (monotonic seconds)."""

    def __init__(self, policy: Backoff | None, deadline: float) -> None:
        self.policy = policy
        self.deadline = deadline
        self.count = 0

    def wait(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up: no retries, or
        no time left for the wait and an attempt after it."""
        if self.policy is None:
            return None
        delay = self.policy.delay(self.count)
        if now + delay >= self.deadline:
            return None
        self.count += 1
        return delay
