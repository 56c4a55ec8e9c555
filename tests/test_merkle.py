"""Merkle trees for anti-entropy, as specifications.

Replicas holding the same keys must agree on every hash whatever order writes came in;
incremental updates must land where a rebuild from storage would; and a comparison must walk
only the differing subtrees and end with exactly the differing keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dynamo_core.hookspecs import RING_SIZE
from dynamo_core.merkle import (
    ABSENT,
    Descent,
    MerkleTree,
    RangeTrees,
    diff_leaf,
    differing_children,
    key_digest,
    key_id,
)
from dynamo_core.ring import Ring, key_hash, range_contains
from dynamo_core.versions import Clock, Version

FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=25, deadline=None)

positions = st.integers(min_value=0, max_value=RING_SIZE - 1)
depths = st.integers(min_value=0, max_value=8)

KeyName = tuple[str, str]
State = Mapping[KeyName, Sequence[Version]]


def version(actor: str, counter: int, tombstone: bool = False) -> Version:
    return Version(None if tombstone else f"{actor}{counter}", Clock.empty(), (actor, counter),
                   0.0, tombstone)


versions_st = st.lists(
    st.builds(version, st.sampled_from("abc"), st.integers(1, 4), st.booleans()), max_size=3)
key_names = st.tuples(st.sampled_from(["carts", "users"]),
                      st.text("xyz0123", min_size=1, max_size=4))
#: Key states: a key mapped to [] is absent.
states = st.dictionaries(key_names, versions_st, max_size=40)


def whole_ring_tree(state: State, start: int = 0, depth: int = 6,
                    order: Sequence[KeyName] | None = None) -> MerkleTree:
    """A whole-ring tree filled from ``state`` in ``order`` (default: dict order)."""
    tree = MerkleTree(start, start, depth)
    for bucket, key in (order if order is not None else list(state)):
        tree.set_digest(bucket, key, key_hash(bucket, key), key_digest(state[(bucket, key)]))
    return tree


def descend(mine: MerkleTree, theirs: MerkleTree) -> tuple[list[int], int]:
    """The exchange's descent done by hand: ``(differing leaves, node hashes compared)``."""
    level, indices, compared = 0, [0], 0
    while True:
        differ = differing_children(mine, level, indices, theirs.hashes(level, indices))
        compared += len(indices)
        if level == mine.depth or not differ:
            return (differ if level == mine.depth else []), compared
        level, indices = level + 1, [c for i in differ for c in mine.children(level, i)]


def in_range(start: int, end: int, offset: int) -> int:
    """The hash ``offset`` steps into ``(start, end]`` (wrapped to the range's size)."""
    span = (end - start) % RING_SIZE or RING_SIZE
    return (start + 1 + offset % span) % RING_SIZE


# ====================================================================== key digests


@FAST
@given(st.data(), versions_st)
def test_key_digest_ignores_the_order_versions_come_in(data, versions):
    shuffled = data.draw(st.permutations(versions))
    assert key_digest(shuffled) == key_digest(versions)


def test_key_digest_tells_a_tombstone_from_a_live_version_with_the_same_dot():
    assert key_digest([version("a", 1, True)]) != key_digest([version("a", 1, False)])


def test_key_digest_of_no_versions_means_absent():
    assert key_digest([]) == ABSENT
    assert key_digest([version("a", 1)]) != ABSENT


@FAST
@given(versions_st, versions_st)
def test_key_digest_equal_exactly_when_the_version_sets_are(a, b):
    same = {(v.dot, v.tombstone) for v in a} == {(v.dot, v.tombstone) for v in b}
    assert (key_digest(a) == key_digest(b)) == same


def test_key_digest_does_not_confuse_actor_and_counter_boundaries():
    # Length-prefixed fields: ("ab", 1) and ("a", ...) never serialize alike.
    assert key_digest([version("ab", 1)]) != key_digest([version("a", 1)])
    assert key_digest([version("a", 1), version("b", 2)]) != key_digest([version("a", 2)])


# ====================================================================== building trees


@FAST
@given(st.data(), states, positions)
def test_trees_filled_in_different_orders_have_equal_roots(data, state, start):
    order = data.draw(st.permutations(list(state)))
    a, b = whole_ring_tree(state, start), whole_ring_tree(state, start, order=order)
    assert a.root() == b.root()
    assert a.hashes(a.depth, range(a.leaves)) == b.hashes(b.depth, range(b.leaves))


def test_empty_trees_of_the_same_shape_agree():
    assert MerkleTree(5, 900).root() == MerkleTree(5, 900).root()


@FAST
@given(states, versions_st)
def test_undoing_a_write_restores_the_root(state, extra):
    assume(extra)
    tree = whole_ring_tree(state)
    before = tree.root()
    h = key_hash("carts", "new-key")
    tree.set_digest("carts", "new-key", h, key_digest(extra))
    assert tree.root() != before
    tree.set_digest("carts", "new-key", h, None)
    assert tree.root() == before


operations = st.lists(st.tuples(key_names, versions_st), max_size=60)


@SLOW
@given(st.sets(positions, min_size=1, max_size=6), operations, depths)
def test_incremental_updates_match_a_fresh_rebuild(tokens, ops, depth):
    ranges = Ring({t: "n" for t in tokens}).ranges_of("n")
    live = RangeTrees(ranges, depth)
    state: dict[KeyName, list[Version]] = {}
    for (bucket, key), new in ops:
        assert live.update(bucket, key, state.get((bucket, key), []), new) is True
        state[(bucket, key)] = new
    fresh = RangeTrees(ranges, depth)
    fresh.rebuild((b, k, vs) for (b, k), vs in state.items())
    for a, b in zip(live.trees(), fresh.trees(), strict=True):
        assert a.root() == b.root()
        assert all(a.leaf_keys(i) == b.leaf_keys(i) for i in range(a.leaves))


def test_a_stale_old_digest_is_reported_and_the_tree_stays_consistent():
    trees = RangeTrees([(0, 0)])
    assert trees.update("carts", "k", [], [version("a", 1)]) is True
    # The caller believes the key was absent; the tree knows better and heals anyway.
    assert trees.update("carts", "k", [], [version("a", 2)]) is False
    fresh = RangeTrees([(0, 0)])
    fresh.rebuild([("carts", "k", [version("a", 2)])])
    assert trees.trees()[0].root() == fresh.trees()[0].root()


def test_leaf_keys_are_a_copy_and_name_keys_by_bucket_and_key():
    tree = whole_ring_tree({("carts", "k"): [version("a", 1)]})
    leaf = tree.leaf_index(key_hash("carts", "k"))
    keys = tree.leaf_keys(leaf)
    assert key_id("carts", "k") == "carts/k"
    assert keys == {"carts/k": key_digest([version("a", 1)])}
    keys.clear()
    assert tree.leaf_keys(leaf)


def test_reading_the_root_does_not_change_it():
    tree = whole_ring_tree({("carts", "k"): [version("a", 1)]})
    assert tree.root() == tree.root()


# ====================================================================== comparing trees


def _changed(state: dict[KeyName, Sequence[Version]], target: KeyName,
             how: int) -> dict[KeyName, Sequence[Version]]:
    """``state`` with ``target`` given another version set, removed, or added."""
    other = dict(state)
    if how == 0:
        other[target] = list(state.get(target, [])) + [version("z", 9)]
    elif how == 1:
        other.pop(target, None)
    else:
        other[target] = [version("z", 9, tombstone=True)]
    return other


@FAST
@given(states, key_names, st.integers(0, 2), st.integers(0, 8))
def test_one_differing_key_leads_the_descent_to_its_leaf_and_nothing_else(state, target, how,
                                                                          depth):
    theirs_state = _changed(state, target, how)
    assume(key_digest(state.get(target, [])) != key_digest(theirs_state.get(target, [])))
    mine, theirs = whole_ring_tree(state, depth=depth), whole_ring_tree(theirs_state, depth=depth)
    assert mine.root() != theirs.root()

    leaves, compared = descend(mine, theirs)

    target_leaf = mine.leaf_index(key_hash(*target))
    assert leaves == [target_leaf]
    assert compared <= 1 + 2 * depth
    send, fetch = diff_leaf(mine.leaf_keys(target_leaf), theirs.leaf_keys(target_leaf))
    assert set(send) | set(fetch) == {key_id(*target)}
    assert bool(send) == bool(state.get(target)) and bool(fetch) == bool(theirs_state.get(target))


@FAST
@given(states, st.lists(st.tuples(key_names, st.integers(0, 2)), max_size=8), st.integers(0, 8))
def test_the_descent_finds_exactly_the_differing_keys_at_o_depth_cost(state, changes, depth):
    theirs_state = dict(state)
    for target, how in changes:
        theirs_state = _changed(theirs_state, target, how)
    differing = {key_id(*k) for k in set(state) | set(theirs_state)
                 if key_digest(state.get(k, [])) != key_digest(theirs_state.get(k, []))}
    mine, theirs = whole_ring_tree(state, depth=depth), whole_ring_tree(theirs_state, depth=depth)

    descent = Descent(mine)
    while not descent.done:
        level, indices = descent.request()
        descent.receive(theirs.hashes(level, indices))

    expected_leaves = sorted({mine.leaf_index(key_hash(*kid.split("/", 1))) for kid in differing})
    assert descent.leaves == expected_leaves
    assert descent.compared <= 1 + 2 * depth * max(1, len(expected_leaves))
    found: set[str] = set()
    for leaf in descent.leaves:
        send, fetch = diff_leaf(mine.leaf_keys(leaf), theirs.leaf_keys(leaf))
        found |= set(send) | set(fetch)
    assert found == differing
    assert (mine.root() == theirs.root()) == (not differing)


def test_identical_trees_compare_only_their_roots():
    state = {("carts", f"k{i}"): [version("a", i + 1)] for i in range(200)}
    descent = Descent(whole_ring_tree(state))
    level, indices = descent.request()
    descent.receive(whole_ring_tree(state).hashes(level, indices))
    assert descent.done and descent.leaves == [] and descent.compared == 1


leaf_dicts = st.dictionaries(st.sampled_from([f"b/k{i}" for i in range(12)]),
                             st.sampled_from([bytes([i]) * 16 for i in range(1, 4)]))


@FAST
@given(leaf_dicts, leaf_dicts)
def test_diff_leaf_sends_what_i_hold_differently_and_fetches_what_they_do(mine, theirs):
    send, fetch = diff_leaf(mine, theirs)
    assert set(send) == {k for k in mine if mine[k] != theirs.get(k)}
    assert set(fetch) == {k for k in theirs if theirs[k] != mine.get(k)}
    both = {k for k in mine.keys() & theirs.keys() if mine[k] != theirs[k]}
    assert set(send) & set(fetch) == both
    assert send == sorted(send) and fetch == sorted(fetch)
    # After exchanging only these keys, a key-by-key merge leaves nothing to exchange.
    merged = {k: max(d for d in (mine.get(k), theirs.get(k)) if d)
              for k in mine.keys() | theirs.keys()}
    mine_after = {**mine, **{k: merged[k] for k in fetch}}
    theirs_after = {**theirs, **{k: merged[k] for k in send}}
    assert diff_leaf(mine_after, theirs_after) == ([], [])


def test_peer_answers_are_checked():
    tree = MerkleTree(0, 0, depth=3)
    with pytest.raises(ValueError):
        differing_children(tree, 1, [0, 1], [ABSENT])
    for level, indices in ((4, [0]), (-1, [0]), (2, [4]), (2, [-1]), (1, [True])):
        with pytest.raises(ValueError):
            tree.hashes(level, indices)
    with pytest.raises(ValueError):
        tree.leaf_keys(8)
    assert tree.children(3, 7) == [] and tree.children(2, 3) == [6, 7]


# ====================================================================== leaves and ranges


@FAST
@given(positions, positions, depths, st.integers(0, RING_SIZE))
def test_leaf_index_stays_within_the_leaves_for_any_range(start, end, depth, offset):
    tree = MerkleTree(start, end, depth)
    first, last = in_range(start, end, 0), (end if start != end else start)
    for h in (first, last, in_range(start, end, offset)):
        assert tree.covers(h)
        assert 0 <= tree.leaf_index(h) < tree.leaves
    assert tree.leaf_index(first) == 0
    span = (end - start) % RING_SIZE or RING_SIZE
    if span >= tree.leaves:
        assert tree.leaf_index(last) == tree.leaves - 1


@pytest.mark.parametrize("start,end", [(0, 0), (7, 7), (RING_SIZE - 1, RING_SIZE - 1),
                                       (RING_SIZE - 10, 5), (RING_SIZE - 1, 0), (0, RING_SIZE - 1),
                                       (3, 4)])
def test_leaf_index_at_range_boundaries(start, end):
    tree = MerkleTree(start, end, depth=6)
    for h in (in_range(start, end, 0), end, in_range(start, end, -1)):
        assert 0 <= tree.leaf_index(h) < 64


@FAST
@given(positions, positions, positions)
def test_leaf_index_refuses_hashes_outside_the_range(start, end, h):
    assume(not range_contains(start, end, h))
    with pytest.raises(ValueError):
        MerkleTree(start, end).leaf_index(h)


@FAST
@given(positions, positions, depths, st.lists(st.integers(0, RING_SIZE), min_size=2, max_size=2))
def test_two_replicas_split_a_range_alike_and_in_ring_order(start, end, depth, offsets):
    a, b = MerkleTree(start, end, depth), MerkleTree(start, end, depth)
    lo, hi = sorted(o % ((end - start) % RING_SIZE or RING_SIZE) for o in offsets)
    h_lo, h_hi = in_range(start, end, lo), in_range(start, end, hi)
    assert a.leaf_index(h_lo) == b.leaf_index(h_lo) <= a.leaf_index(h_hi)


@FAST
@given(st.sets(positions, min_size=1, max_size=12), st.data(), positions, depths)
def test_tree_for_finds_the_range_containing_a_hash(tokens, data, h, depth):
    all_ranges = Ring({t: "n" for t in tokens}).ranges_of("n")
    ranges = data.draw(st.lists(st.sampled_from(all_ranges), unique=True))
    probes = [h] + [p for s, e in ranges for p in (s, e, (s + 1) % RING_SIZE)]
    trees = RangeTrees(ranges, depth)
    for p in probes:
        expected = [r for r in ranges if range_contains(r[0], r[1], p)]
        found = trees.tree_for(p)
        assert ([] if found is None else [(found.start, found.end)]) == expected


def test_range_trees_refuse_overlapping_ranges():
    for ranges in ([(0, 10), (5, 20)], [(0, 0), (5, 20)], [(100, 10), (200, 5)],
                   [(100, 10), (5, 20)], [(100, 10), (50, 150)], [(1, 2), (1, 2)]):
        with pytest.raises(ValueError):
            RangeTrees(ranges)


def test_range_trees_ignore_keys_in_no_range():
    h = key_hash("carts", "k")
    trees = RangeTrees([(h, (h + 100) % RING_SIZE)])
    assert trees.update("carts", "k", [], [version("a", 1)]) is None
    assert trees.rebuild([("carts", "k", [version("a", 1)])]) == 0
    assert len(trees.trees()[0]) == 0
    assert trees.tree_of_range(h, (h + 100) % RING_SIZE) is trees.tree_for(h + 1)


def test_bad_tree_shapes_are_refused():
    for args in ((0, 0, 17), (0, 0, -1), (-1, 0), (0, RING_SIZE)):
        with pytest.raises(ValueError):
            MerkleTree(*args)


# ------------------------------------------------------------ fixed partitions keep their trees


def test_trees_of_ranges_held_before_and_after_a_ring_change_are_adopted_whole() -> None:
    quarter = RING_SIZE // 4
    before = RangeTrees([(0, quarter), (quarter, 2 * quarter)], depth=3)
    kept = before.tree_of_range(quarter, 2 * quarter)
    after = RangeTrees([(quarter, 2 * quarter), (2 * quarter, 3 * quarter)], depth=3,
                       keep=before)
    assert after.tree_of_range(quarter, 2 * quarter) is kept
    assert after.tree_of_range(2 * quarter, 3 * quarter) is not None
    assert after.tree_of_range(0, quarter) is None


def test_trees_of_another_depth_are_not_adopted() -> None:
    before = RangeTrees([(0, RING_SIZE // 2)], depth=3)
    after = RangeTrees([(0, RING_SIZE // 2)], depth=4, keep=before)
    assert after.tree_of_range(0, RING_SIZE // 2) is not before.tree_of_range(0, RING_SIZE // 2)
    assert after.depth == 4
