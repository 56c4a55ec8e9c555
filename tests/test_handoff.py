"""Hinted handoff: the durable, bounded hint store and the delivery planner.

The store is checked against its promises one by one (durable across a reopen, merging by
causality, refusing what does not fit without touching what is held, never deleting a hint
that changed after delivery started, expiring stale hints), then against a plain dict model
under random sequences of adds and deliveries. The planner is pure, so its tests drive time by
hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_core.errors import Overloaded
from dynamo_core.handoff import HandoffPlanner, Hint, HintStore, dots_of, hint_key
from dynamo_core.versions import Clock, Version, reconcile
from dynamo_plugins.diskcache_storage import open_diskcache_engine
from dynamo_plugins.memory_storage import open_memory_engine

BIG = 1 << 30


def version(actor: str, counter: int, value: object = None, seen: int = 0,
            ts: float = 1.0) -> Version:
    """A write ``(actor, counter)`` whose writer had seen ``actor``'s first ``seen`` events."""
    clock = Clock.of({actor: seen}) if seen else Clock.empty()
    return Version(value if value is not None else f"{actor}{counter}", clock,
                   (actor, counter), ts)


def memory_store(max_hints: int = 100, max_bytes: int = BIG, max_age: float = 3600.0) -> HintStore:
    return HintStore(open_memory_engine(None, {}), max_hints, max_bytes, max_age)


# =========================================================================== durability


def test_hints_survive_a_reopen_on_the_diskcache_engine(tmp_path: Path) -> None:
    hints_dir = str(tmp_path / "hints")
    store = HintStore(open_diskcache_engine(hints_dir, {}), 100, BIG, 3600.0)
    store.add("n2", "carts", "alice", [version("n1", 1)], now=10.0)
    store.add("n2", "carts", "bob/with/slashes", [version("n1", 1)], now=11.0)
    store.add("n3", "carts", "alice", [version("n1", 1), version("n4", 1)], now=12.0)
    before = (store.pending(), store.bytes_used, store.targets(), store.for_key("carts", "alice"))
    store.close()

    reopened = HintStore(open_diskcache_engine(hints_dir, {}), 100, BIG, 3600.0)
    try:
        after = (reopened.pending(), reopened.bytes_used, reopened.targets(),
                 reopened.for_key("carts", "alice"))
        assert after == before
        assert reopened.get("n2", "carts", "bob/with/slashes") == [version("n1", 1)]
        assert reopened.discarded == 0
        # The creation time survives too, so expiry after a restart still works.
        assert [h.created for h in reopened.batch("n2", 10)] == [10.0, 11.0]
    finally:
        reopened.close()


def test_unreadable_records_are_dropped_at_open_and_counted() -> None:
    engine = open_memory_engine(None, {})
    engine.put("no-separator-here", b"x")
    engine.put(hint_key("n2", "b", "k"), b"\xff not cbor")
    store = HintStore(engine, 10, BIG, 60.0)
    assert store.discarded == 2
    assert store.pending() == 0 and len(engine) == 0


def test_a_key_may_contain_the_separators_of_the_engine_key() -> None:
    store = memory_store()
    odd = "a/b\x1fc"
    store.add("n2", "b", odd, [version("n1", 1)], now=0.0)
    assert store.for_key("b", odd) == {"n2": [version("n1", 1)]}
    assert store.batch("n2", 1)[0].key == odd


def test_names_that_would_make_the_engine_key_ambiguous_are_refused() -> None:
    store = memory_store()
    with pytest.raises(ValueError):
        store.add("n\x1f2", "b", "k", [version("n1", 1)], now=0.0)
    with pytest.raises(ValueError):
        store.add("n2", "b/c", "k", [version("n1", 1)], now=0.0)


# =========================================================================== merging


def test_add_replaces_an_older_version_with_a_newer_one() -> None:
    store = memory_store()
    store.add("n2", "b", "k", [version("n1", 1)], now=0.0)
    newer = version("n1", 2, seen=1)
    store.add("n2", "b", "k", [newer], now=1.0)
    assert store.get("n2", "b", "k") == [newer]
    assert store.pending() == 1


def test_add_keeps_concurrent_versions_both() -> None:
    store = memory_store()
    store.add("n2", "b", "k", [version("n1", 1)], now=0.0)
    store.add("n2", "b", "k", [version("n3", 1)], now=1.0)
    assert dots_of(store.get("n2", "b", "k")) == [("n1", 1), ("n3", 1)]


def test_adding_what_is_already_held_changes_nothing() -> None:
    store = memory_store()
    store.add("n2", "b", "k", [version("n1", 2, seen=1)], now=0.0)
    bytes_before = store.bytes_used
    # A version the held one has seen, and a duplicate, leave the hint and its age alone.
    store.add("n2", "b", "k", [version("n1", 1), version("n1", 2, seen=1)], now=50.0)
    assert store.bytes_used == bytes_before
    assert store.batch("n2", 1)[0].created == 0.0


def test_hints_for_different_targets_of_one_key_are_separate() -> None:
    store = memory_store()
    store.add("n2", "b", "k", [version("n1", 1)], now=0.0)
    store.add("n3", "b", "k", [version("n4", 1)], now=0.0)
    assert store.for_key("b", "k") == {"n2": [version("n1", 1)], "n3": [version("n4", 1)]}
    assert store.for_key("b", "other") == {}


# =========================================================================== bounds


def test_the_count_bound_refuses_a_new_hint_and_names_the_bound() -> None:
    store = memory_store(max_hints=2)
    store.add("n2", "b", "k1", [version("n1", 1)], now=0.0)
    store.add("n2", "b", "k2", [version("n1", 1)], now=0.0)
    held = {k: store.get("n2", "b", k) for k in ("k1", "k2")}
    bytes_before = store.bytes_used

    with pytest.raises(Overloaded, match=r"max_hints is 2 and 2 hints are held"):
        store.add("n3", "b", "k3", [version("n1", 1)], now=1.0)

    assert store.pending() == 2 and store.bytes_used == bytes_before
    assert {k: store.get("n2", "b", k) for k in ("k1", "k2")} == held
    assert store.get("n3", "b", "k3") == []
    # Merging into a hint that exists adds no hint, so it is still accepted at the bound.
    store.add("n2", "b", "k1", [version("n5", 1)], now=2.0)
    assert len(store.get("n2", "b", "k1")) == 2


def test_the_byte_bound_refuses_and_names_the_bound() -> None:
    probe = memory_store()
    probe.add("n2", "b", "k1", [version("n1", 1, value="x" * 100)], now=0.0)
    one = probe.bytes_used
    store = memory_store(max_bytes=one + 50)
    store.add("n2", "b", "k1", [version("n1", 1, value="x" * 100)], now=0.0)
    held = store.get("n2", "b", "k1")

    with pytest.raises(Overloaded, match=rf"max_bytes is {one + 50} and {one} bytes are held"):
        store.add("n2", "b", "k2", [version("n1", 1, value="y" * 100)], now=1.0)
    # Growing an existing hint past the bound is refused just the same.
    with pytest.raises(Overloaded, match="max_bytes"):
        store.add("n2", "b", "k1", [version("n3", 1, value="z" * 100)], now=1.0)

    assert store.get("n2", "b", "k1") == held
    assert store.pending() == 1 and store.bytes_used == one
    assert store.targets() == {"n2": 1}


def test_bytes_used_matches_what_the_engine_holds() -> None:
    engine = open_memory_engine(None, {})
    store = HintStore(engine, 100, BIG, 60.0)
    for i in range(5):
        store.add(f"n{i % 2}", "b", f"k{i}", [version("a", 1, value="v" * i)], now=0.0)
    store.add("n0", "b", "k0", [version("c", 1)], now=0.0)
    assert store.bytes_used == engine_bytes(engine)


def engine_bytes(engine) -> int:
    return sum(len(k.encode()) + len(engine.get(k)) for k in engine.keys())


# =========================================================================== delivery


def test_delivered_deletes_a_hint_that_did_not_change() -> None:
    store = memory_store()
    store.add("n2", "b", "k", [version("n1", 1)], now=0.0)
    [hint] = store.batch("n2", 10)
    assert store.delivered(hint) is True
    assert store.pending() == 0 and store.targets() == {} and store.for_key("b", "k") == {}
    assert store.bytes_used == 0
    assert store.delivered(hint) is False  # a second report finds nothing to delete


def test_delivered_keeps_a_hint_that_changed_after_the_batch_was_taken() -> None:
    store = memory_store()
    store.add("n2", "b", "k", [version("n1", 1)], now=0.0)
    [hint] = store.batch("n2", 10)
    store.add("n2", "b", "k", [version("n3", 1)], now=1.0)  # arrives while delivering

    assert store.delivered(hint) is False
    assert dots_of(store.get("n2", "b", "k")) == [("n1", 1), ("n3", 1)]
    [again] = store.batch("n2", 10)
    assert store.delivered(again) is True


def test_delivered_keeps_a_hint_whose_version_was_superseded_after_the_batch() -> None:
    store = memory_store()
    store.add("n2", "b", "k", [version("n1", 1)], now=0.0)
    [hint] = store.batch("n2", 10)
    store.add("n2", "b", "k", [version("n1", 2, seen=1)], now=1.0)
    assert store.delivered(hint) is False
    assert store.get("n2", "b", "k") == [version("n1", 2, seen=1)]


def test_batch_is_limited_oldest_first_and_per_target() -> None:
    store = memory_store()
    for i in range(5):
        store.add("n2", "b", f"k{i}", [version("n1", 1)], now=float(i))
    store.add("n3", "b", "other", [version("n1", 1)], now=0.0)
    batch = store.batch("n2", 3)
    assert [h.key for h in batch] == ["k0", "k1", "k2"]
    assert all(isinstance(h, Hint) and h.target == "n2" for h in batch)
    assert store.batch("n9", 3) == [] and store.batch("n2", 0) == []


# =========================================================================== expiry


def test_expire_drops_only_hints_older_than_max_age() -> None:
    store = memory_store(max_age=100.0)
    store.add("n2", "b", "old", [version("n1", 1)], now=0.0)
    store.add("n3", "b", "young", [version("n1", 1)], now=50.0)
    assert store.expire(now=100.0) == 0
    assert store.expire(now=120.0) == 1
    assert store.for_key("b", "old") == {}
    assert store.targets() == {"n3": 1} and store.pending() == 1
    assert store.expire(now=1000.0) == 1
    assert store.pending() == 0 and store.bytes_used == 0


def test_a_write_merged_into_a_hint_restarts_its_age() -> None:
    # Expiring a hint whose newest write was just acknowledged would lose that write.
    store = memory_store(max_age=100.0)
    store.add("n2", "b", "k", [version("n1", 1)], now=0.0)
    store.add("n2", "b", "k", [version("n3", 1)], now=90.0)
    assert store.expire(now=150.0) == 0
    assert store.expire(now=191.0) == 1


# =========================================================================== model check


TARGETS = ("n1", "n2", "n3")
BUCKETS = ("b", "c")
KEYS = ("k", "x/y")
ACTORS = ("a", "b")
MAX_HINTS = 7

add_op = st.tuples(st.just("add"), st.sampled_from(TARGETS), st.sampled_from(BUCKETS),
                   st.sampled_from(KEYS), st.sampled_from(ACTORS), st.booleans())
deliver_op = st.tuples(st.just("deliver"), st.sampled_from(TARGETS), st.integers(0, 4),
                       st.lists(st.tuples(st.sampled_from(BUCKETS), st.sampled_from(KEYS),
                                          st.sampled_from(ACTORS)), max_size=3))
reopen_op = st.tuples(st.just("reopen"))
ops = st.lists(st.one_of(add_op, deliver_op, reopen_op), max_size=40)


class Model:
    """The hint store as a plain dict, with the same causality rule (``reconcile``)."""

    def __init__(self) -> None:
        self.hints: dict[tuple[str, str, str], list[Version]] = {}
        self.counters: dict[str, int] = {}

    def next_version(self, actor: str, sees_previous: bool) -> Version:
        counter = self.counters.get(actor, 0) + 1
        self.counters[actor] = counter
        return version(actor, counter, seen=counter - 1 if sees_previous else 0)

    def add(self, target: str, bucket: str, key: str, v: Version) -> bool:
        """False when the real store must refuse (count bound)."""
        hkey = (target, bucket, key)
        if hkey not in self.hints and len(self.hints) >= MAX_HINTS:
            return False
        self.hints[hkey] = reconcile([*self.hints.get(hkey, []), v])
        return True


def apply_add(store: HintStore, model: Model, target: str, bucket: str, key: str,
              actor: str, sees: bool) -> None:
    v = model.next_version(actor, sees)
    if model.add(target, bucket, key, v):
        store.add(target, bucket, key, [v], now=0.0)
    else:
        with pytest.raises(Overloaded):
            store.add(target, bucket, key, [v], now=0.0)


def check_consistent(store: HintStore, model: Model, engine) -> None:
    assert store.pending() == len(model.hints)
    expected_targets: dict[str, int] = {}
    for target, _, _ in model.hints:
        expected_targets[target] = expected_targets.get(target, 0) + 1
    assert store.targets() == expected_targets
    for bucket in BUCKETS:
        for key in KEYS:
            expected = {t: vs for (t, b, k), vs in model.hints.items() if (b, k) == (bucket, key)}
            assert store.for_key(bucket, key) == expected
    assert store.bytes_used == engine_bytes(engine)
    assert len(engine) == len(model.hints)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_index_stays_consistent_with_a_dict_model_under_random_operations(ops) -> None:
    engine = open_memory_engine(None, {})
    store = HintStore(engine, MAX_HINTS, BIG, 3600.0)
    model = Model()
    for op in ops:
        if op[0] == "add":
            apply_add(store, model, *op[1:])
        elif op[0] == "deliver":
            _, target, limit, racing = op
            batch = store.batch(target, limit)
            assert len(batch) == min(limit, store.targets().get(target, 0))
            # Writes racing with the delivery, to the delivered target, on any key.
            for bucket, key, actor in racing:
                apply_add(store, model, target, bucket, key, actor, False)
            for hint in batch:
                hkey = (hint.target, hint.bucket, hint.key)
                unchanged = dots_of(model.hints[hkey]) == dots_of(hint.versions)
                assert store.delivered(hint) is unchanged
                if unchanged:
                    del model.hints[hkey]
        else:
            store = HintStore(engine, MAX_HINTS, BIG, 3600.0)  # same engine: a restart
        check_consistent(store, model, engine)


# =========================================================================== planner


def always_up(_: str) -> bool:
    return True


def test_planner_chooses_only_targets_that_are_up_and_have_hints() -> None:
    planner = HandoffPlanner(max_concurrent_targets=5)
    targets = {"n1": 3, "n2": 1, "n3": 0, "n4": 2}
    assert planner.due(targets, lambda t: t != "n4", now=0.0) == ["n1", "n2"]


def test_planner_respects_max_concurrent_targets() -> None:
    planner = HandoffPlanner(max_concurrent_targets=2)
    targets = {f"n{i}": 1 for i in range(6)}
    first = planner.due(targets, always_up, now=0.0)
    assert len(first) == 2
    for t in first:
        planner.started(t)
    assert planner.due(targets, always_up, now=0.0) == []
    planner.finished(first[0], ok=True, now=1.0)
    second = planner.due(targets, always_up, now=1.0)
    assert len(second) == 1 and second[0] not in first


def test_planner_backoff_doubles_after_each_failure_and_caps() -> None:
    planner = HandoffPlanner(max_concurrent_targets=1, base_backoff=1.0, max_backoff=30.0)
    targets = {"n1": 1}
    now = 0.0
    waits = []
    for _ in range(8):
        [t] = planner.due(targets, always_up, now)
        planner.started(t)
        planner.finished(t, ok=False, now=now)
        wait = planner.backoff("n1")
        waits.append(wait)
        assert planner.due(targets, always_up, now + wait - 0.01) == []
        now += wait
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_planner_success_clears_the_backoff() -> None:
    planner = HandoffPlanner(max_concurrent_targets=1)
    for _ in range(3):
        planner.started("n1")
        planner.finished("n1", ok=False, now=0.0)
    planner.started("n1")
    planner.finished("n1", ok=True, now=100.0)
    assert planner.backoff("n1") == 0.0
    assert planner.due({"n1": 1}, always_up, now=100.0) == ["n1"]


def test_planner_backoff_of_one_target_does_not_hold_up_others() -> None:
    planner = HandoffPlanner(max_concurrent_targets=1)
    planner.started("n1")
    planner.finished("n1", ok=False, now=0.0)
    assert planner.due({"n1": 5, "n2": 1}, always_up, now=0.5) == ["n2"]


def test_planner_forgets_backoff_of_targets_without_hints() -> None:
    planner = HandoffPlanner(max_concurrent_targets=1)
    planner.started("n1")
    planner.finished("n1", ok=False, now=0.0)
    planner.due({"n2": 1}, always_up, now=0.0)
    assert planner.backoff("n1") == 0.0


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 6), st.data())
def test_planner_gives_every_target_its_turn(n_targets: int, data) -> None:
    concurrency = data.draw(st.integers(1, n_targets - 1))
    planner = HandoffPlanner(max_concurrent_targets=concurrency)
    targets = {f"n{i}": 100 for i in range(n_targets)}
    served: dict[str, int] = {t: 0 for t in targets}
    running: list[str] = []
    for step in range(data.draw(st.integers(1, 5)) * n_targets):
        for t in planner.due(targets, always_up, now=float(step)):
            planner.started(t)
            running.append(t)
            served[t] += 1
        # The oldest delivery ends each step, so targets keep competing for the slots.
        planner.finished(running.pop(0), ok=True, now=float(step))
    assert max(served.values()) - min(served.values()) <= 1


def test_planner_round_robin_skips_targets_that_are_down_without_losing_the_turn() -> None:
    planner = HandoffPlanner(max_concurrent_targets=1)
    targets = {"n1": 1, "n2": 1, "n3": 1}
    order = []
    for step in range(6):
        [t] = planner.due(targets, lambda name: name != "n2", now=float(step))
        planner.started(t)
        planner.finished(t, ok=True, now=float(step))
        order.append(t)
    assert order == ["n1", "n3", "n1", "n3", "n1", "n3"]
