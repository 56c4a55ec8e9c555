"""The ``last-write-wins`` resolver: the sibling with the latest timestamp wins.

It trades lost concurrent updates for a single, simple value, which suits data where the
newest write is the truth (a session, a profile). Ties on the timestamp are broken by the
sibling's dot and then its value, so every node drops the same losers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamo_core.hookspecs import DELETED, Resolver, Sibling, hookimpl
from dynamo_resolvers._common import latest


class LastWriteWins:
    """Keeps the value of the latest sibling in the shared version order.

    Deletes count as writes: a delete later than a concurrent update wins over it.
    """

    sees_tombstones = True

    def resolve(self, siblings: Sequence[Sibling]) -> Any:
        """The latest sibling's value, unchanged, or DELETED if the latest was a delete."""
        winner = latest(siblings)
        return DELETED if winner.tombstone else winner.value


@hookimpl
def dynamo_resolvers() -> Mapping[str, Resolver]:
    """Offer the resolver under the name a bucket's ``resolver`` setting selects."""
    return {"last-write-wins": LastWriteWins()}
