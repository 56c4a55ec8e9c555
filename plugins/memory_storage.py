"""The ``memory`` storage engine: a plain dict, gone when the process ends.

It exists for tests, simulations and throwaway clusters, where a disk would only slow things
down. It says ``durable = False`` so the core never counts on it surviving a crash.

``batch()`` keeps an undo log, so a batch that raises leaves nothing behind, as with the
durable engines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dynamo_core.hookspecs import StorageEngine, StorageFactory, hookimpl


class MemoryEngine:
    """Keeps every key in a dict; nothing is ever evicted, nothing survives the process."""

    durable = False

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        #: inside ``batch()``: each key's value before the batch first wrote it (None: absent)
        self._undo: dict[str, bytes | None] | None = None

    def get(self, key: str) -> bytes | None:
        """The stored value, or ``None`` so a missing key is not an error for the caller."""
        return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        """Store ``value``; the type check stops a core bug from hiding until a durable engine."""
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise TypeError(
                f"storage keys must be str and values bytes, got {type(key).__name__} "
                f"and {type(value).__name__}"
            )
        self._remember(key)
        self._data[key] = value

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is a no-op, as retried deletes need."""
        self._remember(key)
        self._data.pop(key, None)

    def keys(self) -> Iterator[str]:
        """Iterate over a snapshot, so callers may put or delete while they walk the keys."""
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        """Nothing to release: the dict goes with the object."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: writes apply at once (gets see them) and are undone if it raises."""
        if self._undo is not None:
            raise RuntimeError("storage batches are never nested")
        undo: dict[str, bytes | None] = {}
        self._undo = undo
        try:
            yield
        except BaseException:
            for key, old in undo.items():
                if old is None:
                    self._data.pop(key, None)
                else:
                    self._data[key] = old
            raise
        finally:
            self._undo = None

    def _remember(self, key: str) -> None:
        """Inside a batch, note the value ``key`` had before the batch first wrote it."""
        if self._undo is not None and key not in self._undo:
            self._undo[key] = self._data.get(key)


def open_memory_engine(data_dir: str | None, options: Mapping[str, Any]) -> StorageEngine:
    """Build a fresh, empty engine; ``data_dir`` and ``options`` do not apply to memory."""
    return MemoryEngine()


@hookimpl
def dynamo_storage_engines() -> Mapping[str, StorageFactory]:
    """Offer the engine under the name ``[storage] engine = "memory"`` selects."""
    return {"memory": open_memory_engine}
