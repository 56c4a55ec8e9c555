"""Anti-entropy, range transfer and tombstone reaping: the background work that converges.

Three tasks share one mechanism, the Merkle trees this node keeps for the ranges it
replicates (one set per replication factor N in use, since a bucket with N=2 lives on
fewer nodes than one with N=3):

* **anti-entropy** (paper 4.7): with one peer at a time, compare the roots of every range
  both replicate in a single round trip; descend only into ranges whose roots differ, and
  only into differing subtrees; exchange only the keys whose version sets differ.
* **range transfer**: keys this node holds but no longer replicates (a node joined, or this
  node is leaving) are handed to the range's current replicas and dropped once every one of
  them holds them. It is the same comparison, one way: the keys held of a range make a
  throwaway tree, compared with each replica's tree of that range, so a replica that
  already holds them all confirms it with one root and only the keys a replica lacks move.
  A node that was removed is rebuilt by anti-entropy among the remaining replicas.
* **tombstone reaping**: a key whose only version is a tombstone, older than the grace
  period, is deleted everywhere once every home replica holds exactly that tombstone.

All of it runs under the node's background budget (paper 6.5). The tree arithmetic is the
pure :mod:`merkle` module; this one sequences messages.

No round scans storage, and neither does a ring change: storage is scanned once, at start.
From then on the store's change listener keeps, next to the trees, the keys held but not
replicated here (by range) and the keys held only as tombstones, and a ring change re-files
what the trees already know. A round looks at exactly the keys it has work for and never
stalls the event loop.
"""

from __future__ import annotations

import heapq
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any, TypeVar

from . import tasks
from .config import Config
from .errors import DynamoError
from .handoff import PutMany
from .merkle import Descent, MerkleTree, RangeTrees, diff_leaf, key_digest, key_id
from .ring import Ring, key_hash
from .store import LocalStore, split_storage_key
from .versions import Version

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
#: A range at a replication factor: ``(n, start, end)``.
Slot = tuple[int, int, int]

#: Ranges whose roots are compared in one message.
ROOTS_PER_MESSAGE = 512
#: Keys handed over per round of range transfer (whole ranges, at least one).
TRANSFER_KEYS = 1024
#: Tombstones looked at per round of reaping.
REAP_BATCH = 256
#: After a transfer round that dropped nothing (a replica is down, say), the next one waits
#: this many anti-entropy intervals, at least TRANSFER_BACKOFF_MIN seconds.
TRANSFER_BACKOFF_ROUNDS = 4
TRANSFER_BACKOFF_MIN = 0.5
#: Seconds before a tombstone that could not be reaped yet is looked at again.
REAP_RETRY = 1.0
#: A replica that does not replicate a range in its view of the ring has not heard of the
#: change yet: its keys wait this many gossip intervals (at least VIEW_WAIT_MIN seconds)
#: for gossip to bring it up to date, then are pushed to it regardless.
VIEW_WAIT_ROUNDS = 10
VIEW_WAIT_MIN = 2.0


#: A background request to a peer, admitted by the budget: ``(peer, type, body)`` -> reply.
BackgroundCall = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class _Handover:
    """The keys of one range this node holds but no longer replicates, on their way out."""

    n: int
    #: a tree of just these keys, shaped like the replicas' tree of the range
    tree: MerkleTree
    #: key id -> the versions held here (what may be dropped once every replica has them)
    held: dict[str, list[Version]]
    replicas: list[str]
    confirmed: set[str] = field(default_factory=set)


class AntiEntropy:
    """Merkle anti-entropy, range transfer and reaping for one node.

    Its collaborators are handed in one by one, so what it can touch is plain: the node's
    store and ring, its failure detector's opinion, the clock, the random source, and two
    ways to reach peers (both admitted by the background budget). The core wires the
    store's change listener to :meth:`on_store_change`.
    """

    def __init__(self, name: str, config: Config, store: LocalStore, *,
                 ring: Callable[[], Ring], is_down: Callable[[str, float], bool],
                 now: Callable[[], float], rng: Random, call: BackgroundCall,
                 put_many: PutMany, concurrency: int, starts_empty: Callable[[], bool],
                 on_exchange: Callable[[], None]) -> None:
        self.name = name
        self.config = config
        self.store = store
        self._current_ring = ring
        self._is_down = is_down
        self._now = now
        self.rng = rng
        self._background_call = call
        self._put_many = put_many
        self.concurrency = concurrency
        self._starts_empty = starts_empty
        self._on_exchange = on_exchange
        self.depth = config.ae_depth
        self._ring: Ring | None = None
        #: replication factor -> trees of the ranges this node replicates at that factor
        self.trees: dict[int, RangeTrees] = {}
        #: replication factor -> range -> replicas (in preference order)
        self.replicas: dict[int, dict[tuple[int, int], list[str]]] = {}
        #: the ring's tokens, sorted: the range of any key
        self._tokens: list[int] = []
        #: the peers sharing at least one range with this node
        self._peer_names: list[str] = []
        #: range -> key ids (in arrival order) held here in ranges this node does not replicate
        self._unowned: dict[Slot, dict[str, None]] = {}
        #: key id -> when (this node's clock) it came to hold only these tombstones
        self._tombstones: dict[str, float] = {}
        #: (when to look at it, key id): the reaping schedule of :attr:`_tombstones`
        self._reap_queue: list[tuple[float, str]] = []
        #: peer -> since when it has been seen on another ring than this node's
        self._lagging: dict[str, float] = {}
        #: one range transfer at a time (the background loop and a leave both run one)
        self._transferring = False
        #: no transfer round before this time (see TRANSFER_BACKOFF_ROUNDS)
        self._transfer_after = 0.0
        self._peer_turn = 0
        self.keys_sent = 0
        self.keys_fetched = 0
        self.keys_handed_off = 0
        #: every key whose versions crossed the wire in a transfer this node made, whether
        #: or not it changed the receiver (keys_sent/fetched/handed_off count only changes)
        self.keys_shipped = 0
        self.tombstones_reaped = 0
        self.exchanges = 0
        #: ranges this node replicates but may not hold yet (it joined, started empty or
        #: was given them by a ring change): until one exchange with another replica of the
        #: range, its "not found" for a key there is weak evidence (it says so in replies)
        self.filling: set[Slot] = set()
        #: empty while a cluster may hold its ranges, and no peer known yet (see refill)
        self._newcomer = False

    # ================================================================== trees

    def factors(self) -> list[int]:
        config = self.config
        return sorted({config.n, *(b.n for b in config.buckets.values())})

    def refill(self) -> None:
        """Count every range this node replicates as filling (it was told to join: what it
        holds need not be what the cluster holds for them), and keep them filling while it
        knows no peer yet: alone, its ranges have nobody to be compared with, which would
        otherwise count them filled before the cluster's gossip arrives (see _alone)."""
        self.refresh()
        self.filling = {(n, t.start, t.end) for n, trees in self.trees.items()
                        for t in trees.trees()}
        self._newcomer = True

    def refresh(self) -> None:
        """Rebuild the trees when the ring changed (a join, a leave, a removal).

        The first time, from a scan of storage. After that, from what the trees and the
        unowned set already know (every key held, with its digest), so a ring change costs
        no storage reads but those of keys this node starts replicating again; a scan would
        stall the event loop, and every node's at once, just as the ring changes. The tree of
        a range this node still replicates is adopted whole; with fixed partitions
        (strategies 2 and 3) that is every range but those that changed hands.
        """
        ring = self._current_ring()
        if ring is self._ring:
            return
        first = self._ring is None
        old_trees, old_unowned, old_tombstones = self.trees, self._unowned, self._tombstones
        self._ring = ring
        me = self.name
        ranges = ring.ranges()
        self._tokens = [end for _, end in ranges]
        self.replicas = {n: {r: ring.preference_list(r[1], n) for r in ranges}
                         for n in self.factors()}
        self.trees = {n: RangeTrees([r for r, reps in by_range.items() if me in reps],
                                    self.depth, keep=old_trees.get(n))
                      for n, by_range in self.replicas.items()}
        self._peer_names = sorted({p for by_range in self.replicas.values()
                                   for reps in by_range.values() if me in reps
                                   for p in reps if p != me})
        self._unowned, self._tombstones, self._reap_queue = {}, {}, []
        mine = {(n, t.start, t.end) for n, trees in self.trees.items() for t in trees.trees()}
        if first:
            self.filling = set(mine) if self._starts_empty() else set()
            self._newcomer = self._starts_empty()  # its seeds' cluster is still to be heard
            for bucket, key, versions in self.store.items():
                self._place(bucket, key, versions)
            return
        adopted = {(n, t.start, t.end) for n, trees in self.trees.items()
                   for t in trees.trees() if n in old_trees
                   and old_trees[n].tree_of_range(t.start, t.end) is t}
        self.filling = (self.filling & mine) | (mine - adopted)
        grace = self.config.tombstone_grace
        for n, trees in old_trees.items():
            for tree in trees.trees():
                if n in self.trees and self.trees[n].tree_of_range(tree.start, tree.end) is tree:
                    continue  # a range still replicated here: its tree was adopted whole
                for leaf in range(tree.leaves):
                    for kid, digest in tree.leaf_keys(leaf).items():
                        bucket, key = split_storage_key(kid)
                        h = key_hash(bucket, key)
                        target = self.trees[n].tree_for(h) if n in self.trees else None
                        if target is None:
                            self._unowned.setdefault((n, *self._range_of(h)), {})[kid] = None
                            continue
                        target.set_digest(bucket, key, h, digest)
                        if kid in old_tombstones:
                            self._tombstones[kid] = old_tombstones[kid]
                            self._schedule_reap(old_tombstones[kid] + grace, kid)
        for group in old_unowned.values():
            for kid in group:
                bucket, key = split_storage_key(kid)
                self._place(bucket, key, self.store.read(bucket, key))
        # Tombstones of adopted trees keep their place in the reaping schedule.
        for kid, newest in old_tombstones.items():
            bucket, key = split_storage_key(kid)
            if kid not in self._tombstones and self._owned(bucket, key):
                self._tombstones[kid] = newest
                self._schedule_reap(newest + grace, kid)

    def _place(self, bucket: str, key: str, versions: Sequence[Version]) -> None:
        """Put a key held in storage into its tree, if this node replicates it, and file it."""
        trees = self.trees.get(self.config.bucket(bucket).n)
        if trees is not None and versions:
            trees.update(bucket, key, [], versions)
        self._classify(bucket, key, versions)

    def _owned(self, bucket: str, key: str, h: int | None = None) -> bool:
        """Whether this node replicates the key: its range has a tree here."""
        trees = self.trees.get(self.config.bucket(bucket).n)
        return trees is not None and trees.tree_for(
            key_hash(bucket, key) if h is None else h) is not None

    def _range_of(self, h: int) -> tuple[int, int]:
        """The ring range ``(previous token, token]`` hash ``h`` falls in (``(0, 0)``: no ring)."""
        tokens = self._tokens
        if not tokens:
            return 0, 0
        i = bisect_left(tokens, h)
        if i == len(tokens):
            i = 0
        return tokens[i - 1], tokens[i]

    def _slot(self, bucket: str, key: str, h: int | None = None) -> Slot:
        return (self.config.bucket(bucket).n,
                *self._range_of(key_hash(bucket, key) if h is None else h))

    def _classify(self, bucket: str, key: str, versions: Sequence[Version],
                  h: int | None = None) -> None:
        """File the key as unowned (to hand over) or tombstone (to reap), or neither."""
        kid = key_id(bucket, key)
        h = key_hash(bucket, key) if h is None else h
        owned = bool(versions) and self._owned(bucket, key, h)
        slot = self._slot(bucket, key, h)
        if versions and not owned:
            self._unowned.setdefault(slot, {})[kid] = None
        elif (group := self._unowned.get(slot)) is not None:
            group.pop(kid, None)
            if not group:
                del self._unowned[slot]
        if owned and all(v.tombstone for v in versions):
            # The grace runs from when this node came to hold these tombstones, on its own
            # clock: no comparison of times from the clocks of the deleting coordinator,
            # the stand-ins and this node. A restart starts it again (the safe side).
            since = self._now()
            self._tombstones[kid] = since
            self._schedule_reap(since + self.config.tombstone_grace, kid)
        else:
            self._tombstones.pop(kid, None)

    def on_store_change(self, bucket: str, key: str, old: list[Version],
                         new: list[Version]) -> None:
        h = key_hash(bucket, key)  # once for the tree and the filing both
        trees = self.trees.get(self.config.bucket(bucket).n)
        if trees is not None:
            trees.update(bucket, key, old, new, h)
        if self._ring is not None:
            self._classify(bucket, key, new, h)

    def _tree(self, body: dict[str, Any]) -> MerkleTree:
        trees = self.trees.get(body["n"])
        tree = trees.tree_of_range(body["start"], body["end"]) if trees else None
        if tree is None or tree.depth != body["depth"]:
            raise DynamoError(f"{self.name} does not replicate range "
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
            await tasks.sleep(self.config.ae_interval)
            try:
                self.refresh()
                await self.exchange_with_next_peer()
                await self.transfer_unowned()
                await self.reap_tombstones()
            except DynamoError as exc:
                log.debug("%s: background round cut short: %s", self.name, exc)
            except Exception:  # a peer's odd answer must not end anti-entropy for good
                log.warning("%s: background round failed", self.name, exc_info=True)

    def peers(self) -> list[str]:
        """Every peer sharing at least one range with this node, in its view of the ring."""
        self.refresh()
        return list(self._peer_names)

    def _peers(self) -> list[str]:
        now = self._now()
        return [p for p in self._peer_names if not self._is_down(p, now)]

    async def exchange_with_next_peer(self) -> None:
        # A range no other node replicates has nobody to be compared with (N=1, or a
        # one-node ring): what it gets comes by range transfer, and it counts as filled.
        if self._newcomer:
            if self._alone():
                return  # empty and alone on its ring: the cluster is still to be heard
            self._newcomer = False
        me = self.name
        self.filling = {slot for slot in self.filling
                        if any(p != me for p in self.replicas.get(slot[0], {})
                               .get((slot[1], slot[2]), ()))}
        self._on_exchange()
        peers = self._peers()
        if not peers:
            return
        self._peer_turn = (self._peer_turn + 1) % len(peers)
        peer = peers[self._peer_turn]
        for n in self.trees:
            await self.exchange(peer, n)
        self._on_exchange()

    def _alone(self) -> bool:
        """No other node on the ring this node knows (whatever N is)."""
        return all(p == self.name for by_range in self.replicas.values()
                   for replicas in by_range.values() for p in replicas)

    async def exchange(self, peer: str, n: int) -> None:
        """Compare every range shared with ``peer`` at factor ``n``; repair what differs."""
        trees = self.trees[n]
        shared = [r for r in trees.ranges() if peer in self.replicas[n][r]]
        # A random order: two replicas repairing a third at once rarely meet on one range,
        # so a key it lacks is seldom shipped to it twice.
        self.rng.shuffle(shared)
        for i in range(0, len(shared), ROOTS_PER_MESSAGE):
            chunk = shared[i:i + ROOTS_PER_MESSAGE]
            reply = await self._call(peer, "ae_roots", {
                "n": n, "depth": self.depth, "ranges": [list(r) for r in chunk]})
            self.exchanges += 1
            for (start, end), root in zip(chunk, reply["roots"], strict=True):
                tree = trees.tree_of_range(start, end)
                if root is not None and tree is not None and tree.root() != root:
                    await self._repair_range(peer, n, tree)
                if root is not None:  # compared with a replica that has it: filled
                    self.filling.discard((n, start, end))

    async def _repair_range(self, peer: str, n: int, tree: MerkleTree,
                            handing_off: bool = False) -> None:
        """Descend where ``tree`` and the peer's tree of its range differ; at the bottom
        send the keys the peer lacks and (unless handing off) fetch the ones this lacks."""
        where = {"n": n, "depth": self.depth, "start": tree.start, "end": tree.end}
        descent = Descent(tree)
        while not descent.done:
            level, indices = descent.request()
            reply = await self._call(peer, "ae_hashes", {**where, "level": level,
                                                        "indices": indices})
            descent.receive(reply["hashes"])

        async def repair_leaf(leaf: int) -> None:
            theirs = (await self._call(peer, "ae_keys", {**where, "leaf": leaf}))["keys"]
            send, fetch = diff_leaf(tree.leaf_keys(leaf), theirs)
            await self._send_keys(peer, send, handing_off)
            if not handing_off:
                await self._fetch_keys(peer, fetch)

        await self._each(repair_leaf, descent.leaves)

    async def _send_keys(self, peer: str, kids: Sequence[str],
                         handing_off: bool = False) -> None:
        """Push the keys to ``peer``'s own replicas, many keys to a message."""
        items = []
        for kid in kids:
            bucket, key = split_storage_key(kid)
            versions = self.store.read(bucket, key)
            if versions:
                items.append((bucket, key, versions))
        if not items:
            return
        self.keys_shipped += len(items)
        results = await self._put_many(peer, items)
        changed = sum(1 for r in results if r is True)
        if handing_off:
            self.keys_handed_off += changed
        else:
            self.keys_sent += changed
        refused = [r for r in results if isinstance(r, str)]
        if refused:
            raise DynamoError(f"{peer} refused {len(refused)} of {len(items)} keys: "
                              f"{refused[0]}")

    async def _fetch_keys(self, peer: str, kids: Sequence[str]) -> None:
        for kid in kids:
            bucket, key = split_storage_key(kid)
            reply = await self._call(peer, "replica_get", {"bucket": bucket, "key": key,
                                                           "own": True})
            versions = [Version.from_wire(v) for v in reply["versions"]]
            if versions:
                self.keys_shipped += 1
                if self.store.apply(bucket, key, versions):
                    self.keys_fetched += 1

    async def _each(self, job: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
        """``job`` for every item, as many at once as the background budget runs.

        The first exception ends the lot: the jobs still running are cancelled.
        """
        return await tasks.gather([job(item) for item in items],  # type: ignore[misc]
                                  self.concurrency)

    async def _call(self, peer: str, msg_type: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._background_call(peer, msg_type, body)

    # ================================================================== range transfer

    def unowned(self, limit: int) -> list[tuple[str, str, list[Version], list[str]]]:
        """Keys held here that this node no longer replicates, with their replicas now."""
        self.refresh()
        ring = self._current_ring()
        found = []
        for (n, _, _), group in list(self._unowned.items()):
            for kid in list(group):
                bucket, key = split_storage_key(kid)
                versions = self.store.read(bucket, key)
                if not versions or self._owned(bucket, key):
                    self._classify(bucket, key, versions)  # a stale entry: file it again
                    continue
                found.append((bucket, key, versions,
                              ring.preference_list(key_hash(bucket, key), n)))
                if len(found) >= limit:
                    return found
        return found

    async def transfer_unowned(self) -> int:
        """Hand a batch of unowned ranges to their replicas; drop what all of them hold.

        Returns how many keys were dropped here.
        """
        if self._transferring:
            return 0
        self._transferring = True
        try:
            return await self._transfer_batch()
        finally:
            self._transferring = False

    async def _transfer_batch(self) -> int:
        self.refresh()
        if self._now() < self._transfer_after:
            return 0
        work = await self._handovers()
        by_peer: dict[str, list[_Handover]] = {}
        for item in work:
            for peer in item.replicas:
                by_peer.setdefault(peer, []).append(item)
        await self._each(lambda peer: self._hand_over(peer, by_peer[peer]), list(by_peer))
        dropped = 0
        for item in work:
            if item.confirmed.issuperset(item.replicas):
                for kid, versions in item.held.items():
                    bucket, key = split_storage_key(kid)
                    # A key written here since is kept, and handed over next round;
                    # so is one the ring gave back to this node meanwhile.
                    if not self._owned(bucket, key) and \
                            self.store.remove(bucket, key, versions):
                        dropped += 1
        if work and not dropped:
            # Nothing could move: do not read the same keys again every round.
            config = self.config
            self._transfer_after = self._now() + max(
                TRANSFER_BACKOFF_MIN, TRANSFER_BACKOFF_ROUNDS * config.ae_interval)
        return dropped

    async def _handovers(self) -> list[_Handover]:
        """Whole unowned ranges, up to about TRANSFER_KEYS keys, each with its own tree."""
        work: list[_Handover] = []
        count = 0
        for (n, start, end), group in list(self._unowned.items()):
            await tasks.sleep(0)  # storage reads: let foreground requests in between
            replicas = self.replicas.get(n, {}).get((start, end))
            if not replicas:
                continue  # an empty ring: nobody to hand the keys to, so keep them
            tree = MerkleTree(start, end, self.depth)
            held: dict[str, list[Version]] = {}
            for kid in list(group):
                bucket, key = split_storage_key(kid)
                versions = self.store.read(bucket, key)
                if not versions or self._owned(bucket, key):
                    self._classify(bucket, key, versions)
                    continue
                held[kid] = versions
                tree.set_digest(bucket, key, key_hash(bucket, key), key_digest(versions))
            if held:
                work.append(_Handover(n, tree, held, replicas))
                count += len(held)
                if count >= TRANSFER_KEYS:
                    break
        return work

    async def _hand_over(self, peer: str, items: list[_Handover]) -> None:
        """Bring ``peer`` every key of ``items`` it lacks; mark the items it now holds."""
        if self._is_down(peer, self._now()):
            return
        try:
            for n in sorted({item.n for item in items}):
                at_n = [item for item in items if item.n == n]
                for i in range(0, len(at_n), ROOTS_PER_MESSAGE):
                    await self._hand_over_chunk(peer, n, at_n[i:i + ROOTS_PER_MESSAGE])
        except DynamoError as exc:
            log.debug("%s: handing ranges to %s waits: %s", self.name, peer, exc)

    async def _hand_over_chunk(self, peer: str, n: int, chunk: list[_Handover]) -> None:
        reply = await self._call(peer, "ae_roots", {
            "n": n, "depth": self.depth,
            "ranges": [[item.tree.start, item.tree.end] for item in chunk]})
        roots = reply["roots"]
        if len(roots) != len(chunk):
            raise DynamoError(f"{peer} answered {len(roots)} roots for {len(chunk)} ranges")
        lagging = None in roots and self._waiting_for_view(peer)
        if None not in roots:
            self._lagging.pop(peer, None)
        for item, root in zip(chunk, roots, strict=True):
            if root is None:
                if lagging:
                    continue  # its ring is not this one yet: ask again next round
                await self._send_keys(peer, sorted(item.held), handing_off=True)
            elif root != item.tree.root():
                await self._repair_range(peer, n, item.tree, handing_off=True)
            item.confirmed.add(peer)

    def _waiting_for_view(self, peer: str) -> bool:
        """Whether to keep waiting for gossip to bring ``peer`` this node's ring."""
        now = self._now()
        since = self._lagging.setdefault(peer, now)
        wait = max(VIEW_WAIT_MIN, VIEW_WAIT_ROUNDS * self.config.gossip_interval)
        return now - since < wait

    # ================================================================== tombstones

    def _schedule_reap(self, when: float, kid: str) -> None:
        heapq.heappush(self._reap_queue, (when, kid))
        if len(self._reap_queue) > 2 * len(self._tombstones) + 1024:
            # Entries of keys written again since pile up; start over from what is true.
            grace = self.config.tombstone_grace
            self._reap_queue = [(ts + grace, k) for k, ts in self._tombstones.items()]
            heapq.heapify(self._reap_queue)

    async def reap_tombstones(self) -> None:
        """Delete tombstones every home holds, once they are older than the grace period.

        The first home of a key decides, so the homes do not race each other, and only
        while it believes every other home up: a home that is down may still hold the
        live value the tombstone deletes, and reaping then would let it come back.
        """
        now = self._now()
        grace = self.config.tombstone_grace
        due: dict[str, None] = {}
        while self._reap_queue and self._reap_queue[0][0] <= now and len(due) < REAP_BATCH:
            _, kid = heapq.heappop(self._reap_queue)
            if kid in self._tombstones:
                due[kid] = None
        for kid in due:
            newest = self._tombstones.get(kid)
            if newest is None:
                continue
            if now - newest <= grace:
                self._schedule_reap(newest + grace, kid)
                continue
            bucket, key = split_storage_key(kid)
            homes = self._current_ring().preference_list(
                key_hash(bucket, key), self.config.bucket(bucket).n)
            if homes and homes[0] == self.name and not any(
                    self._is_down(p, now) for p in homes[1:]):
                versions = self.store.read(bucket, key)
                if versions and all(v.tombstone for v in versions) and \
                        await self._reap_everywhere(bucket, key, versions, homes[1:]):
                    continue
            if kid in self._tombstones:
                self._schedule_reap(now + REAP_RETRY, kid)

    async def _reap_everywhere(self, bucket: str, key: str, versions: list[Version],
                               peers: Sequence[str]) -> bool:
        """Reap the key on ``peers`` and here if every one holds exactly ``versions``."""
        digest = key_digest(versions)
        try:
            for peer in peers:
                reply = await self._call(peer, "replica_get", {"bucket": bucket,
                                                               "key": key, "own": True})
                theirs = [Version.from_wire(v) for v in reply["versions"]]
                if key_digest(theirs) != digest:
                    return False
            for peer in peers:
                await self._call(peer, "reap", {"bucket": bucket, "key": key,
                                                "versions": [v.to_wire() for v in versions]})
        except DynamoError as exc:
            log.debug("%s: reaping %s waits: %s", self.name, key_id(bucket, key), exc)
            return False
        if self.store.remove(bucket, key, versions):
            self.tombstones_reaped += 1
        return True

    def is_filling(self, bucket: str, key: str) -> bool:
        """Whether this node's "not found" for the key is weak: its range is one this node
        may not have received yet, or one it does not replicate in its view of the ring
        (a stand-in, or a node that has not heard of the change that gave it the range)."""
        self.refresh()
        return not self._owned(bucket, key) or (
            bool(self.filling) and self._slot(bucket, key) in self.filling)

    def keys_held(self) -> int:
        """Keys this node holds versions of: those it replicates plus those it hands off."""
        self.refresh()
        return (sum(len(t) for trees in self.trees.values() for t in trees.trees())
                + sum(len(group) for group in self._unowned.values()))

    def stats(self) -> dict[str, Any]:
        self.refresh()
        return {"exchanges": self.exchanges, "keys_sent": self.keys_sent,
                "keys_fetched": self.keys_fetched, "keys_handed_off": self.keys_handed_off,
                "keys_shipped": self.keys_shipped,
                "tombstones_reaped": self.tombstones_reaped,
                "keys_replicated": sum(len(t) for trees in self.trees.values()
                                       for t in trees.trees()),
                "unowned": sum(len(group) for group in self._unowned.values()),
                "tombstones": len(self._tombstones),
                "ranges_filling": len(self.filling),
                "ranges": {f"n={n}": len(t.ranges()) for n, t in self.trees.items()}}
