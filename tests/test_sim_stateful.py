"""Hypothesis explores sequences of operations, faults and membership changes on a
simulated cluster, and the history checker judges every sequence it tries.

Rules: cart adds, register puts and deletes through any node; crashes and restarts; a
partition and its heal; time passing; a new node joining, a node leaving gracefully, a
dead node removed. Invariants after every step: bounded queues. At the end, every fault is
healed, the cluster converges, and no acknowledged write may be missing, no superseded
value may be back, no request may have been answered twice.

Hypothesis shrinks a failing sequence to a short one and prints it as the steps to replay.
The examples are derandomized (the same every run), so the suite is not flaky; run with
``--hypothesis-seed`` and ``derandomize=False`` to explore further.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dynamo_core.errors import DynamoError
from dynamo_core.sim import SimCluster, check
from dynamo_core.sim.clients import CART_BUCKET, REGISTER_BUCKET, History, Operation
from dynamo_core.versions import Version, live, reconcile

NODES = ["n1", "n2", "n3", "n4"]
NEW_NODES = ["n5", "n6"]
CARTS = ["cart0", "cart1"]
REGISTERS = ["reg0", "reg1"]
#: Virtual seconds the healed cluster gets to converge at the end.
CONVERGE_WITHIN = 120.0


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cluster = SimCluster(len(NODES), seed=7, config={"cluster": {"gossip_interval": 0.5}})
        self.cluster.start()
        self.client = self.cluster.client(timeout=3.0)
        self.history = History()
        self.items = 0
        self.cut: set[tuple[str, str]] | None = None
        #: nodes gone for good: removed from the cluster, or left it
        self.gone: set[str] = set()
        self.removed = False

    # ------------------------------------------------------------------ helpers

    def members(self) -> list[str]:
        return [n for n in self.cluster.nodes if n not in self.gone]

    def running(self) -> list[str]:
        return [n for n in self.members() if self.cluster.nodes[n].up]

    def _op(self, kind: str, bucket: str, key: str, value: Any = None) -> Operation:
        return self.history.new(client="h", kind=kind, bucket=bucket, key=key,
                                start=self.cluster.world.now, value=value)

    def _finish(self, op: Operation, outcome: str, error: str = "") -> None:
        op.outcome, op.error, op.end = outcome, error, self.cluster.world.now

    def _write(self, op: Operation, node: str, write: Any) -> None:
        try:
            write()
        except DynamoError as exc:
            self._finish(op, "unknown", str(exc))
        else:
            self._finish(op, "ok")
        op.node = node

    # ------------------------------------------------------------------ client operations

    @precondition(lambda self: self.running())
    @rule(key=st.sampled_from(CARTS), pick=st.integers(0, 10))
    def add_to_cart(self, key: str, pick: int) -> None:
        node = self.running()[pick % len(self.running())]
        self.items += 1
        op = self._op("add", CART_BUCKET, key, f"item-{self.items}")
        try:
            read = self.client.get(key, bucket=CART_BUCKET, node=node)
        except DynamoError as exc:
            self._finish(op, "refused", str(exc))
            return
        items = sorted({i for cart in read.values if isinstance(cart, list) for i in cart})
        op.seen = items
        self._write(op, node, lambda: self.client.put(
            key, [*items, op.value], read.context, bucket=CART_BUCKET, node=node))

    @precondition(lambda self: self.running())
    @rule(key=st.sampled_from(REGISTERS), pick=st.integers(0, 10), delete=st.booleans())
    def write_register(self, key: str, pick: int, delete: bool) -> None:
        node = self.running()[pick % len(self.running())]
        value = None if delete else f"v{len(self.history.operations) + 1}"
        op = self._op("delete" if delete else "put", REGISTER_BUCKET, key, value)
        try:
            read = self.client.get(key, bucket=REGISTER_BUCKET, node=node)
        except DynamoError as exc:
            self._finish(op, "refused", str(exc))
            return
        op.seen = list(read.values)
        if delete:
            self._write(op, node, lambda: self.client.delete(
                key, read.context, bucket=REGISTER_BUCKET, node=node))
        else:
            self._write(op, node, lambda: self.client.put(
                key, value, read.context, bucket=REGISTER_BUCKET, node=node))

    # ------------------------------------------------------------------ faults

    @precondition(lambda self: len(self.running()) > 2)
    @rule(pick=st.integers(0, 10), clean=st.booleans())
    def crash(self, pick: int, clean: bool) -> None:
        node = self.running()[pick % len(self.running())]
        (self.cluster.stop if clean else self.cluster.crash)(node)

    @precondition(lambda self: len(self.running()) < len(self.members()))
    @rule(pick=st.integers(0, 10))
    def restart(self, pick: int) -> None:
        down = [n for n in self.members() if not self.cluster.nodes[n].up]
        self.cluster.restart(down[pick % len(down)])

    @precondition(lambda self: self.cut is None and len(self.members()) > 1)
    @rule(side=st.sets(st.integers(0, 10), min_size=1), one_way=st.booleans())
    def partition(self, side: set[int], one_way: bool) -> None:
        members = self.members()
        chosen = {members[i % len(members)] for i in side}
        if len(chosen) < len(members):
            self.cut = self.cluster.partition(chosen, one_way=one_way)

    @precondition(lambda self: self.cut is not None)
    @rule()
    def heal(self) -> None:
        self.cluster.heal(self.cut)
        self.cut = None

    @rule(seconds=st.floats(0.1, 15.0))
    def time_passes(self, seconds: float) -> None:
        self.cluster.run(seconds)

    # ------------------------------------------------------------------ membership

    @precondition(lambda self: len(self.cluster.nodes) < len(NODES) + len(NEW_NODES)
                  and self.running())
    @rule()
    def join_a_new_node(self) -> None:
        name = NEW_NODES[len(self.cluster.nodes) - len(NODES)]
        self.cluster.add_node(name, seeds=self.running())

    @precondition(lambda self: len(self.running()) > 3 and len(self.members()) > 3)
    @rule(pick=st.integers(0, 10))
    def leave(self, pick: int) -> None:
        node = self.running()[pick % len(self.running())]
        try:
            self.client.leave(node)
        except DynamoError:
            return
        self.gone.add(node)

    @precondition(lambda self: not self.removed and len(self.running()) > 3)
    @rule(pick=st.integers(0, 10))
    def remove_a_dead_node(self, pick: int) -> None:
        """At most once: a removed node's copies are declared gone, and with W=2 a second
        loss could take every copy of an acknowledged write with it (by design)."""
        node = self.running()[pick % len(self.running())]
        self.cluster.crash(node)
        other = next(n for n in self.running())
        try:
            self.client.remove(node, other)
        except DynamoError:
            self.cluster.restart(node)
            return
        self.gone.add(node)
        self.removed = True

    # ------------------------------------------------------------------ invariants

    @invariant()
    def queues_stay_bounded(self) -> None:
        config = self.cluster.config
        for node in self.cluster.up():
            core = node.core
            assert core is not None
            assert core.coordinator.pending() <= config.max_pending_requests
            assert core.hints.pending() <= config.handoff_max_hints
            assert len(core.tasks.tasks) < 200, f"{node.name} runs {len(core.tasks.tasks)} tasks"

    def teardown(self) -> None:
        try:
            self._heal_and_check()
        finally:
            self.cluster.close()

    def _heal_and_check(self) -> None:
        if self.cut is not None:
            self.cluster.heal(self.cut)
        for name in self.members():
            node = self.cluster.nodes[name]
            if not node.up and not node.has_left:
                self.cluster.restart(name)
        keys = [*((CART_BUCKET, k) for k in CARTS), *((REGISTER_BUCKET, k) for k in REGISTERS)]
        self.cluster.run_until(lambda: self.cluster.divergence(keys) is None, CONVERGE_WITHIN,
                               "the healed cluster to converge")
        verdict = check(self.history, self._final(keys))
        assert verdict.ok, "\n".join(verdict.findings())

    def _final(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], list[Any]]:
        final = {}
        for bucket, key in keys:
            versions: list[Version] = []
            for node in self.cluster.up():
                assert node.core is not None
                versions.extend(node.core.store.read(bucket, key))
            final[(bucket, key)] = [v.value for v in live(reconcile(versions))]
        return final


ClusterMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_cluster_histories_hold_every_invariant = ClusterMachine.TestCase
