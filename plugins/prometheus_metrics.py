"""What the ``prometheus`` plugin measures, and how one node's figures become metric families.

No I/O and no threads here (the endpoint and its threading are in :mod:`.prometheus`):

* :class:`RequestStats` counts the client requests a node answered, from the observation
  hook, in O(1) per request and bounded memory: fixed histogram buckets, and label values
  capped, because bucket names are the users' choice (the first :data:`MAX_BUCKETS` names
  are kept, later ones counted under :data:`OTHER`);
* :func:`families` turns one snapshot, the node's status document and a copy of those
  counts, into Prometheus metric families. Most figures are the status document's: the one
  ``dynamo status`` shows, so the endpoint and the command line never disagree.

The metric names are listed, with what each means, in ``docs/metrics.md``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from dynamo_core.hookspecs import PEER_STATES, RequestEvent

#: The label value standing for every bucket (or outcome) past the cap. Parentheses are
#: not allowed in a bucket name, so it never stands for a real one.
OTHER = "(other)"
#: Distinct bucket names a node labels its request metrics with; later ones are OTHER.
MAX_BUCKETS = 100
#: Distinct outcomes likewise (the error codes are a short fixed list; this only bounds a
#: peer relaying codes of its own).
MAX_OUTCOMES = 32
K = TypeVar("K")

#: Upper bounds of the latency buckets, in seconds (the request timeout is 2 s by default).
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0, 10.0)
#: Siblings a get returned: the paper's figure is how often it is more than one.
SIBLING_BOUNDS = (0, 1, 2, 3, 5, 10, 20, 50, 100)
#: Entries of the context a get returned (``[limits] max_clock_entries`` is 10 by default).
CLOCK_BOUNDS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50, 100)


# ====================================================================== counting requests


class Histogram:
    """Counts per fixed bucket and their sum: what a Prometheus histogram exposes."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        #: per bucket, not cumulative; the last one is past the highest bound (+Inf)
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.total += value

    def copy(self) -> Histogram:
        twin = Histogram(self.bounds)
        twin.counts = list(self.counts)
        twin.total = self.total
        return twin

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, observations <= le)`` per bound, ending with ``+Inf``."""
        running, out = 0, []
        for bound, count in zip([*map(str, map(float, self.bounds)), "+Inf"], self.counts,
                                strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class CappedLabel:
    """Label values as they come, the first ``limit`` distinct ones kept, any later one
    :data:`OTHER`: user-chosen names must not grow a node's series without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self.limit:
            self._kept.add(value)
            return value
        return OTHER


@dataclass(frozen=True)
class RequestCounts:
    """A copy of :class:`RequestStats`' figures, safe to read on another thread."""

    #: (op, bucket, outcome) -> latencies in seconds
    latency: Mapping[tuple[str, str, str], Histogram]
    #: bucket -> siblings per successful get
    siblings: Mapping[str, Histogram]
    #: bucket -> context entries per successful get
    clock_entries: Mapping[str, Histogram]


class RequestStats:
    """The client requests one node answered, counted as they complete.

    A request forwarded here by another node is not counted: the forwarding node counts it,
    with the latency its client saw, so a sum over the cluster counts each request once.
    """

    def __init__(self) -> None:
        self._bucket = CappedLabel(MAX_BUCKETS)
        self._outcome = CappedLabel(MAX_OUTCOMES)
        self.latency: dict[tuple[str, str, str], Histogram] = {}
        self.siblings: dict[str, Histogram] = {}
        self.clock_entries: dict[str, Histogram] = {}

    def observe(self, event: RequestEvent) -> None:
        if event.forwarded:
            return
        bucket = self._bucket(event.bucket)
        _of(self.latency, (event.op, bucket, self._outcome(event.outcome)),
            LATENCY_BOUNDS).observe(event.latency)
        if event.op == "get" and event.siblings is not None:
            _of(self.siblings, bucket, SIBLING_BOUNDS).observe(event.siblings)
        if event.op == "get" and event.clock_entries is not None:
            _of(self.clock_entries, bucket, CLOCK_BOUNDS).observe(event.clock_entries)

    def copy(self) -> RequestCounts:
        return RequestCounts(_copied(self.latency), _copied(self.siblings),
                             _copied(self.clock_entries))


def _of(table: dict[K, Histogram], key: K, bounds: Sequence[float]) -> Histogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = Histogram(bounds)
    return histogram


def _copied(table: Mapping[K, Histogram]) -> dict[K, Histogram]:
    return {key: histogram.copy() for key, histogram in table.items()}


# ====================================================================== metric families

GAUGE, COUNTER = "gauge", "counter"

#: Plain figures of the status document, one metric each: (name, type, where in the
#: document, help). Counters are named without ``_total``, which the exposition adds.
STATUS_FIGURES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("dynamo_keys", GAUGE, ("keys",),
     "Keys this node holds versions of: those it replicates and those it is to hand off."),
    ("dynamo_requests_pending", GAUGE, ("pending_requests",),
     "Client requests this node coordinates now, waiting for replicas (in flight)."),
    ("dynamo_overload_max_in_flight", GAUGE, ("overload", "max_in_flight"),
     "Requests in flight past which the overload guard refuses client requests."),
    ("dynamo_overload_behind", GAUGE, ("overload", "behind"),
     "1 while the node's queue of requests stands: the overload guard sheds load."),
    ("dynamo_overload_clients_tracked", GAUGE, ("overload", "clients_tracked"),
     "Clients the per-client admission remembers."),
    ("dynamo_hints_pending", GAUGE, ("hints_pending",),
     "Hints held for unreachable nodes, waiting to be delivered."),
    ("dynamo_hints_bytes", GAUGE, ("hints_bytes",), "Bytes the held hints take."),
    ("dynamo_hints_delivered", COUNTER, ("hints_delivered",),
     "Hints delivered to the node they were for (and then deleted)."),
    ("dynamo_hinted_writes", COUNTER, ("hinted_writes",),
     "Replica writes sent to a stand-in with a hint, a home node being unreachable."),
    ("dynamo_read_repairs", COUNTER, ("read_repairs",),
     "Replicas updated after a get found them stale or missing."),
    ("dynamo_stale_replies", COUNTER, ("stale_replies",),
     "Replica replies that arrived after their request was answered."),
    ("dynamo_forwarded_puts", COUNTER, ("forwarded_puts",),
     "Puts and deletes this node was no home of and forwarded to one."),
    ("dynamo_stale_ring_views", COUNTER, ("stale_ring_views",),
     "Requests routed by a client whose view of the ring differed from this node's."),
    ("dynamo_anti_entropy_exchanges", COUNTER, ("anti_entropy", "exchanges"),
     "Merkle tree exchanges with another replica."),
    ("dynamo_transfer_keys_handed_off", COUNTER, ("anti_entropy", "keys_handed_off"),
     "Keys handed to their new owners by range transfers (that changed the receiver)."),
    ("dynamo_transfer_keys_shipped", COUNTER, ("anti_entropy", "keys_shipped"),
     "Keys whose versions crossed the wire in exchanges and transfers, changed or not."),
    ("dynamo_transfer_keys_pending", GAUGE, ("anti_entropy", "unowned"),
     "Keys held in ranges this node no longer replicates, still to hand off."),
    ("dynamo_transfer_ranges_filling", GAUGE, ("anti_entropy", "ranges_filling"),
     "Ranges this node replicates but has not yet compared with another replica."),
    ("dynamo_tombstones", GAUGE, ("anti_entropy", "tombstones"),
     "Keys held only as tombstones, waiting to be reaped."),
    ("dynamo_tombstones_reaped", COUNTER, ("anti_entropy", "tombstones_reaped"),
     "Tombstones reaped once every home held them past the grace period."),
    ("dynamo_background_rate", GAUGE, ("background", "rate"),
     "Background requests per second allowed at most ([background] rate)."),
    ("dynamo_background_effective_rate", GAUGE, ("background", "effective_rate"),
     "Background requests per second allowed now (lowered while foreground latency is "
     "above target)."),
    ("dynamo_background_throttled", GAUGE, ("background", "throttled"),
     "1 while the effective background rate is below the configured one."),
    ("dynamo_background_tokens", GAUGE, ("background", "tokens"),
     "Background starts the token bucket would allow at once now."),
    ("dynamo_background_active", GAUGE, ("background", "active"),
     "Background tasks running now."),
    ("dynamo_background_max_concurrent", GAUGE, ("background", "max_concurrent"),
     "Background tasks allowed to run at once."),
    ("dynamo_background_started", COUNTER, ("background", "started"),
     "Background tasks the budget admitted."),
    ("dynamo_background_refused", COUNTER, ("background", "refused"),
     "Times a background task was refused a slot and had to wait."),
    ("dynamo_background_latency_seconds", GAUGE, ("background", "last_interval_percentile"),
     "Foreground latency percentile of the budget's last interval, which sets the rate."),
    ("dynamo_malformed_frames", COUNTER, ("malformed_frames",),
     "Frames refused as malformed or hostile (an error reply, a throttled log line)."),
    ("dynamo_forbidden_requests", COUNTER, ("forbidden_requests",),
     "Requests refused because the sender's role does not allow them."),
    ("dynamo_expired_requests", COUNTER, ("expired_requests",),
     "Requests dropped unanswered: they waited past their lifetime in a queue."),
    ("dynamo_dot_conflicts", COUNTER, ("dot_conflicts",),
     "Writes that found their version's dot already taken by another version."),
    ("dynamo_plugin_errors", COUNTER, ("plugin_errors",),
     "Plugin hooks, extension handlers and tasks that raised or were cut off."),
)

#: Figures of the status document that are one metric with a label:
#: (name, type, help, label, {label value: where in the document}).
LABELLED_FIGURES: tuple[tuple[str, str, str, str, Mapping[str, tuple[str, ...]]], ...] = (
    ("dynamo_overload_refusals", COUNTER,
     "Client requests refused at once (Busy), by why: a standing queue, too many requests "
     "in flight, a client over its rate.", "reason",
     {"standing_queue": ("overload", "overloaded_refusals"),
      "in_flight": ("overload", "in_flight_refusals"),
      "client_rate": ("overload", "rate_limited")}),
    ("dynamo_anti_entropy_keys", COUNTER,
     "Keys anti-entropy exchanged that changed the receiver: sent to a replica, or "
     "fetched from one.", "direction",
     {"sent": ("anti_entropy", "keys_sent"), "fetched": ("anti_entropy", "keys_fetched")}),
)


def families(status: Mapping[str, Any], requests: RequestCounts) -> Iterator[Metric]:
    """Every metric family of one node, from its status document and request counts."""
    yield _node_info(status)
    yield _peer_states(status["members"])
    yield from _request_families(requests)
    for name, kind, path, help_text in STATUS_FIGURES:
        value = _at(status, path)
        if value is not None:  # a figure not known yet (a percentile before any interval)
            yield _family(name, kind, help_text, value=float(value))
    for name, kind, help_text, label, paths in LABELLED_FIGURES:
        yield _by_label(name, kind, help_text, label,
                        {value: _at(status, path) for value, path in paths.items()})
    yield _by_label("dynamo_loop_failures", COUNTER,
                    "Failures of the node's background loops and timer steps, by loop "
                    "(each restarted with backoff).", "loop", status["loop_failures"])


def _node_info(status: Mapping[str, Any]) -> Metric:
    info = InfoMetricFamily("dynamo_node", "This node: its name, address and choices.")
    info.add_metric([], {key: str(status[key]) for key in (
        "node", "address", "actor", "engine", "failure_detector", "partitioning")})
    return info


def _peer_states(members: Sequence[Mapping[str, Any]]) -> Metric:
    family = GaugeMetricFamily(
        "dynamo_peer_state", "This node's failure detector's opinion of each member: 1 for "
        "its state (up, suspect or down), 0 for the others.", labels=["peer", "state"])
    for member in members:
        for state in PEER_STATES:
            family.add_metric([member["name"], state], float(member["state"] == state))
    return family


def _request_families(requests: RequestCounts) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "dynamo_requests", "Client gets, puts and deletes this node answered (not those "
        "another node forwarded), by outcome: ok or the error code.",
        labels=["op", "bucket", "outcome"])
    latency = HistogramMetricFamily(
        "dynamo_request_duration_seconds", "Seconds from a client request's arrival to its "
        "answer.", labels=["op", "bucket", "outcome"])
    for labels, histogram in sorted(requests.latency.items()):
        total.add_metric(labels, float(histogram.count))
        latency.add_metric(labels, histogram.cumulative(), histogram.total)
    yield total
    yield latency
    yield _histograms("dynamo_get_siblings", "Siblings a successful get returned (after the "
                      "bucket's resolver, if any, merged them).", requests.siblings)
    yield _histograms("dynamo_get_clock_entries", "Entries of the context a successful get "
                      "returned: how far vector clocks grow.", requests.clock_entries)


def _histograms(name: str, help_text: str, by_bucket: Mapping[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, help_text, labels=["bucket"])
    for bucket, histogram in sorted(by_bucket.items()):
        family.add_metric([bucket], histogram.cumulative(), histogram.total)
    return family


def _by_label(name: str, kind: str, help_text: str, label: str,
              values: Mapping[str, Any]) -> Metric:
    family = _family(name, kind, help_text, labels=[label])
    for value, figure in sorted(values.items()):
        family.add_metric([value], float(figure))
    return family


def _family(name: str, kind: str, help_text: str, **kwargs: Any
            ) -> CounterMetricFamily | GaugeMetricFamily:
    """A counter or gauge family (both take ``value=`` or ``labels=``)."""
    return (CounterMetricFamily if kind == COUNTER else GaugeMetricFamily)(
        name, help_text, **kwargs)


def _at(document: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        document = document[key]
    return document
