"""Versions and their causality (vector clocks with dots), as specifications.

A :class:`Clock` is a set of events ``(actor, counter)``. The property tests build clocks
from a known event set (a reference model) and check every operation against plain set
algebra: ``covers`` is membership, ``descends`` is inclusion, ``merge`` is union, and equality
is equality of event sets whatever the timestamps.

Versions are checked on generated *histories*: writes by random actors, each reading an
arbitrary set of earlier writes (stale ones included), with the true causality ("which writes
did this writer see, directly or not") tracked beside the clocks. Without truncation a version
obsoletes exactly the writes its writer saw; with clocks truncated to one to three entries and
skewed, non-monotonic timestamps, it may forget some (a false conflict) but never obsoletes a
write it did not see, and in particular never makes an older version look newer than its
descendant.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_core.versions import (
    Clock,
    Version,
    context_of,
    context_text,
    decode_context,
    encode_context,
    live,
    next_dot,
    reconcile,
)

FAST = settings(max_examples=40, deadline=None)
HISTORIES = settings(max_examples=60, deadline=None)
FUZZ = settings(max_examples=80, deadline=None)

ACTORS = ("a", "b", "c", "d")
#: Counters in generated clocks stay below this; ``events_of`` looks a little further.
MAX_COUNTER = 6
HORIZON = MAX_COUNTER + 12

actors = st.sampled_from(ACTORS)
#: Wall clocks are not trusted: timestamps are skewed, negative, repeated, out of order.
timestamps = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


def events_of(clock: Clock) -> frozenset[tuple[str, int]]:
    """The events a clock covers, read through ``covers`` alone (no representation)."""
    return frozenset((a, c) for a in ACTORS for c in range(1, HORIZON) if clock.covers((a, c)))


# =========================================================================== clock strategies


@dataclass(frozen=True)
class Built:
    """A clock and the event set it was built from: the reference model."""

    clock: Clock
    events: frozenset[tuple[str, int]]


@st.composite
def built_clocks(draw: st.DrawFn) -> Built:
    """A contiguous vector from ``Clock.of`` plus isolated events added in any order."""
    base = draw(st.dictionaries(actors, st.integers(0, MAX_COUNTER), max_size=len(ACTORS)))
    clock = Clock.of(base, draw(timestamps))
    events = {(a, c) for a, n in base.items() for c in range(1, n + 1)}
    extra = draw(st.lists(st.tuples(actors, st.integers(1, MAX_COUNTER + 3), timestamps),
                          max_size=8))
    for actor, counter, ts in extra:
        clock = clock.add((actor, counter), ts)
        events.add((actor, counter))
    return Built(clock, frozenset(events))


clocks = built_clocks().map(lambda b: b.clock)


@st.composite
def same_events_twice(draw: st.DrawFn) -> tuple[Clock, Clock]:
    """Two clocks of one event set, built in different orders with different timestamps."""
    events = draw(st.lists(st.tuples(actors, st.integers(1, MAX_COUNTER)), max_size=12))
    first = Clock.empty()
    for event in events:
        first = first.add(event, draw(timestamps))
    second = Clock.empty()
    for event in draw(st.permutations(events)):
        second = second.add(event, draw(timestamps))
        if draw(st.booleans()):
            second = second.add(event, draw(timestamps))  # the same event seen twice
    return first, second


#: Pairs where the interesting premises (equal, ordered) actually occur, plus arbitrary ones.
clock_pairs = st.one_of(
    st.tuples(clocks, clocks),
    same_events_twice(),
    st.tuples(clocks, clocks).map(lambda p: (p[0].merge(p[1]), p[0])),
    st.tuples(clocks, clocks).map(lambda p: (p[0], p[0].merge(p[1]))),
)


@st.composite
def clock_chains(draw: st.DrawFn) -> tuple[Clock, Clock, Clock]:
    """Three clocks ``a >= b >= c`` (each grown from the next by a merge)."""
    c = draw(clocks)
    b = c.merge(draw(clocks))
    a = b.merge(draw(clocks))
    return a, b, c


clock_triples = st.one_of(st.tuples(clocks, clocks, clocks), clock_chains())


# =========================================================================== a clock is a set


@FAST
@given(built_clocks())
def test_a_clock_covers_exactly_the_events_it_was_built_from(built: Built) -> None:
    assert events_of(built.clock) == built.events
    for actor in ACTORS:
        assert built.clock.counter(actor) == max(
            (c for a, c in built.events if a == actor), default=0)


@FAST
@given(built_clocks(), built_clocks())
def test_descends_is_inclusion_of_event_sets(x: Built, y: Built) -> None:
    assert x.clock.descends(y.clock) == (x.events >= y.events)


@FAST
@given(clocks)
def test_descends_is_reflexive(a: Clock) -> None:
    assert a.descends(a)
    assert a.descends(Clock.empty())


@FAST
@given(clock_pairs)
def test_descends_is_antisymmetric(pair: tuple[Clock, Clock]) -> None:
    a, b = pair
    if a.descends(b) and b.descends(a):
        assert a == b


@FAST
@given(clock_triples)
def test_descends_is_transitive(triple: tuple[Clock, Clock, Clock]) -> None:
    a, b, c = triple
    if a.descends(b) and b.descends(c):
        assert a.descends(c)


@FAST
@given(clock_pairs)
def test_dominates_is_strict_descent(pair: tuple[Clock, Clock]) -> None:
    a, b = pair
    assert a.dominates(b) == (a.descends(b) and a != b)
    assert a.dominates(b) == (a.descends(b) and not b.descends(a))
    assert not a.dominates(a)
    assert not (a.dominates(b) and b.dominates(a))


@FAST
@given(clock_pairs)
def test_concurrent_is_symmetric_and_excludes_descent(pair: tuple[Clock, Clock]) -> None:
    a, b = pair
    assert a.concurrent(b) == b.concurrent(a)
    assert a.concurrent(b) == (not a.descends(b) and not b.descends(a))
    assert not a.concurrent(a)
    # Exactly one of: equal, a strictly newer, b strictly newer, concurrent.
    assert [a == b, a.dominates(b), b.dominates(a), a.concurrent(b)].count(True) == 1


# =========================================================================== merge


@FAST
@given(built_clocks(), built_clocks())
def test_merge_is_the_union_of_events(x: Built, y: Built) -> None:
    assert events_of(x.clock.merge(y.clock)) == x.events | y.events


@FAST
@given(clocks, clocks, clocks)
def test_merge_is_commutative_associative_and_idempotent(a: Clock, b: Clock, c: Clock) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    assert a.merge(b).merge(b) == a.merge(b)
    assert a.merge(Clock.empty()) == a == Clock.empty().merge(a)


@FAST
@given(clocks, clocks, st.one_of(clocks, st.tuples(clocks, clocks, clocks).map(
    lambda t: t[0].merge(t[1]).merge(t[2]))))
def test_merge_is_the_least_upper_bound(a: Clock, b: Clock, c: Clock) -> None:
    joined = a.merge(b)
    assert joined.descends(a) and joined.descends(b)
    if c.descends(a) and c.descends(b):
        assert c.descends(joined)
    # An upper bound built on purpose, so the premise above is not always vacuous.
    assert a.merge(c).merge(b).descends(joined)


# =========================================================================== increment


@FAST
@given(clocks, actors, timestamps)
def test_increment_dominates_its_input(clock: Clock, actor: str, ts: float) -> None:
    after = clock.increment(actor, ts)  # four actors: never truncated at the default bound
    new_dot = (actor, clock.counter(actor) + 1)
    assert after.dominates(clock)
    assert events_of(after) == events_of(clock) | {new_dot}


@FAST
@given(clocks, st.lists(actors, min_size=2, max_size=2, unique=True), timestamps, timestamps)
def test_increments_of_one_parent_by_different_actors_are_concurrent(
        parent: Clock, two: list[str], t1: float, t2: float) -> None:
    left, right = parent.increment(two[0], t1), parent.increment(two[1], t2)
    assert left.concurrent(right)
    assert left.merge(right).dominates(left) and left.merge(right).dominates(right)


@FAST
@given(clocks, actors, timestamps, timestamps)
def test_plain_increments_cannot_tell_two_writes_through_one_actor_apart(
        parent: Clock, actor: str, t1: float, t2: float) -> None:
    """Why versions carry dots: a bare clock conflates two writes made from one context."""
    assert parent.increment(actor, t1) == parent.increment(actor, t2)


@FAST
@given(clocks, actors, timestamps, st.integers(1, 3))
def test_a_truncating_increment_never_looks_older_than_its_input(
        clock: Clock, actor: str, ts: float, max_entries: int) -> None:
    after = clock.increment(actor, ts, max_entries=max_entries)
    assert len(after.vector) <= max_entries
    assert after.covers((actor, clock.counter(actor) + 1))
    assert not clock.descends(after)


# =========================================================================== equality and wire


@FAST
@given(same_events_twice())
def test_equality_ignores_timestamps_and_hash_agrees(pair: tuple[Clock, Clock]) -> None:
    a, b = pair
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


@FAST
@given(clock_pairs)
def test_hash_is_consistent_with_equality(pair: tuple[Clock, Clock]) -> None:
    a, b = pair
    if a == b:
        assert hash(a) == hash(b)
    assert (a == b) == (events_of(a) == events_of(b))


def test_equal_counters_make_equal_clocks_whenever_they_were_stamped() -> None:
    assert Clock.of({"a": 2, "b": 1}, 1.0) == Clock.of({"a": 2, "b": 1}, 99.0)
    assert Clock.of({"a": 0}) == Clock.empty()
    assert Clock.of({"a": 2}) != Clock.of({"a": 3})


@FAST
@given(clocks, st.randoms(use_true_random=False))
def test_to_wire_and_from_wire_round_trip(clock: Clock, rnd) -> None:
    wire = clock.to_wire()
    back = Clock.from_wire(cbor2.loads(cbor2.dumps(wire)))
    assert back == clock
    assert back.to_wire() == wire  # timestamps survive too: truncation still picks the same
    shuffled = list(wire)
    rnd.shuffle(shuffled)
    assert Clock.from_wire(shuffled) == clock


@FAST
@given(built_clocks())
def test_the_wire_form_is_compact(built: Built) -> None:
    """Each event is named once, and a dot the vector could absorb is folded into it."""
    wire = built.clock.to_wire()
    named = [(e[0], e[1]) for e in wire]
    assert len(named) == len(set(named)) == len(built.clock)
    vector = {e[0]: e[1] for e in wire if len(e) == 3}
    for actor, counter, *_ in (e for e in wire if len(e) == 4):
        assert (actor, counter) in built.events
        assert counter > vector.get(actor, 0) + 1  # isolated: not next to the vector


def test_contiguous_events_fold_into_the_vector_in_any_order() -> None:
    clock = Clock.empty().add(("a", 3), 3.0).add(("a", 1), 1.0).add(("a", 2), 2.0)
    assert clock == Clock.of({"a": 3})
    assert clock.to_wire() == [["a", 3, 3.0]]  # the newest stamp stays, for truncation


BAD_CLOCKS = {
    "a map": {"a": 1},
    "a string": "a:1",
    "nothing": None,
    "entry not a list": ["a"],
    "entry a tuple": [("a", 1, 0.0)],
    "entry too short": [["a", 1]],
    "entry too long": [["a", 1, 0.0, 1, 0]],
    "actor not a string": [[7, 1, 0.0]],
    "empty actor": [["", 1, 0.0]],
    "actor too long": [["x" * 257, 1, 0.0]],
    "zero counter": [["a", 0, 0.0]],
    "negative counter": [["a", -1, 0.0]],
    "negative dot counter": [["a", -3, 0.0, 1]],
    "bool counter": [["a", True, 0.0]],
    "bool dot counter": [["a", True, 0.0, 1]],
    "float counter": [["a", 1.0, 0.0]],
    "string counter": [["a", "1", 0.0]],
    "counter past 63 bits": [["a", 1 << 63, 0.0]],
    "bool timestamp": [["a", 1, False]],
    "string timestamp": [["a", 1, "now"]],
    "missing timestamp": [["a", 1, None]],
    "duplicate actor": [["a", 1, 0.0], ["a", 2, 0.0]],
}


@pytest.mark.parametrize("wire", list(BAD_CLOCKS.values()), ids=list(BAD_CLOCKS))
def test_from_wire_rejects_malformed_clocks(wire: object) -> None:
    with pytest.raises(ValueError):
        Clock.from_wire(wire)


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.integers()
    | st.floats(allow_nan=False) | st.sampled_from(["a", "b", ""]) | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=2), inner,
                                                                max_size=3),
    max_leaves=20,
)


@FUZZ
@given(junk)
def test_from_wire_answers_anything_with_a_clock_or_a_value_error(wire: object) -> None:
    try:
        clock = Clock.from_wire(wire)
    except ValueError:
        return
    assert Clock.from_wire(clock.to_wire()) == clock


# =========================================================================== truncation


@FAST
@given(built_clocks(), st.integers(1, 4), st.none() | actors)
def test_truncation_bounds_the_vector_keeps_keep_and_only_forgets(
        built: Built, max_entries: int, keep: str | None) -> None:
    clock = built.clock
    cut = clock.truncated(max_entries, keep=keep)
    assert len(cut.vector) <= max_entries
    assert len(cut.dots) <= max_entries  # isolated dots are bounded too
    assert events_of(cut) <= built.events  # knowledge is only ever dropped, never invented
    if keep is not None:
        assert cut.vector.get(keep) == clock.vector.get(keep)
        assert cut.counter(keep) == clock.counter(keep)  # keep's newest event survives
        if sum(1 for a, _, _ in clock.dots if a == keep) <= max_entries:
            assert {e for e in built.events if e[0] == keep} <= events_of(cut)
    if len(clock.vector) <= max_entries and len(clock.dots) <= max_entries:
        assert cut == clock and cut.to_wire() == clock.to_wire()
    dropped = set(clock.vector) - set(cut.vector)
    assert not any(a in dropped for a, _ in events_of(cut))  # their dots go with them
    # The oldest go first: nothing dropped was stamped later than anything kept (but keep).
    for gone in dropped:
        for stayed in set(cut.vector) - {keep}:
            assert clock.vector[gone][1] <= clock.vector[stayed][1]


@pytest.mark.parametrize("max_entries", [0, -1])
def test_truncation_needs_room_for_one_entry(max_entries: int) -> None:
    with pytest.raises(ValueError):
        Clock.of({"a": 1, "b": 1}).truncated(max_entries)


# =========================================================================== histories


@dataclass(frozen=True)
class History:
    """Writes in order, and for each the indexes of every earlier write its writer saw."""

    writes: tuple[Version, ...]
    saw: tuple[frozenset[int], ...]
    bounds: tuple[int, ...]  # the max_entries each write was truncated to


#: Few writers, so that each one's versions are often superseded by the others'.
writers = st.sampled_from(ACTORS[:3])


@st.composite
def histories(draw: st.DrawFn, truncate: bool, record_issued: bool) -> History:
    """Writes by random actors, each from the context of a random set of earlier writes
    (a client's stale or partial reads) or of whatever the coordinator's replica holds.

    Timestamps are mostly the write's position, so truncation drops the earliest writers,
    but any write may carry an arbitrary, skewed one. Every actor has a replica: it stores
    its own writes and whatever gossip delivers, and keeps only the reconciled versions, as
    the real store does. ``next_dot`` is given that replica, and, when ``record_issued``, the
    highest counter the replica recorded its actor issuing (what ``LocalStore`` keeps beside
    the versions: once truncated clocks supersede an actor's versions they no longer show
    its counter).
    """
    writes: list[Version] = []
    saw: list[frozenset[int]] = []
    bounds: list[int] = []
    replica: dict[str, list[Version]] = {a: [] for a in ACTORS}
    issued: dict[str, int] = dict.fromkeys(ACTORS, 0)
    index: dict[int, int] = {}
    for i in range(draw(st.integers(1, 12))):
        actor = draw(writers)
        if draw(st.booleans()):  # a client's arbitrary (possibly stale) reads
            read = draw(st.sets(st.integers(0, i - 1), max_size=4)) if i else set()
        else:  # a read of the coordinator's own replica
            read = {index[id(v)] for v in replica[actor]}
        bound = draw(st.integers(1, 3)) if truncate else 100
        ctx = context_of(writes[j] for j in sorted(read))
        dot = next_dot(actor, ctx, replica[actor], issued[actor] if record_issued else 0)
        version = Version(f"w{i}", ctx.truncated(bound, keep=actor), dot,
                          draw(st.one_of(st.just(float(i)), timestamps)),
                          tombstone=draw(st.booleans()))
        index[id(version)] = len(writes)
        writes.append(version)
        saw.append(frozenset(read).union(*(saw[j] for j in read)))
        bounds.append(bound)
        issued[actor] = max(issued[actor], dot[1])
        replica[actor] = reconcile([*replica[actor], version])
        for target in draw(st.sets(writers)):
            replica[target] = reconcile([*replica[target], version])
        for j, target in draw(st.lists(st.tuples(st.integers(0, i), writers), max_size=2)):
            replica[target] = reconcile([*replica[target], writes[j]])
    return History(tuple(writes), tuple(saw), tuple(bounds))


#: Without truncation the surviving versions alone always remember an actor's counter.
untruncated_histories = histories(truncate=False, record_issued=False)
truncated_histories = histories(truncate=True, record_issued=True)
any_histories = st.one_of(untruncated_histories, truncated_histories)


@HISTORIES
@given(any_histories)
def test_every_write_gets_a_fresh_dot(history: History) -> None:
    dots = [v.dot for v in history.writes]
    assert len(set(dots)) == len(dots)


@HISTORIES
@given(untruncated_histories)
def test_without_truncation_a_version_obsoletes_exactly_the_writes_its_writer_saw(
        history: History) -> None:
    for d, descendant in enumerate(history.writes):
        for a, ancestor in enumerate(history.writes):
            assert descendant.obsoletes(ancestor) == (a in history.saw[d]), (a, d)


@HISTORIES
@given(truncated_histories)
def test_truncation_never_makes_an_older_version_look_newer_than_its_descendant(
        history: History) -> None:
    for d, descendant in enumerate(history.writes):
        assert len(descendant.clock.vector) <= history.bounds[d]
        assert len(descendant.clock.dots) <= history.bounds[d]
        for a, ancestor in enumerate(history.writes):
            if a in history.saw[d]:
                assert not ancestor.obsoletes(descendant), (a, d)
            if descendant.obsoletes(ancestor):
                # Forgetting may hide an order (a false conflict), never invent one.
                assert a in history.saw[d], (a, d)


# =========================================================================== reconcile


@st.composite
def replica_states(draw: st.DrawFn) -> tuple[History, list[int]]:
    """A history and what one replica might hold of it: any writes, repeated, in any order."""
    history = draw(any_histories)
    held = draw(st.lists(st.integers(0, len(history.writes) - 1), min_size=1, max_size=16))
    return history, held


def reaches_a_member(version: Version, result: list[Version], inputs: list[Version]) -> bool:
    """Some chain of obsoletion among the inputs leads from ``version`` to a member."""
    frontier, seen = [version], {version.dot}
    while frontier:
        current = frontier.pop()
        for other in inputs:
            if other.dot not in seen and other.obsoletes(current):
                if other in result:
                    return True
                seen.add(other.dot)
                frontier.append(other)
    return False


@HISTORIES
@given(replica_states(), st.randoms(use_true_random=False))
def test_reconcile_keeps_the_causally_maximal_versions(state, rnd) -> None:
    history, held = state
    inputs = [history.writes[i] for i in held]
    result = reconcile(inputs)
    # An antichain, one version per dot, ordered by dot, drawn from the inputs.
    assert not any(x.obsoletes(y) for x in result for y in result)
    assert [v.dot for v in result] == sorted({v.dot for v in result})
    assert all(v in inputs for v in result)
    for i in set(held):
        version = history.writes[i]
        if version in result:
            continue
        # Dropped only because a version it led to is kept; and only if someone saw it.
        assert reaches_a_member(version, result, inputs)
        assert any(i in history.saw[j] for j in held)
        if max(history.bounds) == 100:  # untruncated: the kept version itself saw it
            assert any(member.obsoletes(version) for member in result)
    # Duplicates collapse and the order replicas answered in does not matter.
    shuffled = inputs * 2
    rnd.shuffle(shuffled)
    assert reconcile(shuffled) == result


versions = st.builds(
    Version,
    value=st.none() | st.integers() | st.text(max_size=3),
    clock=clocks,
    dot=st.tuples(st.sampled_from(ACTORS[:2]), st.integers(1, 3)),
    timestamp=timestamps,
    tombstone=st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(versions, max_size=6), st.randoms(use_true_random=False))
def test_reconcile_does_not_depend_on_input_order_even_for_clashing_dots(
        inputs: list[Version], rnd) -> None:
    """Two versions under one dot should not exist; if they do, every node keeps the same."""
    result = reconcile(inputs)
    shuffled = list(inputs)
    rnd.shuffle(shuffled)
    assert reconcile(shuffled) == result
    assert len({v.dot for v in result}) == len(result)
    assert not any(x.obsoletes(y) for x in result for y in result)


# =========================================================================== scenarios


def write(actor: str, read: list[Version], replica: list[Version], value: object, ts: float,
          max_entries: int = 10, tombstone: bool = False) -> Version:
    """What a coordinator does for a put: a fresh dot, the read context as the clock."""
    ctx = context_of(read)
    return Version(value, ctx.truncated(max_entries, keep=actor), next_dot(actor, ctx, replica),
                   ts, tombstone)


def test_two_puts_with_one_context_through_one_actor_are_siblings_until_a_merge() -> None:
    base = write("n1", [], [], "book", 1.0)
    replica = [base]
    alice = write("n1", [base], replica, "book+pen", 2.0)
    replica = reconcile([*replica, alice])
    bob = write("n1", [base], replica, "book+lamp", 3.0)
    replica = reconcile([*replica, bob])

    assert alice.dot != bob.dot
    assert replica == sorted([alice, bob], key=lambda v: v.dot)  # both survive, base is gone
    assert not alice.obsoletes(bob) and not bob.obsoletes(alice)

    merged = write("n1", replica, replica, "book+pen+lamp", 4.0)
    assert merged.obsoletes(alice) and merged.obsoletes(bob) and merged.obsoletes(base)
    assert context_of(replica).descends(alice.history())
    assert context_of(replica).descends(bob.history())
    assert reconcile([alice, merged, bob, base]) == [merged]


def test_a_write_with_one_siblings_context_supersedes_only_that_sibling() -> None:
    left = write("n1", [], [], "left", 1.0)
    right = write("n2", [], [], "right", 1.0)
    newer = write("n3", [left], [], "left, edited", 2.0)
    assert newer.obsoletes(left) and not newer.obsoletes(right)
    assert reconcile([left, right, newer]) == [right, newer]


def test_truncation_can_turn_an_order_into_a_false_conflict() -> None:
    first = write("a", [], [], "first", 1.0)
    second = write("b", [first], [], "second", 5.0)
    third = write("c", [second], [], "third", 6.0, max_entries=1)  # forgets a (the oldest)
    assert third.obsoletes(second)
    assert not third.obsoletes(first)  # it truly saw it, but the clock no longer says so
    assert not first.obsoletes(third)
    assert reconcile([first, third]) == [first, third]  # siblings for the resolver
    assert reconcile([first, second, third]) == [third]  # the chain still shows the order


def test_an_actor_never_reissues_a_dot_after_a_truncated_clock_supersedes_its_versions() -> None:
    x1 = write("x", [], [], "x1", 1.0)
    stale = write("y", [x1], [x1], "y1", 2.0)  # still held by some replica
    z1 = write("z", [stale], [], "z1", 3.0, max_entries=1)  # drops x, the oldest entry
    replica_x = reconcile([x1, stale, z1])
    assert replica_x == [z1]  # x's replica no longer holds anything that mentions x
    assert next_dot("x", context_of(replica_x), replica_x) == x1.dot  # versions forgot x:1
    # ... which is why the replica records the highest counter its actor issued (LocalStore)
    ctx = context_of(replica_x)
    newer = Version("x2", ctx.truncated(2, keep="x"),
                    next_dot("x", ctx, replica_x, issued=x1.dot[1]), 4.0)
    assert newer.dot != x1.dot
    assert not stale.obsoletes(newer)  # an ancestor must not supersede its descendant
    assert reconcile([stale, newer]) != []  # and a replica must not lose the key


# =========================================================================== contexts


@FAST
@given(clocks)
def test_contexts_round_trip_as_bytes_and_as_base64_text(clock: Clock) -> None:
    context = encode_context(clock)
    assert isinstance(context, bytes)
    assert decode_context(context) == clock
    assert decode_context(bytearray(context)) == clock
    assert decode_context(context_text(context)) == clock
    assert decode_context(base64.b64encode(context).decode("ascii")) == clock


@pytest.mark.parametrize("empty", [None, b"", ""])
def test_no_context_is_the_empty_clock(empty: bytes | str | None) -> None:
    assert decode_context(empty) == Clock.empty()


GARBAGE_CONTEXTS = {
    "random bytes": b"\x00garbage\xff",
    "text that is not base64": "not base64!!",
    "non-ascii text": "h\u00e9llo",
    "base64 of random bytes": base64.b64encode(b"\x00garbage\xff").decode(),
    "wrong tag": cbor2.dumps(["dyn0", []]),
    "no tag": cbor2.dumps([[["a", 1, 0.0]]]),
    "a map": cbor2.dumps({"dyn1": []}),
    "a bare clock": cbor2.dumps([["a", 1, 0.0]]),
    "malformed entries": cbor2.dumps(["dyn1", [["a", 0, 0.0]]]),
    "entries not a list": cbor2.dumps(["dyn1", "a:1"]),
    "too deep": cbor2.dumps(["dyn1", [[[[[["a"]]]]]]]),
    "truncated bytes": encode_context(Clock.of({"a": 1}))[:-2],
    "an integer": 42,
    "a list": [["a", 1, 0.0]],
}


@pytest.mark.parametrize("context", list(GARBAGE_CONTEXTS.values()), ids=list(GARBAGE_CONTEXTS))
def test_garbage_contexts_are_rejected(context: object) -> None:
    with pytest.raises(ValueError):
        decode_context(context)  # type: ignore[arg-type]


@FUZZ
@given(st.binary(max_size=40) | st.text(max_size=40))
def test_any_context_decodes_to_a_clock_or_raises_value_error(context: bytes | str) -> None:
    try:
        clock = decode_context(context)
    except ValueError:
        return
    assert decode_context(encode_context(clock)) == clock


# =========================================================================== versions on the wire


@FAST
@given(versions)
def test_versions_round_trip_through_the_wire(version: Version) -> None:
    if version.tombstone:
        version = Version(None, version.clock, version.dot, version.timestamp, True)
    back = Version.from_wire(cbor2.loads(cbor2.dumps(version.to_wire())))
    assert back == version
    assert back.clock.to_wire() == version.clock.to_wire()


def test_a_tombstone_round_trips_with_no_value_and_supersedes_what_it_saw() -> None:
    put = write("n1", [], [], "cart", 1.0)
    tomb = write("n2", [put], [], None, 2.0, tombstone=True)
    back = Version.from_wire(cbor2.loads(cbor2.dumps(tomb.to_wire())))
    assert back == tomb and back.tombstone and back.value is None
    assert back.obsoletes(put)
    assert reconcile([put, back]) == [back] and live(reconcile([put, back])) == []
    # A value riding along a tombstone on the wire is ignored.
    wire = {**tomb.to_wire(), "value": "stale"}
    assert Version.from_wire(wire).value is None


GOOD_VERSION = {"value": 1, "clock": [["a", 1, 0.0]], "dot": ["b", 1], "ts": 1.0, "tomb": False}
BAD_VERSIONS = {
    "not a map": [1, [], ["b", 1], 1.0, False],
    "no dot": {k: v for k, v in GOOD_VERSION.items() if k != "dot"},
    "no value": {k: v for k, v in GOOD_VERSION.items() if k != "value"},
    "no tomb": {k: v for k, v in GOOD_VERSION.items() if k != "tomb"},
    "dot a string": {**GOOD_VERSION, "dot": "b1"},
    "dot too long": {**GOOD_VERSION, "dot": ["b", 1, "extra"]},
    "dot a map": {**GOOD_VERSION, "dot": {0: "b", 1: 1}},
    "dot with a bool counter": {**GOOD_VERSION, "dot": ["b", True]},
    "dot with a zero counter": {**GOOD_VERSION, "dot": ["b", 0]},
    "bool ts": {**GOOD_VERSION, "ts": True},
    "string ts": {**GOOD_VERSION, "ts": "now"},
    "tomb not a bool": {**GOOD_VERSION, "tomb": 1},
    "bad clock": {**GOOD_VERSION, "clock": [["a", -1, 0.0]]},
}


def test_a_well_formed_version_map_is_accepted() -> None:
    assert Version.from_wire(GOOD_VERSION) == Version(1, Clock.of({"a": 1}), ("b", 1), 1.0)


@pytest.mark.parametrize("body", list(BAD_VERSIONS.values()), ids=list(BAD_VERSIONS))
def test_from_wire_rejects_malformed_versions(body: object) -> None:
    with pytest.raises(ValueError):
        Version.from_wire(body)
