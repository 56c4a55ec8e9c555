"""Storage options the built-in engines share, read strictly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def fsync_option(options: Mapping[str, Any]) -> bool:
    """Read ``fsync`` strictly: a string like ``"false"`` would otherwise count as true."""
    fsync = options.get("fsync", False)
    if not isinstance(fsync, bool):
        raise ValueError(
            f"storage option 'fsync' must be true or false, got {fsync!r} "
            f"({type(fsync).__name__})"
        )
    return fsync
