"""Checks the scenario tests share, on real processes and on the simulator alike.

Each takes what it reads through small callables or a duck-typed cluster view, so one
function serves both kinds of cluster: the real-process twin of a scenario and its
simulated twin prove the same claim with the same check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class InspectableCluster(Protocol):
    """What :func:`replicas_converged` reads of a cluster: its nodes, a key's homes, and
    one node's local versions and hints of a key (``dynamo inspect``)."""

    names: Sequence[str]

    def homes(self, key: str, bucket: str) -> list[str]: ...

    def inspect(self, name: str, key: str, bucket: str) -> dict[str, Any]: ...


def version_set(view: dict[str, Any]) -> list[str]:
    """A replica's versions of a key, each as canonical JSON, sorted (comparable across nodes)."""
    return sorted(json.dumps({k: v[k] for k in ("value", "clock", "dot", "timestamp",
                                                 "tombstone")}, sort_keys=True)
                  for v in view["versions"])


def replicas_converged(cluster: InspectableCluster, key: str, bucket: str,
                       check: Callable[[list[dict[str, Any]]], bool]) -> bool:
    """Every home holds the same versions (passing ``check``); no node holds a hint or a
    stray copy of the key. Local reads only: no read repair is triggered by looking."""
    homes = cluster.homes(key, bucket)
    views = {name: cluster.inspect(name, key, bucket) for name in cluster.names}
    if any(views[name]["hints"] for name in cluster.names):
        return False
    if any(views[name]["versions"] for name in cluster.names if name not in homes):
        return False
    first = version_set(views[homes[0]])
    if any(version_set(views[h]) != first for h in homes[1:]):
        return False
    return check(views[homes[0]]["versions"])


def copies_converged(status: Callable[[str], dict[str, Any]], names: list[str],
                     total_keys: int, n: int) -> dict[str, dict[str, Any]]:
    """Every node sees the same members up, holds only what it replicates, and the
    replicas add up to ``n`` copies of every key; returns each node's status when so."""
    views = {name: status(name) for name in names}
    for view in views.values():
        up = {m["name"] for m in view["members"] if m["status"] == "up"}
        if up != set(names) or view["anti_entropy"]["unowned"] or view["hints_pending"]:
            return {}
    copies = sum(v["anti_entropy"]["keys_replicated"] for v in views.values())
    return views if copies == n * total_keys else {}
