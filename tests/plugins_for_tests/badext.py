"""Test plugin ``badext``: protocol extensions a node must refuse at start-up.

``[extensions.badext] mode = ...`` picks the mistake:

* ``foreign``: a message type outside the extension's namespace (``other.verb``);
* ``ok_suffix``: a message type ending in ``_ok`` (the suffix of replies);
* ``twice``: the same message type declared twice;
* ``fast_task``: a periodic task asking for a 1 ms interval;
* ``not_extension``: the factory returns something else than a ProtocolExtension;
* anything else (or no mode): the factory refuses its options with ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamo_core.hookspecs import (
    MessageType,
    NodeAPI,
    PeriodicTask,
    ProtocolExtension,
    hookimpl,
)


def _answer(node: NodeAPI, request: Any) -> Mapping[str, Any]:
    return {}


def _nothing(node: NodeAPI) -> None:
    return None


def build(node: NodeAPI) -> Any:
    mode = node.options("badext").get("mode")
    if mode == "foreign":
        return ProtocolExtension(messages=[MessageType("other.verb", _answer)])
    if mode == "ok_suffix":
        return ProtocolExtension(messages=[MessageType("badext.thing_ok", _answer)])
    if mode == "twice":
        return ProtocolExtension(messages=[MessageType("badext.x", _answer),
                                           MessageType("badext.x", _answer)])
    if mode == "fast_task":
        return ProtocolExtension(tasks=[PeriodicTask("spin", 0.001, _nothing)])
    if mode == "not_extension":
        return {"messages": []}
    raise ValueError(f"[extensions.badext] mode must be one of foreign, ok_suffix, twice, "
                     f"fast_task, not_extension; got {mode!r}")


@hookimpl
def dynamo_protocol_extensions() -> Mapping[str, Any]:
    return {"badext": build}
