"""A node's local replica store: versions of each key on top of a byte storage engine.

Engines only keep bytes; the rules that make a replica correct live here, once: incoming
versions are folded into what is held, only the causally maximal set is kept, a write that
would grow a key past the sibling bounds (a count, and the bytes one frame can carry) is
refused, never silently trimmed, and this node's actor issues each dot exactly once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import cbor2

from .api import StorageEngine
from .errors import InvalidRequest, Overloaded, StorageFailed, WireError
from .versions import Clock, Dot, Version, next_dot, reconcile
from .wire import MAX_ITEMS, MAX_OBJECT_BYTES, SCAN_FREE_BYTES, prescan

log = logging.getLogger(__name__)

#: The engine key of the store's identity record (see :mod:`dynamo_core.identity`). Every
#: key of a replica holds a ``/`` (``bucket/key``); this one cannot be confused with them.
IDENTITY_KEY = "\x00identity"
#: Room left in a frame for the envelope and the fields around a key and its versions.
FRAME_OVERHEAD = 4096
#: The CBOR items and decoded objects one key may hold: the wire's caps less a sixteenth
#: for what surrounds a key's versions in a frame (envelope, body, a reply's context).
MAX_KEY_ITEMS = MAX_ITEMS - MAX_ITEMS // 16
MAX_KEY_OBJECT_BYTES = MAX_OBJECT_BYTES - MAX_OBJECT_BYTES // 16


def key_bytes_limit(max_message_bytes: int) -> int:
    """The most bytes one key (its name and versions) may take so any message carrying
    it (a replica's put or answer, a hint, a transfer) fits in one frame."""
    return max_message_bytes - min(FRAME_OVERHEAD, max_message_bytes // 128)


def storage_key(bucket: str, key: str) -> str:
    """Bucket names hold no ``/``, so the first one separates bucket from key."""
    return f"{bucket}/{key}"


def split_storage_key(skey: str) -> tuple[str, str]:
    bucket, _, key = skey.partition("/")
    return bucket, key


#: What a cached record takes in memory beyond its encoded bytes: its Version, Clock and
#: tuple objects (measured: a 248-byte record of one version with a two-actor clock takes
#: about 1,500 bytes decoded). An absent key is cached as a bare None.
RECORD_OVERHEAD = 1280
ABSENT_CHARGE = 128


def _charge(record: _Record | None) -> int:
    return ABSENT_CHARGE if record is None else RECORD_OVERHEAD + record.size


class _Record:
    """One key as the store holds it, decoded: its versions and its dot counter."""

    __slots__ = ("by", "issued", "size", "versions")

    def __init__(self, versions: list[Version], issued: int, by: str | None,
                 size: int) -> None:
        self.versions = versions
        self.issued = issued
        self.by = by
        #: bytes of the encoded record (what the cache and the size limit count)
        self.size = size

    def encode(self) -> bytes:
        return cbor2.dumps({"versions": [v.to_wire() for v in self.versions],
                            "issued": self.issued, "by": self.by})


class LocalStore:
    """Versions of each key, plus the highest dot counter this node's actor issued for it.

    A key is stored as ``{"versions": [...], "issued": n, "by": actor}``: ``issued`` counts
    the dots ``actor`` (this node's actor when it was written) issued for the key. It
    outlives the versions that carried it, so the node never hands out one of its dots
    twice. A node in a new actor epoch starts its own count at zero, so that its dots run
    1, 2, 3 and clocks fold them into one vector entry: counting on from the old actor's
    number would leave them isolated dots for good, clocks would grow with every write, and
    truncation would at last forget events whose versions then come back as siblings.

    Recently used keys are kept decoded in a cache bounded in memory (``cache_bytes``, each
    record charged what it takes decoded: its encoded size plus RECORD_OVERHEAD). The
    store is the only writer of its engine and writes through the cache, so the cache is
    never stale; it saves a read and a decode on the hot keys of every request.

    **Group commit.** Between :meth:`begin_batch` and :meth:`commit_batch`, writes go into
    one engine transaction when the engine offers ``batch()`` (see
    :class:`~dynamo_core.api.StorageEngine`). If the commit fails, every key written in the
    batch is put back as it was before it, in the cache and for the store's listener, and
    the dot counters the batch advanced stay advanced in memory: a dot may have left in a
    message already, so it must never be issued again.
    """

    def __init__(self, engine: StorageEngine, max_siblings: int, actor: str,
                 max_key_bytes: int = 16 * 1024 * 1024 - FRAME_OVERHEAD,
                 cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.engine = engine
        self.max_siblings = max_siblings
        #: the most bytes a key's versions may take: what one frame carries, less room for
        #: the envelope, so a key that was accepted can always be read, repaired and moved
        self.max_key_bytes = max_key_bytes
        self.actor = actor
        #: versions that arrived under a dot already held with other content (a dot issued
        #: twice somewhere): detected, logged and resolved the same way on every replica
        self.dot_conflicts = 0
        #: called as ``listener(bucket, key, old_versions, new_versions)`` after each change,
        #: so derived state (the Merkle trees) never needs a rescan
        self.listener: Callable[[str, str, list[Version], list[Version]], None] | None = None
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, _Record | None] = OrderedDict()
        self._cached_bytes = 0
        #: the open engine batch, and each key it wrote with its versions before it
        self._batch: AbstractContextManager[Any] | None = None
        #: between begin_batch and commit_batch: the first write opens ``_batch``
        self._batching = False
        self._before: dict[str, list[Version]] = {}
        #: the last record the open batch wrote for each key (None: deleted), kept apart
        #: from the cache, which may not hold it: a roll-back must know every counter
        self._written: dict[str, _Record | None] = {}
        #: counters of dots issued in batches that failed to commit (see begin_batch)
        self._floors: dict[str, int] = {}
        self.batches = 0
        self.batched_writes = 0

    # ----------------------------------------------------------------- records

    def _load(self, skey: str) -> _Record | None:
        """The key's record, from the cache or the engine.

        Stored bytes are decoded without the wire's limits and not scanned again: they are
        this store's own encoding of versions that were checked once, on the way in (the
        frame that brought them was decoded within the wire's caps, its versions parsed by
        ``Version.from_wire``), and :meth:`_fold` never writes a record that one frame could
        not carry back (bytes, items and decoded size). Untrusted bytes never reach the
        engine as they came, so reading a record costs what any valid frame may cost, and
        the check that bounds it is paid once per write of a big record, not per read.
        ``Version.from_wire`` does run again on a cache miss: its checks cost nothing next to
        building the versions (measured: a trusted constructor was no faster).
        """
        if skey in self._cache:
            self._cache.move_to_end(skey)
            return self._cache[skey]
        data = self._get(skey)
        if data is None:
            record = None
        else:
            raw = cbor2.loads(data)
            record = _Record([Version.from_wire(v) for v in raw["versions"]],
                             int(raw["issued"]), raw.get("by"), len(data))
        self._remember(skey, record)
        return record

    def _remember(self, skey: str, record: _Record | None) -> None:
        self._forget(skey)
        size = _charge(record)
        if size > self.cache_bytes // 8:
            return  # one huge key must not empty the cache
        self._cache[skey] = record
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= _charge(old)

    def _forget(self, skey: str) -> None:
        if skey in self._cache:
            old = self._cache.pop(skey)
            self._cached_bytes -= _charge(old)

    def _get(self, skey: str) -> bytes | None:
        try:
            return self.engine.get(skey)
        except Exception as exc:  # any engine failure is the same to callers
            raise StorageFailed(f"storage engine failed reading {skey!r}: {exc}") from exc

    def _write(self, skey: str, record: _Record, data: bytes | None = None) -> None:
        """Store ``record`` (encoded as ``data`` when the caller has it already)."""
        if data is None:
            data = record.encode()
            record.size = len(data)
        self._open_batch()
        if self._batch is not None and skey not in self._before:
            held = self._load(skey)
            self._before[skey] = list(held.versions) if held is not None else []
        try:
            self.engine.put(skey, data)
        except Exception as exc:  # disk full, I/O error, a plugin's bug
            self._forget(skey)
            raise StorageFailed(f"storage engine failed writing {skey!r}: {exc}") from exc
        self._floors.pop(skey, None)
        self._remember(skey, record)
        if self._batch is not None:
            self._written[skey] = record
        self.batched_writes += self._batch is not None

    def _issued(self, skey: str, record: _Record | None) -> int:
        """The dots this node's actor issued for the key (none if an earlier actor's)."""
        floor = self._floors.get(skey, 0)
        if record is None or (record.by is not None and record.by != self.actor):
            return floor
        return max(record.issued, floor)

    # ----------------------------------------------------------------- reading

    def state(self, bucket: str, key: str) -> tuple[list[Version], int]:
        """The versions held for the key and the highest counter this actor issued for it."""
        skey = storage_key(bucket, key)
        record = self._load(skey)
        return ([] if record is None else list(record.versions)), self._issued(skey, record)

    def read(self, bucket: str, key: str) -> list[Version]:
        return self.state(bucket, key)[0]

    # ----------------------------------------------------------------- writing

    def issue_dot(self, bucket: str, key: str, context: Clock) -> Dot:
        """A dot of this node's actor for the key, never issued before, durably recorded.

        Every path that makes a version here without storing it at once (a resolved
        merge written back, a stand-in's write kept as a hint) takes its dot from this
        call or from :meth:`write_new`: each reads and advances the key's counter in one
        step of the event loop and stores it (within the open batch, if any) before the
        dot is returned. Raises :class:`InvalidRequest` for a context naming an event of
        this actor it never made.
        """
        skey = storage_key(bucket, key)
        record = self._load(skey)
        dot = self._next_dot(bucket, key, skey, record, context)
        versions = [] if record is None else list(record.versions)
        self._write(skey, _Record(versions, dot[1], self.actor, 0))
        return dot

    def write_new(self, bucket: str, key: str, context: Clock,
                  make: Callable[[Dot], Version]) -> Version:
        """Issue the key's next dot, make the version with it, and fold it in.

        A coordinator's own write in one read and one write of the engine: the counter is
        stored with the version it stamps, so neither exists without the other.
        """
        skey = storage_key(bucket, key)
        record = self._load(skey)
        version = make(self._next_dot(bucket, key, skey, record, context))
        self._fold(bucket, key, skey, record, [version])
        return version

    def _next_dot(self, bucket: str, key: str, skey: str, record: _Record | None,
                  context: Clock) -> Dot:
        held = [] if record is None else record.versions
        try:
            return next_dot(self.actor, context, held, self._issued(skey, record))
        except ValueError as exc:
            raise InvalidRequest(f"key {key!r} in bucket {bucket!r}: {exc}") from None

    def apply(self, bucket: str, key: str, incoming: Sequence[Version]) -> bool:
        """Fold ``incoming`` into the key's versions; True if what is held changed."""
        skey = storage_key(bucket, key)
        return self._fold(bucket, key, skey, self._load(skey), incoming)

    def _fold(self, bucket: str, key: str, skey: str, record: _Record | None,
              incoming: Sequence[Version]) -> bool:
        held = [] if record is None else record.versions
        merged = reconcile([*held, *incoming])
        mine = max((v.dot[1] for v in incoming if v.dot[0] == self.actor), default=0)
        changed = not same_versions(held, merged)
        self._note_dot_conflicts(bucket, key, held, incoming)
        issued = self._issued(skey, record)
        if not changed and mine <= issued:
            return False
        if len(merged) > self.max_siblings and len(merged) > len(held):
            raise Overloaded(
                f"key {key!r} in bucket {bucket!r} would have {len(merged)} siblings, more "
                f"than the limit of {self.max_siblings}; read it and write back one value "
                f"with the context to merge them")
        new = _Record(merged, max(issued, mine), self.actor, 0)
        data = new.encode()
        new.size = len(data)
        # A change that shrinks the key (a merge superseding siblings) is always taken, so
        # a key at its limit can still be mended with a put carrying its context.
        if len(data) > (record.size if record else 0):
            self._check_size(bucket, key, skey, data)
        self._write(skey, new, data)
        if self.listener is not None and changed:
            self.listener(bucket, key, list(held), merged)
        return changed

    def _check_size(self, bucket: str, key: str, skey: str, data: bytes) -> None:
        """Refuse a record one frame could not carry: too many bytes, or (a big record
        only: a small one cannot) too many items or decoded objects."""
        size = len(data) + len(skey.encode("utf-8"))
        try:
            if size > self.max_key_bytes:
                raise WireError(f"its record would hold {size} bytes of versions, more than "
                                f"one message carries ({self.max_key_bytes})")
            if len(data) > SCAN_FREE_BYTES:
                prescan(data, MAX_KEY_ITEMS, MAX_KEY_OBJECT_BYTES, "its record")
        except WireError as exc:
            raise Overloaded(
                f"key {key!r} in bucket {bucket!r}: {exc}; merge its siblings (read, then "
                f"write one value with the context) or write a smaller value") from None

    def _note_dot_conflicts(self, bucket: str, key: str, held: Sequence[Version],
                            incoming: Sequence[Version]) -> None:
        by_dot = {v.dot: v for v in held}
        for v in incoming:
            mine = by_dot.get(v.dot)
            if mine is not None and mine is not v and mine.fingerprint != v.fingerprint:
                self.dot_conflicts += 1
                log.error("key %r in bucket %r: two different versions carry dot %s:%d (an "
                          "actor issued it twice); every replica keeps the same one of them",
                          key, bucket, *v.dot)

    def remove(self, bucket: str, key: str, expected: Sequence[Version]) -> bool:
        """Delete the key if it still holds exactly ``expected`` (compared by dot).

        Used when a key's copy moved to its new owners, or a tombstone was reaped: a write
        that arrived in the meantime must not be lost, so a changed key is left alone.
        """
        held, issued = self.state(bucket, key)
        if not held or not same_versions(held, reconcile(expected)):
            return False
        self._drop(bucket, key, held, issued)
        return True

    def _drop(self, bucket: str, key: str, held: list[Version], issued: int) -> None:
        """Drop the key's versions; keep its counter, so no dot is ever reissued."""
        skey = storage_key(bucket, key)
        if issued:
            self._write(skey, _Record([], issued, self.actor, 0))
        else:
            self._open_batch()
            if self._batch is not None and skey not in self._before:
                self._before[skey] = list(held)
            try:
                self.engine.delete(skey)
            finally:
                self._forget(skey)
            if self._batch is not None:
                self._written[skey] = None
        if self.listener is not None:
            self.listener(bucket, key, held, [])

    def forget_all(self) -> int:
        """Drop every version held (a full scan), keeping each key's issued counter.

        For data that may be stale past the tombstone grace: it is refilled from current
        replicas by anti-entropy rather than pushed back to them. Returns the keys dropped.
        """
        dropped = 0
        for bucket, key in list(self.keys()):
            held, issued = self.state(bucket, key)
            if held:
                self._drop(bucket, key, held, issued)
                dropped += 1
        return dropped

    # ----------------------------------------------------------------- group commit

    @property
    def in_batch(self) -> bool:
        """Writes go into a batch not committed yet (see :meth:`begin_batch`)."""
        return self._batch is not None

    def begin_batch(self) -> None:
        """The writes to come share one engine transaction (no-op without ``batch``).

        The transaction is opened by the first write: a turn that only reads (most of a
        get's messages) costs the engine nothing.
        """
        self._batching = hasattr(self.engine, "batch")

    def _open_batch(self) -> None:
        if self._batching and self._batch is None:
            batch = self.engine.batch()  # type: ignore[attr-defined]
            batch.__enter__()
            self._batch = batch

    def commit_batch(self) -> None:
        """Commit the open batch; raises StorageFailed (after rolling back) if it fails."""
        self._batching = False
        batch, self._batch = self._batch, None
        before, self._before = self._before, {}
        written, self._written = self._written, {}
        if batch is None:
            return
        try:
            batch.__exit__(None, None, None)
        except Exception as exc:
            self._rolled_back(before, written)
            raise StorageFailed(f"storage engine failed to commit {len(before)} "
                                f"writes: {exc}") from exc
        self.batches += 1

    def _rolled_back(self, before: dict[str, list[Version]],
                     written: dict[str, _Record | None]) -> None:
        """Undo in memory what a failed batch did: the cache, the listener's view; keep
        the counters it advanced (their dots may be out in messages already)."""
        for skey, versions in before.items():
            record = written.get(skey)
            if record is not None and record.by == self.actor:
                self._floors[skey] = max(self._floors.get(skey, 0), record.issued)
            now_held = [] if record is None else record.versions
            self._forget(skey)
            if self.listener is not None:
                bucket, key = split_storage_key(skey)
                self.listener(bucket, key, list(now_held), versions)

    # ----------------------------------------------------------------- scans

    def items(self) -> Iterator[tuple[str, str, list[Version]]]:
        """Every key with its versions (a full scan: start-up and ring changes only)."""
        for bucket, key in self.keys():
            versions = self.read(bucket, key)
            if versions:
                yield bucket, key, versions

    def keys(self) -> Iterator[tuple[str, str]]:
        for skey in self.engine.keys():  # noqa: SIM118 - an engine's keys, not a dict's
            if skey != IDENTITY_KEY:
                yield split_storage_key(skey)

    def __len__(self) -> int:
        return len(self.engine) - (self.engine.get(IDENTITY_KEY) is not None)

    def close(self) -> None:
        self.engine.close()


def same_versions(a: Sequence[Version], b: Sequence[Version]) -> bool:
    """The same versions, content and all (both lists reconciled, so in dot order).

    The same object is the same version; only two objects under one dot need their
    content compared (a dot issued twice), so the common case hashes nothing.
    """
    return len(a) == len(b) and all(
        x is y or (x.dot == y.dot and x.fingerprint == y.fingerprint)
        for x, y in zip(a, b, strict=True))

