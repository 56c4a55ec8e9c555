"""The consistent-hashing ring and partition strategy 1, as specifications.

Structural properties (ownership rule, walk order, what moves on a membership change) are
checked on arbitrary token maps; statistical ones (fair share, capacity) on strategy-1
rings built from seeded ``random.Random`` so every failure replays.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

import pluggy
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dynamo_core import hookspecs
from dynamo_core.hookspecs import RING_SIZE, MemberInfo, PartitionStrategy
from dynamo_core.ring import Ring, hash_bytes, key_hash, range_contains
from dynamo_plugins import strategies
from dynamo_plugins.strategies import RandomTokens

FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=8, deadline=None)

positions = st.integers(min_value=0, max_value=RING_SIZE - 1)
node_names = st.sampled_from(["a", "b", "c", "d", "e", "f"])
token_maps = st.dictionaries(positions, node_names, min_size=1, max_size=30)

#: 2000 key positions, as the strategy-1 statistical tests sample the space.
KEYS = [key_hash("test", f"key-{i}") for i in range(2000)]

#: A hand-made ring: a owns (300, 100] (wrapping), b owns (100, 200], c owns (200, 300].
SMALL = {100: "a", 200: "b", 300: "c"}


def reference_walk(tokens: Mapping[int, str], h: int) -> list[str]:
    """The paper's rule spelled out naively: tokens >= h in order, then wrap, dedupe nodes."""
    ordered = sorted(tokens)
    clockwise = [t for t in ordered if t >= h] + [t for t in ordered if t < h]
    return list(dict.fromkeys(tokens[t] for t in clockwise))


def boundary_positions(tokens: Mapping[int, str]) -> list[int]:
    """Positions where an off-by-one in the ring would show: on, just before and after tokens."""
    around = {(t + d) % RING_SIZE for t in tokens for d in (-1, 0, 1)}
    return sorted(around | {0, RING_SIZE - 1})


def strategy_ring(seed: int, capacities: Mapping[str, int], **options: int) -> Ring:
    """A strategy-1 ring of members with the given capacities, drawn from one seed."""
    return Ring(RandomTokens().ring_tokens(strategy_members(seed, capacities, options), options))


def strategy_members(
    seed: int, capacities: Mapping[str, int], options: Mapping[str, int]
) -> list[MemberInfo]:
    rng = random.Random(seed)
    strategy = RandomTokens()
    return [
        MemberInfo(name, cap, tuple(strategy.initial_tokens(name, cap, options, rng)))
        for name, cap in sorted(capacities.items())
    ]


def without(ring_tokens: Mapping[int, str], node: str) -> dict[int, str]:
    return {t: n for t, n in ring_tokens.items() if n != node}


# --------------------------------------------------------------------------- key hashing


def test_key_hash_is_md5_of_bucket_slash_key_big_endian() -> None:
    expected = int.from_bytes(hashlib.md5(b"carts/alice").digest(), "big")
    assert key_hash("carts", "alice") == expected


def test_key_hash_encodes_utf8() -> None:
    expected = int.from_bytes(hashlib.md5("корзина/ключ".encode()).digest(), "big")
    assert key_hash("корзина", "ключ") == expected


@FAST
@given(st.text(), st.text())
def test_key_hash_is_a_stable_128_bit_ring_position(bucket: str, key: str) -> None:
    h = key_hash(bucket, key)
    assert 0 <= h < RING_SIZE == 1 << 128
    assert h == key_hash(bucket, key) == hash_bytes(f"{bucket}/{key}".encode())


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("bad", [-1, RING_SIZE, RING_SIZE + 5, 1.0, "7", True])
def test_tokens_outside_the_hash_space_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        Ring({bad: "a"})  # type: ignore[dict-item]


def test_ring_reports_nodes_tokens_and_size() -> None:
    ring = Ring({5: "b", 1: "a", 9: "a"})
    assert ring.nodes == frozenset({"a", "b"})
    assert ring.tokens_of("a") == [1, 9]
    assert ring.tokens_of("nobody") == []
    assert len(ring) == 3
    assert repr(ring) == "Ring(2 nodes, 3 tokens)"


def test_rings_compare_and_hash_by_content() -> None:
    assert Ring({1: "a", 2: "b"}) == Ring({2: "b", 1: "a"})
    assert hash(Ring({1: "a", 2: "b"})) == hash(Ring({2: "b", 1: "a"}))
    assert Ring({1: "a", 2: "b"}) != Ring({1: "a", 2: "a"})
    assert Ring({1: "a"}) != Ring({2: "a"})
    assert Ring.empty() == Ring({})


# --------------------------------------------------------------------------- ownership rule


@pytest.mark.parametrize(
    ("h", "owner"),
    [
        (100, "a"),  # exactly on a token: that token's node
        (101, "b"),  # just past a token: the next token clockwise
        (200, "b"),
        (250, "c"),
        (301, "a"),  # above the largest token: wraps to the smallest
        (RING_SIZE - 1, "a"),
        (0, "a"),
    ],
)
def test_key_belongs_to_first_token_at_or_after_its_hash(h: int, owner: str) -> None:
    assert Ring(SMALL).primary(h) == owner


def test_walk_wraps_past_the_top_of_the_space() -> None:
    assert list(Ring(SMALL).walk(301)) == ["a", "b", "c"]
    assert Ring(SMALL).preference_list(250, 2) == ["c", "a"]


def test_ranges_are_half_open_and_the_lowest_wraps() -> None:
    ring = Ring(SMALL)
    assert ring.ranges_of("a") == [(300, 100)]
    assert ring.ranges_of("b") == [(100, 200)]
    assert ring.ranges_of("nobody") == []
    assert range_contains(100, 200, 200) and not range_contains(100, 200, 100)
    assert range_contains(300, 100, RING_SIZE - 1) and range_contains(300, 100, 0)
    assert not range_contains(300, 100, 300)


def test_ownership_is_the_share_of_the_hash_space() -> None:
    ownership = Ring(SMALL).ownership()
    assert ownership["b"] == ownership["c"] == 100 / RING_SIZE
    assert ownership["a"] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [-1, RING_SIZE])
def test_positions_outside_the_hash_space_are_rejected(bad: int) -> None:
    with pytest.raises(ValueError):
        Ring(SMALL).primary(bad)
    with pytest.raises(ValueError):
        Ring(SMALL).preference_list(bad, 3)


def test_negative_preference_list_length_is_rejected() -> None:
    with pytest.raises(ValueError):
        Ring(SMALL).preference_list(0, -1)


# --------------------------------------------------------------------------- edge cases


def test_empty_ring_owns_nothing() -> None:
    ring = Ring.empty()
    assert len(ring) == 0 and ring.nodes == frozenset()
    assert ring.preference_list(123, 3) == []
    assert list(ring.walk(123)) == []
    assert ring.ownership() == {}
    assert ring.ranges_of("a") == []
    with pytest.raises(LookupError):
        ring.primary(123)


def test_single_token_owns_the_whole_ring() -> None:
    ring = Ring({42: "solo"})
    assert ring.ranges_of("solo") == [(42, 42)]
    assert range_contains(42, 42, 42) and range_contains(42, 42, 7)
    assert ring.ownership() == {"solo": 1.0}


@FAST
@given(st.sets(positions, min_size=1, max_size=20), positions, st.integers(1, 5))
def test_one_node_is_the_whole_preference_list(tokens: set[int], h: int, n: int) -> None:
    ring = Ring(dict.fromkeys(tokens, "solo"))
    assert ring.preference_list(h, n) == ["solo"]
    assert ring.ownership() == {"solo": pytest.approx(1.0)}


def test_asking_for_more_nodes_than_exist_gives_all_of_them() -> None:
    assert Ring(SMALL).preference_list(150, 10) == ["b", "c", "a"]
    assert Ring(SMALL).preference_list(150, 0) == []


# ----------------------------------------------------------------------- walk and preference lists


@FAST
@given(token_maps, st.data())
def test_walk_visits_every_node_once_clockwise(tokens: dict[int, str], data: st.DataObject) -> None:
    ring = Ring(tokens)
    for h in boundary_positions(tokens) + [data.draw(positions)]:
        assert list(ring.walk(h)) == reference_walk(tokens, h)
        assert ring.primary(h) == reference_walk(tokens, h)[0]


@FAST
@given(token_maps, positions, st.integers(0, 8))
def test_preference_list_is_a_prefix_of_the_walk(
    tokens: dict[int, str], h: int, n: int
) -> None:
    ring = Ring(tokens)
    preference = ring.preference_list(h, n)
    assert len(preference) == min(n, len(ring.nodes))
    assert len(set(preference)) == len(preference)
    assert preference == list(ring.walk(h))[:n]
    # Asking for more (fallbacks for a sloppy quorum) only extends the list.
    assert ring.preference_list(h, n + 2)[:n] == preference


@FAST
@given(token_maps, positions, st.randoms(use_true_random=False))
def test_same_tokens_give_same_answers_in_any_insertion_order(
    tokens: dict[int, str], h: int, shuffler: random.Random
) -> None:
    items = list(tokens.items())
    shuffler.shuffle(items)
    reordered = Ring(dict(items))
    assert reordered == Ring(tokens)
    assert reordered.preference_list(h, 3) == Ring(tokens).preference_list(h, 3)


@FAST
@given(token_maps, positions)
def test_each_position_lies_in_exactly_one_range_of_its_primary(
    tokens: dict[int, str], h: int
) -> None:
    ring = Ring(tokens)
    holders = [
        node for node in ring.nodes for start, end in ring.ranges_of(node)
        if range_contains(start, end, h)
    ]
    assert holders == [ring.primary(h)]
    assert sum(ring.ownership().values()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- membership changes


@FAST
@given(token_maps, st.sets(positions, min_size=1, max_size=10), st.data())
def test_adding_a_node_moves_keys_only_to_it(
    tokens: dict[int, str], new_tokens: set[int], data: st.DataObject
) -> None:
    new_tokens -= tokens.keys()
    assume(new_tokens)
    grown = {**tokens, **dict.fromkeys(new_tokens, "new")}
    before, after = Ring(tokens), Ring(grown)
    for h in boundary_positions(grown) + [data.draw(positions)]:
        if after.primary(h) != before.primary(h):
            assert after.primary(h) == "new"
        old, new = before.preference_list(h, 3), after.preference_list(h, 3)
        # A preference list changes exactly when the new node enters it, and the other
        # nodes keep their order: the new node is inserted, nothing else is reshuffled.
        assert (old != new) == ("new" in new)
        others = [node for node in new if node != "new"]
        assert others == old[: len(others)]


@FAST
@given(token_maps, node_names, st.data())
def test_removing_a_node_moves_exactly_its_keys(
    tokens: dict[int, str], leaving: str, data: st.DataObject
) -> None:
    remaining = without(tokens, leaving)
    assume(remaining and len(remaining) < len(tokens))
    before, after = Ring(tokens), Ring(remaining)
    for h in boundary_positions(tokens) + [data.draw(positions)]:
        moved = before.primary(h) != after.primary(h)
        assert moved == (before.primary(h) == leaving)


@SLOW
@given(st.integers(0, 2**32), st.integers(1, 8))
def test_a_new_node_takes_about_its_fair_share_of_keys(seed: int, k: int) -> None:
    capacities = {f"n{i}": 1 for i in range(k + 1)}
    full = RandomTokens().ring_tokens(strategy_members(seed, capacities, {}), {})
    joining = f"n{k}"
    before, after = Ring(without(full, joining)), Ring(full)
    moved = [h for h in KEYS if before.primary(h) != after.primary(h)]
    fair_share = len(KEYS) / (k + 1)
    assert 0.5 * fair_share <= len(moved) <= 1.6 * fair_share
    assert all(after.primary(h) == joining for h in moved)
    for h in KEYS:
        changed = before.preference_list(h, 3) != after.preference_list(h, 3)
        assert changed == (joining in after.preference_list(h, 3))


@SLOW
@given(st.integers(0, 2**32), st.integers(2, 8))
def test_a_leaving_node_hands_over_exactly_its_keys(seed: int, k: int) -> None:
    full = RandomTokens().ring_tokens(
        strategy_members(seed, {f"n{i}": 1 for i in range(k)}, {}), {}
    )
    before, after = Ring(full), Ring(without(full, "n0"))
    moved = {h for h in KEYS if before.primary(h) != after.primary(h)}
    assert moved == {h for h in KEYS if before.primary(h) == "n0"}


# --------------------------------------------------------------------------- strategy 1


@SLOW
@given(st.integers(0, 2**32))
def test_tokens_and_ownership_grow_with_capacity(seed: int) -> None:
    ring = strategy_ring(seed, {"big": 2, "a": 1, "b": 1, "c": 1, "d": 1})
    assert len(ring.tokens_of("big")) == 2 * len(ring.tokens_of("a")) == 128
    ownership = ring.ownership()
    mean_small = sum(ownership[n] for n in "abcd") / 4
    assert 1.3 <= ownership["big"] / mean_small <= 3.0


def test_initial_tokens_are_distinct_random_positions() -> None:
    tokens = RandomTokens().initial_tokens("n1", 3, {}, random.Random(7))
    assert len(tokens) == len(set(tokens)) == 3 * 64
    assert tokens == sorted(tokens)
    assert all(0 <= t < RING_SIZE for t in tokens)


def test_initial_tokens_are_reproducible_from_the_seed() -> None:
    draw = lambda seed: RandomTokens().initial_tokens("n1", 1, {}, random.Random(seed))  # noqa: E731
    assert draw(1) == draw(1) != draw(2)


def test_tokens_per_capacity_is_configurable() -> None:
    options = {"tokens_per_capacity": 5}
    assert len(RandomTokens().initial_tokens("n1", 2, options, random.Random(0))) == 10


@pytest.mark.parametrize("capacity", [0, -1, 1.5, "2", True, None])
def test_capacity_must_be_a_positive_integer(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        RandomTokens().initial_tokens("n1", capacity, {}, random.Random(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("per_capacity", [0, -3, 2.5])
def test_tokens_per_capacity_must_be_a_positive_integer(per_capacity: object) -> None:
    with pytest.raises(ValueError, match="tokens_per_capacity"):
        RandomTokens().initial_tokens(
            "n1", 1, {"tokens_per_capacity": per_capacity}, random.Random(0)
        )


def test_ring_is_the_union_of_announced_tokens() -> None:
    members = [MemberInfo("a", 1, (1, 2)), MemberInfo("b", 1, (3,))]
    assert RandomTokens().ring_tokens(members, {}) == {1: "a", 2: "a", 3: "b"}
    assert RandomTokens().ring_tokens([], {}) == {}


@FAST
@given(st.permutations(["a", "b", "c"]))
def test_a_contested_token_goes_to_the_smaller_name_in_any_order(order: list[str]) -> None:
    members = [MemberInfo(name, 1, (7, ord(name))) for name in order]
    ring = RandomTokens().ring_tokens(members, {})
    assert ring == {7: "a", ord("a"): "a", ord("b"): "b", ord("c"): "c"}


def test_strategy_1_registers_through_the_hook() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(strategies)
    (offered,) = manager.hook.dynamo_partition_strategies()
    assert "strategy-1" in offered
    assert isinstance(offered["strategy-1"], PartitionStrategy)


# --------------------------------------------------------------------------- equal partitions
# (Appended with the partition functions; their imports live here to keep the section whole.)

from bisect import bisect_left

from dynamo_core.ring import MAX_PARTITIONS, partition_end, partition_ends

#: Q values: small ones, ones that do not divide 2**128, and the largest allowed.
partition_counts = st.integers(1, 5000) | st.sampled_from([3, 7, 1000, MAX_PARTITIONS - 1,
                                                            MAX_PARTITIONS])


@FAST
@given(partition_counts, positions)
def test_a_position_lies_in_the_partition_whose_end_partition_end_gives(q: int, h: int) -> None:
    ends = partition_ends(q)
    end = partition_end(h, q)
    k = bisect_left(ends, end)
    assert ends[k] == end
    assert (ends[k - 1] if k else -1) < h <= end


@FAST
@given(partition_counts, st.data())
def test_partition_boundaries_fall_where_the_ends_are(q: int, data: st.DataObject) -> None:
    ends = partition_ends(q)
    k = data.draw(st.integers(0, q - 1))
    start = ends[k - 1] + 1 if k else 0
    assert partition_end(ends[k], q) == partition_end(start, q) == ends[k]
    if k:
        assert partition_end(start - 1, q) == ends[k - 1]
    assert partition_end(0, q) == ends[0]
    assert partition_end(RING_SIZE - 1, q) == RING_SIZE - 1


@FAST
@given(partition_counts)
def test_partition_ends_increase_to_the_top_in_near_equal_steps(q: int) -> None:
    ends = partition_ends(q)
    assert len(ends) == q
    assert ends[-1] == RING_SIZE - 1
    sizes = [ends[0] + 1] + [ends[k] - ends[k - 1] for k in range(1, q)]
    assert min(sizes) > 0  # strictly increasing
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == RING_SIZE
    assert min(sizes) == RING_SIZE // q


@pytest.mark.parametrize("bad", [0, -1, MAX_PARTITIONS + 1, 1.5, "4", True, None])
def test_bad_partition_counts_are_rejected_by_the_ring(bad: object) -> None:
    with pytest.raises(ValueError, match="partition count"):
        partition_ends(bad)  # type: ignore[arg-type]
    if bad is not None:  # None is a ring of token ranges
        with pytest.raises(ValueError, match="partition count"):
            Ring(SMALL, partitions=bad)  # type: ignore[arg-type]


@FAST
@given(token_maps, st.integers(1, 300), positions)
def test_a_partitioned_rings_ranges_are_the_partitions(
    tokens: dict[int, str], q: int, h: int
) -> None:
    ring = Ring(tokens, q)
    ends = partition_ends(q)
    assert ring.partitions == q
    assert ring.ranges() == [(ends[k - 1], ends[k]) for k in range(q)]  # the first wraps
    # Every range belongs to exactly one node; together they are the partitions.
    assert sorted(r for node in ring.nodes for r in ring.ranges_of(node)) == sorted(
        ring.ranges())
    assert sum(ring.ownership().values()) == pytest.approx(1.0)
    held = [ring.primary(end) for end in ends]
    for node, share in ring.ownership().items():
        low = held.count(node) * (RING_SIZE // q)
        assert low / RING_SIZE <= share <= (low + held.count(node)) / RING_SIZE
    # A key goes where its partition's end goes.
    assert ring.preference_list(h, 3) == Ring(tokens).preference_list(partition_end(h, q), 3)


def test_a_single_partition_is_the_whole_ring() -> None:
    ring = Ring(SMALL, partitions=1)
    assert ring.ranges() == [(RING_SIZE - 1, RING_SIZE - 1)]
    assert ring.ownership() == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert {ring.primary(h) for h in (0, 150, 250, RING_SIZE - 1)} == {"a"}
    assert repr(ring) == "Ring(3 nodes, 3 tokens, 1 partitions)"
    assert ring != Ring(SMALL) and Ring(SMALL, 4) == Ring(dict(SMALL), 4)
