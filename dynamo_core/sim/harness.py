"""A simulated cluster to script: the scenario tests' (and plugin authors') test bench.

:class:`SimCluster` is a cluster of real node cores on the simulated network and clock,
driven one step at a time: start it, write and read through a :class:`ScriptClient` (each
call runs virtual time until its answer comes), crash, stop and restart nodes, cut links,
let time pass, and look inside any node's core. Nothing sleeps: a test that waits a minute
for anti-entropy takes a fraction of a second, and does the same thing every run::

    cluster = SimCluster(3, seed=1)
    cluster.start()
    c = cluster.client()
    c.put("alice", {"items": ["book"]})
    cluster.crash("n2")
    cluster.run(5.0)
    assert c.get("alice").values == [{"items": ["book"]}]

What the scenario tests need beyond that:

* ``c.inspect(key, node)``, ``c.preflist(key, node)`` and ``c.ping(node)``: the operator's
  requests, answered as ``dynamo inspect`` / ``preflist`` / ``ping`` are;
* ``c.put_all(items)`` and ``c.get_all(keys)``: a bulk load or read, many requests in flight;
* ``c.submit(...)``, ``c.submit_get(...)``, ``c.submit_put(...)``: one request sent without
  waiting, a :class:`Pending` filled in (and a callback called) when its answer, error or
  timeout comes; with ``cluster.every(interval, action)`` (a :class:`Ticker`) they make the
  client threads a test runs beside its script (a reader, a writer, a load), on virtual time;
* ``cluster.wall()``: true wall-clock time now, as a status document's ``since`` is given;
* ``cluster.await_left(name)``: run until a leaving node has left, then stop it, as its
  process exits.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import config as config_mod
from .. import errors
from ..client import _REPLY_OF, GetResult, _Requests
from ..config import Config
from ..core import NodeCore
from ..errors import DynamoError
from ..merkle import key_digest
from ..ring import key_hash
from ..transport import SendFailed
from ..wire import Codec
from .clients import cart_models
from .disk import ENGINE, Disks
from .network import Network
from .node import WALL_EPOCH, SimNode
from .world import World

T = TypeVar("T")

#: Virtual seconds the cluster gets to find itself in :meth:`SimCluster.start`.
SETTLE_SECONDS = 3.0

#: The configuration every simulated node runs with, before a test's own overrides.
#: (Each kind of cart the workload fills gets its bucket too: see :func:`base_config`.)
BASE_CONFIG: dict[str, Any] = {
    "storage": {"engine": ENGINE},
    # Hints outlive any outage a run makes; tombstones are reaped within a run.
    "handoff": {"max_age": 45.0},
    "tombstones": {"grace": 60.0},
    # Every crash starts an actor epoch: room in the clocks, so that truncation (a
    # documented source of false siblings) does not blur what a checker judges.
    "limits": {"max_clock_entries": 100},
}


def base_config() -> dict[str, Any]:
    """:data:`BASE_CONFIG` with a bucket for each kind of cart the clients fill."""
    carts = {model.bucket: {"resolver": model.resolver} for model in cart_models()}
    return config_mod.merge_tables(BASE_CONFIG, {"buckets": carts})


class SimCluster:
    """Simulated nodes ``n1``..``nK`` on one virtual clock, seeded."""

    def __init__(self, nodes: int = 3, *, seed: int = 0,
                 config: Mapping[str, Any] | None = None,
                 plugins: Sequence[object] = (), data_root: str | None = None) -> None:
        """``data_root`` is a real directory for engines that write files (diskcache); by
        default one is made, and removed by :meth:`close`, when the engine needs it."""
        self.world = World(seed)
        self.network = Network(self.world)
        self.disks = Disks()
        self.config: Config = config_mod.from_mapping(
            config_mod.merge_tables(base_config(), config or {}))
        self.plugins = tuple(plugins)
        engine = self.config.storage["engine"]
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if engine not in (ENGINE, "memory") and data_root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dynamo-sim-")
            data_root = self._tmp.name
        self._data_root = data_root if engine != "memory" else None
        self.nodes: dict[str, SimNode] = {}
        for i in range(1, nodes + 1):
            self.add_node(f"n{i}", boot=False)
        self._client_ids = itertools.count(1)

    # ------------------------------------------------------------------ nodes

    @staticmethod
    def address(name: str) -> str:
        return f"tcp://{name}.sim:7100"

    def add_node(self, name: str, seeds: Iterable[str] | None = None,
                 boot: bool = True) -> SimNode:
        """A new node, seeded with every node known so far (or ``seeds``, names)."""
        if name in self.nodes:
            raise ValueError(f"there is a node {name} already")
        seed_names = list(self.nodes) if seeds is None else list(seeds)
        for existing in self.nodes.values():
            existing.seeds = tuple(dict.fromkeys([*existing.seeds, self.address(name)]))
        node = SimNode(self.world, self.network, self.disks, name, self.address(name),
                       self.config, [self.address(s) for s in seed_names if s != name],
                       self.plugins, self._data_dir(name))
        self.nodes[name] = node
        if boot:
            node.boot()
        return node

    def _data_dir(self, name: str) -> str | None:
        engine = self.config.storage["engine"]
        if engine == ENGINE:
            return f"sim/{name}"
        if self._data_root is None:
            return None
        path = os.path.join(self._data_root, name)
        os.makedirs(path, exist_ok=True)
        return path

    def close(self) -> None:
        """Stop every node (no clean mark: as a power cut) and remove temporary files."""
        for node in self.nodes.values():
            if node.core is not None:
                node.core.close(clean=False)
                node.core = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SimCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self, settle: float = SETTLE_SECONDS) -> None:
        """Boot every node that is not running, then let them find each other."""
        for node in self.nodes.values():
            if not node.up:
                node.boot()
        self.run(settle)

    def core(self, name: str) -> NodeCore:
        core = self.nodes[name].core
        if core is None:
            raise AssertionError(f"{name} is not running")
        return core

    def up(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def crash(self, name: str) -> None:
        self.nodes[name].crash()

    def stop(self, name: str) -> None:
        self.nodes[name].stop()

    def pause(self, name: str) -> None:
        """SIGSTOP: the node keeps everything but answers nothing until :meth:`resume`."""
        self.nodes[name].pause()

    def resume(self, name: str) -> None:
        self.nodes[name].resume()

    def restart(self, name: str, keep_stale_data: bool = False) -> None:
        node = self.nodes[name]
        if node.up:
            node.crash()
        if not node.boot(keep_stale_data):
            raise AssertionError(f"{name} could not start")

    def wipe(self, name: str) -> None:
        """Lose a stopped node's disk (its data directory is gone)."""
        assert not self.nodes[name].up, f"{name} is running"
        self.disks.wipe(name)

    # ------------------------------------------------------------------ the network

    def partition(self, side: Iterable[str], other: Iterable[str] | None = None,
                  one_way: bool = False) -> set[tuple[str, str]]:
        """Cut every link from ``side`` to ``other`` (default: everything else, clients
        included), and back unless ``one_way``; returns the links cut."""
        mine = set(side)
        theirs = set(other) if other is not None else set(self.network.endpoints) - mine
        cut = {(a, b) for a in mine for b in theirs}
        if not one_way:
            cut |= {(b, a) for a, b in cut}
        self.network.conditions.cut |= cut
        self.world.note(f"fault: partition {sorted(mine)} {'->' if one_way else '|'} "
                        f"{sorted(theirs)}")
        return cut

    def slow_link(self, src: str, dst: str, delay: float) -> None:
        """Add ``delay`` seconds to every frame from ``src`` to ``dst`` (0 restores it)."""
        if delay:
            self.network.conditions.extra_delay[(src, dst)] = delay
        else:
            self.network.conditions.extra_delay.pop((src, dst), None)

    def heal(self, cut: set[tuple[str, str]] | None = None) -> None:
        """Mend the links ``cut`` (default: every link)."""
        if cut is None:
            self.network.conditions.cut.clear()
        else:
            self.network.conditions.cut -= cut
        self.world.note("fault: partition healed")

    # ------------------------------------------------------------------ time

    def run(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass."""
        self.world.run_until(self.world.now + seconds)

    def wall(self) -> float:
        """True wall-clock time now: what a node without skew reads (its ``time.time()``),
        as the ``since`` and ``last_heard`` fields of a status document are given."""
        return WALL_EPOCH + self.world.now

    def every(self, interval: float, action: Callable[[], None]) -> Ticker:
        """Call ``action`` every ``interval`` virtual seconds (the first time one interval
        from now) until the returned :class:`Ticker` is stopped: a test's background
        thread, on virtual time. ``action`` must not block: it may send requests with
        :meth:`ScriptClient.submit` (not the blocking calls) and look at the nodes."""
        ticker = Ticker(self.world, interval, action)
        ticker.schedule()
        return ticker

    def run_until(self, predicate: Callable[[], T], timeout: float, what: str,
                  step: float = 0.05) -> T:
        """Let time pass until ``predicate()`` is truthy (and return it); an
        AssertionError naming ``what`` after ``timeout`` virtual seconds."""
        deadline = self.world.now + timeout
        while True:
            result = predicate()
            if result:
                return result
            if self.world.now >= deadline:
                raise AssertionError(f"{what}: not so after {timeout:g}s of simulated time")
            self.world.run_until(min(deadline, self.world.now + step))

    def await_left(self, name: str, timeout: float = 60.0) -> None:
        """Run until node ``name`` has left the cluster, then stop it cleanly, as the
        process of a node that has left exits (``dynamo_core.node.run_node``)."""
        node = self.nodes[name]
        self.run_until(lambda: node.has_left, timeout, f"{name} to leave the cluster")
        node.stop()

    # ------------------------------------------------------------------ clients

    def client(self, timeout: float = 5.0, via: Sequence[str] | None = None) -> ScriptClient:
        """A client; it asks the nodes ``via`` (names; default every node) in turn."""
        return ScriptClient(self, f"t{next(self._client_ids)}", timeout,
                            list(via) if via else None)

    # ------------------------------------------------------------------ convergence

    def homes(self, bucket: str, key: str, view: str | None = None) -> list[str]:
        """The key's home nodes as ``view`` (default: the first node up) sees the ring."""
        core = self.core(view) if view else self.up()[0].core
        assert core is not None
        n = self.config.bucket(bucket).n
        return core.membership.ring.preference_list(key_hash(bucket, key), n)

    def divergence(self, keys: Iterable[tuple[str, str]] = ()) -> str | None:
        """Why the replicas have not converged yet (None once they have): every member
        is up (a node that left or was removed is not one) and sees one ring, no hint is
        waiting, no node holds keys it does not replicate, the Merkle trees of every range
        are equal on all its replicas, and every home of each of ``keys`` holds the same
        versions of it."""
        up = [n for n in self.up() if not n.has_left]
        if not up:
            return "no node is up"
        removed = {m.name for n in up for m in n.core.membership.members()  # type: ignore[union-attr]
                   if m.status == "removed"}
        gone = sorted(n.name for n in self.nodes.values()
                      if not n.up and not n.has_left and n.name not in removed)
        if gone:
            return f"{', '.join(gone)} down"
        if len({_ring_signature(n) for n in up}) > 1:
            return "the nodes see different rings"
        roots: dict[tuple[int, int, int], set[bytes]] = {}
        for node in up:
            core = node.core
            assert core is not None
            if core.hints.pending():
                return f"{node.name} still holds {core.hints.pending()} hints"
            if core.anti_entropy.stats()["unowned"]:
                return f"{node.name} still holds keys it no longer replicates"
            for n, trees in core.anti_entropy.trees.items():
                for tree in trees.trees():
                    roots.setdefault((n, tree.start, tree.end), set()).add(tree.root())
        differing = [slot for slot, seen in roots.items() if len(seen) > 1]
        if differing:
            return f"the Merkle trees of {len(differing)} ranges differ between replicas"
        for bucket, key in keys:
            digests = {key_digest(self.core(name).store.read(bucket, key))
                       for name in self.homes(bucket, key)}
            if len(digests) > 1:
                return f"the replicas of {bucket}/{key} differ"
        return None


def _ring_signature(node: SimNode) -> tuple[Any, ...]:
    assert node.core is not None
    return tuple((m.name, m.status, m.tokens) for m in node.core.membership.live_members())


class Ticker:
    """A repeating action on virtual time (see :meth:`SimCluster.every`)."""

    def __init__(self, world: World, interval: float, action: Callable[[], None]) -> None:
        if not interval > 0:
            raise ValueError("a ticker needs an interval above 0")
        self.world = world
        self.interval = interval
        self.action = action
        self.ticks = 0
        self.stopped = False

    def schedule(self) -> None:
        self.world.after(self.interval, self._tick)

    def _tick(self) -> None:
        if self.stopped:
            return
        self.ticks += 1
        self.action()
        self.schedule()

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Pending:
    """A request sent with :meth:`ScriptClient.submit`, filled in when its answer (or its
    error, or its timeout) comes; the script goes on meanwhile."""

    msg_type: str
    node: str
    sent: float
    parse: Callable[[dict[str, Any]], Any]
    answered: float | None = None
    value: Any = None
    error: DynamoError | None = None

    @property
    def done(self) -> bool:
        return self.answered is not None

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    @property
    def latency(self) -> float | None:
        """Virtual seconds from sending to the answer (or the error)."""
        return None if self.answered is None else self.answered - self.sent

    def result(self) -> Any:
        """The parsed answer; raises its error (AssertionError while still waiting)."""
        if not self.done:
            raise AssertionError(f"{self.msg_type} to {self.node} is not answered yet")
        if self.error is not None:
            raise self.error
        return self.value


class ScriptClient:
    """A blocking-style client of a :class:`SimCluster`: each call runs virtual time until
    its answer arrives (or its timeout passes), then returns it or raises its error, as
    :class:`dynamo_core.Client` does."""

    def __init__(self, cluster: SimCluster, name: str, timeout: float,
                 via: list[str] | None) -> None:
        self.cluster = cluster
        self.name = name
        self.timeout = timeout
        self.via = via
        self.protocol = _Requests([cluster.address(n) for n in cluster.nodes], timeout,
                                  route=False)
        self.codec = Codec()
        self._turn = itertools.count()
        self._answers: dict[int, Any] = {}
        #: requests sent with submit(), by id: what to fill in when the answer comes
        self._waiting: dict[int, tuple[Pending, Callable[[Pending], None] | None]] = {}
        cluster.network.attach_client(name, self._on_frame)

    def _on_frame(self, frame: bytes) -> None:
        try:
            msg = self.codec.decode(frame)
        except DynamoError:
            return
        if msg.id in self._waiting:
            pending, on_done = self._waiting.pop(msg.id)
            try:
                expected = _REPLY_OF.get(pending.msg_type, f"{pending.msg_type}_ok")
                pending.value = pending.parse(_Requests.parse(msg, expected))
            except DynamoError as exc:
                pending.error = exc
            self._finish(pending, on_done)
        elif msg.id is not None and msg.id not in self._answers:
            self._answers[msg.id] = msg

    def _finish(self, pending: Pending, on_done: Callable[[Pending], None] | None) -> None:
        pending.answered = self.cluster.world.now
        if on_done is not None:
            on_done(pending)

    def submit(self, msg_type: str, body: dict[str, Any], node: str | None = None,
               on_done: Callable[[Pending], None] | None = None,
               parse: Callable[[dict[str, Any]], Any] = lambda body: body) -> Pending:
        """Send one request without waiting for it (a request of a client thread that runs
        beside the script): the returned :class:`Pending` is filled in, and ``on_done``
        called with it, when the answer comes, or an error, or the client's timeout
        passes (:class:`~dynamo_core.errors.Timeout`)."""
        target = self._pick(node)
        world = self.cluster.world
        pending = Pending(msg_type, target, world.now, parse)
        req_id = self.protocol.next_id()
        frame = self.codec.encode(msg_type, body, req_id)
        try:
            self.cluster.network.request(self.name, self.cluster.address(target), frame)
        except SendFailed as exc:
            pending.error = errors.Unavailable(f"{target}: {exc}")
            self._finish(pending, on_done)
            return pending
        self._waiting[req_id] = (pending, on_done)

        def expire() -> None:
            if req_id in self._waiting:
                del self._waiting[req_id]
                pending.error = errors.Timeout(f"{msg_type} to {target} got no answer "
                                               f"within {self.timeout:g}s")
                self._finish(pending, on_done)
        world.after(self.timeout, expire)
        return pending

    def submit_get(self, key: str, r: int | None = None, *, bucket: str = "default",
                   node: str | None = None,
                   on_done: Callable[[Pending], None] | None = None) -> Pending:
        """:meth:`get`, without waiting: the Pending's value is the GetResult."""
        body = self.protocol.get_body(bucket, key, r, True)
        return self.submit("get", body, node, on_done, _Requests.get_result)

    def submit_put(self, key: str, value: Any, context: Any = None, w: int | None = None, *,
                   bucket: str = "default", node: str | None = None,
                   on_done: Callable[[Pending], None] | None = None) -> Pending:
        """:meth:`put`, without waiting: the Pending's value is the new context."""
        body = self.protocol.put_body(bucket, key, value, context, w, False)
        return self.submit("put", body, node, on_done, lambda b: b["context"])

    def put_all(self, items: Mapping[str, Any], w: int | None = None, *,
                bucket: str = "default", concurrency: int = 32) -> None:
        """Write every key of ``items`` (no context), ``concurrency`` requests in flight at
        a time, through the nodes in turn; returns once every one is acknowledged, or
        raises the first error (a test's bulk load, as ``conftest.load`` does)."""
        def send(item: tuple[str, Any], on_done: Callable[[Pending], None]) -> Pending:
            return self.submit_put(item[0], item[1], w=w, bucket=bucket, on_done=on_done)
        self._all(list(items.items()), send, concurrency)

    def get_all(self, keys: Iterable[str], r: int | None = None, *, bucket: str = "default",
                concurrency: int = 32) -> dict[str, GetResult]:
        """Read every key, ``concurrency`` requests in flight at a time; key -> its
        GetResult, or the first error raised."""
        def send(key: str, on_done: Callable[[Pending], None]) -> Pending:
            return self.submit_get(key, r, bucket=bucket, on_done=on_done)
        keys = list(keys)
        pendings = self._all(keys, send, concurrency)
        return {key: p.result() for key, p in zip(keys, pendings, strict=True)}

    def _all(self, items: list[Any], send: Callable[[Any, Callable[[Pending], None]], Pending],
             concurrency: int) -> list[Pending]:
        queue = list(enumerate(items))[::-1]
        sent: list[Pending | None] = [None] * len(items)
        failed: list[DynamoError] = []
        in_flight = [0]

        def more(done: Pending | None = None) -> None:
            if done is not None:
                in_flight[0] -= 1
                if done.error is not None:
                    failed.append(done.error)
            while queue and in_flight[0] < concurrency and not failed:
                i, item = queue.pop()
                in_flight[0] += 1
                sent[i] = send(item, more)

        more()
        world = self.cluster.world
        while in_flight[0] and not failed:
            world.run_until(world.now + self.timeout,
                            stop=lambda: not in_flight[0] or bool(failed))
        if failed:
            raise failed[0]
        return [p for p in sent if p is not None]

    def _pick(self, node: str | None) -> str:
        if node is not None:
            return node
        names = self.via or [n.name for n in self.cluster.up()] or list(self.cluster.nodes)
        return names[next(self._turn) % len(names)]

    def call(self, msg_type: str, body: dict[str, Any], node: str | None = None
             ) -> dict[str, Any]:
        """One request to ``node`` (a name; default: the next in turn)."""
        target = self._pick(node)
        req_id = self.protocol.next_id()
        frame = self.codec.encode(msg_type, body, req_id)
        try:
            self.cluster.network.request(self.name, self.cluster.address(target), frame)
        except SendFailed as exc:
            raise errors.Unavailable(f"{target}: {exc}") from None
        world = self.cluster.world
        world.run_until(world.now + self.timeout, stop=lambda: req_id in self._answers)
        msg = self._answers.pop(req_id, None)
        if msg is None:
            raise errors.Timeout(f"{msg_type} to {target} got no answer within "
                                 f"{self.timeout:g}s")
        return _Requests.parse(msg, _REPLY_OF.get(msg_type, f"{msg_type}_ok"))

    def get(self, key: str, r: int | None = None, *, bucket: str = "default",
            node: str | None = None, resolve: bool = True) -> GetResult:
        body = self.call("get", self.protocol.get_body(bucket, key, r, resolve), node)
        return _Requests.get_result(body)

    def put(self, key: str, value: Any, context: Any = None, w: int | None = None, *,
            bucket: str = "default", node: str | None = None) -> bytes:
        body = self.protocol.put_body(bucket, key, value, context, w, False)
        return self.call("put", body, node)["context"]  # type: ignore[no-any-return]

    def delete(self, key: str, context: Any = None, w: int | None = None, *,
               bucket: str = "default", node: str | None = None) -> bytes:
        if context is None:
            context = self.get(key, bucket=bucket, node=node).context
        body = self.protocol.put_body(bucket, key, None, context, w, True)
        return self.call("delete", body, node)["context"]  # type: ignore[no-any-return]

    def status(self, node: str) -> dict[str, Any]:
        return self.call("status", {}, node)["status"]  # type: ignore[no-any-return]

    def inspect(self, key: str, node: str, bucket: str = "default") -> dict[str, Any]:
        """``dynamo inspect``: the versions and hints of ``key`` in one node's storage."""
        body = self.protocol.key_body(bucket, key)
        return self.call("inspect", body, node)["inspect"]  # type: ignore[no-any-return]

    def preflist(self, key: str, node: str, bucket: str = "default") -> dict[str, Any]:
        """``dynamo preflist``: the key's homes, then its fallbacks, as ``node`` sees them."""
        body = self.protocol.key_body(bucket, key)
        return self.call("preflist", body, node)["preflist"]  # type: ignore[no-any-return]

    def ping(self, node: str) -> str:
        return str(self.call("ping", {}, node).get("node", ""))

    def join(self, node: str, seed: str, keep_data: bool = False) -> None:
        body: dict[str, Any] = {"seed": self.cluster.address(seed)}
        if keep_data:
            body["keep_data"] = True
        self.call("join", body, node)

    def leave(self, node: str) -> None:
        self.call("leave", {}, node)

    def remove(self, name: str, node: str) -> None:
        self.call("remove", {"name": name}, node)
