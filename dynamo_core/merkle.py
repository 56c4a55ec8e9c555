"""Merkle trees over key ranges: find what two replicas disagree on without shipping it all.

Anti-entropy (paper, section 4.7) keeps one hash tree per key range a node replicates. Two
replicas of the same range compare roots; only where hashes differ do they descend, and at
the bottom they exchange only the keys whose versions differ. This module is the pure part:
the trees, the digests they are built from, and the comparisons. It does no I/O, keeps no
clocks and draws no random numbers, so the node runtime and a simulated network can drive
the very same logic.

Shape of a tree
    A :class:`MerkleTree` covers one ring range ``(start, end]`` with ``2**depth`` leaves that
    split the range uniformly, so two replicas of the range put every key in the same leaf
    without agreeing on anything but ``(start, end, depth)``. A leaf's hash is the XOR of one
    term per key, ``blake2b(key_id + key_digest, 16)``, so a write changes a leaf in O(1). An
    interior node is ``blake2b(left + right, 16)``; interior nodes are recomputed lazily,
    only along the paths of leaves written since the last read.

The exchange, for one range (the initiator drives; the peer only answers)
    1. The initiator makes a :class:`Descent` over its tree and sends the peer
       ``(range, level, indices)`` from :meth:`Descent.request`: at first level 0, ``[0]``.
    2. The peer answers ``tree.hashes(level, indices)``. The initiator feeds the answer to
       :meth:`Descent.receive`, which keeps the indices that differ (:func:`differing_children`)
       and asks next for their children, one batch per level. Matching subtrees are never
       looked at again, so a handful of differing keys costs O(depth) hashes each, not the
       whole tree.
    3. When the descent reaches the leaves, the initiator asks the peer for
       ``tree.leaf_keys(leaf)`` of each differing leaf and compares them with its own using
       :func:`diff_leaf`: it sends the versions of the ``send`` keys and fetches the versions
       of the ``fetch`` keys. A key whose digests differ is in both lists: each side merges
       what it gets with what it holds (``reconcile``), so both end with the same version set
       and hence the same digest.

    Trees may change while an exchange runs; then the descent finds a stale or empty
    difference, which is harmless: the next round catches whatever it missed. Both sides must
    agree on ``(start, end, depth)`` (:attr:`MerkleTree.shape`), which the runtime checks
    before comparing anything.
"""

from __future__ import annotations

import hashlib
import itertools
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from .ring import RING_SIZE, key_hash, range_contains
from .store import storage_key
from .versions import Version

__all__ = [
    "ABSENT",
    "DEFAULT_DEPTH",
    "DIGEST_BYTES",
    "MAX_DEPTH",
    "Descent",
    "MerkleTree",
    "RangeTrees",
    "child_indices",
    "diff_leaf",
    "differing_children",
    "key_digest",
    "key_id",
]

#: Every hash and digest here is 16 bytes: plenty against accidental collisions.
DIGEST_BYTES = 16
#: The digest of a key with no versions at all: such a key is simply not in the tree.
ABSENT = bytes(DIGEST_BYTES)
#: 64 leaves: a few hundred keys per range put a handful in each leaf.
DEFAULT_DEPTH = 6
#: 2**16 leaves is already far more than any range needs; the bound keeps memory bounded.
MAX_DEPTH = 16

_DIGEST_DOMAIN = b"dynamo-key-digest-v1"


# ====================================================================== digests


def _blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def key_id(bucket: str, key: str) -> str:
    """How a key is named inside a tree: its storage key, ``"<bucket>/<key>"``.

    Bucket names hold no ``/``, so ``dynamo_core.store.split_storage_key`` splits it back.
    """
    return storage_key(bucket, key)


def key_digest(versions: Sequence[Version]) -> bytes:
    """A 16-byte digest of the *set* of versions a replica holds for one key.

    It covers each whole version (its fingerprint: value, clock, dot, timestamp, tombstone),
    not only its dot: a dot names one write, but should a dot ever have been issued twice,
    two replicas holding different versions under it must see different digests, or
    anti-entropy would never notice. Fingerprints are sorted and deduplicated first, so the
    digest does not depend on the order storage returned them in. No versions at all gives
    :data:`ABSENT`.
    """
    prints = sorted({v.fingerprint for v in versions})
    if not prints:
        return ABSENT
    h = hashlib.blake2b(_DIGEST_DOMAIN, digest_size=DIGEST_BYTES)
    for fingerprint in prints:  # fixed length: plain concatenation is unambiguous
        h.update(fingerprint)
    return h.digest()


def _leaf_term(kid: str, digest: bytes) -> int:
    """One key's contribution to its leaf (as an int, so XOR is cheap).

    The digest has a fixed length and comes last, so ``kid + digest`` is unambiguous.
    """
    return int.from_bytes(_blake(kid.encode("utf-8") + digest), "big")


def _is_absent(digest: bytes | None) -> bool:
    return digest is None or digest == ABSENT


def _span(start: int, end: int) -> int:
    """Hash values in ``(start, end]``; ``start == end`` is the whole ring."""
    return (end - start) % RING_SIZE or RING_SIZE


# ====================================================================== the tree


class MerkleTree:
    """The hash tree of one ring range ``(start, end]``, with ``2**depth`` leaves.

    Level 0 is the root, level ``depth`` the leaves; node ``i`` of level ``l`` has children
    ``2i`` and ``2i + 1`` on level ``l + 1``. Next to the hashes each leaf keeps its keys and
    their digests, so the keys of a differing leaf are known without scanning storage, and a
    leaf's hash is always exactly the XOR over what it holds.
    """

    __slots__ = ("_acc", "_depth", "_dirty", "_end", "_keys", "_levels", "_span", "_start")

    def __init__(self, start: int, end: int, depth: int = DEFAULT_DEPTH) -> None:
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < RING_SIZE:
                raise ValueError(f"range {name} must be a ring position, got {value!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
            raise ValueError(f"tree depth must be an int in [0, {MAX_DEPTH}], got {depth!r}")
        self._start, self._end, self._depth = start, end, depth
        self._span = _span(start, end)
        self._acc: list[int]  # per leaf, the XOR of its keys' terms
        self._keys: list[dict[str, bytes]]  # per leaf, key_id -> digest
        self._levels: list[list[bytes]]  # node hashes, root level first
        self._dirty: set[int]  # leaves written since the last refresh
        self.clear()

    # ----------------------------------------------------------------- shape

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._end

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def leaves(self) -> int:
        return 1 << self._depth

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(start, end, depth)``: two trees are comparable only when their shapes match."""
        return self._start, self._end, self._depth

    def __len__(self) -> int:
        """How many keys the tree holds."""
        return sum(len(keys) for keys in self._keys)

    def __repr__(self) -> str:
        return (f"MerkleTree(({self._start:#x}, {self._end:#x}], depth={self._depth}, "
                f"keys={len(self)})")

    def covers(self, h: int) -> bool:
        """Whether ring hash ``h`` falls in this tree's range."""
        return range_contains(self._start, self._end, h)

    def leaf_index(self, h: int) -> int:
        """The leaf of hash ``h``: its offset in the range, scaled to ``[0, leaves)``.

        Uniform in the range, so it depends only on the shape, never on which keys exist.
        """
        if not self.covers(h):
            raise ValueError(f"hash {h:#x} is outside the tree's range")
        offset = (h - self._start - 1) % RING_SIZE
        return offset * self.leaves // self._span

    # ----------------------------------------------------------------- writes

    def clear(self) -> None:
        """Forget every key (before a rebuild from storage)."""
        leaves = self.leaves
        self._acc = [0] * leaves
        self._keys = [{} for _ in range(leaves)]
        self._levels = [[b""] * (1 << level) for level in range(self._depth + 1)]
        self._dirty = set(range(leaves))

    def set_digest(self, bucket: str, key: str, h: int, digest: bytes | None) -> bytes:
        """Record that ``key`` now has version-set ``digest`` (``None``/``ABSENT``: no versions).

        Returns the digest the tree held before (``ABSENT`` if none). The old term is taken
        from the tree's own record, so the leaf hash can never drift from its key list.
        """
        if digest is not None and (not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES):
            raise ValueError(f"a key digest is {DIGEST_BYTES} bytes")
        leaf = self.leaf_index(h)
        kid = key_id(bucket, key)
        keys = self._keys[leaf]
        old = keys.get(kid, ABSENT)
        new = ABSENT if digest is None else digest
        if old == new:
            return old
        if old != ABSENT:
            self._acc[leaf] ^= _leaf_term(kid, old)
            del keys[kid]
        if new != ABSENT:
            self._acc[leaf] ^= _leaf_term(kid, new)
            keys[kid] = new
        self._dirty.add(leaf)
        return old

    def update(self, bucket: str, key: str, h: int,
               old_digest: bytes | None, new_digest: bytes | None) -> bool:
        """A write changed ``key`` from ``old_digest`` to ``new_digest``: O(1) on the leaf.

        Returns whether ``old_digest`` matched what the tree held. Either way the tree ends
        up holding ``new_digest``; ``False`` only tells the caller that storage and tree had
        drifted (say, a write raced a rebuild), which is worth a log line, not a failure.
        """
        previous = self.set_digest(bucket, key, h, new_digest)
        return previous == (ABSENT if old_digest is None else old_digest)

    # ----------------------------------------------------------------- reads

    def root(self) -> bytes:
        """The root hash: equal roots mean (up to collisions) equal contents."""
        return self.hashes(0, [0])[0]

    def hashes(self, level: int, indices: Sequence[int]) -> list[bytes]:
        """The hashes of nodes ``indices`` on ``level`` (0 = root, ``depth`` = leaves).

        Indices may come from a peer, so they are checked: a bad one raises ``ValueError``.
        """
        self._check_level(level)
        width = 1 << level
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < width:
                raise ValueError(f"node index must be an int in [0, {width}) on level {level}")
        self._refresh()
        row = self._levels[level]
        return [row[i] for i in indices]

    def children(self, level: int, index: int) -> list[int]:
        """The indices on ``level + 1`` of node ``index``'s children; none for a leaf."""
        self._check_level(level)
        if not 0 <= index < 1 << level:
            raise ValueError(f"node index must be in [0, {1 << level}) on level {level}")
        return [] if level == self._depth else [2 * index, 2 * index + 1]

    def leaf_keys(self, leaf: int) -> dict[str, bytes]:
        """The keys in ``leaf`` and their digests (a copy: callers may keep or send it)."""
        if isinstance(leaf, bool) or not isinstance(leaf, int) or not 0 <= leaf < self.leaves:
            raise ValueError(f"leaf index must be an int in [0, {self.leaves})")
        return dict(self._keys[leaf])

    def digest_of(self, bucket: str, key: str, h: int) -> bytes:
        """The digest the tree holds for ``key`` (``ABSENT`` if none)."""
        return self._keys[self.leaf_index(h)].get(key_id(bucket, key), ABSENT)

    # ----------------------------------------------------------------- internals

    def _check_level(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= self._depth:
            raise ValueError(f"tree level must be an int in [0, {self._depth}]")

    def _refresh(self) -> None:
        """Recompute only the nodes above leaves written since the last read."""
        if not self._dirty:
            return
        bottom = self._levels[self._depth]
        for leaf in self._dirty:
            bottom[leaf] = self._acc[leaf].to_bytes(DIGEST_BYTES, "big")
        dirty = self._dirty
        for level in range(self._depth - 1, -1, -1):
            dirty = {i >> 1 for i in dirty}
            row, below = self._levels[level], self._levels[level + 1]
            for i in dirty:
                row[i] = _blake(below[2 * i] + below[2 * i + 1])
        self._dirty = set()


# ====================================================================== comparing


def differing_children(mine: MerkleTree, level: int, indices: Sequence[int],
                       their_hashes: Sequence[bytes]) -> list[int]:
    """Which of ``indices`` on ``level`` hash differently here than in the peer's answer.

    Only these subtrees need looking into; the runtime asks the peer for their children
    next. ``their_hashes`` comes off the wire, so a length mismatch raises ``ValueError``.
    """
    if len(their_hashes) != len(indices):
        raise ValueError(f"{len(indices)} node hashes asked for, {len(their_hashes)} received")
    mine_hashes = mine.hashes(level, indices)
    return [i for i, a, b in zip(indices, mine_hashes, their_hashes, strict=True) if a != b]


def diff_leaf(mine: dict[str, bytes], theirs: dict[str, bytes]) -> tuple[list[str], list[str]]:
    """``(send, fetch)``: keys whose versions I should send, and keys I should fetch.

    I send what I hold differently or alone; I fetch what they hold differently or alone. A
    key held by both with different digests is in both lists, since neither side can tell
    from a digest which versions the other lacks. Both lists are sorted.
    """
    send = sorted(k for k, d in mine.items() if theirs.get(k) != d)
    fetch = sorted(k for k, d in theirs.items() if mine.get(k) != d)
    return send, fetch


def child_indices(indices: Iterable[int]) -> list[int]:
    """The indices on the next level down of every node in ``indices``, in order."""
    return [c for i in indices for c in (2 * i, 2 * i + 1)]


class Descent:
    """The initiator's side of one range's comparison: from the root down to the leaves.

    Ask :meth:`request` what to send the peer, pass its answer to :meth:`receive`, repeat
    until :attr:`done`; then :attr:`leaves` are the leaves whose key lists to compare.
    ``compared`` counts node hashes compared so far (the cost of the exchange).
    """

    __slots__ = ("_leaves", "_level", "_pending", "_tree", "compared")

    def __init__(self, tree: MerkleTree) -> None:
        self._tree = tree
        self._level = 0
        self._pending: list[int] = [0]
        self._leaves: list[int] | None = None
        self.compared = 0

    @property
    def done(self) -> bool:
        return self._leaves is not None

    @property
    def leaves(self) -> list[int]:
        """The differing leaves, once done (empty when the trees agree)."""
        if self._leaves is None:
            raise RuntimeError("the descent has not reached the leaves yet")
        return list(self._leaves)

    def request(self) -> tuple[int, list[int]]:
        """``(level, indices)`` whose hashes to ask the peer for next."""
        if self._leaves is not None:
            raise RuntimeError("the descent is over")
        return self._level, list(self._pending)

    def receive(self, their_hashes: Sequence[bytes]) -> None:
        """Take the peer's hashes for the last request; go one level down where they differ."""
        level, indices = self.request()
        differ = differing_children(self._tree, level, indices, their_hashes)
        self.compared += len(indices)
        if level == self._tree.depth or not differ:
            self._leaves = differ if level == self._tree.depth else []
            return
        self._level, self._pending = level + 1, child_indices(differ)


# ====================================================================== a node's trees


class RangeTrees:
    """One :class:`MerkleTree` per ring range a node replicates, found by key hash.

    Ranges must not overlap (token ranges never do). At most one of them wraps past the top
    of the ring; the rest are kept sorted by end so a lookup is one binary search.
    """

    __slots__ = ("_by_range", "_depth", "_ends", "_trees", "_wrap")

    def __init__(self, ranges: Iterable[tuple[int, int]], depth: int = DEFAULT_DEPTH,
                 keep: RangeTrees | None = None) -> None:
        """Trees for ``ranges``; those ``keep`` holds for exactly the same range are adopted.

        Adopting is what fixed partitions buy (strategies 2 and 3): after a membership
        change, every partition this node still replicates keeps its tree as it is.
        """
        self._depth = depth
        kept = keep._by_range if keep is not None and keep.depth == depth else {}
        trees = [kept[(start, end)] if (start, end) in kept else MerkleTree(start, end, depth)
                 for start, end in ranges]
        straight = sorted((t for t in trees if t.start < t.end), key=lambda t: t.end)
        wrapping = [t for t in trees if t.start >= t.end]
        _check_disjoint(straight, wrapping)
        self._trees: list[MerkleTree] = straight
        self._ends: list[int] = [t.end for t in straight]
        self._wrap: MerkleTree | None = wrapping[0] if wrapping else None
        self._by_range: dict[tuple[int, int], MerkleTree] = {(t.start, t.end): t for t in trees}

    @property
    def depth(self) -> int:
        return self._depth

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges held, ordered by end (the wrapping one, if any, last)."""
        return [(t.start, t.end) for t in self.trees()]

    def trees(self) -> list[MerkleTree]:
        """The trees, in the order of :meth:`ranges`."""
        return self._trees + ([self._wrap] if self._wrap is not None else [])

    def tree_of_range(self, start: int, end: int) -> MerkleTree | None:
        """The tree of exactly the range ``(start, end]`` (what a peer names in a request)."""
        return self._by_range.get((start, end))

    def tree_for(self, h: int) -> MerkleTree | None:
        """The tree whose range contains hash ``h``, or ``None`` if no range does."""
        i = bisect_left(self._ends, h)
        if i < len(self._trees) and self._trees[i].start < h:
            return self._trees[i]
        if self._wrap is not None and self._wrap.covers(h):
            return self._wrap
        return None

    def update(self, bucket: str, key: str, old_versions: Sequence[Version],
               new_versions: Sequence[Version], h: int | None = None) -> bool | None:
        """A write changed ``key``'s versions; update its tree (``h``: the key's hash,
        when the caller has it).

        Returns ``None`` when no range held covers the key (nothing to do), else whether the
        tree's record matched ``old_versions`` (see :meth:`MerkleTree.update`).
        """
        h = key_hash(bucket, key) if h is None else h
        tree = self.tree_for(h)
        if tree is None:
            return None
        return tree.update(bucket, key, h, key_digest(old_versions), key_digest(new_versions))

    def rebuild(self, items: Iterable[tuple[str, str, Sequence[Version]]]) -> int:
        """Refill every tree from a storage scan of ``(bucket, key, versions)``.

        Keys in no held range are skipped. Returns how many keys went into a tree.
        """
        for held in self.trees():
            held.clear()
        placed = 0
        for bucket, key, versions in items:
            h = key_hash(bucket, key)
            tree = self.tree_for(h)
            if tree is not None and versions:
                tree.set_digest(bucket, key, h, key_digest(versions))
                placed += 1
        return placed


def _check_disjoint(straight: list[MerkleTree], wrapping: list[MerkleTree]) -> None:
    """Refuse overlapping ranges: a key must belong to exactly one tree."""
    if len(wrapping) > 1 or (wrapping and wrapping[0].start == wrapping[0].end and straight):
        raise ValueError("ranges overlap: at most one range may wrap past the top of the ring")
    for before, after in itertools.pairwise(straight):
        if after.start < before.end:
            raise ValueError(f"ranges overlap near {before.end:#x}")
    if wrapping and straight:
        wrap = wrapping[0]
        if straight[0].start < wrap.end or straight[-1].end > wrap.start:
            raise ValueError("ranges overlap the range that wraps past the top of the ring")
