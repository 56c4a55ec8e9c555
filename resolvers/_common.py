"""Helpers the built-in resolvers share.

Every node must pick the same winner from the same siblings, whatever order replicas
answered in, so the resolvers never rely on the order of their input. They sort siblings
by a total *version order* first and only then decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cbor2

from dynamo_core.hookspecs import Sibling


def canonical(value: Any) -> bytes:
    """The canonical CBOR encoding of ``value``.

    Values arrive as CBOR, so their canonical encoding is a total, content-based identity
    that also covers unhashable values (lists, dicts) and tells ``1``, ``1.0`` and ``True``
    apart; comparing these bytes is the same on every node.
    """
    return cbor2.dumps(value, canonical=True)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a number a resolver can rank by.

    ``bool`` is excluded because ``True`` is a flag, not a score or quantity; NaN is excluded
    because it is unordered, so ranking by it would depend on the order of the siblings.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not (isinstance(value, float) and math.isnan(value))


def version_key(sibling: Sibling) -> tuple[float, tuple[str, int], bytes]:
    """The key of the version order: timestamp, then dot, then the value's content.

    The dot separates equal timestamps (clocks are coarse, writers are many); the value is
    compared last only so that the order is total even for malformed, duplicated dots. The
    dot is rebuilt as a tuple because one that crossed the wire may arrive as a CBOR array.
    """
    return sibling.timestamp, tuple(sibling.dot), canonical(sibling.value)


def by_version(siblings: Sequence[Sibling]) -> list[Sibling]:
    """``siblings`` sorted oldest first, latest last, in the version order.

    Raises ``ValueError`` when there is nothing to resolve: the core hands resolvers live
    siblings only, so an empty list is a caller's bug, not a value to invent.
    """
    if not siblings:
        raise ValueError("cannot resolve an empty list of siblings")
    return sorted(siblings, key=version_key)


def latest(siblings: Sequence[Sibling]) -> Sibling:
    """The sibling last-write-wins keeps: the latest in the version order."""
    return by_version(siblings)[-1]
