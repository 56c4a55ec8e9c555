"""Partition strategies 2 and 3, and what all three share, as specifications.

Invariants are Hypothesis properties over arbitrary memberships; the movement bounds of
strategy 3 are statistical, with the figures measured on the implementation quoted next to
each bound. The load-balancing example (the paper's Figure 8) is run as a subprocess.
"""

from __future__ import annotations

import functools
import importlib.util
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_core import hookspecs
from dynamo_core.config import from_mapping
from dynamo_core.errors import ConfigError
from dynamo_core.hookspecs import MemberInfo, PartitionStrategy
from dynamo_core.node import Node
from dynamo_core.plugins import Registry, make_plugin_manager
from dynamo_core.ring import MAX_PARTITIONS, RING_SIZE, Ring, partition_end, partition_ends

FAST = settings(max_examples=40, deadline=None)
SLOW = settings(max_examples=10, deadline=None)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "load_balancing.py"
NAMES = ("strategy-1", "strategy-2", "strategy-3")
PARTITIONED = ("strategy-2", "strategy-3")

REGISTRY = Registry(make_plugin_manager())

positions = st.integers(min_value=0, max_value=RING_SIZE - 1)
member_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1,
                       max_size=10)
capacities = st.integers(min_value=1, max_value=8)
#: (name, capacity) pairs with distinct names, as a membership holds them
memberships = st.dictionaries(member_names, capacities, min_size=1, max_size=12).map(
    lambda d: sorted(d.items()))
partition_counts = st.integers(min_value=1, max_value=300)

#: Options that keep rings small enough for many examples.
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "strategy-1": {"tokens_per_capacity": 3},
    "strategy-2": {"tokens_per_capacity": 3, "partitions": 128},
    "strategy-3": {"partitions": 128},
}


def strategy(name: str) -> PartitionStrategy:
    """A strategy picked by name, as a node picks it."""
    return REGISTRY.partition_strategy(name)


def members_of(name: str, membership: Sequence[tuple[str, int]], options: Mapping[str, Any],
               seed: int = 0) -> list[MemberInfo]:
    """MemberInfos with the tokens each member would announce (drawn from one seed)."""
    rng = random.Random(seed)
    chosen = strategy(name)
    return [MemberInfo(member, capacity,
                       tuple(chosen.initial_tokens(member, capacity, options, rng)))
            for member, capacity in membership]


def ring_of(name: str, members: Sequence[MemberInfo], options: Mapping[str, Any]) -> Ring:
    """The ring a membership builds, exactly as dynamo_core.membership builds it."""
    chosen = strategy(name)
    return Ring(chosen.ring_tokens(members, options), chosen.partition_count(options))


def unit_members(names: Sequence[str]) -> list[MemberInfo]:
    return [MemberInfo(n, 1, ()) for n in names]


def owner_of_partitions(members: Sequence[MemberInfo], q: int) -> dict[int, str]:
    """Strategy 3's assignment: partition end -> owner."""
    return strategy("strategy-3").ring_tokens(members, {"partitions": q})


# --------------------------------------------------------------------------- the plugin


def test_the_builtin_plugin_offers_all_three_through_the_hook() -> None:
    from dynamo_plugins import strategies as builtin

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(builtin)
    (offered,) = manager.hook.dynamo_partition_strategies()
    assert set(offered) == set(NAMES)
    for name, implementation in offered.items():
        assert isinstance(implementation, PartitionStrategy)
        assert implementation.name == name


def test_the_registry_lists_and_picks_them_by_name() -> None:
    assert set(NAMES) <= set(REGISTRY.names("partition strategy"))
    for name in NAMES:
        assert REGISTRY.partition_strategy(name).name == name


def test_a_node_refuses_an_unknown_strategy_listing_the_available_ones() -> None:
    config = from_mapping({"storage": {"engine": "memory"},
                           "partitioning": {"strategy": "strategy-9"}})
    with pytest.raises(ConfigError, match="strategy-9") as caught:
        Node("n1", "tcp://127.0.0.1:1", config=config, data_dir=None)
    assert all(name in str(caught.value) for name in NAMES)


@pytest.mark.parametrize(
    ("partitioning", "named"),
    [
        ({"strategy": "strategy-3", "tokens_per_capacity": 8}, "tokens_per_capacity"),
        ({"strategy": "strategy-1", "partitions": 64}, "partitions"),
        ({"strategy": "strategy-2", "partitions": 0}, "partitions"),
        ({"strategy": "strategy-3", "partitions": MAX_PARTITIONS + 1}, "partitions"),
        ({"strategy": "strategy-2", "tokens_per_capacity": -1}, "tokens_per_capacity"),
    ],
)
def test_a_node_refuses_bad_strategy_options(partitioning: dict[str, Any], named: str) -> None:
    config = from_mapping({"storage": {"engine": "memory"}, "partitioning": partitioning})
    with pytest.raises(ConfigError, match=named):
        Node("n1", "tcp://127.0.0.1:1", config=config, data_dir=None)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("strategy-3", "tokens_per_capacity"),
        ("strategy-1", "partitions"),
        ("strategy-1", "partition"),
        ("strategy-2", "tokens"),
        ("strategy-3", "partitons"),
    ],
)
def test_options_a_strategy_does_not_read_are_rejected_by_name(name: str, option: str) -> None:
    with pytest.raises(ValueError, match=option) as caught:
        strategy(name).partition_count({"strategy": name, option: 4})
    assert name in str(caught.value)


@pytest.mark.parametrize("name", PARTITIONED)
@pytest.mark.parametrize("bad", [0, -1, MAX_PARTITIONS + 1, 1.5, "8", True, None])
def test_bad_partition_counts_are_rejected(name: str, bad: object) -> None:
    with pytest.raises(ValueError, match="partitions"):
        strategy(name).partition_count({"partitions": bad})
    if name == "strategy-3":
        with pytest.raises(ValueError, match="partitions"):
            strategy(name).ring_tokens(unit_members(["a"]), {"partitions": bad})


def test_partition_counts_default_and_are_configurable() -> None:
    assert strategy("strategy-1").partition_count({}) is None
    assert strategy("strategy-2").partition_count({}) == 1024
    assert strategy("strategy-3").partition_count({}) == 256
    for name in PARTITIONED:
        for q in (1, 7, MAX_PARTITIONS):
            assert strategy(name).partition_count({"strategy": name, "partitions": q}) == q


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("capacity", [0, -1, 1.5, "2", True, None])
def test_every_strategy_requires_a_positive_integer_capacity(name: str, capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        strategy(name).initial_tokens("n1", capacity, {}, random.Random(0))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("name", NAMES)
def test_no_members_make_an_empty_ring(name: str) -> None:
    assert strategy(name).ring_tokens([], {}) == {}
    ring = ring_of(name, [], {})
    assert ring.nodes == frozenset() and ring.preference_list(0, 3) == []


@FAST
@given(st.sampled_from(NAMES), memberships, st.integers(0, 2**32),
       st.randoms(use_true_random=False))
def test_the_ring_is_the_same_whatever_order_members_are_listed_in(
    name: str, membership: list[tuple[str, int]], seed: int, shuffler: random.Random
) -> None:
    options = SMALL_OPTIONS[name]
    members = members_of(name, membership, options, seed)
    shuffled = list(members)
    shuffler.shuffle(shuffled)
    assert strategy(name).ring_tokens(shuffled, options) == strategy(name).ring_tokens(
        members, options)
    assert ring_of(name, shuffled, options) == ring_of(name, members, options)


@FAST
@given(st.sampled_from(NAMES), memberships, st.integers(0, 2**32), positions)
def test_every_strategy_builds_a_ring_that_covers_the_space(
    name: str, membership: list[tuple[str, int]], seed: int, h: int
) -> None:
    options = SMALL_OPTIONS[name]
    ring = ring_of(name, members_of(name, membership, options, seed), options)
    assert ring.nodes <= {member for member, _ in membership}
    assert sum(ring.ownership().values()) == pytest.approx(1.0)
    preference = ring.preference_list(h, 3)
    assert len(preference) == len(set(preference)) == min(3, len(ring.nodes))


# --------------------------------------------------------------------------- strategy 3


def test_strategy_3_announces_no_tokens() -> None:
    assert strategy("strategy-3").initial_tokens("n1", 4, {}, random.Random(0)) == []


@FAST
@given(memberships, partition_counts)
def test_strategy_3_owns_every_partition_end_exactly_once(
    membership: list[tuple[str, int]], q: int
) -> None:
    members = [MemberInfo(n, c, ()) for n, c in membership]
    owners = owner_of_partitions(members, q)
    # A dict holds each end once; that it holds all Q ends, and nothing else, is the property.
    assert sorted(owners) == partition_ends(q)
    assert set(owners.values()) <= {n for n, _ in membership}


@FAST
@given(memberships, partition_counts)
def test_strategy_3_shares_are_within_one_partition_of_capacity_shares(
    membership: list[tuple[str, int]], q: int
) -> None:
    members = [MemberInfo(n, c, ()) for n, c in membership]
    held = Counter(owner_of_partitions(members, q).values())
    total = sum(c for _, c in membership)
    for name, capacity in membership:
        assert abs(held[name] - q * capacity / total) < 1, (name, held[name])
    assert sum(held.values()) == q


@FAST
@given(st.integers(2, 40), st.integers(1, 12), positions)
def test_strategy_3_with_more_members_than_partitions(extra: int, q: int, h: int) -> None:
    names = [f"m{i:02d}" for i in range(q + extra)]
    owners = owner_of_partitions(unit_members(names), q)
    assert sorted(owners) == partition_ends(q)
    # Each partition has its own owner; the other members own nothing (and still serve).
    assert len(set(owners.values())) == q
    ring = Ring(owners, q)
    assert len(ring.nodes) == q < len(names)
    assert len(ring.preference_list(h, 3)) == min(3, q)
    assert sum(ring.ownership().values()) == pytest.approx(1.0)


def test_strategy_3_gives_capacity_proportional_shares() -> None:
    members = [MemberInfo("big", 3, ()), MemberInfo("a", 1, ()), MemberInfo("b", 1, ())]
    held = Counter(owner_of_partitions(members, 250).values())
    assert held == {"big": 150, "a": 50, "b": 50}
    ownership = Ring(owner_of_partitions(members, 250), 250).ownership()
    assert ownership["big"] == pytest.approx(0.6) and ownership["a"] == pytest.approx(0.2)


#: Strategy 3 on a join, Q = 256, S <= 8 members before it. Measured on 2000 random
#: memberships per S: the new member always takes exactly its quota; partitions changing
#: owner in all were at most 1.16x (S=2), 1.31x (S=4), 1.45x (S=6), 1.59x (S=7) and 1.62x
#: (S=8) the ideal Q/(S+1) (medians 1.03x to 1.27x), because shrinking the old members'
#: quotas also shifts a few partitions between old members: at most 19 of 256.
JOIN_MOVE_BOUND = 1.75
BETWEEN_OLD_BOUND = 256 // 10


@SLOW
@given(st.integers(1, 8), st.text(alphabet="xyz0123456789", min_size=1, max_size=6))
def test_a_joining_strategy_3_member_takes_its_quota_and_little_else_moves(
    s: int, prefix: str
) -> None:
    q = 256
    old = unit_members([f"{prefix}-{i}" for i in range(s)])
    new = MemberInfo(f"{prefix}-new", 1, ())
    before, after = owner_of_partitions(old, q), owner_of_partitions([*old, new], q)
    moved = [end for end in before if before[end] != after[end]]
    taken = [end for end in moved if after[end] == new.name]
    assert len(taken) in (q // (s + 1), -(-q // (s + 1)))
    assert len(moved) <= JOIN_MOVE_BOUND * q / (s + 1)
    assert len(moved) - len(taken) <= BETWEEN_OLD_BOUND


@SLOW
@given(st.integers(2, 9), st.text(alphabet="xyz0123456789", min_size=1, max_size=6))
def test_a_leaving_strategy_3_member_hands_off_its_partitions_and_little_else_moves(
    s: int, prefix: str
) -> None:
    # Measured as above (2000 memberships per size): at most 1.58x the leaver's share
    # Q/S moved in all, and at most 17 of 256 partitions between the members that stay.
    q = 256
    members = unit_members([f"{prefix}-{i}" for i in range(s)])
    leaving = members[0].name
    before, after = owner_of_partitions(members, q), owner_of_partitions(members[1:], q)
    assert leaving not in after.values()
    moved = [end for end in before if before[end] != after[end]]
    handed_off = [end for end in moved if before[end] == leaving]
    assert len(handed_off) == sum(1 for owner in before.values() if owner == leaving)
    assert len(moved) <= JOIN_MOVE_BOUND * q / s
    assert len(moved) - len(handed_off) <= BETWEEN_OLD_BOUND


@pytest.mark.xfail(strict=True, reason=(
    "strategy 3's bounded rendezvous moves far more than 1/n on a join once S is large "
    "relative to Q/S: with the default Q=256 and members n0..n29, n30 joining moves 21 "
    "partitions where the ideal is 256/31 = 8.3 (2.5x; over 30 random memberships of 29 "
    "the median was 2.3x, the max 3.3x), because every old member's quota shrinks and the "
    "greedy assignment re-deals partitions among old members. SPEC: 'only about 1/n of "
    "keys move'. A known limit (strategies.py): the fix keeps the assignment as gossiped "
    "state, as the paper does"))
def test_a_join_to_a_30_node_strategy_3_cluster_moves_about_one_nth() -> None:
    q = strategy("strategy-3").partition_count({})
    old = unit_members([f"n{i}" for i in range(30)])
    before = owner_of_partitions(old, q)
    after = owner_of_partitions([*old, MemberInfo("n30", 1, ())], q)
    moved = sum(1 for end in before if before[end] != after[end])
    assert moved <= 1.5 * q / 31


# --------------------------------------------------------------------------- strategies 2 and 3


@FAST
@given(st.sampled_from(PARTITIONED), memberships, st.integers(1, 2000), st.integers(0, 2**32),
       positions)
def test_keys_of_one_partition_share_one_preference_list(
    name: str, membership: list[tuple[str, int]], q: int, seed: int, h: int
) -> None:
    options: dict[str, Any] = {"partitions": q}
    if name == "strategy-2":
        options["tokens_per_capacity"] = 2
    ring = ring_of(name, members_of(name, membership, options, seed), options)
    end = partition_end(h, q)
    ends = partition_ends(q)
    k = ends.index(end)
    first = ends[k - 1] + 1 if k else 0
    expected = ring.preference_list(end, 4)
    for position in (first, h, end, (first + end) // 2):
        assert ring.preference_list(position, 4) == expected
    assert ring.primary(h) == expected[0]


@FAST
@given(memberships, st.integers(1, 2000), st.integers(0, 2**32), positions)
def test_strategy_2_places_a_partition_by_walking_the_tokens_from_its_end(
    membership: list[tuple[str, int]], q: int, seed: int, h: int
) -> None:
    options = {"tokens_per_capacity": 3, "partitions": q}
    tokens = strategy("strategy-2").ring_tokens(
        members_of("strategy-2", membership, options, seed), options)
    partitioned, plain = Ring(tokens, q), Ring(tokens)
    assert partitioned.partitions == q
    plain_options = {"tokens_per_capacity": 3}  # strategy 1's: the same random tokens
    assert tokens == strategy("strategy-1").ring_tokens(
        members_of("strategy-1", membership, plain_options, seed), plain_options)
    assert list(partitioned.walk(h)) == list(plain.walk(partition_end(h, q)))


@FAST
@given(memberships, st.integers(1, 400), st.integers(0, 2**32))
def test_strategy_2_ownership_is_strategy_1s_to_within_a_partition_per_token(
    membership: list[tuple[str, int]], q: int, seed: int
) -> None:
    options = {"tokens_per_capacity": 2, "partitions": q}
    tokens = strategy("strategy-2").ring_tokens(
        members_of("strategy-2", membership, options, seed), options)
    partitioned, plain = Ring(tokens, q).ownership(), Ring(tokens).ownership()
    # Each token range gains or loses less than one partition at its ends.
    largest = (RING_SIZE // q + 1) / RING_SIZE
    counts = Counter(tokens.values())
    for node, share in plain.items():
        assert abs(partitioned.get(node, 0.0) - share) <= counts[node] * largest + 1e-12


@SLOW
@given(memberships, st.integers(1, 512), st.integers(0, 2**32))
def test_a_strategy_2_join_moves_partitions_only_to_the_new_member(
    membership: list[tuple[str, int]], q: int, seed: int
) -> None:
    options = {"tokens_per_capacity": 2, "partitions": q}
    members = members_of("strategy-2", [*membership, ("NEW", 1)], options, seed)
    before, after = ring_of("strategy-2", members[:-1], options), ring_of(
        "strategy-2", members, options)
    for end in partition_ends(q):
        if after.primary(end) != before.primary(end):
            assert after.primary(end) == "NEW"
        old, new = before.preference_list(end, 3), after.preference_list(end, 3)
        # The new member is inserted; the others keep their order.
        assert (old != new) == ("NEW" in new)
        assert [n for n in new if n != "NEW"] == old[: len(new) - ("NEW" in new)]


# --------------------------------------------------------------------------- the example


@functools.cache
def load_example() -> ModuleType:
    """The example script as a module (it is not a package), loaded once."""
    spec = importlib.util.spec_from_file_location("load_balancing_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@FAST
@given(st.dictionaries(positions, st.sampled_from("abcdef"), min_size=1, max_size=30),
       st.sampled_from([None, 1, 5, 64]), st.integers(1, 4))
def test_the_examples_loads_add_up_to_n_copies_of_the_space(
    tokens: dict[int, str], q: int | None, n: int
) -> None:
    module = load_example()
    ring = Ring(tokens, q)
    loads = module.node_loads(ring, n, ["idle"])
    # The example asks the ring once per token; asking it once per range gives the same.
    naive = dict.fromkeys(loads, 0)
    for start, end in ring.ranges():
        for node in ring.preference_list(end, n):
            naive[node] += (end - start) % RING_SIZE or RING_SIZE
    assert loads == naive
    assert sum(loads.values()) == min(n, len(ring.nodes)) * RING_SIZE
    assert loads["idle"] == 0  # a member without a place on the ring still counts
    assert all(0 <= load <= RING_SIZE for load in loads.values())
    if q is None:  # every token owner replicates its own range at least
        assert all(loads[node] > 0 for node in ring.nodes)
    assert 0 < module.efficiency(loads) <= 1


def test_the_load_balancing_example_reproduces_the_papers_ranking(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    done = subprocess.run([sys.executable, str(EXAMPLE), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert re.search(r"strategy\s+T\s+Q\s+metadata\s+efficiency", done.stdout)
    rows = [line.split() for line in done.stdout.splitlines()
            if re.match(r"strategy-[123]\s", line)]
    assert {row[0] for row in rows} == set(NAMES)
    largest = max(int(row[3]) for row in rows)
    at_largest = {row[0]: float(row[4]) for row in rows
                  if int(row[3]) == largest and row[0] != "strategy-2"}
    assert at_largest["strategy-3"] >= at_largest["strategy-1"]
    assert "Best: strategy-3" in done.stdout
