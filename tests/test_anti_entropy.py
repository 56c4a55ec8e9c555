"""Merkle anti-entropy across ring changes: the trees and work lists a ring change leaves.

The scenario tests that used to run here against real ``dynamo node`` processes (a wiped
node refilled, a node taking back its place in the ring, deletes while a home is down,
tombstone reaping) are specifications of protocol logic: they run on the simulator now,
with the same names, in ``test_sim_anti_entropy.py``.
"""

from __future__ import annotations

import random

from dynamo_core import config as config_mod
from dynamo_core.core import NodeCore
from dynamo_core.membership import Member
from dynamo_core.merkle import RangeTrees, key_id
from dynamo_core.ring import key_hash
from dynamo_core.versions import Clock, Version

# ====================================================================== trees across ring changes


def test_after_each_ring_change_the_trees_and_work_lists_match_a_rebuild_from_storage():
    """A ring change re-files what the trees already know instead of scanning storage;
    the result must be exactly what a scan would give: the same trees, the same keys to
    hand over, the same tombstones waiting to be reaped."""
    rng = random.Random(3)
    cfg = config_mod.from_mapping({"storage": {"engine": "memory"},
                                   "buckets": {"pairs": {"n": 2, "r": 1, "w": 1}}})
    node = NodeCore("n1", "tcp://127.0.0.1:1", config=cfg, rng=random.Random(1),
                    wall_clock=lambda: 1_800_000_000.0)
    try:
        ae_ = node.anti_entropy
        ae_.refresh()  # alone on the ring: it replicates everything
        for i in range(400):
            bucket = "pairs" if i % 3 == 0 else "default"
            dead = i % 5 == 0
            node.store.apply(bucket, f"k{i}", [Version(None if dead else i, Clock.empty(),
                                                       ("a", i + 1), 1.0, dead)])

        def member(name: str, version: int = 1, status: str = "up") -> Member:
            tokens = tuple(sorted(rng.getrandbits(128) for _ in range(8)))
            return Member(name, f"tcp://127.0.0.1:{version}", 1, tokens, status, version)

        changes = [[member("n2"), member("n3")], [member("n4")],
                   [member("n3", 2, "removed")], [member("n5")], [member("n2", 2, "leaving")]]
        for change in changes:
            node.membership.merge(change)
            ae_.refresh()
            ring = node.membership.ring
            for n, trees in ae_.trees.items():
                fresh = RangeTrees(trees.ranges(), trees.depth)
                fresh.rebuild((b, k, vs) for b, k, vs in node.store.items()
                              if cfg.bucket(b).n == n)
                assert [t.root() for t in trees.trees()] == [t.root() for t in fresh.trees()]
            unowned, tombstones = set(), set()
            for b, k, vs in node.store.items():
                if "n1" not in ring.preference_list(key_hash(b, k), cfg.bucket(b).n):
                    unowned.add(key_id(b, k))
                elif all(v.tombstone for v in vs):
                    tombstones.add(key_id(b, k))
            assert ae_.stats()["unowned"] == len(unowned)
            assert {key_id(b, k) for b, k, _, _ in ae_.unowned(10_000)} == unowned
            assert set(ae_._tombstones) == tombstones
            assert 0 < len(unowned) < 400
    finally:
        node.close()
