"""The coordinator's quorum state machines, driven through a tiny deterministic network.

Every test builds a :class:`Net`: a few named nodes, each with a real :class:`LocalStore`
over the memory engine and a :class:`Coordinator`. ``Net.run`` delivers the coordinator's
effects in FIFO order: ``replica_get``/``replica_put`` are served from the addressed node's
store and answered back through ``on_reply``; a forwarded ``put``/``delete`` is coordinated
by the addressed node's own coordinator and its answer is relayed back. A test can make a
node silent (requests vanish), slow (requests are held until ``release``), or failing
(answers ``error``) - per message type if it wants. Nothing here uses threads or clocks:
time is ``Net.now``, advanced by the test.

A Net built with a ``walk`` plans every key with :meth:`KeyPlan.sloppy` over that ring walk
(N=3), believing down the nodes in ``Net.down``: the sloppy-quorum scenarios use five nodes,
homes n1-n3 and fallbacks n4, n5. A stand-in's store is the same in-test LocalStore as any
other node's, so a hinted write is simply stored there; the tests assert on the hints in the
Send bodies instead of modelling a hint store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cbor2
import pytest

from dynamo_core import errors
from dynamo_core.coordinator import Coordinator, Fail, KeyPlan, PeerFailed, Reply, Send
from dynamo_core.errors import InvalidRequest, Overloaded, QuorumNotMet, Timeout, Unavailable
from dynamo_core.hookspecs import Sibling
from dynamo_core.store import LocalStore
from dynamo_core.versions import Clock, Version, decode_context, encode_context
from dynamo_plugins.memory_storage import open_memory_engine

TIMEOUT = 1.0
BUCKET = "default"
HOMES = ("n1", "n2", "n3")
#: the ring walk of the sloppy-quorum scenarios: homes n1-n3, then fallbacks n4, n5
WALK = ("n1", "n2", "n3", "n4", "n5")


# ====================================================================== the network


@dataclass
class Delivery:
    """One Send on its way: who sent it (the coordinator that gets the reply) and what."""

    src: str
    send: Send


class Net:
    def __init__(self, names: Sequence[str] = ("n1", "n2", "n3", "n4"), *,
                 max_pending: int = 100, max_siblings: int = 16,
                 max_clock_entries: int = 10, walk: Sequence[str] | None = None,
                 strict: bool = False) -> None:
        self.now = 0.0
        #: the ring walk every key is planned over with KeyPlan.sloppy (None: plain homes)
        self.walk = tuple(walk) if walk is not None else None
        self.strict = strict
        #: nodes the failure detector believes down (only sloppy plans consult it)
        self.down: set[str] = set()
        #: nodes still receiving their ranges: they flag their replica answers "filling"
        self.filling: set[str] = set()
        self.stores = {n: LocalStore(open_memory_engine(None, {}), max_siblings, f"actor-{n}")
                       for n in names}
        self.coords = {n: Coordinator(n, self.stores[n], request_timeout=TIMEOUT,
                                      max_clock_entries=max_clock_entries,
                                      max_pending=max_pending)
                       for n in names}
        #: key -> its home nodes (what the runtime would compute from the ring)
        self.homes: dict[str, tuple[str, ...]] = {}
        #: node -> message types it never answers (None: every type)
        self.silent: dict[str, set[str] | None] = {}
        #: node -> message types whose delivery is held until release()
        self.slow: dict[str, set[str] | None] = {}
        #: node -> (message types, error body) it answers with an error
        self.failing: dict[str, tuple[set[str] | None, dict[str, Any]]] = {}
        self.held: list[Delivery] = []
        #: (coordinator, peer) for every PeerFailed effect: what a failure detector hears
        self.peer_failures: list[tuple[str, str]] = []
        #: every Send ever delivered or dropped, in order, with its sender
        self.sent: list[Delivery] = []
        #: client -> every Reply/Fail addressed to it
        self.answers: dict[Any, list[Reply | Fail]] = {}
        #: forwarded client id -> (forwarding node, req_id) to relay the answer to
        self._relay: dict[Any, tuple[str, int]] = {}
        self._clients = 0

    # ----------------------------------------------------------------- faults

    def make_silent(self, node: str, *types: str) -> None:
        self.silent[node] = set(types) or None

    def make_slow(self, node: str, *types: str) -> None:
        self.slow[node] = set(types) or None

    def make_failing(self, node: str, *types: str, code: str = "unavailable",
                     message: str | None = None) -> None:
        self.failing[node] = (set(types) or None,
                              {"code": code, "message": message or f"{node} disk on fire"})

    def heal(self, node: str) -> None:
        for faults in (self.silent, self.slow, self.failing):
            faults.pop(node, None)

    @staticmethod
    def _matches(types: set[str] | None, msg_type: str) -> bool:
        return types is None or msg_type in types

    # ----------------------------------------------------------------- delivery

    def run(self, src: str, effects: Sequence[Any]) -> None:
        """Deliver ``effects`` of coordinator ``src`` and everything they cause."""
        queue: list[tuple[str, Any]] = [(src, e) for e in effects]
        while queue:
            origin, effect = queue.pop(0)
            queue.extend(self._deliver(origin, effect))

    def release(self, node: str | None = None) -> None:
        """Deliver held messages (to ``node`` only, or all of them), in the order sent."""
        keep, go = [], []
        for d in self.held:
            (go if node is None or d.send.to == node else keep).append(d)
        self.held = keep
        self.slow.pop(node, None) if node is not None else self.slow.clear()
        for d in go:
            self.run(d.src, [d.send])

    def drop_held(self) -> None:
        self.held.clear()

    def tick(self, now: float) -> None:
        self.now = now
        for name, coord in self.coords.items():
            self.run(name, coord.on_tick(now))

    def _deliver(self, src: str, effect: Any) -> list[tuple[str, Any]]:
        if isinstance(effect, PeerFailed):
            self.peer_failures.append((src, effect.peer))
            return []
        if isinstance(effect, (Reply, Fail)):
            relay = self._relay.pop(effect.client, None)
            if relay is None:
                self.answers.setdefault(effect.client, []).append(effect)
                return []
            # The answer of a forwarded put goes back to the node that forwarded it.
            fwd_node, req_id = relay
            if isinstance(effect, Reply):
                msg_type, body = effect.msg_type, effect.body
            else:
                msg_type, body = "error", errors.to_wire(effect.error)
            return [(fwd_node, e) for e in
                    self.coords[fwd_node].on_reply(req_id, src, msg_type, body, self.now)]
        send: Send = effect
        delivery = Delivery(src, send)
        node = send.to
        if node in self.slow and self._matches(self.slow[node], send.msg_type):
            self.held.append(delivery)
            return []
        self.sent.append(delivery)
        if node in self.silent and self._matches(self.silent[node], send.msg_type):
            return []
        if node in self.failing and self._matches(self.failing[node][0], send.msg_type):
            return self._answer(src, send, "error", dict(self.failing[node][1]))
        return self._serve(src, send)

    def _answer(self, src: str, send: Send, msg_type: str,
                body: dict[str, Any]) -> list[tuple[str, Any]]:
        if send.req_id is None:  # one-way: nobody listens for an answer
            return []
        return [(src, e) for e in
                self.coords[src].on_reply(send.req_id, send.to, msg_type, body, self.now)]

    def _serve(self, src: str, send: Send) -> list[tuple[str, Any]]:
        node, body = send.to, send.body
        store = self.stores[node]
        if send.msg_type == "replica_get":
            versions = store.read(body["bucket"], body["key"])
            reply: dict[str, Any] = {"versions": [v.to_wire() for v in versions]}
            if node in self.filling:
                reply["filling"] = True
            return self._answer(src, send, "replica_get_ok", reply)
        if send.msg_type == "replica_put":
            incoming = [Version.from_wire(v) for v in body["versions"]]
            try:
                store.apply(body["bucket"], body["key"], incoming)
            except errors.DynamoError as exc:
                return self._answer(src, send, "error", errors.to_wire(exc))
            return self._answer(src, send, "replica_put_ok", {})
        if send.msg_type in ("put", "delete"):
            assert body.get("forwarded") is True
            client = ("forwarded", src, send.req_id)
            assert send.req_id is not None
            self._relay[client] = (src, send.req_id)
            assert body["bucket"] == BUCKET
            plan = self.plan(body["key"], body["w"])
            effects = self.coords[node].start_put(
                client, plan, body.get("value"), body.get("context"),
                send.msg_type == "delete", self.now, forwarded=True)
            return [(node, e) for e in effects]
        raise AssertionError(f"the test network does not know {send.msg_type!r}")

    # ----------------------------------------------------------------- clients

    def _client(self) -> str:
        self._clients += 1
        return f"client-{self._clients}"

    def plan(self, key: str, quorum: int, resolver: Any = None) -> KeyPlan:
        if self.walk is not None:
            plan = KeyPlan.sloppy(BUCKET, key, self.walk, 3, quorum, self.down.__contains__,
                                  resolver, self.strict)
            self.homes[key] = plan.homes
            return plan
        return KeyPlan(BUCKET, key, self.homes.setdefault(key, HOMES), quorum, resolver)

    def start_put(self, via: str, key: str, value: Any, context: bytes | None = None, *,
                  w: int = 2, tombstone: bool = False) -> str:
        client = self._client()
        plan = self.plan(key, w)
        effects = self.coords[via].start_put(client, plan, value, context, tombstone,
                                             self.now)
        self.run(via, effects)
        return client

    def start_get(self, via: str, key: str, *, r: int = 2, resolver: Any = None) -> str:
        client = self._client()
        self.run(via, self.coords[via].start_get(client, self.plan(key, r, resolver),
                                                 self.now))
        return client

    def answer(self, client: str) -> Reply | Fail | None:
        """The one answer ``client`` got so far (None if none); two answers is a bug."""
        got = self.answers.get(client, [])
        assert len(got) <= 1, f"{client} was answered {len(got)} times: {got}"
        return got[0] if got else None

    def ok(self, client: str, msg_type: str) -> dict[str, Any]:
        got = self.answer(client)
        assert isinstance(got, Reply), f"expected {msg_type}, got {got!r}"
        assert got.msg_type == msg_type
        return got.body

    def failed(self, client: str) -> errors.DynamoError:
        got = self.answer(client)
        assert isinstance(got, Fail), f"expected a failure, got {got!r}"
        return got.error

    def put(self, via: str, key: str, value: Any, context: bytes | None = None, *,
            w: int = 2) -> bytes:
        return self.ok(self.start_put(via, key, value, context, w=w), "put_ok")["context"]

    def delete(self, via: str, key: str, context: bytes | None, *, w: int = 2) -> bytes:
        client = self.start_put(via, key, None, context, w=w, tombstone=True)
        return self.ok(client, "put_ok")["context"]

    def get(self, via: str, key: str, *, r: int = 2,
            resolver: Any = None) -> tuple[list[Any], bytes]:
        client = self.start_get(via, key, r=r, resolver=resolver)
        body = self.ok(client, "get_ok")
        return [s["value"] for s in body["siblings"]], body["context"]

    # ----------------------------------------------------------------- inspection

    def held_values(self, node: str, key: str) -> list[Any]:
        return sorted(repr(v.value) for v in self.stores[node].read(BUCKET, key))

    def sends(self, msg_type: str | None = None, *, one_way: bool | None = None,
              src: str | None = None) -> list[Send]:
        return [d.send for d in self.sent
                if (msg_type is None or d.send.msg_type == msg_type)
                and (one_way is None or (d.send.req_id is None) == one_way)
                and (src is None or d.src == src)]

    def assert_settled(self) -> None:
        """No coordinator still remembers an operation or a request id."""
        for name, coord in self.coords.items():
            assert coord.pending() == 0, f"{name} still has {coord.pending()} operations"
            assert coord._sent == {}, f"{name} still remembers request ids {coord._sent}"
            assert coord._ops == {}


class SortedUnion:
    """A tiny resolver: the sorted union of list-valued siblings."""

    def __init__(self) -> None:
        self.calls: list[list[Sibling]] = []

    def resolve(self, siblings: Sequence[Sibling]) -> Any:
        self.calls.append(list(siblings))
        return sorted({item for s in siblings for item in s.value})


def version(value: Any, dot: tuple[str, int], seen: dict[str, int] | None = None,
            ts: float = 0.0, tombstone: bool = False) -> Version:
    return Version(None if tombstone else value, Clock.of(seen or {}), dot, ts, tombstone)


def seed(net: Net, node: str, key: str, *versions: Version) -> None:
    net.stores[node].apply(BUCKET, key, list(versions))


@pytest.fixture
def net() -> Net:
    return Net()


# ====================================================================== put


def test_put_with_w2_succeeds_only_after_two_acks_counting_the_coordinators_own_write(net):
    for n in HOMES:
        net.make_slow(n)
    client = net.start_put("n1", "k", "v1", w=2)

    def held_puts() -> list:
        return [s for s in (d.send for d in net.held) if s.msg_type == "replica_put"]

    # The paper's order: the coordinator stores the version itself before replicating it.
    assert [s.to for s in held_puts()] == ["n1"], "the coordinator writes to itself first"
    assert net.answer(client) is None

    net.release("n1")  # the coordinator's own write: one ack, not yet a quorum
    assert sorted(s.to for s in held_puts()) == ["n2", "n3"]
    assert all(s.req_id is not None for s in held_puts())
    assert net.answer(client) is None
    net.release("n2")  # the second ack meets W=2
    body = net.ok(client, "put_ok")

    stored = net.stores["n1"].read(BUCKET, "k")
    assert [v.value for v in stored] == ["v1"]
    new_dot = stored[0].dot
    assert new_dot[0] == "actor-n1"
    context = decode_context(body["context"])
    assert context.covers(new_dot)
    assert context == stored[0].history()

    net.release("n3")  # a late ack for a finished put is dropped, not an error
    assert net.coords["n1"].stale_replies == 1
    assert net.held_values("n3", "k") == ["'v1'"]
    net.assert_settled()


def test_put_fails_with_quorum_not_met_naming_the_failures_when_only_one_replica_answers(net):
    net.make_failing("n2", message="n2 disk full")
    net.make_failing("n3", code="overloaded", message="n3 too busy")
    client = net.start_put("n1", "k", "v1", w=2)

    err = net.failed(client)  # no waiting for the deadline: the quorum is out of reach
    assert type(err) is QuorumNotMet
    assert "1 of 3 replicas answered, 2 required" in str(err)
    assert "n2: n2 disk full" in str(err) and "n3: n3 too busy" in str(err)
    assert (err.op, err.answered, err.required, err.asked) == ("put", 1, 2, 3)
    net.assert_settled()


def test_put_fails_with_quorum_not_met_at_the_deadline_when_the_others_stay_silent(net):
    net.make_silent("n2")
    net.make_silent("n3")
    client = net.start_put("n1", "k", "v1", w=2)

    assert net.answer(client) is None
    assert net.coords["n1"].next_deadline() == pytest.approx(TIMEOUT)
    net.tick(TIMEOUT - 0.001)
    assert net.answer(client) is None

    net.tick(TIMEOUT + 0.001)
    err = net.failed(client)
    assert type(err) is QuorumNotMet
    assert "1 of 3 replicas answered, 2 required" in str(err)
    assert "no answer from n2, n3" in str(err)
    net.assert_settled()


def test_put_with_w3_counts_a_replica_error_as_a_failure_not_an_answer(net):
    net.make_failing("n3")
    err = net.failed(net.start_put("n1", "k", "v1", w=3))
    assert type(err) is QuorumNotMet
    assert "2 of 3 replicas answered, 3 required" in str(err)
    assert "n3: n3 disk on fire" in str(err)


def test_put_treats_a_reply_of_the_wrong_type_as_a_failed_replica(net):
    coord = net.coords["n1"]
    [local] = coord.start_put("c", net.plan("k", 3), "v", None, False, 0.0)
    assert local.to == "n1"
    effects = coord.on_reply(local.req_id, "n1", "replica_put_ok", {}, 0.0)
    sends = {s.to: s for s in effects if isinstance(s, Send)}
    assert sorted(sends) == ["n2", "n3"] and len(effects) == 2
    assert coord.on_reply(sends["n2"].req_id, "n2", "replica_put_ok", {}, 0.0) == []
    out = coord.on_reply(sends["n3"].req_id, "n3", "replica_get_ok", {"versions": []}, 0.0)
    [fail] = out
    assert isinstance(fail, Fail) and isinstance(fail.error, QuorumNotMet)
    assert "n3: bad reply: expected replica_put_ok, got replica_get_ok" in str(fail.error)
    assert coord.stale_replies == 0


def test_a_put_sends_nothing_to_the_other_replicas_until_the_coordinators_own_write_is_acked(net):
    coord = net.coords["n1"]
    effects = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    [local] = effects
    assert (local.to, local.msg_type) == ("n1", "replica_put") and local.req_id is not None
    assert coord.pending() == 1 and list(coord._sent) == [local.req_id]

    out = coord.on_reply(local.req_id, "n1", "replica_put_ok", {}, 0.0)
    assert [(s.to, s.msg_type) for s in out] == [("n2", "replica_put"), ("n3", "replica_put")]
    assert all(s.body == local.body for s in out), "every replica gets the version n1 stored"
    assert all(s.req_id is not None for s in out)
    assert len({local.req_id, *(s.req_id for s in out)}) == 3


def test_a_put_whose_own_replica_is_silent_sends_no_other_replica_anything_and_times_out(net):
    net.make_silent("n1", "replica_put")
    client = net.start_put("n1", "k", "v1", w=2)
    assert [s.to for s in net.sends("replica_put")] == ["n1"]
    net.tick(TIMEOUT - 0.001)
    assert net.answer(client) is None
    net.tick(TIMEOUT)
    err = net.failed(client)
    assert type(err) is QuorumNotMet
    assert (err.op, err.answered, err.required) == ("put", 0, 2)
    assert "no answer from n1" in str(err)
    assert [s.to for s in net.sends("replica_put")] == ["n1"], "nothing sent after the deadline"
    for n in HOMES:
        assert net.stores[n].read(BUCKET, "k") == []
    net.assert_settled()


@pytest.mark.parametrize("code,cls", [("unavailable", Unavailable),
                                      ("overloaded", Overloaded),
                                      ("invalid_request", InvalidRequest),
                                      ("no-such-code", errors.DynamoError)])
def test_a_put_whose_local_write_fails_fails_at_once_with_the_local_error(net, code, cls):
    net.make_failing("n1", "replica_put", code=code, message="n1 local write failed")
    client = net.start_put("n1", "k", "v1", w=1)  # even W=1, which n2 alone could meet
    err = net.failed(client)  # at once: no waiting for the deadline
    assert type(err) is cls
    assert str(err) == "n1 local write failed"
    assert [s.to for s in net.sends()] == ["n1"], "no other replica is sent the version"
    for n in HOMES:
        assert net.stores[n].read(BUCKET, "k") == []
    net.assert_settled()


def test_a_local_write_error_without_a_code_fails_the_put_naming_the_coordinator(net):
    coord = net.coords["n1"]
    [local] = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    [fail] = coord.on_reply(local.req_id, "n1", "error", {"message": "disk gone"}, 0.0)
    assert isinstance(fail, Fail) and fail.client == "c"
    assert type(fail.error) is errors.DynamoError
    assert str(fail.error) == "n1 could not store the version: disk gone"
    assert coord.pending() == 0 and coord._sent == {}


def test_a_wrong_type_reply_to_the_local_write_fails_the_put_without_replicating(net):
    coord = net.coords["n1"]
    [local] = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    [fail] = coord.on_reply(local.req_id, "n1", "replica_get_ok", {"versions": []}, 0.0)
    assert isinstance(fail, Fail) and type(fail.error) is errors.DynamoError
    assert str(fail.error) == ("n1 could not store the version: "
                               "bad reply: expected replica_put_ok, got replica_get_ok")
    assert coord.pending() == 0 and coord._sent == {}
    assert coord.stale_replies == 0


def test_a_put_the_local_store_refuses_for_too_many_siblings_fails_as_overloaded_unreplicated():
    net = Net(max_siblings=2)
    net.put("n1", "k", "a")
    net.put("n2", "k", "b")  # concurrent: two siblings everywhere
    net.sent.clear()
    err = net.failed(net.start_put("n1", "k", "c"))  # a third concurrent sibling
    assert type(err) is Overloaded
    assert "would have 3 siblings, more than the limit of 2" in str(err)
    assert [s.to for s in net.sends()] == ["n1"]
    for n in HOMES:
        assert net.held_values(n, "k") == ["'a'", "'b'"]
    net.assert_settled()


# ====================================================================== forwarding


def test_a_node_outside_the_homes_forwards_a_put_to_the_first_home_and_relays_its_put_ok(net):
    client = net.start_put("n4", "k", ["book"], w=2)

    [fwd] = net.sends("put", src="n4")
    assert fwd.to == "n1" and fwd.req_id is not None
    assert fwd.body["forwarded"] is True and fwd.body["w"] == 2
    assert fwd.body["value"] == ["book"] and fwd.body["context"] is None
    assert net.sends("replica_put", src="n4") == [], "the forwarder writes nothing itself"

    body = net.ok(client, "put_ok")
    stored = net.stores["n1"].read(BUCKET, "k")
    assert [v.value for v in stored] == [["book"]]
    assert stored[0].dot[0] == "actor-n1", "the home node coordinates and issues the dot"
    assert decode_context(body["context"]).covers(stored[0].dot)
    assert net.stores["n4"].read(BUCKET, "k") == []
    net.assert_settled()


def test_a_forwarded_delete_travels_as_a_delete_and_leaves_a_tombstone_at_the_homes(net):
    ctx = net.put("n1", "k", "v1")
    client = net.start_put("n4", "k", None, ctx, w=2, tombstone=True)
    [fwd] = net.sends("delete", src="n4")
    assert fwd.to == "n1" and fwd.body["forwarded"] is True and "value" not in fwd.body
    net.ok(client, "put_ok")
    for n in HOMES:
        [held] = net.stores[n].read(BUCKET, "k")
        assert held.tombstone


@pytest.mark.parametrize("fault", ["quorum", "overloaded"])
def test_a_forwarded_put_relays_the_home_nodes_own_verdict_as_the_same_error_class(fault):
    # A home that answers with an error of its own (not "unavailable") is alive and has
    # coordinated the put: its verdict is the answer, and no other home is tried.
    net = Net()
    if fault == "quorum":
        net.make_failing("n2")
        net.make_failing("n3")
    else:
        net.coords["n1"].max_pending = 0
    client = net.start_put("n4", "k", "v1", w=2)

    err = net.failed(client)
    if fault == "quorum":
        assert type(err) is QuorumNotMet
        assert (err.answered, err.required, err.asked) == (1, 2, 3)
        assert "1 of 3 replicas answered, 2 required" in str(err)
        assert "n2: n2 disk on fire" in str(err)
    else:
        assert type(err) is Overloaded
        assert "n1 already coordinates 0 requests" in str(err)
    assert [s.to for s in net.sends("put")] == ["n1"], "no other home is tried"
    assert [p for src, p in net.peer_failures if src == "n4"] == [], \
        "a home that answered is not reported failed"
    net.assert_settled()


def test_a_forwarded_put_whose_home_fails_its_local_write_relays_that_error_unreplicated(net):
    net.make_failing("n1", "replica_put", code="overloaded", message="n1 too many siblings")
    err = net.failed(net.start_put("n4", "k", "v1", w=2))
    assert type(err) is Overloaded
    assert str(err) == "n1 too many siblings"
    assert [(s.to, s.msg_type) for s in net.sends()] == [("n1", "put"), ("n1", "replica_put")]
    for n in ("n1", "n2", "n3", "n4"):
        assert net.stores[n].read(BUCKET, "k") == []
    net.assert_settled()


def test_a_forwarded_put_whose_first_home_is_unavailable_succeeds_through_the_second_home(net):
    # n1 answers every message with an "unavailable" error: the forwarder moves on to n2,
    # which coordinates the put (issuing the dot) and replicates it to n3.
    net.make_failing("n1")
    client = net.start_put("n4", "k", ["book"], w=2)

    body = net.ok(client, "put_ok")
    forwards = net.sends("put", src="n4")
    assert [s.to for s in forwards] == ["n1", "n2"]
    assert forwards[0].body == forwards[1].body, "the same put goes to the next home"
    assert ("n4", "n1") in net.peer_failures
    stored = net.stores["n2"].read(BUCKET, "k")
    assert [v.value for v in stored] == [["book"]]
    assert stored[0].dot[0] == "actor-n2", "the second home coordinates and issues the dot"
    assert decode_context(body["context"]).covers(stored[0].dot)
    assert net.held_values("n3", "k") == ["['book']"]
    assert net.stores["n1"].read(BUCKET, "k") == [] and net.stores["n4"].read(BUCKET, "k") == []
    net.assert_settled()


def test_a_forwarded_put_whose_first_home_is_unreachable_is_sent_to_the_next_home(net):
    coord = net.coords["n4"]
    [fwd] = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    assert fwd.to == "n1"
    effects = coord.on_unreachable(fwd.req_id, "n1", "no address for n1", 0.0)
    assert [type(e) for e in effects] == [PeerFailed, Send]
    failed, retry = effects
    assert failed == PeerFailed("n1")
    assert (retry.to, retry.msg_type, retry.body) == ("n2", "put", fwd.body)
    assert retry.req_id not in (None, fwd.req_id)
    [ok] = coord.on_reply(retry.req_id, "n2", "put_ok", {"context": b"ctx"}, 0.0)
    assert ok == Reply("c", "put_ok", {"context": b"ctx"})
    assert coord.pending() == 0 and coord._sent == {}


def test_a_forwarded_put_times_out_after_one_and_a_half_timeouts_when_the_home_is_silent(net):
    net.make_silent("n1", "put")
    client = net.start_put("n4", "k", "v1")
    net.tick(TIMEOUT * 1.5 - 0.001)
    assert net.answer(client) is None
    assert net.peer_failures == []
    net.tick(TIMEOUT * 1.5 + 0.001)
    err = net.failed(client)
    assert type(err) is Timeout
    assert "n1" in str(err)
    assert [s.to for s in net.sends("put")] == ["n1"], "a silent home is not hedged"
    assert net.peer_failures == [("n4", "n1")]
    net.assert_settled()


def test_a_forwarded_put_whose_every_home_is_unreachable_fails_as_unavailable(net):
    coord = net.coords["n4"]
    [fwd] = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    req_id, failures = fwd.req_id, []
    for home, nxt in (("n1", "n2"), ("n2", "n3")):
        failed, retry = coord.on_unreachable(req_id, home, f"no address for {home}", 0.0)
        failures.append(failed)
        assert isinstance(retry, Send) and retry.to == nxt
        req_id = retry.req_id
    effects = coord.on_unreachable(req_id, "n3", "no address for n3", 0.0)
    failures.append(effects[0])
    assert failures == [PeerFailed("n1"), PeerFailed("n2"), PeerFailed("n3")]
    [fail] = effects[1:]
    assert isinstance(fail, Fail) and fail.client == "c"
    assert coord.pending() == 0 and coord._sent == {}
    assert type(fail.error) is Unavailable, f"got {fail.error!r}"
    assert "no address for n3" in str(fail.error)


def test_a_replica_the_coordinator_cannot_reach_counts_as_an_unavailable_failure(net):
    coord = net.coords["n1"]
    [local] = coord.start_put("c", net.plan("k", 3), "v", None, False, 0.0)
    sends = {s.to: s for s in coord.on_reply(local.req_id, "n1", "replica_put_ok", {}, 0.0)}
    assert coord.on_reply(sends["n2"].req_id, "n2", "replica_put_ok", {}, 0.0) == []
    effects = coord.on_unreachable(sends["n3"].req_id, "n3", "no address known for node n3",
                                   0.0)
    assert [type(e) for e in effects] == [PeerFailed, Fail]
    failed, fail = effects
    assert failed == PeerFailed("n3"), "the failure detector hears of the unreachable peer"
    assert type(fail.error) is QuorumNotMet
    assert "2 of 3 replicas answered, 3 required" in str(fail.error)
    assert "n3: no address known for node n3" in str(fail.error)
    assert coord.pending() == 0 and coord._sent == {}


def test_an_unreachable_forward_target_is_named_in_the_unavailable_error(net):
    coord = net.coords["n4"]
    [fwd] = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    why = "send queue towards tcp://10.0.0.1:7000 is full"
    [_, to_n2] = coord.on_unreachable(fwd.req_id, "n1", "no address known for n1", 0.0)
    [_, to_n3] = coord.on_unreachable(to_n2.req_id, "n2", "no address known for n2", 0.0)
    effects = coord.on_unreachable(to_n3.req_id, "n3", why, 0.0)
    [fail] = [e for e in effects if isinstance(e, Fail)]
    assert [e for e in effects if not isinstance(e, Fail)] == [PeerFailed("n3")]
    assert type(fail.error) is Unavailable, f"got {fail.error!r}"
    assert "put forwarded to home node n3 failed" in str(fail.error), f"got {fail.error!r}"
    assert why in str(fail.error)
    assert "n1" not in str(fail.error) and "n2" not in str(fail.error), \
        "the last home's failure is the one relayed"


def test_a_forwarded_put_whose_homes_answer_garbage_fails_as_unavailable(net):
    coord = net.coords["n4"]
    [fwd] = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    # Garbage is a failed home, not a verdict: the next home is tried.
    [to_n2] = coord.on_reply(fwd.req_id, "n1", "replica_put_ok", {}, 0.0)
    assert (to_n2.to, to_n2.msg_type) == ("n2", "put")
    [to_n3] = coord.on_reply(to_n2.req_id, "n2", "replica_get_ok", {}, 0.0)
    assert (to_n3.to, to_n3.msg_type) == ("n3", "put")
    [fail] = coord.on_reply(to_n3.req_id, "n3", "replica_put_ok", {}, 0.0)
    assert type(fail.error) is Unavailable
    assert "put forwarded to home node n3 failed: bad reply" in str(fail.error)
    assert coord.pending() == 0 and coord._sent == {}


def test_a_put_for_a_key_with_no_known_home_fails_at_once():
    coord = Net().coords["n4"]
    [fail] = coord.start_put("c", KeyPlan(BUCKET, "k", (), 2), "v", None, False, 0.0)
    assert isinstance(fail, Fail) and type(fail.error) is QuorumNotMet
    assert "no home node is known" in str(fail.error)
    assert coord.pending() == 0


def test_a_put_arriving_forwarded_at_a_non_home_node_is_coordinated_there_not_forwarded(net):
    coord = net.coords["n4"]
    effects = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0,
                              forwarded=True)
    # It writes to itself first, like any coordinator, then to every home node.
    assert [(s.to, s.msg_type) for s in effects] == [("n4", "replica_put")]
    after = coord.on_reply(effects[0].req_id, "n4", "replica_put_ok", {}, 0.0)
    assert [(s.to, s.msg_type) for s in after] == [
        ("n1", "replica_put"), ("n2", "replica_put"), ("n3", "replica_put")]


# ====================================================================== get


def test_get_with_r2_answers_after_two_replies_with_the_union_of_causally_maximal_versions(net):
    old = version("old", ("x", 1))
    newer = version("newer", ("x", 2), {"x": 1})
    other = version("other", ("y", 1))
    seed(net, "n1", "k", old)
    seed(net, "n2", "k", newer, other)
    seed(net, "n3", "k", version("unseen", ("z", 1)))
    for n in HOMES:
        net.make_slow(n)
    client = net.start_get("n1", "k", r=2)
    assert sorted(s.send.to for s in net.held) == ["n1", "n2", "n3"]
    assert all(d.send.msg_type == "replica_get" for d in net.held)

    net.release("n1")
    assert net.answer(client) is None
    net.release("n2")
    body = net.ok(client, "get_ok")
    assert [s["value"] for s in body["siblings"]] == ["newer", "other"]
    assert [tuple(s["dot"]) for s in body["siblings"]] == [("x", 2), ("y", 1)]
    ctx = decode_context(body["context"])
    assert all(ctx.covers(d) for d in [("x", 1), ("x", 2), ("y", 1)])
    assert not ctx.covers(("z", 1)), "n3 had not answered when the get was answered"


def test_get_of_a_missing_key_returns_no_siblings_and_an_empty_context(net):
    values, ctx = net.get("n2", "nothing-here", r=2)
    assert values == []
    assert decode_context(ctx) == Clock.empty()
    net.assert_settled()


def test_get_fails_with_quorum_not_met_when_too_few_replicas_can_answer(net):
    net.make_failing("n2")
    net.make_silent("n3")
    client = net.start_get("n1", "k", r=2)
    assert net.answer(client) is None
    net.tick(TIMEOUT)
    err = net.failed(client)
    assert type(err) is QuorumNotMet
    assert "get quorum not met: 1 of 3 replicas answered, 2 required" in str(err)
    assert "n2: n2 disk on fire" in str(err) and "no answer from n3" in str(err)
    net.assert_settled()


def test_two_puts_with_the_same_context_become_siblings_and_a_put_with_their_context_leaves_one(net):
    net.put("n1", "cart", ["book"])
    net.put("n1", "cart", ["pen"])  # same (empty) context, same coordinator
    values, ctx = net.get("n2", "cart", r=2)
    assert sorted(values, key=repr) == [["book"], ["pen"]]
    for n in HOMES:
        assert len(net.stores[n].read(BUCKET, "cart")) == 2

    net.put("n1", "cart", ["book", "pen"], ctx)
    values, _ = net.get("n3", "cart", r=3)
    assert values == [["book", "pen"]]
    for n in HOMES:
        assert net.held_values(n, "cart") == ["['book', 'pen']"]
    net.assert_settled()


def test_a_put_with_a_read_context_supersedes_what_was_read_even_through_another_home(net):
    ctx = net.put("n1", "k", "v1")
    ctx2 = net.put("n2", "k", "v2", ctx)
    assert net.get("n3", "k", r=3)[0] == ["v2"]
    assert decode_context(ctx2).descends(decode_context(ctx))


# ====================================================================== delete


def test_delete_writes_a_tombstone_that_reads_as_no_siblings_but_a_context_a_put_supersedes(net):
    ctx = net.put("n1", "k", "v1")
    del_ctx = net.delete("n2", "k", ctx)
    for n in HOMES:
        [held] = net.stores[n].read(BUCKET, "k")
        assert held.tombstone and held.value is None
        assert decode_context(del_ctx).covers(held.dot)

    values, read_ctx = net.get("n3", "k", r=2)
    assert values == []
    tombstone_dot = net.stores["n1"].read(BUCKET, "k")[0].dot
    assert decode_context(read_ctx).covers(tombstone_dot)

    net.put("n3", "k", "v2", read_ctx)
    assert net.get("n1", "k", r=3)[0] == ["v2"]
    for n in HOMES:
        [held] = net.stores[n].read(BUCKET, "k")
        assert not held.tombstone and held.value == "v2"


def test_a_delete_concurrent_with_a_put_leaves_the_put_as_the_only_live_sibling(net):
    ctx = net.put("n1", "k", "v1")
    net.delete("n1", "k", ctx)
    net.put("n2", "k", "v2", ctx)  # concurrent with the delete
    values, read_ctx = net.get("n3", "k", r=3)
    assert values == ["v2"]
    assert len(net.stores["n1"].read(BUCKET, "k")) == 2, "the tombstone is a sibling"
    net.put("n3", "k", "v3", read_ctx)
    assert [len(net.stores[n].read(BUCKET, "k")) for n in HOMES] == [1, 1, 1]


# ====================================================================== resolver


def test_get_with_a_resolver_returns_one_merged_value_and_writes_it_back_to_every_home(net):
    net.put("n1", "cart", ["book"])
    net.put("n2", "cart", ["pen", "book"])
    sibling_dots = [v.dot for v in net.stores["n3"].read(BUCKET, "cart")]
    assert len(sibling_dots) == 2

    resolver = SortedUnion()
    net.sent.clear()
    body = net.ok(net.start_get("n1", "cart", r=2, resolver=resolver), "get_ok")
    assert len(resolver.calls) == 1 and len(resolver.calls[0]) == 2
    [sibling] = body["siblings"]
    assert sibling["value"] == ["book", "pen"]

    write_backs = net.sends("replica_put", one_way=True, src="n1")
    assert sorted(s.to for s in write_backs) == ["n1", "n2", "n3"]
    [merged_wire] = write_backs[0].body["versions"]
    merged = Version.from_wire(merged_wire)
    assert merged.value == ["book", "pen"] and merged.dot[0] == "actor-n1"
    assert tuple(sibling["dot"]) == merged.dot

    ctx = decode_context(body["context"])
    assert all(ctx.covers(d) for d in sibling_dots), "the context supersedes every sibling"
    assert ctx.covers(merged.dot)
    for n in HOMES:
        assert [v.value for v in net.stores[n].read(BUCKET, "cart")] == [["book", "pen"]]
    assert net.coords["n1"].read_repairs == 0, "the write-back leaves nothing to repair"

    net.put("n2", "cart", ["book", "pen", "mug"], body["context"])
    assert net.get("n3", "cart", r=3)[0] == [["book", "pen", "mug"]]
    net.assert_settled()


def test_a_resolving_get_on_a_non_home_node_merges_without_writing_back(net):
    net.put("n1", "cart", ["book"])
    net.put("n1", "cart", ["pen"])
    dots = [v.dot for v in net.stores["n1"].read(BUCKET, "cart")]
    net.sent.clear()
    body = net.ok(net.start_get("n4", "cart", r=3, resolver=SortedUnion()), "get_ok")
    assert [s["value"] for s in body["siblings"]] == [["book", "pen"]]
    assert net.sends("replica_put") == [], "a non-home node may not issue a dot"
    assert decode_context(body["context"]) == Clock.empty().add(dots[0], 0).add(dots[1], 0)
    # The client's next put with that context supersedes both siblings.
    net.put("n4", "cart", ["book", "pen"], body["context"])
    assert net.get("n2", "cart", r=3)[0] == [["book", "pen"]]


def test_a_resolver_is_not_called_for_a_single_sibling(net):
    net.put("n1", "k", ["a"])
    resolver = SortedUnion()
    assert net.get("n1", "k", r=2, resolver=resolver)[0] == [["a"]]
    assert resolver.calls == []


# ====================================================================== read repair


def test_read_repair_sends_the_newest_versions_to_a_stale_replica_once_all_replies_are_in(net):
    v1 = version("v1", ("x", 1))
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(net, "n1", "k", v2)
    seed(net, "n2", "k", v2)
    seed(net, "n3", "k", v1)
    net.make_slow("n3")
    client = net.start_get("n1", "k", r=2)
    assert [s["value"] for s in net.ok(client, "get_ok")["siblings"]] == ["v2"]
    assert net.sends("replica_put") == [], "no repair before every replica answered"
    assert net.coords["n1"].pending() == 1, "the get lingers to hear the last replica"

    net.release("n3")
    [repair] = net.sends("replica_put")
    assert repair.to == "n3" and repair.req_id is None
    assert [Version.from_wire(v).dot for v in repair.body["versions"]] == [("x", 2)]
    assert net.stores["n3"].read(BUCKET, "k") == [v2]
    assert net.coords["n1"].read_repairs == 1
    net.assert_settled()


def test_read_repair_fills_in_a_replica_that_had_no_version_at_all(net):
    v1 = version("v1", ("x", 1))
    seed(net, "n1", "k", v1)
    seed(net, "n2", "k", v1)
    net.get("n2", "k", r=3)
    [repair] = net.sends("replica_put")
    assert repair.to == "n3" and repair.req_id is None
    assert net.stores["n3"].read(BUCKET, "k") == [v1]
    assert net.coords["n2"].read_repairs == 1


def test_read_repair_at_the_deadline_repairs_the_stale_replicas_that_did_answer(net):
    v1 = version("v1", ("x", 1))
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(net, "n1", "k", v2)
    seed(net, "n2", "k", v1)
    net.make_silent("n3")
    assert net.get("n1", "k", r=2)[0] == ["v2"]
    assert net.sends("replica_put") == []
    net.tick(TIMEOUT - 0.001)
    assert net.sends("replica_put") == []
    net.tick(TIMEOUT)
    [repair] = net.sends("replica_put")
    assert repair.to == "n2" and repair.req_id is None
    assert net.stores["n2"].read(BUCKET, "k") == [v2]
    assert net.coords["n1"].read_repairs == 1
    net.assert_settled()


def test_read_repair_sends_a_replica_only_the_siblings_it_lacks(net):
    a = version("a", ("x", 1))
    b = version("b", ("y", 1))
    seed(net, "n1", "k", a, b)
    seed(net, "n2", "k", a)
    seed(net, "n3", "k", a, b)
    net.get("n1", "k", r=3)
    [repair] = net.sends("replica_put")
    assert repair.to == "n2"
    assert [Version.from_wire(v).dot for v in repair.body["versions"]] == [("y", 1)]
    assert net.coords["n1"].read_repairs == 1


def test_read_repair_propagates_a_newer_version_that_arrives_after_the_get_was_answered(net):
    v1 = version("v1", ("x", 1))
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(net, "n1", "k", v1)
    seed(net, "n2", "k", v1)
    seed(net, "n3", "k", v2)
    net.make_slow("n3")
    assert net.get("n1", "k", r=2)[0] == ["v1"]  # the quorum only saw v1
    net.release("n3")

    repairs = net.sends("replica_put")
    assert sorted(s.to for s in repairs) == ["n1", "n2"], \
        f"expected n1 and n2 to be repaired with v2, got {[(s.to, s.body) for s in repairs]}"
    for n in HOMES:
        assert net.stores[n].read(BUCKET, "k") == [v2]
    assert net.coords["n1"].read_repairs == 2


# ====================================================================== stale replies


def test_a_reply_with_an_unknown_request_id_is_dropped_and_counted(net):
    coord = net.coords["n1"]
    assert coord.on_reply(987654, "n2", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(None, "n2", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(987655, "n2", "error", {"message": "x"}, 0.0) == []
    assert coord.stale_replies == 3
    assert coord.pending() == 0


def test_replies_after_an_operation_ended_are_dropped_and_counted(net):
    coord = net.coords["n1"]
    [local] = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    ids = {"n1": local.req_id}
    ids.update((s.to, s.req_id)
               for s in coord.on_reply(ids["n1"], "n1", "replica_put_ok", {}, 0.0))
    assert sorted(ids) == ["n1", "n2", "n3"]
    [ok] = coord.on_reply(ids["n2"], "n2", "replica_put_ok", {}, 0.0)
    assert isinstance(ok, Reply)
    # The last replica, a duplicate, and an error for the finished put.
    assert coord.on_reply(ids["n3"], "n3", "replica_put_ok", {}, 0.1) == []
    assert coord.on_reply(ids["n2"], "n2", "replica_put_ok", {}, 0.1) == []
    assert coord.on_reply(ids["n1"], "n1", "error", {"message": "late"}, 0.1) == []
    assert coord.stale_replies == 3
    assert coord.pending() == 0 and coord._sent == {}


def test_replies_after_a_timed_out_operation_are_dropped_and_counted(net):
    coord = net.coords["n1"]
    effects = coord.start_get("c", net.plan("k", 2), 0.0)
    expired = coord.on_tick(TIMEOUT + 1)
    [fail] = [e for e in expired if isinstance(e, Fail)]
    assert isinstance(fail.error, QuorumNotMet)
    # Every replica silent at the deadline is reported to the failure detector.
    assert [e for e in expired if not isinstance(e, Fail)] == \
        [PeerFailed("n1"), PeerFailed("n2"), PeerFailed("n3")]
    for s in effects:
        assert coord.on_reply(s.req_id, s.to, "replica_get_ok", {"versions": []}, 5.0) == []
    assert coord.stale_replies == 3
    assert coord.on_tick(10.0) == []


def test_a_reply_from_a_peer_other_than_the_one_asked_is_dropped_and_counted(net):
    coord = net.coords["n1"]
    [local] = coord.start_put("c", net.plan("k", 3), "v", None, False, 0.0)
    # Another node answering the coordinator's own write neither replicates nor fails it.
    assert coord.on_reply(local.req_id, "n2", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(local.req_id, "n3", "error", {"message": "not mine"}, 0.0) == []
    ids = {s.to: s.req_id
           for s in coord.on_reply(local.req_id, "n1", "replica_put_ok", {}, 0.0)}
    assert sorted(ids) == ["n2", "n3"]
    assert coord.on_reply(ids["n2"], "n4", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(ids["n2"], "n3", "error", {"message": "not mine"}, 0.0) == []
    assert coord.stale_replies == 4
    assert coord.pending() == 1, "the operation is untouched"


def test_a_reply_from_the_wrong_peer_does_not_cost_the_right_peer_its_answer(net):
    coord = net.coords["n1"]
    [local] = coord.start_put("c", net.plan("k", 3), "v", None, False, 0.0)
    assert coord.on_reply(local.req_id, "n4", "replica_put_ok", {}, 0.0) == []
    effects = coord.on_reply(local.req_id, "n1", "replica_put_ok", {}, 0.0)
    ids = {s.to: s.req_id for s in effects}
    assert sorted(ids) == ["n2", "n3"], f"the genuine local ack was lost: {effects}"
    assert coord.on_reply(ids["n2"], "n4", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(ids["n3"], "n3", "replica_put_ok", {}, 0.0) == []
    out = coord.on_reply(ids["n2"], "n2", "replica_put_ok", {}, 0.0)
    assert [type(e) for e in out] == [Reply], f"the genuine ack was lost: {out} " \
        f"then at the deadline {coord.on_tick(TIMEOUT + 1)}"
    assert coord.stale_replies == 2
    assert coord.pending() == 0 and coord._sent == {}


def test_garbage_in_a_replica_get_reply_is_a_failed_replica_not_an_exception(net):
    coord = net.coords["n1"]
    effects = coord.start_get("c", net.plan("k", 2), 0.0)
    ids = {s.to: s.req_id for s in effects}
    assert coord.on_reply(ids["n1"], "n1", "replica_get_ok", {"versions": [{"x": 1}]}, 0.0) == []
    # Out of reach now, but n3 is still asked: the get waits for it, to count it truly.
    assert coord.on_reply(ids["n2"], "n2", "replica_get_ok", {}, 0.0) == []
    [fail] = coord.on_reply(ids["n3"], "n3", "replica_get_ok", {"versions": "no"}, 0.0)
    assert isinstance(fail.error, QuorumNotMet)
    assert "0 of 3 replicas answered, 2 required" in str(fail.error)
    assert str(fail.error).count("bad reply") == 3
    assert coord.pending() == 0 and coord._sent == {}
    assert coord.read_repairs == 0


# ====================================================================== bounds


def test_a_request_beyond_max_pending_is_refused_as_overloaded_and_finished_ops_free_slots():
    net = Net(max_pending=2)
    for n in HOMES:
        net.make_slow(n)
    first = net.start_put("n1", "a", 1)
    second = net.start_get("n1", "b")
    third = net.start_put("n1", "c", 3)
    err = net.failed(third)
    assert type(err) is Overloaded
    assert "n1 already coordinates 2 requests" in str(err)
    assert type(net.failed(net.start_get("n1", "d"))) is Overloaded
    assert net.coords["n1"].pending() == 2

    net.release()
    net.ok(first, "put_ok")
    net.ok(second, "get_ok")
    net.assert_settled()
    net.put("n1", "c", 3)
    net.put("n1", "c2", 4)
    net.assert_settled()


def test_a_forwarding_node_counts_its_forwarded_puts_against_max_pending():
    net = Net(max_pending=1)
    net.make_slow("n1", "put")
    first = net.start_put("n4", "k", 1)
    assert type(net.failed(net.start_put("n4", "k", 2))) is Overloaded
    net.release("n1")
    net.ok(first, "put_ok")
    net.assert_settled()


def test_an_answered_get_holds_its_slot_only_until_its_last_reply_or_deadline():
    net = Net(max_pending=1)
    net.make_silent("n3")
    client = net.start_get("n1", "k", r=2)
    net.ok(client, "get_ok")  # two "not found"s from homes: absent, at once
    assert net.coords["n1"].pending() == 1  # lingering for read repair
    net.tick(TIMEOUT)
    net.assert_settled()
    net.heal("n3")
    net.get("n1", "k", r=2)
    net.assert_settled()


def test_no_internal_map_grows_after_many_completed_operations():
    net = Net(max_pending=8)
    resolver = SortedUnion()
    for i in range(60):
        net.now = float(i * 10)
        key = f"k{i % 7}"
        via = ("n1", "n2", "n3", "n4")[i % 4]
        if i % 5 == 0:
            net.make_silent("n3")
        elif i % 5 == 1:
            net.make_failing("n2")
        elif i % 5 == 2:
            net.make_slow("n2")
        values, ctx = net.get(via, key, r=2, resolver=resolver if i % 3 else None) \
            if i % 5 != 1 else ([], None)
        client = net.start_put(via, key, [i], ctx, w=2)
        net.release()
        net.tick(net.now + 2 * TIMEOUT)  # let lingering gets and silent puts settle
        assert net.answer(client) is not None
        for n in list(net.silent) + list(net.failing):
            net.heal(n)
    net.tick(net.now + 10 * TIMEOUT)
    net.assert_settled()
    for coord in net.coords.values():
        assert coord.next_deadline() is None


# ====================================================================== bad requests


@pytest.mark.parametrize("context", [
    b"not cbor at all \xff",
    cbor2.dumps(["other-tag", []]),
    cbor2.dumps(["dyn1", [["a", -1, 0.0]]]),
    cbor2.dumps(5),
    "!!not base64!!",
    12345,
])
@pytest.mark.parametrize("via", ["n1", "n4"])
def test_a_put_with_a_bad_context_fails_as_invalid_request_before_sending_anything(context, via):
    coord = Net().coords[via]
    effects = coord.start_put("c", KeyPlan(BUCKET, "k", HOMES, 2), "v", context, False, 0.0)
    [fail] = effects
    assert isinstance(fail, Fail) and type(fail.error) is InvalidRequest
    assert str(fail.error)
    assert coord.pending() == 0 and coord._sent == {}


def test_a_context_round_trips_as_base64_text_too(net):
    from dynamo_core.versions import context_text
    ctx = net.put("n1", "k", "v1")
    net.put("n1", "k", "v2", context_text(ctx))
    assert net.get("n2", "k", r=3)[0] == ["v2"]


# ====================================================================== dot freshness


def test_a_put_whose_local_write_fails_is_refused_and_never_replicated(net):
    net.put("n1", "k", "zero", w=3)
    [zero_dot] = {v.dot for n in HOMES for v in net.stores[n].read(BUCKET, "k")}

    net.make_failing("n1", "replica_put", message="n1 local write failed")
    net.sent.clear()
    client = net.start_put("n1", "k", "first", w=2)  # n2 and n3 could have met W=2
    err = net.failed(client)
    assert type(err) is Unavailable and str(err) == "n1 local write failed"
    [attempt] = net.sends("replica_put")
    assert attempt.to == "n1", "no other replica is sent the version"
    for n in HOMES:
        assert net.held_values(n, "k") == ["'zero'"], f"{n} holds the refused version"
    net.assert_settled()

    net.heal("n1")
    net.sent.clear()
    net.put("n1", "k", "second", w=2)  # concurrent with "zero": both must survive
    [second_wire] = net.sends("replica_put")[0].body["versions"]
    second_dot = Version.from_wire(second_wire).dot
    assert second_dot[0] == "actor-n1" and second_dot != zero_dot, "a fresh dot"
    held = {n: net.held_values(n, "k") for n in HOMES}
    values, _ = net.get("n2", "k", r=3)
    assert sorted(values) == ["second", "zero"], \
        f"an acknowledged write was lost: get says {values}, replicas hold {held}"
    for n in HOMES:
        assert {v.dot: v.value for v in net.stores[n].read(BUCKET, "k")} == \
            {zero_dot: "zero", second_dot: "second"}
    net.assert_settled()


# ====================================================================== sloppy quorum


@pytest.fixture
def sloppy() -> Net:
    """Five nodes; every key planned over WALK: homes n1-n3, fallbacks n4 then n5."""
    return Net(WALK, walk=WALK)


def down_set(*nodes: str):
    return lambda n: n in nodes


def test_a_sloppy_plan_with_every_home_up_targets_the_homes_and_keeps_the_fallbacks_spare():
    plan = KeyPlan.sloppy(BUCKET, "k", WALK, 3, 2, down_set())
    assert plan.homes == plan.targets == ("n1", "n2", "n3")
    assert plan.stand_in == {} and plan.spares == ("n4", "n5")
    assert (plan.quorum, plan.strict) == (2, False)


def test_a_sloppy_plan_replaces_a_home_believed_down_with_the_first_healthy_fallback():
    plan = KeyPlan.sloppy(BUCKET, "k", WALK, 3, 2, down_set("n2"))
    assert plan.homes == ("n1", "n2", "n3"), "the homes are the top N, down or not"
    assert plan.targets == ("n1", "n4", "n3"), "n4 takes n2's place"
    assert plan.stand_in == {"n4": "n2"}
    assert plan.spares == ("n5",)


def test_a_sloppy_plan_skips_fallbacks_believed_down_and_gives_each_down_home_its_own():
    plan = KeyPlan.sloppy(BUCKET, "k", WALK, 3, 2, down_set("n2", "n4"))
    assert plan.targets == ("n1", "n5", "n3")
    assert plan.stand_in == {"n5": "n2"} and plan.spares == ()

    plan = KeyPlan.sloppy(BUCKET, "k", WALK, 3, 2, down_set("n1", "n3"))
    assert plan.targets == ("n4", "n2", "n5")
    assert plan.stand_in == {"n4": "n1", "n5": "n3"} and plan.spares == ()


def test_a_strict_plan_has_no_fallbacks_and_targets_the_homes_even_when_one_is_down():
    plan = KeyPlan.sloppy(BUCKET, "k", WALK, 3, 2, down_set("n2"), strict=True)
    assert plan.homes == plan.targets == ("n1", "n2", "n3")
    assert plan.stand_in == {} and plan.spares == ()
    assert plan.strict


def test_a_plain_key_plan_targets_its_homes_with_no_stand_ins_or_spares():
    plan = KeyPlan(BUCKET, "k", HOMES, 2)
    assert plan.targets == HOMES and plan.stand_in == {} and plan.spares == ()
    assert not plan.strict


def test_a_put_with_a_home_down_succeeds_through_a_stand_in_whose_hinted_ack_counts_toward_w(
        sloppy):
    sloppy.down.add("n3")
    sloppy.make_slow("n2")  # so that W=2 can only be met by n1 and the stand-in n4
    client = sloppy.start_put("n1", "k", "v1", w=2)

    body = sloppy.ok(client, "put_ok")
    puts = {s.to: s for s in sloppy.sends("replica_put")}
    assert sorted(puts) == ["n1", "n4"], "nothing goes to n3 (down) or n5 (spare)"
    assert puts["n4"].body["hint"] == "n3", "the stand-in is told whose write it holds"
    assert "hint" not in puts["n1"].body
    assert {k: v for k, v in puts["n4"].body.items() if k != "hint"} == puts["n1"].body
    assert [d.send.to for d in sloppy.held] == ["n2"]
    assert "hint" not in sloppy.held[0].send.body, "a home's copy carries no hint"
    assert sloppy.coords["n1"].hinted_writes == 1
    # The in-test store of the stand-in simply keeps the version.
    assert sloppy.held_values("n4", "k") == ["'v1'"]
    [stored] = sloppy.stores["n1"].read(BUCKET, "k")
    assert decode_context(body["context"]).covers(stored.dot)

    sloppy.release("n2")
    assert sloppy.held_values("n2", "k") == ["'v1'"]
    assert sloppy.coords["n1"].stale_replies == 1
    assert sloppy.peer_failures == []
    sloppy.assert_settled()


def test_a_put_needing_w3_with_a_home_down_counts_the_stand_in_as_a_third_replica(sloppy):
    sloppy.down.add("n2")
    sloppy.make_silent("n2")  # really down: anything sent there would vanish
    sloppy.put("n1", "k", "v1", w=3)
    assert sorted(s.to for s in sloppy.sends("replica_put")) == ["n1", "n3", "n4"]
    for n in ("n1", "n3", "n4"):
        assert sloppy.held_values(n, "k") == ["'v1'"]
    sloppy.assert_settled()


@pytest.mark.parametrize("code,reported", [("unavailable", True), ("overloaded", False)])
def test_a_home_that_fails_mid_write_is_replaced_by_a_spare_carrying_its_hint(
        sloppy, code, reported):
    sloppy.make_failing("n3", "replica_put", code=code, message="n3 cannot write")
    sloppy.put("n1", "k", "v1", w=3)  # n1, n2 and the spare n4 meet W=3

    puts = [(s.to, s.body.get("hint")) for s in sloppy.sends("replica_put")]
    assert puts == [("n1", None), ("n2", None), ("n3", None), ("n4", "n3")]
    assert sloppy.held_values("n4", "k") == ["'v1'"]
    assert sloppy.stores["n3"].read(BUCKET, "k") == []
    assert sloppy.coords["n1"].hinted_writes == 1
    # Only an unreachable peer is news for the failure detector; a busy one answered.
    assert sloppy.peer_failures == ([("n1", "n3")] if reported else [])
    sloppy.assert_settled()


def test_a_spare_that_fails_too_is_replaced_by_the_next_one_still_hinting_the_home(sloppy):
    sloppy.make_failing("n3", "replica_put")
    sloppy.make_failing("n4", "replica_put")
    sloppy.put("n1", "k", "v1", w=3)
    puts = [(s.to, s.body.get("hint")) for s in sloppy.sends("replica_put")]
    assert puts == [("n1", None), ("n2", None), ("n3", None), ("n4", "n3"), ("n5", "n3")]
    assert sloppy.held_values("n5", "k") == ["'v1'"]
    assert sloppy.peer_failures == [("n1", "n3"), ("n1", "n4")]
    assert sloppy.coords["n1"].hinted_writes == 2
    sloppy.assert_settled()


def test_a_put_fails_only_when_the_spares_run_out_and_counts_every_node_asked(sloppy):
    for n in ("n2", "n3", "n4"):
        sloppy.make_failing(n, "replica_put", message=f"{n} disk on fire")
    err = sloppy.failed(sloppy.start_put("n1", "k", "v1", w=3))
    # n2 and n3 fail and the spares n4 and n5 are brought in; once n4 fails too, W=3 is
    # out of reach, but n5 still answers before the put fails, so the count is true.
    assert type(err) is QuorumNotMet
    assert (err.op, err.answered, err.required, err.asked) == ("put", 2, 3, 5)
    assert "2 of 5 replicas answered, 3 required" in str(err)
    assert "n2: n2 disk on fire" in str(err) and "n4: n4 disk on fire" in str(err)
    hinted = [(s.to, s.body["hint"]) for s in sloppy.sends("replica_put") if "hint" in s.body]
    assert hinted == [("n4", "n2"), ("n5", "n3")]
    sloppy.assert_settled()


def test_a_home_silent_past_hedge_after_is_replaced_by_a_spare_and_reported_failed(sloppy):
    coord = sloppy.coords["n1"]
    assert coord.hedge_after == pytest.approx(TIMEOUT / 2)
    sloppy.make_silent("n3")
    client = sloppy.start_put("n1", "k", "v1", w=3)
    assert sloppy.answer(client) is None

    sloppy.tick(coord.hedge_after - 0.001)
    assert sloppy.answer(client) is None
    assert [s.to for s in sloppy.sends("replica_put")] == ["n1", "n2", "n3"]
    assert sloppy.peer_failures == []

    sloppy.tick(coord.hedge_after)
    assert sloppy.peer_failures == [("n1", "n3")]
    [hedge] = sloppy.sends("replica_put")[3:]
    assert hedge.to == "n4" and hedge.body["hint"] == "n3" and hedge.req_id is not None
    sloppy.ok(client, "put_ok")  # answered at hedge_after, well before the deadline
    assert sloppy.now < TIMEOUT
    assert sloppy.held_values("n4", "k") == ["'v1'"]
    assert coord.hinted_writes == 1
    sloppy.assert_settled()


def test_a_silent_home_is_not_replaced_when_there_is_no_spare_and_the_put_times_out(sloppy):
    sloppy.down.update({"n4", "n5"})  # no healthy fallback: no spares
    sloppy.make_silent("n3")
    client = sloppy.start_put("n1", "k", "v1", w=3)
    sloppy.tick(sloppy.coords["n1"].hedge_after)
    assert sloppy.answer(client) is None
    assert sloppy.peer_failures == [], "nothing to hedge with: wait for the deadline"
    sloppy.tick(TIMEOUT)
    err = sloppy.failed(client)
    assert type(err) is QuorumNotMet and "no answer from n3" in str(err)
    assert sloppy.peer_failures == [("n1", "n3")]
    sloppy.assert_settled()


@pytest.mark.parametrize("fault", ["failing", "silent"])
def test_a_strict_bucket_with_a_home_down_fails_with_quorum_not_met_naming_strictness(fault):
    net = Net(WALK, walk=WALK, strict=True)
    net.down.add("n3")
    getattr(net, f"make_{fault}")("n3")
    client = net.start_put("n1", "k", "v1", w=3)
    if fault == "silent":
        net.tick(net.coords["n1"].hedge_after)
        assert net.answer(client) is None, "no spare is brought in for a strict bucket"
        net.tick(TIMEOUT)
    err = net.failed(client)
    assert type(err) is QuorumNotMet
    assert (err.answered, err.required, err.asked) == (2, 3, 3)
    assert "strict" in str(err)
    assert sorted(s.to for s in net.sends()) == ["n1", "n2", "n3"], \
        "a strict bucket asks the homes, down or not, and nobody else"
    assert all("hint" not in s.body for s in net.sends())
    assert net.coords["n1"].hinted_writes == 0
    net.assert_settled()


def test_quorum_not_met_counts_the_homes_even_when_fewer_nodes_could_be_asked():
    walk = ("n1", "n2", "n3", "n4")
    net = Net(walk, walk=walk)
    net.down.update({"n2", "n3"})  # one fallback (n4) for two down homes
    assert net.plan("k", 3).targets == ("n1", "n4")
    err = net.failed(net.start_put("n1", "k", "v1", w=3))
    assert type(err) is QuorumNotMet
    # The reachable nodes still answer, so the error says how many did, and why not more.
    assert (err.answered, err.required, err.asked) == (2, 3, 3)
    assert "2 of 3 replicas answered, 3 required" in str(err)
    assert "n3 believed down and no stand-in available" in str(err)


def test_a_forwarded_put_goes_first_to_a_home_believed_up(sloppy):
    sloppy.down.add("n1")
    client = sloppy.start_put("n5", "k", "v1", w=2)
    sloppy.ok(client, "put_ok")
    assert [s.to for s in sloppy.sends("put")] == ["n2"]
    # n2 coordinates with the same view: n4 stands in for n1.
    puts = {s.to: s.body.get("hint") for s in sloppy.sends("replica_put")}
    assert puts == {"n2": None, "n3": None, "n4": "n1"}
    assert sloppy.coords["n2"].hinted_writes == 1
    assert sloppy.coords["n5"].hinted_writes == 0
    sloppy.assert_settled()


def test_a_get_asks_the_stand_in_for_a_home_believed_down_and_counts_its_answer(sloppy):
    v1 = version("v1", ("x", 1))
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(sloppy, "n1", "k", v1)
    seed(sloppy, "n2", "k", v1)
    seed(sloppy, "n4", "k", v2)  # the stand-in holds a newer (hinted) write
    sloppy.down.add("n3")
    values, ctx = sloppy.get("n1", "k", r=3)
    assert values == ["v2"], "the stand-in's answer counts toward R"
    assert decode_context(ctx).covers(("x", 2))
    gets = sloppy.sends("replica_get")
    assert sorted(s.to for s in gets) == ["n1", "n2", "n4"]
    assert all("hint" not in s.body for s in gets), "reads carry no hint"
    assert sloppy.coords["n1"].hinted_writes == 0


def test_a_get_replaces_a_failing_home_with_a_spare(sloppy):
    v1 = version("v1", ("x", 1))
    for n in ("n1", "n2", "n4"):
        seed(sloppy, n, "k", v1)
    sloppy.make_failing("n3", "replica_get")
    assert sloppy.get("n1", "k", r=3)[0] == ["v1"]
    assert [s.to for s in sloppy.sends("replica_get")] == ["n1", "n2", "n3", "n4"]
    assert sloppy.peer_failures == [("n1", "n3")]
    sloppy.assert_settled()


def test_a_get_replaces_a_home_silent_past_hedge_after_with_a_spare(sloppy):
    v1 = version("v1", ("x", 1))
    for n in ("n1", "n2", "n4"):
        seed(sloppy, n, "k", v1)
    sloppy.make_silent("n3")
    client = sloppy.start_get("n1", "k", r=3)
    sloppy.tick(sloppy.coords["n1"].hedge_after - 0.001)
    assert sloppy.answer(client) is None
    sloppy.tick(sloppy.coords["n1"].hedge_after)
    assert [s["value"] for s in sloppy.ok(client, "get_ok")["siblings"]] == ["v1"]
    assert [s.to for s in sloppy.sends("replica_get")] == ["n1", "n2", "n3", "n4"]
    assert sloppy.peer_failures == [("n1", "n3")]
    # The answered get lingers for the silent home until the deadline; the hedged-out
    # home is not reported a second time.
    sloppy.tick(TIMEOUT)
    assert sloppy.peer_failures == [("n1", "n3")]
    sloppy.assert_settled()


def test_a_strict_get_uses_no_stand_in_and_no_spare():
    net = Net(WALK, walk=WALK, strict=True)
    net.down.add("n3")
    net.make_failing("n3")
    err = net.failed(net.start_get("n1", "k", r=3))
    assert type(err) is QuorumNotMet and "strict" in str(err)
    assert sorted(s.to for s in net.sends("replica_get")) == ["n1", "n2", "n3"]


def test_read_repair_never_sends_to_a_stand_in_only_to_stale_homes(sloppy):
    v1 = version("v1", ("x", 1))
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(sloppy, "n1", "k", v2)
    seed(sloppy, "n2", "k", v1)  # a stale home
    sloppy.down.add("n3")        # n4 stands in for n3 and holds nothing: stale too
    assert sloppy.get("n1", "k", r=3)[0] == ["v2"]
    [repair] = sloppy.sends("replica_put")
    assert repair.to == "n2" and repair.req_id is None and "hint" not in repair.body
    assert sloppy.stores["n4"].read(BUCKET, "k") == [], "a stand-in holds hints, not replicas"
    assert sloppy.coords["n1"].read_repairs == 1
    sloppy.assert_settled()


def test_read_repair_never_sends_to_a_spare_brought_in_mid_get(sloppy):
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(sloppy, "n1", "k", v2)
    seed(sloppy, "n2", "k", v2)
    sloppy.make_failing("n3", "replica_get")  # n4 is brought in, and holds nothing
    assert sloppy.get("n1", "k", r=3)[0] == ["v2"]
    assert "n4" in [s.to for s in sloppy.sends("replica_get")]
    assert sloppy.sends("replica_put") == []
    assert sloppy.coords["n1"].read_repairs == 0
    sloppy.assert_settled()


def test_a_resolving_get_writes_the_merge_back_to_the_targets_with_hints_to_stand_ins(sloppy):
    sloppy.down.add("n3")
    sloppy.put("n1", "cart", ["book"], w=3)
    sloppy.put("n2", "cart", ["pen"], w=3)  # concurrent: two siblings on n1, n2 and n4
    assert len(sloppy.stores["n4"].read(BUCKET, "cart")) == 2
    sloppy.sent.clear()

    body = sloppy.ok(sloppy.start_get("n1", "cart", r=2, resolver=SortedUnion()), "get_ok")
    assert [s["value"] for s in body["siblings"]] == [["book", "pen"]]
    write_backs = {s.to: s for s in sloppy.sends("replica_put", one_way=True)}
    assert sorted(write_backs) == ["n1", "n2", "n4"], "the merge goes where a put would"
    assert write_backs["n4"].body["hint"] == "n3"
    assert "hint" not in write_backs["n1"].body and "hint" not in write_backs["n2"].body
    assert write_backs["n4"].body["versions"] == write_backs["n1"].body["versions"]
    for n in ("n1", "n2", "n4"):
        assert sloppy.held_values(n, "cart") == ["['book', 'pen']"]
    assert sloppy.stores["n3"].read(BUCKET, "cart") == []
    sloppy.assert_settled()


def test_hinted_writes_counts_every_replica_put_sent_with_a_hint(sloppy):
    coord = sloppy.coords["n1"]
    sloppy.put("n1", "a", 1)
    assert coord.hinted_writes == 0, "no stand-in, no hint"
    sloppy.down.add("n3")
    sloppy.put("n1", "b", 2, w=3)
    assert coord.hinted_writes == 1
    sloppy.get("n1", "b", r=3)
    assert coord.hinted_writes == 1, "a read is not a hinted write"
    sloppy.make_failing("n2", "replica_put")
    sloppy.put("n1", "c", 3, w=3)  # n4 stands in for n3, and the spare n5 for n2
    assert coord.hinted_writes == 3
    hinted = [(s.to, s.body["hint"]) for s in sloppy.sends("replica_put") if "hint" in s.body]
    assert hinted == [("n4", "n3"), ("n4", "n3"), ("n5", "n2")]
    assert sum(c.hinted_writes for c in sloppy.coords.values()) == len(hinted)


# ====================================================================== known bugs


def test_a_put_waiting_on_its_own_write_reports_no_peer_it_never_contacted(net):
    net.make_silent("n1", "replica_put")
    client = net.start_put("n1", "k", "v1", w=2)
    net.tick(TIMEOUT)
    assert type(net.failed(client)) is QuorumNotMet
    assert [s.to for s in net.sends()] == ["n1"], "n2 and n3 were never sent anything"
    reported = {peer for _, peer in net.peer_failures}
    assert not reported & {"n2", "n3"}, f"never-contacted peers reported failed: {reported}"


def test_a_put_waiting_on_its_own_write_reports_each_peer_at_most_once(sloppy):
    sloppy.make_slow("n1", "replica_put")
    client = sloppy.start_put("n1", "k", "v1", w=2)
    hedge = sloppy.coords["n1"].hedge_after
    for i in range(5):
        sloppy.tick(hedge + i * 0.02)
    assert sloppy.answer(client) is None
    peers = [peer for _, peer in sloppy.peer_failures]
    assert len(peers) == len(set(peers)), f"peers reported repeatedly: {peers}"


def test_a_spare_brought_in_at_the_hedge_is_not_hedged_out_on_the_next_tick(sloppy):
    sloppy.make_silent("n3")
    sloppy.make_slow("n4")  # the spare is slow, not dead
    client = sloppy.start_put("n1", "k", "v1", w=3)
    hedge = sloppy.coords["n1"].hedge_after
    sloppy.tick(hedge)
    assert [s.to for s in sloppy.sends("replica_put")][3:] == []  # n4 is held (slow)
    assert [d.send.to for d in sloppy.held] == ["n4"]
    sloppy.tick(hedge + 0.02)  # one runtime tick later
    assert ("n1", "n4") not in sloppy.peer_failures, "n4 was silent for 20 ms, not 500"
    assert [d.send.to for d in sloppy.held] == ["n4"], "n5 brought in after 20 ms"
    sloppy.release("n4")
    sloppy.ok(client, "put_ok")


def test_a_forward_whose_last_home_answers_garbage_reports_that_not_an_earlier_error(net):
    coord = net.coords["n4"]
    [fwd] = coord.start_put("c", net.plan("k", 2), "v", None, False, 0.0)
    unavailable = errors.to_wire(Unavailable("n1 is shutting down"))
    [_, to_n2] = coord.on_reply(fwd.req_id, "n1", "error", unavailable, 0.0)
    [to_n3] = coord.on_reply(to_n2.req_id, "n2", "replica_put_ok", {}, 0.0)
    [fail] = coord.on_reply(to_n3.req_id, "n3", "replica_put_ok", {}, 0.0)
    assert "put forwarded to home node n3 failed: bad reply" in str(fail.error), \
        f"got {fail.error!r}"


def test_a_strict_buckets_forwarded_put_goes_first_to_a_home_believed_up():
    net = Net(WALK, walk=WALK, strict=True)
    net.down.add("n1")
    net.start_put("n5", "k", "v1", w=2)
    assert [s.to for s in net.sends("put")][:1] == ["n2"]


def test_hinted_writes_counts_a_resolver_write_back_to_a_stand_in(sloppy):
    sloppy.down.add("n3")
    sloppy.put("n1", "cart", ["book"], w=3)
    sloppy.put("n2", "cart", ["pen"], w=3)
    before = sloppy.coords["n1"].hinted_writes
    sloppy.sent.clear()
    sloppy.get("n1", "cart", r=2, resolver=SortedUnion())
    assert [s.to for s in sloppy.sends("replica_put", one_way=True) if "hint" in s.body] == \
        ["n4"]
    assert sloppy.coords["n1"].hinted_writes == before + 1


def test_a_not_found_from_a_replica_still_filling_its_range_brings_in_the_next_node():
    """A home that joined (or took a range over) and has not received the range yet holds
    nothing of the keys written before: its "not found" is no evidence, so the next node of
    the walk (often the range's previous holder, which keeps it until the newcomer has it)
    is asked too, at once rather than after a timeout."""
    net = Net(walk=("n1", "n2", "n3", "n4"))
    old = version("v1", ("x", 1), ts=1.0)
    for n in ("n3", "n4"):  # n4 held the range before n1 took it over
        seed(net, n, "k", old)
    net.filling.add("n1")
    net.make_slow("n3", "replica_get")
    client = net.start_get("n2", "k", r=2)  # n2 holds nothing of it (a lost write, say)
    values = [s["value"] for s in net.ok(client, "get_ok")["siblings"]]
    assert values == ["v1"], "n1's weak empty answer must not count toward R"
    assert "n4" in [s.to for s in net.sends("replica_get")]


def test_weak_not_founds_answer_a_read_when_no_other_node_is_left_to_ask():
    net = Net(walk=("n1", "n2", "n3"))  # a fresh cluster: every node is still filling
    net.filling.update({"n1", "n2", "n3"})
    assert net.get("n1", "absent", r=2)[0] == []


def test_a_get_of_an_absent_key_answers_once_r_homes_said_not_found():
    net = Net()
    net.make_silent("n3")
    client = net.start_get("n1", "absent", r=2)
    assert net.ok(client, "get_ok")["siblings"] == []  # no waiting for the silent node


# ====================================================================== dots issued once


def test_a_put_coordinated_while_a_merging_get_waits_never_shares_the_merges_dot(net):
    """The lost-cart-add bug: the merge took its dot from the replica read at the get's
    start, so a put coordinated meanwhile at the same node got the very same dot, and the
    reader's next put superseded an add nobody had seen."""
    net.put("n1", "cart", ["book"])
    net.put("n1", "cart", ["pen"])  # two siblings (no context)
    _, ctx = net.get("n1", "cart", r=3)
    snapshot = {"versions": [v.to_wire() for v in net.stores["n2"].read(BUCKET, "cart")]}
    coord = net.coords["n1"]
    sends = [e for e in coord.start_get("reader", net.plan("cart", 3, SortedUnion()), 0.0)
             if isinstance(e, Send)]
    added = net.put("n1", "cart", ["book", "pen", "mug"], ctx)  # acknowledged meanwhile
    effects = []
    for send in sends:  # the replicas' answers, from before the add reached them
        effects += coord.on_reply(send.req_id, send.to, "replica_get_ok", snapshot, 0.0)
    [reply] = [e for e in effects if isinstance(e, Reply)]
    merge_dot = tuple(reply.body["siblings"][0]["dot"])
    assert merge_dot != ("actor-n1", decode_context(added).counter("actor-n1"))
    net.run("n1", [e for e in effects if not isinstance(e, Reply)])  # the write-back
    # The merge and the add are concurrent siblings: the reader's next put keeps the add.
    net.put("n1", "cart", ["book", "pen", "lamp"], reply.body["context"])
    values, _ = net.get("n2", "cart", r=3, resolver=SortedUnion())
    assert values == [["book", "lamp", "mug", "pen"]]


def test_two_merging_gets_at_one_node_issue_two_dots(net):
    net.put("n1", "cart", ["a"])
    net.put("n1", "cart", ["b"])
    snapshot = {"versions": [v.to_wire() for v in net.stores["n1"].read(BUCKET, "cart")]}
    coord = net.coords["n1"]
    plan = net.plan("cart", 3, SortedUnion())
    # Both gets hear every replica answer with the two siblings before either answers.
    first = [e for e in coord.start_get("first", plan, 0.0) if isinstance(e, Send)]
    second = [e for e in coord.start_get("second", plan, 0.0) if isinstance(e, Send)]
    answers = []
    for sends in (first, second):
        for send in sends:
            answers += coord.on_reply(send.req_id, send.to, "replica_get_ok", snapshot, 0.0)
    replies = [a for a in answers if isinstance(a, Reply)]
    assert len(replies) == 2
    assert len({tuple(r.body["siblings"][0]["dot"]) for r in replies}) == 2


def test_forwarded_puts_at_a_stand_in_never_reissue_a_dot():
    """A put marked forwarded at a node that is not a home stores its own write as a hint;
    the counter it issued must still be recorded, or the next forwarded put reuses it."""
    net = Net(walk=("n1", "n2", "n3", "n4"))
    net.down.add("n1")
    plan = net.plan("k", 2)
    assert "n4" in plan.targets and "n4" not in plan.homes
    coord = net.coords["n4"]
    dots = set()
    for value in ("first", "second"):
        effects = coord.start_put(f"c-{value}", plan, value, None, False, 0.0, forwarded=True)
        [own] = [e for e in effects if isinstance(e, Send)]
        [wire] = own.body["versions"]
        dots.add(tuple(wire["dot"]))
    assert len(dots) == 2
    assert net.stores["n4"].state(BUCKET, "k") == ([], 2)  # the counter, durable, no replica


def test_a_context_naming_an_event_the_coordinator_never_issued_is_refused(net):
    forged = encode_context(Clock.of({"actor-n1": (1 << 48) - 1}))
    err = net.failed(net.start_put("n1", "k", "v", forged))
    assert isinstance(err, errors.InvalidRequest)
    assert "never" in str(err) or "only issued" in str(err)
    # The key is not wedged: an honest put through the same node still works.
    net.put("n1", "k", "honest")
    assert net.get("n2", "k", r=3)[0] == ["honest"]


def test_a_version_arriving_under_a_held_dot_with_other_content_is_detected_and_resolved_alike(
        net):
    one = version("one", ("x", 1), ts=1.0)
    other = version("other", ("x", 1), ts=2.0)
    seed(net, "n1", "k", one)
    seed(net, "n2", "k", other)
    net.stores["n1"].apply(BUCKET, "k", [other])
    net.stores["n2"].apply(BUCKET, "k", [one])
    assert net.stores["n1"].dot_conflicts == 1 and net.stores["n2"].dot_conflicts == 1
    assert net.held_values("n1", "k") == net.held_values("n2", "k")  # the same one kept
    assert len(net.stores["n1"].read(BUCKET, "k")) == 1


def test_read_repair_compares_content_not_only_dots(net):
    one = version("one", ("x", 1), ts=1.0)
    other = version("other", ("x", 1), ts=2.0)
    for n in HOMES:
        seed(net, n, "k", one)
    net.stores["n3"].engine.delete("default/k")
    seed(net, "n3", "k", other)  # n3 alone holds another version under x:1
    net.get("n1", "k", r=3)
    kept = net.held_values("n1", "k")
    assert all(net.held_values(n, "k") == kept for n in HOMES)


# ====================================================================== resolvers and deletes


def _concurrent_update_and_delete(net: Net, update_at: float, delete_at: float) -> None:
    net.now = 0.0
    base = net.put("n1", "session", "logged in")
    net.now = update_at
    net.put("n1", "session", "cart viewed", base)
    net.now = delete_at
    net.delete("n2", "session", base)  # concurrent with the update: siblings
    net.now = max(update_at, delete_at) + 1.0


def test_under_last_write_wins_a_delete_later_than_a_concurrent_update_wins(net):
    from dynamo_resolvers.last_write_wins import LastWriteWins

    _concurrent_update_and_delete(net, update_at=1.0, delete_at=2.0)
    values, _ = net.get("n1", "session", r=3, resolver=LastWriteWins())
    assert values == []
    for n in HOMES:  # the merge, a tombstone, was written back
        assert [v.tombstone for v in net.stores[n].read(BUCKET, "session")] == [True]
    assert net.get("n3", "session", r=3)[0] == []


def test_under_last_write_wins_an_update_later_than_a_concurrent_delete_wins(net):
    from dynamo_resolvers.last_write_wins import LastWriteWins

    _concurrent_update_and_delete(net, update_at=2.0, delete_at=1.0)
    values, _ = net.get("n1", "session", r=3, resolver=LastWriteWins())
    assert values == ["cart viewed"]


def test_a_resolver_that_does_not_opt_in_never_sees_tombstones(net):
    _concurrent_update_and_delete(net, update_at=1.0, delete_at=2.0)
    resolver = SortedUnion()
    values, _ = net.get("n1", "session", r=3, resolver=resolver)
    assert values == ["cart viewed"] and resolver.calls == []  # one live sibling: no merge
