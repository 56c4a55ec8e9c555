"""The ``orset-cart`` example plugin (examples/orset_cart): an add-wins OR-set cart resolver.

Property tests check that the merge is a join (commutative, associative, idempotent) and
that it means what the package promises: a removal beats every add it saw, an add it did not
see beats it, and the metadata stays bounded by the number of writers. Unit tests pin the
client API; the last tests load the plugin through its installed entry point, run it on a
real cluster, and run ``demo.py``.

The package is installed separately (``pip install -e examples/orset_cart``); without it
every test here fails with that instruction rather than being skipped.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_core.client import Client, GetResult
from dynamo_core.errors import ResolverFailed
from dynamo_core.hookspecs import Resolver, Sibling
from dynamo_core.plugins import Registry, make_plugin_manager

INSTALL_HINT = "run `pip install -e examples/orset_cart` from the repository root"
try:
    from dynamo_orset_cart import Cart, InvalidCartState, OrSetCart, empty_value, merge
except ImportError as exc:  # every test fails with the hint (see _installed)
    MISSING: str | None = f"dynamo_orset_cart is not importable ({exc}): {INSTALL_HINT}"
else:
    MISSING = None

DEMO = Path(__file__).resolve().parents[1] / "examples" / "orset_cart" / "demo.py"
ACTORS = ("a", "b", "c")
ITEMS = ("pen", "book", "cup")
#: Enough examples for these small domains, and no per-example deadline: a loaded CI machine
#: must not turn a slow example into a failure.
PROPERTY = settings(max_examples=60, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def _installed() -> None:
    """Fail, not skip: a missing install is a broken environment, not an optional feature."""
    if MISSING:
        pytest.fail(MISSING, pytrace=False)
    try:
        importlib.metadata.distribution("dynamo-orset-cart")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"dynamo_orset_cart imports but the dynamo-orset-cart distribution (and "
                    f"its entry point) is not installed: {INSTALL_HINT}", pytrace=False)


# =========================================================================== helpers


def dots(value: dict[str, Any], item: str) -> dict[str, int]:
    """actor -> counter of the item's dots in a stored value."""
    return {actor: entry if isinstance(entry, int) else entry[0]
            for actor, entry in value["items"].get(item, {}).items()}


def carts_after(history: list[tuple[Any, ...]], carts: dict[str, Cart] | None = None
                ) -> tuple[dict[str, Cart], list[dict[str, Any]]]:
    """Replay a history on one cart per actor; every stored value it went through.

    Each actor edits only its own cart (so it always writes from a state holding its own
    earlier adds, the rule the package documents) and syncs by merging another's value,
    as a read of the store would.
    """
    carts = carts if carts is not None else {a: Cart(a) for a in ACTORS}
    seen = [empty_value()]
    for step in history:
        kind, actor = step[0], step[1]
        if kind == "add":
            carts[actor].add(step[2], qty=step[3])
        elif kind == "remove":
            carts[actor].remove(step[2])
        else:
            carts[actor].merge(carts[step[2]].to_value())
        seen.append(carts[actor].to_value())
    return carts, seen


def sync_all(carts: dict[str, Cart]) -> None:
    """Every cart merges every other (twice round, so all end equal)."""
    for _ in range(2):
        for a in ACTORS:
            for b in ACTORS:
                carts[a].merge(carts[b])


# =========================================================================== strategies

steps = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(ACTORS), st.sampled_from(ITEMS),
              st.integers(1, 3)),
    st.tuples(st.just("remove"), st.sampled_from(ACTORS), st.sampled_from(ITEMS)),
    st.tuples(st.just("sync"), st.sampled_from(ACTORS), st.sampled_from(ACTORS)),
)
histories = st.lists(steps, max_size=25)


@st.composite
def any_valid_values(draw: st.DrawFn) -> dict[str, Any]:
    """Any value the format allows, reachable or not (a dot may even sit on two items)."""
    context = draw(st.dictionaries(st.sampled_from(ACTORS), st.integers(1, 4)))
    items: dict[str, Any] = {}
    for item in draw(st.sets(st.sampled_from(ITEMS))):
        entries = {}
        for actor in sorted(draw(st.sets(st.sampled_from(sorted(context))))) if context else []:
            counter, qty = draw(st.integers(1, context[actor])), draw(st.integers(1, 3))
            entries[actor] = counter if qty == 1 else [counter, qty]
        if entries:
            items[item] = entries
    return {"v": 1, "items": items, "context": context}


@st.composite
def reachable_values(draw: st.DrawFn) -> dict[str, Any]:
    """A value some replica of a random history held."""
    _, seen = carts_after(draw(histories))
    return draw(st.sampled_from(seen))


values = any_valid_values() | reachable_values()


# =========================================================================== the merge is a join


@PROPERTY
@given(x=values, y=values)
def test_merge_is_commutative(x: dict[str, Any], y: dict[str, Any]) -> None:
    assert merge([x, y]) == merge([y, x])


@PROPERTY
@given(x=values, y=values, z=values)
def test_merge_is_associative(x: dict[str, Any], y: dict[str, Any], z: dict[str, Any]) -> None:
    assert merge([merge([x, y]), z]) == merge([x, merge([y, z])])


@PROPERTY
@given(x=values, y=values)
def test_merge_is_idempotent(x: dict[str, Any], y: dict[str, Any]) -> None:
    assert merge([x, x]) == merge([x]) == x  # values here are canonical already
    assert merge([merge([x, y]), y]) == merge([x, y])


@PROPERTY
@given(x=values)
def test_nothing_stored_is_the_empty_cart(x: dict[str, Any]) -> None:
    assert merge([x, None]) == merge([None, x]) == x
    assert merge([]) == merge([None]) == empty_value()


@PROPERTY
@given(x=values)
def test_a_value_survives_the_wire(x: dict[str, Any]) -> None:
    assert cbor2.loads(cbor2.dumps(x)) == x
    assert Cart.from_value(cbor2.loads(cbor2.dumps(x)), actor="z").to_value() == x


@PROPERTY
@given(siblings=st.lists(values, min_size=1, max_size=4), data=st.data())
def test_the_resolver_is_the_merge_in_any_order(siblings: list[Any], data: st.DataObject
                                                ) -> None:
    wrapped = [Sibling(v, float(i % 2), (ACTORS[i % 3], i + 1)) for i, v in enumerate(siblings)]
    shuffled = data.draw(st.permutations(wrapped))
    assert OrSetCart().resolve(shuffled) == OrSetCart().resolve(wrapped) == merge(siblings)


# =========================================================================== what it means


@PROPERTY
@given(t=values, s=values, item=st.sampled_from(ITEMS))
def test_a_removed_item_is_back_after_a_merge_exactly_when_it_had_an_unseen_add(
        t: dict[str, Any], s: dict[str, Any], item: str) -> None:
    """The whole rule in one line: only an add the remover never saw can bring it back."""
    remover = Cart.from_value(t, actor="z")
    remover.remove(item)
    seen = remover.to_value()["context"]
    unseen_adds = [a for a, counter in dots(s, item).items() if counter > seen.get(a, 0)]
    remover.merge(s)
    assert (item in remover) == bool(unseen_adds)


@PROPERTY
@given(before=histories, after=histories, item=st.sampled_from(ITEMS))
def test_a_removed_item_never_comes_back_without_a_newer_add(
        before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], item: str) -> None:
    carts, _ = carts_after(before)
    for other in ("b", "c"):
        carts["a"].merge(carts[other])  # a has seen every add so far ...
    carts["a"].remove(item)  # ... and removes the item
    no_new_add = [s for s in after if not (s[0] == "add" and s[2] == item)]
    for step in no_new_add:  # the others go on concurrently, syncing in any order
        carts_after([step], carts)
        assert item not in carts["a"]
    sync_all(carts)
    assert all(item not in cart for cart in carts.values())


@PROPERTY
@given(before=histories, after=histories, item=st.sampled_from(ITEMS))
def test_an_add_concurrent_with_a_remove_survives(
        before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], item: str) -> None:
    carts, _ = carts_after(before)
    carts["a"].merge(carts["b"])
    carts["a"].remove(item)  # a removes what it saw of the item ...
    carts["b"].add(item, qty=2)  # ... while b, not having seen that, adds it again
    no_removal = [s for s in after if not (s[0] == "remove" and s[2] == item)]
    carts_after(no_removal, carts)
    sync_all(carts)
    assert all(item in cart for cart in carts.values())


@PROPERTY
@given(history=histories)
def test_replicas_that_merged_everything_agree(history: list[tuple[Any, ...]]) -> None:
    carts, _ = carts_after(history)
    sync_all(carts)
    assert carts["a"] == carts["b"] == carts["c"]


@PROPERTY
@given(history=histories)
def test_metadata_is_bounded_by_the_writers(history: list[tuple[Any, ...]]) -> None:
    _, seen = carts_after(history)
    for value in seen:
        assert set(value["context"]) <= set(ACTORS)
        for item in value["items"]:
            assert set(dots(value, item)) <= set(value["context"])  # one dot per actor at most


@PROPERTY
@given(ops=st.lists(st.tuples(st.booleans(), st.sampled_from(ITEMS), st.integers(1, 5)),
                    max_size=30))
def test_one_writer_alone_sees_a_plain_cart(ops: list[tuple[bool, str, int]]) -> None:
    cart, model = Cart("solo"), {}
    for is_add, item, qty in ops:
        if is_add:
            cart.add(item, qty)
            model[item] = qty
        else:
            assert cart.remove(item) == (item in model)
            model.pop(item, None)
    assert cart.items() == dict(sorted(model.items()))


def test_metadata_does_not_grow_with_the_number_of_writes() -> None:
    cart = Cart("phone")
    for i in range(1000):
        cart.add(f"item-{i % 5}", qty=i % 3 + 1)
        if i % 2:
            cart.remove(f"item-{(i + 1) % 5}")
    value = cart.to_value()
    assert value["context"] == {"phone": 1000}
    assert len(cbor2.dumps(value)) < 120


# =========================================================================== the client API


def test_a_cart_starts_empty_from_an_absent_key() -> None:
    cart = Cart.from_value(None, actor="phone")
    assert cart.items() == {} and len(cart) == 0 and list(cart) == []
    assert cart.to_value() == empty_value() == {"v": 1, "items": {}, "context": {}}
    assert Cart.from_values([], actor="phone") == cart


def test_add_remove_and_reading_a_cart() -> None:
    cart = Cart("phone")
    cart.add("pen")
    cart.add("book", qty=3)
    assert cart.items() == {"book": 3, "pen": 1}
    assert list(cart.items()) == ["book", "pen"] == list(cart)
    assert "pen" in cart and "lamp" not in cart and len(cart) == 2
    assert cart.quantity("book") == 3 and cart.quantity("lamp") == 0
    assert cart.remove("pen") is True and cart.remove("pen") is False
    assert cart.items() == {"book": 3}
    assert cart.actor == "phone"
    assert repr(cart) == "Cart(actor='phone', items={'book': 3})"


def test_adding_an_item_again_sets_its_quantity() -> None:
    cart = Cart("phone")
    cart.add("pen", qty=5)
    cart.add("pen", qty=2)
    assert cart.items() == {"pen": 2}


def test_the_stored_form_is_compact_and_documented() -> None:
    cart = Cart("phone")
    cart.add("pen")
    cart.add("book", qty=2)
    laptop = Cart.from_value(cart.to_value(), actor="laptop")
    laptop.add("cup")
    assert laptop.to_value() == {
        "v": 1,
        "items": {"book": {"phone": [2, 2]}, "cup": {"laptop": 1}, "pen": {"phone": 1}},
        "context": {"laptop": 1, "phone": 2},
    }


def test_concurrent_quantities_keep_the_largest_and_a_later_add_replaces_them() -> None:
    start = Cart("shop")
    start.add("pen", qty=3)
    a = Cart.from_value(start.to_value(), actor="a")
    b = Cart.from_value(start.to_value(), actor="b")
    a.add("pen", qty=1)
    b.add("pen", qty=2)
    merged = Cart.from_values([a.to_value(), b.to_value()], actor="c")
    assert merged.items() == {"pen": 2}  # neither saw the other: the larger quantity
    merged.add("pen", qty=1)  # c saw both: its add replaces them
    assert Cart.from_values([merged.to_value(), a.to_value(), b.to_value()],
                            actor="c").items() == {"pen": 1}


def test_the_papers_story_a_removed_item_stays_removed() -> None:
    start = Cart("shop")
    for item in ("cup", "pen"):
        start.add(item)
    a = Cart.from_value(start.to_value(), actor="writer-a")
    b = Cart.from_value(start.to_value(), actor="writer-b")
    a.remove("pen")
    b.add("book")
    assert list(Cart.from_values([a.to_value(), b.to_value()], actor="r")) == ["book", "cup"]


def test_clear_keeps_the_context_so_nothing_comes_back() -> None:
    old = Cart("phone")
    old.add("pen")
    cleared = Cart.from_value(old.to_value(), actor="phone")
    cleared.clear()
    assert cleared.items() == {} and cleared.to_value()["context"] == {"phone": 1}
    cleared.merge(old)
    assert cleared.items() == {}


def test_merge_takes_a_cart_or_a_stored_value() -> None:
    a, b = Cart("a"), Cart("b")
    a.add("pen")
    b.add("book")
    by_cart = Cart.from_value(a.to_value(), actor="a")
    by_cart.merge(b)
    a.merge(b.to_value())
    assert a == by_cart and a.items() == {"book": 1, "pen": 1}
    assert a.actor == "a"  # merging does not change who writes


@pytest.mark.parametrize("actor", ["", None, 7])
def test_a_cart_needs_an_actor(actor: Any) -> None:
    with pytest.raises(ValueError, match="actor must be non-empty text"):
        Cart(actor)


@pytest.mark.parametrize(("item", "qty", "message"), [
    ("pen", 0, "quantity must be an integer >= 1"),
    ("pen", -1, "quantity must be an integer >= 1"),
    ("pen", 1.5, "quantity must be an integer >= 1"),
    ("pen", True, "quantity must be an integer >= 1"),
    ("", 1, "item must be non-empty text"),
    (3, 1, "item must be non-empty text"),
])
def test_add_refuses_what_the_format_cannot_hold(item: Any, qty: Any, message: str) -> None:
    cart = Cart("phone")
    with pytest.raises(ValueError, match=message):
        cart.add(item, qty)
    assert cart.to_value() == empty_value()  # a refused add changed nothing


@pytest.mark.parametrize(("value", "message"), [
    (["book"], "expected an orset-cart state .* got list"),
    ({"items": ["book"]}, "needs a map 'items'"),
    ({"items": {}, "context": {}, "note": "x"}, r"unknown field\(s\) 'note'"),
    ({"v": 2, "items": {}, "context": {}}, "unsupported orset-cart format version 2"),
    ({"items": {}, "context": {"a": 0}}, r"context\['a'\] must be an integer >= 1"),
    ({"items": {"pen": ["a"]}, "context": {}}, r"items\['pen'\] must be a map actor -> dot"),
    ({"items": {"pen": {"a": "x"}}, "context": {"a": 1}}, r"must be a counter or \[counter"),
    ({"items": {"pen": {"a": [1, 0]}}, "context": {"a": 1}}, "must be at least 1"),
    ({"items": {"pen": {"a": 2}}, "context": {"a": 1}}, "dot a:2 is not covered by the context"),
    ({"items": {"": {"a": 1}}, "context": {"a": 1}}, "an item must be non-empty text"),
])
def test_a_value_that_is_not_a_state_is_refused_precisely(value: Any, message: str) -> None:
    with pytest.raises(InvalidCartState, match=message):
        Cart.from_value(value, actor="phone")
    with pytest.raises(ValueError, match=f"value 1 is not an orset-cart state: .*{message}"):
        merge([None, value])


def test_an_item_without_dots_is_simply_absent() -> None:
    value = {"items": {"pen": {}}, "context": {"a": 1}}
    assert Cart.from_value(value, actor="z").to_value() == {"v": 1, "items": {},
                                                            "context": {"a": 1}}


# =========================================================================== the resolver


def sib(value: Any, actor: str = "n1", counter: int = 1) -> Sibling:
    return Sibling(value=value, timestamp=0.0, dot=(actor, counter))


def test_the_resolver_counts_a_none_sibling_as_an_empty_cart() -> None:
    cart = Cart("a")
    cart.add("pen")
    assert OrSetCart().resolve([sib(None), sib(cart.to_value(), "n2")]) == cart.to_value()
    assert OrSetCart().resolve([sib(None)]) == empty_value()


def test_the_resolver_names_the_sibling_it_cannot_read() -> None:
    with pytest.raises(InvalidCartState,
                       match=r"sibling n2\.ab:7 is not an orset-cart state: .* got list"):
        OrSetCart().resolve([sib(empty_value()), sib(["book"], "n2.ab", 7)])


def test_the_resolver_refuses_no_siblings() -> None:
    with pytest.raises(ValueError, match="empty"):
        OrSetCart().resolve([])


def test_a_get_result_resolves_client_side_by_the_installed_name() -> None:
    a, b = Cart("a"), Cart("b")
    a.add("pen")
    b.add("book")
    result = GetResult([a.to_value(), b.to_value()], b"",
                       [sib(a.to_value(), "n1"), sib(b.to_value(), "n2")])
    assert result.resolve("orset-cart") == merge(result.values)
    assert result.resolve(OrSetCart()) == merge(result.values)


def test_the_resolver_is_found_through_the_installed_entry_point() -> None:
    pm = make_plugin_manager()
    registry = Registry(pm)
    assert "orset-cart" in registry.names("resolver")
    assert registry.source("resolver", "orset-cart") == "orset-cart"  # the entry point's name
    resolver = registry.resolver("orset-cart")
    assert isinstance(resolver, Resolver) and type(resolver) is OrSetCart
    dists = {pm.get_name(plugin): dist.project_name for plugin, dist in
             pm.list_plugin_distinfo()}
    assert dists["orset-cart"] == "dynamo-orset-cart"


# =========================================================================== a real cluster

CARTS = {"buckets": {"carts": {"resolver": "orset-cart"}}}


@pytest.fixture(scope="module")
def carts_cluster(module_cluster: Any) -> Any:
    return module_cluster(3, config=CARTS)


@pytest.fixture
def client(carts_cluster: Any) -> Iterator[Client]:
    with carts_cluster.client(timeout=5.0) as c:
        yield c


def concurrent_edits(c: Client, bucket: str, key: str, addresses: list[str],
                     edit_a: Any, edit_b: Any) -> None:
    """Seed ``cup`` and ``pen``; then two writers, on two nodes, each read and write once."""
    seed = Cart("shop")
    seed.add("cup")
    seed.add("pen")
    c.put(key, seed.to_value(), bucket=bucket, node=addresses[0])
    ra = c.get(key, bucket=bucket, node=addresses[1])
    rb = c.get(key, bucket=bucket, node=addresses[2])  # both read before either writes
    a = Cart.from_values(ra.values, actor="writer-a")
    b = Cart.from_values(rb.values, actor="writer-b")
    edit_a(a)
    edit_b(b)
    c.put(key, a.to_value(), context=ra.context, bucket=bucket, node=addresses[1])
    c.put(key, b.to_value(), context=rb.context, bucket=bucket, node=addresses[2])
    raw = c.get(key, bucket=bucket, resolve=False, r=3).values
    assert len(raw) == 2, f"the two writes should be concurrent siblings, got {raw}"


@pytest.mark.cluster
def test_a_removed_item_stays_removed_through_the_real_store(carts_cluster: Any,
                                                             client: Client) -> None:
    concurrent_edits(client, "carts", "alice", carts_cluster.addresses,
                     lambda a: a.remove("pen"), lambda b: b.add("book"))
    r = client.get("alice", bucket="carts")
    assert len(r.values) == 1  # the server-side resolver merged the siblings
    assert Cart.from_values(r.values, actor="reader").items() == {"book": 1, "cup": 1}


@pytest.mark.cluster
def test_an_add_concurrent_with_a_remove_wins_through_the_real_store(carts_cluster: Any,
                                                                     client: Client) -> None:
    concurrent_edits(client, "carts", "bob", carts_cluster.addresses,
                     lambda a: a.remove("pen"), lambda b: b.add("pen", qty=2))
    r = client.get("bob", bucket="carts")
    assert Cart.from_values(r.values, actor="reader").items() == {"cup": 1, "pen": 2}


@pytest.mark.cluster
def test_a_bucket_without_resolver_merges_client_side(carts_cluster: Any,
                                                      client: Client) -> None:
    concurrent_edits(client, "default", "carol", carts_cluster.addresses,
                     lambda a: a.remove("pen"), lambda b: b.add("book"))
    r = client.get("carol")
    assert len(r.values) == 2  # no resolver: the application sees both siblings
    cart = Cart.from_values(r.values, actor="reader")
    client.put("carol", cart.to_value(), context=r.context)
    after = client.get("carol", r=3)
    assert len(after.values) == 1
    assert list(Cart.from_values(after.values, actor="reader")) == ["book", "cup"]


@pytest.mark.cluster
def test_a_resolver_error_reaches_the_client_as_an_error(carts_cluster: Any) -> None:
    address = carts_cluster.addresses[0]
    with Client(address, timeout=1.5) as c:
        start = c.get("broken", bucket="carts", node=address)
        c.put("broken", ["not", "a", "cart"], context=start.context, bucket="carts",
              node=address)
        c.put("broken", empty_value(), context=start.context, bucket="carts", node=address)
        with pytest.raises(ResolverFailed, match="not an orset-cart state"):
            c.get("broken", bucket="carts", node=address)  # R = 2
        with pytest.raises(ResolverFailed, match="resolve=False"):
            c.get("broken", r=1, bucket="carts", node=address)
        assert len(c.get("broken", bucket="carts", node=address, resolve=False).values) == 2


# =========================================================================== the demo


@pytest.mark.cluster
def test_the_demo_shows_the_difference_and_exits_cleanly() -> None:
    done = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True,
                          check=False, timeout=90, cwd=DEMO.parents[2], stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"demo.py failed:\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "cart-union  ['book', 'cup', 'pen']     <- 'pen' came back" in out
    assert "orset-cart  ['book', 'cup']            <- 'pen' stays removed" in out
    assert "orset-cart  ['cup', 'pen']             <- add wins" in out
    assert out.rstrip().endswith("cluster stopped")
