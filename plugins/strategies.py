"""The paper's three partition strategies (section 6.2), offered as the ``dynamo`` plugin.

``strategy-1``
    Every member picks T random tokens, T = capacity x ``tokens_per_capacity``, and
    announces them through gossip. A key belongs to the token range it falls in, so ranges
    are of random sizes and change whenever a member joins or leaves.
``strategy-2``
    The same random tokens, but the hash space is also cut into Q equal partitions
    (``partitions``). Tokens only decide where a partition goes: it is placed by walking
    the ring from the partition's end. Ranges are fixed; placement is still random.
``strategy-3`` (the default)
    Q equal partitions and Q/S tokens per member: each partition's end is a token, owned
    by exactly one member, each member owning a share of the Q proportional to its
    capacity (within one partition). Members announce no tokens: the assignment follows
    from the member records gossip carries, so every node that knows the same records
    computes the same ring.

Strategy 3 keeps the assignment as state, as the paper does, without storing it: the state
is the replay of the cluster's history, which the member records carry. Each record has a
join order and, once the member left the ring, a leave order, stamped through gossip as 1 +
the highest order the stamping node knows (:mod:`dynamo_core.membership`); events sort by
order, leaves before joins, then by name. The first member takes all Q partitions. A joiner
takes partitions one at a time from the member holding the most above its capacity-weighted
share, while that lowers the imbalance (with equal capacities it ends with the floor or
the ceiling of Q/S, S counting it); a leaver's partitions go one at a time to the member
furthest below its share. Which
partitions go is a pseudo-random affinity of each member for each partition: a donor gives
those it likes least. With equal capacities every member holds the floor or the ceiling of
Q/S (a join or leave keeps the counts within one of each other), so a join moves exactly
the joiner's partitions and a leave the leaver's; mixed capacities are kept within one
partition of their share too, by an evening-out pass in the rare histories where the steps
alone miss it. Measured (``tests/test_strategies.py``): a join moves 0.97x to 1.0x the
ideal Q/(S+1) at S = 4, 8 and 30 with Q = 256 or 1024 (never more than the ideal rounded
up: 1.09x at S = 30, Q = 256); a leave moves the leaver's partitions and nothing else,
whether it joined last or long ago; the largest share is the ideal rounded up. Building the
ring takes about 4 ms at Q = 1024, S = 30 (it replays S joins), 15 ms once 100 members have
come and gone.

The trade-offs of a replayed history:

* Departed members stay in it. The strategy sets ``sees_departed``, so it is also handed
  the records of members that left (removals are kept as tombstones anyway). Replayed
  without a member that joined long ago, as if it had never been there, every later join
  is dealt anew: 15x its share would move (a middle member at S = 30, Q = 256 or 1024).
  The cost is the replay growing with the history: about 0.1 ms per member that came and
  went, at Q = 1024.
* Orders are only as good as what the stamping node knows. A node that joins through a
  seed that does not know the whole cluster yet may take an order below an event it has
  not heard of; its join is then replayed before that event and what was dealt after it is
  dealt anew. Concurrent joins (or leaves) tie on their order and are ordered by name:
  once gossip has spread their records, every node computes the same ring.
* A removed member told to join again keeps its join order and drops its leave: with
  nothing in between, the ring is exactly the one from before its removal; with joins in
  between, what was dealt since it left is dealt anew (2.5x its share with one join
  between, at S = 30, Q = 256). A new order would forget its first stint: 16x.
* A capacity change re-deals the history as if the member always had that capacity.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import heapq
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from dynamo_core.hookspecs import (
    MAX_PARTITIONS,
    RING_BITS,
    MemberInfo,
    PartitionStrategy,
    hookimpl,
    partition_ends,
)

#: Tokens per unit of capacity when ``[partitioning] tokens_per_capacity`` is not set.
DEFAULT_TOKENS_PER_CAPACITY = 64
#: Q when ``[partitioning] partitions`` is not set. Strategy 3 needs Q >= members; strategy
#: 2 wants Q well above the total token count, so that partitions are finer than ranges.
DEFAULT_PARTITIONS = {"strategy-2": 1024, "strategy-3": 256}


def _positive_int(value: Any, what: str, high: int | None = None) -> int:
    # bool is an int subclass, but `capacity = true` in a config is a mistake, not 1.
    if (not isinstance(value, int) or isinstance(value, bool) or value < 1
            or (high is not None and value > high)):
        bound = f" and at most {high}" if high is not None else ""
        raise ValueError(f"{what} must be an integer >= 1{bound}, got {value!r}")
    return value


def _check_options(options: Mapping[str, Any], name: str, known: frozenset[str]) -> None:
    """Refuse settings this strategy does not read: a typo must not go unnoticed."""
    unknown = sorted(set(options) - known - {"strategy"})
    if unknown:
        raise ValueError(f"[partitioning] {', '.join(unknown)} not used by {name} "
                         f"(it reads: {', '.join(sorted(known))})")


class RandomTokens:
    """Strategy 1: T random tokens per member, T = capacity x ``tokens_per_capacity``."""

    name = "strategy-1"
    options: ClassVar[frozenset[str]] = frozenset({"tokens_per_capacity"})

    def partition_count(self, options: Mapping[str, Any]) -> int | None:
        """None: the token ranges are the partitions."""
        _check_options(options, self.name, self.options)
        return None

    def initial_tokens(
        self, name: str, capacity: int, options: Mapping[str, Any], rng: random.Random
    ) -> list[int]:
        """Distinct random tokens for a new member, sorted so announcements are canonical."""
        per_capacity = _positive_int(
            options.get("tokens_per_capacity", DEFAULT_TOKENS_PER_CAPACITY),
            "[partitioning] tokens_per_capacity",
        )
        count = _positive_int(capacity, f"capacity of {name!r}") * per_capacity
        tokens: set[int] = set()
        while len(tokens) < count:
            tokens.add(rng.getrandbits(RING_BITS))
        return sorted(tokens)

    def ring_tokens(
        self, members: Sequence[MemberInfo], options: Mapping[str, Any]
    ) -> dict[int, str]:
        """Union of the members' tokens; a token claimed twice goes to the smaller name.

        Random 128-bit collisions are practically impossible, but a buggy or hostile
        announcement must still resolve the same way on every node, whatever the order
        members are listed in.
        """
        ring: dict[int, str] = {}
        for member in members:
            for token in member.tokens:
                holder = ring.get(token)
                if holder is None or member.name < holder:
                    ring[token] = member.name
        return ring


def _partitions(options: Mapping[str, Any], name: str) -> int:
    return _positive_int(options.get("partitions", DEFAULT_PARTITIONS[name]),
                         "[partitioning] partitions", MAX_PARTITIONS)


class RandomTokensEqualPartitions(RandomTokens):
    """Strategy 2: strategy 1's random tokens place Q fixed, equal partitions."""

    name = "strategy-2"
    options: ClassVar[frozenset[str]] = frozenset({"tokens_per_capacity", "partitions"})

    def partition_count(self, options: Mapping[str, Any]) -> int | None:
        _check_options(options, self.name, self.options)
        return _partitions(options, self.name)


class EqualPartitions:
    """Strategy 3: Q equal partitions, each member owning about Q x capacity / total of them."""

    name = "strategy-3"
    options: ClassVar[frozenset[str]] = frozenset({"partitions"})
    #: ``ring_tokens`` replays the departed members' joins and leaves too
    sees_departed = True

    def partition_count(self, options: Mapping[str, Any]) -> int | None:
        _check_options(options, self.name, self.options)
        return _partitions(options, self.name)

    def initial_tokens(
        self, name: str, capacity: int, options: Mapping[str, Any], rng: random.Random
    ) -> list[int]:
        """Nothing to announce: a member's partitions follow from the membership."""
        _positive_int(capacity, f"capacity of {name!r}")
        return []

    def ring_tokens(
        self, members: Sequence[MemberInfo], options: Mapping[str, Any]
    ) -> dict[int, str]:
        """Every partition's end, owned by the member the replayed history leaves it with."""
        q = _partitions(options, self.name)
        if not any(m.leave_order == 0 for m in members):
            return {}
        ends = partition_ends(q)
        held = _replay(_history(members), q)
        return {ends[k]: name for name, partitions in held.items() for k in partitions}


#: Where a member that has not chosen its join order yet sorts: after every event.
_NEWEST = 1 << 63
_JOIN, _LEAVE = 1, 0  # at one order, leaves sort first
_MASK64 = (1 << 64) - 1

_Event = tuple[int, int, str, MemberInfo]


def _history(members: Iterable[MemberInfo]) -> list[_Event]:
    """The joins and leaves the members' records tell of, oldest first.

    Events sort by order, then leaves before joins, then name: a total order every node
    agrees on. A departed member whose record does not place its leave after its join (it
    never chose a join order, or its records raced) is left out of the history.
    """
    # Names are unique in a membership; given twice, one record is kept, whatever the order.
    records: dict[str, MemberInfo] = {}
    for m in members:
        kept = records.get(m.name)
        if kept is None or _precedence(m) > _precedence(kept):
            records[m.name] = m
    events: list[_Event] = []
    for m in records.values():
        if m.leave_order == 0:
            events.append((m.join_order or _NEWEST, _JOIN, m.name, m))
        elif 0 < m.join_order < m.leave_order:
            events += [(m.join_order, _JOIN, m.name, m), (m.leave_order, _LEAVE, m.name, m)]
    events.sort(key=lambda e: e[:3])
    return events


def _precedence(m: MemberInfo) -> tuple[bool, int, int, int]:
    """Of two records of one name, the one on the ring wins, then the later one."""
    return m.leave_order == 0, m.join_order, m.leave_order, m.capacity


def _replay(events: Iterable[_Event], q: int) -> dict[str, list[int]]:
    """Partitions each member holds after the events, as the paper's strategy 3 deals them.

    The first member takes all Q. A joiner takes partitions one at a time from the member
    holding the most above its capacity-weighted share, while that lowers the imbalance; a
    leaver's partitions go one at a time to the member the furthest below its share.
    Members rank partitions by a pseudo-random affinity: a donor gives away those it has
    the least affinity for; a leaver's are dealt out in its order of affinity, the takers
    by name.

    Shares are compared exactly, as ``held x total - Q x capacity`` (the excess over the
    share, in 1/total of a partition). Every member then ends within one partition of its
    share: with equal capacities the steps alone keep it, and :func:`_even_out` restores it
    in the rare histories of mixed capacities where they do not.
    """
    held: dict[str, _Holding] = {}
    capacity: dict[str, int] = {}
    total = 0
    for _, kind, name, member in events:
        if kind == _JOIN:
            capacity[name] = member.capacity
            total += member.capacity
            if not held:
                held[name] = _Holding(name, q, range(q))
            else:
                _join(held, capacity, total, q, name)
        else:
            gone = held.pop(name)
            total -= capacity.pop(name)
            if held:
                _leave(held, capacity, total, q, gone)
    return {name: holding.partitions() for name, holding in held.items()}


class _Holding:
    """The partitions one member holds, kept by affinity: least liked last."""

    __slots__ = ("_by_affinity", "_ranks", "_seed")

    def __init__(self, name: str, q: int, partitions: Iterable[int]) -> None:
        self._seed = _seed(name)
        self._ranks = _ranks(q)
        self._by_affinity = sorted(self._keyed(partitions))

    def _keyed(self, partitions: Iterable[int]) -> list[tuple[int, int]]:
        ranks, seed = self._ranks, self._seed
        return [(_mix(ranks[k] ^ seed), k) for k in partitions]

    def __len__(self) -> int:
        return len(self._by_affinity)

    def give(self, count: int) -> list[int]:
        """Remove and return the ``count`` partitions this member likes least."""
        given = self._by_affinity[len(self._by_affinity) - count:]
        del self._by_affinity[len(self._by_affinity) - count:]
        return [k for _, k in given]

    def take(self, partitions: Iterable[int]) -> None:
        for item in self._keyed(partitions):
            bisect.insort(self._by_affinity, item)

    def partitions(self) -> list[int]:
        return [k for _, k in self._by_affinity]


def _join(held: dict[str, _Holding], capacity: Mapping[str, int], total: int, q: int,
          name: str) -> None:
    # A max-heap (negated) of the old members' excess over their share.
    heap = [(q * capacity[m] - len(holding) * total, m) for m, holding in held.items()]
    heapq.heapify(heap)
    mine = -q * capacity[name]  # the joiner's excess: it holds nothing yet
    counts: dict[str, int] = {}
    while -heap[0][0] - mine > total:  # moving one partition lowers the imbalance
        excess, donor = heap[0]
        heapq.heapreplace(heap, (excess + total, donor))
        counts[donor] = counts.get(donor, 0) + 1
        mine += total
    taken = [k for donor, count in counts.items() for k in held[donor].give(count)]
    held[name] = _Holding(name, q, taken)
    if -heap[0][0] >= total or mine >= total:
        _even_out(held, capacity, total, q)


def _leave(held: dict[str, _Holding], capacity: Mapping[str, int], total: int, q: int,
           gone: _Holding) -> None:
    # A min-heap of the staying members' excess over their (now larger) share.
    heap = [(len(holding) * total - q * capacity[m], m) for m, holding in held.items()]
    heapq.heapify(heap)
    counts: dict[str, int] = {}
    for _ in range(len(gone)):
        excess, taker = heap[0]
        heapq.heapreplace(heap, (excess + total, taker))
        counts[taker] = counts.get(taker, 0) + 1
    left = gone.partitions()  # dealt out in the leaver's order of affinity
    for taker in sorted(counts):
        held[taker].take(left[:counts[taker]])
        del left[:counts[taker]]
    if heap[0][0] <= -total:
        _even_out(held, capacity, total, q)


def _even_out(held: dict[str, _Holding], capacity: Mapping[str, int], total: int,
              q: int) -> None:
    """Move partitions from the most to the least loaded member until every member is
    within one partition of its share (each move lowers the sum of squared excesses)."""
    while True:
        excess = {m: len(holding) * total - q * capacity[m] for m, holding in held.items()}
        high = max(excess, key=lambda m: (excess[m], m))
        low = min(excess, key=lambda m: (excess[m], m))
        if excess[high] < total and excess[low] > -total:
            return
        held[low].take(held[high].give(1))


@functools.lru_cache(maxsize=1024)
def _seed(name: str) -> int:
    digest = hashlib.md5(name.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big")


@functools.lru_cache(maxsize=8)
def _ranks(q: int) -> tuple[int, ...]:
    """A pseudo-random 64-bit label per partition; a member's affinity for partition k is
    ``_mix(label[k] ^ seed)``, distinct across k (``_mix`` is a bijection)."""
    return tuple(_mix(k + 0x9E3779B97F4A7C15) for k in range(q))


def _mix(x: int) -> int:
    """SplitMix64's finalizer: a bijection of 64-bit integers that scatters every bit."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@hookimpl
def dynamo_partition_strategies() -> Mapping[str, PartitionStrategy]:
    """Offer the three strategies under the names ``[partitioning] strategy`` selects."""
    return {s.name: s for s in (RandomTokens(), RandomTokensEqualPartitions(), EqualPartitions())}
