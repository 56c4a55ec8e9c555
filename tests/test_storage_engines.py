"""The storage engine contract, run against every built-in engine, plus diskcache's promises.

Engines are loaded through a real ``pluggy`` plugin manager from the ``dynamo`` entry-point
group, so these tests also prove the built-ins register exactly like a third-party plugin.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import pluggy
import pytest

from dynamo_core import hookspecs
from dynamo_core.hookspecs import StorageEngine, StorageFactory

ENGINES = ["memory", "diskcache"]
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


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageEngine]:
    store = load_factory(request.param)(str(tmp_path), {})
    yield store
    store.close()


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name, durable", [("memory", False), ("diskcache", True)])
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


# --------------------------------------------------------------------------- kill -9

WRITER = textwrap.dedent(
    """
    import sys
    from dynamo_plugins.diskcache_storage import open_diskcache_engine
    store = open_diskcache_engine(sys.argv[1], {})
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


def test_acked_puts_survive_kill_9(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        acked = acked_after_kill(proc, kill_after=150)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    store = open_diskcache(tmp_path)
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
