"""Client-driven coordination: the ring view a node serves, and how a client routes by it."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_core.ring import Ring, key_hash
from dynamo_core.routing import REFRESH_SECONDS, RingView, Route, ring_digest, ring_document

NODES = ["n1", "n2", "n3", "n4", "n5"]


def ring_of(names: list[str], seed: int = 7, per_node: int = 8) -> Ring:
    rng = random.Random(seed)
    return Ring({rng.getrandbits(128): name for name in names for _ in range(per_node)})


def routes(names: list[str], down: tuple[str, ...] = ()) -> list[Route]:
    return [Route(n, f"tcp://127.0.0.1:{7100 + i}", "down" if n in down else "up")
            for i, n in enumerate(names)]


def view_of(ring: Ring, members: list[Route], n: int = 3,
            buckets: dict[str, int] | None = None, now: float = 0.0) -> RingView:
    return RingView.from_wire(ring_document(ring, members, n, buckets or {}), now)


@given(st.integers(0, 10_000), st.text(min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_a_client_computes_the_same_homes_as_the_node_that_served_the_view(seed, key):
    ring = ring_of(NODES, seed)
    view = view_of(ring, routes(NODES))
    assert [r.name for r in view.homes("b", key)] == ring.preference_list(key_hash("b", key), 3)


def test_a_partitioned_ring_is_served_with_its_partition_count():
    ring = Ring({((k + 1) << 128) // 8 - 1: NODES[k % 5] for k in range(8)}, partitions=8)
    view = view_of(ring, routes(NODES))
    assert view.ring == ring
    for key in ("a", "b", "c"):
        assert [r.name for r in view.homes("x", key)] == \
            ring.preference_list(key_hash("x", key), 3)


def test_a_put_goes_to_the_first_home_believed_up_and_a_get_to_any_home():
    ring = ring_of(NODES)
    view = view_of(ring, routes(NODES))
    homes = [r.address for r in view.homes("b", "k")]
    rng = random.Random(3)
    assert view.route("put", "b", "k", lambda a: True, rng) == homes[0]
    gets = {view.route("get", "b", "k", lambda a: True, rng) for _ in range(100)}
    assert gets == set(homes), "reads spread over every home"


def test_homes_believed_down_or_unusable_are_passed_over_and_none_left_means_any_node():
    ring = ring_of(NODES)
    first, second, third = view_of(ring, routes(NODES)).homes("b", "k")
    view = view_of(ring, routes(NODES, down=(first.name,)))
    rng = random.Random(1)
    assert view.route("put", "b", "k", lambda a: True, rng) == second.address
    assert view.route("put", "b", "k", lambda a: a != second.address, rng) == third.address
    assert view.route("put", "b", "k", lambda a: a == first.address, rng) is None


def test_a_bucket_with_its_own_n_is_routed_by_it():
    ring = ring_of(NODES)
    view = view_of(ring, routes(NODES), n=3, buckets={"wide": 5})
    assert len(view.homes("default", "k")) == 3
    assert len(view.homes("wide", "k")) == 5


def test_a_view_is_due_again_after_the_refresh_interval_or_once_a_node_says_it_is_stale():
    view = view_of(ring_of(NODES), routes(NODES), now=100.0)
    assert not view.due(100.0 + REFRESH_SECONDS / 2)
    assert view.due(100.0 + REFRESH_SECONDS)
    view.stale = True
    assert view.due(100.0)


def test_the_digest_changes_with_the_ring_or_an_address_not_with_states():
    ring = ring_of(NODES)
    base = ring_digest(ring, routes(NODES))
    assert ring_digest(ring, routes(NODES, down=("n1",))) == base
    assert ring_digest(ring_of(NODES, seed=8), routes(NODES)) != base
    moved = [Route("n1", "tcp://127.0.0.1:9999", "up"), *routes(NODES)[1:]]
    assert ring_digest(ring, moved) != base


def test_the_digest_is_the_same_in_every_process():
    """Clients and nodes compare digests across processes: no per-process hash seed."""
    code = ("import random; from dynamo_core.ring import Ring; "
            "from dynamo_core.routing import Route, ring_digest; "
            "rng = random.Random(7); "
            "ring = Ring({rng.getrandbits(128): n for n in ['a', 'b'] for _ in range(4)}); "
            "print(ring_digest(ring, [Route('a', 'tcp://h:1', 'up')]).hex())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={"PYTHONHASHSEED": str(seed)}, timeout=60
                              ).stdout for seed in (1, 2)}
    assert len(digests) == 1


@pytest.mark.parametrize("field, bad", [
    ("digest", "text"), ("q", -1), ("q", True), ("tokens", b"\x00" * 15),
    ("owners", [99]), ("owners", []), ("members", [["n1", "tcp://h:1"]]), ("n", 0),
    ("buckets", {"b": 0}), ("buckets", []),
])
def test_a_malformed_view_is_refused_naming_what_is_wrong(field, bad):
    body = ring_document(Ring({5: "n1"}), routes(["n1"]), 3, {})
    body[field] = bad
    with pytest.raises(ValueError, match="ring view"):
        RingView.from_wire(body, 0.0)


@given(st.dictionaries(st.sampled_from(["digest", "q", "tokens", "owners", "members", "n",
                                        "buckets"]),
                       st.one_of(st.none(), st.integers(), st.binary(max_size=40),
                                 st.text(max_size=5), st.lists(st.integers(), max_size=3))))
@settings(max_examples=300, deadline=None)
def test_any_garbage_view_is_refused_with_a_value_error_never_another_exception(body):
    try:
        RingView.from_wire(body, 0.0)
    except ValueError:
        pass
