"""The OR-set cart state: its stored format, its validation and its merge.

An add-wins observed-remove set with bounded metadata (optimized OR-set: dots plus a causal
context, as in Bieniusa et al. 2012 and delta-state CRDTs). Every *add* of an item is an event
named by a **dot** ``(actor, counter)``; the **context** records, per actor, the largest
counter whose events this state has seen (all of them: actor ``a`` at ``5`` means ``a:1 ..
a:5``). An item is in the cart while at least one of its dots is.

* **add** issues a fresh dot ``(actor, context[actor] + 1)`` and makes it the item's only dot:
  the dots this replica saw for the item are superseded, the way a write supersedes the
  versions its context covers.
* **remove** drops the item's dots and keeps the context, which is how the state remembers
  that those adds were seen and removed rather than never heard of.
* **merge** of two states keeps a dot of an item if both states have it, or if one has it and
  the other's context does not cover it (the other never saw that add, so it cannot have
  removed it); contexts take the per-actor maximum. So a removal beats the adds it saw, a
  concurrent add (a dot the remover never saw) beats the removal, and nothing comes back.

Stored value (a CBOR/JSON-friendly map, text keys only; written by :func:`to_value`)::

    {"v": 1,
     "items": {"book": {"phone-7": 3},             # one dot: actor -> counter, quantity 1
               "pen":  {"laptop": [2, 4]}},        # actor -> [counter, quantity]
     "context": {"laptop": 2, "phone-7": 3}}       # actor -> largest counter seen

An item keeps at most one dot per actor (its newest): a newer add by the same actor was made
from a state that had seen the older one and superseded it, so the older dot can never
survive a merge next to the newer one; the map ``actor -> dot`` makes that bound structural.
Metadata is therefore at most one context entry per actor that ever wrote the cart plus, per
item, one dot per actor whose add of it is still live (usually one).

A quantity rides on its dot. An item's quantity is the largest quantity among its surviving
dots: adds that did not see each other keep the larger one, as ``cart-union`` does; an add
that saw the earlier ones replaces them, so lowering a quantity works. Quantities are not
counters: two concurrent "+1"s give one, not two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The ``"v"`` field of a stored state. A state without it is read as this version.
FORMAT_VERSION = 1

class InvalidCartState(ValueError):
    """A value that is not an orset-cart state; the message says where and why."""


#: One live add: ``(counter, quantity)``; the actor is the key it is stored under.
Dot = tuple[int, int]


@dataclass
class CartState:
    """A decoded, validated OR-set cart state.

    ``items`` maps item -> actor -> (counter, quantity); ``context`` maps actor -> the
    largest counter seen. Invariant: every dot is covered by the context, and no item has an
    empty dot map. Functions here return new states; :class:`Cart` wraps one mutably.
    """

    items: dict[str, dict[str, Dot]] = field(default_factory=dict)
    context: dict[str, int] = field(default_factory=dict)

    def copy(self) -> CartState:
        """A copy sharing nothing mutable (dots are tuples)."""
        return CartState({item: dict(dots) for item, dots in self.items.items()},
                         dict(self.context))

    def quantity(self, item: str) -> int:
        """The item's quantity (0 when it is not in the cart)."""
        dots = self.items.get(item)
        return max(q for _, q in dots.values()) if dots else 0

    def contents(self) -> dict[str, int]:
        """item -> quantity, sorted by item, so that every reader sees the same order."""
        return {item: self.quantity(item) for item in sorted(self.items)}


# --------------------------------------------------------------------------- parsing


def _is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is a flag, not a counter)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _name(value: Any, what: str, error: type[ValueError] = InvalidCartState) -> str:
    if not isinstance(value, str) or not value:
        raise error(f"{what} must be non-empty text, got {value!r}")
    return value


def _parse_dot(entry: Any, where: str) -> Dot:
    if _is_int(entry):
        counter, quantity = entry, 1
    elif isinstance(entry, (list, tuple)) and len(entry) == 2 and all(map(_is_int, entry)):
        counter, quantity = entry
    else:
        raise InvalidCartState(f"{where} must be a counter or [counter, quantity] of integers, "
                               f"got {entry!r}")
    if counter < 1 or quantity < 1:
        raise InvalidCartState(f"{where}: counter and quantity must be at least 1, "
                               f"got {entry!r}")
    return counter, quantity


def parse(value: Any) -> CartState:
    """The state stored as ``value``; ``None`` (nothing stored yet) is the empty cart.

    Raises :class:`InvalidCartState` (a ``ValueError``) saying exactly what is wrong for
    anything else that is not a state :func:`to_value` could have written. Nothing malformed
    is skipped silently: a merge that dropped a sibling it could not read would lose that
    writer's cart for good.
    """
    if value is None:
        return CartState()
    if not isinstance(value, Mapping):
        raise InvalidCartState(f"expected an orset-cart state (a map with items and context), "
                               f"got {type(value).__name__} {_short(value)}")
    unknown = sorted(map(repr, set(value) - {"v", "items", "context"}))
    if unknown:
        raise InvalidCartState(f"unknown field(s) {', '.join(unknown)} in an orset-cart state "
                               f"(fields: v, items, context)")
    version = value.get("v", FORMAT_VERSION)
    if version != FORMAT_VERSION or not _is_int(version):
        raise InvalidCartState(f"unsupported orset-cart format version {version!r} "
                               f"(this package reads {FORMAT_VERSION})")
    for name in ("items", "context"):
        if not isinstance(value.get(name), Mapping):
            raise InvalidCartState(f"an orset-cart state needs a map {name!r}, "
                                   f"got {_short(value.get(name))}")
    context: dict[str, int] = {}
    for actor, counter in value["context"].items():
        _name(actor, "an actor in context")
        if not _is_int(counter) or counter < 1:
            raise InvalidCartState(f"context[{actor!r}] must be an integer >= 1, "
                                   f"got {counter!r}")
        context[actor] = counter
    items: dict[str, dict[str, Dot]] = {}
    for item, dots in value["items"].items():
        _name(item, "an item")
        if not isinstance(dots, Mapping):
            raise InvalidCartState(f"items[{item!r}] must be a map actor -> dot, "
                                   f"got {_short(dots)}")
        parsed: dict[str, Dot] = {}
        for actor, entry in dots.items():
            _name(actor, f"an actor in items[{item!r}]")
            where = f"items[{item!r}][{actor!r}]"
            parsed[actor] = dot = _parse_dot(entry, where)
            if dot[0] > context.get(actor, 0):
                raise InvalidCartState(f"{where}: dot {actor}:{dot[0]} is not covered by the "
                                       f"context ({actor}: {context.get(actor, 0)})")
        if parsed:  # an item with no dot is simply not in the cart
            items[item] = parsed
    return CartState(items, context)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def to_value(state: CartState) -> dict[str, Any]:
    """The value to store: canonical (sorted keys, bare counters for quantity 1).

    Two equal states always give the same value, so replicas that merged the same siblings
    store identical bytes.
    """
    items = {}
    for item in sorted(state.items):
        dots = state.items[item]
        items[item] = {actor: counter if quantity == 1 else [counter, quantity]
                       for actor, (counter, quantity) in sorted(dots.items())}
    return {"v": FORMAT_VERSION, "items": items,
            "context": dict(sorted(state.context.items()))}


# --------------------------------------------------------------------------- the merge


def _survivor(mine: Dot | None, theirs: Dot | None, my_seen: int, their_seen: int) -> Dot | None:
    """The dot of one actor for one item that a merge keeps, if any.

    Symmetric in (mine, my_seen) <-> (theirs, their_seen), which makes the merge commutative.
    Equal counters are the same add; the larger quantity settles a disagreement, which only a
    reused dot can cause. Two different dots can both survive only in states that break the
    invariant (a dot not covered by its own context), so keeping the newer one is a guard.
    """
    if mine is not None and theirs is not None and mine[0] == theirs[0]:
        return mine[0], max(mine[1], theirs[1])
    kept = [d for d, seen_by_other in ((mine, their_seen), (theirs, my_seen))
            if d is not None and d[0] > seen_by_other]
    return max(kept) if kept else None


def join(a: CartState, b: CartState) -> CartState:
    """The merge of two states: commutative, associative and idempotent (a join)."""
    context = dict(a.context)
    for actor, counter in b.context.items():
        context[actor] = max(counter, context.get(actor, 0))
    items: dict[str, dict[str, Dot]] = {}
    for item in a.items.keys() | b.items.keys():
        mine, theirs = a.items.get(item, {}), b.items.get(item, {})
        dots = {}
        for actor in mine.keys() | theirs.keys():
            dot = _survivor(mine.get(actor), theirs.get(actor),
                            a.context.get(actor, 0), b.context.get(actor, 0))
            if dot is not None:
                dots[actor] = dot
        if dots:
            items[item] = dots
    return CartState(items, context)


def merge_states(states: Iterable[CartState]) -> CartState:
    """The join of any number of states (the empty cart for none)."""
    merged = CartState()
    for state in states:
        merged = join(merged, state)
    return merged


def merge(values: Iterable[Any]) -> dict[str, Any]:
    """Merge stored values (e.g. ``GetResult.values``) into one stored value.

    For a bucket without a server-side resolver: ``merge(r.values)`` is the cart to write
    back with ``r.context``. ``None`` counts as the empty cart; anything else that is not a
    state raises :class:`InvalidCartState` naming its position and the problem.
    """
    states = []
    for i, value in enumerate(values):
        try:
            states.append(parse(value))
        except InvalidCartState as exc:
            raise InvalidCartState(f"value {i} is not an orset-cart state: {exc}") from None
    return to_value(merge_states(states))


def empty_value() -> dict[str, Any]:
    """The stored value of an empty cart that no one has written yet."""
    return to_value(CartState())


# --------------------------------------------------------------------------- operations


def add(state: CartState, actor: str, item: str, quantity: int = 1) -> CartState:
    """A new state with ``item`` at ``quantity``, as a fresh add by ``actor``.

    The fresh dot replaces every dot of the item this state has seen, so a later merge
    with a state still holding those dots keeps this add and its quantity.
    """
    _name(actor, "actor", ValueError)
    _name(item, "item", ValueError)
    if not _is_int(quantity) or quantity < 1:
        raise ValueError(f"quantity must be an integer >= 1, got {quantity!r} "
                         f"(remove the item instead of setting 0)")
    new = state.copy()
    counter = new.context.get(actor, 0) + 1
    new.context[actor] = counter
    new.items[item] = {actor: (counter, quantity)}
    return new


def remove(state: CartState, item: str) -> CartState:
    """A new state without ``item``; the context keeps remembering the adds it removed."""
    new = state.copy()
    new.items.pop(item, None)
    return new
