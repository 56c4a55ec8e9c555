"""The storage engine contract, run against every built-in engine, plus diskcache's and
lmdb's promises: durability across kill -9, group commit, lmdb's map and long keys.

Engines are loaded through a real ``pluggy`` plugin manager from the ``dynamo`` entry-point
group, so these tests also prove the built-ins register exactly like a third-party plugin.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import lmdb
import pluggy
import pytest

from dynamo_core import hookspecs
from dynamo_core.hookspecs import StorageEngine, StorageFactory
from dynamo_plugins import lmdb_storage

ENGINES = ["memory", "diskcache", "lmdb"]
#: engines that promise an acknowledged put survives kill -9
DURABLE = ["diskcache", "lmdb"]
MIB = 1 << 20


def load_factory(engine: str) -> StorageFactory:
    """Load one engine's entry point the way the node does, and return its factory.

    Only the named entry point is loaded, so a sibling plugin that is broken (or still being
    written) cannot fail the storage tests.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    assert pm.load_setuptools_entrypoints(hookspecs.PROJECT, name=engine) == 1
    [(_, dist)] = pm.list_plugin_distinfo()
    assert dist.project_name == "dynamo-py"
    [offered] = pm.hook.dynamo_storage_engines()
    return offered[engine]


def open_diskcache(data_dir: Path, **options: Any) -> StorageEngine:
    return load_factory("diskcache")(str(data_dir), options)


def open_lmdb(data_dir: Path, **options: Any) -> StorageEngine:
    return load_factory("lmdb")(str(data_dir), options)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageEngine]:
    store = load_factory(request.param)(str(tmp_path), {})
    yield store
    store.close()


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name, durable", [("memory", False), ("diskcache", True), ("lmdb", True)])
def test_engine_satisfies_protocol(tmp_path: Path, name: str, durable: bool) -> None:
    store = load_factory(name)(str(tmp_path), {})
    try:
        assert isinstance(store, StorageEngine)
        assert store.durable is durable
    finally:
        store.close()


def test_get_missing_is_none(engine: StorageEngine) -> None:
    assert engine.get("b/nope") is None


def test_put_get_overwrite(engine: StorageEngine) -> None:
    engine.put("b/k", b"one")
    assert engine.get("b/k") == b"one"
    engine.put("b/k", b"two")
    assert engine.get("b/k") == b"two"
    assert len(engine) == 1


def test_delete_and_delete_missing(engine: StorageEngine) -> None:
    engine.put("b/k", b"v")
    engine.delete("b/k")
    assert engine.get("b/k") is None
    engine.delete("b/k")
    engine.delete("b/never")
    assert len(engine) == 0


def test_keys_and_len(engine: StorageEngine) -> None:
    expected = {f"bucket/{i:04d}" for i in range(250)}
    for key in expected:
        engine.put(key, key.encode())
    assert len(engine) == 250
    assert set(engine.keys()) == expected
    assert all(isinstance(key, str) for key in engine.keys())


def test_keys_survive_deletes_while_iterating(engine: StorageEngine) -> None:
    for i in range(150):
        engine.put(f"b/{i:03d}", b"x")
    for key in engine.keys():
        engine.delete(key)
    assert len(engine) == 0


def test_unicode_keys(engine: StorageEngine) -> None:
    keys = ["carts/ünïcødé", "carts/日本語", "carts/🛒", "carts/with space", "carts/"]
    for i, key in enumerate(keys):
        engine.put(key, bytes([i]))
    assert [engine.get(key) for key in keys] == [bytes([i]) for i in range(len(keys))]
    assert set(engine.keys()) == set(keys)


def test_empty_and_binary_values(engine: StorageEngine) -> None:
    engine.put("b/empty", b"")
    engine.put("b/binary", bytes(range(256)))
    assert engine.get("b/empty") == b""
    assert type(engine.get("b/empty")) is bytes
    assert engine.get("b/binary") == bytes(range(256))


def test_large_value(engine: StorageEngine) -> None:
    value = os.urandom(MIB)
    engine.put("b/large", value)
    got = engine.get("b/large")
    assert type(got) is bytes and got == value


@pytest.mark.parametrize("key, value", [("b/k", "text"), ("b/k", bytearray(b"x")), (1, b"x")])
def test_put_rejects_wrong_types(engine: StorageEngine, key: Any, value: Any) -> None:
    with pytest.raises(TypeError, match="keys must be str and values bytes"):
        engine.put(key, value)
    assert len(engine) == 0


def test_close_twice(engine: StorageEngine) -> None:
    engine.put("b/k", b"v")
    engine.close()
    engine.close()


# --------------------------------------------------------------------------- diskcache


def test_diskcache_needs_data_dir() -> None:
    with pytest.raises(ValueError, match="the diskcache engine needs a data directory"):
        load_factory("diskcache")(None, {})


def test_diskcache_lives_in_storage_subdir(tmp_path: Path) -> None:
    store = open_diskcache(tmp_path)
    store.close()
    assert (tmp_path / "storage" / "cache.db").is_file()


def test_diskcache_reopen_keeps_data(tmp_path: Path) -> None:
    store = open_diskcache(tmp_path)
    store.put("b/k", b"kept")
    store.put("b/gone", b"x")
    store.delete("b/gone")
    store.close()
    store = open_diskcache(tmp_path)
    try:
        assert store.get("b/k") == b"kept"
        assert list(store.keys()) == ["b/k"]
    finally:
        store.close()


def test_diskcache_never_evicts(tmp_path: Path) -> None:
    store = open_diskcache(tmp_path)
    try:
        cache: diskcache.Cache = store._cache  # type: ignore[attr-defined]
        assert cache.eviction_policy == "none"
        assert cache.cull_limit == 0
        assert cache.statistics == 0
        # Shrink the limit far below what we write: nothing may go.
        cache.reset("size_limit", 4096)
        values = {f"b/{i:04d}": os.urandom(4096) for i in range(300)}
        values["b/big"] = os.urandom(MIB)
        for key, value in values.items():
            store.put(key, value)
        assert cache.volume() > 4096
        assert len(store) == len(values)
        assert all(store.get(key) == value for key, value in values.items())
    finally:
        store.close()


def test_plain_diskcache_would_evict_under_the_same_limit(tmp_path: Path) -> None:
    """The control for the test above: it shows the size limit really bites by default."""
    with diskcache.Cache(str(tmp_path / "plain"), size_limit=4096) as cache:
        for i in range(300):
            cache.set(f"b/{i:04d}", os.urandom(4096))
        assert len(cache) < 300


def pragma_synchronous(store: StorageEngine) -> int:
    cache: diskcache.Cache = store._cache  # type: ignore[attr-defined]
    [level] = cache._sql("PRAGMA synchronous").fetchone()
    return level


@pytest.mark.parametrize("options, level", [({}, 1), ({"fsync": False}, 1), ({"fsync": True}, 2)])
def test_fsync_option_sets_synchronous(tmp_path: Path, options: dict, level: int) -> None:
    store = open_diskcache(tmp_path, **options)
    try:
        store.put("b/k", b"v")
        assert pragma_synchronous(store) == level
    finally:
        store.close()


def test_fsync_off_after_on_is_honoured(tmp_path: Path) -> None:
    """diskcache persists settings; a later open must not inherit an earlier one's choice."""
    open_diskcache(tmp_path, fsync=True).close()
    store = open_diskcache(tmp_path, fsync=False)
    try:
        assert pragma_synchronous(store) == 1
    finally:
        store.close()


@pytest.mark.parametrize("bad", ["true", 1, None, "yes"])
def test_bad_fsync_option(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="storage option 'fsync' must be true or false"):
        open_diskcache(tmp_path, fsync=bad)


def test_other_storage_options_are_ignored(tmp_path: Path) -> None:
    """``options`` is the whole ``[storage]`` table, which also names the engine."""
    open_diskcache(tmp_path, engine="diskcache").close()


# --------------------------------------------------------------------------- long keys

#: Around LMDB's 511-byte key limit, multi-byte characters across it, very long and empty.
LONG_KEYS = [
    "b/" + "x" * 509,
    "b/" + "x" * 510,
    "b/" + "x" * 508 + "é",
    "b/" + "é" * 300,
    "b/" + "x" * 10_000,
    "b/" + "x" * 10_000 + "y",
    "",
]


def test_long_and_empty_keys(engine: StorageEngine) -> None:
    for i, key in enumerate(LONG_KEYS):
        engine.put(key, bytes([i]) * 100)
    assert len(engine) == len(LONG_KEYS)
    assert sorted(engine.keys()) == sorted(LONG_KEYS)
    assert [engine.get(key) for key in LONG_KEYS] == [bytes([i]) * 100 for i in range(7)]
    engine.put(LONG_KEYS[4], b"again")
    engine.delete(LONG_KEYS[5])
    assert engine.get(LONG_KEYS[4]) == b"again"
    assert engine.get(LONG_KEYS[5]) is None
    assert engine.get("b/" + "x" * 10_001) is None
    assert len(engine) == len(LONG_KEYS) - 1


def test_keys_walk_sees_every_stable_key_once(
    engine: StorageEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Puts and deletes during the walk: keys there all along come out exactly once."""
    monkeypatch.setattr(lmdb_storage, "KEYS_PER_CHUNK", 7)  # many chunks (lmdb only)
    stable = {f"b/s{i:03d}" for i in range(60)} | {"b/s" + "x" * 600 + str(i) for i in range(5)}
    doomed = [f"b/d{i:03d}" for i in range(60)]
    for key in [*stable, *doomed]:
        engine.put(key, b"v")
    seen: list[str] = []
    for n, key in enumerate(engine.keys()):
        seen.append(key)
        if key in stable:
            engine.put(key, b"rewritten")
        else:
            engine.delete(key)
        if doomed:
            engine.delete(doomed.pop())
        engine.put(f"b/new{n:03d}", b"n")
    assert len(seen) == len(set(seen)), "a key came out twice"
    assert stable <= set(seen)


# --------------------------------------------------------------------------- group commit


def test_every_builtin_engine_offers_batch(engine: StorageEngine) -> None:
    assert callable(getattr(engine, "batch", None))


def test_an_engine_without_batch_is_still_a_storage_engine() -> None:
    """Group commit is optional: a third-party engine may leave ``batch`` out."""

    class Plain:
        durable = False

        def get(self, key: str) -> bytes | None:
            return None

        def put(self, key: str, value: bytes) -> None:
            pass

        def delete(self, key: str) -> None:
            pass

        def keys(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

        def close(self) -> None:
            pass

    assert isinstance(Plain(), StorageEngine)


def test_batch_commits_together_and_is_seen_inside(engine: StorageEngine) -> None:
    engine.put("b/old", b"old")
    engine.put("b/gone", b"x")
    with engine.batch():  # type: ignore[attr-defined]
        engine.put("b/new", b"new")
        engine.put("b/old", b"changed")
        engine.delete("b/gone")
        engine.put("b/" + "l" * 600, b"long")
        assert engine.get("b/new") == b"new"
        assert engine.get("b/old") == b"changed"
        assert engine.get("b/gone") is None
        assert engine.get("b/" + "l" * 600) == b"long"
        assert len(engine) == 3
        assert set(engine.keys()) == {"b/new", "b/old", "b/" + "l" * 600}
    assert engine.get("b/new") == b"new"
    assert engine.get("b/old") == b"changed"
    assert engine.get("b/gone") is None
    assert set(engine.keys()) == {"b/new", "b/old", "b/" + "l" * 600}


def test_batch_rolls_back_on_exception(engine: StorageEngine) -> None:
    engine.put("b/old", b"old")
    engine.put("b/kept", b"kept")
    with pytest.raises(KeyError, match="boom"), engine.batch():  # type: ignore[attr-defined]
        engine.put("b/new", b"new")
        engine.put("b/old", b"changed")
        engine.delete("b/kept")
        engine.put("b/new", b"twice")
        engine.put("b/" + "l" * 600, b"long")
        raise KeyError("boom")
    assert engine.get("b/old") == b"old"
    assert engine.get("b/kept") == b"kept"
    assert engine.get("b/new") is None
    assert engine.get("b/" + "l" * 600) is None
    assert len(engine) == 2
    assert set(engine.keys()) == {"b/old", "b/kept"}
    # and the engine carries on, batched or not
    with engine.batch():  # type: ignore[attr-defined]
        engine.put("b/next", b"n")
    engine.put("b/after", b"a")
    assert len(engine) == 4


def test_batches_do_not_nest(engine: StorageEngine) -> None:
    with pytest.raises(RuntimeError, match="never nested"), engine.batch():  # type: ignore[attr-defined]
        engine.put("b/outer", b"x")
        with engine.batch():  # type: ignore[attr-defined]
            engine.put("b/inner", b"y")
    assert engine.get("b/outer") is None  # the error rolled the outer batch back
    assert engine.get("b/inner") is None
    with engine.batch():  # type: ignore[attr-defined]
        engine.put("b/k", b"v")
    assert engine.get("b/k") == b"v"


def test_empty_and_large_batches(engine: StorageEngine) -> None:
    with engine.batch():  # type: ignore[attr-defined]
        pass
    assert len(engine) == 0
    big = os.urandom(MIB)
    with engine.batch():  # type: ignore[attr-defined]
        for i in range(1000):
            engine.put(f"b/{i:04d}", b"%d" % i)
        engine.put("b/big", big)
        with pytest.raises(TypeError):
            engine.put("b/bad", "text")  # type: ignore[arg-type]
    assert len(engine) == 1001
    assert engine.get("b/0999") == b"999" and engine.get("b/big") == big


@pytest.mark.parametrize("fsync", [False, True])
@pytest.mark.parametrize("name", DURABLE)
def test_committed_batches_survive_reopen(tmp_path: Path, name: str, fsync: bool) -> None:
    store = load_factory(name)(str(tmp_path), {"fsync": fsync})
    try:
        with store.batch():  # type: ignore[attr-defined]
            for i in range(50):
                store.put(f"b/{i:02d}", b"%d" % i)
        with pytest.raises(ValueError), store.batch():  # type: ignore[attr-defined]
            store.put("b/rolled-back", b"x")
            store.delete("b/00")
            raise ValueError
    finally:
        store.close()
    store = load_factory(name)(str(tmp_path), {"fsync": fsync})
    try:
        assert sorted(store.keys()) == [f"b/{i:02d}" for i in range(50)]
        assert store.get("b/00") == b"0"
    finally:
        store.close()


def test_diskcache_failed_commit_rolls_back_and_the_engine_carries_on(tmp_path: Path) -> None:
    """A COMMIT that fails leaves SQLite's transaction open; the batch must close it.

    A deferred foreign key stands in for a full disk: both fail the COMMIT itself.
    """
    store = open_diskcache(tmp_path)
    try:
        store.put("b/before", b"x")
        con = store._cache._con  # type: ignore[attr-defined]
        con.execute("PRAGMA foreign_keys=ON")
        with pytest.raises(sqlite3.IntegrityError), store.batch():  # type: ignore[attr-defined]
            store.put("b/in-batch", b"y")
            con.execute("CREATE TEMP TABLE p(id INTEGER PRIMARY KEY)")
            con.execute("CREATE TEMP TABLE c(pid REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
            con.execute("INSERT INTO c VALUES (1)")
        assert store.get("b/in-batch") is None
        store.put("b/after", b"z")
        assert sorted(store.keys()) == ["b/after", "b/before"]
    finally:
        store.close()


# --------------------------------------------------------------------------- lmdb


def test_lmdb_needs_data_dir() -> None:
    with pytest.raises(ValueError, match="the lmdb engine needs a data directory"):
        load_factory("lmdb")(None, {})


def test_lmdb_lives_in_its_subdir_and_reopens(tmp_path: Path) -> None:
    store = open_lmdb(tmp_path / "nested")  # a data directory that does not exist yet
    store.put("b/k", b"kept")
    store.put("b/gone", b"x")
    store.delete("b/gone")
    store.put("b/" + "x" * 600, b"long")
    store.close()
    assert (tmp_path / "nested" / "storage-lmdb" / "data.mdb").is_file()
    store = open_lmdb(tmp_path / "nested")
    try:
        assert store.get("b/k") == b"kept"
        assert store.get("b/" + "x" * 600) == b"long"
        assert sorted(store.keys()) == ["b/k", "b/" + "x" * 600]
    finally:
        store.close()


def test_lmdb_default_map_is_virtual(tmp_path: Path) -> None:
    """64 GiB of address space by default, while the file holds only what was written."""
    store = open_lmdb(tmp_path)
    try:
        store.put("b/k", os.urandom(1000))
        env: lmdb.Environment = store._env  # type: ignore[attr-defined]
        assert env.info()["map_size"] == lmdb_storage.DEFAULT_MAP_SIZE == 64 << 30
        assert (tmp_path / "storage-lmdb" / "data.mdb").stat().st_size < MIB
    finally:
        store.close()


@pytest.mark.parametrize("options, sync, power_safe",
                         [({}, False, False), ({"fsync": False}, False, False),
                          ({"fsync": True}, True, True)])
def test_lmdb_fsync_option(tmp_path: Path, options: dict, sync: bool, power_safe: bool) -> None:
    store = open_lmdb(tmp_path, **options)
    try:
        env: lmdb.Environment = store._env  # type: ignore[attr-defined]
        assert env.flags()["sync"] is sync
        assert env.flags()["writemap"] is False  # commits write(2) their pages: see the module
        assert store.power_safe is power_safe  # type: ignore[attr-defined]
        assert store.durable is True
    finally:
        store.close()


@pytest.mark.parametrize("bad", ["true", 1, None, "yes"])
def test_lmdb_bad_fsync_option(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="storage option 'fsync' must be true or false"):
        open_lmdb(tmp_path, fsync=bad)


@pytest.mark.parametrize("bad", ["64GiB", 1.5e9, True, 0, -1, 4096, None])
def test_lmdb_bad_map_size_option(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="storage option 'map_size' must be a whole number"):
        open_lmdb(tmp_path, map_size=bad)


def test_lmdb_unknown_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'mapsize' is not used by the lmdb engine"):
        open_lmdb(tmp_path, engine="lmdb", mapsize=MIB)


def test_lmdb_engine_option_is_ignored(tmp_path: Path) -> None:
    open_lmdb(tmp_path, engine="lmdb", fsync=False, map_size=MIB).close()


def test_lmdb_map_grows_when_full(tmp_path: Path) -> None:
    store = open_lmdb(tmp_path, map_size=MIB)
    try:
        values = {f"b/{i:02d}": os.urandom(100_000) for i in range(40)}
        for key, value in values.items():
            store.put(key, value)
        store.put("b/huge", huge := os.urandom(8 * MIB))  # more than double the map at once
        env: lmdb.Environment = store._env  # type: ignore[attr-defined]
        assert env.info()["map_size"] > 8 * MIB
        assert all(store.get(key) == value for key, value in values.items())
        assert store.get("b/huge") == huge
    finally:
        store.close()
    store = open_lmdb(tmp_path, map_size=MIB)  # an older, smaller setting still opens it
    try:
        assert len(store) == 41
        store.put("b/more", os.urandom(MIB))
        assert store.get("b/huge") == huge
    finally:
        store.close()


def test_lmdb_map_grows_inside_a_batch(tmp_path: Path) -> None:
    store = open_lmdb(tmp_path, map_size=MIB)
    try:
        store.put("b/before", b"b")
        values = {f"b/{i:02d}": os.urandom(100_000) for i in range(40)}
        with store.batch():  # type: ignore[attr-defined]
            store.delete("b/before")
            for key, value in values.items():
                store.put(key, value)
                assert store.get(key) == value
            assert store.get("b/before") is None and len(store) == 40
        assert all(store.get(key) == value for key, value in values.items())
        assert store.get("b/before") is None
        with pytest.raises(KeyError), store.batch():  # type: ignore[attr-defined]
            for i in range(40):
                store.put(f"b/x{i:02d}", os.urandom(200_000))
            raise KeyError("rolled back after growing")
        assert len(store) == 40
    finally:
        store.close()


def test_lmdb_full_map_raises_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the map cannot grow, the put fails loudly: it is never dropped in silence."""
    store = open_lmdb(tmp_path, map_size=MIB)
    try:
        monkeypatch.setattr(store, "_grow", lambda extra: None)
        with pytest.raises(lmdb.MapFullError):
            store.put("b/too-big", os.urandom(2 * MIB))
        with pytest.raises(lmdb.MapFullError), store.batch():  # type: ignore[attr-defined]
            store.put("b/small", b"s")
            store.put("b/too-big", os.urandom(2 * MIB))
        assert store.get("b/too-big") is None and store.get("b/small") is None
        store.put("b/small", b"s")  # the engine carries on
        assert len(store) == 1
    finally:
        store.close()


def test_lmdb_keys_hold_no_transaction_between_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused walk does not stop the map from growing (LMDB needs no open transaction)."""
    monkeypatch.setattr(lmdb_storage, "KEYS_PER_CHUNK", 5)
    store = open_lmdb(tmp_path, map_size=MIB)
    try:
        for i in range(20):
            store.put(f"b/{i:02d}", b"v")
        walk = store.keys()
        assert next(walk) == "b/00"
        for i in range(4):
            store.put(f"b/big{i}", os.urandom(MIB))  # grows the map
        assert list(walk) == [f"b/{i:02d}" for i in range(1, 20)] + [f"b/big{i}" for i in range(4)]
    finally:
        store.close()


def test_lmdb_long_keys_share_no_slot_with_short_ones(tmp_path: Path) -> None:
    store = open_lmdb(tmp_path)
    try:
        long = "b/" + "x" * 600
        store.put(long, b"long")
        store.put("b/short", b"short")
        env: lmdb.Environment = store._env  # type: ignore[attr-defined]
        with env.begin() as txn:
            slots = [bytes(slot) for slot, _ in txn.cursor()]
        assert slots[0] == b"b/short"
        assert slots[1][:1] == b"\xff" and len(slots[1]) == 33
        assert len(store) == 2 and store.get(long) == b"long"
    finally:
        store.close()


def test_lmdb_hash_collision_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forced: two long keys with one digest. Neither is confused with the other."""
    monkeypatch.setattr(lmdb_storage, "_digest", lambda raw: b"\xff" + bytes(32))
    first, second = "b/" + "a" * 600, "b/" + "b" * 600
    store = open_lmdb(tmp_path)
    try:
        store.put(first, b"first")
        assert store.get(second) is None
        with pytest.raises(lmdb_storage.KeyCollisionError):
            store.put(second, b"second")
        store.delete(second)  # not stored: a no-op that must not remove `first`
        assert store.get(first) == b"first"
        assert list(store.keys()) == [first]
    finally:
        store.close()


# --------------------------------------------------------------------------- kill -9

#: Opens the engine named by argv[2] through its entry point, as the node would.
OPEN_ENGINE = textwrap.dedent(
    """
    import sys
    from importlib.metadata import entry_points
    [entry] = entry_points(group="dynamo", name=sys.argv[2])
    store = entry.load().dynamo_storage_engines()[sys.argv[2]](sys.argv[1], {})
    """
)

WRITER = OPEN_ENGINE + textwrap.dedent(
    """
    for i in range(200):
        store.put(f"b/{i:03d}", (b"%03d" % i) * (1 + i * 97))
        print(f"acked {i}", flush=True)
    input()  # wait to be killed, holding the cache open
    """
)


def expected_value(i: int) -> bytes:
    """The value WRITER puts under key ``i``: sizes vary so a torn write would show."""
    return (b"%03d" % i) * (1 + i * 97)


def read_lines(stream: Any, lines: queue.Queue[str | None]) -> None:
    """Move the child's stdout into a queue, so the test can wait on it with a timeout."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def acked_after_kill(proc: subprocess.Popen[str], kill_after: int) -> set[int]:
    """Wait for ``kill_after`` acks, kill -9 the writer, and return every ack it printed."""
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True).start()
    acked: set[int] = set()
    while len(acked) < kill_after:
        line = lines.get(timeout=30)
        assert line is not None, f"writer exited early: {proc.wait(5)}"
        acked.add(int(line.split()[1]))
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    while (line := lines.get(timeout=30)) is not None:
        acked.add(int(line.split()[1]))
    return acked


def run_writer_until_killed(script: str, tmp_path: Path, name: str,
                            kill_after: int) -> set[int]:
    """Run a writer script on engine ``name``; kill -9 it after ``kill_after`` acks."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        return acked_after_kill(proc, kill_after=kill_after)
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize("name", DURABLE)
def test_acked_puts_survive_kill_9(tmp_path: Path, name: str) -> None:
    acked = run_writer_until_killed(WRITER, tmp_path, name, kill_after=150)
    store = load_factory(name)(str(tmp_path), {})
    try:
        assert len(acked) >= 150
        for i in acked:
            assert store.get(f"b/{i:03d}") == expected_value(i), f"acked key {i} lost"
        # Writes in flight at the kill may be there or not, but never torn.
        for key in store.keys():
            i = int(key.split("/")[1])
            assert store.get(key) == expected_value(i)
    finally:
        store.close()


#: Batches of BATCH_SIZE puts, acknowledged after each batch's exit; it keeps writing until
#: it is killed (or runs out of batches and waits).
BATCH_WRITER = OPEN_ENGINE + textwrap.dedent(
    """
    for b in range(2000):
        with store.batch():
            for i in range(b * 5, b * 5 + 5):
                store.put(f"b/{i:05d}", (b"%05d" % i) * (1 + i * 37 % 400))
        print(f"acked {b}", flush=True)
    input()
    """
)
BATCH_SIZE = 5


@pytest.mark.parametrize("name", DURABLE)
def test_acked_batches_survive_kill_9_whole_or_not_at_all(tmp_path: Path, name: str) -> None:
    """A batch whose exit returned survives kill -9; one cut short by it leaves nothing."""
    acked = run_writer_until_killed(BATCH_WRITER, tmp_path, name, kill_after=100)
    store = load_factory(name)(str(tmp_path), {})
    try:
        present: dict[int, set[int]] = {}
        for key in store.keys():
            i = int(key.split("/")[1])
            assert store.get(key) == (b"%05d" % i) * (1 + i * 37 % 400), f"key {i} torn"
            present.setdefault(i // BATCH_SIZE, set()).add(i)
        assert set(present) >= acked, f"acked batches lost: {sorted(acked - set(present))}"
        for b, keys in present.items():
            assert len(keys) == BATCH_SIZE, f"batch {b} partly stored: {sorted(keys)}"
    finally:
        store.close()


#: Dies inside a batch, holding the engine's write lock (LMDB's writer mutex, SQLite's
#: RESERVED lock) with a write in flight.
DIES_IN_BATCH = OPEN_ENGINE + textwrap.dedent(
    """
    store.put("b/before", b"kept")
    batch = store.batch()  # kept referenced: a collected batch would end (and roll back)
    batch.__enter__()
    store.put("b/in-flight", b"lost")
    print("acked 0", flush=True)
    input()
    """
)


@pytest.mark.parametrize("name", DURABLE)
def test_kill_9_inside_a_batch_leaves_nothing_and_no_lock(tmp_path: Path, name: str) -> None:
    assert run_writer_until_killed(DIES_IN_BATCH, tmp_path, name, kill_after=1) == {0}
    store = load_factory(name)(str(tmp_path), {})
    try:
        assert store.get("b/before") == b"kept"
        assert store.get("b/in-flight") is None
        store.put("b/after", b"a")  # the dead writer's lock does not block this one
        with store.batch():  # type: ignore[attr-defined]
            store.put("b/batched", b"b")
        assert sorted(store.keys()) == ["b/after", "b/batched", "b/before"]
    finally:
        store.close()
