"""The public hook API: everything a plugin may import from the core.

Every hook is named ``dynamo_*``. Registry hooks (``dynamo_storage_engines``,
``dynamo_resolvers``, ``dynamo_partition_strategies``) are called on every plugin and each
returns a mapping of names to implementations; the plugin manager merges them and refuses a
name claimed twice. ``firstresult`` is kept for decisions, where one answer is wanted.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`. Built-ins in
``dynamo_plugins`` and ``dynamo_resolvers`` register through the ``dynamo`` entry-point group,
exactly as a third-party package does, or through ``[plugins] modules`` in the config.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Iterator,
    Mapping,
    Protocol,
    Sequence,
    runtime_checkable,
)

import pluggy

from .ring import MAX_PARTITIONS, RING_BITS, RING_SIZE, partition_ends

PROJECT = "dynamo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- interfaces


@runtime_checkable
class StorageEngine(Protocol):
    """A local key/value byte store. The core keeps versions and causality on top of it.

    Keys are ``str`` (``"<bucket>/<key>"``), values are opaque ``bytes`` (CBOR the core
    wrote). An engine must not evict data on its own, and a ``put`` that returned must
    survive a kill -9 of the process if the engine calls itself durable.
    """

    #: True when an acknowledged put survives kill -9 of the process.
    durable: bool

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def keys(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


#: Builds an engine: ``factory(data_dir, options)``; ``data_dir`` is a directory owned by
#: this node (may be ``None`` for engines that keep nothing on disk), ``options`` is the
#: ``[storage]`` table of the config.
StorageFactory = Callable[[str | None, Mapping[str, Any]], StorageEngine]


@dataclass(frozen=True)
class Sibling:
    """One live, causally-maximal version, as a resolver sees it."""

    value: Any
    timestamp: float
    #: A stable identity of the version (its dot: writer actor and counter). Resolvers use
    #: it to break ties deterministically.
    dot: tuple[str, int]


@runtime_checkable
class Resolver(Protocol):
    """Merges concurrent siblings of one key into a single value.

    Must be deterministic and commutative in the order of ``siblings``; it runs on the
    server on read, and the same object can run client-side in an application.
    """

    def resolve(self, siblings: Sequence[Sibling]) -> Any: ...


@dataclass(frozen=True)
class MemberInfo:
    """What a partition strategy may know about a member when it builds the ring."""

    name: str
    capacity: int
    tokens: tuple[int, ...]


@runtime_checkable
class PartitionStrategy(Protocol):
    """Decides where members sit on the ring (the paper's section 6.2 strategies).

    Every method is a pure function of its arguments: nodes that know the same members
    must compute the same ring. Options are the ``[partitioning]`` table of the config; a
    method raises ``ValueError`` naming a bad or unknown setting.
    """

    def partition_count(self, options: Mapping[str, Any]) -> int | None:
        """Q, when the hash space is cut into Q fixed equal partitions; None for token ranges.

        Called at start-up too, so it is where a strategy checks its options.
        """
        ...

    def initial_tokens(
        self, name: str, capacity: int, options: Mapping[str, Any], rng: random.Random
    ) -> list[int]:
        """Tokens a brand-new member announces through gossip (may be none)."""
        ...

    def ring_tokens(
        self, members: Sequence[MemberInfo], options: Mapping[str, Any]
    ) -> dict[int, str]:
        """The ring (token -> owner name) that the given live members make."""
        ...


#: A peer's state in one node's local opinion.
PEER_STATES = ("up", "suspect", "down")


@runtime_checkable
class FailureDetector(Protocol):
    """One node's local, private opinion of which peers are alive.

    The runtime reports every message heard from a peer and every request to it that failed
    (timed out or could not be sent); it asks for a peer's state when it walks a preference
    list. Time comes in as ``now`` (seconds); detectors keep no clock of their own.
    """

    def heard_from(self, peer: str, now: float) -> None: ...

    def request_failed(self, peer: str, now: float) -> None: ...

    def state(self, peer: str, now: float) -> str:
        """``"up"``, ``"suspect"`` or ``"down"``; a peer never heard of is ``"up"``."""
        ...

    def forget(self, peer: str) -> None:
        """Drop what is known of a peer (it left the cluster)."""
        ...


#: Builds a detector from the ``[failure_detector]`` table of the config.
FailureDetectorFactory = Callable[[Mapping[str, Any]], FailureDetector]


# --------------------------------------------------------------------------- hook specs


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
