"""A node's local replica store: versions of each key on top of a byte storage engine.

Engines only keep bytes; the rules that make a replica correct live here, once: incoming
versions are folded into what is held, only the causally maximal set is kept, and a write
that would grow a key past the sibling bound is refused (never silently trimmed).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import cbor2

from .errors import Overloaded
from .hookspecs import StorageEngine
from .versions import Version, reconcile


def storage_key(bucket: str, key: str) -> str:
    """Bucket names hold no ``/``, so the first one separates bucket from key."""
    return f"{bucket}/{key}"


def split_storage_key(skey: str) -> tuple[str, str]:
    bucket, _, key = skey.partition("/")
    return bucket, key


class LocalStore:
    """Versions of each key, plus the highest dot counter this node's actor issued for it.

    A key is stored as ``{"versions": [...], "issued": n}``. ``issued`` outlives the
    versions that carried it, so the node never hands out one of its dots twice.
    """

    def __init__(self, engine: StorageEngine, max_siblings: int, actor: str) -> None:
        self.engine = engine
        self.max_siblings = max_siblings
        self.actor = actor
        #: called as ``listener(bucket, key, old_versions, new_versions)`` after each change,
        #: so derived state (the Merkle trees) never needs a rescan
        self.listener: Callable[[str, str, list[Version], list[Version]], None] | None = None

    def state(self, bucket: str, key: str) -> tuple[list[Version], int]:
        """The versions held for the key and the highest counter this actor issued for it."""
        data = self.engine.get(storage_key(bucket, key))
        if data is None:
            return [], 0
        # Our own bytes, written after validation: decoded without the wire's limits.
        record = cbor2.loads(data)
        return [Version.from_wire(v) for v in record["versions"]], record["issued"]

    def read(self, bucket: str, key: str) -> list[Version]:
        return self.state(bucket, key)[0]

    def apply(self, bucket: str, key: str, incoming: Sequence[Version]) -> bool:
        """Fold ``incoming`` into the key's versions; True if what is held changed."""
        held, issued = self.state(bucket, key)
        merged = reconcile([*held, *incoming])
        mine = max((v.dot[1] for v in incoming if v.dot[0] == self.actor), default=0)
        changed = not _same_dots(held, merged)
        if not changed and mine <= issued:
            return False
        if len(merged) > self.max_siblings and len(merged) > len(held):
            raise Overloaded(
                f"key {key!r} in bucket {bucket!r} would have {len(merged)} siblings, more "
                f"than the limit of {self.max_siblings}; read it and write back one value "
                f"with the context to merge them")
        record = {"versions": [v.to_wire() for v in merged], "issued": max(issued, mine)}
        self.engine.put(storage_key(bucket, key), cbor2.dumps(record))
        if self.listener is not None and changed:
            self.listener(bucket, key, held, merged)
        return changed

    def remove(self, bucket: str, key: str, expected: Sequence[Version]) -> bool:
        """Delete the key if it still holds exactly ``expected`` (compared by dot).

        Used when a key's copy moved to its new owners, or a tombstone was reaped: a write
        that arrived in the meantime must not be lost, so a changed key is left alone.
        """
        held, issued = self.state(bucket, key)
        if not held or not _same_dots(held, reconcile(expected)):
            return False
        if issued:
            # Keep the counter: should the key come back here, no dot is ever reissued.
            self.engine.put(storage_key(bucket, key),
                            cbor2.dumps({"versions": [], "issued": issued}))
        else:
            self.engine.delete(storage_key(bucket, key))
        if self.listener is not None:
            self.listener(bucket, key, held, [])
        return True

    def items(self) -> Iterator[tuple[str, str, list[Version]]]:
        """Every key with its versions (a full scan: start-up and ring changes only)."""
        for bucket, key in self.keys():
            versions = self.read(bucket, key)
            if versions:
                yield bucket, key, versions

    def keys(self) -> Iterator[tuple[str, str]]:
        for skey in self.engine.keys():
            yield split_storage_key(skey)

    def __len__(self) -> int:
        return len(self.engine)

    def close(self) -> None:
        self.engine.close()


def _same_dots(a: Sequence[Version], b: Sequence[Version]) -> bool:
    return [v.dot for v in a] == [v.dot for v in b]
