"""The ``cart-union`` resolver: the paper's shopping cart, where an "add to cart" is never lost.

Siblings are merged by shape, all of them sharing one shape:

* a **list of items**: the union, each item once, in order of first appearance when the
  siblings are read oldest first. Items may be unhashable (dicts), so they are compared by
  their canonical CBOR encoding.
* a **mapping item -> quantity** (numbers): every item, with the largest quantity any
  sibling holds. Items are the mapping's keys, compared as a dict compares them.
* an **envelope** ``{"items": <list or mapping>, ...}``: the ``items`` merged as above, every
  other field taken from the latest sibling (latest timestamp, ties by dot).

Siblings of mixed or other shapes (an int, a list beside a mapping) have no meaningful
union, so rather than fail a read the resolver falls back to the last-write-wins choice.
As in the paper, an item removed in one sibling but present in a concurrent one comes back:
a union cannot tell a removal from an item never added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamo_core.hookspecs import Resolver, Sibling, hookimpl
from dynamo_resolvers._common import by_version, canonical, is_number


def is_quantity_map(value: Any) -> bool:
    """Whether ``value`` is a cart of item -> quantity."""
    return isinstance(value, Mapping) and all(is_number(q) for q in value.values())


def is_envelope(value: Any) -> bool:
    """Whether ``value`` wraps its cart in an ``items`` field beside other fields."""
    return isinstance(value, Mapping) and isinstance(value.get("items"), (list, Mapping))


def union_lists(carts: Sequence[list[Any]]) -> list[Any]:
    """Every item of ``carts`` once, in order of first appearance."""
    seen: set[bytes] = set()
    merged: list[Any] = []
    for cart in carts:
        for item in cart:
            identity = canonical(item)
            if identity not in seen:
                seen.add(identity)
                merged.append(item)
    return merged


def max_quantities(carts: Sequence[Mapping[Any, Any]]) -> dict[Any, Any]:
    """Every item of ``carts`` with the largest quantity; an earlier cart wins a tie."""
    merged: dict[Any, Any] = {}
    for cart in carts:
        for item, quantity in cart.items():
            if item not in merged or quantity > merged[item]:
                merged[item] = quantity
    return merged


def merge_carts(carts: Sequence[Any]) -> Any:
    """The union of ``carts`` (oldest first), or the latest one if they share no shape."""
    if all(isinstance(cart, list) for cart in carts):
        return union_lists(carts)
    if all(is_quantity_map(cart) for cart in carts):
        return max_quantities(carts)
    if all(is_envelope(cart) for cart in carts):
        return {**carts[-1], "items": merge_carts([cart["items"] for cart in carts])}
    return carts[-1]


class CartUnion:
    """Merges concurrent carts so that no added item is lost."""

    def resolve(self, siblings: Sequence[Sibling]) -> Any:
        """The merged cart; a single sibling's value is returned as it is, duplicates and all."""
        if len(siblings) == 1:
            return siblings[0].value
        return merge_carts([s.value for s in by_version(siblings)])


@hookimpl
def dynamo_resolvers() -> Mapping[str, Resolver]:
    """Offer the resolver under the name a bucket's ``resolver`` setting selects."""
    return {"cart-union": CartUnion()}
