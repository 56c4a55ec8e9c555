"""Overload made explicit and cheap: what a node refuses at once, before it decodes a body.

A node past its capacity must not queue work it cannot do in time: every queued request
waits behind the others, so the latency of *all* of them grows until clients time out and
send again (a slow death). Instead it refuses some requests at once with
:class:`~dynamo_core.errors.Busy` (an ``Overloaded``; retryable: nothing was done) and keeps
serving the ones it accepts at their usual latency. Three checks decide, in this order, for
a client's ``get``, ``put`` or ``delete`` only:

1. **A standing queue** (:class:`StandingQueue`), detected the CoDel way (Nichols and
   Jacobson, "Controlling Queue Delay", 2012). ZeroMQ hides how many messages wait in the
   node's listening socket, but the transport sees when it finds that queue empty. A queue
   that empties now and then is doing its job (it absorbs bursts); one that has not been
   empty for ``[overload] queue_interval`` (100 ms) is a standing queue: arrivals outpace
   the node. Every request waiting in it arrived after the queue was last seen empty, so
   the time since then bounds the wait of the oldest one. The node refuses until it sees
   the queue empty again, which comes quickly because a refusal costs a fraction of a
   served request (the envelope's head is read, not its body); and for a while after
   (``ALERT_INTERVALS`` intervals), as CoDel re-enters its dropping state at once when it
   left it recently, a queue that stays non-empty for ``queue_target`` (20 ms) is enough
   to refuse again. So under sustained overload the requests accepted waited at most
   about the target, whatever the load offered; while a queue that stays non-empty only
   because the node is busy at its peak (a closed loop of clients, a process that was
   not scheduled for a moment) seldom lasts the longer interval, and refuses nothing.
   Only the principals filling the queue are refused (:class:`TrafficShares`: those that
   sent at least half a fair share of the last second's requests, junk included): a
   client with a request now and then is served through any flood, so a flood cannot
   make the node turn its light clients away.
2. **Requests in flight**: at most ``[overload] max_in_flight`` client requests
   coordinated at once (the coordinator's table, bounded at ``[limits]
   max_pending_requests`` for everything, keeps headroom for puts forwarded by peers).
   This is what holds when peers are slow rather than this node: operations pile up
   waiting for replicas while the socket's queue stays empty.
3. **Per-client admission** (:class:`ClientBuckets`): with ``[admission] client_rate`` set,
   each principal (the connection's identity, or the client's CURVE key when security is
   on) has a token bucket of that rate and ``client_burst``, so one noisy client is
   refused while the others are served. The table is bounded (``max_clients``, least
   recently seen forgotten first: a forgotten client's bucket would be full again anyway
   once it has been idle for ``burst / rate`` seconds). Off by default.

Requests from peers (their envelope names the sender) are never refused here: they serve
requests already accepted elsewhere, and refusing them would waste that work. Operator
requests (``status``, ``ping``, ``ring``...) are not refused either: they are cheap, and
``status`` is how an operator sees the overload. The refusals are counted (``overload`` in
``dynamo status``), with the principals refused most (:class:`TopCounts`, bounded), and
logged when shedding starts and then at most every ``LOG_SECONDS``.

Every bound of a node, for reference: the listening socket's and each peer socket's
queues (ZeroMQ high-water marks, 10,000 messages each way), messages handled per turn
(256), open coordinated requests (``max_pending_requests``) and client ones
(``max_in_flight``), background tasks (``[background]``: rate, burst, concurrency), hints
(``[handoff] max_hints``, ``max_bytes``, ``max_age``), siblings and clock entries per key,
message size, extension handlers running at once (64), the decoded-record cache (64 MiB),
the per-client table and the refused-principals summary here.

Nothing here reads a clock: ``now`` comes in, as everywhere in the protocol logic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .admission import TOKEN_SLACK
from .errors import Busy

#: The client requests that may be refused: the data path.
DATA_OPS = frozenset({"get", "put", "delete"})
#: After refusing for a standing queue, for this many intervals a queue non-empty for the
#: (shorter) target is enough to refuse again (CoDel's quick re-entry).
ALERT_INTERVALS = 10
#: Seconds between two log lines about refusals while they go on.
LOG_SECONDS = 10.0
#: Requests are counted per principal over windows of this many queue intervals...
SHARE_WINDOWS = 10
#: ...for at most this many principals a window (past it, new ones count as one).
TRAFFIC_TRACKED = 1024
#: Principals the refusal summary tracks, and how many of them status shows.
TOP_TRACKED = 32
TOP_SHOWN = 5


@dataclass(frozen=True)
class OverloadConfig:
    """The settings of ``[overload]`` and ``[admission]`` (see :mod:`dynamo_core.config`)."""

    queue_target: float = 0.02
    queue_interval: float = 0.1
    max_in_flight: int = 1000
    #: requests per second per principal; 0: no per-client limit
    client_rate: float = 0.0
    client_burst: int = 100
    max_clients: int = 10_000


class StandingQueue:
    """Whether a queue the driver watches has stayed non-empty too long: ``interval``
    seconds, or only ``target`` when it was behind less than ``ALERT_INTERVALS`` intervals
    before this stretch began.

    The driver reports what it sees with :meth:`observe` (something waiting when it starts
    reading, nothing when it finds the queue empty); a driver that reports nothing (the
    simulator) never has a standing queue.
    """

    def __init__(self, target: float, interval: float) -> None:
        if not 0 < target <= interval:
            raise ValueError(f"a standing queue needs 0 < target <= interval, got target "
                             f"{target} and interval {interval}")
        self.target = target
        self.interval = interval
        #: when the queue was first seen non-empty since it was last seen empty
        self._since: float | None = None
        #: a stretch beginning before this follows one that was behind: the target holds
        self._alert_until = float("-inf")

    def observe(self, waiting: bool, now: float) -> None:
        if waiting:
            if self._since is None:
                self._since = now
            return
        if self.behind(now):
            self._alert_until = now + ALERT_INTERVALS * self.interval
        self._since = None

    def behind(self, now: float) -> bool:
        """The queue has not been seen empty for longer than it may stay non-empty."""
        if self._since is None:
            return False
        limit = self.target if self._since <= self._alert_until else self.interval
        return now - self._since > limit


class TrafficShares:
    """Who sent what share of the requests a node read lately: counts per principal over
    the current window and the one before it, in bounded memory.

    When the queue stands, a node refuses only the principals sending at least half a fair
    share (see :meth:`heavy`): those who fill the queue. A client sending a request now and
    then is served whatever floods the node, so a flood (of junk, or of anything) cannot
    make the node shed its light clients. Past ``capacity`` principals in a window, new
    ones are counted together as one, which is then as heavy as they are together.
    """

    OTHERS = b"\x00others"

    def __init__(self, window: float, capacity: int) -> None:
        if not window > 0 or capacity < 1:
            raise ValueError("window and capacity must be positive")
        self.window = window
        self.capacity = capacity
        self._start = float("-inf")
        self._current: dict[bytes, int] = {}
        self._previous: dict[bytes, int] = {}
        self._current_total = 0
        self._previous_total = 0

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window:
            recent = now - self._start < 2 * self.window
            self._previous = self._current if recent else {}
            self._previous_total = self._current_total if recent else 0
            self._current, self._current_total, self._start = {}, 0, now

    def count(self, principal: bytes, now: float) -> None:
        self._roll(now)
        counts = self._current
        if principal not in counts and len(counts) >= self.capacity:
            principal = self.OTHERS
        counts[principal] = counts.get(principal, 0) + 1
        self._current_total += 1

    def heavy(self, principal: bytes, now: float) -> bool:
        """Whether ``principal`` sent at least half its fair share of the requests of the
        last two windows (a fair share: the total over the principals seen)."""
        self._roll(now)
        counts, previous = self._current, self._previous
        if principal not in counts and len(counts) >= self.capacity:
            principal = self.OTHERS
        mine = counts.get(principal, 0) + previous.get(principal, 0)
        active = max(len(counts), len(previous), 1)
        return 2 * active * mine >= self._current_total + self._previous_total


class ClientBuckets:
    """A token bucket per principal: ``rate`` per second, up to ``burst`` saved; at most
    ``capacity`` principals remembered, the least recently seen forgotten first."""

    def __init__(self, rate: float, burst: int, capacity: int) -> None:
        if not rate > 0 or burst < 1 or capacity < 1:
            raise ValueError("rate, burst and capacity must be positive")
        self.rate = rate
        self.burst = float(burst)
        self.capacity = capacity
        #: principal -> [tokens, when they were counted]
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, principal: bytes, now: float) -> bool:
        """Spend one of ``principal``'s tokens if it has one."""
        bucket = self._buckets.pop(principal, None)
        if bucket is None:
            bucket = [self.burst, now]
            if len(self._buckets) >= self.capacity:
                self._buckets.popitem(last=False)
        self._buckets[principal] = bucket  # now the most recently seen
        tokens, then = bucket
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        allowed = tokens >= 1.0 - TOKEN_SLACK
        bucket[0], bucket[1] = tokens - 1.0 if allowed else tokens, max(then, now)
        return allowed


class TopCounts:
    """The keys counted most, in bounded memory: the Space-Saving summary (Metwally,
    Agrawal and El Abbadi, 2005). Any key counted more than ``total / capacity`` times is
    held; a key that replaced another inherits its count, so counts are upper bounds."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._counts: dict[bytes, int] = {}

    def add(self, key: bytes) -> None:
        counts = self._counts
        if key in counts or len(counts) < self.capacity:
            counts[key] = counts.get(key, 0) + 1
            return
        least = min(counts, key=counts.__getitem__)
        counts[key] = counts.pop(least) + 1

    def top(self, n: int) -> list[tuple[bytes, int]]:
        return sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))[:n]


class OverloadGuard:
    """Decides which client requests a node refuses at once, and counts them."""

    def __init__(self, config: OverloadConfig, in_flight: Callable[[], int],
                 log: Callable[[str], None]) -> None:
        self.config = config
        self.queue = StandingQueue(config.queue_target, config.queue_interval)
        self.traffic = TrafficShares(SHARE_WINDOWS * config.queue_interval, TRAFFIC_TRACKED)
        self.buckets = (ClientBuckets(config.client_rate, config.client_burst,
                                      config.max_clients) if config.client_rate else None)
        self._in_flight = in_flight
        self._log = log
        self.overloaded_refusals = 0
        self.in_flight_refusals = 0
        self.rate_limited = 0
        self._top = TopCounts(TOP_TRACKED)
        self._logged_at: float | None = None
        self._unlogged = 0

    def may_refuse(self, now: float) -> bool:
        """Whether any request could be refused now: if not, a node need not even read
        a request's head (the usual case costs one call)."""
        return self.buckets is not None or self.queue.behind(now) or \
            self._in_flight() >= self.config.max_in_flight

    def screen(self, principal: bytes, msg_type: str | None, sender: str | None,
               now: float) -> Busy | None:
        """The refusal of a request, from its envelope's head; None to serve it."""
        if sender is not None or msg_type not in DATA_OPS:
            return None
        refusal = self._refusal(principal, now)
        if refusal is not None:
            self._top.add(principal)
            self._note(refusal, now)
        return refusal

    def arrived(self, principal: bytes, now: float) -> None:
        """A request arrived from ``principal`` (any request: junk fills a queue too)."""
        self.traffic.count(principal, now)

    def _refusal(self, principal: bytes, now: float) -> Busy | None:
        if self.queue.behind(now) and self.traffic.heavy(principal, now):
            self.overloaded_refusals += 1
            return Busy("node overloaded: its queue of requests stands (it has not emptied "
                        "for too long); retry later")
        if self._in_flight() >= self.config.max_in_flight:
            self.in_flight_refusals += 1
            return Busy(f"node overloaded: it coordinates {self.config.max_in_flight} "
                        f"client requests already; retry later")
        if self.buckets is not None and not self.buckets.take(principal, now):
            self.rate_limited += 1
            return Busy(f"this client sent more than {self.config.client_rate:g} requests "
                        f"a second (burst {self.config.client_burst}); retry later")
        return None

    def _note(self, refusal: Busy, now: float) -> None:
        """Log the first refusal, then at most one line every LOG_SECONDS while they go on."""
        self._unlogged += 1
        if self._logged_at is not None and now - self._logged_at < LOG_SECONDS:
            return
        self._log(f"refusing client requests: {self._unlogged} since the last report "
                  f"({self.totals()}); latest: {refusal}")
        self._logged_at, self._unlogged = now, 0

    def totals(self) -> str:
        return (f"{self.overloaded_refusals} for a standing queue, {self.in_flight_refusals} "
                f"for requests in flight, {self.rate_limited} over a client's rate in all")

    def stats(self, now: float) -> dict[str, Any]:
        """What ``dynamo status`` shows under ``overload``."""
        return {
            "behind": self.queue.behind(now),
            "queue_target": self.config.queue_target,
            "queue_interval": self.config.queue_interval,
            "max_in_flight": self.config.max_in_flight,
            "overloaded_refusals": self.overloaded_refusals,
            "in_flight_refusals": self.in_flight_refusals,
            "rate_limited": self.rate_limited,
            "client_rate": self.config.client_rate or None,
            "clients_tracked": len(self.buckets) if self.buckets is not None else 0,
            "top_refused": [{"principal": p.hex(), "refused": n}
                            for p, n in self._top.top(TOP_SHOWN)],
        }
