"""A metrics plugin: the observation and lifecycle hooks, read back over the bus.

Installed by configuration (``[plugins] modules = ["metrics"]``, with ``examples`` on the
nodes' ``PYTHONPATH``). On every node it counts the client requests the node answered, by
operation and outcome, keeps a fixed-bucket latency histogram (bounded memory, however long
the node runs), counts membership changes, and answers ``metrics.snapshot``::

    dynamo request metrics.snapshot --node tcp://127.0.0.1:7101

Hooks used: ``dynamo_protocol_extensions`` (the snapshot message; it also creates the
per-node state), ``dynamo_request_completed``, ``dynamo_node_started``,
``dynamo_membership_changed`` and ``dynamo_node_stopping``.
"""

from __future__ import annotations

import logging
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from dynamo_core.hookspecs import (
    Field,
    MessageType,
    NodeAPI,
    PeerView,
    ProtocolExtension,
    Request,
    RequestEvent,
    hookimpl,
    of_type,
)

log = logging.getLogger(__name__)

NAME = "metrics"
#: Upper bounds of the latency buckets, in milliseconds (the last bucket is open-ended).
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    """One node's counters."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()  # "<op> <outcome>" -> count
        self.latency = [0] * (len(BUCKETS_MS) + 1)
        self.membership_changes = 0
        self.started_at: float | None = None

    def observe(self, event: RequestEvent) -> None:
        if event.forwarded:  # the forwarding node reports the same request
            return
        self.requests[f"{event.op} {event.outcome}"] += 1
        self.latency[bisect_left(BUCKETS_MS, event.latency * 1000)] += 1

    def percentile(self, q: float) -> float | None:
        """The upper bound (ms) of the bucket holding the q-th latency; None if no data."""
        total = sum(self.latency)
        if not total:
            return None
        seen = 0
        for i, count in enumerate(self.latency):
            seen += count
            if seen >= q * total:
                return float(BUCKETS_MS[i]) if i < len(BUCKETS_MS) else float("inf")
        return None

    def snapshot(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        return {"node": node.name, "requests": dict(self.requests),
                "latency_ms": {"buckets": list(BUCKETS_MS), "counts": list(self.latency),
                               "p50": self.percentile(0.5), "p99": self.percentile(0.99)},
                "membership_changes": self.membership_changes,
                "uptime": node.now() - self.started_at if self.started_at else 0.0}


#: node -> its metrics; weak, so a stopped node's state goes with it
_metrics: weakref.WeakKeyDictionary[NodeAPI, Metrics] = weakref.WeakKeyDictionary()


def build(node: NodeAPI) -> ProtocolExtension:
    metrics = _metrics.setdefault(node, Metrics())
    any_map = Field(of_type(dict, what="a map"))
    return ProtocolExtension(messages=[MessageType(
        f"{NAME}.snapshot", metrics.snapshot,
        reply_fields={"node": Field(of_type(str, what="a node name")), "requests": any_map,
                      "latency_ms": any_map,
                      "membership_changes": Field(of_type(int, what="a count")),
                      "uptime": Field(of_type(float, int, what="seconds"))})])


@hookimpl
def dynamo_protocol_extensions() -> Mapping[str, Any]:
    return {NAME: build}


@hookimpl
def dynamo_node_started(node: NodeAPI) -> None:
    if (metrics := _metrics.get(node)) is not None:
        metrics.started_at = node.now()


@hookimpl
def dynamo_request_completed(node: NodeAPI, event: RequestEvent) -> None:
    if (metrics := _metrics.get(node)) is not None:
        metrics.observe(event)


@hookimpl
def dynamo_membership_changed(node: NodeAPI, members: Sequence[PeerView]) -> None:
    if (metrics := _metrics.get(node)) is not None:
        metrics.membership_changes += 1
        log.info("%s: membership now %s", node.name,
                 ", ".join(f"{m.name}:{m.status}" for m in members))


@hookimpl
def dynamo_node_stopping(node: NodeAPI) -> None:
    if (metrics := _metrics.get(node)) is not None:
        log.info("%s: stopping after %d requests", node.name, sum(metrics.requests.values()))
