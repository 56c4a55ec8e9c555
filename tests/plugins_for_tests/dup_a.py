"""Test plugin: offers a protocol extension named ``dup`` (as does :mod:`dup_b`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamo_core.hookspecs import ProtocolExtension, hookimpl


@hookimpl
def dynamo_protocol_extensions() -> Mapping[str, Any]:
    return {"dup": lambda node: ProtocolExtension()}
