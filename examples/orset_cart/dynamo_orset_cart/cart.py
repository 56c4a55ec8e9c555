"""The application's side: :class:`Cart`, one writer's handle on one stored cart.

The flow is the paper's: read, modify, write back with the read's context::

    r = carts.get("alice")
    cart = Cart.from_values(r.values, actor="phone-7")   # merges siblings, if any
    cart.remove("pen")
    cart.add("book", qty=2)
    carts.put("alice", cart.to_value(), context=r.context)

**Choosing the actor.** ``actor`` names the writer that issues the adds: a stable id such as
a device or a login session, not a fresh random id per write (every actor that ever wrote a
cart keeps one entry in its context, so random ids would grow it with every write). The
one rule: an actor must write from a state that includes its own earlier writes, or it would
number two different adds alike and one of them could be lost. Keep the :class:`Cart`
between writes and :meth:`Cart.merge` each new read into it, or read with quorums that
overlap your writes (R + W > N in a ``strict`` bucket); an actor that may have lost its
state (a reinstalled app, a failed put you do not retry) takes a new id. Empty a cart with
:meth:`Cart.clear` and a put, not with ``delete``: a delete forgets the context too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from . import state as orset


class Cart:
    """An OR-set shopping cart edited by one actor; items are text, quantities whole numbers.

    Adds and removals change only this object; :meth:`to_value` is what to store. Every
    method leaves the cart a valid state, so a cart can be written back at any point.
    """

    def __init__(self, actor: str, value: Any = None) -> None:
        """A cart for ``actor`` holding the stored ``value`` (``None``: an empty cart)."""
        if not isinstance(actor, str) or not actor:
            raise ValueError(f"actor must be non-empty text, got {actor!r}")
        self._actor = actor
        self._state = orset.parse(value)

    @classmethod
    def from_value(cls, value: Any, *, actor: str) -> Cart:
        """The cart stored as ``value`` (``None`` when the key does not exist yet)."""
        return cls(actor, value)

    @classmethod
    def from_values(cls, values: Iterable[Any], *, actor: str) -> Cart:
        """The merge of a read's sibling values: ``Cart.from_values(r.values, actor=...)``.

        No values (an absent key) give an empty cart; one value is the usual answer of a
        bucket whose resolver is ``orset-cart``; several are merged here, which makes the
        same code right for a bucket without a server-side resolver.
        """
        return cls(actor, orset.merge(values))

    # ------------------------------------------------------------------ reading

    @property
    def actor(self) -> str:
        """The writer this cart issues adds as."""
        return self._actor

    def items(self) -> dict[str, int]:
        """item -> quantity, sorted by item (a plain set of items: ``list(cart)``)."""
        return self._state.contents()

    def quantity(self, item: str) -> int:
        """How many of ``item`` the cart holds (0 when it holds none)."""
        return self._state.quantity(item)

    def __contains__(self, item: object) -> bool:
        return item in self._state.items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._state.items))

    def __len__(self) -> int:
        return len(self._state.items)

    def __eq__(self, other: object) -> bool:
        """Carts are equal when their stored values are (the actor does not matter)."""
        if not isinstance(other, Cart):
            return NotImplemented
        return self.to_value() == other.to_value()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Cart(actor={self._actor!r}, items={self.items()!r})"

    # ------------------------------------------------------------------ changing

    def add(self, item: str, qty: int = 1) -> None:
        """Put ``item`` in the cart with quantity ``qty`` (it sets, it does not add up).

        A new add of this actor: it wins over a concurrent removal of the item, and over
        quantities this cart has seen.
        """
        self._state = orset.add(self._state, self._actor, item, qty)

    def remove(self, item: str) -> bool:
        """Take ``item`` out of the cart; whether it was in it.

        Removes the adds this cart has seen, and only those: an add made concurrently
        elsewhere survives the merge (add wins).
        """
        present = item in self._state.items
        self._state = orset.remove(self._state, item)
        return present

    def clear(self) -> None:
        """Remove every item, keeping the context (unlike deleting the key)."""
        for item in list(self._state.items):
            self._state = orset.remove(self._state, item)

    def merge(self, other: Cart | Any) -> None:
        """Fold another cart, or a stored value, into this one (the same merge as the resolver).

        Use it to bring a fresh read into a cart kept between writes:
        ``cart.merge(Cart.from_values(r.values, actor=cart.actor))``.
        """
        theirs = other._state if isinstance(other, Cart) else orset.parse(other)
        self._state = orset.join(self._state, theirs)

    def to_value(self) -> dict[str, Any]:
        """The stored form of this cart (see :mod:`dynamo_orset_cart.state`)."""
        return orset.to_value(self._state)
