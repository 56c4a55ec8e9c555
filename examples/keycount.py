"""An experimental protocol riding the bus: a cluster-wide key count.

Installed by configuration alone, with no change to the core::

    [plugins]
    modules = ["keycount"]        # importable: run nodes with PYTHONPATH=examples
    [extensions.keycount]
    interval = 5.0                # seconds between background refreshes (default 5)

It adds two message types to every node that loads it, and one periodic task:

``keycount.local`` (node to node)
    "how many keys do you replicate?", answered from the node's own counters.
``keycount.total`` (from a client, to any node)
    that node asks every member that is up for its local count, at once, and answers the
    sum, the per-node counts, who did not answer, and an estimate of distinct keys (the sum
    over the replication factor). With ``{"cached": true}`` it answers from the last
    background refresh instead, without touching the network.
periodic ``refresh``
    recomputes the total every ``interval`` seconds, under the node's background budget.

Try it: ``python examples/keycount_demo.py``, or against a cluster started with the config
above, ``dynamo request keycount.total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from dynamo_core.hookspecs import (
    DynamoError,
    Field,
    InvalidRequest,
    MessageType,
    NodeAPI,
    PeriodicTask,
    ProtocolExtension,
    Request,
    hookimpl,
    integer,
    of_type,
    text,
)

log = logging.getLogger(__name__)

NAME = "keycount"
DEFAULT_INTERVAL = 5.0

COUNT = Field(integer(0, 1 << 62))
MAP = Field(of_type(dict, what="a map"))


class KeyCount:
    """The extension's state on one node: the last total, and how to compute a new one."""

    def __init__(self, node: NodeAPI) -> None:
        self.node = node
        options = dict(node.options(NAME))
        self.interval = options.pop("interval", DEFAULT_INTERVAL)
        if options:
            raise ValueError(f"[extensions.{NAME}] unknown option(s): {', '.join(options)}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, (int, float)) \
                or not 0.1 <= self.interval <= 3600:
            raise ValueError(f"[extensions.{NAME}] interval must be 0.1 to 3600 seconds, "
                             f"got {self.interval!r}")
        self.last: dict[str, Any] | None = None

    def local(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        return {"node": node.name, "keys": node.local_key_count()}

    async def total(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        if request.body.get("cached"):
            if self.last is None:
                raise InvalidRequest("no background refresh has run yet; ask without cached")
            return self.last
        return await self.count()

    async def count(self) -> dict[str, Any]:
        """Ask every member that is up, concurrently; a silent one is reported, not fatal."""
        node = self.node
        peers = [m.name for m in node.members()
                 if m.status in ("up", "joining") and m.state != "down"]

        async def ask(peer: str) -> int | None:
            if peer == node.name:
                return node.local_key_count()
            try:
                reply = await node.call(peer, f"{NAME}.local", {}, timeout=1.0)
            except DynamoError as exc:
                log.info("%s: %s did not answer %s.local: %s", node.name, peer, NAME, exc)
                return None
            return reply["keys"]

        counts = dict(zip(peers, await asyncio.gather(*(ask(p) for p in peers)), strict=True))
        by_node = {p: c for p, c in counts.items() if c is not None}
        replicas = sum(by_node.values())
        n = node.stats().get("replication", 3)
        self.last = {"replicas": replicas, "estimated_keys": round(replicas / n),
                     "by_node": by_node, "missing": sorted(set(counts) - set(by_node)),
                     "at": node.now()}
        return self.last

    async def refresh(self, node: NodeAPI) -> None:
        await self.count()


def build(node: NodeAPI) -> ProtocolExtension:
    state = KeyCount(node)
    return ProtocolExtension(
        messages=[
            MessageType(f"{NAME}.local", state.local,
                        reply_fields={"node": Field(text(256)), "keys": COUNT}),
            MessageType(f"{NAME}.total", state.total,
                        fields={"cached": Field(of_type(bool, what="a boolean"),
                                                required=False)},
                        reply_fields={"replicas": COUNT, "estimated_keys": COUNT,
                                      "by_node": MAP, "missing": Field(of_type(list,
                                                                               what="a list")),
                                      "at": Field(of_type(float, int, what="a time"))}),
        ],
        tasks=[PeriodicTask("refresh", state.interval, state.refresh)],
    )


@hookimpl
def dynamo_protocol_extensions() -> Mapping[str, Any]:
    return {NAME: build}
