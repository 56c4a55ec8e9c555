"""A storage engine for tests whose writes fail on demand, like a full disk.

``FAILING.add(name)`` makes every put and delete of the engines opened under that name (the
``[storage] label`` option) raise ``OSError``; ``FAILING.discard(name)`` mends the disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from dynamo_core.hookspecs import StorageEngine, StorageFactory, hookimpl

#: labels of the engines whose writes currently fail
FAILING: set[str] = set()


class FailingDisk:
    durable = False

    def __init__(self, label: str) -> None:
        self.label = label
        self._data: dict[str, bytes] = {}

    def _check(self) -> None:
        if self.label in FAILING:
            raise OSError(28, "No space left on device")

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self._check()
        self._data[key] = value

    def delete(self, key: str) -> None:
        self._check()
        self._data.pop(key, None)

    def keys(self) -> Iterator[str]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        pass


def open_failing_disk(data_dir: str | None, options: Mapping[str, Any]) -> StorageEngine:
    return FailingDisk(str(options.get("label", "")))


@hookimpl
def dynamo_storage_engines() -> Mapping[str, StorageFactory]:
    return {"failing-disk": open_failing_disk}
