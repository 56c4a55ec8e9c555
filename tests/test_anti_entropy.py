"""Merkle anti-entropy, tombstones and a node's place in the ring, against real processes.

Every test but the first starts its own cluster of ``dynamo node`` processes (see
``conftest.py``) with short intervals, so that gossip, failure detection, anti-entropy and
hint delivery all happen within a second or two. What is checked is what an operator can see from outside:
``status`` counters, ``preflist`` and ``inspect`` (one node's local storage, no quorum).

The figures the issue asks for (keys transferred against keys lost) are printed; run with
``-s`` to see them.
"""

from __future__ import annotations

import random
import shutil
import time
from typing import Any

import pytest
from conftest import Cluster, homes, load, status, wait_for

from dynamo_core import config as config_mod
from dynamo_core.membership import Member
from dynamo_core.merkle import RangeTrees, key_id
from dynamo_core.core import NodeCore
from dynamo_core.ring import key_hash
from dynamo_core.versions import Clock, Version

#: Short intervals: gossip and heartbeats five times a second, an anti-entropy round every
#: 50 ms, hint delivery every 200 ms, and background work limited only by the CPU.
CONFIG: dict[str, Any] = {
    "cluster": {"gossip_interval": 0.2, "heartbeat_interval": 0.2, "request_timeout": 1.0},
    "anti_entropy": {"interval": 0.05},
    "handoff": {"interval": 0.2},
    "background": {"rate": 100000.0, "burst": 1000, "max_concurrent": 8},
}

#: Keys loaded into the wiped-node test.
WIPE_KEYS = 2000


# ====================================================================== helpers


def with_config(**sections: dict[str, Any]) -> dict[str, Any]:
    merged = {name: dict(table) for name, table in CONFIG.items()}
    for name, table in sections.items():
        merged.setdefault(name, {}).update(table)
    return merged


def ae(cl: Cluster, name: str) -> dict[str, Any]:
    return status(cl, name)["anti_entropy"]


def versions_on(cl: Cluster, name: str, key: str) -> list[dict[str, Any]]:
    with cl.client(name) as c:
        return c.inspect(key, cl.address(name))["versions"]


def state_seen(cl: Cluster, observer: str, peer: str) -> str:
    members = status(cl, observer)["members"]
    return next(m["state"] for m in members if m["name"] == peer)


def wait_down(cl: Cluster, peer: str, observers: list[str], timeout: float = 10.0) -> None:
    wait_for(lambda: all(state_seen(cl, o, peer) == "down" for o in observers), timeout,
             f"{observers} to see {peer} down")


def wipe_and_restart(cl: Cluster, name: str) -> None:
    """kill -9, remove the whole data directory, start again under the same name."""
    cl.kill(name)
    shutil.rmtree(cl.data_dir(name))
    assert not cl.data_dir(name).exists()
    cl.restart(name)


def home_keys(cl: Cluster, keys: list[str], name: str, via: str) -> set[str]:
    """The keys ``name`` is a home node of, as node ``via`` sees the ring."""
    return {k for k in keys if name in homes(cl, k, via)}


def member_view(cl: Cluster, observer: str, name: str) -> dict[str, Any]:
    return next(m for m in status(cl, observer)["members"] if m["name"] == name)


# ====================================================================== trees across ring changes


def test_after_each_ring_change_the_trees_and_work_lists_match_a_rebuild_from_storage():
    """A ring change re-files what the trees already know instead of scanning storage;
    the result must be exactly what a scan would give: the same trees, the same keys to
    hand over, the same tombstones waiting to be reaped."""
    rng = random.Random(3)
    cfg = config_mod.from_mapping({"storage": {"engine": "memory"},
                                   "buckets": {"pairs": {"n": 2, "r": 1, "w": 1}}})
    node = NodeCore("n1", "tcp://127.0.0.1:1", config=cfg, rng=random.Random(1),
                    wall_clock=lambda: 1_800_000_000.0)
    try:
        ae_ = node.anti_entropy
        ae_.refresh()  # alone on the ring: it replicates everything
        for i in range(400):
            bucket = "pairs" if i % 3 == 0 else "default"
            dead = i % 5 == 0
            node.store.apply(bucket, f"k{i}", [Version(None if dead else i, Clock.empty(),
                                                       ("a", i + 1), 1.0, dead)])

        def member(name: str, version: int = 1, status: str = "up") -> Member:
            tokens = tuple(sorted(rng.getrandbits(128) for _ in range(8)))
            return Member(name, f"tcp://127.0.0.1:{version}", 1, tokens, status, version)

        changes = [[member("n2"), member("n3")], [member("n4")],
                   [member("n3", 2, "removed")], [member("n5")], [member("n2", 2, "leaving")]]
        for change in changes:
            node.membership.merge(change)
            ae_.refresh()
            ring = node.membership.ring
            for n, trees in ae_.trees.items():
                fresh = RangeTrees(trees.ranges(), trees.depth)
                fresh.rebuild((b, k, vs) for b, k, vs in node.store.items()
                              if cfg.bucket(b).n == n)
                assert [t.root() for t in trees.trees()] == [t.root() for t in fresh.trees()]
            unowned, tombstones = set(), set()
            for b, k, vs in node.store.items():
                if "n1" not in ring.preference_list(key_hash(b, k), cfg.bucket(b).n):
                    unowned.add(key_id(b, k))
                elif all(v.tombstone for v in vs):
                    tombstones.add(key_id(b, k))
            assert ae_.stats()["unowned"] == len(unowned)
            assert {key_id(b, k) for b, k, _, _ in ae_.unowned(10_000)} == unowned
            assert set(ae_._tombstones) == tombstones
            assert 0 < len(unowned) < 400
    finally:
        node.close()


# ====================================================================== a wiped node


@pytest.mark.cluster
def test_a_wiped_node_gets_back_every_key_it_is_home_for_moving_at_most_twice_what_it_lost(
        cluster):
    cl = cluster(4, config=CONFIG)
    keys = {f"wipe-{i}": i for i in range(WIPE_KEYS)}
    load(cl, keys)
    victim = "n3"
    others = [n for n in cl.names if n != victim]
    lost = home_keys(cl, list(keys), victim, via="n1")
    wait_for(lambda: status(cl, victim)["keys"] == len(lost), 15,
             f"{victim} to hold its {len(lost)} keys")
    before = {n: ae(cl, n) for n in others}

    started = time.monotonic()
    wipe_and_restart(cl, victim)
    wait_for(lambda: ae(cl, victim)["keys_replicated"] == len(lost), 60,
             f"anti-entropy to restore {victim}'s {len(lost)} keys")
    recovery = time.monotonic() - started

    # Every key it is home for is back, with its value, and nothing else came with them.
    for key in sorted(lost):
        assert [v["value"] for v in versions_on(cl, victim, key)] == [keys[key]], key
    assert status(cl, victim)["keys"] == len(lost)

    # Let the last exchanges finish before counting what moved.
    def settled() -> dict[str, dict[str, Any]]:
        first = {n: ae(cl, n) for n in cl.names}
        time.sleep(0.5)
        second = {n: ae(cl, n) for n in cl.names}
        moved = ("keys_sent", "keys_fetched", "keys_shipped")
        same = all(first[n][f] == second[n][f] for n in cl.names for f in moved)
        return second if same else {}

    after = wait_for(settled, 20, "anti-entropy to go quiet")
    fresh = {victim: {"keys_sent": 0, "keys_fetched": 0, "keys_shipped": 0}}
    start = {**before, **fresh}
    transferred = sum(after[n]["keys_sent"] - start[n]["keys_sent"]
                      + after[n]["keys_fetched"] - start[n]["keys_fetched"] for n in cl.names)
    shipped = sum(after[n]["keys_shipped"] - start[n]["keys_shipped"] for n in cl.names)
    print(f"\n[wipe] {victim} lost {len(lost)} of {len(keys)} keys; recovered in "
          f"{recovery:.1f}s; keys transferred (sent + fetched) = {transferred} "
          f"({transferred / len(lost):.2f}x); key copies shipped over the wire = {shipped} "
          f"({shipped / len(lost):.2f}x)")
    assert len(lost) <= transferred <= 2 * len(lost)
    assert shipped <= 2 * len(lost)


# ====================================================================== a place in the ring


@pytest.mark.cluster
@pytest.mark.parametrize("strategy", ["strategy-1", "strategy-3"])
def test_a_node_restarted_with_an_empty_directory_takes_back_its_place_in_the_ring(
        cluster, strategy):
    # Under strategy 1 the place is the random tokens the cluster remembers, which the node
    # takes back and re-announces; under strategy 3 it follows from the node's name alone.
    cl = cluster(4, config=with_config(partitioning={"strategy": strategy}))
    victim = "n2"
    sample = [f"place-{i}" for i in range(40)]
    before = {n: member_view(cl, n, victim) for n in cl.names if n != victim}
    preflists = {k: homes(cl, k, "n1") for k in sample}
    actor = status(cl, victim)["actor"]

    wipe_and_restart(cl, victim)

    assert status(cl, victim)["actor"] != actor, "a wiped node must take a new actor id"

    def same_place() -> bool:
        for observer in cl.names:
            seen = member_view(cl, observer, victim)
            old = before["n1"]
            # Under strategy 1, a newer record than before: the restarted node's announcement.
            renewed = seen["version"] > old["version"] or strategy != "strategy-1"
            if not renewed or (
                    seen["tokens"], seen["ownership"], seen["status"]) != (
                    old["tokens"], old["ownership"], "up"):
                return False
        return True

    wait_for(same_place, 10, f"every node to see {victim} back in its old place")
    for observer in cl.names:
        assert {k: homes(cl, k, observer) for k in sample} == preflists
    # The old records agreed on the place too, so every view is the one from before.
    assert len({(v["tokens"], v["ownership"]) for v in before.values()}) == 1


# ====================================================================== deletes


@pytest.mark.cluster
@pytest.mark.parametrize("repair", ["handoff", "anti-entropy"])
def test_a_key_deleted_while_a_home_was_down_stays_deleted(cluster, repair):
    # With "anti-entropy", hints expire (max_age 1 s) before the home comes back, so only
    # anti-entropy can bring it the tombstone.
    config = with_config(handoff={"max_age": 1.0}) if repair == "anti-entropy" else CONFIG
    cl = cluster(4, config=config)
    victim = "n4"
    with cl.client("n1") as c:
        candidates = [f"del-{i}" for i in range(60)]
        doomed = [k for k in candidates if victim in homes(cl, k, "n1")][:10]
        kept = [k for k in candidates if victim in homes(cl, k, "n1")][10:15]
        for k in doomed + kept:
            c.put(k, "old", w=3)
        contexts = {k: c.get(k, r=3).context for k in doomed}
    assert len(doomed) == 10 and len(kept) == 5

    cl.kill(victim)
    alive = [n for n in cl.names if n != victim]
    wait_down(cl, victim, alive)
    with cl.client(*alive) as c:
        for k in doomed:
            c.delete(k, context=contexts[k])
            assert c.get(k).values == []
    if repair == "anti-entropy":
        wait_for(lambda: all(status(cl, n)["hints_pending"] == 0 for n in alive), 10,
                 "the hints to expire")

    hints_delivered = sum(status(cl, n)["hints_delivered"] for n in alive)

    cl.restart(victim)

    def tombstoned_everywhere() -> bool:
        return all(versions_on(cl, h, k) and all(v["tombstone"] for v in versions_on(cl, h, k))
                   for k in doomed for h in homes(cl, k, "n1"))

    wait_for(tombstoned_everywhere, 20, f"every home to hold the tombstones ({repair})")
    delivered = sum(status(cl, n)["hints_delivered"] for n in alive) - hints_delivered
    if repair == "anti-entropy":
        assert delivered == 0, "the hints expired: anti-entropy alone brought the tombstones"
    else:
        wait_for(lambda: sum(status(cl, n)["hints_delivered"] for n in alive)
                 - hints_delivered >= len(doomed), 10, "every hint to be delivered")
    with cl.client() as c:
        for k in doomed:
            assert c.get(k, r=3).values == [], k
        for k in kept:
            assert c.get(k, r=3).values == ["old"], k
    # Another round of exchanges later, nothing came back to life anywhere.
    time.sleep(1.0)
    for k in doomed:
        for name in cl.names:
            assert not [v for v in versions_on(cl, name, k) if not v["tombstone"]], (k, name)


# ====================================================================== tombstone reaping

REAP_CONFIG = with_config(tombstones={"grace": 2.0}, handoff={"max_age": 1.0})


@pytest.mark.cluster
def test_tombstones_are_reaped_from_every_home_after_the_grace_period(cluster):
    cl = cluster(4, config=REAP_CONFIG)
    # Written first, so every node holds hundreds of keys stored before the tombstones.
    load(cl, {f"filler-{i}": i for i in range(600)})
    keys = [f"reap-{i}" for i in range(20)]
    with cl.client() as c:
        for k in keys:
            c.put(k, "doomed", w=3)
        c.put("survivor", "stays", w=3)
        for k in keys:
            c.delete(k, context=c.get(k, r=3).context, w=3)
        last_deleted = time.monotonic()
    # Inside the grace period every home keeps the tombstone.
    for h in homes(cl, keys[-1], "n1"):
        assert [v["tombstone"] for v in versions_on(cl, h, keys[-1])] == [True], h
    assert time.monotonic() - last_deleted < 1.0, "too slow to observe the grace period"

    wait_for(lambda: all(versions_on(cl, n, k) == [] for k in keys for n in cl.names), 15,
             "every tombstone to be reaped from every node")
    assert time.monotonic() - last_deleted > 2.0
    reaped = sum(ae(cl, n)["tombstones_reaped"] for n in cl.names)
    assert reaped >= len(keys)
    with cl.client() as c:
        assert all(c.get(k, r=3).values == [] for k in keys)
        assert c.get("survivor", r=3).values == ["stays"]


@pytest.mark.cluster
def test_a_tombstone_is_not_reaped_while_a_home_is_down(cluster):
    cl = cluster(4, config=REAP_CONFIG)
    victim = "n3"
    keys = [k for k in (f"held-{i}" for i in range(60)) if victim in homes(cl, k, "n1")][:8]
    with cl.client() as c:
        for k in keys:
            c.put(k, "old", w=3)
        contexts = {k: c.get(k, r=3).context for k in keys}
    key_homes = {k: homes(cl, k, "n1") for k in keys}
    # The first home decides when a tombstone is reaped: let some be decided by live nodes.
    assert any(key_homes[k][0] != victim for k in keys)

    cl.kill(victim)
    alive = [n for n in cl.names if n != victim]
    wait_down(cl, victim, alive)
    with cl.client(*alive) as c:
        for k in keys:
            c.delete(k, context=contexts[k])
    # Two grace periods (and the hints' max_age) pass while the home is down.
    time.sleep(4.5)
    for k in keys:
        for h in key_homes[k]:
            if h != victim:
                assert [v["tombstone"] for v in versions_on(cl, h, k)] == [True], (k, h)
    assert sum(ae(cl, n)["tombstones_reaped"] for n in alive) == 0

    # Back up: it learns of the deletes, and only then are the tombstones reaped, without
    # the old value ever coming back.
    cl.restart(victim)
    wait_for(lambda: all(versions_on(cl, n, k) == [] for k in keys for n in cl.names), 20,
             "the tombstones to be reaped once every home holds them")
    with cl.client() as c:
        assert all(c.get(k, r=3).values == [] for k in keys)


@pytest.mark.cluster
def test_status_counts_only_the_keys_a_node_holds(cluster):
    cl = cluster(3, config=REAP_CONFIG)
    keys = [f"counted-{i}" for i in range(10)]
    with cl.client() as c:
        for k in keys:
            c.put(k, "doomed", w=3)
            c.delete(k, context=c.get(k, r=3).context, w=3)
    wait_for(lambda: all(versions_on(cl, n, k) == [] for k in keys for n in cl.names), 15,
             "every tombstone to be reaped")
    # Nothing is held anywhere any more (inspect shows no versions on any node)...
    assert {n: status(cl, n)["keys"] for n in cl.names} == {n: 0 for n in cl.names}
