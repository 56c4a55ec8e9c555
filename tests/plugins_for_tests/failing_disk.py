"""A storage engine for tests whose writes fail on demand, like a full disk.

``FAILING.add(name)`` makes every put and delete of the engines opened under that name (the
``[storage] label`` option) raise ``OSError``; ``FAILING.discard(name)`` mends the disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamo_core.hookspecs import StorageEngine, StorageFactory, hookimpl
from dynamo_plugins.memory_storage import MemoryEngine

#: labels of the engines whose writes currently fail
FAILING: set[str] = set()


class FailingDisk(MemoryEngine):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def _check(self) -> None:
        if self.label in FAILING:
            raise OSError(28, "No space left on device")

    def put(self, key: str, value: bytes) -> None:
        self._check()
        super().put(key, value)

    def delete(self, key: str) -> None:
        self._check()
        super().delete(key)


def open_failing_disk(data_dir: str | None, options: Mapping[str, Any]) -> StorageEngine:
    return FailingDisk(str(options.get("label", "")))


@hookimpl
def dynamo_storage_engines() -> Mapping[str, StorageFactory]:
    return {"failing-disk": open_failing_disk}
