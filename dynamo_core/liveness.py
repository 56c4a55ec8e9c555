"""A node's local view of its peers' health, around a pluggable failure detector.

The detector (a plugin) turns arrivals and failed requests into ``up``/``suspect``/``down``.
This module adds what every detector needs around it: when each peer's state last changed
(``dynamo status`` shows "down since ..."), and which peers to ping now. A peer not heard
from for a heartbeat interval gets a ping: that is its heartbeat when idle, and the periodic
probe that tells a node marked down that it is back (the paper's "periodically retries").

Pure logic: time comes in as ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .api import FailureDetector


class Liveness:
    def __init__(self, me: str, detector: FailureDetector, heartbeat_interval: float,
                 on_change: Callable[[str, str, str], None] | None = None) -> None:
        self.me = me
        #: told (peer, state before, state now) when a peer's state changes: a node logs it
        self.on_change = on_change
        self.detector = detector
        self.heartbeat_interval = heartbeat_interval
        self._last_heard: dict[str, float] = {}
        self._last_pinged: dict[str, float] = {}
        self._last_reported: dict[str, float] = {}
        #: peer -> (state, since)
        self._states: dict[str, tuple[str, float]] = {}

    def heard_from(self, peer: str, now: float) -> None:
        """Record an arrival; the detector sees at most one per half heartbeat interval.

        Under load a peer is heard from every few milliseconds; fed all of that, an
        accrual detector would learn that a normal heartbeat gap is an outage.
        """
        if peer == self.me:
            return
        last = self._last_heard.get(peer)
        self._last_heard[peer] = now
        if last is None or now - self._last_reported.get(peer, 0.0) >= self.heartbeat_interval / 2:
            self._last_reported[peer] = now
            self.detector.heard_from(peer, now)

    def request_failed(self, peer: str, now: float) -> None:
        if peer != self.me:
            self.detector.request_failed(peer, now)

    def state(self, peer: str, now: float) -> str:
        """The detector's current opinion (this node itself is always up).

        Every reading records a change of state, so "since" never lags the state shown.
        """
        if peer == self.me:
            return "up"
        state = self.detector.state(peer, now)
        previous = self._states.get(peer)
        if previous is None or previous[0] != state:
            self._states[peer] = (state, now)
            if previous is not None and self.on_change is not None:
                self.on_change(peer, previous[0], state)
        return state

    def is_down(self, peer: str, now: float) -> bool:
        return self.state(peer, now) == "down"

    def refresh(self, peers: Iterable[str], now: float) -> list[str]:
        """Record state changes since the last call; returns the peers to ping now."""
        to_ping = []
        for peer in peers:
            if peer == self.me:
                continue
            heard = self._last_heard.get(peer, 0.0)
            pinged = self._last_pinged.get(peer, 0.0)
            if pinged > heard and now - pinged >= self.heartbeat_interval:
                # The last ping went unanswered: to a timeout detector, a failed request.
                self.detector.request_failed(peer, now)
            self.state(peer, now)
            if now - max(heard, pinged) >= self.heartbeat_interval:
                self._last_pinged[peer] = now
                to_ping.append(peer)
        return to_ping

    def since(self, peer: str) -> float | None:
        """When ``peer`` entered its current state, as far as this node has watched."""
        entry = self._states.get(peer)
        return entry[1] if entry else None

    def last_heard(self, peer: str) -> float | None:
        return self._last_heard.get(peer)

    def forget(self, peer: str) -> None:
        for table in (self._last_heard, self._last_pinged, self._last_reported, self._states):
            table.pop(peer, None)
        self.detector.forget(peer)
