"""The simulator's virtual time: one event heap, one clock that jumps from event to event.

Nothing in a simulation waits for real time. Every delivery, timer and client action is an
event at a virtual time; :meth:`World.run_until` pops them in order (ties in the order they
were scheduled) and moves the clock to each. A run is therefore a pure function of its seed:
the same events in the same order, however fast or loaded the machine running it.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable
from random import Random


class World:
    """The event heap, the virtual clock, the seeded randomness and the trace of a run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = Random(seed)
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._trace = hashlib.sha256()
        self.events = 0
        #: lines describing what happened, for a report (bounded; see note())
        self.log: list[str] = []
        self.max_log = 200_000

    # ------------------------------------------------------------------ scheduling

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at virtual time ``when`` (at once if that has passed)."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + max(0.0, delay), action)

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run events up to virtual time ``end``; False if ``stop()`` became true first.

        The clock is left at ``end`` when the heap runs dry or passes it.
        """
        while self._heap and self._heap[0][0] <= end:
            when, _, action = heapq.heappop(self._heap)
            self.now = when
            self.events += 1
            action()
            if stop is not None and stop():
                return False
        self.now = max(self.now, end)
        return True

    # ------------------------------------------------------------------ the trace

    def record(self, *parts: object) -> None:
        """Fold an event into the trace hash: equal seeds must give equal hashes."""
        self._trace.update(repr((round(self.now, 9), *parts)).encode())

    def record_bytes(self, data: bytes) -> None:
        self._trace.update(data)

    def note(self, text: str) -> None:
        """A line of the human-readable history (also folded into the trace)."""
        line = f"{self.now:10.4f}  {text}"
        self.record(text)
        if len(self.log) < self.max_log:
            self.log.append(line)

    def trace_sha256(self) -> str:
        return self._trace.hexdigest()
