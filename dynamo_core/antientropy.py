"""Anti-entropy, range transfer and tombstone reaping: the background work that converges.

Three tasks share one mechanism, the Merkle trees this node keeps for the ranges it
replicates (one set per replication factor N in use, since a bucket with N=2 lives on
fewer nodes than one with N=3):

* **anti-entropy** (paper 4.7): with one peer at a time, compare the roots of every range
  both replicate in a single round trip; descend only into ranges whose roots differ, and
  only into differing subtrees; exchange only the keys whose version sets differ.
* **range transfer**: keys this node holds but no longer replicates (a node joined, or this
  node is leaving) are pushed to the key's current replicas and dropped once every one of
  them acknowledged. A node that was removed is rebuilt the same way, by anti-entropy
  among the remaining replicas.
* **tombstone reaping**: a key whose only version is a tombstone, older than the grace
  period, is deleted everywhere once every home replica holds exactly that tombstone.

All of it runs under the node's background budget (paper 6.5), one task at a time per
kind. The tree arithmetic is the pure :mod:`merkle` module; this one sequences messages.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Sequence

from .errors import DynamoError
from .hookspecs import Resolver  # noqa: F401 - re-exported type context for readers
from .merkle import Descent, RangeTrees, diff_leaf, key_digest, key_id
from .ring import Ring, key_hash
from .store import split_storage_key
from .versions import Version, reconcile

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

#: Ranges whose roots are compared in one message.
ROOTS_PER_MESSAGE = 512
#: Keys moved per round of range transfer.
TRANSFER_BATCH = 64


def ring_ranges(ring: Ring) -> list[tuple[int, int]]:
    """Every token range ``(previous token, token]`` of the ring."""
    tokens = sorted(t for node in ring.nodes for t in ring.tokens_of(node))
    return [(tokens[i - 1], t) for i, t in enumerate(tokens)] if tokens else []


class AntiEntropy:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.depth = node.config.ae_depth
        self._ring: Ring | None = None
        #: replication factor -> trees of the ranges this node replicates at that factor
        self.trees: dict[int, RangeTrees] = {}
        #: replication factor -> range -> replicas (in preference order)
        self.replicas: dict[int, dict[tuple[int, int], list[str]]] = {}
        self._peer_turn = 0
        self.keys_sent = 0
        self.keys_fetched = 0
        self.keys_handed_off = 0
        self.tombstones_reaped = 0
        self.exchanges = 0
        node.store.listener = self._on_store_change

    # ================================================================== trees

    def factors(self) -> list[int]:
        config = self.node.config
        return sorted({config.n, *(b.n for b in config.buckets.values())})

    def refresh(self) -> None:
        """Rebuild the trees when the ring changed (a join, a leave, a removal)."""
        ring = self.node.membership.ring
        if ring is self._ring:
            return
        self._ring = ring
        me = self.node.name
        ranges = ring_ranges(ring)
        self.replicas = {n: {r: ring.preference_list(r[1], n) for r in ranges}
                         for n in self.factors()}
        self.trees = {n: RangeTrees([r for r, reps in by_range.items() if me in reps],
                                    self.depth)
                      for n, by_range in self.replicas.items()}
        per_factor: dict[int, list] = {n: [] for n in self.trees}
        for bucket, key, versions in self.node.store.items():
            per_factor[self.node.config.bucket(bucket).n].append((bucket, key, versions))
        for n, items in per_factor.items():
            self.trees[n].rebuild(items)

    def _on_store_change(self, bucket: str, key: str, old: list[Version],
                         new: list[Version]) -> None:
        trees = self.trees.get(self.node.config.bucket(bucket).n)
        if trees is not None:
            trees.update(bucket, key, old, new)

    def _tree(self, body: dict[str, Any]):
        trees = self.trees.get(body["n"])
        tree = trees.tree_of_range(body["start"], body["end"]) if trees else None
        if tree is None or tree.depth != body["depth"]:
            raise DynamoError(f"{self.node.name} does not replicate range "
                              f"({body['start']:x}, {body['end']:x}] at n={body['n']}")
        return tree

    # ================================================================== serving a peer

    def serve(self, msg_type: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.refresh()
        if msg_type == "ae_roots":
            trees = self.trees.get(body["n"])
            roots = []
            for start, end in body["ranges"]:
                tree = trees.tree_of_range(start, end) if trees else None
                roots.append(tree.root() if tree is not None and tree.depth == body["depth"]
                             else None)
            return "ae_roots_ok", {"roots": roots}
        tree = self._tree(body)
        if msg_type == "ae_hashes":
            return "ae_hashes_ok", {"hashes": tree.hashes(body["level"], body["indices"])}
        return "ae_keys_ok", {"keys": tree.leaf_keys(body["leaf"])}

    # ================================================================== anti-entropy

    async def run(self) -> None:
        """Forever: one exchange with the next peer, one transfer batch, one reap pass."""
        while True:
            await asyncio.sleep(self.node.config.ae_interval)
            try:
                self.refresh()
                await self.exchange_with_next_peer()
                await self.transfer_unowned()
                await self.reap_tombstones()
            except DynamoError as exc:
                log.debug("%s: background round cut short: %s", self.node.name, exc)

    def _peers(self) -> list[str]:
        me = self.node.name
        now = self.node.now()
        peers = {p for by_range in self.replicas.values() for reps in by_range.values()
                 for p in reps if me in reps and p != me}
        return sorted(p for p in peers if not self.node.liveness.is_down(p, now))

    async def exchange_with_next_peer(self) -> None:
        peers = self._peers()
        if not peers:
            return
        self._peer_turn = (self._peer_turn + 1) % len(peers)
        peer = peers[self._peer_turn]
        for n in self.trees:
            await self.exchange(peer, n)

    async def exchange(self, peer: str, n: int) -> None:
        """Compare every range shared with ``peer`` at factor ``n``; repair what differs."""
        trees = self.trees[n]
        shared = [r for r in trees.ranges() if peer in self.replicas[n][r]]
        for i in range(0, len(shared), ROOTS_PER_MESSAGE):
            chunk = shared[i:i + ROOTS_PER_MESSAGE]
            reply = await self._call(peer, "ae_roots", {
                "n": n, "depth": self.depth, "ranges": [list(r) for r in chunk]})
            self.exchanges += 1
            for (start, end), root in zip(chunk, reply["roots"]):
                tree = trees.tree_of_range(start, end)
                if root is not None and tree is not None and tree.root() != root:
                    await self._repair_range(peer, n, tree)

    async def _repair_range(self, peer: str, n: int, tree) -> None:
        where = {"n": n, "depth": self.depth, "start": tree.start, "end": tree.end}
        descent = Descent(tree)
        while not descent.done:
            level, indices = descent.request()
            reply = await self._call(peer, "ae_hashes", {**where, "level": level,
                                                        "indices": indices})
            descent.receive(reply["hashes"])
        for leaf in descent.leaves:
            theirs = (await self._call(peer, "ae_keys", {**where, "leaf": leaf}))["keys"]
            send, fetch = diff_leaf(tree.leaf_keys(leaf), theirs)
            await self._send_keys(peer, send)
            await self._fetch_keys(peer, fetch)

    async def _send_keys(self, peer: str, kids: Sequence[str]) -> None:
        for kid in kids:
            bucket, key = split_storage_key(kid)
            versions = self.node.store.read(bucket, key)
            if versions and await self._push(peer, bucket, key, versions):
                self.keys_sent += 1

    async def _fetch_keys(self, peer: str, kids: Sequence[str]) -> None:
        for kid in kids:
            bucket, key = split_storage_key(kid)
            reply = await self._call(peer, "replica_get", {"bucket": bucket, "key": key,
                                                           "own": True})
            versions = [Version.from_wire(v) for v in reply["versions"]]
            before = self.node.store.read(bucket, key)
            if versions and reconcile([*before, *versions]) != before:
                self.node.store.apply(bucket, key, versions)
                self.keys_fetched += 1

    async def _push(self, peer: str, bucket: str, key: str, versions: list[Version]) -> bool:
        """Send versions to a peer's own store; True if that changed what it holds."""
        reply = await self._call(peer, "replica_put", {
            "bucket": bucket, "key": key, "versions": [v.to_wire() for v in versions]})
        return bool(reply.get("changed", True))

    async def _call(self, peer: str, msg_type: str, body: dict[str, Any]) -> dict[str, Any]:
        """One background request, admitted by the budget (waits for a slot, never queues)."""
        budget = self.node.budget
        while not budget.try_start(self.node.now()):
            await asyncio.sleep(0.01)
        try:
            return await self.node.call(peer, msg_type, body)
        finally:
            budget.done()

    # ================================================================== range transfer

    def unowned(self, limit: int) -> list[tuple[str, str, list[Version], list[str]]]:
        """Keys held here that this node no longer replicates, with their replicas now."""
        ring = self.node.membership.ring
        me = self.node.name
        found = []
        for bucket, key, versions in self.node.store.items():
            n = self.node.config.bucket(bucket).n
            replicas = ring.preference_list(key_hash(bucket, key), n)
            if me not in replicas:
                found.append((bucket, key, versions, replicas))
                if len(found) >= limit:
                    break
        return found

    async def transfer_unowned(self) -> int:
        """Push a batch of keys to their new replicas; drop each once all acknowledged."""
        moved = 0
        for bucket, key, versions, replicas in self.unowned(TRANSFER_BATCH):
            try:
                for peer in replicas:
                    if await self._push(peer, bucket, key, versions):
                        self.keys_handed_off += 1
            except DynamoError as exc:
                log.debug("%s: transfer of %s/%s waits: %s", self.node.name, bucket, key, exc)
                continue
            if self.node.store.remove(bucket, key, versions):
                moved += 1
        return moved

    # ================================================================== tombstones

    async def reap_tombstones(self) -> None:
        """Delete tombstones every home holds, once they are older than the grace period."""
        now = self.node.now()
        grace = self.node.config.tombstone_grace
        ring = self.node.membership.ring
        for bucket, key, versions in list(self.node.store.items())[:TRANSFER_BATCH * 4]:
            if not all(v.tombstone and now - v.timestamp > grace for v in versions):
                continue
            homes = ring.preference_list(key_hash(bucket, key), self.node.config.bucket(bucket).n)
            if self.node.name != homes[0] if homes else True:
                continue  # one home decides, so the homes do not race each other
            digest = key_digest(versions)
            try:
                for peer in homes[1:]:
                    reply = await self._call(peer, "replica_get", {"bucket": bucket,
                                                                   "key": key, "own": True})
                    theirs = [Version.from_wire(v) for v in reply["versions"]]
                    if key_digest(theirs) != digest:
                        break
                else:
                    for peer in homes[1:]:
                        await self._call(peer, "reap", {"bucket": bucket, "key": key,
                                                        "versions": [v.to_wire()
                                                                     for v in versions]})
                    if self.node.store.remove(bucket, key, versions):
                        self.tombstones_reaped += 1
            except DynamoError as exc:
                log.debug("%s: reaping %s waits: %s", self.node.name, key_id(bucket, key), exc)

    def stats(self) -> dict[str, Any]:
        return {"exchanges": self.exchanges, "keys_sent": self.keys_sent,
                "keys_fetched": self.keys_fetched, "keys_handed_off": self.keys_handed_off,
                "tombstones_reaped": self.tombstones_reaped,
                "ranges": {f"n={n}": len(t.ranges()) for n, t in self.trees.items()}}
