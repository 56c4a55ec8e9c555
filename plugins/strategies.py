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
    capacity (give or take one). Members announce no tokens: the assignment is a pure
    function of the membership, so every node that knows the same members computes the
    same ring.

Strategy 3's assignment is a capacity-bounded rendezvous: every (partition, member) pair
gets a pseudo-random score from a hash of both names, and pairs are taken best score first
while the member still has room under its quota. It needs no coordination: any node that
knows the members computes the same ring. A member that joins takes the partitions where it
scores best, exactly its quota; but because every quota shrinks a little, a few partitions
also change hands among the other members. Measured (tests/test_strategies.py): a join moves
1.1x the ideal 1/(S+1) of the partitions at S=4, 1.2-1.3x at S=8, and about 2.3x at S=30 with
the default Q=256 (1.7x with Q=1024): keep Q at least ~30 times the largest cluster expected.
The paper's own strategy 3 keeps the assignment as state and moves exactly 1/S; doing that
here needs join and leave times in the gossiped member records (a known limit).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
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
        """Every partition's end, owned by the member the bounded rendezvous gives it."""
        q = _partitions(options, self.name)
        if not members:
            return {}
        quotas = _quotas(members, q)
        ends = partition_ends(q)
        pairs = sorted(((_score(m.name, k), m.name, k) for m in members for k in range(q)),
                       reverse=True)
        owner: dict[int, str] = {}
        room = dict(quotas)
        for _, name, k in pairs:
            if k not in owner and room[name] > 0:
                owner[k] = name
                room[name] -= 1
        return {ends[k]: name for k, name in owner.items()}


def _quotas(members: Sequence[MemberInfo], q: int) -> dict[str, int]:
    """Partitions per member: Q split by capacity, the remainders to the largest fractions.

    Ties go to the smaller name, so every node computes the same split. A membership
    larger than Q leaves some members without a partition (they still serve requests).
    """
    total = sum(m.capacity for m in members)
    exact = {m.name: q * m.capacity / total for m in members}
    quotas = {name: int(share) for name, share in exact.items()}
    left = q - sum(quotas.values())
    by_fraction = sorted(exact, key=lambda name: (-(exact[name] - quotas[name]), name))
    for name in by_fraction[:left]:
        quotas[name] += 1
    return quotas


def _score(member: str, partition: int) -> int:
    """The pseudo-random affinity of a member for a partition, the same on every node."""
    digest = hashlib.md5(f"{member}\x00{partition}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big")


@hookimpl
def dynamo_partition_strategies() -> Mapping[str, PartitionStrategy]:
    """Offer the three strategies under the names ``[partitioning] strategy`` selects."""
    return {s.name: s for s in (RandomTokens(), RandomTokensEqualPartitions(), EqualPartitions())}
