"""Simulated disks: a storage engine that survives simulated crashes and fails on demand.

``sim-disk`` is registered per simulation (a plugin object handed to each node, no module
global): its engines keep their bytes in the :class:`Disks` of the simulation, so a node
that crashes and restarts finds exactly what its engine had acknowledged, as a durable
engine after a kill -9 does. It is not power-safe, so a node that crashed starts a new
actor epoch, as it would on diskcache. A disk fault makes writes raise ``OSError`` (a full
or failing disk) until it is mended; reads keep working. Writes in a batch (group commit)
are buffered and meet the fault at the commit instead, which then fails as a whole: the
node's roll-back of a failed turn runs under every disk fault a simulation injects.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..api import StorageEngine, StorageFactory
from ..hookspecs import hookimpl

ENGINE = "sim-disk"


class SimEngine:
    """One engine's keys, in memory, owned by the simulation rather than the node."""

    durable = True

    def __init__(self, disks: Disks, owner: str) -> None:
        self._disks = disks
        self.owner = owner
        self.data: dict[str, bytes] = {}
        #: the open batch's writes (None: a deletion), or None when no batch is open
        self._pending: dict[str, bytes | None] | None = None

    def _check(self) -> None:
        if self.owner in self._disks.failing:
            self._disks.write_errors += 1
            raise OSError(5, f"simulated disk error on {self.owner}")

    def get(self, key: str) -> bytes | None:
        if self._pending is not None and key in self._pending:
            return self._pending[key]
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise TypeError("storage keys must be str and values bytes")
        if self._pending is not None:
            self._pending[key] = value
            return
        self._check()
        self.data[key] = value

    def delete(self, key: str) -> None:
        if self._pending is not None:
            self._pending[key] = None
            return
        self._check()
        self.data.pop(key, None)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Buffer the writes; commit them at once, or none if the disk fails then."""
        if self._pending is not None:
            raise RuntimeError("batches do not nest")
        pending: dict[str, bytes | None] = {}
        self._pending = pending
        try:
            yield
            self._check()
        finally:
            self._pending = None
        for key, value in pending.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

    def keys(self) -> Iterator[str]:
        if self._pending is None:
            return iter(list(self.data))
        merged = {**self.data, **self._pending}
        return iter([k for k, v in merged.items() if v is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def close(self) -> None:
        """Nothing to release: the bytes stay with the simulation."""


class Record:
    """A node's ``node.cbor`` on its simulated disk."""

    def __init__(self) -> None:
        self.data: bytes | None = None

    def load(self) -> bytes | None:
        return self.data

    def save(self, data: bytes) -> None:
        self.data = data


class Disks:
    """Every simulated disk of one simulation; a plugin offering the ``sim-disk`` engine.

    An engine is named by its data directory (``sim/<node>`` and ``sim/<node>/hints``); the
    owner, for disk faults, is the node name in it.
    """

    def __init__(self) -> None:
        self.engines: dict[str, SimEngine] = {}
        self.records: dict[str, Record] = {}
        #: nodes whose disks fail every write right now
        self.failing: set[str] = set()
        self.write_errors = 0

    @hookimpl
    def dynamo_storage_engines(self) -> Mapping[str, StorageFactory]:
        return {ENGINE: self.open}

    def open(self, data_dir: str | None, options: Mapping[str, Any]) -> StorageEngine:
        if data_dir is None:
            raise ValueError(f"the {ENGINE} engine needs a data directory to name the disk")
        engine = self.engines.get(data_dir)
        if engine is None:
            engine = self.engines[data_dir] = SimEngine(self, data_dir.split("/")[1])
        return engine

    def record(self, node: str) -> Record:
        return self.records.setdefault(node, Record())

    def wipe(self, node: str, keep_record: bool = False) -> None:
        """Lose a node's disk entirely (a replaced machine), or (``keep_record``) only its
        engines' data, ``node.cbor`` surviving (data on a volume that was replaced)."""
        for path in [p for p in self.engines if p.split("/")[1] == node]:
            del self.engines[path]
        if not keep_record:
            self.records.pop(node, None)
