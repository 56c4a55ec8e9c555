"""Deletes stay deleted, on the simulator: a node that held a key from before its delete was
reaped must not push the old live value back (the resurrection paths of anti-entropy and
range transfer).

The simulator twins of ``test_resurrection.py``: the same names, the same claims, on
virtual time. The tombstone grace is short so that tombstones are reaped within the test,
and the hint age shorter still, as the config requires. The engine is diskcache, as in
production: the node that comes back finds exactly what its engine had acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dynamo_core.sim import SimCluster

GRACE = 2.0
CONFIG: dict[str, Any] = {
    "cluster": {"gossip_interval": 0.2, "heartbeat_interval": 0.2, "request_timeout": 1.0},
    "anti_entropy": {"interval": 0.25},
    "handoff": {"interval": 0.2, "max_age": 1.0},
    "tombstones": {"grace": GRACE},
    "background": {"rate": 100000.0, "burst": 1000, "max_concurrent": 8},
    "storage": {"engine": "diskcache"},
}
#: Keys homed on the node that goes away.
COUNT = 40


@pytest.fixture
def cl() -> Iterator[SimCluster]:
    with SimCluster(4, seed=71, config=CONFIG) as cluster:
        cluster.start()
        yield cluster


def held_anywhere(cl: SimCluster, names: list[str], key: str) -> list[tuple[str, bool]]:
    """(node, tombstone) of every version of ``key`` held by the named nodes."""
    return [(n, v.tombstone) for n in names for v in cl.core(n).store.read("default", key)]


def homed_on(cl: SimCluster, name: str, count: int) -> list[str]:
    keys = []
    for i in range(10_000):
        key = f"doomed-{i}"
        if name in cl.homes("default", key, view="n1"):
            keys.append(key)
            if len(keys) == count:
                return keys
    raise AssertionError(f"not {count} keys homed on {name}")


def delete_while_away_then_remove_and_reap(cl: SimCluster, away: str) -> tuple[list[str],
                                                                               list[str]]:
    """Keys stored on every home, ``away`` among them; ``away`` crashed, the keys deleted,
    ``away`` removed, and every tombstone reaped by the nodes that stayed. Returns the
    keys and the nodes that stayed."""
    others = [n for n in cl.nodes if n != away]
    c = cl.client(via=others)
    keys = homed_on(cl, away, COUNT)
    for key in keys:
        c.put(key, "old value", w=3)  # every home holds it, ``away`` too
    c.put("kept", "still here", w=3)
    assert all(held_anywhere(cl, [away], k) == [(away, False)] for k in keys)
    cl.crash(away)
    cl.run_until(lambda: cl.core(others[0]).peer_state(away) == "down", 10, f"{away} seen down")
    for key in keys:
        c.delete(key, c.get(key, r=2).context, w=2)
    c.remove(away, node=others[0])
    cl.run_until(lambda: not any(held_anywhere(cl, others, k) for k in keys), 30,
                 "every tombstone to be reaped")
    return keys, others


def assert_stays_deleted(cl: SimCluster, keys: list[str], for_seconds: float,
                         via: list[str]) -> None:
    """Reads through ``via`` (members of the ring) find the keys absent, and no running
    node holds an old live version again, all along."""
    c = cl.client(via=via)
    deadline = cl.world.now + for_seconds
    while cl.world.now < deadline:
        back = {k: r.values for k, r in c.get_all(keys, r=2).items() if r.values}
        assert not back, f"{len(back)} deleted keys came back, e.g. {next(iter(back))}"
        live = [(k, n) for k in keys
                for n, tomb in held_anywhere(cl, [n.name for n in cl.up()], k) if not tomb]
        assert not live, f"old live versions are held again: {live[:5]}"
        cl.run(1.0)


def test_a_removed_node_restarted_with_its_old_data_does_not_resurrect_deleted_keys(cl):
    """Out of the ring, every key it holds looks like one to hand over: without the rule
    its range transfer would push the old values to the current replicas."""
    keys, others = delete_while_away_then_remove_and_reap(cl, "n4")
    cl.restart("n4")
    assert cl.client(via=["n4"]).ping("n4") == "n4"
    assert_stays_deleted(cl, keys, 15.0, others)


def test_a_removed_node_that_rejoins_does_not_resurrect_deleted_keys_and_is_refilled(cl):
    keys, _ = delete_while_away_then_remove_and_reap(cl, "n4")
    cl.restart("n4")
    c = cl.client()
    assert c.ping("n4") == "n4"
    c.join("n4", "n1")
    names = list(cl.nodes)
    cl.run_until(lambda: all(cl.core(o).membership.get("n4").status == "up" for o in names),
                 30, "every node to see n4 back in the ring")
    assert_stays_deleted(cl, keys, 15.0, names)
    # What was not deleted is still there, everywhere it belongs: n4 is refilled.
    assert c.get("kept", r=3).values == ["still here"]
    cl.run_until(lambda: cl.divergence([("default", k) for k in [*keys, "kept"]]) is None, 30,
                 "the replicas to converge with n4 back")
    assert [(h, v.value) for h in cl.homes("default", "kept")
            for v in cl.core(h).store.read("default", "kept")] == \
        [(h, "still here") for h in cl.homes("default", "kept")]
