"""The coordinator's quorum rules, proved on real nodes joined by a tiny deterministic network.

Every test builds a :class:`Net`: a few production nodes (:class:`NodeCore`, memory
engine) joined by a synchronous FIFO network the test drives by hand. A client request is a
``get``/``put``/``delete`` frame (its body built by the client's own code) handed straight
to one core's ``receive``; each ``Transmit`` a core returns becomes a frame queued for the
addressed core's ``receive``, and each ``Answer`` goes back to whoever asked: a core's
``receive_reply``, or the client's list of answers. ``Net.run`` delivers the queued frames
one at a time, in the order they were sent, until none is left.

Faults act on the requests between nodes, optionally only on some message types (the
network decodes each frame to learn its type): a silent node's requests vanish, a slow
node's wait in ``Net.held`` until ``release``, a failing node's are answered with an error
frame instead of reaching it. A node serves its own replica within the call that needs it,
with no frame, so its own write can only fail, through its store (``refuse_writes``); the
tests of a coordinator waiting on its own write drive a bare :class:`Coordinator`, like the
other unit tests of its state machine (they build it with :func:`bare_coordinator`).

Nothing here uses threads or clocks: time is ``Net.now``, advanced by the test, and
``Net.tick`` fires the timers that are due. The cores are never started, so no gossip,
heartbeat, hint delivery or anti-entropy runs: every frame in the network comes from a test's
request. Each core is handed the other members' records and the test's plugins (the same
hooks any plugin uses):

* a partition strategy whose ring walk is the same for every key: ``walk``, homes n1-n3 by
  default (n4 is then a member off the ring: it coordinates gets and forwards puts); the
  sloppy-quorum scenarios use five nodes, homes n1-n3 and fallbacks n4, n5;
* the paper's timeout failure detector, which notes every failure its node reports to it
  (``Net.peer_failures``) and can be told to believe a node down (``Net.believe_down``);
* the default bucket's resolver: whichever resolver the test's get brings. A get without
  one asks with ``resolve=False``, as a client does to see the siblings.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import cbor2
import pytest

from dynamo_core import config as config_mod
from dynamo_core import errors
from dynamo_core.client import _Requests
from dynamo_core.coordinator import Coordinator, Fail, KeyPlan, PeerFailed, Reply, Send
from dynamo_core.core import Answer, Connect, CoreEffect, NodeCore, Transmit
from dynamo_core.errors import (
    Busy,
    InvalidRequest,
    Overloaded,
    QuorumNotMet,
    Timeout,
    Unavailable,
)
from dynamo_core.hookspecs import MemberInfo, Sibling, hookimpl
from dynamo_core.store import LocalStore
from dynamo_core.versions import Clock, Version, decode_context, encode_context
from dynamo_core.wire import Codec, Message
from dynamo_plugins.failure_detectors import TimeoutDetector
from dynamo_plugins.memory_storage import open_memory_engine

TIMEOUT = 1.0
BUCKET = "default"
HOMES = ("n1", "n2", "n3")
#: the ring walk of the sloppy-quorum scenarios: homes n1-n3, then fallbacks n4, n5
WALK = ("n1", "n2", "n3", "n4", "n5")
#: wall-clock time at Net.now == 0 (versions, hints and request expiry read the wall clock)
WALL_EPOCH = 1_800_000_000.0
#: the client's own request bodies and codec, so the test's requests are a client's
CLIENT = _Requests("tcp://n1.test:1", TIMEOUT, route=False)
#: decodes the frames between nodes for the tests to read
NODE_CODEC = Codec()


def address(name: str) -> str:
    return f"tcp://{name}.test:1"


# ====================================================================== the test's plugins


class FixedWalk:
    """A partition strategy whose ring walk is ``[partitioning] walk`` for every key.

    The walk's nodes hold the ring's first positions (0, 1, 2, ...), so every key hashes
    past them and wraps round to the first; members not in the walk are off the ring.
    """

    def partition_count(self, options: Mapping[str, Any]) -> None:
        return None

    def initial_tokens(self, name: str, capacity: int, options: Mapping[str, Any],
                       rng: random.Random) -> list[int]:
        return []

    def ring_tokens(self, members: Sequence[MemberInfo],
                    options: Mapping[str, Any]) -> dict[int, str]:
        present = {m.name for m in members}
        return {i: name for i, name in enumerate(options["walk"]) if name in present}


class WatchedDetector(TimeoutDetector):
    """The paper's timeout detector, noting each failure its node reports to it."""

    def __init__(self, node: str, reports: list[tuple[str, str]]) -> None:
        super().__init__()
        self.node = node
        self.reports = reports

    def request_failed(self, peer: str, now: float) -> None:
        self.reports.append((self.node, peer))
        super().request_failed(peer, now)

    def believe_down(self, peer: str, now: float) -> None:
        """Count failures of ``peer`` until it is down, without noting them as reports."""
        while self.state(peer, now) != "down":
            super().request_failed(peer, now)


class ChosenResolver:
    """The default bucket's resolver: the one the test's latest resolving get brought."""

    def __init__(self) -> None:
        self.chosen: Any = None

    @property
    def sees_tombstones(self) -> bool:
        return bool(getattr(self.chosen, "sees_tombstones", False))

    def resolve(self, siblings: Sequence[Sibling]) -> Any:
        assert self.chosen is not None, "a get asked to resolve without bringing a resolver"
        return self.chosen.resolve(siblings)


class NetPlugins:
    """What the test plugs into one node: the ring walk, its detector, the resolver."""

    def __init__(self, node: str, net: Net) -> None:
        self.node = node
        self.net = net

    @hookimpl
    def dynamo_partition_strategies(self) -> Mapping[str, Any]:
        return {"fixed-walk": FixedWalk()}

    @hookimpl
    def dynamo_failure_detectors(self) -> Mapping[str, Any]:
        return {"watched-timeout": lambda options: WatchedDetector(self.node,
                                                                   self.net.peer_failures)}

    @hookimpl
    def dynamo_resolvers(self) -> Mapping[str, Any]:
        return {"chosen-by-test": self.net.resolver}


# ====================================================================== the network


@dataclass(frozen=True, eq=False)
class Frame:
    """A request from one node to another, as the network carries it, decoded for tests."""

    src: str
    to: str
    data: bytes
    msg_type: str
    body: dict[str, Any]
    #: None for one-way messages (repairs, write-backs): nobody waits for an answer
    req_id: int | None

    @classmethod
    def of(cls, src: str, to: str, data: bytes) -> Frame:
        msg = NODE_CODEC.decode(data)
        return cls(src, to, data, msg.type, msg.body, msg.id)


class Net:
    """Real nodes, a FIFO network between them, the test's clients and faults."""

    def __init__(self, names: Sequence[str] = ("n1", "n2", "n3", "n4"), *,
                 walk: Sequence[str] = HOMES, strict: bool = False,
                 joining: Sequence[str] = (), max_pending: int = 100,
                 max_siblings: int = 16) -> None:
        """Nodes ``names``, every key's ring walk ``walk`` (N=3). A ``strict`` default
        bucket counts only home nodes. The ``joining`` nodes start empty, joining through
        the others: their ranges are still filling, so they flag a "not found" as weak."""
        self.now = 0.0
        #: (node, peer) for every failure a node reported to its failure detector
        self.peer_failures: list[tuple[str, str]] = []
        self.resolver = ChosenResolver()
        #: node -> message types it never answers (None: every type)
        self.silent: dict[str, set[str] | None] = {}
        #: node -> message types whose delivery is held until release()
        self.slow: dict[str, set[str] | None] = {}
        #: node -> message types it answers with an error (None: every type)
        self.failing: dict[str, set[str] | None] = {}
        #: node -> the error body a failing node answers with
        self.errors: dict[str, dict[str, Any]] = {}
        #: requests to slow nodes, in the order sent
        self.held: list[Frame] = []
        #: every request between nodes delivered or dropped, in order
        self.sent: list[Frame] = []
        #: client -> every answer it got
        self.answers: dict[str, list[Message]] = {}
        self._queue: deque[Callable[[], None]] = deque()
        self._clients = 0
        config = config_mod.from_mapping({
            "storage": {"engine": "memory"},
            "cluster": {"n": 3, "r": 2, "w": 2, "request_timeout": TIMEOUT},
            "limits": {"max_pending_requests": max_pending, "max_siblings": max_siblings},
            "failure_detector": {"plugin": "watched-timeout"},
            "partitioning": {"strategy": "fixed-walk", "walk": list(walk)},
            "buckets": {BUCKET: {"resolver": "chosen-by-test", "strict": strict}},
        })
        self.cores: dict[str, NodeCore] = {}
        for i, name in enumerate(names):
            seeds = tuple(address(n) for n in names if n != name) if name in joining else ()
            self.cores[name] = NodeCore(name, address(name), config=config,
                                        rng=random.Random(i), wall_clock=self.wall,
                                        seeds=seeds, plugins=(NetPlugins(name, self),))
        self._names = {core.address: name for name, core in self.cores.items()}
        records = [core.membership.me for core in self.cores.values()]
        for core in self.cores.values():
            core.membership.merge(records)

    def wall(self) -> float:
        return WALL_EPOCH + self.now

    def coordinator(self, node: str) -> Coordinator:
        return self.cores[node].coordinator

    def actor(self, node: str) -> str:
        """The actor ``node`` issues its dots under."""
        return self.cores[node].actor

    # ----------------------------------------------------------------- faults

    def make_silent(self, node: str, *types: str) -> None:
        self.silent[node] = set(types) or None

    def make_slow(self, node: str, *types: str) -> None:
        self.slow[node] = set(types) or None

    def make_failing(self, node: str, *types: str, code: str = "unavailable",
                     message: str | None = None) -> None:
        self.failing[node] = set(types) or None
        self.errors[node] = {"code": code, "message": message or f"{node} disk on fire"}

    def refuse_writes(self, node: str, error: errors.DynamoError) -> None:
        """Make ``node``'s replica store refuse every write with ``error``.

        The one fault injected inside a core: a node serves its own replica with no
        frame, and no storage engine can make the store fail with a chosen error (the
        store reports any engine failure as StorageFailed), so the store's ``apply`` is
        replaced on this one core (``apply`` for replicas, ``write_new`` for the
        coordinator's own write). ``heal`` mends it.
        """
        def refuse(*args: Any) -> Any:
            raise error
        store = self.cores[node].store
        store.apply = refuse  # type: ignore[method-assign]
        store.write_new = refuse  # type: ignore[method-assign]

    def heal(self, node: str) -> None:
        for faults in (self.silent, self.slow, self.failing, self.errors):
            faults.pop(node, None)
        vars(self.cores[node].store).pop("apply", None)
        vars(self.cores[node].store).pop("write_new", None)

    def believe_down(self, *nodes: str) -> None:
        """Every other node's failure detector comes to believe ``nodes`` down."""
        for core in self.cores.values():
            for node in nodes:
                if node != core.name:
                    core.liveness.detector.believe_down(node, self.now)

    @staticmethod
    def _hit(faults: Mapping[str, set[str] | None], node: str, msg_type: str) -> bool:
        if node not in faults:
            return False
        types = faults[node]
        return types is None or msg_type in types

    # ----------------------------------------------------------------- delivery

    def run(self) -> None:
        """Deliver queued frames, in the order they were sent, until none is left."""
        while self._queue:
            self._queue.popleft()()

    def release(self, node: str | None = None) -> None:
        """Deliver held requests (to ``node`` only, or all of them), in the order sent."""
        go = [f for f in self.held if node is None or f.to == node]
        self.held = [f for f in self.held if f not in go]
        if node is None:
            self.slow.clear()
        else:
            self.slow.pop(node, None)
        self._queue.extend(partial(self._arrive, f) for f in go)
        self.run()

    def tick(self, now: float) -> None:
        """Time is ``now``: every node whose next timer is due handles its timers."""
        self.now = now
        for name, core in self.cores.items():
            due = core.next_timer()
            if due is not None and due <= now:
                self._carry_out(name, core.handle_timer(now))
        self.run()

    def _carry_out(self, node: str, effects: list[CoreEffect]) -> None:
        """Queue what ``node`` sent: its requests to peers and its answers."""
        for effect in effects:
            if isinstance(effect, Transmit):
                frame = Frame.of(node, self._names[effect.address], effect.frame)
                self._queue.append(partial(self._arrive, frame))
            elif isinstance(effect, Answer):
                self._queue.append(partial(self._answered, node, effect.identity,
                                           effect.frame))
            elif not isinstance(effect, Connect):
                raise AssertionError(f"{node} asked for {effect!r}")

    def _arrive(self, frame: Frame) -> None:
        """A request reaches its node, unless a fault of that node stops it."""
        node, msg_type = frame.to, frame.msg_type
        if self._hit(self.slow, node, msg_type):
            self.held.append(frame)
            return
        self.sent.append(frame)
        if self._hit(self.silent, node, msg_type):
            return
        if self._hit(self.failing, node, msg_type):
            if frame.req_id is not None:
                error = self.cores[node].codec.encode("error", self.errors[node],
                                                      frame.req_id, node)
                self._queue.append(partial(self._answered, node, frame.src.encode(), error))
            return
        self._carry_out(node, self.cores[node].receive(frame.src.encode(), [frame.data],
                                                       self.now))

    def _answered(self, node: str, identity: bytes, data: bytes) -> None:
        """``node``'s answer reaches whoever asked: a peer node, or a client."""
        asker = identity.decode()
        if asker in self.cores:
            self._carry_out(asker, self.cores[asker].receive_reply(
                self.cores[node].address, [data], self.now))
        else:
            self.answers.setdefault(asker, []).append(CLIENT.codec.decode(data))

    # ----------------------------------------------------------------- clients

    def request(self, via: str, msg_type: str, body: dict[str, Any]) -> str:
        """A new client sends a request to node ``via``; returns the client's name."""
        self._clients += 1
        client = f"client-{self._clients}"
        frame = CLIENT.codec.encode(msg_type, body, CLIENT.next_id())
        self._carry_out(via, self.cores[via].receive(client.encode(), [frame], self.now))
        self.run()
        return client

    def start_put(self, via: str, key: str, value: Any, context: Any = None, *,
                  w: int = 2, tombstone: bool = False) -> str:
        body = CLIENT.put_body(BUCKET, key, value, context, w, tombstone)
        return self.request(via, "delete" if tombstone else "put", body)

    def start_get(self, via: str, key: str, *, r: int = 2, resolver: Any = None) -> str:
        if resolver is not None:
            self.resolver.chosen = resolver
        return self.request(via, "get", CLIENT.get_body(BUCKET, key, r, resolver is not None))

    def answer(self, client: str) -> Message | None:
        """The one answer ``client`` got so far (None if none); two answers is a bug."""
        got = self.answers.get(client, [])
        assert len(got) <= 1, f"{client} was answered {len(got)} times: {got}"
        return got[0] if got else None

    def ok(self, client: str, msg_type: str) -> dict[str, Any]:
        got = self.answer(client)
        assert got is not None and got.type == msg_type, f"expected {msg_type}, got {got!r}"
        return got.body

    def failed(self, client: str) -> errors.DynamoError:
        got = self.answer(client)
        assert got is not None and got.type == "error", f"expected a failure, got {got!r}"
        return errors.from_wire(got.body)

    def put(self, via: str, key: str, value: Any, context: Any = None, *,
            w: int = 2) -> bytes:
        return self.ok(self.start_put(via, key, value, context, w=w), "put_ok")["context"]

    def delete(self, via: str, key: str, context: Any, *, w: int = 2) -> bytes:
        client = self.start_put(via, key, None, context, w=w, tombstone=True)
        return self.ok(client, "put_ok")["context"]

    def get(self, via: str, key: str, *, r: int = 2,
            resolver: Any = None) -> tuple[list[Any], bytes]:
        client = self.start_get(via, key, r=r, resolver=resolver)
        body = self.ok(client, "get_ok")
        return [s["value"] for s in body["siblings"]], body["context"]

    # ----------------------------------------------------------------- inspection

    def stored(self, node: str, key: str) -> list[Version]:
        """The versions ``node`` holds of ``key`` as a replica of its own."""
        return self.cores[node].store.read(BUCKET, key)

    def held_values(self, node: str, key: str) -> list[str]:
        return sorted(repr(v.value) for v in self.stored(node, key))

    def hinted_values(self, node: str, key: str) -> dict[str, list[str]]:
        """Home node -> the values ``node`` holds of ``key`` as hints for it."""
        return {home: sorted(repr(v.value) for v in versions)
                for home, versions in self.cores[node].hints.for_key(BUCKET, key).items()}

    def sends(self, msg_type: str | None = None, *, one_way: bool | None = None,
              src: str | None = None) -> list[Frame]:
        """Requests between nodes delivered or dropped so far, in order, filtered."""
        return [f for f in self.sent
                if (msg_type is None or f.msg_type == msg_type)
                and (one_way is None or (f.req_id is None) == one_way)
                and (src is None or f.src == src)]

    def assert_settled(self) -> None:
        """No coordinator still remembers an operation or a request id."""
        for name, core in self.cores.items():
            coord = core.coordinator
            assert coord.pending() == 0, f"{name} still has {coord.pending()} operations"
            assert coord._sent == {}, f"{name} still remembers request ids {coord._sent}"
            assert coord._ops == {}


def bare_coordinator(name: str = "n1") -> Coordinator:
    """A Coordinator alone over a memory store, for tests of its state machine by itself."""
    store = LocalStore(open_memory_engine(None, {}), 16, f"actor-{name}")
    return Coordinator(name, store, request_timeout=TIMEOUT, max_clock_entries=10,
                       max_pending=100)


def plain_plan(key: str, quorum: int) -> KeyPlan:
    """The key's homes n1-n3, every one believed up, and no fallback."""
    return KeyPlan(BUCKET, key, HOMES, quorum)


def stand_in_plan(key: str, quorum: int) -> KeyPlan:
    """The key's homes n2-n4, n2 believed down and n1 standing in for it."""
    return KeyPlan(BUCKET, key, ("n2", "n3", "n4"), quorum, targets=("n1", "n3", "n4"),
                   stand_in={"n1": "n2"})


def stand_in_put(coord: Coordinator, key: str, quorum: int, value: Any = "v") -> Send:
    """A put forwarded to ``coord`` while it stands in for a home: it stores its own copy
    as a hint, through the same replica_put a stand-in is sent, before the others."""
    [local] = coord.start_put("c", stand_in_plan(key, quorum), value, None, False, 0.0,
                              forwarded=True)
    assert isinstance(local, Send)
    assert (local.to, local.msg_type, local.body["hint"]) == ("n1", "replica_put", "n2")
    return local


def coded(code: str, message: str) -> errors.DynamoError:
    """An error that travels with ``code``, even a code no error class knows."""
    error = errors.DynamoError(message)
    error.code = code
    return error


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
    """``node`` holds ``versions`` of ``key`` as a replica of its own."""
    net.cores[node].store.apply(BUCKET, key, list(versions))


def seed_hint(net: Net, node: str, home: str, key: str, *versions: Version) -> None:
    """``node`` holds ``versions`` of ``key`` as a hint for ``home``."""
    net.cores[node].hints.add(home, BUCKET, key, list(versions), net.wall())


@pytest.fixture
def net() -> Net:
    return Net()


# ====================================================================== put


def test_put_with_w2_succeeds_only_after_two_acks_counting_the_coordinators_own_write(net):
    net.make_slow("n2")
    net.make_slow("n3")
    client = net.start_put("n1", "k", "v1", w=2)

    # The paper's order: the coordinator stores the version itself before replicating it.
    assert net.held_values("n1", "k") == ["'v1'"], "the coordinator writes to itself first"
    held_puts = [f for f in net.held if f.msg_type == "replica_put"]
    assert sorted(f.to for f in held_puts) == ["n2", "n3"]
    assert all(f.req_id is not None for f in held_puts)
    assert net.answer(client) is None  # the coordinator's own write: one ack, not a quorum
    net.release("n2")  # the second ack meets W=2
    body = net.ok(client, "put_ok")

    stored = net.stored("n1", "k")
    assert [v.value for v in stored] == ["v1"]
    new_dot = stored[0].dot
    assert new_dot[0] == net.actor("n1")
    context = decode_context(body["context"])
    assert context.covers(new_dot)
    assert context == stored[0].history()

    net.release("n3")  # a late ack for a finished put is dropped, not an error
    assert net.coordinator("n1").stale_replies == 1
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
    assert net.cores["n1"].next_timer() == pytest.approx(TIMEOUT)
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


def test_put_treats_a_reply_of_the_wrong_type_as_a_failed_replica():
    coord = bare_coordinator("n1")
    # The coordinator's own replica is written in place, then the others are sent to.
    effects = coord.start_put("c", plain_plan("k", 3), "v", None, False, 0.0)
    assert [v.value for v in coord.dots.read(BUCKET, "k")] == ["v"]
    sends = {s.to: s for s in effects if isinstance(s, Send)}
    assert sorted(sends) == ["n2", "n3"] and len(effects) == 2
    assert coord.on_reply(sends["n2"].req_id, "n2", "replica_put_ok", {}, 0.0) == []
    out = coord.on_reply(sends["n3"].req_id, "n3", "replica_get_ok", {"versions": []}, 0.0)
    [fail] = out
    assert isinstance(fail, Fail) and isinstance(fail.error, QuorumNotMet)
    assert "n3: bad reply: expected replica_put_ok, got replica_get_ok" in str(fail.error)
    assert coord.stale_replies == 0


def test_a_put_stores_the_version_itself_in_one_step_before_any_replica_is_sent_it():
    coord = bare_coordinator("n1")
    out = coord.start_put("c", plain_plan("k", 2), "v", None, False, 0.0)
    [stored] = coord.dots.read(BUCKET, "k")
    assert [(s.to, s.msg_type) for s in out] == [("n2", "replica_put"), ("n3", "replica_put")]
    assert all(s.body["versions"] == [stored.to_wire()] for s in out), \
        "every replica gets the version n1 stored, under the dot n1 recorded"
    assert coord.dots.state(BUCKET, "k")[1] == stored.dot[1]
    assert all(s.req_id is not None for s in out)
    assert coord.pending() == 1 and len(coord._sent) == 2


def test_a_stand_in_sends_nothing_to_the_other_replicas_until_its_own_hint_is_acked():
    coord = bare_coordinator("n1")
    local = stand_in_put(coord, "k", 2)
    assert coord.pending() == 1 and list(coord._sent) == [local.req_id]

    out = coord.on_reply(local.req_id, "n1", "replica_put_ok", {}, 0.0)
    assert [(s.to, s.msg_type) for s in out] == [("n3", "replica_put"), ("n4", "replica_put")]
    assert all(s.body["versions"] == local.body["versions"] for s in out)
    assert all("hint" not in s.body for s in out)
    assert len({local.req_id, *(s.req_id for s in out)}) == 3


# A node serves its own replica within the call that needs it, so its own write is never
# silent or slow there: the coordinator's handling of such a wait is tested on its own.


def test_a_put_whose_own_replica_is_silent_sends_no_other_replica_anything_and_times_out():
    coord = bare_coordinator("n1")
    stand_in_put(coord, "k", 2, "v1")
    assert coord.on_tick(TIMEOUT - 0.001) == []
    effects = coord.on_tick(TIMEOUT)
    [fail] = [e for e in effects if isinstance(e, Fail)]
    err = fail.error
    assert type(err) is QuorumNotMet
    assert (err.op, err.answered, err.required) == ("put", 0, 2)
    assert "no answer from n1" in str(err)
    assert [e for e in effects if isinstance(e, Send)] == [], "nothing sent after the deadline"
    assert coord.pending() == 0 and coord._sent == {}


@pytest.mark.parametrize("code,cls", [("unavailable", Unavailable),
                                      ("overloaded", Overloaded),
                                      ("invalid_request", InvalidRequest),
                                      ("no-such-code", errors.DynamoError)])
def test_a_put_whose_local_write_fails_fails_at_once_with_the_local_error(net, code, cls):
    net.refuse_writes("n1", coded(code, "n1 local write failed"))
    client = net.start_put("n1", "k", "v1", w=1)  # even W=1, which n2 alone could meet
    err = net.failed(client)  # at once: no waiting for the deadline
    assert type(err) is cls
    assert str(err) == "n1 local write failed"
    assert net.sends() == [], "no other replica is sent the version"
    for n in HOMES:
        assert net.stored(n, "k") == []
    net.assert_settled()


def test_a_local_write_error_without_a_code_fails_the_put_naming_the_coordinator():
    coord = bare_coordinator("n1")
    local = stand_in_put(coord, "k", 2)
    [fail] = coord.on_reply(local.req_id, "n1", "error", {"message": "disk gone"}, 0.0)
    assert isinstance(fail, Fail) and fail.client == "c"
    assert type(fail.error) is errors.DynamoError
    assert str(fail.error) == "n1 could not store the version: disk gone"
    assert coord.pending() == 0 and coord._sent == {}


def test_a_wrong_type_reply_to_the_local_write_fails_the_put_without_replicating():
    coord = bare_coordinator("n1")
    local = stand_in_put(coord, "k", 2)
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
    assert net.sends() == [], "no other replica is sent the version"
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
    stored = net.stored("n1", "k")
    assert [v.value for v in stored] == [["book"]]
    assert stored[0].dot[0] == net.actor("n1"), "the home node coordinates and issues the dot"
    assert decode_context(body["context"]).covers(stored[0].dot)
    assert net.stored("n4", "k") == []
    net.assert_settled()


def test_a_forwarded_delete_travels_as_a_delete_and_leaves_a_tombstone_at_the_homes(net):
    ctx = net.put("n1", "k", "v1")
    client = net.start_put("n4", "k", None, ctx, w=2, tombstone=True)
    [fwd] = net.sends("delete", src="n4")
    assert fwd.to == "n1" and fwd.body["forwarded"] is True and "value" not in fwd.body
    net.ok(client, "put_ok")
    for n in HOMES:
        [held] = net.stored(n, "k")
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
        net.coordinator("n1").max_pending = 0
    client = net.start_put("n4", "k", "v1", w=2)

    err = net.failed(client)
    if fault == "quorum":
        assert type(err) is QuorumNotMet
        assert (err.answered, err.required, err.asked) == (1, 2, 3)
        assert "1 of 3 replicas answered, 2 required" in str(err)
        assert "n2: n2 disk on fire" in str(err)
    else:
        assert type(err) is Busy
        assert "n1 already coordinates 0 requests" in str(err)
    assert [s.to for s in net.sends("put")] == ["n1"], "no other home is tried"
    assert [p for src, p in net.peer_failures if src == "n4"] == [], \
        "a home that answered is not reported failed"
    net.assert_settled()


def test_a_forwarded_put_whose_home_fails_its_local_write_relays_that_error_unreplicated(net):
    net.refuse_writes("n1", Overloaded("n1 too many siblings"))
    err = net.failed(net.start_put("n4", "k", "v1", w=2))
    assert type(err) is Overloaded
    assert str(err) == "n1 too many siblings"
    assert [(s.to, s.msg_type) for s in net.sends()] == [("n1", "put")], \
        "the home replicates nothing it could not store itself"
    for n in ("n1", "n2", "n3", "n4"):
        assert net.stored(n, "k") == []
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
    stored = net.stored("n2", "k")
    assert [v.value for v in stored] == [["book"]]
    assert stored[0].dot[0] == net.actor("n2"), "the second home coordinates and issues the dot"
    assert decode_context(body["context"]).covers(stored[0].dot)
    assert net.held_values("n3", "k") == ["['book']"]
    assert net.stored("n1", "k") == [] and net.stored("n4", "k") == []
    net.assert_settled()


def test_a_forwarded_put_whose_first_home_is_unreachable_is_sent_to_the_next_home():
    coord = bare_coordinator("n4")
    [fwd] = coord.start_put("c", plain_plan("k", 2), "v", None, False, 0.0)
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


def test_a_forwarded_put_whose_every_home_is_unreachable_fails_as_unavailable():
    coord = bare_coordinator("n4")
    [fwd] = coord.start_put("c", plain_plan("k", 2), "v", None, False, 0.0)
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


def test_a_replica_the_coordinator_cannot_reach_counts_as_an_unavailable_failure():
    coord = bare_coordinator("n1")
    sends = {s.to: s for s in coord.start_put("c", plain_plan("k", 3), "v", None, False, 0.0)}
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


def test_an_unreachable_forward_target_is_named_in_the_unavailable_error():
    coord = bare_coordinator("n4")
    [fwd] = coord.start_put("c", plain_plan("k", 2), "v", None, False, 0.0)
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


def test_a_forwarded_put_whose_homes_answer_garbage_fails_as_unavailable():
    coord = bare_coordinator("n4")
    [fwd] = coord.start_put("c", plain_plan("k", 2), "v", None, False, 0.0)
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
    coord = bare_coordinator("n4")
    [fail] = coord.start_put("c", KeyPlan(BUCKET, "k", (), 2), "v", None, False, 0.0)
    assert isinstance(fail, Fail) and type(fail.error) is QuorumNotMet
    assert "no home node is known" in str(fail.error)
    assert coord.pending() == 0


def test_a_put_arriving_forwarded_at_a_non_home_node_is_coordinated_there_not_forwarded():
    coord = bare_coordinator("n4")
    effects = coord.start_put("c", plain_plan("k", 2), "v", None, False, 0.0,
                              forwarded=True)
    # It writes to itself first, like any coordinator, then to every home node.
    assert [v.value for v in coord.dots.read(BUCKET, "k")] == ["v"]
    assert [(s.to, s.msg_type) for s in effects] == [
        ("n1", "replica_put"), ("n2", "replica_put"), ("n3", "replica_put")]


# ====================================================================== get


def test_get_with_r2_answers_after_two_replies_with_the_union_of_causally_maximal_versions(net):
    old = version("old", ("x", 1))
    newer = version("newer", ("x", 2), {"x": 1})
    other = version("other", ("y", 1))
    seed(net, "n1", "k", old)
    seed(net, "n2", "k", newer, other)
    seed(net, "n3", "k", version("unseen", ("z", 1)))
    net.make_slow("n2")
    net.make_slow("n3")
    client = net.start_get("n1", "k", r=2)
    assert sorted(f.to for f in net.held) == ["n2", "n3"]
    assert all(f.msg_type == "replica_get" for f in net.held)

    assert net.answer(client) is None, "n1's own answer is one of the two"
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


def test_two_puts_with_the_same_context_become_siblings_and_a_put_with_their_context_leaves_one(
        net):
    net.put("n1", "cart", ["book"])
    net.put("n1", "cart", ["pen"])  # same (empty) context, same coordinator
    values, ctx = net.get("n2", "cart", r=2)
    assert sorted(values, key=repr) == [["book"], ["pen"]]
    for n in HOMES:
        assert len(net.stored(n, "cart")) == 2

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
        [held] = net.stored(n, "k")
        assert held.tombstone and held.value is None
        assert decode_context(del_ctx).covers(held.dot)

    values, read_ctx = net.get("n3", "k", r=2)
    assert values == []
    tombstone_dot = net.stored("n1", "k")[0].dot
    assert decode_context(read_ctx).covers(tombstone_dot)

    net.put("n3", "k", "v2", read_ctx)
    assert net.get("n1", "k", r=3)[0] == ["v2"]
    for n in HOMES:
        [held] = net.stored(n, "k")
        assert not held.tombstone and held.value == "v2"


def test_a_delete_concurrent_with_a_put_leaves_the_put_as_the_only_live_sibling(net):
    ctx = net.put("n1", "k", "v1")
    net.delete("n1", "k", ctx)
    net.put("n2", "k", "v2", ctx)  # concurrent with the delete
    values, read_ctx = net.get("n3", "k", r=3)
    assert values == ["v2"]
    assert len(net.stored("n1", "k")) == 2, "the tombstone is a sibling"
    net.put("n3", "k", "v3", read_ctx)
    assert [len(net.stored(n, "k")) for n in HOMES] == [1, 1, 1]


# ====================================================================== resolver


def test_get_with_a_resolver_returns_one_merged_value_and_writes_it_back_to_every_home(net):
    net.put("n1", "cart", ["book"])
    net.put("n2", "cart", ["pen", "book"])
    sibling_dots = [v.dot for v in net.stored("n3", "cart")]
    assert len(sibling_dots) == 2

    resolver = SortedUnion()
    net.sent.clear()
    body = net.ok(net.start_get("n1", "cart", r=2, resolver=resolver), "get_ok")
    assert len(resolver.calls) == 1 and len(resolver.calls[0]) == 2
    [sibling] = body["siblings"]
    assert sibling["value"] == ["book", "pen"]

    # n1 writes the merge to its own replica at once, and sends it to the other homes.
    write_backs = net.sends("replica_put", one_way=True, src="n1")
    assert sorted(s.to for s in write_backs) == ["n2", "n3"]
    [merged_wire] = write_backs[0].body["versions"]
    merged = Version.from_wire(merged_wire)
    assert merged.value == ["book", "pen"] and merged.dot[0] == net.actor("n1")
    assert tuple(sibling["dot"]) == merged.dot

    ctx = decode_context(body["context"])
    assert all(ctx.covers(d) for d in sibling_dots), "the context supersedes every sibling"
    assert ctx.covers(merged.dot)
    for n in HOMES:
        assert [v.value for v in net.stored(n, "cart")] == [["book", "pen"]]
    assert net.coordinator("n1").read_repairs == 0, "the write-back leaves nothing to repair"

    net.put("n2", "cart", ["book", "pen", "mug"], body["context"])
    assert net.get("n3", "cart", r=3)[0] == [["book", "pen", "mug"]]
    net.assert_settled()


def test_a_resolving_get_on_a_non_home_node_merges_without_writing_back(net):
    net.put("n1", "cart", ["book"])
    net.put("n1", "cart", ["pen"])
    dots = [v.dot for v in net.stored("n1", "cart")]
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
    assert net.coordinator("n1").pending() == 1, "the get lingers to hear the last replica"

    net.release("n3")
    [repair] = net.sends("replica_put")
    assert repair.to == "n3" and repair.req_id is None
    assert [Version.from_wire(v).dot for v in repair.body["versions"]] == [("x", 2)]
    assert net.stored("n3", "k") == [v2]
    assert net.coordinator("n1").read_repairs == 1
    net.assert_settled()


def test_read_repair_fills_in_a_replica_that_had_no_version_at_all(net):
    v1 = version("v1", ("x", 1))
    seed(net, "n1", "k", v1)
    seed(net, "n2", "k", v1)
    net.get("n2", "k", r=3)
    [repair] = net.sends("replica_put")
    assert repair.to == "n3" and repair.req_id is None
    assert net.stored("n3", "k") == [v1]
    assert net.coordinator("n2").read_repairs == 1


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
    assert net.stored("n2", "k") == [v2]
    assert net.coordinator("n1").read_repairs == 1
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
    assert net.coordinator("n1").read_repairs == 1


def test_read_repair_propagates_a_newer_version_that_arrives_after_the_get_was_answered(net):
    v1 = version("v1", ("x", 1))
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(net, "n1", "k", v1)
    seed(net, "n2", "k", v1)
    seed(net, "n3", "k", v2)
    net.make_slow("n3")
    assert net.get("n1", "k", r=2)[0] == ["v1"]  # the quorum only saw v1
    net.release("n3")

    # n1 repairs its own replica at once, and sends n2 the newer version.
    repairs = net.sends("replica_put")
    assert [s.to for s in repairs] == ["n2"], \
        f"expected n2 to be repaired with v2, got {[(s.to, s.body) for s in repairs]}"
    for n in HOMES:
        assert net.stored(n, "k") == [v2]
    assert net.coordinator("n1").read_repairs == 2


# ====================================================================== stale replies


def test_a_reply_with_an_unknown_request_id_is_dropped_and_counted():
    coord = bare_coordinator("n1")
    assert coord.on_reply(987654, "n2", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(None, "n2", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(987655, "n2", "error", {"message": "x"}, 0.0) == []
    assert coord.stale_replies == 3
    assert coord.pending() == 0


def test_replies_after_an_operation_ended_are_dropped_and_counted():
    coord = bare_coordinator("n1")
    ids = {s.to: s.req_id for s in coord.start_put("c", plain_plan("k", 2), "v", None,
                                                   False, 0.0)}
    assert sorted(ids) == ["n2", "n3"]
    [ok] = coord.on_reply(ids["n2"], "n2", "replica_put_ok", {}, 0.0)
    assert isinstance(ok, Reply)
    # The last replica, a duplicate, and an error for the finished put.
    assert coord.on_reply(ids["n3"], "n3", "replica_put_ok", {}, 0.1) == []
    assert coord.on_reply(ids["n2"], "n2", "replica_put_ok", {}, 0.1) == []
    assert coord.on_reply(ids["n3"], "n3", "error", {"message": "late"}, 0.1) == []
    assert coord.stale_replies == 3
    assert coord.pending() == 0 and coord._sent == {}


def test_replies_after_a_timed_out_operation_are_dropped_and_counted():
    coord = bare_coordinator("n1")
    effects = coord.start_get("c", plain_plan("k", 2), 0.0)
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


def test_a_reply_from_a_peer_other_than_the_one_asked_is_dropped_and_counted():
    coord = bare_coordinator("n1")
    ids = {s.to: s.req_id for s in coord.start_put("c", plain_plan("k", 3), "v", None,
                                                   False, 0.0)}
    assert sorted(ids) == ["n2", "n3"]
    # Another node answering n2's request neither counts nor fails it.
    assert coord.on_reply(ids["n2"], "n4", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(ids["n2"], "n3", "error", {"message": "not mine"}, 0.0) == []
    assert coord.on_reply(ids["n3"], "n1", "replica_put_ok", {}, 0.0) == []
    assert coord.stale_replies == 3
    assert coord.pending() == 1, "the operation is untouched"


def test_a_reply_from_the_wrong_peer_does_not_cost_the_right_peer_its_answer():
    coord = bare_coordinator("n1")
    effects = coord.start_put("c", plain_plan("k", 3), "v", None, False, 0.0)
    ids = {s.to: s.req_id for s in effects}
    assert sorted(ids) == ["n2", "n3"]
    assert coord.on_reply(ids["n2"], "n4", "replica_put_ok", {}, 0.0) == []
    assert coord.on_reply(ids["n3"], "n3", "replica_put_ok", {}, 0.0) == []
    out = coord.on_reply(ids["n2"], "n2", "replica_put_ok", {}, 0.0)
    assert [type(e) for e in out] == [Reply], f"the genuine ack was lost: {out} " \
        f"then at the deadline {coord.on_tick(TIMEOUT + 1)}"
    assert coord.stale_replies == 1
    assert coord.pending() == 0 and coord._sent == {}


def test_garbage_in_a_replica_get_reply_is_a_failed_replica_not_an_exception():
    coord = bare_coordinator("n1")
    effects = coord.start_get("c", plain_plan("k", 2), 0.0)
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


def test_a_request_beyond_max_pending_is_refused_as_busy_and_finished_ops_free_slots():
    net = Net(max_pending=2)
    for n in HOMES:
        net.make_slow(n)
    first = net.start_put("n1", "a", 1)
    second = net.start_get("n1", "b")
    third = net.start_put("n1", "c", 3)
    err = net.failed(third)
    assert type(err) is Busy and isinstance(err, Overloaded)  # retryable: nothing was done
    assert "n1 already coordinates 2 requests" in str(err)
    assert type(net.failed(net.start_get("n1", "d"))) is Busy
    assert net.coordinator("n1").pending() == 2

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
    assert type(net.failed(net.start_put("n4", "k", 2))) is Busy
    net.release("n1")
    net.ok(first, "put_ok")
    net.assert_settled()


def test_an_answered_get_holds_its_slot_only_until_its_last_reply_or_deadline():
    net = Net(max_pending=1)
    net.make_silent("n3")
    client = net.start_get("n1", "k", r=2)
    net.ok(client, "get_ok")  # two "not found"s from homes: absent, at once
    assert net.coordinator("n1").pending() == 1  # lingering for read repair
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
        _, ctx = net.get(via, key, r=2, resolver=resolver if i % 3 else None) \
            if i % 5 != 1 else ([], None)
        client = net.start_put(via, key, [i], ctx, w=2)
        net.release()
        net.tick(net.now + 2 * TIMEOUT)  # let lingering gets and silent puts settle
        assert net.answer(client) is not None
        for n in list(net.silent) + list(net.failing):
            net.heal(n)
    net.tick(net.now + 10 * TIMEOUT)
    net.assert_settled()
    for core in net.cores.values():
        assert core.coordinator.next_deadline() is None
        assert core.next_timer() is None


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
    coord = bare_coordinator(via)
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
    [zero_dot] = {v.dot for n in HOMES for v in net.stored(n, "k")}

    net.refuse_writes("n1", Unavailable("n1 local write failed"))
    net.sent.clear()
    client = net.start_put("n1", "k", "first", w=2)  # n2 and n3 could have met W=2
    err = net.failed(client)
    assert type(err) is Unavailable and str(err) == "n1 local write failed"
    assert net.sends("replica_put") == [], "no other replica is sent the version"
    for n in HOMES:
        assert net.held_values(n, "k") == ["'zero'"], f"{n} holds the refused version"
    net.assert_settled()

    net.heal("n1")
    net.sent.clear()
    net.put("n1", "k", "second", w=2)  # concurrent with "zero": both must survive
    [second_wire] = net.sends("replica_put")[0].body["versions"]
    second_dot = Version.from_wire(second_wire).dot
    assert second_dot[0] == net.actor("n1") and second_dot != zero_dot, "a fresh dot"
    held = {n: net.held_values(n, "k") for n in HOMES}
    values, _ = net.get("n2", "k", r=3)
    assert sorted(values) == ["second", "zero"], \
        f"an acknowledged write was lost: get says {values}, replicas hold {held}"
    for n in HOMES:
        assert {v.dot: v.value for v in net.stored(n, "k")} == \
            {zero_dot: "zero", second_dot: "second"}
    net.assert_settled()


# ====================================================================== sloppy quorum


@pytest.fixture
def sloppy() -> Net:
    """Five nodes; every key's walk is WALK: homes n1-n3, fallbacks n4 then n5."""
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
    sloppy.believe_down("n3")
    sloppy.make_slow("n2")  # so that W=2 can only be met by n1 and the stand-in n4
    client = sloppy.start_put("n1", "k", "v1", w=2)

    body = sloppy.ok(client, "put_ok")
    puts = {s.to: s for s in sloppy.sends("replica_put")}
    assert sorted(puts) == ["n4"], "nothing goes to n3 (down) or n5 (spare)"
    assert puts["n4"].body["hint"] == "n3", "the stand-in is told whose write it holds"
    assert [f.to for f in sloppy.held] == ["n2"]
    assert "hint" not in sloppy.held[0].body, "a home's copy carries no hint"
    assert {k: v for k, v in puts["n4"].body.items() if k != "hint"} == sloppy.held[0].body
    assert sloppy.coordinator("n1").hinted_writes == 1
    # The stand-in keeps the version as a hint for n3, not as a replica of its own.
    assert sloppy.hinted_values("n4", "k") == {"n3": ["'v1'"]}
    assert sloppy.stored("n4", "k") == []
    [stored] = sloppy.stored("n1", "k")
    assert decode_context(body["context"]).covers(stored.dot)

    sloppy.release("n2")
    assert sloppy.held_values("n2", "k") == ["'v1'"]
    assert sloppy.coordinator("n1").stale_replies == 1
    assert sloppy.peer_failures == []
    sloppy.assert_settled()


def test_a_put_needing_w3_with_a_home_down_counts_the_stand_in_as_a_third_replica(sloppy):
    sloppy.believe_down("n2")
    sloppy.make_silent("n2")  # really down: anything sent there would vanish
    sloppy.put("n1", "k", "v1", w=3)
    assert sorted(s.to for s in sloppy.sends("replica_put")) == ["n3", "n4"]
    for n in ("n1", "n3"):
        assert sloppy.held_values(n, "k") == ["'v1'"]
    assert sloppy.hinted_values("n4", "k") == {"n2": ["'v1'"]}
    sloppy.assert_settled()


@pytest.mark.parametrize("code,reported", [("unavailable", True), ("overloaded", False)])
def test_a_home_that_fails_mid_write_is_replaced_by_a_spare_carrying_its_hint(
        sloppy, code, reported):
    sloppy.make_failing("n3", "replica_put", code=code, message="n3 cannot write")
    sloppy.put("n1", "k", "v1", w=3)  # n1, n2 and the spare n4 meet W=3

    puts = [(s.to, s.body.get("hint")) for s in sloppy.sends("replica_put")]
    assert puts == [("n2", None), ("n3", None), ("n4", "n3")]
    assert sloppy.hinted_values("n4", "k") == {"n3": ["'v1'"]}
    assert sloppy.stored("n3", "k") == []
    assert sloppy.coordinator("n1").hinted_writes == 1
    # Only an unreachable peer is news for the failure detector; a busy one answered.
    assert sloppy.peer_failures == ([("n1", "n3")] if reported else [])
    sloppy.assert_settled()


def test_a_spare_that_fails_too_is_replaced_by_the_next_one_still_hinting_the_home(sloppy):
    sloppy.make_failing("n3", "replica_put")
    sloppy.make_failing("n4", "replica_put")
    sloppy.put("n1", "k", "v1", w=3)
    puts = [(s.to, s.body.get("hint")) for s in sloppy.sends("replica_put")]
    assert puts == [("n2", None), ("n3", None), ("n4", "n3"), ("n5", "n3")]
    assert sloppy.hinted_values("n5", "k") == {"n3": ["'v1'"]}
    assert sloppy.peer_failures == [("n1", "n3"), ("n1", "n4")]
    assert sloppy.coordinator("n1").hinted_writes == 2
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
    coord = sloppy.coordinator("n1")
    assert coord.hedge_after == pytest.approx(TIMEOUT / 2)
    sloppy.make_silent("n3")
    client = sloppy.start_put("n1", "k", "v1", w=3)
    assert sloppy.answer(client) is None

    sloppy.tick(coord.hedge_after - 0.001)
    assert sloppy.answer(client) is None
    assert [s.to for s in sloppy.sends("replica_put")] == ["n2", "n3"]
    assert sloppy.peer_failures == []

    sloppy.tick(coord.hedge_after)
    assert sloppy.peer_failures == [("n1", "n3")]
    [hedge] = sloppy.sends("replica_put")[2:]
    assert hedge.to == "n4" and hedge.body["hint"] == "n3" and hedge.req_id is not None
    sloppy.ok(client, "put_ok")  # answered at hedge_after, well before the deadline
    assert sloppy.now < TIMEOUT
    assert sloppy.hinted_values("n4", "k") == {"n3": ["'v1'"]}
    assert coord.hinted_writes == 1
    sloppy.assert_settled()


def test_a_silent_home_is_not_replaced_when_there_is_no_spare_and_the_put_times_out(sloppy):
    sloppy.believe_down("n4", "n5")  # no healthy fallback: no spares
    sloppy.make_silent("n3")
    client = sloppy.start_put("n1", "k", "v1", w=3)
    sloppy.tick(sloppy.coordinator("n1").hedge_after)
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
    net.believe_down("n3")
    getattr(net, f"make_{fault}")("n3")
    client = net.start_put("n1", "k", "v1", w=3)
    if fault == "silent":
        net.tick(net.coordinator("n1").hedge_after)
        assert net.answer(client) is None, "no spare is brought in for a strict bucket"
        net.tick(TIMEOUT)
    err = net.failed(client)
    assert type(err) is QuorumNotMet
    assert (err.answered, err.required, err.asked) == (2, 3, 3)
    assert "strict" in str(err)
    assert sorted(s.to for s in net.sends()) == ["n2", "n3"], \
        "a strict bucket asks the homes, down or not, and nobody else"
    assert all("hint" not in s.body for s in net.sends())
    assert net.coordinator("n1").hinted_writes == 0
    net.assert_settled()


def test_quorum_not_met_counts_the_homes_even_when_fewer_nodes_could_be_asked():
    walk = ("n1", "n2", "n3", "n4")
    net = Net(walk, walk=walk)
    net.believe_down("n2", "n3")  # one fallback (n4) for two down homes
    assert net.cores["n1"].plan(BUCKET, "k", "w", 3).targets == ("n1", "n4")
    err = net.failed(net.start_put("n1", "k", "v1", w=3))
    assert type(err) is QuorumNotMet
    # The reachable nodes still answer, so the error says how many did, and why not more.
    assert (err.answered, err.required, err.asked) == (2, 3, 3)
    assert "2 of 3 replicas answered, 3 required" in str(err)
    assert "n3 believed down and no stand-in available" in str(err)


def test_a_forwarded_put_goes_first_to_a_home_believed_up(sloppy):
    sloppy.believe_down("n1")
    client = sloppy.start_put("n5", "k", "v1", w=2)
    sloppy.ok(client, "put_ok")
    assert [s.to for s in sloppy.sends("put")] == ["n2"]
    # n2 coordinates with the same view: it writes its own replica, n4 stands in for n1.
    assert sloppy.held_values("n2", "k") == ["'v1'"]
    puts = {s.to: s.body.get("hint") for s in sloppy.sends("replica_put")}
    assert puts == {"n3": None, "n4": "n1"}
    assert sloppy.coordinator("n2").hinted_writes == 1
    assert sloppy.coordinator("n5").hinted_writes == 0
    sloppy.assert_settled()


def test_a_get_asks_the_stand_in_for_a_home_believed_down_and_counts_its_answer(sloppy):
    v1 = version("v1", ("x", 1))
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(sloppy, "n1", "k", v1)
    seed(sloppy, "n2", "k", v1)
    seed_hint(sloppy, "n4", "n3", "k", v2)  # the stand-in holds a newer write for n3
    sloppy.believe_down("n3")
    values, ctx = sloppy.get("n1", "k", r=3)
    assert values == ["v2"], "the stand-in's answer counts toward R"
    assert decode_context(ctx).covers(("x", 2))
    gets = sloppy.sends("replica_get")
    assert sorted(s.to for s in gets) == ["n2", "n4"]
    assert all("hint" not in s.body for s in gets), "reads carry no hint"
    assert sloppy.coordinator("n1").hinted_writes == 0


def test_a_get_replaces_a_failing_home_with_a_spare(sloppy):
    v1 = version("v1", ("x", 1))
    for n in ("n1", "n2", "n4"):
        seed(sloppy, n, "k", v1)
    sloppy.make_failing("n3", "replica_get")
    assert sloppy.get("n1", "k", r=3)[0] == ["v1"]
    assert [s.to for s in sloppy.sends("replica_get")] == ["n2", "n3", "n4"]
    assert sloppy.peer_failures == [("n1", "n3")]
    sloppy.assert_settled()


def test_a_get_replaces_a_home_silent_past_hedge_after_with_a_spare(sloppy):
    v1 = version("v1", ("x", 1))
    for n in ("n1", "n2", "n4"):
        seed(sloppy, n, "k", v1)
    sloppy.make_silent("n3")
    client = sloppy.start_get("n1", "k", r=3)
    sloppy.tick(sloppy.coordinator("n1").hedge_after - 0.001)
    assert sloppy.answer(client) is None
    sloppy.tick(sloppy.coordinator("n1").hedge_after)
    assert [s["value"] for s in sloppy.ok(client, "get_ok")["siblings"]] == ["v1"]
    assert [s.to for s in sloppy.sends("replica_get")] == ["n2", "n3", "n4"]
    assert sloppy.peer_failures == [("n1", "n3")]
    # The answered get lingers for the silent home until the deadline; the hedged-out
    # home is not reported a second time.
    sloppy.tick(TIMEOUT)
    assert sloppy.peer_failures == [("n1", "n3")]
    sloppy.assert_settled()


def test_a_strict_get_uses_no_stand_in_and_no_spare():
    net = Net(WALK, walk=WALK, strict=True)
    net.believe_down("n3")
    net.make_failing("n3")
    err = net.failed(net.start_get("n1", "k", r=3))
    assert type(err) is QuorumNotMet and "strict" in str(err)
    assert sorted(s.to for s in net.sends("replica_get")) == ["n2", "n3"]


def test_read_repair_never_sends_to_a_stand_in_only_to_stale_homes(sloppy):
    v1 = version("v1", ("x", 1))
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(sloppy, "n1", "k", v2)
    seed(sloppy, "n2", "k", v1)  # a stale home
    sloppy.believe_down("n3")    # n4 stands in for n3 and holds nothing: stale too
    assert sloppy.get("n1", "k", r=3)[0] == ["v2"]
    [repair] = sloppy.sends("replica_put")
    assert repair.to == "n2" and repair.req_id is None and "hint" not in repair.body
    assert sloppy.stored("n4", "k") == [], "a stand-in holds hints, not replicas"
    assert sloppy.coordinator("n1").read_repairs == 1
    sloppy.assert_settled()


def test_read_repair_never_sends_to_a_spare_brought_in_mid_get(sloppy):
    v2 = version("v2", ("x", 2), {"x": 1})
    seed(sloppy, "n1", "k", v2)
    seed(sloppy, "n2", "k", v2)
    sloppy.make_failing("n3", "replica_get")  # n4 is brought in, and holds nothing
    assert sloppy.get("n1", "k", r=3)[0] == ["v2"]
    assert "n4" in [s.to for s in sloppy.sends("replica_get")]
    assert sloppy.sends("replica_put") == []
    assert sloppy.coordinator("n1").read_repairs == 0
    sloppy.assert_settled()


def test_a_resolving_get_writes_the_merge_back_to_the_targets_with_hints_to_stand_ins(sloppy):
    sloppy.believe_down("n3")
    sloppy.put("n1", "cart", ["book"], w=3)
    sloppy.put("n2", "cart", ["pen"], w=3)  # concurrent: two siblings on n1, n2 and n4
    assert sloppy.hinted_values("n4", "cart") == {"n3": ["['book']", "['pen']"]}
    sloppy.sent.clear()

    body = sloppy.ok(sloppy.start_get("n1", "cart", r=2, resolver=SortedUnion()), "get_ok")
    assert [s["value"] for s in body["siblings"]] == [["book", "pen"]]
    # n1 writes the merge to its own replica at once and sends it where a put would.
    write_backs = {s.to: s for s in sloppy.sends("replica_put", one_way=True)}
    assert sorted(write_backs) == ["n2", "n4"], "the merge goes where a put would"
    assert write_backs["n4"].body["hint"] == "n3"
    assert "hint" not in write_backs["n2"].body
    assert write_backs["n4"].body["versions"] == write_backs["n2"].body["versions"]
    for n in ("n1", "n2"):
        assert sloppy.held_values(n, "cart") == ["['book', 'pen']"]
    assert sloppy.hinted_values("n4", "cart") == {"n3": ["['book', 'pen']"]}
    assert sloppy.stored("n3", "cart") == []
    sloppy.assert_settled()


def test_hinted_writes_counts_every_replica_put_sent_with_a_hint(sloppy):
    coord = sloppy.coordinator("n1")
    sloppy.put("n1", "a", 1)
    assert coord.hinted_writes == 0, "no stand-in, no hint"
    sloppy.believe_down("n3")
    sloppy.put("n1", "b", 2, w=3)
    assert coord.hinted_writes == 1
    sloppy.get("n1", "b", r=3)
    assert coord.hinted_writes == 1, "a read is not a hinted write"
    sloppy.make_failing("n2", "replica_put")
    sloppy.put("n1", "c", 3, w=3)  # n4 stands in for n3, and the spare n5 for n2
    assert coord.hinted_writes == 3
    hinted = [(s.to, s.body["hint"]) for s in sloppy.sends("replica_put") if "hint" in s.body]
    assert hinted == [("n4", "n3"), ("n4", "n3"), ("n5", "n2")]
    assert sum(core.coordinator.hinted_writes for core in sloppy.cores.values()) == \
        len(hinted)


# ====================================================================== known bugs


def test_a_put_waiting_on_its_own_write_reports_no_peer_it_never_contacted():
    # Its own write is never pending in a node (see above): the coordinator alone.
    coord = bare_coordinator("n1")
    stand_in_put(coord, "k", 2, "v1")  # n3 and n4 are sent nothing before n1's own ack
    effects = coord.on_tick(TIMEOUT)
    [fail] = [e for e in effects if isinstance(e, Fail)]
    assert type(fail.error) is QuorumNotMet
    reported = {e.peer for e in effects if isinstance(e, PeerFailed)}
    assert not reported & {"n3", "n4"}, f"never-contacted peers reported failed: {reported}"


def test_a_put_waiting_on_its_own_write_reports_each_peer_at_most_once():
    # Replicas silent past the hedge are replaced, and each is reported once.
    coord = bare_coordinator("n1")
    plan = KeyPlan.sloppy(BUCKET, "k", WALK, 3, 2, down_set())
    effects = coord.start_put("c", plan, "v1", None, False, 0.0)
    for i in range(5):
        effects += coord.on_tick(coord.hedge_after + i * 0.02)
    assert [e for e in effects if isinstance(e, (Reply, Fail))] == []
    peers = [e.peer for e in effects if isinstance(e, PeerFailed)]
    assert len(peers) == len(set(peers)), f"peers reported repeatedly: {peers}"


def test_a_spare_brought_in_at_the_hedge_is_not_hedged_out_on_the_next_tick(sloppy):
    sloppy.make_silent("n3")
    sloppy.make_slow("n4")  # the spare is slow, not dead
    client = sloppy.start_put("n1", "k", "v1", w=3)
    hedge = sloppy.coordinator("n1").hedge_after
    sloppy.tick(hedge)
    assert [s.to for s in sloppy.sends("replica_put")][2:] == []  # n4 is held (slow)
    assert [f.to for f in sloppy.held] == ["n4"]
    sloppy.tick(hedge + 0.02)  # one runtime tick later
    assert ("n1", "n4") not in sloppy.peer_failures, "n4 was silent for 20 ms, not 500"
    assert [f.to for f in sloppy.held] == ["n4"], "n5 brought in after 20 ms"
    sloppy.release("n4")
    sloppy.ok(client, "put_ok")


def test_a_forward_whose_last_home_answers_garbage_reports_that_not_an_earlier_error():
    coord = bare_coordinator("n4")
    [fwd] = coord.start_put("c", plain_plan("k", 2), "v", None, False, 0.0)
    unavailable = errors.to_wire(Unavailable("n1 is shutting down"))
    [_, to_n2] = coord.on_reply(fwd.req_id, "n1", "error", unavailable, 0.0)
    [to_n3] = coord.on_reply(to_n2.req_id, "n2", "replica_put_ok", {}, 0.0)
    [fail] = coord.on_reply(to_n3.req_id, "n3", "replica_put_ok", {}, 0.0)
    assert "put forwarded to home node n3 failed: bad reply" in str(fail.error), \
        f"got {fail.error!r}"


def test_a_strict_buckets_forwarded_put_goes_first_to_a_home_believed_up():
    net = Net(WALK, walk=WALK, strict=True)
    net.believe_down("n1")
    net.start_put("n5", "k", "v1", w=2)
    assert [s.to for s in net.sends("put")][:1] == ["n2"]


def test_hinted_writes_counts_a_resolver_write_back_to_a_stand_in(sloppy):
    sloppy.believe_down("n3")
    sloppy.put("n1", "cart", ["book"], w=3)
    sloppy.put("n2", "cart", ["pen"], w=3)
    before = sloppy.coordinator("n1").hinted_writes
    sloppy.sent.clear()
    sloppy.get("n1", "cart", r=2, resolver=SortedUnion())
    assert [s.to for s in sloppy.sends("replica_put", one_way=True) if "hint" in s.body] == \
        ["n4"]
    assert sloppy.coordinator("n1").hinted_writes == before + 1


def test_a_not_found_from_a_replica_still_filling_its_range_brings_in_the_next_node():
    """A home that joined (or took a range over) and has not received the range yet holds
    nothing of the keys written before: its "not found" is no evidence, so the next node of
    the walk (often the range's previous holder, which keeps it until the newcomer has it)
    is asked too, at once rather than after a timeout."""
    net = Net(walk=("n1", "n2", "n3", "n4"), joining=("n1",))
    old = version("v1", ("x", 1), ts=1.0)
    for n in ("n3", "n4"):  # n4 held the range before n1 took it over
        seed(net, n, "k", old)
    net.make_slow("n3", "replica_get")
    client = net.start_get("n2", "k", r=2)  # n2 holds nothing of it (a lost write, say)
    values = [s["value"] for s in net.ok(client, "get_ok")["siblings"]]
    assert values == ["v1"], "n1's weak empty answer must not count toward R"
    assert "n4" in [s.to for s in net.sends("replica_get")]


def test_weak_not_founds_answer_a_read_when_no_other_node_is_left_to_ask():
    net = Net(walk=HOMES, joining=HOMES)  # a fresh cluster: every node is still filling
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
    net.make_slow("n2")
    net.make_slow("n3")
    reader = net.start_get("n1", "cart", r=3, resolver=SortedUnion())
    # Acknowledged meanwhile by n1's own write; its copies queue behind the get's reads.
    added = net.put("n1", "cart", ["book", "pen", "mug"], ctx, w=1)
    assert net.answer(reader) is None
    assert [(f.to, f.msg_type) for f in net.held] == [
        ("n2", "replica_get"), ("n3", "replica_get"), ("n2", "replica_put"), ("n3", "replica_put")]
    net.release()  # n2 and n3 answer the get from before the add reached them
    reply = net.ok(reader, "get_ok")
    merge_dot = tuple(reply["siblings"][0]["dot"])
    actor = net.actor("n1")
    assert merge_dot != (actor, decode_context(added).counter(actor))
    # The merge and the add are concurrent siblings: the reader's next put keeps the add.
    net.put("n1", "cart", ["book", "pen", "lamp"], reply["context"])
    values, _ = net.get("n2", "cart", r=3, resolver=SortedUnion())
    assert values == [["book", "lamp", "mug", "pen"]]


def test_two_merging_gets_at_one_node_issue_two_dots(net):
    net.put("n1", "cart", ["a"])
    net.put("n1", "cart", ["b"])
    net.make_slow("n2")
    net.make_slow("n3")
    # Both gets hear every replica answer with the two siblings before either answers.
    first = net.start_get("n1", "cart", r=3, resolver=SortedUnion())
    second = net.start_get("n1", "cart", r=3, resolver=SortedUnion())
    net.release()
    replies = [net.ok(client, "get_ok") for client in (first, second)]
    assert len({tuple(r["siblings"][0]["dot"]) for r in replies}) == 2


def test_forwarded_puts_at_a_stand_in_never_reissue_a_dot():
    """A put marked forwarded at a node that is not a home stores its own write as a hint;
    the counter it issued must still be recorded, or the next forwarded put reuses it."""
    net = Net(walk=("n1", "n2", "n3", "n4"))
    net.believe_down("n1")
    plan = net.cores["n4"].plan(BUCKET, "k", "w", 2)
    assert "n4" in plan.targets and "n4" not in plan.homes
    for value in ("first", "second"):
        body = CLIENT.put_body(BUCKET, "k", value, None, 2, False)
        net.ok(net.request("n4", "put", {**body, "forwarded": True}), "put_ok")
    dots = {tuple(wire["dot"]) for s in net.sends("replica_put", src="n4")
            for wire in s.body["versions"]}
    assert len(dots) == 2
    assert net.hinted_values("n4", "k") == {"n1": ["'first'", "'second'"]}
    assert net.cores["n4"].store.state(BUCKET, "k") == ([], 2)  # the counter, no replica


def test_a_context_naming_an_event_the_coordinator_never_issued_is_refused(net):
    forged = encode_context(Clock.of({net.actor("n1"): (1 << 48) - 1}))
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
    seed(net, "n1", "k", other)
    seed(net, "n2", "k", one)
    n1, n2 = net.cores["n1"].store, net.cores["n2"].store
    assert n1.dot_conflicts == 1 and n2.dot_conflicts == 1
    assert net.held_values("n1", "k") == net.held_values("n2", "k")  # the same one kept
    assert len(net.stored("n1", "k")) == 1


def test_read_repair_compares_content_not_only_dots(net):
    one = version("one", ("x", 1), ts=1.0)
    other = version("other", ("x", 1), ts=2.0)
    for n in HOMES:
        seed(net, n, "k", one)
    net.cores["n3"].store.engine.delete("default/k")
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
        assert [v.tombstone for v in net.stored(n, "session")] == [True]
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
