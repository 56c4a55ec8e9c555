"""The ``max-score`` resolver: the sibling with the largest score wins.

Made for leaderboards and high-water marks, where a score only ever goes up and the best of
two concurrent writes is the right one. A sibling's score is its value when that is a number
(``bool`` is not), or the ``score`` field of a mapping value. Siblings without a usable score
lose to any sibling with one; if none has a score the resolver falls back to
last-write-wins, so it still returns one value rather than failing a read. Equal scores are
broken by the shared version order (latest wins), so every node keeps the same sibling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamo_core.hookspecs import Resolver, Sibling, hookimpl
from dynamo_resolvers._common import is_number, latest, version_key


def score_of(value: Any) -> int | float | None:
    """The score ``value`` carries, or ``None`` when it has no usable one."""
    if is_number(value):
        return value
    if isinstance(value, Mapping) and is_number(value.get("score")):
        return value["score"]
    return None


class MaxScore:
    """Keeps the value of the highest-scoring sibling."""

    def resolve(self, siblings: Sequence[Sibling]) -> Any:
        """The best-scoring sibling's value, or the latest one's if none has a score."""
        scored = [(score, s) for s in siblings if (score := score_of(s.value)) is not None]
        if not scored:
            return latest(siblings).value
        _, best = max(scored, key=lambda pair: (pair[0], version_key(pair[1])))
        return best.value


@hookimpl
def dynamo_resolvers() -> Mapping[str, Resolver]:
    """Offer the resolver under the name a bucket's ``resolver`` setting selects."""
    return {"max-score": MaxScore()}
