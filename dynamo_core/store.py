"""A node's local replica store: versions of each key on top of a byte storage engine.

Engines only keep bytes; the rules that make a replica correct live here, once: incoming
versions are folded into what is held, only the causally maximal set is kept, and a write
that would grow a key past the sibling bound is refused (never silently trimmed).
"""

from __future__ import annotations

from typing import Iterator, Sequence

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
    def __init__(self, engine: StorageEngine, max_siblings: int) -> None:
        self.engine = engine
        self.max_siblings = max_siblings

    def read(self, bucket: str, key: str) -> list[Version]:
        data = self.engine.get(storage_key(bucket, key))
        if data is None:
            return []
        # Our own bytes, written after validation: decoded without the wire's limits.
        return [Version.from_wire(v) for v in cbor2.loads(data)]

    def apply(self, bucket: str, key: str, incoming: Sequence[Version]) -> list[Version]:
        """Fold ``incoming`` into the key's versions; returns what is held afterwards."""
        held = self.read(bucket, key)
        merged = reconcile([*held, *incoming])
        if _same_dots(held, merged):
            return held
        if len(merged) > self.max_siblings and len(merged) > len(held):
            raise Overloaded(
                f"key {key!r} in bucket {bucket!r} would have {len(merged)} siblings, more "
                f"than the limit of {self.max_siblings}; read it and write back one value "
                f"with the context to merge them")
        self.engine.put(storage_key(bucket, key), cbor2.dumps([v.to_wire() for v in merged]))
        return merged

    def keys(self) -> Iterator[tuple[str, str]]:
        for skey in self.engine.keys():
            yield split_storage_key(skey)

    def __len__(self) -> int:
        return len(self.engine)

    def close(self) -> None:
        self.engine.close()


def _same_dots(a: Sequence[Version], b: Sequence[Version]) -> bool:
    return [v.dot for v in a] == [v.dot for v in b]
