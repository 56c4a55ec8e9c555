"""The plugin API's types: what plugins implement and what the node hands them.

Storage engines, resolvers, failure detectors, partition strategies and protocol
extensions are described here as Protocols and dataclasses, with no dependency on pluggy,
so the core (which only ever talks to plugins through these types) never imports the
plugin manager. :mod:`dynamo_core.hookspecs` holds the hook specifications that hand these
implementations to a node, and re-exports every name below, so a plugin imports markers
and types from one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from random import Random
from typing import (
    Any,
    Protocol,
    runtime_checkable,
)

from .errors import DynamoError, InvalidRequest, Overloaded, Unavailable
from .ring import MAX_PARTITIONS, RING_BITS, RING_SIZE, partition_ends
from .wire import Field, anything, integer, list_of, of_type, text

__all__ = [  # noqa: RUF022 - grouped by purpose, not sorted
    # the ring, for partition strategies
    "MAX_PARTITIONS", "RING_BITS", "RING_SIZE", "partition_ends", "MemberInfo",
    "PartitionStrategy",
    # storage, resolvers, failure detection
    "StorageEngine", "StorageFactory", "Sibling", "Resolver", "DELETED", "PEER_STATES",
    "FailureDetector", "FailureDetectorFactory",
    # protocol extensions, lifecycle, observation
    "NodeAPI", "PeerView", "Request", "Handler", "MessageType", "PeriodicTask",
    "ProtocolExtension", "ExtensionFactory", "RequestEvent",
    # message body checks (see MessageType.fields) and the errors a handler may raise
    "Field", "anything", "integer", "list_of", "of_type", "text",
    "DynamoError", "InvalidRequest", "Overloaded", "Unavailable",
]


# --------------------------------------------------------------------------- interfaces


@runtime_checkable
class StorageEngine(Protocol):
    """A local key/value byte store. The core keeps versions and causality on top of it.

    Keys are ``str`` (``"<bucket>/<key>"``), values are opaque ``bytes`` (CBOR the core
    wrote). An engine must not evict data on its own, and a ``put`` that returned must
    survive a kill -9 of the process if the engine calls itself durable.

    **Group commit (optional).** An engine that can commit several writes as one
    transaction offers ``batch()``, a context manager: the puts and deletes made inside it
    (and ``get`` sees them at once) are committed together when it exits without an
    exception, and only then are they durable. The node opens one batch around all the
    messages it handles in one turn of its event loop and sends no acknowledgement before
    the batch is committed; an engine without ``batch`` commits each write on its own.
    Batches are never nested.
    """

    #: True when an acknowledged put survives kill -9 of the process. An engine may also
    #: set ``power_safe = True`` when every put is synced to disk before it returns (it
    #: survives a power loss too); without it, a node that did not stop cleanly starts a
    #: new actor epoch (see ``dynamo_core.identity``).
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
    #: A delete (``value`` is None). Only resolvers with ``sees_tombstones`` are shown these.
    tombstone: bool = False


class _Deleted:
    """The type of :data:`DELETED`."""

    def __repr__(self) -> str:
        return "DELETED"


#: What a resolver with ``sees_tombstones = True`` returns when the merge is a delete.
DELETED: Any = _Deleted()


@runtime_checkable
class Resolver(Protocol):
    """Merges concurrent siblings of one key into a single value.

    Must be deterministic and commutative in the order of ``siblings``; it runs on the
    server on read, and the same object can run client-side in an application.

    A resolver sees live siblings only, unless it sets ``sees_tombstones = True``: then a
    delete concurrent with updates is among the siblings (``tombstone=True``), and the
    resolver may return :data:`DELETED` to make the merge a delete (``last-write-wins``
    does, so a logout written after a concurrent update wins).
    """

    def resolve(self, siblings: Sequence[Sibling]) -> Any: ...


@dataclass(frozen=True)
class MemberInfo:
    """What a partition strategy may know about a member when it builds the ring.

    ``join_order`` and ``leave_order`` place the member in the cluster's history of joins
    and leaves, as its gossiped record carries them: a node that takes a place on the ring
    picks 1 + the highest order it knows of (joins and leaves share one count), so a later
    event has a larger order; concurrent ones may tie (break ties by name). A join order of
    0 means the member has not chosen one yet (it has heard from no other member): it is
    the newest. A member on the ring has ``leave_order`` 0; only a strategy that sets
    ``sees_departed = True`` is also handed the members that left the ring (status
    ``leaving`` or ``removed``), with the order of their leave (see
    :class:`PartitionStrategy`).
    """

    name: str
    capacity: int
    tokens: tuple[int, ...]
    #: when the member took its place on the ring; 0: not chosen yet (the newest)
    join_order: int = 0
    #: when it left the ring; 0 while it is on it
    leave_order: int = 0


@runtime_checkable
class PartitionStrategy(Protocol):
    """Decides where members sit on the ring (the paper's section 6.2 strategies).

    Every method is a pure function of its arguments: nodes that know the same members
    must compute the same ring. Options are the ``[partitioning]`` table of the config; a
    method raises ``ValueError`` naming a bad or unknown setting.

    ``ring_tokens`` is handed the members on the ring (status ``up`` or ``joining``). A
    strategy that sets ``sees_departed = True`` (optional; strategy 3 does, to replay the
    cluster's history) is handed as well every member that left the ring and whose record
    says when (``leave_order`` > 0): the ring is made of the members with
    ``leave_order == 0`` alone, the others are history.
    """

    def partition_count(self, options: Mapping[str, Any]) -> int | None:
        """Q, when the hash space is cut into Q fixed equal partitions; None for token ranges.

        Called at start-up too, so it is where a strategy checks its options.
        """
        ...

    def initial_tokens(
        self, name: str, capacity: int, options: Mapping[str, Any], rng: Random
    ) -> list[int]:
        """Tokens a brand-new member announces through gossip (may be none)."""
        ...

    def ring_tokens(
        self, members: Sequence[MemberInfo], options: Mapping[str, Any]
    ) -> dict[int, str]:
        """The ring (token -> owner name) that the given live members make (owners must be
        members with ``leave_order == 0``)."""
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


# --------------------------------------------------------------------------- the node


@dataclass(frozen=True)
class PeerView:
    """A member of the cluster as one node sees it."""

    name: str
    address: str
    #: the member's own record: ``"joining"``, ``"up"``, ``"leaving"`` or ``"removed"``
    status: str
    #: this node's failure detector's opinion: ``"up"``, ``"suspect"`` or ``"down"``
    state: str


class NodeAPI(Protocol):
    """What a plugin may use of the node it runs on: identity, membership, stats, the bus.

    The same object is passed to every hook of one node; two nodes in one process pass
    two objects, so a plugin keeping per-node state keys it by (or closes over) this one.
    """

    #: the node's name and listening address
    name: str
    address: str
    #: randomness for plugins, seeded per node (tests can make it deterministic)
    rng: Random
    #: ``[metrics] listen`` of the config as (host, port), or None: where the node's
    #: metrics are to be served (by the built-in ``prometheus`` plugin)
    metrics_listen: tuple[str, int] | None

    def now(self) -> float:
        """The node's clock, in seconds (wall clock)."""
        ...

    def members(self) -> list[PeerView]:
        """Every member this node knows of, itself included, sorted by name."""
        ...

    def preference_list(self, bucket: str, key: str) -> list[str]:
        """The key's N home nodes, then its fallbacks, as this node's ring has them."""
        ...

    def local_key_count(self) -> int:
        """How many keys this node holds as a replica (not as a stand-in for others)."""
        ...

    def stats(self) -> Mapping[str, Any]:
        """The document ``dynamo status`` shows for this node."""
        ...

    def options(self, extension: str) -> Mapping[str, Any]:
        """The ``[extensions.<extension>]`` table of the config (empty if absent)."""
        ...

    async def call(self, peer: str, msg_type: str, body: Mapping[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        """Send a request to a peer node and await its reply body.

        Raises :class:`Unavailable` (no address, cannot send), ``Timeout`` (no answer within
        ``timeout``, default the cluster's request timeout) or the error the peer replied.
        """
        ...

    def send(self, peer: str, msg_type: str, body: Mapping[str, Any]) -> None:
        """Send a one-way message to a peer: no reply, no delivery guarantee."""
        ...


# --------------------------------------------------------------------------- extensions


@dataclass(frozen=True)
class Request:
    """An extension message a node received."""

    type: str
    body: dict[str, Any]
    #: the sending node's name, or None when a client sent it
    sender: str | None


#: Answers one extension message: returns the reply body (a map), or raises a
#: :class:`DynamoError` (sent back as an error reply). May be a coroutine function.
Handler = Callable[[NodeAPI, Request], "Mapping[str, Any] | Awaitable[Mapping[str, Any]]"]


@dataclass(frozen=True)
class MessageType:
    """A message type an extension adds to the bus, with its handler.

    The name must start with ``<extension name>.``, so extensions can never collide with
    the core or with each other. The reply travels as ``<name>_ok``. Bodies are checked on
    receipt against ``fields`` (and replies against ``reply_fields``) before any handler
    runs, exactly like the core's own messages: unknown fields, missing required ones and
    values failing their check are rejected with an error reply naming the problem.

    ``access`` is the least role a sender's key needs when the cluster runs with security
    (``read``, ``write``, ``admin`` or ``peer``; see the README's Security section): mark
    operator requests ``"admin"``, and messages only nodes send each other ``"peer"``.
    """

    name: str
    handler: Handler
    fields: Mapping[str, Field] = dataclasses.field(default_factory=dict)
    reply_fields: Mapping[str, Field] = dataclasses.field(default_factory=dict)
    access: str = "write"


@dataclass(frozen=True)
class PeriodicTask:
    """Background work an extension runs on every node, every ``interval`` seconds.

    Runs are jittered by 10% (nodes do not act in lock step), never overlap, and each one
    takes a slot of the node's background budget, the same admission control hint delivery
    and anti-entropy use, so foreground latency holds. A run that raises is logged and the
    task carries on; an async run is cut off after ``interval`` or twice the request
    timeout, whichever is longer (a synchronous run blocks the node: keep it short).
    """

    name: str
    interval: float
    run: Callable[[NodeAPI], Awaitable[None] | None]


@dataclass(frozen=True)
class ProtocolExtension:
    """What one extension adds to a node: message types and periodic tasks."""

    messages: Sequence[MessageType] = ()
    tasks: Sequence[PeriodicTask] = ()


#: Builds an extension for one node. Called once per node at start-up; per-node state lives
#: in the closure or objects it creates. Options come from ``node.options(name)``.
ExtensionFactory = Callable[[NodeAPI], ProtocolExtension]


@dataclass(frozen=True)
class RequestEvent:
    """One client request a node answered (get, put or delete), for observers."""

    #: ``"get"``, ``"put"`` or ``"delete"``
    op: str
    bucket: str
    key: str
    #: seconds from arrival to reply, as this node measured them
    latency: float
    #: ``"ok"``, or the code of the error replied: ``"quorum_not_met"``, ``"timeout"``,
    #: ``"invalid_request"``, ``"overloaded"``, ``"resolver_failed"``, ...
    outcome: str
    #: True when another node forwarded the request here (a put to a non-home node): the
    #: forwarding node reports the same request too
    forwarded: bool = False
    #: a get answered "ok": how many siblings it returned (after the bucket's resolver
    #: merged them); None otherwise
    siblings: int | None = None
    #: an "ok" answer: how many entries the context it returned has (vector entries and
    #: out-of-order dots; truncated past ``[limits] max_clock_entries``); None otherwise
    clock_entries: int | None = None
