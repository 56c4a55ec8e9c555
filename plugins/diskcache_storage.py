"""The ``diskcache`` storage engine: a durable key/value store on SQLite through diskcache.

diskcache is built as a *cache*: out of the box it evicts entries once the cache outgrows its
size limit. A Dynamo replica must never drop an acknowledged write on its own, so the engine
opens the cache with eviction switched off (``eviction_policy='none'``, ``cull_limit=0``).

Durability. diskcache runs SQLite in WAL mode with ``synchronous=NORMAL``: every committed
transaction has been written into the WAL file by ``write(2)`` before ``set`` returns, but not
fsynced. A kill -9 of the process leaves those bytes in the operating system's page cache, and
the next open replays the WAL, so an acknowledged put survives the death of the process (which
is what ``durable = True`` promises). Surviving a power loss or kernel crash needs an fsync per
commit; the ``fsync = true`` option turns on ``synchronous=FULL`` for that, at a latency cost.

Every value is kept inline in the SQLite database rather than in a side file, because
diskcache writes side files without an fsync: one SQLite commit then covers key and value
alike, whatever the ``fsync`` option says.

Group commit. ``batch()`` wraps its writes in one SQLite transaction (diskcache's
``transact``), so a batch costs one commit, and with ``fsync = true`` one sync.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import diskcache

from dynamo_core.hookspecs import StorageEngine, StorageFactory, hookimpl

from ._options import fsync_option

#: SQLite's ``PRAGMA synchronous`` levels, as diskcache's ``sqlite_synchronous`` takes them.
SYNCHRONOUS_NORMAL = 1
SYNCHRONOUS_FULL = 2

#: Values below this size stay inline in SQLite; SQLite's own blob limit is about 1e9 bytes,
#: so in practice every value does.
INLINE_VALUE_LIMIT = 2**31 - 1


class DiskCacheEngine:
    """A :class:`~dynamo_core.hookspecs.StorageEngine` over one ``diskcache.Cache``."""

    durable = True

    def __init__(self, directory: str, fsync: bool) -> None:
        #: every commit synced: an acknowledged put survives a power loss, not only kill -9
        self.power_safe = fsync
        # Every setting is passed on every open: diskcache persists settings in the database
        # and would otherwise keep whatever an earlier open (or its own defaults) chose.
        self._cache = diskcache.Cache(
            directory=directory,
            eviction_policy="none",
            cull_limit=0,
            statistics=False,
            tag_index=False,
            sqlite_synchronous=SYNCHRONOUS_FULL if fsync else SYNCHRONOUS_NORMAL,
            disk_min_file_size=INLINE_VALUE_LIMIT,
        )
        #: inside ``batch()``
        self._batching = False

    def get(self, key: str) -> bytes | None:
        """The stored value, or ``None``; no stored value is ever ``None`` (values are bytes)."""
        return self._cache.get(key, default=None)

    def put(self, key: str, value: bytes) -> None:
        """Commit ``value``; when this returns the write survives kill -9 of the process.

        The type check matters here: diskcache would happily store a ``str`` or pickle any
        object and hand back a different type than the core expects.
        """
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise TypeError(
                f"storage keys must be str and values bytes, got {type(key).__name__} "
                f"and {type(value).__name__}"
            )
        self._cache.set(key, value)

    def delete(self, key: str) -> None:
        """Remove ``key``; diskcache reports a missing key by returning False, which we ignore."""
        self._cache.delete(key)

    def keys(self) -> Iterator[str]:
        """Iterate in batches straight from SQLite, so a large store is never loaded whole."""
        return self._cache.iterkeys()

    def __len__(self) -> int:
        # diskcache keeps the count in its settings table through triggers: no table scan.
        return len(self._cache)

    def close(self) -> None:
        """Close the SQLite connections; diskcache makes a second close harmless."""
        self._cache.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the writes inside are one SQLite transaction, committed at exit.

        diskcache's ``transact`` is reentrant per thread: the ``set`` and ``delete`` calls
        inside join its transaction rather than commit their own, and ``get`` reads through
        the same connection, so it sees them. It commits when the block exits normally and
        rolls back (then re-raises) on any exception. It would nest; batches here do not.
        """
        if self._batching:
            raise RuntimeError("storage batches are never nested")
        self._batching = True
        try:
            with self._cache.transact():
                yield
        except BaseException:
            # A COMMIT that failed (a full disk, say) can leave SQLite's transaction open
            # after diskcache has forgotten it; then no later write could begin its own.
            con = self._cache._con
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            self._batching = False


def open_diskcache_engine(data_dir: str | None, options: Mapping[str, Any]) -> StorageEngine:
    """Open (or create) the store in ``<data_dir>/storage``.

    A subdirectory keeps the database apart from anything else the node keeps in its data
    directory (hints, membership state).
    """
    if data_dir is None:
        raise ValueError("the diskcache engine needs a data directory (set --data-dir)")
    return DiskCacheEngine(os.path.join(data_dir, "storage"), fsync=fsync_option(options))


@hookimpl
def dynamo_storage_engines() -> Mapping[str, StorageFactory]:
    """Offer the engine under the name ``[storage] engine = "diskcache"`` selects."""
    return {"diskcache": open_diskcache_engine}
