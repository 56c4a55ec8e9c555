"""The consistent-hashing ring: who owns a key, and in what order replicas are tried.

A pure data structure: no I/O, no clocks, no randomness. Tokens come from a partition
strategy; the ring only answers questions about them. Every node that holds the same
token map computes the same answers, which is what lets coordinators agree without talking.

A ring may also be cut into Q fixed, equal partitions (the paper's strategies 2 and 3). A key
then belongs to its partition, and the partition is placed by walking the tokens clockwise
from the partition's end: keys of one partition always share a preference list, and the
partitions, not the token ranges, are the units of Merkle trees and of transfer.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterator, Mapping

#: The ring is the 128-bit hash space [0, RING_SIZE).
RING_BITS = 128
RING_SIZE = 1 << RING_BITS

#: More partitions than this would make every node hold more Merkle trees than it has keys.
MAX_PARTITIONS = 1 << 16

__all__ = ["MAX_PARTITIONS", "RING_BITS", "RING_SIZE", "Ring", "hash_bytes", "key_hash",
           "partition_end", "partition_ends", "range_contains"]


def hash_bytes(data: bytes) -> int:
    """MD5 of ``data`` as a 128-bit big-endian integer, i.e. a position on the ring.

    MD5 is the paper's choice; it is used for spreading, not security, hence
    ``usedforsecurity=False`` (keeps it available on FIPS-restricted builds).
    """
    return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest(), "big")


def key_hash(bucket: str, key: str) -> int:
    """The ring position of ``key`` in ``bucket`` (hash of UTF-8 ``"<bucket>/<key>"``)."""
    return hash_bytes(f"{bucket}/{key}".encode())


def range_contains(start: int, end: int, h: int) -> bool:
    """Whether ``h`` lies in the half-open ring range ``(start, end]``.

    A range with ``start >= end`` wraps past the top of the hash space; ``start == end``
    is the whole ring (what a single token owns).
    """
    if start < end:
        return start < h <= end
    return h > start or h <= end


def partition_ends(q: int) -> list[int]:
    """The last position of each of ``q`` equal partitions, in order.

    Partition ``k`` is ``(end[k-1], end[k]]`` with ``end[k] = floor((k+1)·2**128 / q) - 1``,
    so the last one ends at the top of the space and the first starts at 0. When ``q`` does
    not divide the space, sizes differ by at most one position.
    """
    _check_partition_count(q)
    return [((k + 1) * RING_SIZE) // q - 1 for k in range(q)]


def partition_end(h: int, q: int) -> int:
    """The end of the partition (of ``q`` equal ones) that position ``h`` falls in."""
    _check_position(h)
    _check_partition_count(q)
    return _partition_end(h, q)


def _partition_end(h: int, q: int) -> int:
    """:func:`partition_end` for arguments already checked (the ring's lookup path)."""
    # h <= end[k]  <=>  (h+1)·q <= (k+1)·2**128, so k is the ceiling of (h+1)·q / 2**128, less 1.
    k = ((h + 1) * q + RING_SIZE - 1) // RING_SIZE - 1
    return ((k + 1) * RING_SIZE) // q - 1


def _check_partition_count(q: object) -> None:
    if not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= MAX_PARTITIONS:
        raise ValueError(f"partition count must be an integer from 1 to {MAX_PARTITIONS}, "
                         f"got {q!r}")


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
    owns the range ``(previous token, t]``. With ``partitions=Q``, ``h`` first moves to the
    end of its partition, so the whole partition goes where its end goes.
    """

    __slots__ = ("_by_node", "_ends", "_owners", "_partitions", "_tokens")

    def __init__(self, tokens: Mapping[int, str], partitions: int | None = None) -> None:
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
        self._partitions = partitions
        #: the range ends: the partitions' if the ring is partitioned, else the tokens
        self._ends: tuple[int, ...] = (
            self._tokens if partitions is None else tuple(partition_ends(partitions)))

    @classmethod
    def empty(cls) -> Ring:
        """A ring with no tokens: it owns nothing and every preference list is empty."""
        return cls({})

    @property
    def nodes(self) -> frozenset[str]:
        """The distinct physical nodes holding at least one token."""
        return frozenset(self._by_node)

    @property
    def partitions(self) -> int | None:
        """Q when the ring is cut into Q equal partitions, else None (token ranges)."""
        return self._partitions

    def entries(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """Every token in ring order, and the node owning each (what a client routes by)."""
        return self._tokens, self._owners

    def tokens_of(self, node: str) -> list[int]:
        """The sorted tokens of ``node`` (empty if it is not on the ring)."""
        return list(self._by_node.get(node, ()))

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (self._tokens, self._owners, self._partitions) == (
            other._tokens, other._owners, other._partitions)

    def __hash__(self) -> int:
        return hash((self._tokens, self._owners, self._partitions))

    def __repr__(self) -> str:
        cut = f", {self._partitions} partitions" if self._partitions else ""
        return f"Ring({len(self._by_node)} nodes, {len(self._tokens)} tokens{cut})"

    def _index_of(self, h: int) -> int:
        """Index of the token owning ``h``; the ring must not be empty."""
        _check_position(h)
        if self._partitions is not None:
            h = _partition_end(h, self._partitions)
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

    def ranges(self) -> list[tuple[int, int]]:
        """Every range ``(start, end]`` keys are grouped by: the partitions, or the tokens'.

        Each range lies wholly in one token's range, so all its keys share one preference
        list: the unit of a Merkle tree and of a transfer. Empty on an empty ring.
        """
        if not self._tokens:
            return []
        ends = self._ends
        return [(ends[i - 1], end) for i, end in enumerate(ends)]

    def ranges_of(self, node: str) -> list[tuple[int, int]]:
        """The ranges (see :meth:`ranges`) whose primary owner is ``node``.

        Ranges are not merged when a node holds neighbouring ones, so they stay aligned
        with the tokens or partitions. See :func:`range_contains` for how wrapping ranges read.
        """
        if self._partitions is None:
            return [(self._predecessor(t), t) for t in self._by_node.get(node, ())]
        return [r for r in self.ranges() if self.primary(r[1]) == node]

    def _predecessor(self, token: int) -> int:
        """The token just before ``token`` clockwise (itself on a one-token ring)."""
        return self._tokens[bisect_left(self._tokens, token) - 1]

    def ownership(self) -> dict[str, float]:
        """The fraction of the hash space each node primarily owns (sums to 1)."""
        spans: dict[str, int] = {node: 0 for node in self._by_node}
        for start, end in self.ranges():
            spans[self.primary(end)] += _span(start, end)
        return {node: spans[node] / RING_SIZE for node in sorted(spans)}
