"""The built-in resolvers: cart-union, last-write-wins and max-score.

Scenario tests pin each resolver's documented behaviour; property tests check what every
node relies on: the answer does not depend on the order replicas returned the siblings in,
and a single sibling comes back unchanged.
"""

from __future__ import annotations

from typing import Any

import pluggy
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dynamo_core.hookspecs
from dynamo_core.hookspecs import Resolver, Sibling
from dynamo_resolvers._common import canonical
from dynamo_resolvers.cart_union import CartUnion
from dynamo_resolvers.last_write_wins import LastWriteWins
from dynamo_resolvers.max_score import MaxScore

RESOLVERS = {"cart-union": CartUnion(), "last-write-wins": LastWriteWins(), "max-score": MaxScore()}


def sib(value: Any, timestamp: float = 0.0, actor: str = "a", counter: int = 1) -> Sibling:
    """A sibling with a readable dot, for scenario tests."""
    return Sibling(value=value, timestamp=timestamp, dot=(actor, counter))


# --------------------------------------------------------------------------- cart-union


def test_cart_union_never_loses_an_added_item() -> None:
    base = ["book"]
    alice_adds = sib(base + ["pen"], timestamp=1.0, actor="n1")
    bob_adds = sib(base + ["lamp"], timestamp=2.0, actor="n2")
    assert sorted(CartUnion().resolve([alice_adds, bob_adds])) == ["book", "lamp", "pen"]


def test_cart_union_orders_items_by_first_appearance_oldest_sibling_first() -> None:
    newer = sib(["c", "a"], timestamp=2.0)
    older = sib(["b", "a"], timestamp=1.0)
    assert CartUnion().resolve([newer, older]) == ["b", "a", "c"]


def test_cart_union_lists_each_item_once() -> None:
    merged = CartUnion().resolve([sib(["x", "x", "y"], 1.0), sib(["y", "x"], 2.0)])
    assert merged == ["x", "y"]


def test_cart_union_compares_unhashable_items_by_content() -> None:
    book = {"sku": "b-1", "options": ["hardcover"]}
    merged = CartUnion().resolve([sib([book], 1.0), sib([dict(book), {"sku": "p-2"}], 2.0)])
    assert merged == [book, {"sku": "p-2"}]


def test_cart_union_tells_one_from_true_and_one_point_zero() -> None:
    merged = CartUnion().resolve([sib([1, True], 1.0), sib([1.0], 2.0)])
    assert [repr(item) for item in merged] == ["1", "True", "1.0"]


def test_cart_union_of_quantities_keeps_every_item_at_its_largest_quantity() -> None:
    left = sib({"book": 1, "pen": 5}, timestamp=1.0)
    right = sib({"book": 3, "lamp": 1}, timestamp=2.0)
    assert CartUnion().resolve([left, right]) == {"book": 3, "pen": 5, "lamp": 1}


def test_cart_union_merges_envelope_items_and_keeps_other_fields_of_the_latest() -> None:
    older = sib({"items": ["book"], "note": "old", "gift": True}, timestamp=1.0)
    newer = sib({"items": ["pen"], "note": "new"}, timestamp=2.0)
    assert CartUnion().resolve([newer, older]) == {"items": ["book", "pen"], "note": "new"}


def test_cart_union_merges_envelopes_holding_quantities() -> None:
    older = sib({"items": {"a": 2}}, timestamp=1.0)
    newer = sib({"items": {"a": 1, "b": 1}}, timestamp=2.0)
    merged = CartUnion().resolve([older, newer])
    assert merged == {"items": {"a": 2, "b": 1}}


def test_cart_union_envelope_fields_tie_on_timestamp_go_to_the_larger_dot() -> None:
    first = sib({"items": ["a"], "by": "n1"}, timestamp=5.0, actor="n1")
    second = sib({"items": ["b"], "by": "n2"}, timestamp=5.0, actor="n2")
    assert CartUnion().resolve([second, first])["by"] == "n2"


@pytest.mark.parametrize(
    "values",
    [
        [["book"], 7],
        [["book"], {"book": 1}],
        [{"items": ["book"]}, ["pen"]],
        ["text", None],
    ],
)
def test_cart_union_falls_back_to_last_write_wins_for_mixed_shapes(values: list[Any]) -> None:
    siblings = [sib(value, timestamp=float(i)) for i, value in enumerate(values)]
    assert CartUnion().resolve(siblings) == values[-1]


def test_cart_union_brings_back_an_item_removed_in_only_one_sibling() -> None:
    """The paper's known anomaly: a union cannot tell a removal from an item never added."""
    removed_pen = sib(["book"], timestamp=2.0, actor="n1")
    added_lamp = sib(["book", "pen", "lamp"], timestamp=1.0, actor="n2")
    assert "pen" in CartUnion().resolve([removed_pen, added_lamp])


def test_cart_union_returns_a_single_sibling_as_it_is() -> None:
    only = sib(["x", "x"])
    assert CartUnion().resolve([only]) is only.value


# --------------------------------------------------------------------------- last-write-wins


def test_last_write_wins_keeps_the_latest_timestamp() -> None:
    siblings = [sib("old", 1.0, "n1"), sib("newest", 3.0, "n3"), sib("mid", 2.0, "n2")]
    assert LastWriteWins().resolve(siblings) == "newest"


def test_last_write_wins_breaks_timestamp_ties_by_dot() -> None:
    siblings = [
        sib("by-n2", 1.0, "n2", 1),
        sib("by-n1", 1.0, "n1", 9),
        sib("by-n2-later", 1.0, "n2", 2),
    ]
    assert LastWriteWins().resolve(siblings) == "by-n2-later"


def test_last_write_wins_breaks_dot_ties_by_value() -> None:
    siblings = [sib("b", 1.0), sib("a", 1.0)]
    assert LastWriteWins().resolve(siblings) == LastWriteWins().resolve(siblings[::-1])


def test_last_write_wins_accepts_a_dot_that_crossed_the_wire_as_a_list() -> None:
    wired = Sibling(value="wired", timestamp=1.0, dot=["n2", 1])  # type: ignore[arg-type]
    assert LastWriteWins().resolve([sib("local", 1.0, "n1"), wired]) == "wired"


# --------------------------------------------------------------------------- max-score


def test_max_score_keeps_the_largest_number() -> None:
    assert MaxScore().resolve([sib(10, 3.0), sib(42.5, 1.0), sib(-3, 2.0)]) == 42.5


def test_max_score_reads_the_score_field_of_a_mapping() -> None:
    best = {"player": "bo", "score": 99}
    assert MaxScore().resolve([sib({"player": "al", "score": 7}, 2.0), sib(best, 1.0)]) == best


def test_max_score_does_not_count_a_bool_as_a_score() -> None:
    assert MaxScore().resolve([sib(True, 2.0), sib({"score": True}, 3.0), sib(0, 1.0)]) == 0


def test_max_score_siblings_without_a_score_lose_to_one_with_a_score() -> None:
    siblings = [sib("text", 9.0), sib({"name": "x"}, 8.0), sib(float("nan"), 7.0), sib(-1, 1.0)]
    assert MaxScore().resolve(siblings) == -1


def test_max_score_without_any_score_falls_back_to_last_write_wins() -> None:
    siblings = [sib("older", 1.0), sib({"no": "score"}, 2.0)]
    assert MaxScore().resolve(siblings) == {"no": "score"}


def test_max_score_breaks_score_ties_by_the_latest_write() -> None:
    siblings = [sib({"score": 5, "by": "n1"}, 2.0), sib({"score": 5.0, "by": "n2"}, 1.0)]
    assert MaxScore().resolve(siblings) == {"score": 5, "by": "n1"}


# --------------------------------------------------------------------------- all of them


@pytest.mark.parametrize("name", sorted(RESOLVERS))
def test_resolving_no_siblings_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        RESOLVERS[name].resolve([])


def test_resolvers_load_through_the_dynamo_entry_point_group() -> None:
    pm = pluggy.PluginManager("dynamo")
    pm.add_hookspecs(dynamo_core.hookspecs)
    pm.load_setuptools_entrypoints("dynamo")
    offered = {n: r for mapping in pm.hook.dynamo_resolvers() for n, r in mapping.items()}
    for name, built_in in RESOLVERS.items():
        assert isinstance(offered[name], Resolver)
        assert type(offered[name]) is type(built_in)


# --------------------------------------------------------------------------- properties

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=5)
    | st.binary(max_size=5)
)
cbor_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12,
)
items = st.sampled_from(["book", "pen", "lamp", 1, True, 1.0]) | st.dictionaries(
    st.sampled_from(["sku", "size"]), st.sampled_from(["a", "b"]), max_size=2
)
quantities = st.integers(-3, 5) | st.floats(-3, 5)
carts = (
    st.lists(items, max_size=5)
    | st.dictionaries(st.sampled_from(["book", "pen", "lamp"]), quantities, max_size=3)
)
envelopes = st.builds(lambda c, note: {"items": c, "note": note}, carts, st.text(max_size=2))
scores = st.builds(lambda s: {"score": s}, quantities | st.booleans() | st.none())
values = cbor_values | carts | envelopes | scores | quantities


# Siblings with colliding timestamps, so tie-breaks by dot are exercised. Dots are unique, as
# in a store: a dot names one version, so two siblings with one dot are one version and may
# differ only in what CBOR does not see (dict order).
sibling_lists = st.lists(
    st.builds(
        Sibling,
        value=values,
        timestamp=st.sampled_from([0.0, 1.0, 1.5]),
        dot=st.tuples(st.sampled_from(["n1", "n2", "n3"]), st.integers(1, 2)),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda s: s.dot,
)


@pytest.mark.parametrize("name", sorted(RESOLVERS))
@given(data=st.data())
def test_every_resolver_is_independent_of_sibling_order(name: str, data: st.DataObject) -> None:
    given_siblings = data.draw(sibling_lists)
    shuffled = data.draw(st.permutations(given_siblings))
    resolver = RESOLVERS[name]
    # repr tells 1 from 1.0 and True, sees dict order and treats NaN as equal to itself.
    assert repr(resolver.resolve(shuffled)) == repr(resolver.resolve(given_siblings))


@pytest.mark.parametrize("name", sorted(RESOLVERS))
@given(only=sibling_lists.map(lambda s: s[0]))
def test_every_resolver_returns_a_lone_sibling_unchanged(name: str, only: Sibling) -> None:
    assert RESOLVERS[name].resolve([only]) is only.value


@given(lists=st.lists(st.lists(items, max_size=5), min_size=2, max_size=4))
def test_cart_union_keeps_every_item_of_every_list(lists: list[list[Any]]) -> None:
    merged = CartUnion().resolve([sib(cart, float(i)) for i, cart in enumerate(lists)])
    for cart in lists:
        for item in cart:
            assert canonical(item) in {canonical(kept) for kept in merged}


@given(
    maps=st.lists(
        st.dictionaries(st.text(max_size=2), quantities, max_size=4), min_size=2, max_size=4
    )
)
def test_cart_union_keeps_the_largest_quantity_of_every_item(maps: list[dict[str, Any]]) -> None:
    merged = CartUnion().resolve([sib(cart, float(i)) for i, cart in enumerate(maps)])
    expected_items = {item for cart in maps for item in cart}
    assert set(merged) == expected_items
    for item in expected_items:
        assert merged[item] == max(cart[item] for cart in maps if item in cart)
