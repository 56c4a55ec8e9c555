"""Group commit: the writes of one turn share a storage transaction, and nothing that
acknowledges them leaves before it is committed.

Driven on a real :class:`NodeCore` (one node, N=R=W=1) over an engine whose batches can be
made to fail at commit, and on the :class:`LocalStore` alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from dynamo_core import config as config_mod
from dynamo_core import errors
from dynamo_core.client import _Requests
from dynamo_core.coordinator import Coordinator, Fail, KeyPlan, Reply
from dynamo_core.core import Answer, NodeCore, Transmit
from dynamo_core.hookspecs import hookimpl
from dynamo_core.store import LocalStore
from dynamo_core.versions import Clock, Version, decode_context
from dynamo_core.wire import Codec
from dynamo_plugins.memory_storage import MemoryEngine

REQUESTS = _Requests("tcp://n1.test:1", 5.0, route=False)
CODEC = Codec()


class CommitFails(Exception):
    """The disk refused the commit."""


class FlakyCommitEngine(MemoryEngine):
    """A memory engine whose next batch fails at commit when told to, and counts commits."""

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.fail_next_commit = False
        self.commits = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        with super().batch():
            yield
            if self.fail_next_commit:
                self.fail_next_commit = False
                raise CommitFails("no space left on device")
        self.commits += 1


class EnginePlugin:
    def __init__(self, engine: FlakyCommitEngine) -> None:
        self.engine = engine

    @hookimpl
    def dynamo_storage_engines(self) -> Mapping[str, Any]:
        return {"flaky-commit": lambda data_dir, options: self.engine}


def one_node() -> tuple[NodeCore, FlakyCommitEngine]:
    engine = FlakyCommitEngine()
    config = config_mod.from_mapping({"storage": {"engine": "flaky-commit"},
                                      "cluster": {"n": 1, "r": 1, "w": 1}})
    core = NodeCore("n1", "tcp://n1.test:1", config=config, rng=random.Random(1),
                    wall_clock=lambda: 1_800_000_000.0, plugins=(EnginePlugin(engine),))
    core.start(0.0)
    return core, engine


def put_frame(key: str, value: Any, req_id: int, context: bytes | None = None) -> bytes:
    return CODEC.encode("put", REQUESTS.put_body("default", key, value, context, None, False),
                        req_id)


def answers(effects: list[Any]) -> dict[int | None, Any]:
    """Each Answer among ``effects``, decoded, by request id."""
    decoded = [CODEC.decode(e.frame) for e in effects if isinstance(e, Answer)]
    return {m.id: m for m in decoded}


def test_the_puts_of_one_turn_share_one_commit_and_are_answered_only_after_it() -> None:
    core, engine = one_node()
    commits = engine.commits
    core.begin_turn()
    during = [*core.receive(b"c1", [put_frame("a", 1, 1)], 0.1),
              *core.receive(b"c2", [put_frame("b", 2, 2)], 0.1)]
    assert answers(during) == {}, "an acknowledgement left before its write was committed"
    assert engine.commits == commits
    after = core.end_turn(0.2)
    assert engine.commits == commits + 1, "both puts in one commit"
    got = answers(after)
    assert sorted(got) == [1, 2] and all(m.type == "put_ok" for m in got.values())
    assert [v.value for v in core.store.read("default", "a")] == [1]


def test_a_turn_whose_commit_fails_answers_every_request_with_the_storage_error() -> None:
    core, engine = one_node()
    core.begin_turn()
    core.receive(b"c1", [put_frame("a", 1, 1)], 0.1)
    engine.fail_next_commit = True
    got = answers(core.end_turn(0.2))
    assert got[1].type == "error" and got[1].body["code"] == errors.StorageFailed.code
    assert "no space left on device" in got[1].body["message"]
    assert core.store.read("default", "a") == [], "the rolled-back write is not served"
    # The node serves on: the next turn commits.
    core.begin_turn()
    core.receive(b"c1", [put_frame("a", 2, 3)], 0.3)
    assert answers(core.end_turn(0.4))[3].type == "put_ok"


def test_a_dot_issued_in_a_turn_that_failed_to_commit_is_never_issued_again() -> None:
    core, engine = one_node()
    core.begin_turn()
    core.receive(b"c1", [put_frame("a", "lost", 1)], 0.1)
    engine.fail_next_commit = True
    core.end_turn(0.2)
    core.begin_turn()
    core.receive(b"c1", [put_frame("a", "kept", 2)], 0.3)
    ok = answers(core.end_turn(0.4))[2]
    [version] = core.store.read("default", "a")
    assert version.dot == (core.actor, 2), "dot 1 may be out in a message: it stays spent"
    assert decode_context(ok.body["context"]).covers(version.dot)


def test_merkle_trees_follow_a_rolled_back_turn() -> None:
    core, engine = one_node()
    core.begin_turn()
    core.receive(b"c1", [put_frame("a", 1, 1)], 0.1)
    assert core.anti_entropy.keys_held() == 1
    engine.fail_next_commit = True
    core.end_turn(0.2)
    assert core.anti_entropy.keys_held() == 0, "the trees still count the rolled-back key"


def test_requests_to_peers_leave_before_the_commit_unless_the_engine_syncs_each_one() -> None:
    """Overlap: the replicas' round trip runs while the coordinator commits. Only a node
    keeping its actor across a crash (power-safe engine) holds them for the commit."""
    core, _ = one_node()
    frame = CODEC.encode("replica_get", {"bucket": "default", "key": "k"}, None, "n1")
    core.begin_turn()
    core._emit(Transmit("tcp://n2.test:1", frame))
    assert any(isinstance(e, Transmit) for e in core._out)
    core.end_turn(0.1)
    core._hold_sends = True  # as with a power-safe engine
    core.begin_turn()
    core._emit(Transmit("tcp://n2.test:1", frame))
    assert not any(isinstance(e, Transmit) for e in core._out)
    assert any(isinstance(e, Transmit) for e in core.end_turn(0.2))


# ---------------------------------------------------------------------- the store alone


def version(value: Any, dot: tuple[str, int]) -> Version:
    """A version that has seen every earlier event of its actor."""
    return Version(value, Clock.of({dot[0]: dot[1] - 1} if dot[1] > 1 else {}), dot, 0.0)


@pytest.fixture
def store() -> LocalStore:
    return LocalStore(FlakyCommitEngine(), 16, "me", cache_bytes=4096)


def test_the_store_rolls_back_its_cache_and_tells_its_listener(store: LocalStore) -> None:
    seen: list[tuple[str, list[Any], list[Any]]] = []
    store.listener = lambda b, k, old, new: seen.append((k, [v.value for v in old],
                                                         [v.value for v in new]))
    store.apply("b", "k", [version("old", ("x", 1))])
    store.begin_batch()
    store.apply("b", "k", [version("new", ("x", 2))])
    assert [v.value for v in store.read("b", "k")] == ["new"]
    store.engine.fail_next_commit = True  # type: ignore[attr-defined]
    with pytest.raises(errors.StorageFailed, match="no space left"):
        store.commit_batch()
    assert [v.value for v in store.read("b", "k")] == ["old"]
    assert seen[-1] == ("k", ["new"], ["old"])


def test_the_record_cache_stays_within_its_bytes_and_is_never_stale(store: LocalStore) -> None:
    for i in range(200):
        store.apply("b", f"k{i}", [version("x" * 50, ("x", 1))])
    assert store._cached_bytes <= store.cache_bytes
    for i in range(200):
        store.apply("b", f"k{i}", [version(f"v{i}", ("x", 2))])
    for i in range(200):  # cached or evicted, every key reads what was written last
        assert [v.value for v in store.read("b", f"k{i}")] == [f"v{i}"]
    assert store._cached_bytes <= store.cache_bytes


def test_a_failed_engine_write_leaves_nothing_cached(store: LocalStore) -> None:
    store.apply("b", "k", [version("v1", ("x", 1))])

    def refuse(key: str, value: bytes) -> None:
        raise OSError("disk gone")
    store.engine.put = refuse  # type: ignore[method-assign]
    with pytest.raises(errors.StorageFailed):
        store.apply("b", "k", [version("v2", ("x", 2))])
    del store.engine.put
    assert [v.value for v in store.read("b", "k")] == ["v1"]


# ---------------------------------------------------------------------- the coordinator


def coordinator_over(engine: FlakyCommitEngine) -> Coordinator:
    return Coordinator("n1", LocalStore(engine, 16, "me"), request_timeout=2.0,
                       max_clock_entries=10, max_pending=100)


def test_a_put_whose_own_write_is_rolled_back_fails_even_if_a_replica_acks_after() -> None:
    """W counts the coordinator's own write only once it is committed: with the replicas'
    requests sent before the commit (overlap), a replica's ack arriving after a failed
    commit must not make W=2 out of one durable copy."""
    engine = FlakyCommitEngine()
    coord = coordinator_over(engine)
    coord.dots.begin_batch()  # type: ignore[attr-defined]
    sends = {s.to: s for s in coord.start_put("c", KeyPlan("b", "k", ("n1", "n2", "n3"), 2),
                                              "v", None, False, 0.0)}
    assert sorted(sends) == ["n2", "n3"]
    engine.fail_next_commit = True
    with pytest.raises(errors.StorageFailed) as failed:
        coord.dots.commit_batch()  # type: ignore[attr-defined]
    [fail] = coord.local_writes_lost(failed.value)
    assert isinstance(fail, Fail) and fail.client == "c"
    assert isinstance(fail.error, errors.StorageFailed)
    assert coord.on_reply(sends["n2"].req_id, "n2", "replica_put_ok", {}, 0.1) == []
    assert coord.pending() == 0


def test_a_put_whose_own_write_is_committed_counts_it_toward_w() -> None:
    engine = FlakyCommitEngine()
    coord = coordinator_over(engine)
    coord.dots.begin_batch()  # type: ignore[attr-defined]
    sends = {s.to: s for s in coord.start_put("c", KeyPlan("b", "k", ("n1", "n2", "n3"), 2),
                                              "v", None, False, 0.0)}
    coord.dots.commit_batch()  # type: ignore[attr-defined]
    coord.local_writes_committed()
    assert coord.local_writes_lost(errors.StorageFailed("late")) == [], \
        "a committed write is never taken back"
    [ok] = coord.on_reply(sends["n2"].req_id, "n2", "replica_put_ok", {}, 0.1)
    assert isinstance(ok, Reply) and ok.msg_type == "put_ok"


def test_a_failed_batch_keeps_its_counters_even_for_keys_the_cache_does_not_hold() -> None:
    store = LocalStore(FlakyCommitEngine(), 16, "me", cache_bytes=0)  # caches nothing
    make = lambda dot: Version("v", Clock.empty(), dot, 0.0)  # noqa: E731
    store.begin_batch()
    assert store.write_new("b", "k", Clock.empty(), make).dot == ("me", 1)
    store.engine.fail_next_commit = True  # type: ignore[attr-defined]
    with pytest.raises(errors.StorageFailed):
        store.commit_batch()
    assert store.read("b", "k") == []
    assert store.write_new("b", "k", Clock.empty(), make).dot == ("me", 2), \
        "dot 1 may have left in a message: it is never issued again"


def test_two_puts_to_one_key_in_one_turn_get_distinct_dots_and_both_survive() -> None:
    """Concurrent blind writes in one batch: the second reads the first through the batch
    (and the cache), so it gets the next dot, and neither write hides the other."""
    core, engine = one_node()
    core.begin_turn()
    core.receive(b"c1", [put_frame("k", "first", 1)], 0.1)
    core.receive(b"c2", [put_frame("k", "second", 2)], 0.1)
    got = answers(core.end_turn(0.2))
    assert got[1].type == got[2].type == "put_ok"
    held = core.store.read("default", "k")
    assert sorted(v.value for v in held) == ["first", "second"], "concurrent: both siblings"
    assert len({v.dot for v in held}) == 2
    reopened = LocalStore(engine, 16, core.actor)  # what the engine holds, not the cache
    assert sorted(v.value for v in reopened.read("default", "k")) == ["first", "second"]
