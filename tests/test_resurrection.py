"""Deletes stay deleted: a node that held a key from before its delete was reaped must not
push the old live value back (the resurrection paths of anti-entropy and range transfer).

Real node processes; the tombstone grace is short so that tombstones are reaped within
the test, and the hint age shorter still, as the config requires.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from conftest import wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.cluster]

GRACE = 2.0
CONFIG: dict[str, Any] = {
    "cluster": {"gossip_interval": 0.2, "heartbeat_interval": 0.2, "request_timeout": 1.0},
    "anti_entropy": {"interval": 0.05},
    "handoff": {"interval": 0.2, "max_age": 1.0},
    "tombstones": {"grace": GRACE},
    "background": {"rate": 100000.0, "burst": 1000, "max_concurrent": 8},
    "storage": {"engine": "diskcache"},
}
KEYS: list[str] = []  # filled per test: keys homed on the node that goes away


def held_anywhere(c: Any, cl: Any, names: list[str], key: str) -> list[tuple[str, bool]]:
    """(node, tombstone) of every version of ``key`` held by the named nodes."""
    return [(n, v["tombstone"]) for n in names
            for v in c.inspect(key, cl.address(n))["versions"]]


def homed_on(c: Any, cl: Any, name: str, count: int) -> list[str]:
    keys = []
    for i in range(10_000):
        key = f"doomed-{i}"
        nodes = c.preflist(key, node=cl.address("n1"))["nodes"]
        if name in [n["name"] for n in nodes if n["role"] == "home"]:
            keys.append(key)
            if len(keys) == count:
                return keys
    raise AssertionError(f"not {count} keys homed on {name}")


def delete_while_away_then_remove_and_reap(cl: Any, away: str) -> list[str]:
    """Keys stored on every home, ``away`` among them; ``away`` killed, the keys deleted,
    ``away`` removed, and every tombstone reaped by the nodes that stayed."""
    others = [n for n in cl.names if n != away]
    with cl.client(*others) as c:
        KEYS[:] = homed_on(c, cl, away, 20)
        for key in KEYS:
            c.put(key, "old value", w=3)  # every home holds it, ``away`` too
        c.put("kept", "still here", w=3)
    cl.kill(away, signal.SIGKILL)
    with cl.client(*others) as c:
        wait_for(lambda: all(m["state"] == "down" for m in c.status(cl.address(others[0]))
                             ["members"] if m["name"] == away), 10, f"{away} seen down")
        for key in KEYS:
            c.delete(key, c.get(key, r=2).context, w=2)
        c.remove(away)
        wait_for(lambda: not any(held_anywhere(c, cl, others, k) for k in KEYS), 30,
                 "every tombstone to be reaped")
    return others


def assert_stays_deleted(cl: Any, for_seconds: float, via: list[str]) -> None:
    """Reads through ``via`` (members of the ring) find the keys absent, and no running
    node holds an old live version again."""
    deadline = time.monotonic() + for_seconds
    with cl.client(*via) as c:
        while time.monotonic() < deadline:
            back = {k: v for k in KEYS if (v := c.get(k, r=2).values)}
            assert not back, f"{len(back)} deleted keys came back, e.g. {next(iter(back))}"
            time.sleep(0.2)
        live = [(k, n) for k in KEYS for n, tomb in held_anywhere(c, cl, cl.running(), k)
                if not tomb]
        assert not live, f"old live versions are held again: {live[:5]}"


def test_a_removed_node_restarted_with_its_old_data_does_not_resurrect_deleted_keys(cluster):
    """Out of the ring, every key it holds looks like one to hand over: without the rule
    its range transfer would push the old values to the current replicas."""
    cl = cluster(4, config=CONFIG)
    others = delete_while_away_then_remove_and_reap(cl, "n4")
    cl.restart("n4", wait=False)
    with cl.client() as c:
        wait_for(lambda: c.status(cl.address("n4")), 10, "n4 to answer")
    assert_stays_deleted(cl, 3.0, others)


def test_a_removed_node_that_rejoins_does_not_resurrect_deleted_keys_and_is_refilled(cluster):
    cl = cluster(4, config=CONFIG)
    delete_while_away_then_remove_and_reap(cl, "n4")
    cl.restart("n4", wait=False)
    with cl.client() as c:
        wait_for(lambda: c.status(cl.address("n4")), 10, "n4 to answer")
        c.join(cl.address("n4"), cl.address("n1"))
    cl.wait_converged()
    assert_stays_deleted(cl, 3.0, cl.names)
    with cl.client() as c:  # what was not deleted is still there, everywhere it belongs
        assert c.get("kept", r=3).values == ["still here"]
