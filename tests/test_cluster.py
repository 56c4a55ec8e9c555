"""The store as a user meets it: real node processes on loopback, real ZeroMQ, real clients.

Most tests share one healthy three-node cluster and use keys of their own; tests that kill
nodes get a cluster of their own. What is kept here of the failure scenarios is what only
real processes show: a quorum error's envelope on a raw socket with a node dead, and
kill -9 of real processes on diskcache (acknowledged writes survive, actor epochs follow
the data). The protocol logic of the other "a node dies" scenarios, and of forwarded and
hinted cart adds surviving a crash of every node, is specified on the simulator, with the
same test names, in ``test_sim_failures.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
import uuid

import pytest
import zmq
from conftest import free_port, wait_for

from dynamo_core.client import AsyncClient, Client
from dynamo_core.errors import DynamoError, InvalidRequest, Timeout
from dynamo_core.wire import Codec, safe_loads

pytestmark = [pytest.mark.timeout(90), pytest.mark.cluster]

SHARED_CONFIG = {
    "buckets": {
        "carts": {"resolver": "cart-union"},
        "scores": {"resolver": "max-score"},
        "pairs": {"n": 2},
    },
}


@pytest.fixture(scope="module")
def shared(module_cluster):
    """One healthy three-node cluster for every test that only reads and writes keys."""
    return module_cluster(3, config=SHARED_CONFIG)


@pytest.fixture
def key(request) -> str:
    """A key no other test uses."""
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


def homes_of(c: Client, key: str, node: str, bucket: str = "default") -> list[str]:
    """The key's home nodes, in preference-list order, as ``node`` sees them."""
    return [n["name"] for n in c.preflist(key, bucket=bucket, node=node)["nodes"]
            if n["role"] == "home"]


def local_versions(c: Client, key: str, node: str, bucket: str = "default") -> list[dict]:
    return c.inspect(key, node, bucket=bucket)["versions"]


# ====================================================================== basic reads and writes


def test_a_put_through_one_node_is_read_through_every_other(shared, key):
    n1, n2, n3 = shared.addresses
    with shared.client() as c:
        c.put(key, {"items": ["book"]}, node=n1)
        for address in (n2, n3):
            r = c.get(key, node=address)
            assert r.values == [{"items": ["book"]}]
            assert isinstance(r.context, bytes) and r.context


def test_a_missing_key_reads_as_no_values(shared, key):
    with shared.client() as c:
        r = c.get(key)
    assert r.values == []


@pytest.mark.parametrize("route", ["through two nodes", "through one node"])
def test_two_puts_with_the_same_context_become_two_siblings_and_a_put_with_their_context_one_value(
        shared, key, route):
    n1, n2, _ = shared.addresses
    second = n2 if route == "through two nodes" else n1
    with shared.client() as c:
        c.put(key, "v0", node=n1)
        base = c.get(key).context
        c.put(key, "left", context=base, node=n1)
        c.put(key, "right", context=base, node=second)

        r = c.get(key)
        assert sorted(r.values) == ["left", "right"]
        assert len(r.siblings) == 2
        assert isinstance(r.context, bytes)  # one context for both siblings

        c.put(key, "merged", context=r.context)
        assert c.get(key).values == ["merged"]
        assert c.get(key, r=3).values == ["merged"]


def test_a_put_without_context_beside_an_existing_value_is_kept_as_a_sibling(shared, key):
    with shared.client() as c:
        c.put(key, 1)
        c.put(key, 2)  # no context: the writer had seen nothing, so nothing is superseded
        assert sorted(c.get(key).values) == [1, 2]


# ====================================================================== resolvers


def test_cart_union_bucket_merges_concurrent_carts_and_writes_the_merge_back(shared, key):
    n1, n2, n3 = shared.addresses
    with shared.client() as c:
        carts = c.bucket("carts")
        carts.put(key, {"items": ["apple"]}, node=n1)
        base = carts.get(key).context
        carts.put(key, {"items": ["apple", "bread"]}, base, node=n1)
        carts.put(key, {"items": ["apple", "cheese"]}, base, node=n2)

        r = carts.get(key, node=n3)
        assert len(r.values) == 1
        assert sorted(r.values[0]["items"]) == ["apple", "bread", "cheese"]

        # The coordinating home node wrote the merge back: every home ends up with one
        # version holding every item, and later reads see one value without merging again.
        homes = homes_of(c, key, n3, bucket="carts")
        for home in homes:
            wait_for(lambda home=home: len(local_versions(c, key, shared.address(home),
                                                          "carts")) == 1,
                     5, f"{home} to hold only the merged cart")
            (version,) = local_versions(c, key, shared.address(home), "carts")
            assert sorted(version["value"]["items"]) == ["apple", "bread", "cheese"]
        again = carts.get(key, node=n1)
        assert len(again.values) == 1
        assert sorted(again.values[0]["items"]) == ["apple", "bread", "cheese"]


def test_cart_union_merge_context_supersedes_the_siblings(shared, key):
    n1, n2, _ = shared.addresses
    with shared.client() as c:
        carts = c.bucket("carts")
        carts.put(key, {"items": ["a"]}, node=n1)
        base = carts.get(key).context
        carts.put(key, {"items": ["b"]}, base, node=n1)
        carts.put(key, {"items": ["c"]}, base, node=n2)
        merged = carts.get(key)
        carts.put(key, {"items": ["d"]}, merged.context)
        assert carts.get(key).values == [{"items": ["d"]}]


def test_max_score_bucket_keeps_the_highest_of_concurrent_scores(shared, key):
    n1, n2, n3 = shared.addresses
    with shared.client() as c:
        scores = c.bucket("scores")
        scores.put(key, 1, node=n1)
        base = scores.get(key).context
        scores.put(key, 10, base, node=n1)
        scores.put(key, 42, base, node=n2)
        scores.put(key, 7, base, node=n3)
        assert scores.get(key).values == [42]


def test_max_score_bucket_compares_the_score_field_of_mappings(shared, key):
    n1, n2, _ = shared.addresses
    with shared.client() as c:
        scores = c.bucket("scores")
        scores.put(key, {"player": "ann", "score": 5}, node=n1)
        base = scores.get(key).context
        scores.put(key, {"player": "bob", "score": 90}, base, node=n1)
        scores.put(key, {"player": "cy", "score": 30}, base, node=n2)
        assert scores.get(key).values == [{"player": "bob", "score": 90}]


def test_a_bucket_without_resolver_returns_siblings_unmerged(shared, key):
    n1, n2, _ = shared.addresses
    with shared.client() as c:
        c.put(key, {"items": ["a"]}, node=n1)
        base = c.get(key).context
        c.put(key, {"items": ["b"]}, base, node=n1)
        c.put(key, {"items": ["c"]}, base, node=n2)
        assert sorted(v["items"][0] for v in c.get(key).values) == ["b", "c"]


# ====================================================================== delete


def test_delete_hides_the_key_and_a_put_with_the_tombstone_context_writes_cleanly(shared, key):
    with shared.client() as c:
        c.put(key, "alive")
        c.delete(key, c.get(key).context)

        for address in shared.addresses:
            gone = c.get(key, node=address)
            assert gone.values == []
            assert gone.siblings == []
        tombstone_context = c.get(key).context
        assert tombstone_context  # the tombstone's history, so a later put supersedes it

        c.put(key, "reborn", tombstone_context)
        r = c.get(key)
        assert r.values == ["reborn"]
        assert len(r.siblings) == 1
        for address in shared.addresses:
            wait_for(lambda address=address: [v["value"] for v in local_versions(
                c, key, address)] == ["reborn"], 5, f"{address} to hold only the new value")
            assert not local_versions(c, key, address)[0]["tombstone"]


def test_a_delete_leaves_a_tombstone_version_in_local_storage(shared, key):
    with shared.client() as c:
        c.put(key, "x")
        c.delete(key, c.get(key).context)
        home = shared.address(homes_of(c, key, shared.addresses[0])[0])
        (version,) = local_versions(c, key, home)
        assert version["tombstone"] is True


# ====================================================================== coordination


def test_a_put_sent_to_a_node_outside_the_preference_list_is_forwarded_to_a_home(shared):
    # Bucket "pairs" keeps N=2 copies in a cluster of three: find a key one node does not own.
    with shared.client() as c:
        for i in itertools.count():
            key = f"forward-{uuid.uuid4().hex[:6]}-{i}"
            outsider = shared.names[i % 3]
            homes = homes_of(c, key, shared.address(outsider), bucket="pairs")
            assert len(homes) == 2
            if outsider not in homes:
                break

        c.bucket("pairs").put(key, "forwarded", node=shared.address(outsider))

        assert local_versions(c, key, shared.address(outsider), "pairs") == []
        for home in homes:
            (version,) = local_versions(c, key, shared.address(home), "pairs")
            assert version["value"] == "forwarded"
        assert c.bucket("pairs").get(key, node=shared.address(outsider)).values == ["forwarded"]


def test_the_preference_list_names_n_home_nodes_then_fallbacks(shared, key):
    with shared.client() as c:
        default = c.preflist(key, node=shared.addresses[0])
        pairs = c.preflist(key, bucket="pairs", node=shared.addresses[0])
    assert [n["role"] for n in default["nodes"]] == ["home"] * 3
    assert [n["role"] for n in pairs["nodes"]] == ["home", "home", "fallback"]
    assert sorted(n["name"] for n in pairs["nodes"]) == sorted(shared.names)


def test_every_node_computes_the_same_preference_list(shared, key):
    with shared.client() as c:
        views = [[n["name"] for n in c.preflist(key, node=a)["nodes"]] for a in shared.addresses]
    assert views[0] == views[1] == views[2]


# ====================================================================== quorum overrides


def test_per_request_quorum_overrides_within_n_are_served(shared, key):
    with shared.client() as c:
        c.put(key, "w1", w=1)
        wait_for(lambda: c.get(key, r=3).values == ["w1"], 5, "all three replicas to hold w1")
        ctx = c.get(key, r=1).context
        c.put(key, "w3", ctx, w=3)
        assert c.get(key, r=3).values == ["w3"]


@pytest.mark.parametrize("call", ["put w=4", "get r=4", "delete w=4"])
def test_a_quorum_above_n_is_an_invalid_request(shared, key, call):
    with shared.client() as c:
        with pytest.raises(InvalidRequest, match="exceeds n=3"):
            if call == "put w=4":
                c.put(key, 1, w=4)
            elif call == "get r=4":
                c.get(key, r=4)
            else:
                c.delete(key, w=4)
        assert c.get(key).values == []  # nothing was written


def test_a_quorum_of_zero_is_an_invalid_request(shared, key):
    with shared.client() as c:
        with pytest.raises(InvalidRequest):
            c.put(key, 1, w=0)
        with pytest.raises(InvalidRequest):
            c.get(key, r=0)


# ====================================================================== a node dies


@pytest.fixture(scope="module")
def degraded(module_cluster):
    """Three nodes, then n3 killed with SIGKILL; replicas wait at most 1 s for an answer."""
    cl = module_cluster(3, config={"cluster": {"request_timeout": 1.0}})
    cl.kill("n3", signal.SIGKILL)
    return cl


def raw_request(address: str, msg_type: str, body: dict, timeout: float = 5.0) -> dict:
    """Send one request on a raw DEALER and return the reply envelope, CBOR-decoded only."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        sock.send(Codec().encode(msg_type, body, 77))
        assert sock.poll(timeout * 1000), f"no reply to {msg_type} within {timeout}s"
        envelope = safe_loads(sock.recv())
        sock.close(0)
        return envelope
    finally:
        ctx.term()


def test_with_a_node_dead_a_write_quorum_of_three_fails_saying_2_of_3_answered(degraded, key):
    envelope = raw_request(degraded.address("n1"), "put",
                           {"bucket": "default", "key": key, "value": 1, "w": 3})
    assert envelope["t"] == "error" and envelope["id"] == 77
    body = envelope["b"]
    assert body["code"] == "quorum_not_met"
    assert "2 of 3" in body["message"] and "3 required" in body["message"]
    assert "n3" in body["message"]  # names the replica that did not answer


# ====================================================================== durability


def test_every_acknowledged_write_survives_kill_9_of_every_node(cluster):
    cl = cluster(3, config={"storage": {"engine": "diskcache"}})
    acked: dict[str, dict] = {}

    with cl.client() as c:
        for i in range(200):
            key, value = f"durable-{i}", {"i": i, "pad": "x" * 40}
            c.put(key, value, w=2)
            acked[key] = value

    # Keep writing while the nodes die: whatever was acknowledged before the kill counts too.
    stop = threading.Event()
    late: dict[str, dict] = {}

    def writer() -> None:
        with cl.client(timeout=1.0) as wc:
            for i in itertools.count():
                if stop.is_set():
                    return
                key, value = f"late-{i}", {"late": i}
                try:
                    wc.put(key, value, w=2)
                except DynamoError:
                    continue
                late[key] = value

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.3)
    for name in cl.names:
        cl.kill(name, signal.SIGKILL)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert late, "the writer got no acknowledgement before the kill"
    acked.update(late)

    for name in cl.names:
        cl.restart(name, wait=False)
    cl.wait_converged()

    with cl.client() as c:
        for key, value in acked.items():
            assert c.get(key).values == [value], key
        # W=2 means at least two replicas hold each acknowledged write on disk.
        for key, value in list(acked.items())[::10]:
            holders = [a for a in cl.addresses
                       if [v["value"] for v in local_versions(c, key, a)] == [value]]
            assert len(holders) >= 2, (key, holders)


def test_a_node_stopped_cleanly_keeps_its_actor_and_one_killed_starts_a_new_epoch(cluster):
    """Actor ids follow the data (kv679): without fsync a kill -9 may lose the last
    commits on a power loss, so a node that did not stop cleanly never reuses its actor."""
    cl = cluster(3, config={"storage": {"engine": "diskcache"}})
    with cl.client() as c:
        c.put("kept", "on disk", w=3)
        actor = c.status(node=cl.address("n2"))["actor"]
    cl.kill("n2", signal.SIGTERM)
    cl.restart("n2")
    with cl.client() as c:
        assert c.status(node=cl.address("n2"))["actor"] == actor
        assert [v["value"] for v in local_versions(c, "kept", cl.address("n2"))] == ["on disk"]
    cl.kill("n2", signal.SIGKILL)
    cl.restart("n2")
    with cl.client() as c:
        epoch = c.status(node=cl.address("n2"))["actor"]
        assert epoch != actor and epoch.startswith("n2.")
        assert [v["value"] for v in local_versions(c, "kept", cl.address("n2"))] == ["on disk"]


def test_a_node_on_a_power_safe_engine_keeps_its_actor_through_kill_9(cluster):
    cl = cluster(3, config={"storage": {"engine": "diskcache", "fsync": True}})
    with cl.client() as c:
        c.put("kept", "synced", w=3)
        actor = c.status(node=cl.address("n2"))["actor"]
    cl.kill("n2", signal.SIGKILL)
    cl.restart("n2")
    with cl.client() as c:
        assert c.status(node=cl.address("n2"))["actor"] == actor
        assert [v["value"] for v in local_versions(c, "kept", cl.address("n2"))] == ["synced"]


# ====================================================================== clients


def test_the_asyncio_client_puts_gets_deletes_and_uses_buckets(shared, key):
    async def scenario() -> None:
        async with AsyncClient(shared.addresses) as c:
            await c.put(key, {"n": 1})
            r = await c.get(key)
            assert r.values == [{"n": 1}]
            await c.put(key, {"n": 2}, r.context)
            assert (await c.get(key, r=3)).values == [{"n": 2}]

            carts = c.bucket("carts")
            await carts.put(key, {"items": ["x"]}, node=shared.addresses[0])
            base = (await carts.get(key)).context
            await asyncio.gather(carts.put(key, {"items": ["y"]}, base, node=shared.addresses[1]),
                                 carts.put(key, {"items": ["z"]}, base, node=shared.addresses[2]))
            merged = await carts.get(key)
            assert len(merged.values) == 1
            assert sorted(merged.values[0]["items"]) == ["y", "z"]

            await c.delete(key, (await c.get(key)).context)
            assert (await c.get(key)).values == []
            assert (await c.status(node=shared.addresses[0]))["node"] == "n1"

    asyncio.run(scenario())


def test_the_asyncio_client_runs_many_requests_at_once(shared, key):
    async def scenario() -> list:
        async with AsyncClient(shared.addresses) as c:
            await asyncio.gather(*(c.put(f"{key}-{i}", i) for i in range(30)))
            return await asyncio.gather(*(c.get(f"{key}-{i}") for i in range(30)))

    results = asyncio.run(scenario())
    assert [r.values for r in results] == [[i] for i in range(30)]


def test_the_sync_client_raises_timeout_when_nothing_listens():
    address = f"tcp://127.0.0.1:{free_port()}"
    with Client([address], timeout=0.5) as c:
        for call in (lambda: c.get("k"), lambda: c.put("k", 1), lambda: c.status()):
            started = time.monotonic()
            with pytest.raises(Timeout, match="no answer within 0.5s") as info:
                call()
            assert 0.4 <= time.monotonic() - started < 1.5
            assert isinstance(info.value, DynamoError)


def test_the_asyncio_client_raises_timeout_when_nothing_listens():
    address = f"tcp://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        async with AsyncClient([address], timeout=0.5) as c:
            with pytest.raises(Timeout, match="no answer"):
                await c.get("k")

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 1.5


def test_a_get_falls_over_to_another_node_when_the_first_does_not_answer(shared, key):
    dead = f"tcp://127.0.0.1:{free_port()}"
    with shared.client() as c:
        c.put(key, "here")
    with Client([dead, shared.addresses[0]], timeout=0.5) as c:
        assert c.get(key).values == ["here"]


def test_a_delete_without_a_context_reads_the_key_first_and_deletes_it(shared, key):
    with shared.client() as c:
        c.put(key, "doomed", w=3)
        c.delete(key, w=3)
        assert c.get(key, r=3).values == []


def test_a_delete_of_an_absent_key_without_a_context_succeeds(shared, key):
    with shared.client() as c:
        c.delete(key)
        assert c.get(key).values == []
