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
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from .disk import ENGINE, Disks
from .network import Network
from .node import SimNode
from .world import World

T = TypeVar("T")

#: Virtual seconds the cluster gets to find itself in :meth:`SimCluster.start`.
SETTLE_SECONDS = 3.0

#: The configuration every simulated node runs with, before a test's own overrides.
BASE_CONFIG: dict[str, Any] = {
    "storage": {"engine": ENGINE},
    "buckets": {"carts": {"resolver": "cart-union"}},
    # Hints outlive any outage a run makes; tombstones are reaped within a run.
    "handoff": {"max_age": 45.0},
    "tombstones": {"grace": 60.0},
    # Every crash starts an actor epoch: room in the clocks, so that truncation (a
    # documented source of false siblings) does not blur what a checker judges.
    "limits": {"max_clock_entries": 100},
}


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
        self.config: Config = config_mod.from_mapping(merge(BASE_CONFIG, config or {}))
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

    def divergence(self, keys: Iterable[tuple[str, str]]) -> str | None:
        """Why the replicas have not converged yet (None once they have): every node is
        up and sees one ring, no hint is waiting, no node holds keys it does not
        replicate, and every home of each key holds the same versions of it."""
        up = [n for n in self.up() if not n.has_left]
        gone = sorted(n.name for n in self.nodes.values() if not n.up and not n.has_left)
        if gone:
            return f"{', '.join(gone)} down"
        if len({_ring_signature(n) for n in up}) > 1:
            return "the nodes see different rings"
        for node in up:
            assert node.core is not None
            if node.core.hints.pending():
                return f"{node.name} still holds {node.core.hints.pending()} hints"
            if node.core.anti_entropy.stats()["unowned"]:
                return f"{node.name} still holds keys it no longer replicates"
        for bucket, key in keys:
            digests = {key_digest(self.core(name).store.read(bucket, key))
                       for name in self.homes(bucket, key)}
            if len(digests) > 1:
                return f"the replicas of {bucket}/{key} differ"
        return None


def _ring_signature(node: SimNode) -> tuple[Any, ...]:
    assert node.core is not None
    return tuple((m.name, m.status, m.tokens) for m in node.core.membership.live_members())


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over``'s settings on top of ``base``'s, table by table."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
        self.protocol = _Requests([cluster.address(n) for n in cluster.nodes], timeout)
        self.codec = Codec()
        self._turn = itertools.count()
        self._answers: dict[int, Any] = {}
        cluster.network.attach_client(name, self._on_frame)

    def _on_frame(self, frame: bytes) -> None:
        try:
            msg = self.codec.decode(frame)
        except DynamoError:
            return
        if msg.id is not None and msg.id not in self._answers:
            self._answers[msg.id] = msg

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

    def join(self, node: str, seed: str, keep_data: bool = False) -> None:
        body: dict[str, Any] = {"seed": self.cluster.address(seed)}
        if keep_data:
            body["keep_data"] = True
        self.call("join", body, node)

    def leave(self, node: str) -> None:
        self.call("leave", {}, node)

    def remove(self, name: str, node: str) -> None:
        self.call("remove", {"name": name}, node)
