"""The hook specifications: how plugins hand their parts to a node, and what it tells them.

Every hook is named ``dynamo_*`` and falls in one of three groups:

* **Registries** (``dynamo_storage_engines``, ``dynamo_resolvers``,
  ``dynamo_partition_strategies``, ``dynamo_failure_detectors``,
  ``dynamo_protocol_extensions``): called once per node on every plugin; each returns a
  mapping of names to implementations. The plugin manager merges them, refuses a name
  claimed twice, and the config picks implementations by name.
* **Lifecycle** (``dynamo_node_started``, ``dynamo_node_stopping``,
  ``dynamo_membership_changed``): a node tells every plugin what happened to it.
* **Observation** (``dynamo_request_completed``): once per client request a node answered,
  with its operation, latency and outcome; what a metrics plugin needs.

**Order.** A node calls the implementations of one hook in pluggy's order: those marked
``tryfirst`` first, ``trylast`` last, and otherwise the plugin registered last first
(entry-point plugins in the order Python lists them, then the ``[plugins] modules`` of the
config in the order given). Each implementation is called on its own, so that one that
raises is logged and counted (``plugin_errors`` in ``dynamo status``) and never keeps the
others from hearing the event; for that reason ``wrapper`` and ``hookwrapper``
implementations, which wrap the others, are refused when the plugin is loaded.

Lifecycle and observation hooks run on the node's own thread, between messages: they must
be quick and must not block.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`. Built-ins in
``dynamo_plugins`` and ``dynamo_resolvers`` register through the ``dynamo`` entry-point group,
exactly as a third-party package does, or through ``[plugins] modules`` in the config. The
types the hooks speak of live in :mod:`dynamo_core.api` and are importable from here too.
The plugin author's guide is ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pluggy

from .api import *  # noqa: F403 - the plugin API's types, importable from here too
from .api import (
    ExtensionFactory,
    FailureDetectorFactory,
    NodeAPI,
    PartitionStrategy,
    PeerView,
    RequestEvent,
    Resolver,
    StorageFactory,
)
from .api import __all__ as _api_names

__all__ = ["PROJECT", "hookimpl", "hookspec", *_api_names]

PROJECT = "dynamo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dynamo_storage_engines() -> Mapping[str, StorageFactory]:
    """Storage engines this plugin offers, by the name ``[storage] engine`` selects."""


@hookspec
def dynamo_resolvers() -> Mapping[str, Resolver]:
    """Conflict resolvers this plugin offers, by the name a bucket's ``resolver`` selects."""


@hookspec
def dynamo_partition_strategies() -> Mapping[str, PartitionStrategy]:
    """Partition strategies this plugin offers, by the name ``[partitioning] strategy`` selects."""


@hookspec
def dynamo_failure_detectors() -> Mapping[str, FailureDetectorFactory]:
    """Failure detectors this plugin offers, by the name ``[failure_detector] plugin`` selects."""


@hookspec
def dynamo_protocol_extensions() -> Mapping[str, ExtensionFactory]:
    """Protocol extensions this plugin offers, by name; each installed one runs on the node.

    An extension adds message types (with their handlers) and periodic tasks to every node
    that loads it, riding the same ZeroMQ bus and wire format as the core. Its options are
    the ``[extensions.<name>]`` table of the config.
    """


@hookspec
def dynamo_node_started(node: NodeAPI) -> None:
    """The node is listening and its background tasks run (called once per start)."""


@hookspec
def dynamo_node_stopping(node: NodeAPI) -> None:
    """The node is about to stop: its sockets still work, its background tasks are ending."""


@hookspec
def dynamo_membership_changed(node: NodeAPI, members: Sequence[PeerView]) -> None:
    """This node's view of the membership changed (a join, leave, removal, new address).

    ``members`` is the new view, sorted by name. Not called for failure-detector opinions
    (up/suspect/down), which change far more often; read them from ``node.members()``.
    """


@hookspec
def dynamo_request_completed(node: NodeAPI, event: RequestEvent) -> None:
    """A client request (get, put, delete) this node answered: op, latency and outcome, and
    for a get, the siblings and the context size it returned."""
