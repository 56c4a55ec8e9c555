"""Partition strategies (the paper's section 6.2) offered as the ``dynamo`` plugin.

``strategy-1``: every member picks T random tokens, T proportional to its declared
capacity, and announces them through gossip. The ring is simply the union of everyone's
tokens, so members that have gossiped the same membership compute the same ring.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from dynamo_core.hookspecs import RING_BITS, MemberInfo, PartitionStrategy, hookimpl

#: Tokens per unit of capacity when ``[partitioning] tokens_per_capacity`` is not set.
DEFAULT_TOKENS_PER_CAPACITY = 64


def _positive_int(value: Any, what: str) -> int:
    # bool is an int subclass, but `capacity = true` in a config is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return value


class RandomTokens:
    """Strategy 1: T random tokens per member, T = capacity x ``tokens_per_capacity``."""

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


@hookimpl
def dynamo_partition_strategies() -> Mapping[str, PartitionStrategy]:
    """Offer strategy 1 under the name ``[partitioning] strategy`` selects."""
    return {"strategy-1": RandomTokens()}
