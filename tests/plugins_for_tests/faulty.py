"""Test plugin ``faulty``: every lifecycle and observation hook raises.

The node must log and count each failure (``plugin_errors``) and carry on: other plugins
still hear about the event, requests are still answered. :data:`CALLS` counts the calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from dynamo_core.hookspecs import NodeAPI, PeerView, RequestEvent, hookimpl

#: (node name, hook name) -> times called
CALLS: Counter[tuple[str, str]] = Counter()


def _fail(node: NodeAPI, hook: str) -> None:
    CALLS[(node.name, hook)] += 1
    raise RuntimeError(f"faulty plugin fails in {hook} on purpose")


@hookimpl
def dynamo_node_started(node: NodeAPI) -> None:
    _fail(node, "dynamo_node_started")


@hookimpl
def dynamo_node_stopping(node: NodeAPI) -> None:
    _fail(node, "dynamo_node_stopping")


@hookimpl
def dynamo_membership_changed(node: NodeAPI, members: Sequence[PeerView]) -> None:
    _fail(node, "dynamo_membership_changed")


@hookimpl
def dynamo_request_completed(node: NodeAPI, event: RequestEvent) -> None:
    _fail(node, "dynamo_request_completed")
