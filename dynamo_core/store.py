"""A node's local replica store: versions of each key on top of a byte storage engine.

Engines only keep bytes; the rules that make a replica correct live here, once: incoming
versions are folded into what is held, only the causally maximal set is kept, a write that
would grow a key past the sibling bounds (a count, and the bytes one frame can carry) is
refused, never silently trimmed, and this node's actor issues each dot exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cbor2

from .api import StorageEngine
from .errors import InvalidRequest, Overloaded, StorageFailed
from .versions import Clock, Dot, Version, next_dot, reconcile

log = logging.getLogger(__name__)

#: The engine key of the store's identity record (see :mod:`dynamo_core.identity`). Every
#: key of a replica holds a ``/`` (``bucket/key``); this one cannot be confused with them.
IDENTITY_KEY = "\x00identity"
#: Room left in a frame for the envelope and the fields around a key and its versions.
FRAME_OVERHEAD = 4096


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


class LocalStore:
    """Versions of each key, plus the highest dot counter this node's actor issued for it.

    A key is stored as ``{"versions": [...], "issued": n, "by": actor}``: ``issued`` counts
    the dots ``actor`` (this node's actor when it was written) issued for the key. It
    outlives the versions that carried it, so the node never hands out one of its dots
    twice. A node in a new actor epoch starts its own count at zero, so that its dots run
    1, 2, 3 and clocks fold them into one vector entry: counting on from the old actor's
    number would leave them isolated dots for good, clocks would grow with every write, and
    truncation would at last forget events whose versions then come back as siblings.
    """

    def __init__(self, engine: StorageEngine, max_siblings: int, actor: str,
                 max_key_bytes: int = 16 * 1024 * 1024 - FRAME_OVERHEAD) -> None:
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

    def _record(self, bucket: str, key: str) -> dict[str, Any] | None:
        data = self._get(storage_key(bucket, key))
        # Our own bytes, written after validation: decoded without the wire's limits.
        return None if data is None else cbor2.loads(data)

    def _get(self, skey: str) -> bytes | None:
        try:
            return self.engine.get(skey)
        except Exception as exc:  # any engine failure is the same to callers
            raise StorageFailed(f"storage engine failed reading {skey!r}: {exc}") from exc

    def _put(self, skey: str, data: bytes) -> None:
        try:
            self.engine.put(skey, data)
        except Exception as exc:  # disk full, I/O error, a plugin's bug
            raise StorageFailed(f"storage engine failed writing {skey!r}: {exc}") from exc

    def state(self, bucket: str, key: str) -> tuple[list[Version], int]:
        """The versions held for the key and the highest counter this actor issued for it."""
        record = self._record(bucket, key)
        if record is None:
            return [], 0
        return [Version.from_wire(v) for v in record["versions"]], self._issued(record)

    def _issued(self, record: dict[str, Any]) -> int:
        """The dots this node's actor issued for the key (none if an earlier actor's)."""
        by = record.get("by")
        return int(record["issued"]) if by is None or by == self.actor else 0

    def read(self, bucket: str, key: str) -> list[Version]:
        return self.state(bucket, key)[0]

    def issue_dot(self, bucket: str, key: str, context: Clock) -> Dot:
        """A dot of this node's actor for the key, never issued before, durably recorded.

        Every path that makes a version here (a put, a forwarded put, a stand-in's write, a
        merge written back) takes its dot from this one call: it reads and advances the
        key's counter in one step of the event loop, and the counter is stored before the
        dot is returned, so no version can be acknowledged under a dot a crash could let
        this actor issue again. Raises :class:`InvalidRequest` for a context naming an event
        of this actor it never made.
        """
        record: dict[str, Any] = self._record(bucket, key) or {"versions": [], "issued": 0}
        held = [Version.from_wire(v) for v in record["versions"]]
        try:
            dot = next_dot(self.actor, context, held, self._issued(record))
        except ValueError as exc:
            raise InvalidRequest(f"key {key!r} in bucket {bucket!r}: {exc}") from None
        record["issued"], record["by"] = dot[1], self.actor
        self._put(storage_key(bucket, key), cbor2.dumps(record))
        return dot

    def apply(self, bucket: str, key: str, incoming: Sequence[Version]) -> bool:
        """Fold ``incoming`` into the key's versions; True if what is held changed."""
        skey = storage_key(bucket, key)
        before = self._get(skey)
        record: dict[str, Any] = (
            {"versions": [], "issued": 0} if before is None else cbor2.loads(before))
        held = [Version.from_wire(v) for v in record["versions"]]
        merged = reconcile([*held, *incoming])
        mine = max((v.dot[1] for v in incoming if v.dot[0] == self.actor), default=0)
        changed = not same_versions(held, merged)
        self._note_dot_conflicts(bucket, key, held, incoming)
        issued = self._issued(record)
        if not changed and mine <= issued:
            return False
        if len(merged) > self.max_siblings and len(merged) > len(held):
            raise Overloaded(
                f"key {key!r} in bucket {bucket!r} would have {len(merged)} siblings, more "
                f"than the limit of {self.max_siblings}; read it and write back one value "
                f"with the context to merge them")
        data = cbor2.dumps({"versions": [v.to_wire() for v in merged],
                            "issued": max(issued, mine), "by": self.actor})
        # A change that shrinks the key (a merge superseding siblings) is always taken, so
        # a key at its limit can still be mended with a put carrying its context.
        size = len(data) + len(skey.encode("utf-8"))
        if size > self.max_key_bytes and len(data) > len(before or b""):
            raise Overloaded(
                f"key {key!r} in bucket {bucket!r} would hold {size} bytes of versions, "
                f"more than one message carries ({self.max_key_bytes}); merge its siblings "
                f"(read, then write one value with the context) or write a smaller value")
        self._put(skey, data)
        if self.listener is not None and changed:
            self.listener(bucket, key, held, merged)
        return changed

    def _note_dot_conflicts(self, bucket: str, key: str, held: Sequence[Version],
                            incoming: Sequence[Version]) -> None:
        by_dot = {v.dot: v for v in held}
        for v in incoming:
            mine = by_dot.get(v.dot)
            if mine is not None and mine.fingerprint != v.fingerprint:
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
        if issued:
            # Keep the counter: should the key come back here, no dot is ever reissued.
            self._put(storage_key(bucket, key),
                      cbor2.dumps({"versions": [], "issued": issued, "by": self.actor}))
        else:
            self.engine.delete(storage_key(bucket, key))
        if self.listener is not None:
            self.listener(bucket, key, held, [])
        return True

    def forget_all(self) -> int:
        """Drop every version held (a full scan), keeping each key's issued counter.

        For data that may be stale past the tombstone grace: it is refilled from current
        replicas by anti-entropy rather than pushed back to them. Returns the keys dropped.
        """
        dropped = 0
        for bucket, key in list(self.keys()):
            held, issued = self.state(bucket, key)
            if not held:
                continue
            if issued:
                self._put(storage_key(bucket, key),
                          cbor2.dumps({"versions": [], "issued": issued, "by": self.actor}))
            else:
                self.engine.delete(storage_key(bucket, key))
            dropped += 1
            if self.listener is not None:
                self.listener(bucket, key, held, [])
        return dropped

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
    """The same versions, content and all (both lists reconciled, so in dot order)."""
    return [v.fingerprint for v in a] == [v.fingerprint for v in b]

