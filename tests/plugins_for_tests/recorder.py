"""Test plugin ``recorder``: writes down every lifecycle and observation hook call.

Per node (by name; building the extension for a node starts a fresh log), :data:`LOGS` holds
one entry per hook call, in order, as plain CBOR-friendly maps:

* ``{"kind": "started"}`` and ``{"kind": "stopping", "members": [...]}`` (the stopping hook
  also sends a one-way ``recorder.note`` "farewell" to every other member, to show that the
  node's sockets still work then);
* ``{"kind": "membership", "members": [{name, address, status, state}], "peer_views": bool}``;
* ``{"kind": "request", op, bucket, key, latency, outcome, forwarded}``.

The extension message ``recorder.events`` answers the node's log over the bus (for node
processes); ``recorder.note`` logs ``{"kind": "note", "text", "sender"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamo_core.hookspecs import (
    Field,
    MessageType,
    NodeAPI,
    PeerView,
    ProtocolExtension,
    Request,
    RequestEvent,
    hookimpl,
    of_type,
    text,
)

NAME = "recorder"

#: node name -> what the hooks of that node reported, in order
LOGS: dict[str, list[dict[str, Any]]] = {}


def _log(node: NodeAPI, kind: str, **data: Any) -> None:
    LOGS.setdefault(node.name, []).append({"kind": kind, **data})


def _events(node: NodeAPI, request: Request) -> Mapping[str, Any]:
    kind = request.body.get("kind")
    return {"events": [e for e in LOGS.get(node.name, []) if kind is None or e["kind"] == kind]}


def _note(node: NodeAPI, request: Request) -> Mapping[str, Any]:
    _log(node, "note", text=request.body["text"], sender=request.sender)
    return {}


def build(node: NodeAPI) -> ProtocolExtension:
    LOGS[node.name] = []
    return ProtocolExtension(messages=[
        MessageType(f"{NAME}.events", _events, {"kind": Field(text(32), required=False)},
                    {"events": Field(of_type(list, what="a list"))}),
        MessageType(f"{NAME}.note", _note, {"text": Field(text(200))}),
    ])


@hookimpl
def dynamo_protocol_extensions() -> Mapping[str, Any]:
    return {NAME: build}


@hookimpl
def dynamo_node_started(node: NodeAPI) -> None:
    _log(node, "started", members=[m.name for m in node.members()])


@hookimpl
def dynamo_node_stopping(node: NodeAPI) -> None:
    members = node.members()
    _log(node, "stopping", members=[m.name for m in members])
    for member in members:
        if member.name != node.name and member.status in ("up", "joining"):
            node.send(member.name, f"{NAME}.note", {"text": f"farewell from {node.name}"})


@hookimpl
def dynamo_membership_changed(node: NodeAPI, members: Sequence[PeerView]) -> None:
    _log(node, "membership",
         members=[{"name": m.name, "address": m.address, "status": m.status, "state": m.state}
                  for m in members],
         peer_views=all(isinstance(m, PeerView) for m in members))


@hookimpl
def dynamo_request_completed(node: NodeAPI, event: RequestEvent) -> None:
    _log(node, "request", op=event.op, bucket=event.bucket, key=event.key,
         latency=event.latency, outcome=event.outcome, forwarded=event.forwarded,
         siblings=event.siblings, clock_entries=event.clock_entries)
