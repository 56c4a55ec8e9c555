"""A routing client against real node processes (the paper's section 6.4).

Given one node's address, the client learns the ring from it and sends each put straight
to a home of its key: no node forwards anything. A client that does not route pays the
forwarding hop for every key its node is no home of. When a home dies the client falls
back at once; when the ring changes, a node tells the client its view is stale and the
client fetches the new one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import zmq
from conftest import homes, status, wait_for

from dynamo_core.client import AsyncClient, Client

pytestmark = [pytest.mark.timeout(120), pytest.mark.cluster]


def forwarded(cl) -> int:
    return sum(status(cl, name)["forwarded_puts"] for name in cl.running())


def test_a_routing_client_sends_every_put_to_a_home_so_no_node_forwards(cluster):
    cl = cluster(5)
    with Client([cl.address("n1")], timeout=5.0) as c:
        for i in range(60):
            c.put(f"routed-{i}", i)
        for i in range(60):
            assert c.get(f"routed-{i}").values == [i]
        # Only a put that found no connection to its home yet goes through n1.
        assert forwarded(cl) <= c._req.unrouted
        assert c._req.routed >= 100, "requests went through n1 instead of the homes"

    # Without routing, n1 forwards the put of every key it is no home of, and only those.
    # (Which keys those are depends on the ring this run built: they are looked up.)
    keys = [f"unrouted-{i}" for i in range(40)]
    away = [key for key in keys if "n1" not in homes(cl, key, "n1")]
    assert away, "n1 is a home of every key: nothing to forward"
    before = forwarded(cl)
    with Client([cl.address("n1")], timeout=5.0, route=False) as c:
        for i, key in enumerate(keys):
            c.put(key, i)
    assert forwarded(cl) - before == len(away)


def test_an_async_routing_client_spreads_coordination_over_the_nodes(cluster):
    cl = cluster(5)

    async def work() -> int:
        async with AsyncClient([cl.address("n1")], timeout=5.0) as c:
            await c.put("warm", 0)
            for _ in range(100):  # the view is fetched in the background
                if c._req.view is not None:
                    break
                await asyncio.sleep(0.05)
            assert c._req.view is not None
            await asyncio.gather(*(c.put(f"a-{i}", i) for i in range(80)))
            got = await asyncio.gather(*(c.get(f"a-{i}") for i in range(80)))
            assert [g.values for g in got] == [[i] for i in range(80)]
            assert c._req.routed >= 150, "requests went through n1 instead of the homes"
            return c._req.unrouted

    unrouted = asyncio.run(work())
    # The view is fetched in the background: only requests sent before it came (the
    # first put), or before a connection to a home was up, went through n1.
    assert forwarded(cl) <= unrouted


def test_a_dead_home_is_passed_over_at_once_and_a_changed_ring_is_fetched_again(cluster):
    cl = cluster(4)
    with Client([cl.address("n1")], timeout=5.0) as c:
        c.put("warm", 0)
        assert c._req.view is not None
        before = c._req.view.digest
        cl.kill("n4")
        began = time.monotonic()
        for i in range(40):  # n4 is the first home of about a quarter of these
            c.put(f"after-{i}", i)
        assert time.monotonic() - began < 10, "puts waited on the dead home"
        c.remove("n4", node=cl.address("n1"))
        # Every home must know: one that has not heard yet would take the next put routed
        # by the old view without a word, and the client would keep that view.
        wait_for(lambda: all(m["name"] != "n4" or m["status"] == "removed"
                             for n in ("n1", "n2", "n3") for m in status(cl, n)["members"]),
                 20, "n1, n2 and n3 to hear of the removal")
        c.put("after-removal", 1)  # routed by the old view: the node says it is stale
        c.put("and-again", 2)      # the view is fetched again before this one
        assert c._req.view.digest != before
        assert "n4" not in c._req.view.routes
    assert sum(status(cl, n)["stale_ring_views"] for n in ("n1", "n2", "n3")) >= 1


def test_a_home_that_stops_answering_loses_its_route_and_no_put_waits_on_it(cluster):
    """A paused home keeps its TCP connection but answers no heartbeat: within a second
    the client drops the connection, and puts for its keys go through a given node."""
    cl = cluster(4)
    with Client([cl.address("n1"), cl.address("n2")], timeout=5.0) as c:
        c.put("warm", 0)
        assert c._req.view is not None
        n4 = c._socket(cl.address("n4"), routed=True)
        os.kill(cl.pid("n4"), signal.SIGSTOP)
        try:
            wait_for(lambda: not int(n4.getsockopt(zmq.EVENTS)) & zmq.POLLOUT, 10,
                     "the heartbeat to drop the connection to the paused n4")
            # The given nodes must know it too, or they would forward to it (a forwarded
            # put waits for its home: a known limit, see the README).
            for node in ("n1", "n2"):
                wait_for(lambda node=node: {m["name"]: m["state"] for m in status(
                    cl, node)["members"]}["n4"] == "down", 30, f"{node} to see n4 down")
            for i in range(40):  # n4 is a home of most of them, the first of a quarter
                c.put(f"paused-{i}", i)
        finally:
            os.kill(cl.pid("n4"), signal.SIGCONT)
