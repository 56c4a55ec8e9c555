"""Test plugin: the extensions ``nest`` and ``nest.a`` both claim the message ``nest.a.b``.

Each name is inside its own extension's namespace (``nest.`` and ``nest.a.``), so only the
node's codec can notice that two extensions want one message type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamo_core.hookspecs import MessageType, NodeAPI, ProtocolExtension, Request, hookimpl


def _answer(node: NodeAPI, request: Request) -> Mapping[str, Any]:
    return {}


@hookimpl
def dynamo_protocol_extensions() -> Mapping[str, Any]:
    return {"nest": lambda node: ProtocolExtension(messages=[MessageType("nest.a.b", _answer)]),
            "nest.a": lambda node: ProtocolExtension(messages=[MessageType("nest.a.b", _answer)])}
