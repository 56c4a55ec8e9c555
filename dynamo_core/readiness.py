"""Whether a node is *ready*: a request sent to it now is served as a settled cluster would.

Answering ``status`` is not being ready. A node that just started may know only itself (a
put then finds one replica of the three it needs), may not have a connection to a peer yet
(its sockets queue only on live connections: the first frame to it fails), may build a ring
its peers do not build yet (join orders still settling through gossip), or may still be
filling its ranges (joining). A node is ready when none of that holds:

* it knows the cluster: it has heard from its seeds (a node with none is a cluster alone);
* it can serve its ranges: it is ``up`` on the ring, not joining, leaving or removed;
* its way to every member it believes up can carry a frame (the transport says so);
* the ring has settled as far as it can tell: every member it believes up whose ring digest
  it has heard (gossip carries it both ways) builds the same ring, and it has heard from
  every peer it shares a range with.

What is not ready is said in a few words per reason (``dynamo status``, ``dynamo wait``).
Pure logic: the node core gathers the facts and hands them in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from .membership import RING_STATUSES, Member

#: What a member's status means, as ``dynamo status`` explains it.
STATUS_MEANINGS = {
    "joining": "on the ring, filling its ranges from their replicas",
    "up": "on the ring, serving its ranges",
    "leaving": "handing its ranges off before it exits (dynamo leave)",
    "removed": "off the ring for good; `dynamo join` brings it back",
}

#: Peers named in one reason at most (a large cluster gets "and N more").
_NAMED = 5


@dataclass(frozen=True)
class Facts:
    """What the node core knows that readiness depends on."""

    me: Member
    members: list[Member]
    #: the node was given seeds to learn the cluster from
    has_seeds: bool
    #: this node's ring digest, and the last one each peer said it builds
    digest: bytes
    peer_digests: Mapping[str, bytes]
    #: peers sharing a range with this node (their ring must be known to agree)
    neighbours: Collection[str]
    #: ranges this node still fills (joining)
    filling: int
    is_up: Callable[[str], bool]
    connected: Callable[[str], bool]


def not_ready(facts: Facts) -> list[str]:
    """Why the node is not ready, in a few words each; empty when it is ready."""
    me = facts.me
    reasons = []
    if me.status == "joining":
        reasons.append(f"joining: {facts.filling} of its ranges not filled yet")
    elif me.status != "up":
        reasons.append(f"{me.status}: {STATUS_MEANINGS[me.status]}")
    if facts.has_seeds and len(facts.members) == 1:
        reasons.append("has not heard from its seeds yet")
    peers = [m for m in facts.members if m.name != me.name and m.status in RING_STATUSES
             and facts.is_up(m.name)]
    unconnected = [m.name for m in peers if not facts.connected(m.address)]
    if unconnected:
        reasons.append(f"no connection yet to {_names(unconnected)}")
    differ = [m.name for m in peers
              if facts.peer_digests.get(m.name, facts.digest) != facts.digest]
    if differ:
        reasons.append(f"ring not settled: {_names(differ)} build another ring")
    unheard = [m.name for m in peers
               if m.name in facts.neighbours and m.name not in facts.peer_digests]
    if unheard:
        reasons.append(f"ring not confirmed yet by {_names(unheard)}")
    return reasons


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown if len(names) <= _NAMED else f"{shown} and {len(names) - _NAMED} more"
