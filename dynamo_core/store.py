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
    """Versions of each key, plus the highest dot counter this node's actor issued for it.

    A key is stored as ``{"versions": [...], "issued": n}``. ``issued`` outlives the
    versions that carried it, so the node never hands out one of its dots twice.
    """

    def __init__(self, engine: StorageEngine, max_siblings: int, actor: str) -> None:
        self.engine = engine
        self.max_siblings = max_siblings
        self.actor = actor

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

    def apply(self, bucket: str, key: str, incoming: Sequence[Version]) -> list[Version]:
        """Fold ``incoming`` into the key's versions; returns what is held afterwards."""
        held, issued = self.state(bucket, key)
        merged = reconcile([*held, *incoming])
        mine = max((v.dot[1] for v in incoming if v.dot[0] == self.actor), default=0)
        if _same_dots(held, merged) and mine <= issued:
            return held
        if len(merged) > self.max_siblings and len(merged) > len(held):
            raise Overloaded(
                f"key {key!r} in bucket {bucket!r} would have {len(merged)} siblings, more "
                f"than the limit of {self.max_siblings}; read it and write back one value "
                f"with the context to merge them")
        record = {"versions": [v.to_wire() for v in merged], "issued": max(issued, mine)}
        self.engine.put(storage_key(bucket, key), cbor2.dumps(record))
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
