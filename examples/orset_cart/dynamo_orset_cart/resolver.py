"""The ``orset-cart`` resolver: the server-side (and client-side) merge of cart siblings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamo_core.hookspecs import Resolver, Sibling, hookimpl

from . import state as orset


class OrSetCart:
    """Merges concurrent OR-set cart siblings into one state (see :mod:`.state`).

    The merge is a join, so the answer is independent of the order and grouping of the
    siblings and of duplicates: every node computes the same cart. A sibling whose value is
    ``None`` counts as the empty cart. Any other value that is not an orset-cart state makes
    ``resolve`` raise :class:`~.state.InvalidCartState` (a ``ValueError``) naming the
    sibling's dot and the problem, rather than drop that writer's cart: the core writes the
    merge back, so a skipped sibling would be superseded and lost for good. Such a key can
    still be read with ``get(..., resolve=False)`` and repaired by a put with that read's
    context.
    """

    def resolve(self, siblings: Sequence[Sibling]) -> dict[str, Any]:
        """The merged state, in its canonical stored form (also for a single sibling)."""
        if not siblings:
            raise ValueError("cannot resolve an empty list of siblings")
        states = []
        for sibling in siblings:
            try:
                states.append(orset.parse(sibling.value))
            except orset.InvalidCartState as exc:
                actor, counter = sibling.dot
                raise orset.InvalidCartState(f"orset-cart: sibling {actor}:{counter} is not an "
                                 f"orset-cart state: {exc}") from None
        return orset.to_value(orset.merge_states(states))


@hookimpl
def dynamo_resolvers() -> Mapping[str, Resolver]:
    """Offer the resolver under the name a bucket's ``resolver`` setting selects."""
    return {"orset-cart": OrSetCart()}
