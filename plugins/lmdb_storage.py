"""The ``lmdb`` storage engine: a durable key/value store on LMDB, faster than diskcache.

LMDB is a copy-on-write B+tree in one memory-mapped file. Readers never block the writer and
a commit is a single atomic switch of the root page, so a kill -9 at any instant leaves the
previous or the new state, never a torn one. It never evicts anything.

Durability. The environment is opened without ``MDB_WRITEMAP``: a commit writes every dirty
page, then the meta page naming the new root, into the file with ``write(2)`` before
``mdb_txn_commit`` (and so ``put``) returns. With ``fsync = false`` (the default) the engine
opens LMDB with ``MDB_NOSYNC``, which only skips the ``fdatasync`` after those writes: the
bytes are in the operating system's page cache, which outlives the process, so an
acknowledged put survives kill -9 of the process (``durable = True``, as diskcache promises).
A power loss or kernel crash is another matter: without syncs the kernel may write the pages
back in any order, and LMDB's documentation warns that the newest transactions may be lost
and the file may even be left inconsistent, so ``power_safe`` is False and a node that did
not stop cleanly starts a new actor epoch. ``close()`` forces a sync, so a clean stop is on
disk. ``fsync = true`` keeps LMDB's default full sync (data pages, then the meta page, each
``fdatasync``-ed before the commit returns): a put survives a power loss and the engine sets
``power_safe = True``.

The map. LMDB maps the file into the address space up to ``map_size`` bytes; the file itself
only grows as data is written (without ``MDB_WRITEMAP`` it is never preallocated), so the
default, 64 GiB, costs address space, not disk, on a 64-bit system. When a write finds the map
full (``MDB_MAP_FULL``), the engine aborts the transaction, grows the map (to at least double,
and at least enough for the data being written) and runs the transaction again, once: a second
failure raises. A write is never dropped silently. Inside a batch, the batch's writes so far
(the engine keeps them for this) are replayed into a new transaction in the grown map.

Long keys. LMDB keys hold at most ``max_key_size()`` bytes (511 in the stock build) and
cannot be empty, while store keys (``"<bucket>/<key>"``) may be longer. A key whose UTF-8
form is empty or too long is stored under ``0xFF`` + its SHA-256 digest, with the full key
in front of the value (a 4-byte big-endian length, the key, then the value). ``0xFF`` never
occurs in UTF-8, so these slots cannot meet a short key's, and every read, overwrite and
delete compares the full key kept in the slot: two long keys with one digest are never
confused, and a put that would overwrite another key's data raises
:class:`KeyCollisionError` rather than lose it (for SHA-256, that is a theoretical case).

Iterating. ``keys()`` reads the keys in chunks, each in its own short read transaction,
resuming after the last key handed out. No transaction stays open while the caller holds the
iterator, so the caller may put and delete as it walks (and the map can still grow), memory
stays bounded by one chunk, and every key present for the whole walk is seen exactly once
(keys added or removed during the walk may or may not be).

Group commit. ``batch()`` runs every put and delete inside it in one write transaction,
committed at its exit (one sync for the batch when ``fsync = true``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lmdb

from dynamo_core.hookspecs import StorageEngine, StorageFactory, hookimpl

from ._options import fsync_option

#: The default map size: virtual address space, not disk; the map also grows when full.
DEFAULT_MAP_SIZE = 64 << 30
#: The smallest ``map_size`` accepted.
MIN_MAP_SIZE = 1 << 20
#: Map sizes are rounded up to a multiple of this (a multiple of any OS page size).
MAP_SIZE_STEP = 1 << 20
#: Keys ``keys()`` reads per read transaction.
KEYS_PER_CHUNK = 512
#: The first byte of a hashed (empty or long) key's slot; it never occurs in UTF-8.
LONG_KEY_PREFIX = b"\xff"
#: The length prefix of the full key stored in front of a hashed key's value.
KEY_LENGTH_BYTES = 4
#: Options the engine reads from the ``[storage]`` table (``engine`` names the engine).
OPTIONS = frozenset({"engine", "fsync", "map_size"})


class KeyCollisionError(RuntimeError):
    """Two different long keys hashed to one slot: the put is refused, nothing is lost."""


def _digest(raw: bytes) -> bytes:
    """The slot of a key stored by hash (a module function, so tests can force collisions)."""
    return LONG_KEY_PREFIX + hashlib.sha256(raw).digest()


def _encode_key(key: str) -> bytes:
    # surrogatepass: every str round-trips, as with the memory engine; the UTF-8 of a lone
    # surrogate is ED A0..BF xx, so 0xFF still never occurs.
    return key.encode("utf-8", "surrogatepass")


def _split_long(data: bytes) -> tuple[bytes, bytes]:
    """The full key and the value kept in a hashed key's slot."""
    length = int.from_bytes(data[:KEY_LENGTH_BYTES], "big")
    end = KEY_LENGTH_BYTES + length
    return data[KEY_LENGTH_BYTES:end], data[end:]


class LmdbEngine:
    """A :class:`~dynamo_core.hookspecs.StorageEngine` over one LMDB environment."""

    durable = True

    def __init__(self, directory: str, fsync: bool, map_size: int) -> None:
        #: every commit synced: an acknowledged put survives a power loss, not only kill -9
        self.power_safe = fsync
        os.makedirs(directory, exist_ok=True)
        # py-lmdb refuses to open one environment twice in a process (LMDB's fcntl locks
        # would be shared and released by the first close).
        self._env = lmdb.open(
            directory,
            map_size=map_size,
            subdir=True,
            sync=fsync,
            metasync=True,
            writemap=False,
            map_async=False,
            readahead=False,
            max_dbs=0,
            lock=True,
            create=True,
        )
        # Reader slots left by a process that was killed (not this one) hold old pages back.
        self._env.reader_check()
        self._max_key = self._env.max_key_size()
        self._closed = False
        #: inside ``batch()``
        self._batching = False
        #: the open batch's write transaction (None once it failed and was aborted)
        self._txn: lmdb.Transaction[bytes] | None = None
        #: the batch's writes so far, replayed into a new transaction after the map grew
        self._log: list[tuple[str, bytes | None]] = []

    # ------------------------------------------------------------------ keys and slots

    def _slot(self, key: str) -> tuple[bytes, bytes | None]:
        """LMDB's key for ``key``, and the full encoded key when it is stored by hash."""
        raw = _encode_key(key)
        if 0 < len(raw) <= self._max_key:
            return raw, None
        return _digest(raw), raw

    def _apply(self, txn: lmdb.Transaction[bytes], key: str, value: bytes | None) -> None:
        """Put (or, with ``value`` None, delete) ``key`` in ``txn``."""
        slot, full = self._slot(key)
        if full is None:
            if value is None:
                txn.delete(slot)
            else:
                txn.put(slot, value)
            return
        old = txn.get(slot)
        if old is not None and _split_long(old)[0] != full:
            if value is None:
                return  # the slot holds another key: ours is not stored
            raise KeyCollisionError(
                f"storage key {key[:60]!r}... ({len(full)} bytes) hashes to the slot of "
                f"another stored key; refusing to overwrite it"
            )
        if value is None:
            txn.delete(slot)
        else:
            txn.put(slot, len(full).to_bytes(KEY_LENGTH_BYTES, "big") + full + value)

    # ------------------------------------------------------------------ the contract

    def get(self, key: str) -> bytes | None:
        """The stored value (inside a batch, as the batch left it), or ``None``."""
        slot, full = self._slot(key)
        if self._batching:
            data = self._batch_txn().get(slot)
        else:
            with self._env.begin() as txn:
                data = txn.get(slot)
        if data is None or full is None:
            return data
        stored_key, value = _split_long(data)
        return value if stored_key == full else None

    def put(self, key: str, value: bytes) -> None:
        """Commit ``value`` (or add it to the open batch); see the module on durability."""
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise TypeError(
                f"storage keys must be str and values bytes, got {type(key).__name__} "
                f"and {type(value).__name__}"
            )
        self._write(key, value)

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is a no-op."""
        self._write(key, None)

    def keys(self) -> Iterator[str]:
        """Every key, read in chunks with no transaction held between them (see the module)."""
        after: bytes | None = None
        while True:
            chunk = self._key_chunk(after)
            for _, key in chunk:
                yield key
            if len(chunk) < KEYS_PER_CHUNK:
                return
            after = chunk[-1][0]

    def __len__(self) -> int:
        # LMDB keeps the entry count in the tree's root record: no scan.
        if self._batching:
            return self._batch_txn().stat()["entries"]
        return self._env.stat()["entries"]

    def close(self) -> None:
        """Abort an open batch, sync (a clean stop is on disk) and close; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        try:
            if not self.power_safe:
                self._env.sync(True)
        finally:
            self._env.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the writes inside are committed together at exit, or not at all.

        Gets, ``keys()`` and ``len`` inside see the batch's writes. An exception inside
        aborts the transaction (nothing of the batch is stored) and propagates.
        """
        if self._batching:
            raise RuntimeError("storage batches are never nested")
        if self._closed:
            raise RuntimeError("the storage engine is closed")
        self._txn = self._env.begin(write=True)
        self._batching = True
        self._log = []
        try:
            yield
        except BaseException:
            if self._txn is not None:
                self._txn.abort()
            raise
        else:
            self._commit_batch()
        finally:
            self._txn = None
            self._batching = False
            self._log = []

    # ------------------------------------------------------------------ writing

    def _batch_txn(self) -> lmdb.Transaction[bytes]:
        if self._txn is None:
            raise RuntimeError("this storage batch failed and was rolled back")
        return self._txn

    def _write(self, key: str, value: bytes | None) -> None:
        size = len(key) + (len(value) if value is not None else 0)
        if not self._batching:
            for attempt in range(2):
                try:
                    with self._env.begin(write=True) as txn:
                        self._apply(txn, key, value)
                    return
                except lmdb.MapFullError:
                    if attempt:
                        raise
                    self._grow(size)
        txn = self._batch_txn()
        try:
            self._apply(txn, key, value)
        except lmdb.MapFullError:
            # The transaction is dead: redo the batch so far in a bigger map, then this write.
            # Until that worked the batch counts as failed (its transaction is None).
            txn.abort()
            self._txn = None
            self._grow(self._log_bytes() + size)
            txn = self._replay()
            try:
                self._apply(txn, key, value)
            except BaseException:
                txn.abort()
                raise
            self._txn = txn
        self._log.append((key, value))

    def _commit_batch(self) -> None:
        txn = self._batch_txn()
        try:
            txn.commit()
        except lmdb.MapFullError:
            # A failed commit has aborted the transaction; the log holds the whole batch.
            self._txn = None
            self._grow(self._log_bytes())
            txn = self._replay()
            txn.commit()

    def _replay(self) -> lmdb.Transaction[bytes]:
        """A new write transaction holding the open batch's writes so far."""
        txn = self._env.begin(write=True)
        try:
            for key, value in self._log:
                self._apply(txn, key, value)
        except BaseException:
            txn.abort()
            raise
        return txn

    def _log_bytes(self) -> int:
        return sum(len(key) + (len(value) if value is not None else 0)
                   for key, value in self._log)

    def _grow(self, extra: int) -> None:
        """Enlarge the map after ``MDB_MAP_FULL``: at least double, and room for ``extra``.

        LMDB allows this only while this process has no transaction open; the engine never
        leaves one open outside a batch, and a batch's was aborted before this is called.
        """
        current = self._env.info()["map_size"]
        wanted = max(2 * current, current + 2 * extra + MAP_SIZE_STEP)
        self._env.set_mapsize(-(-wanted // MAP_SIZE_STEP) * MAP_SIZE_STEP)

    # ------------------------------------------------------------------ reading keys

    def _key_chunk(self, after: bytes | None) -> list[tuple[bytes, str]]:
        """Up to ``KEYS_PER_CHUNK`` (slot, key) pairs after slot ``after``, in slot order."""
        if self._batching:
            return self._read_chunk(self._batch_txn(), after)
        with self._env.begin() as txn:
            return self._read_chunk(txn, after)

    def _read_chunk(self, txn: lmdb.Transaction[bytes],
                    after: bytes | None) -> list[tuple[bytes, str]]:
        chunk: list[tuple[bytes, str]] = []
        with txn.cursor() as cursor:
            found = cursor.first() if after is None else cursor.set_range(after)
            if found and after is not None and cursor.key() == after:
                found = cursor.next()
            while found and len(chunk) < KEYS_PER_CHUNK:
                slot = cursor.key()
                long = slot.startswith(LONG_KEY_PREFIX)
                raw = _split_long(cursor.value())[0] if long else slot
                chunk.append((slot, raw.decode("utf-8", "surrogatepass")))
                found = cursor.next()
        return chunk


def _map_size_option(options: Mapping[str, Any]) -> int:
    """Read ``map_size`` (bytes) strictly: a whole number, at least ``MIN_MAP_SIZE``."""
    map_size = options.get("map_size", DEFAULT_MAP_SIZE)
    # bool is an int subclass, but `map_size = true` in a config is a mistake, not 1.
    if not isinstance(map_size, int) or isinstance(map_size, bool) or map_size < MIN_MAP_SIZE:
        raise ValueError(
            f"storage option 'map_size' must be a whole number of bytes >= {MIN_MAP_SIZE}, "
            f"got {map_size!r} ({type(map_size).__name__})"
        )
    return map_size


def _check_options(options: Mapping[str, Any]) -> None:
    """Refuse settings this engine does not read: a typo must not go unnoticed."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(
            f"storage option {', '.join(map(repr, unknown))} is not used by the lmdb engine "
            f"(it reads: fsync, map_size)"
        )


def open_lmdb_engine(data_dir: str | None, options: Mapping[str, Any]) -> StorageEngine:
    """Open (or create) the store in ``<data_dir>/storage-lmdb``."""
    if data_dir is None:
        raise ValueError("the lmdb engine needs a data directory (set --data-dir)")
    _check_options(options)
    fsync = fsync_option(options)
    map_size = _map_size_option(options)
    return LmdbEngine(os.path.join(data_dir, "storage-lmdb"), fsync=fsync, map_size=map_size)


@hookimpl
def dynamo_storage_engines() -> Mapping[str, StorageFactory]:
    """Offer the engine under the name ``[storage] engine = "lmdb"`` selects."""
    return {"lmdb": open_lmdb_engine}
