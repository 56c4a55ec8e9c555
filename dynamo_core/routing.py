"""Client-driven coordination (the paper's section 6.4): a client that knows the ring.

A client that sends every request to one node pays a hop whenever that node is not one of
the key's homes (it forwards a put), and makes that node coordinate everything. A routing
client instead learns the ring from any node (the ``ring`` request, answered with
:func:`ring_document`), sends a put straight to the first home it believes up, and a get
to one of the key's homes, chosen at random so hot keys spread their reads over their
replicas. Its view of the ring is a :class:`RingView`; it is refreshed now and then, and
at once when a node says the view the request was routed by is not its own (each routed
request names its view's digest). With no view, or no usable home, a request goes to the
addresses the client was given, whose node forwards it as it would for any client.

Pure logic: the client brings the clock, the randomness and the sockets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any

from .ring import MAX_PARTITIONS, RING_BITS, Ring, key_hash

#: Seconds after which a client fetches the ring again even if no node said it changed:
#: the nodes' opinions of who is up are part of the view. (The paper's clients poll every
#: ten seconds; a view is a few kilobytes, so fresher opinions are cheap.)
REFRESH_SECONDS = 2.0
_TOKEN_BYTES = RING_BITS // 8
#: the most tokens a view may carry (a hostile or broken answer must not cost much)
MAX_VIEW_TOKENS = 1 << 20


@dataclass(frozen=True)
class Route:
    """One member as a routing client sees it."""

    name: str
    address: str
    #: the answering node's opinion: "up", "suspect" or "down"
    state: str


def ring_document(ring: Ring, routes: Sequence[Route], n: int,
                  bucket_n: Mapping[str, int]) -> dict[str, Any]:
    """The ``ring_ok`` body: the ring's tokens and owners, where members listen, their
    states, and the replication factor of each bucket that sets its own."""
    tokens, owners = ring.entries()
    names = sorted({*owners, *(r.name for r in routes)})
    index = {name: i for i, name in enumerate(names)}
    by_name = {r.name: r for r in routes}
    members = [[name, by_name[name].address if name in by_name else "",
                by_name[name].state if name in by_name else "down"] for name in names]
    blob = b"".join(t.to_bytes(_TOKEN_BYTES, "big") for t in tokens)
    return {"digest": ring_digest(ring, routes), "q": ring.partitions or 0,
            "tokens": blob, "owners": [index[o] for o in owners], "members": members,
            "n": n, "buckets": dict(bucket_n)}


def ring_digest(ring: Ring, routes: Sequence[Route]) -> bytes:
    """What identifies a view for routing: the ring and where its members listen (not
    their states, which change far more often and need no refresh to be safe)."""
    tokens, owners = ring.entries()
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((ring.partitions, tokens, owners)).encode())
    h.update(repr(sorted((r.name, r.address) for r in routes)).encode())
    return h.digest()


class RingView:
    """A routing client's picture of the cluster, as one node described it."""

    def __init__(self, digest: bytes, ring: Ring, routes: Mapping[str, Route], n: int,
                 bucket_n: Mapping[str, int], fetched_at: float) -> None:
        self.digest = digest
        self.ring = ring
        self.routes = dict(routes)
        self.n = n
        self.bucket_n = dict(bucket_n)
        self.fetched_at = fetched_at
        #: a node answered that this view is not its own
        self.stale = False

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], now: float) -> RingView:
        """Parse a ``ring_ok`` body; raises ValueError naming what is wrong."""
        digest, q, blob = body.get("digest"), body.get("q"), body.get("tokens")
        owners, members = body.get("owners"), body.get("members")
        n, buckets = body.get("n"), body.get("buckets")
        if not isinstance(digest, bytes) or not 0 < len(digest) <= 64:
            raise ValueError("a ring view's digest is a short byte string")
        if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= MAX_PARTITIONS:
            raise ValueError("a ring view's q is a partition count, or 0")
        if (not isinstance(blob, bytes) or len(blob) % _TOKEN_BYTES
                or len(blob) // _TOKEN_BYTES > MAX_VIEW_TOKENS):
            raise ValueError("a ring view's tokens are 16-byte big-endian integers")
        if not isinstance(members, list) or not all(
                isinstance(m, list) and len(m) == 3 and all(isinstance(f, str) for f in m)
                for m in members):
            raise ValueError("a ring view's members are [name, address, state] triples")
        count = len(blob) // _TOKEN_BYTES
        if not isinstance(owners, list) or len(owners) != count or not all(
                isinstance(o, int) and not isinstance(o, bool) and 0 <= o < len(members)
                for o in owners):
            raise ValueError("a ring view names one member per token")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 64:
            raise ValueError("a ring view's n is a replication factor")
        if not isinstance(buckets, dict) or not all(
                isinstance(b, str) and isinstance(v, int) and not isinstance(v, bool)
                and 0 < v <= 64 for b, v in buckets.items()):
            raise ValueError("a ring view's buckets map names to replication factors")
        tokens = [int.from_bytes(blob[i:i + _TOKEN_BYTES], "big")
                  for i in range(0, len(blob), _TOKEN_BYTES)]
        names = [m[0] for m in members]
        ring = Ring({t: names[o] for t, o in zip(tokens, owners, strict=True)}, q or None)
        routes = {m[0]: Route(m[0], m[1], m[2]) for m in members
                  if m[1].startswith("tcp://")}
        return cls(digest, ring, routes, n, buckets, now)

    def due(self, now: float) -> bool:
        """Time to fetch the view again."""
        return self.stale or now - self.fetched_at >= REFRESH_SECONDS

    def homes(self, bucket: str, key: str) -> list[Route]:
        """The key's home nodes, in preference-list order."""
        n = self.bucket_n.get(bucket, self.n)
        names = self.ring.preference_list(key_hash(bucket, key), n)
        return [self.routes[name] for name in names if name in self.routes]

    def route(self, op: str, bucket: str, key: str, usable: Callable[[str], bool],
              rng: Random) -> str | None:
        """The address to send ``op`` on the key to, or None (ask any node).

        A put or delete goes to the first home believed up (the coordinator the paper's
        preference list names first); a get to any such home, at random.
        """
        homes = [r.address for r in self.homes(bucket, key)
                 if r.state == "up" and usable(r.address)]
        if not homes:
            return None
        return homes[0] if op != "get" else rng.choice(homes)

    def addresses(self) -> list[str]:
        return sorted(r.address for r in self.routes.values())
