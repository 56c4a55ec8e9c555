"""Members' join and leave orders: how gossip records the cluster's history for strategy 3.

Strategy 3 replays the history of joins and leaves that the member records carry, so the
orders must come out the same on every node once gossip has spread, whatever happened
concurrently. The protocol logic is tested on :class:`Membership` objects gossiping with one
another (through the wire format, as the node does); what only a node shows (the order is
saved in ``node.cbor`` and survives a restart, a wiped node takes it back, ``dynamo join``)
is tested on the simulator.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from dynamo_core.hookspecs import MemberInfo
from dynamo_core.membership import Member, Membership, removal_of
from dynamo_core.plugins import Registry, make_plugin_manager
from dynamo_core.ring import Ring, partition_ends
from dynamo_core.sim import SimCluster

REGISTRY = Registry(make_plugin_manager())
STRATEGY_3 = REGISTRY.partition_strategy("strategy-3")
Q = 256
OPTIONS = {"strategy": "strategy-3", "partitions": Q}


def node(name: str, seeds: tuple[str, ...] = ("tcp://seed:1",), **record: Any) -> Membership:
    """A node's membership as it starts: alone, joining when it has seeds."""
    status = "joining" if seeds else "up"
    me = Member(name, f"tcp://{name}:1", 1, (), **{"status": status, **record})
    return Membership(me, STRATEGY_3, OPTIONS, seeds)


def gossip(a: Membership, b: Membership) -> None:
    """One gossip exchange as the node runs it: ``a`` sends its records, ``b`` merges them
    and answers with its own, ``a`` merges those; every record crosses the wire format."""
    b.merge(Member.from_wire(r) for r in a.to_wire())
    a.merge(Member.from_wire(r) for r in b.to_wire())


def spread(nodes: list[Membership], rng: random.Random, rounds: int = 40) -> None:
    for _ in range(rounds):
        a, b = rng.sample(nodes, 2)
        gossip(a, b)


def owners(ring: Ring) -> dict[int, str]:
    return {end: ring.primary(end) for end in partition_ends(Q)}


def moved(before: Ring, after: Ring) -> dict[int, tuple[str, str]]:
    old, new = owners(before), owners(after)
    return {end: (old[end], new[end]) for end in old if old[end] != new[end]}


def record(m: Membership, name: str) -> Member:
    member = m.get(name)
    assert member is not None, name
    return member


def orders(m: Membership) -> dict[str, tuple[int, int]]:
    return {r.name: (r.join_order, r.leave_order) for r in m.members()}


def formed(names: list[str], seed: int = 0) -> list[Membership]:
    """A cluster whose members joined one after another through the first one."""
    nodes = [node(names[0], seeds=())]
    for name in names[1:]:
        nodes.append(node(name))
        gossip(nodes[-1], nodes[0])
    spread(nodes, random.Random(seed))
    assert all(n.ring == nodes[0].ring for n in nodes)
    return nodes


# ====================================================================== the record


def test_a_record_carries_its_orders_through_the_wire() -> None:
    record = Member("a", "tcp://a:1", 2, (5,), "removed", 7, join_order=3, leave_order=9)
    assert Member.from_wire(record.to_wire()) == record


def test_a_record_from_a_node_that_predates_orders_reads_as_not_chosen() -> None:
    wire = Member("a", "tcp://a:1", 1, (), "up", 4).to_wire()
    del wire["join_order"], wire["leave_order"]
    parsed = Member.from_wire(wire)
    assert (parsed.join_order, parsed.leave_order) == (0, 0)


@pytest.mark.parametrize("field", ["join_order", "leave_order"])
@pytest.mark.parametrize("bad", [-1, True, 1.5, "3", None, 1 << 62])
def test_a_bad_order_is_refused_by_name(field: str, bad: object) -> None:
    wire = Member("a", "tcp://a:1", 1, (), "removed", 4, 1, 2).to_wire()
    wire[field] = bad
    with pytest.raises(ValueError, match=field):
        Member.from_wire(wire)


@pytest.mark.parametrize("status", ["up", "joining"])
def test_a_member_on_the_ring_with_a_leave_order_is_refused(status: str) -> None:
    wire = Member("a", "tcp://a:1", 1, (), status, 4, 1, 2).to_wire()
    with pytest.raises(ValueError, match="leave_order"):
        Member.from_wire(wire)


# ====================================================================== joins


def test_a_first_node_chooses_its_order_when_a_second_one_arrives() -> None:
    first, second = node("z", seeds=()), node("a")
    assert first.me.join_order == 0  # alone: nothing to be ordered against
    gossip(second, first)
    gossip(second, first)
    # The first node heard of the second (not chosen yet: the newest), so it is 1; the
    # second then learns of 1 and comes after it, whatever the names' order.
    assert orders(first) == orders(second) == {"a": (2, 0), "z": (1, 0)}
    assert first.ring == second.ring
    assert Counter(owners(first.ring).values()) == {"a": Q // 2, "z": Q // 2}


def test_a_node_joining_a_running_cluster_is_the_newest_and_takes_only_its_share() -> None:
    nodes = formed(["n1", "n2", "n3", "n4"])
    before = nodes[0].ring
    joiner = node("a0")  # a name sorting first: the order, not the name, makes it newest
    gossip(joiner, nodes[1])
    assert joiner.me.join_order == 1 + max(o for o, _ in orders(nodes[1]).values())
    # The seed's view already has the joiner as the newest (its order not chosen yet when
    # the seed merged it), so choosing the order does not change that view's ring.
    assert nodes[1].ring == joiner.ring
    spread([*nodes, joiner], random.Random(1))
    changes = moved(before, joiner.ring)
    assert {new for _, new in changes.values()} == {"a0"}
    assert len(changes) in (Q // 5, -(-Q // 5))
    assert all(n.ring == joiner.ring for n in nodes)


def test_concurrent_joins_through_different_seeds_converge_on_one_ring() -> None:
    nodes = formed(["n1", "n2", "n3", "n4"])
    before = nodes[0].ring
    top = nodes[0].next_order()
    d, e = node("d"), node("e")
    gossip(d, nodes[0])  # each unaware of the other
    gossip(e, nodes[3])
    assert d.me.join_order == e.me.join_order == top  # a tie, broken by name
    assert d.ring != e.ring
    everyone = [*nodes, d, e]
    spread(everyone, random.Random(2))
    assert len({n.ring for n in everyone}) == 1
    changes = moved(before, d.ring)
    assert {new for _, new in changes.values()} == {"d", "e"}
    # Both take their share of the six (give or take one), and nothing else moves.
    assert all(abs(Counter(owners(d.ring).values())[n] - Q / 6) < 1 for n in ("d", "e"))


def test_nodes_started_together_with_seeds_agree_on_one_ring() -> None:
    names = [f"n{i}" for i in range(1, 7)]
    nodes = [node(name) for name in names]
    spread(nodes, random.Random(3), rounds=60)
    assert len({n.ring for n in nodes}) == 1
    assert len({tuple(orders(n).items()) for n in nodes}) == 1
    assert all(order > 0 for order, _ in orders(nodes[0]).values())
    assert Counter(owners(nodes[0].ring).values()).keys() == set(names)


# ====================================================================== leaves


def test_a_leaving_node_stamps_its_leave_and_only_its_partitions_move() -> None:
    nodes = formed(["n1", "n2", "n3", "n4", "n5"])
    before = nodes[0].ring
    leaver = nodes[2]
    joined = leaver.me.join_order
    leaver.update_me(status="leaving")
    assert leaver.me.leave_order == leaver.next_order() - 1 > joined
    leaver.update_me(status="removed")  # done handing off: keeps the leave it had
    assert leaver.me.leave_order == leaver.next_order() - 1
    spread(nodes, random.Random(4))
    stay = [n for n in nodes if n is not leaver]
    assert len({n.ring for n in stay}) == 1
    changes = moved(before, stay[0].ring)
    assert {old for old, _ in changes.values()} == {"n3"}
    assert len(changes) == Counter(owners(before).values())["n3"]


def test_a_removal_is_stamped_by_the_node_that_makes_it() -> None:
    nodes = formed(["n1", "n2", "n3", "n4", "n5"])
    before = nodes[0].ring
    top = nodes[0].next_order()
    nodes[0].merge([removal_of(record(nodes[0], "n2"))])  # what `dynamo remove n2` does
    removed = nodes[0].get("n2")
    assert removed is not None and (removed.status, removed.leave_order) == ("removed", top)
    spread(nodes, random.Random(5))
    # Everyone, the removed node included, holds the same record of the removal.
    assert {n.get("n2") for n in nodes} == {nodes[0].get("n2")}
    stay = nodes[:1] + nodes[2:]
    assert len({n.ring for n in stay}) == 1
    assert {old for old, _ in moved(before, stay[0].ring).values()} == {"n2"}


def test_a_removed_node_told_to_join_again_takes_back_its_place() -> None:
    nodes = formed(["n1", "n2", "n3", "n4", "n5"])
    before = nodes[0].ring
    joined = nodes[3].me.join_order
    nodes[0].merge([removal_of(record(nodes[0], "n4"))])
    spread(nodes, random.Random(6))
    assert nodes[3].me.status == "removed" and nodes[0].ring != before
    nodes[3].join_again()
    me = nodes[3].me
    assert (me.status, me.join_order, me.leave_order) == ("joining", joined, 0)
    spread(nodes, random.Random(7))
    # The removal is undone in the history: every view is the ring from before it.
    assert all(n.ring == before for n in nodes)


def test_a_node_restarted_with_an_empty_data_dir_takes_back_its_join_order() -> None:
    nodes = formed(["n1", "n2", "n3", "n4"])
    before = nodes[0].ring
    old = nodes[1].me
    wiped = node("n2")  # a fresh record: version 1, no order
    gossip(wiped, nodes[0])
    assert (wiped.me.join_order, wiped.me.version) == (old.join_order, old.version + 1)
    spread([wiped, *nodes[:1], *nodes[2:]], random.Random(8))
    assert wiped.ring == nodes[0].ring == before


def test_a_node_back_at_another_address_with_an_empty_data_dir_is_known_there() -> None:
    """Its fresh record (version 1) loses to what the cluster remembers, but the record it
    announces above that keeps its new address: every node learns where it is now."""
    nodes = formed(["n1", "n2", "n3", "n4"])
    old = nodes[1].me
    moved_n2 = Membership(Member("n2", "tcp://elsewhere:2", 1, (), "joining"), STRATEGY_3,
                          OPTIONS, ("tcp://n1:1",))
    gossip(moved_n2, nodes[0])
    assert moved_n2.me.address == "tcp://elsewhere:2" and moved_n2.me.version > old.version
    spread([moved_n2, *nodes[:1], *nodes[2:]], random.Random(9))
    assert {record(n, "n2").address for n in [nodes[0], *nodes[2:]]} == {"tcp://elsewhere:2"}


# ====================================================================== what a strategy is handed


class Recording:
    """A strategy that records the members it is handed (one partition, first name)."""

    def __init__(self, sees_departed: bool) -> None:
        self.sees_departed = sees_departed
        self.seen: list[MemberInfo] = []

    def partition_count(self, options: Any) -> int:
        return 1

    def initial_tokens(self, name: str, capacity: int, options: Any, rng: Any) -> list[int]:
        return []

    def ring_tokens(self, members: Any, options: Any) -> dict[int, str]:
        self.seen = list(members)
        return {partition_ends(1)[0]: min(m.name for m in members if not m.leave_order)}


@pytest.mark.parametrize("sees_departed", [False, True])
def test_only_a_strategy_that_asks_is_handed_the_departed_members(sees_departed: bool) -> None:
    strategy = Recording(sees_departed)
    me = Member("a", "tcp://a:1", 1, (), "up", 3, join_order=1)
    view = Membership(me, strategy, {})
    view.merge([Member("b", "tcp://b:1", 2, (), "up", 2, join_order=2),
                Member("c", "tcp://c:1", 1, (), "removed", 9, join_order=3, leave_order=4),
                Member("d", "tcp://d:1", 1, (), "removed", 9)])  # no leave order: no history
    assert view.ring.nodes == {"a"}
    expected = [MemberInfo("a", 1, (), 1), MemberInfo("b", 2, (), 2)]
    if sees_departed:
        expected.append(MemberInfo("c", 1, (), 3, 4))
    assert strategy.seen == expected


# ====================================================================== on the simulator


CONFIG: dict[str, Any] = {
    "cluster": {"gossip_interval": 0.2, "heartbeat_interval": 0.2, "request_timeout": 1.0},
    "anti_entropy": {"interval": 0.25},
}


def view(cl: SimCluster, name: str) -> dict[str, tuple[int, int]]:
    return orders(cl.core(name).membership)


def test_join_orders_on_the_simulator_restart_join_and_rejoin() -> None:
    cl = SimCluster(4, seed=41, config=CONFIG)
    cl.start()
    names = list(cl.nodes)
    settled = view(cl, "n1")
    assert all(view(cl, n) == settled for n in names)
    assert all(order > 0 for order, _ in settled.values())
    ring = cl.core("n1").membership.ring

    # A restart with its data: the order comes back from node.cbor, the ring stays.
    cl.restart("n2")
    assert cl.core("n2").membership.me.join_order == settled["n2"][0]
    cl.run(1.0)
    assert all(cl.core(n).membership.ring == ring for n in names)

    # A node started alone and told to join comes after everyone.
    cl.add_node("n5", seeds=[])
    cl.client(via=["n5"]).join("n5", seed="n1")
    cl.run_until(lambda: all(view(cl, n).get("n5", (0, 0))[0] > 0 for n in names), 10,
                 "every node to know n5's order")
    assert view(cl, "n5")["n5"][0] == 1 + max(o for o, _ in settled.values())
    with5 = cl.core("n5").membership.ring
    cl.run_until(lambda: all(cl.core(n).membership.ring == with5 for n in cl.nodes), 10,
                 "every node to compute the ring with n5")

    # Removed, then told to join again: back in its old place, so back to the same ring.
    cl.client(via=["n1"]).remove("n3", node="n1")
    cl.run_until(lambda: all(view(cl, n)["n3"][1] > 0 for n in cl.nodes), 10,
                 "every node to see n3's removal")
    cl.client(via=["n3"]).join("n3", seed="n1", keep_data=True)
    cl.run_until(lambda: all(cl.core(n).membership.ring == with5 for n in cl.nodes), 10,
                 "every node to see n3 back in its old place")
    assert view(cl, "n3")["n3"] == (settled["n3"][0], 0)
    cl.close()


def test_a_record_that_only_bumps_its_version_does_not_rebuild_the_ring() -> None:
    nodes = formed(["n1", "n2", "n3"])
    ring = nodes[0].ring
    nodes[1].update_me(status="up")  # joining -> up: a new version, the same place
    gossip(nodes[1], nodes[0])
    assert nodes[0].ring is ring
