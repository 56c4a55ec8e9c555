"""The consistent-hashing ring: who owns a key, and in what order replicas are tried.

A pure data structure: no I/O, no clocks, no randomness. Tokens come from a partition
strategy; the ring only answers questions about them. Every node that holds the same
token map computes the same answers, which is what lets coordinators agree without talking.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from typing import Iterator, Mapping

from dynamo_core.hookspecs import RING_BITS, RING_SIZE

__all__ = ["Ring", "hash_bytes", "key_hash", "range_contains"]


def hash_bytes(data: bytes) -> int:
    """MD5 of ``data`` as a 128-bit big-endian integer, i.e. a position on the ring.

    MD5 is the paper's choice; it is used for spreading, not security, hence
    ``usedforsecurity=False`` (keeps it available on FIPS-restricted builds).
    """
    return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest(), "big")


def key_hash(bucket: str, key: str) -> int:
    """The ring position of ``key`` in ``bucket`` (hash of UTF-8 ``"<bucket>/<key>"``)."""
    return hash_bytes(f"{bucket}/{key}".encode("utf-8"))


def range_contains(start: int, end: int, h: int) -> bool:
    """Whether ``h`` lies in the half-open ring range ``(start, end]``.

    A range with ``start >= end`` wraps past the top of the hash space; ``start == end``
    is the whole ring (what a single token owns).
    """
    if start < end:
        return start < h <= end
    return h > start or h <= end


def _span(start: int, end: int) -> int:
    """How many hash values the ring range ``(start, end]`` holds."""
    return (end - start) % RING_SIZE or RING_SIZE


def _check_position(h: int) -> None:
    # bool is an int subclass; a True token or hash is always a caller's bug.
    if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < RING_SIZE:
        raise ValueError(f"ring position must be an int in [0, 2**{RING_BITS}), got {h!r}")


class Ring:
    """An immutable ring of tokens, each owned by a physical node.

    A key hashing to ``h`` belongs to the first token ``t >= h`` clockwise, wrapping past
    the top of the space to the smallest token (the paper's rule). Token ``t`` therefore
    owns the range ``(previous token, t]``.
    """

    __slots__ = ("_tokens", "_owners", "_by_node")

    def __init__(self, tokens: Mapping[int, str]) -> None:
        """Build a ring from ``token -> node name``; tokens must lie in ``[0, RING_SIZE)``."""
        for token in tokens:
            _check_position(token)
        ordered = sorted(tokens.items())
        self._tokens: tuple[int, ...] = tuple(t for t, _ in ordered)
        self._owners: tuple[str, ...] = tuple(n for _, n in ordered)
        by_node: dict[str, list[int]] = {}
        for token, node in ordered:
            by_node.setdefault(node, []).append(token)
        self._by_node: dict[str, tuple[int, ...]] = {n: tuple(ts) for n, ts in by_node.items()}

    @classmethod
    def empty(cls) -> Ring:
        """A ring with no tokens: it owns nothing and every preference list is empty."""
        return cls({})

    @property
    def nodes(self) -> frozenset[str]:
        """The distinct physical nodes holding at least one token."""
        return frozenset(self._by_node)

    def tokens_of(self, node: str) -> list[int]:
        """The sorted tokens of ``node`` (empty if it is not on the ring)."""
        return list(self._by_node.get(node, ()))

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._tokens == other._tokens and self._owners == other._owners

    def __hash__(self) -> int:
        return hash((self._tokens, self._owners))

    def __repr__(self) -> str:
        return f"Ring({len(self._by_node)} nodes, {len(self._tokens)} tokens)"

    def _index_of(self, h: int) -> int:
        """Index of the token owning ``h``; the ring must not be empty."""
        _check_position(h)
        i = bisect_left(self._tokens, h)
        return 0 if i == len(self._tokens) else i

    def primary(self, h: int) -> str:
        """The node owning hash ``h``; raises ``LookupError`` on an empty ring."""
        if not self._tokens:
            raise LookupError("the ring is empty")
        return self._owners[self._index_of(h)]

    def walk(self, h: int) -> Iterator[str]:
        """Distinct physical nodes clockwise from the owner of ``h``, each exactly once.

        Stops as soon as every node has been yielded, so with many tokens per node it
        goes around the ring at most once and usually only a few steps.
        """
        if not self._tokens:
            return
        start, count, total = self._index_of(h), len(self._tokens), len(self._by_node)
        seen: set[str] = set()
        for step in range(count):
            node = self._owners[(start + step) % count]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == total:
                    return

    def preference_list(self, h: int, n: int) -> list[str]:
        """The first ``n`` distinct nodes of :meth:`walk` (fewer if the ring is smaller).

        Asking for more than N gives the fallback nodes a sloppy quorum uses, in order.
        """
        if n < 0:
            raise ValueError(f"preference list length must be >= 0, got {n}")
        result: list[str] = []
        if n == 0:
            return result
        for node in self.walk(h):
            result.append(node)
            if len(result) == n:
                break
        return result

    def ranges_of(self, node: str) -> list[tuple[int, int]]:
        """The ``(start, end]`` ranges whose primary owner is ``node``, one per token.

        Ranges are not merged when a node holds neighbouring tokens, so they stay aligned
        with the tokens (strategy 3's fixed partitions, one Merkle tree per range). See
        :func:`range_contains` for how wrapping ranges read.
        """
        return [(self._predecessor(t), t) for t in self._by_node.get(node, ())]

    def _predecessor(self, token: int) -> int:
        """The token just before ``token`` clockwise (itself on a one-token ring)."""
        return self._tokens[bisect_left(self._tokens, token) - 1]

    def ownership(self) -> dict[str, float]:
        """The fraction of the hash space each node primarily owns (sums to 1)."""
        return {
            node: sum(_span(start, end) for start, end in self.ranges_of(node)) / RING_SIZE
            for node in sorted(self._by_node)
        }
