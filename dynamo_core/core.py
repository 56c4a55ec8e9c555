"""The whole node as a sans-I/O state machine: frames and time in, effects out.

:class:`NodeCore` is everything a node decides: it decodes frames, routes requests,
coordinates quorums, serves its replicas, gossips, watches its peers, delivers hints, runs
anti-entropy, range transfer, reaping, joining and leaving. It never touches a socket, an
event loop or the system clock. Its driver:

* hands it what arrives: :meth:`NodeCore.receive` (a request, with the identity to answer
  it through) and :meth:`NodeCore.receive_reply` (an answer to one of its own requests),
  each with ``now``, the driver's monotonic time;
* calls :meth:`NodeCore.handle_timer` once its monotonic clock reaches
  :meth:`NodeCore.next_timer`, the earliest of every deadline the node has (operations and
  their hedges, background requests, gossip, heartbeats, handoff, anti-entropy rounds,
  reaping, the background budget, extension tasks);
* carries out the effects every call returns: :class:`Transmit` a frame to a peer,
  :class:`Answer` a request, :class:`Connect` ahead of the first frame, :class:`Await` an
  extension's coroutine at the edge, :class:`Left` when the node has left the cluster.

The production driver is :mod:`dynamo_core.node` (asyncio and ZeroMQ); the simulator
(:mod:`dynamo_core.sim`) runs many cores on one virtual clock. Both hand the core its two
clock readings and one ``random.Random``, from which every random choice is drawn (actor
ids included), so a seed fixes a simulated run entirely.

Clocks: *monotonic* time (``now``) drives every deadline, the failure detector, the
background budget and the tombstone grace; *wall* time (``wall_clock()``) stamps versions
(last-write-wins), hints (they outlive a restart), request expiry (it crosses nodes) and the
storage's "alive" record.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any, Protocol, TypeVar

import cbor2

from . import access, errors, tasks
from .access import OPEN, Principal, admission_key
from .admission import BackgroundBudget
from .antientropy import AntiEntropy
from .api import PartitionStrategy, PeerView, StorageEngine
from .config import Config
from .coordinator import Coordinator, Effect, Fail, KeyPlan, PeerFailed, Reply, Send
from .errors import DynamoError, InvalidRequest, WireError
from .extensions import OBSERVED_OPS, CoreEdge, Edge, Extensions, members_view
from .handoff import HintDelivery, HintStore
from .identity import Epoch, choose_actor, new_boot
from .liveness import Liveness
from .membership import Member, Membership, member_records, membership_changes, removal_of
from .overload import OverloadGuard
from .plugins import Registry, make_plugin_manager
from .readiness import STATUS_MEANINGS, Facts, not_ready
from .ring import Ring, key_hash
from .routing import Route, ring_digest, ring_document
from .store import IDENTITY_KEY, LocalStore, key_bytes_limit
from .throttle import LogThrottle
from .versions import Version
from .wire import MAX_BATCH_ITEMS, MAX_PARTS, SCAN_FREE_BYTES, Codec, Message, Refused

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Time given to a new peer connection before the first message is sent on it.
CONNECT_SECONDS = 0.05
#: How often the storage records that this node is alive (see NodeCore._mark_storage).
ALIVE_SECONDS = 10.0
#: Bounds of the wait before a failed background loop is started again.
LOOP_BACKOFF_MIN = 0.1
LOOP_BACKOFF_MAX = 10.0
#: A loop that ran this long without failing starts its backoff from the bottom again.
LOOP_HEALTHY_SECONDS = 60.0


class RecordFile(Protocol):
    """Where a node keeps its identity record (``node.cbor``): name, actor, boot, member."""

    def load(self) -> bytes | None:
        """The record last saved, or None if there is none."""
        ...

    def save(self, data: bytes) -> None:
        """Replace the record, atomically."""
        ...


# ====================================================================== effects


@dataclass(frozen=True, eq=False)
class Transmit:
    """Send ``frame`` to the peer listening at ``address``.

    If it cannot even be queued, the driver reports it with :meth:`NodeCore.send_failed`.
    """

    address: str
    frame: bytes
    on_fail: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Answer:
    """Answer the request that came in through ``identity``."""

    identity: bytes
    frame: bytes
    #: the asker is a node: its answers of one turn may share a message (see Transport)
    to_peer: bool = False


@dataclass(frozen=True)
class Connect:
    """Open the connection towards a peer ahead of the first frame to it."""

    address: str


@dataclass(frozen=True, eq=False)
class Await:
    """Run an extension's awaitable at the edge (at most ``limit`` seconds) and report its
    result, the exception it raised, or a :class:`~dynamo_core.tasks.CutOff`, with
    :meth:`NodeCore.resume`."""

    awaitable: Awaitable[Any]
    limit: float
    resume: Callable[[Any], None]


@dataclass(frozen=True)
class Left:
    """This node has left the cluster: its driver should stop it."""


CoreEffect = Transmit | Answer | Connect | Await | Left


@dataclass(frozen=True)
class Client:
    """Where to send the answer to a request, and what it asked if it is a client operation."""

    identity: bytes
    req_id: int | None
    #: when the request arrived (monotonic): foreground latency feeds admission control
    arrived: float = 0.0
    op: str | None = None
    bucket: str = ""
    key: str = ""
    forwarded: bool = False
    #: routed by a ring view that differs from this node's: the answer says so
    stale_ring: bool = False
    #: the request came from a node (its envelope names the sender)
    peer: bool = False
    #: who the transport authenticated the sender as (OPEN without security)
    principal: Principal = OPEN


def _client_of(identity: bytes, msg: Message, now: float, principal: Principal) -> Client:
    if msg.type not in OBSERVED_OPS:
        return Client(identity, msg.id, now, principal=principal,
                      peer=msg.sender is not None and principal.may_be_node)
    b = msg.body
    return Client(identity, msg.id, now, msg.type, b["bucket"], b["key"],
                  bool(b.get("forwarded")), principal=principal)


@dataclass
class _PendingCall:
    peer: str
    msg_type: str
    deadline: float
    done: Callable[[Any], None]


class _NodeLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Every line a node logs names the node: many share one process in the simulator."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['node']}: {msg}", kwargs  # type: ignore[index]


class NodeCore:
    """One Dynamo node's protocol: storage, membership, coordination and background work."""

    def __init__(self, name: str, address: str, *, config: Config, rng: Random,
                 wall_clock: Callable[[], float], data_dir: str | None = None,
                 record: RecordFile | None = None, seeds: tuple[str, ...] = (),
                 keep_stale_data: bool = False, plugins: Sequence[object] = (),
                 edge: Edge | None = None,
                 stopwatch: Callable[[], float] | None = None,
                 connected: Callable[[str], bool] | None = None) -> None:
        self.name = name
        self.address = address
        self.config = config
        self.rng = rng
        self.wall = wall_clock
        self.data_dir = data_dir
        self.log = _NodeLog(log, {"node": name})
        self._record = record
        self._now = 0.0
        #: reads the driver's monotonic clock mid-call, only to measure how long a request
        #: took (metrics, admission control); without one, a request answered within the
        #: call that brought it took no time
        self._stopwatch = stopwatch or self.now
        #: whether the driver's way to the peer at an address can carry a frame now (its
        #: transport's answer; readiness asks it); without one, every way can
        self._connected = connected or (lambda address: True)
        #: the ring digest each peer last said it builds (gossip carries it): readiness
        self._peer_digests: dict[str, bytes] = {}
        #: keep replicas held from before an absence past the tombstone grace (operator's call)
        self.keep_stale_data = keep_stale_data
        #: no data of its own yet while the cluster may hold some for its ranges
        self.starts_empty = bool(seeds)
        self._last_alive: float | None = None
        #: the other members' records as ``node.cbor`` last saw them
        self._known_members: list[Member] = []
        self._out: list[CoreEffect] = []
        self.stale_ring_views = 0
        #: (ring, membership generation, routes, digest) of the ring view served
        self._ring_doc: tuple[Ring, int, list[Route], bytes] | None = None
        #: a turn is open (see begin_turn): what acknowledges its writes waits here
        self._turn = False
        self._held: list[CoreEffect] = []
        self.registry = Registry(make_plugin_manager(config.plugin_modules, plugins))
        self.codec = Codec(max_bytes=config.max_message_bytes)
        self.strategy = self._pick_strategy()
        self._check_resolvers()
        detector_factory = self.registry.failure_detector(config.failure_detector["plugin"])
        detector = _configured(f"failure detector {config.failure_detector['plugin']!r}",
                               lambda: detector_factory(config.failure_detector))
        self._open_storage()
        try:
            self._build(seeds, detector, edge)
        except BaseException:
            self.close(clean=False)
            raise

    # ================================================================== set-up

    def _build(self, seeds: tuple[str, ...], detector: Any, edge: Edge | None) -> None:
        config = self.config
        self.budget = BackgroundBudget(config.bg_rate, config.bg_burst,
                                       config.bg_max_concurrent, config.bg_latency_target)
        self._admissions: deque[Callable[[], bool]] = deque()
        self._calls: dict[int, _PendingCall] = {}
        self._call_deadlines: list[tuple[float, int]] = []
        self._call_ids = iter(range(1 << 62, 1 << 63))
        self._gossip_ids = iter(range(1, 1 << 62))
        self.membership = Membership(self._me, self.strategy, config.partitioning, seeds)
        self.membership.merge(self._known_members)
        self.coordinator = Coordinator(self.name, self.store,
                                       request_timeout=config.request_timeout,
                                       max_clock_entries=config.max_clock_entries,
                                       max_pending=config.max_pending_requests)
        self.liveness = Liveness(self.name, detector, config.heartbeat_interval,
                                 on_change=self._peer_state_changed)
        self.overload = OverloadGuard(config.overload, self.coordinator.pending,
                                      self.log.warning)
        self.tasks = tasks.Scheduler(self.now, self._start_call, self._admit, self._run_external,
                                     self._task_crashed)
        self.handoff = HintDelivery(
            self.hints, self.put_many, self._reachable, self.spawn,
            interval=config.handoff_interval, batch=config.handoff_batch,
            max_age=config.handoff_max_age, now=self.now, wall=self.wall, logger=self.log)
        self.anti_entropy = AntiEntropy(
            self.name, config, self.store, ring=lambda: self.membership.ring,
            is_down=self.liveness.is_down, now=self.now, rng=self.rng,
            call=self.background_call, put_many=self.put_many,
            concurrency=self.budget.max_concurrent, starts_empty=lambda: self.starts_empty,
            on_exchange=self.ranges_filled)
        self.store.listener = self.anti_entropy.on_store_change
        self._handlers: dict[str, Callable[[Message, Client], None]] = {
            "get": self._handle_get, "put": self._handle_put, "delete": self._handle_put,
            "replica_get": self._handle_replica_get, "replica_put": self._handle_replica_put,
            "replica_put_many": self._handle_replica_put_many,
            "gossip": self._handle_gossip, "status": self._handle_status,
            "inspect": self._handle_inspect, "preflist": self._handle_preflist,
            "ping": self._handle_ping, "ring": self._handle_ring,
            "ae_roots": self._handle_anti_entropy,
            "ae_hashes": self._handle_anti_entropy, "ae_keys": self._handle_anti_entropy,
            "reap": self._handle_reap, "join": self._handle_join, "leave": self._handle_leave,
            "remove": self._handle_remove,
        }
        self.malformed_frames = 0
        self.expired_requests = 0
        #: requests refused because the sender's role does not allow them (see access)
        self.forbidden_requests = 0
        #: what the network sends is logged through it: a flood is a line per 10 s, not a
        #: line a frame
        self.warnings = LogThrottle(self.log)
        #: what failed -> how many times (a loop restarted with backoff; a timer step)
        self.loop_failures: dict[str, int] = {}
        self.has_left = False
        self.extensions = Extensions(self, self.registry, edge or CoreEdge(self._send_one_way),
                                     self.log)
        for message_type in self.extensions.message_types():
            self._handlers[message_type] = self._handle_extension
        self._membership_seen = self.membership.generation
        #: each member's (status, address) as last logged: changes are logged at info
        self._members_logged = member_records(self.membership.members())

    def _pick_strategy(self) -> PartitionStrategy:
        """The configured partition strategy, its options checked now rather than mid-gossip."""
        options = self.config.partitioning
        strategy = self.registry.partition_strategy(options["strategy"])
        try:
            strategy.partition_count(options)
            strategy.initial_tokens(self.name, self.config.capacity, options, Random(0))
        except ValueError as exc:
            raise errors.ConfigError(f"{options['strategy']}: {exc}") from None
        return strategy

    def _check_resolvers(self) -> None:
        """Fail at start-up, not on the first read, when a bucket names a missing resolver."""
        for bucket in self.config.buckets.values():
            if bucket.resolver:
                self.registry.resolver(bucket.resolver)

    def _open_storage(self) -> None:
        config, data_dir = self.config, self.data_dir
        engine_factory = self.registry.storage_engine(config.storage["engine"])
        what = f"storage engine {config.storage['engine']!r}"
        replicas = _configured(what, lambda: engine_factory(data_dir, config.storage))
        try:
            self.epoch, self._me = self._identity(replicas)
        except BaseException:
            replicas.close()
            raise
        self.actor = self.epoch.actor
        #: drawn at each start; ties node.cbor to the storage of this run (see identity)
        self.boot = new_boot(self.rng)
        self.store = LocalStore(replicas, config.max_siblings, self.actor,
                                key_bytes_limit(config.max_message_bytes))
        self._hold_sends = bool(getattr(replicas, "power_safe", False))
        # Hints live in their own store, never mixed with this node's own replicas.
        hints_dir = f"{data_dir}/hints" if data_dir is not None else None
        try:
            hint_engine = _configured(what, lambda: engine_factory(hints_dir, config.storage))
        except BaseException:
            self.store.close()
            raise
        self.hints = HintStore(hint_engine, config.handoff_max_hints, config.handoff_max_bytes,
                               config.handoff_max_age)

    def _identity(self, engine: StorageEngine) -> tuple[Epoch, Member]:
        """This node's actor and member record, kept across restarts in ``node.cbor``.

        The member record (tokens, status) comes back from ``node.cbor``; the actor does
        only while the storage provably holds every dot it issued (:mod:`identity`).
        """
        saved_bytes = self._record.load() if self._record is not None else None
        saved = cbor2.loads(saved_bytes) if saved_bytes is not None else None
        stored_bytes = engine.get(IDENTITY_KEY)
        stored = cbor2.loads(stored_bytes) if stored_bytes is not None else None
        if stored is not None and isinstance(stored.get("alive"), (int, float)):
            self._last_alive = float(stored["alive"])
        epoch = choose_actor(self.name, saved, stored,
                             durable=bool(getattr(engine, "durable", False)),
                             power_safe=bool(getattr(engine, "power_safe", False)),
                             rng=self.rng)
        if epoch.new and saved is not None:
            self.log.warning("starts a new actor epoch %s: %s", epoch.actor, epoch.reason)
        # Empty while the cluster may hold data for its ranges: a new node with seeds, or a
        # node whose storage holds none of its records (wiped, replaced, or a memory engine
        # after a restart). Its "not found" is weak until anti-entropy filled its ranges.
        self.starts_empty = (self.starts_empty and saved is None) or \
            (saved is not None and stored is None)
        if saved is None:
            tokens = self.strategy.initial_tokens(self.name, self.config.capacity,
                                                  self.config.partitioning, self.rng)
            # A new node with seeds joins a cluster that may hold data for its ranges.
            status = "joining" if self.starts_empty else "up"
            return epoch, Member(self.name, self.address, self.config.capacity,
                                 tuple(sorted(tokens)), status)
        if saved.get("name") != self.name:
            raise errors.ConfigError(
                f"data directory {self.data_dir} belongs to node {saved.get('name')!r}, "
                f"not {self.name!r}")
        member = Member.from_wire(saved["member"])
        self._known_members = _members_from(saved.get("members"))
        # A node that left (or was removed) stays out until it is told to join again.
        status = "removed" if member.status in ("removed", "leaving") else member.status
        if status == "up" and self.starts_empty:
            status = "joining"  # lost its data: it fills its ranges again before it is up
        if status == "removed":
            self.log.warning("left the cluster earlier; it stays out of the ring until "
                             "`dynamo join` brings it back")
        return epoch, Member(self.name, self.address, self.config.capacity, member.tokens,
                             status, member.version + 1, member.join_order,
                             member.leave_order)

    def _save_identity(self) -> None:
        """``node.cbor``: this node's name, actor, boot and member record, and the records
        it knows of the others (a removal, above all, must outlive a restart of every node
        that heard of it, or the dead node comes back into the ring)."""
        if self._record is not None:
            self._record.save(cbor2.dumps({
                "name": self.name, "actor": self.actor, "boot": self.boot,
                "member": self.membership.me.to_wire(),
                "members": [m.to_wire() for m in self.membership.members()
                            if m.name != self.name]}))

    def _mark_storage(self, clean: bool) -> None:
        """Record in storage which actor and boot it belongs to, whether we stopped, and
        when this node was last alive (wall clock).

        Written before ``node.cbor`` at start (a crash between the two only starts one
        more epoch next time), every ALIVE_SECONDS while running, and, with ``clean``, as
        the very last write at stop.
        """
        self.store.engine.put(IDENTITY_KEY, cbor2.dumps(
            {"actor": self.actor, "boot": self.boot, "clean": clean, "alive": self.wall()}))

    def _drop_stale_data(self, why: str) -> None:
        """Forget replicas and hints that may predate deletes the cluster has reaped since.

        Pushing them back by anti-entropy or range transfer would resurrect deleted keys;
        dropped, the node's ranges are refilled from the current replicas instead.
        """
        keys, hints = self.store.forget_all(), self.hints.forget_all()
        self.log.warning("dropped %d keys and %d hints held from before: %s (their current "
                         "versions come back from the other replicas; `--keep-data` keeps "
                         "them)", keys, hints, why)

    # ================================================================== the driver's side

    def now(self) -> float:
        """Monotonic time, as the driver last handed it in."""
        return self._now

    def _enter(self, now: float) -> None:
        self._now = max(self._now, now)

    def start(self, now: float) -> list[CoreEffect]:
        """Begin serving: check for stale data, record the start, start the loops."""
        self._enter(now)
        away = None if self._last_alive is None else self.wall() - self._last_alive
        if away is not None and away > self.config.tombstone_grace and \
                not self.keep_stale_data:
            self._drop_stale_data(f"it was away {away:.0f}s, longer than the tombstone "
                                  f"grace of {self.config.tombstone_grace:g}s")
            self.starts_empty = True
            if self.membership.me.status == "up":
                self.membership.update_me(status="joining")
        self._mark_storage(clean=False)
        self._save_identity()
        self.anti_entropy.refresh()
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "gossip": self._gossip_loop, "heartbeat": self._heartbeat_loop,
            "handoff": self.handoff.run, "anti-entropy": self.anti_entropy.run,
            "alive": self._alive_loop, **self.extensions.loops()}
        for name, loop in loops.items():
            self.spawn(name, self._supervise(name, loop))
        self.log.info("advertised as %s (actor %s, %s, engine %s)", self.address, self.actor,
                      self.config.partitioning["strategy"], self.config.storage["engine"])
        self.extensions.notify("dynamo_node_started")
        return self._drain()

    def shutdown(self, now: float) -> list[CoreEffect]:
        """Stop every loop and background request; the driver closes its sockets next."""
        self._enter(now)
        self.extensions.notify("dynamo_node_stopping")
        self.tasks.cancel_all()
        return self._drain()

    def close(self, clean: bool = True) -> None:
        """Release the storage, recording (``clean``) that this node stopped cleanly."""
        if clean:
            try:
                self._mark_storage(clean=True)
            except Exception:  # the next start then begins a new epoch: safe
                self.log.exception("could not record a clean stop in storage")
        self.store.close()
        self.hints.close()

    def next_timer(self) -> float | None:
        """The monotonic time at which :meth:`handle_timer` has work, or None."""
        times = [t for t in (self.coordinator.next_deadline(), self.tasks.next_deadline(),
                             self._next_call_deadline(), self._next_admission())
                 if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[CoreEffect]:
        """Time has come for what :meth:`next_timer` announced (or later)."""
        self._enter(now)
        self._guarded("timers", lambda: self._run(self.coordinator.on_tick(self._now)))
        self._guarded("timers", lambda: self._expire_calls(self._now))
        self._guarded("timers", lambda: self._grant_admissions(self._now))
        self._guarded("timers", self.tasks.run_due)
        return self._drain()

    def _guarded(self, what: str, step: Callable[[], None]) -> None:
        """Run one step of the node's timers; whatever it raises, the others still run and
        the node keeps its timers (a bug in one must not stop every deadline for good)."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - counted and logged: survive anything
            self._loop_failed(what, exc)

    def _loop_failed(self, what: str, exc: BaseException, then: str = "carrying on") -> None:
        """Count a failure of ``what`` (``loop_failures`` in status) and log it: with its
        traceback the first time, in one line after that."""
        failures = self.loop_failures.get(what, 0) + 1
        self.loop_failures[what] = failures
        if failures == 1:
            self.log.error("%s failed; %s", what, then, exc_info=exc)
        else:
            self.log.error("%s failed again (%d times): %s; %s", what, failures, exc, then)

    def receive(self, identity: bytes, frames: list[bytes], now: float,
                principal: Principal = OPEN) -> list[CoreEffect]:
        """A request (from a client or a peer), to be answered through ``identity``;
        ``principal`` is who the transport authenticated the sender as."""
        self._enter(now)
        if not self._refused(identity, frames, principal):
            self._on_request(identity, frames, principal)
        return self._drain()

    def requests_waiting(self, waiting: bool, now: float) -> None:
        """What the driver saw in the queue of its listening socket: requests waiting
        when it started reading, or none left. A queue that stays non-empty is how this
        node learns it is behind (:mod:`overload`)."""
        self._enter(now)
        self.overload.queue.observe(waiting, self._now)

    def _refused(self, identity: bytes, frames: list[bytes], principal: Principal) -> bool:
        """Refuse a client's request at once, from its envelope's head alone, while this
        node is past its limits; the refusal leaves at once, not held for the turn's
        commit (nothing was done)."""
        key = admission_key(identity, principal)
        self.overload.arrived(key, self._now)
        if len(frames) != 1 or not self.overload.may_refuse(self._now):
            return False
        msg_type, req_id, sender = self.codec.head_of(frames[0])
        # Only a node may say who it is; a client naming a sender is still a client.
        busy = self.overload.screen(key, msg_type,
                                    sender if principal.may_be_node else None, self._now)
        if busy is None:
            return False
        self._out.append(Answer(identity, self.codec.encode(
            "error", errors.to_wire(busy), req_id, self.name)))
        return True

    def receive_reply(self, address: str, frames: list[bytes], now: float
                      ) -> list[CoreEffect]:
        """An answer from the peer at ``address`` to one of this node's requests."""
        self._enter(now)
        self._guarded("replies", lambda: self._on_peer_reply(address, frames))
        return self._drain()

    def send_failed(self, transmit: Transmit, why: str, now: float) -> list[CoreEffect]:
        """The driver could not queue ``transmit``."""
        self._enter(now)
        if transmit.on_fail is not None:
            transmit.on_fail(why)
        return self._drain()

    def resume(self, resume: Callable[[Any], None], result: Any, now: float
               ) -> list[CoreEffect]:
        """The outcome of an :class:`Await`: a value, or the exception it raised."""
        self._enter(now)
        resume(result)
        return self._drain()

    def call(self, peer: str, msg_type: str, body: dict[str, Any], timeout: float | None,
             done: Callable[[Any], None], now: float) -> list[CoreEffect]:
        """A request to a peer on the driver's behalf; ``done`` gets the reply body or a
        DynamoError."""
        self._enter(now)
        self._start_call(tasks.Call(peer, msg_type, body, timeout), done)
        return self._drain()

    def send_one_way(self, peer: str, msg_type: str, body: dict[str, Any], now: float
                     ) -> list[CoreEffect]:
        self._enter(now)
        self._send_one_way(peer, msg_type, body)
        return self._drain()

    def _emit(self, effect: CoreEffect) -> None:
        if self._turn and (isinstance(effect, Answer) or (
                self._hold_sends and isinstance(effect, Transmit))):
            self._held.append(effect)
        else:
            self._out.append(effect)

    # ================================================================== group commit

    def begin_turn(self) -> None:
        """Messages that arrived together follow (the driver drains a socket): until
        :meth:`end_turn`, their storage writes share one commit when the engine offers
        batches (group commit), and nothing that acknowledges them leaves before it.

        Requests to peers are not held back (the replicas' round trip overlaps the local
        commit) unless the engine syncs every commit: such a node keeps its actor across
        a crash, so a dot must be durable here before any message carries it. Elsewhere a
        crash before the commit starts a new actor epoch (:mod:`identity`) and the dot is
        never issued again; a failed commit keeps its counters (:class:`LocalStore`).
        """
        if not self._turn:
            self._turn = True
            self.store.begin_batch()

    @property
    def in_turn(self) -> bool:
        """A turn is open: :meth:`end_turn` has writes to commit and answers to release."""
        return self._turn

    def end_turn(self, now: float) -> list[CoreEffect]:
        """Commit the turn's writes, then release what waited for them.

        If the commit fails, every request answered in the turn is answered with the
        storage error instead (its write may or may not have reached other replicas, as
        with any failed put), the puts this node coordinates whose own write was in the
        turn fail with it (that write no longer counts toward W), and held requests to
        peers are dropped: their operations end at their deadlines.
        """
        self._enter(now)
        if not self._turn:
            return []
        self._turn = False
        held, self._held = self._held, []
        try:
            self.store.commit_batch()
        except errors.StorageFailed as exc:
            self.log.error("%s; the %d answers of this turn become errors", exc, len(held))
            held = [self._failed_answer(e, exc) for e in held if isinstance(e, Answer)]
            self._out.extend(held)
            self._run(self.coordinator.local_writes_lost(exc))
        else:
            self.coordinator.local_writes_committed()
            self._out.extend(held)
        return self._drain()

    def _failed_answer(self, answer: Answer, exc: errors.DynamoError) -> Answer:
        req_id = self.codec.request_id_of(answer.frame)
        return Answer(answer.identity, self.codec.encode(
            "error", errors.to_wire(exc), req_id, self.name), answer.to_peer)

    def _drain(self) -> list[CoreEffect]:
        self.tasks.run_ready()
        if self.membership.generation != self._membership_seen:
            self._membership_seen = self.membership.generation
            self._log_membership_changes()
            # Before any answer leaves: a removal this node was asked for is durable here
            # once acknowledged, and survives a restart of every node that heard of it.
            self._save_identity()
            self.extensions.notify("dynamo_membership_changed", members=self.members())
            self.tasks.run_ready()
        out, self._out = self._out, []
        return out

    def _log_membership_changes(self) -> None:
        """An operator reading the log learns who joined, left or moved, at info level."""
        records = member_records(self.membership.members())
        for line in membership_changes(self._members_logged, records):
            self.log.info("membership: %s", line)
        self._members_logged = records

    def _peer_state_changed(self, peer: str, before: str, after: str) -> None:
        self.log.info("peer %s is %s (was %s)", peer, after, before)

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> tasks.Task:
        """Run ``coro`` as a task of this node's scheduler."""
        return self.tasks.spawn(name, coro)

    # ================================================================== background requests

    def _start_call(self, call: tasks.Call, done: Callable[[Any], None]) -> None:
        address = self.membership.address_of(call.peer)
        if address is None:
            done(errors.Unavailable(f"no address known for node {call.peer}"))
            return
        wait = call.timeout or self.config.request_timeout
        req_id = next(self._call_ids)
        try:
            frame = self.codec.encode(call.msg_type, call.body, req_id, self.name,
                                      self.wall() + wait)
        except WireError as exc:
            done(exc)
            return
        deadline = self._now + wait
        self._calls[req_id] = _PendingCall(call.peer, call.msg_type, deadline, done)
        heapq.heappush(self._call_deadlines, (deadline, req_id))
        self._emit(Transmit(address, frame,
                            lambda why: self._end_call(req_id, errors.Unavailable(why))))

    def _end_call(self, req_id: int, result: Any) -> None:
        pending = self._calls.pop(req_id, None)
        if pending is not None:
            pending.done(result)

    def _next_call_deadline(self) -> float | None:
        heap = self._call_deadlines
        while heap and heap[0][1] not in self._calls:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _expire_calls(self, now: float) -> None:
        heap = self._call_deadlines
        while heap and heap[0][0] <= now:
            _, req_id = heapq.heappop(heap)
            pending = self._calls.get(req_id)
            if pending is not None:
                self.liveness.request_failed(pending.peer, now)
                self._end_call(req_id, errors.Timeout(
                    f"{pending.msg_type} to {pending.peer} got no answer"))

    def _admit(self, granted: Callable[[], bool]) -> None:
        """Give ``granted`` a background slot now, or as soon as one is free (in order)."""
        if not self._admissions and self.budget.try_start(self._now):
            self._hand_slot(granted)
        else:
            self._admissions.append(granted)

    def _hand_slot(self, granted: Callable[[], bool]) -> None:
        if not granted():  # its task was cancelled meanwhile
            self.budget.done()

    def background_done(self) -> None:
        """A background task gave its slot back: the next waiting one may start."""
        self.budget.done()
        self._grant_admissions(self._now)

    def _grant_admissions(self, now: float) -> None:
        while self._admissions and self.budget.try_start(now):
            self._hand_slot(self._admissions.popleft())

    def _next_admission(self) -> float | None:
        return self.budget.ready_at(self._now) if self._admissions else None

    def _run_external(self, op: tasks.External, done: Callable[[Any], None]) -> None:
        self._emit(Await(op.awaitable, op.limit, done))

    def _task_crashed(self, task: tasks.Task, exc: BaseException) -> None:
        self.log.error("task %s failed: %r", task.name, exc)

    async def background_call(self, peer: str, msg_type: str, body: dict[str, Any]
                              ) -> dict[str, Any]:
        """One background request, admitted by the budget (it waits its turn in a queue)."""
        await tasks.admitted()
        try:
            return await tasks.Call(peer, msg_type, body)  # type: ignore[no-any-return]
        finally:
            self.background_done()

    async def put_many(self, peer: str, items: Sequence[tuple[str, str, Sequence[Version]]]
                       ) -> list[bool | str]:
        """Store many keys' versions in ``peer``'s own replicas, in batches that fit a frame.

        One background request per batch, not per key: what bounds catching up after an
        outage is the backlog's size in frames, not the request-rate cap that protects
        foreground latency. Returns each item's result (changed, or why it was refused).
        """
        results: list[bool | str] = []
        for batch in self._batches(items):
            reply = await self.background_call(peer, "replica_put_many", {"items": batch})
            if len(reply["results"]) != len(batch):
                raise DynamoError(f"{peer} answered {len(reply['results'])} results for "
                                  f"{len(batch)} keys")
            results.extend(reply["results"])
        return results

    def _batches(self, items: Sequence[tuple[str, str, Sequence[Version]]]
                 ) -> Iterator[list[dict[str, Any]]]:
        # A batch within SCAN_FREE_BYTES is within the receiver's item and decoded-size caps
        # whatever its keys hold; a bigger key goes alone, within them by the store's limits.
        limit = min(key_bytes_limit(self.config.max_message_bytes) // 2, SCAN_FREE_BYTES)
        batch: list[dict[str, Any]] = []
        size = 0
        for bucket, key, versions in items:
            body = {"bucket": bucket, "key": key, "versions": [v.to_wire() for v in versions]}
            weight = len(cbor2.dumps(body))  # exact: a frame over the limit never leaves
            if batch and (len(batch) >= MAX_BATCH_ITEMS or size + weight > limit):
                yield batch
                batch, size = [], 0
            batch.append(body)
            size += weight
        if batch:
            yield batch

    # ================================================================== loops

    async def _supervise(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]
                         ) -> None:
        """Run a background loop forever: whatever it raises, it is started again.

        One storage error (a full disk) in a read repair sent from a timer must not end
        the timers for good. The first failure of a loop is logged with its traceback,
        later ones in a line each; all are counted (``loop_failures`` in status), and the
        restarts back off, from a tenth of a second up to ten, resetting once the loop
        has run for a minute without failing.
        """
        delay = 0.0
        while True:
            started = self._now
            try:
                await loop()
                return
            except Exception as exc:  # noqa: BLE001 - the point is to survive anything
                delay = LOOP_BACKOFF_MIN if self._now - started > LOOP_HEALTHY_SECONDS \
                    else min(LOOP_BACKOFF_MAX, max(LOOP_BACKOFF_MIN, delay * 2))
                self._loop_failed(name, exc, f"restarting the loop in {delay:.1f}s")
            await tasks.sleep(delay)

    async def _gossip_loop(self) -> None:
        # Peer sockets only queue on live connections: open them first, give them a moment.
        for address in [*self.membership.seeds,
                        *(m.address for m in self.membership.members() if m.name != self.name)]:
            self._emit(Connect(address))
        await tasks.sleep(CONNECT_SECONDS)
        while True:
            self._gossip_once()
            # Jitter keeps nodes from gossiping in lock step.
            await tasks.sleep(self.config.gossip_interval * self.rng.uniform(0.8, 1.2))

    async def _alive_loop(self) -> None:
        while True:
            await tasks.sleep(ALIVE_SECONDS)
            try:
                self._mark_storage(clean=False)
            except Exception as exc:  # noqa: BLE001 - a failing disk must not stop the node
                self.log.warning("could not record being alive in storage: %s", exc)

    async def _heartbeat_loop(self) -> None:
        while True:
            await tasks.sleep(self.config.heartbeat_interval / 2)
            self.warnings.flush(self._now)
            for peer in self.liveness.refresh(self._watched_peers(), self._now):
                self._send_one_way(peer, "ping", {})

    def _watched_peers(self) -> list[str]:
        """The peers this node pings when it has not heard from them: those it shares a
        range with, those it holds hints for, and any it believes suspect or down (the
        paper's periodic retry that notices a node is back).

        Not every member: in a cluster of a hundred nodes that would be ten thousand
        pings a heartbeat. As in the paper, a node learns of the others' failures from
        the requests it sends them; none of them matters to it otherwise.
        """
        live = {m.name for m in self.membership.members()
                if m.status != "removed" and m.name != self.name}
        watched = (set(self.anti_entropy.peers()) | set(self.hints.targets())
                   | {p for p in live if self.liveness.state(p, self._now) != "up"})
        return sorted(watched & live)

    def _send_one_way(self, peer: str, msg_type: str, body: dict[str, Any]) -> None:
        address = self.membership.address_of(peer)
        if address is None:
            return

        def failed(why: str) -> None:
            self.liveness.request_failed(peer, self._now)
            self.log.debug("%s to %s not sent: %s", msg_type, peer, why)
        self._emit(Transmit(address, self.codec.encode(msg_type, body, None, self.name),
                            failed))

    def _gossip_once(self, target: str | None = None) -> None:
        target = target or self.membership.gossip_target(self.rng)
        if target is None:
            return
        frame = self.codec.encode("gossip", self._gossip_body(), next(self._gossip_ids),
                                  self.name)
        self._emit(Transmit(target, frame, lambda why: self.log.debug(
            "gossip to %s not sent: %s", target, why)))

    def _reachable(self, peer: str, now: float) -> bool:
        return not self.liveness.is_down(peer, now) and \
            self.membership.address_of(peer) is not None

    # ================================================================== incoming

    def _on_request(self, identity: bytes, frames: list[bytes], principal: Principal) -> None:
        if len(frames) != 1:
            self._reject(identity, self.codec.request_id_of(frames[0]) if frames else None,
                         WireError(f"a message carries at most {MAX_PARTS} frames (one "
                                   f"request each), got {len(frames)}"))
            return
        try:
            msg = self.codec.decode(frames[0])
        except Refused as exc:
            if exc.req_id is None and exc.sender is not None:  # a peer's one-way message
                self.malformed_frames += 1
                self.warnings.event("refused a one-way message", exc.sender, str(exc),
                                    self._now)
                return
            self._reject(identity, exc.req_id, exc, exc.sender)
            return
        client = _client_of(identity, msg, self._now, principal)
        refused = access.refusal(principal, msg.type, msg.body, self.extensions.roles)
        if refused is not None:
            self._forbid(client, refused)
            return
        routed_by = msg.body.get("ring") if client.op is not None else None
        if routed_by is not None and routed_by != self._ring_view()[1]:
            self.stale_ring_views += 1
            client = dataclasses.replace(client, stale_ring=True)
        if principal.may_be_node:  # a client's claim to be a node is not believed
            self._heard_from(msg.sender)
        if msg.expires is not None and (late := self.wall() - msg.expires) > 0:
            self.expired_requests += 1
            self.warnings.event(f"dropped an expired {msg.type}", str(msg.sender),
                                f"expired {late:.1f}s ago (it waited in a queue)",
                                self._now, logging.INFO)
            return
        handler = self._handlers.get(msg.type)
        if handler is None:
            self.answer_error(client, InvalidRequest(
                f"{msg.type} is a reply type; a node does not accept it as a request"))
            return
        try:
            handler(msg, client)
        except DynamoError as exc:
            self.answer_error(client, exc)
        except Exception as exc:
            self.log.exception("%s request failed", msg.type)
            self.answer_error(client, DynamoError(
                f"internal error handling {msg.type}: {exc}"))

    def _forbid(self, client: Client, why: str) -> None:
        self.forbidden_requests += 1
        who = client.principal.key.decode("ascii", "replace")
        self.warnings.event("refused a forbidden request", f"{client.principal.role} key {who}",
                            why, self._now)
        self.answer_error(client, errors.Forbidden(why))

    def _reject(self, identity: bytes, req_id: int | None, exc: WireError,
                sender: str | None = None) -> None:
        self.malformed_frames += 1
        self.warnings.event("rejected a malformed frame", sender or f"client {identity.hex()}",
                            str(exc), self._now)
        self.answer_error(Client(identity, req_id), exc)

    def _heard_from(self, sender: str | None) -> None:
        """A frame named its sender: the failure detector hears of members only (anyone
        can write any name in an envelope; a table per name would grow without bound)."""
        member = self.membership.get(sender) if sender else None
        if member is not None and member.status != "removed":
            self.liveness.heard_from(member.name, self._now)

    def _on_peer_reply(self, address: str, frames: list[bytes]) -> None:
        if len(frames) != 1:
            self.warnings.event("dropped a reply", address, f"{len(frames)} frames", self._now)
            return
        try:
            msg = self.codec.decode(frames[0])
        except WireError as exc:
            self.warnings.event("dropped a malformed reply", address, str(exc), self._now)
            return
        self._heard_from(msg.sender)
        if msg.type == "gossip_ok":
            self._merge_gossip(msg.body["members"])
            self._heard_ring(msg.sender, msg.body.get("ring"))
        elif msg.type == "pong":
            pass  # a heartbeat: hearing it was the point
        elif msg.id in self._calls:
            self._end_call(msg.id, errors.from_wire(msg.body) if msg.type == "error"
                           else msg.body)
        elif msg.sender is not None:
            self._run(self.coordinator.on_reply(msg.id, msg.sender, msg.type, msg.body,
                                                self._now))

    # ================================================================== effects

    def _run(self, effects: list[Effect]) -> None:
        """Carry out coordinator effects; local sends are answered at once and may yield more."""
        queue = deque(effects)
        while queue:
            effect = queue.popleft()
            if isinstance(effect, Send):
                queue.extend(self._send(effect))
            elif isinstance(effect, Reply):
                self.answer(effect.client, effect.msg_type, effect.body)
                self._observe(effect.client)
            elif isinstance(effect, Fail):
                if isinstance(effect.error, errors.ResolverFailed):
                    self.log.warning("%s", effect.error)
                self.answer_error(effect.client, effect.error)
                self._observe(effect.client)
            elif isinstance(effect, PeerFailed):
                self.liveness.request_failed(effect.peer, self._now)

    def _observe(self, client: Client) -> None:
        self.budget.observe(self._stopwatch() - client.arrived, self._now)

    def _send(self, send: Send) -> list[Effect]:
        if send.to == self.name:
            try:
                msg_type, body = self._serve_replica(send.msg_type, send.body, local=True)
            except DynamoError as exc:
                msg_type, body = "error", errors.to_wire(exc)
            except Exception as exc:  # the operation fails, the node serves on
                self.log.exception("local %s failed", send.msg_type)
                msg_type, body = "error", errors.to_wire(errors.StorageFailed(
                    f"{self.name} could not serve its own {send.msg_type}: {exc}"))
            if send.req_id is None:
                return []
            return self.coordinator.on_reply(send.req_id, self.name, msg_type, body, self._now)
        address = self.membership.address_of(send.to)
        try:
            if address is None:
                raise WireError(f"no address known for node {send.to}")
            frame = self.codec.encode(send.msg_type, send.body, send.req_id, self.name,
                                      self.wall() + request_lifetime(
                                          self.config.request_timeout))
        except WireError as exc:
            if send.req_id is None:
                return []
            return self.coordinator.on_unreachable(send.req_id, send.to, str(exc), self._now)
        self._emit(Transmit(address, frame, None if send.req_id is None else
                            self._unreachable(send.req_id, send.to)))
        return []

    def _unreachable(self, req_id: int, peer: str) -> Callable[[str], None]:
        def failed(why: str) -> None:
            self._run(self.coordinator.on_unreachable(req_id, peer, why, self._now))
        return failed

    def answer(self, client: Client, msg_type: str, body: dict[str, Any]) -> None:
        """Answer a request (client or peer) through the identity it came in on."""
        if client.stale_ring and msg_type != "error":
            body = {**body, "ring_stale": True}
        try:
            frame = self.codec.encode(msg_type, body, client.req_id, self.name)
        except WireError as exc:
            msg_type, body = "error", errors.to_wire(exc)
            frame = self.codec.encode(msg_type, body, client.req_id, self.name)
        self._emit(Answer(client.identity, frame, client.peer))
        if client.op is not None:
            self.extensions.request_completed(client, msg_type, body, self._stopwatch())

    def answer_error(self, client: Client, exc: DynamoError) -> None:
        body = errors.to_wire(exc)
        body["message"] = body["message"][:4000]
        self.answer(client, "error", body)

    # ================================================================== handlers

    def plan(self, bucket: str, key: str, quorum_field: str, override: int | None) -> KeyPlan:
        """The key's home nodes and the quorum this request needs."""
        settings = self.config.bucket(bucket)
        quorum = override if override is not None else getattr(settings, quorum_field)
        if quorum > settings.n:
            raise InvalidRequest(f"{quorum_field}={quorum} exceeds n={settings.n} of "
                                 f"bucket {bucket!r}")
        walk = self.membership.ring.walk(key_hash(bucket, key))
        resolver = self.registry.resolver(settings.resolver) if settings.resolver else None
        now = self._now
        return KeyPlan.sloppy(bucket, key, walk, settings.n, quorum,
                              lambda peer: self.liveness.is_down(peer, now), resolver,
                              settings.strict)

    def ranges_filled(self) -> None:
        """After an anti-entropy exchange: a joining node whose every range was compared
        with another replica holds its ranges, and is up."""
        if self.membership.me.status == "joining" and not self.anti_entropy.filling:
            self.membership.update_me(status="up")
            self._save_identity()
            self.log.info("its ranges are filled; it is up")

    def _handle_get(self, msg: Message, client: Client) -> None:
        b = msg.body
        plan = self.plan(b["bucket"], b["key"], "r", b.get("r"))
        if b.get("resolve") is False:
            plan = dataclasses.replace(plan, resolver=None)
        self._run(self.coordinator.start_get(client, plan, self._now))

    def _handle_put(self, msg: Message, client: Client) -> None:
        b = msg.body
        plan = self.plan(b["bucket"], b["key"], "w", b.get("w"))
        self._run(self.coordinator.start_put(
            client, plan, b.get("value"), b.get("context"), msg.type == "delete",
            self._now, forwarded=bool(b.get("forwarded")), timestamp=self.wall()))

    def _serve_replica(self, msg_type: str, body: dict[str, Any], local: bool = False
                       ) -> tuple[str, dict[str, Any]]:
        """This node's part as a replica: read or fold in versions of one key.

        A ``local`` read (the coordinator's own replica) answers with the versions
        themselves, not their wire form: nothing is encoded only to be parsed back.
        """
        bucket, key = body["bucket"], body["key"]
        if msg_type == "replica_get":
            versions = self.store.read(bucket, key)
            reply: dict[str, Any] = {}
            # A stand-in answers with what it holds for absent homes too.
            if not body.get("own"):
                for hinted in self.hints.for_key(bucket, key).values():
                    versions.extend(hinted)
                if self.anti_entropy.is_filling(bucket, key):
                    reply["filling"] = True
            reply["versions"] = versions if local else [v.to_wire() for v in versions]
            return "replica_get_ok", reply
        try:
            incoming = [Version.from_wire(v) for v in body["versions"]]
        except ValueError as exc:
            raise InvalidRequest(f"replica_put: {exc}") from None
        home = body.get("hint")
        if home is not None and home != self.name:
            try:
                self.hints.add(home, bucket, key, incoming, self.wall())
            except errors.Overloaded as exc:
                self.warnings.event("refused a hint", home, str(exc), self._now)
                raise
            return "replica_put_ok", {"changed": True}
        return "replica_put_ok", {"changed": self.store.apply(bucket, key, incoming)}

    def _handle_replica_get(self, msg: Message, client: Client) -> None:
        self.answer(client, *self._serve_replica(msg.type, msg.body))

    def _handle_replica_put_many(self, msg: Message, client: Client) -> None:
        """Fold many keys into this node's own replicas: one result per item, in order.

        An item that is refused (a bad version, a key at its limits) fails alone; the
        others are stored. Items carry no hints: a batch goes to a key's own replicas.
        """
        results: list[bool | str] = []
        for item in msg.body["items"]:
            try:
                self.codec.check_body("replica_put", item)
                if "hint" in item:
                    raise InvalidRequest("replica_put_many: items carry no hints")
                results.append(self._serve_replica("replica_put", item)[1]["changed"])
            except DynamoError as exc:
                results.append(str(exc)[:500])
        self.answer(client, "replica_put_many_ok", {"results": results})

    def _handle_replica_put(self, msg: Message, client: Client) -> None:
        reply = self._serve_replica(msg.type, msg.body)
        if client.req_id is not None:
            self.answer(client, *reply)

    def _handle_gossip(self, msg: Message, client: Client) -> None:
        self._merge_gossip(msg.body["members"])
        if client.peer:
            self._heard_ring(msg.sender, msg.body.get("ring"))
        self.answer(client, "gossip_ok", self._gossip_body())

    def _gossip_body(self) -> dict[str, Any]:
        """What gossip carries either way: every member record, and the digest of the
        ring they make here (peers compare it with theirs: readiness)."""
        return {"members": self.membership.to_wire(), "ring": self._ring_view()[1]}

    def _heard_ring(self, sender: str | None, digest: bytes | None) -> None:
        """A member said which ring it builds (a name outside the membership is not kept:
        the table stays as small as the membership)."""
        if sender is not None and digest is not None and self.membership.get(sender):
            self._peer_digests[sender] = digest

    def _merge_gossip(self, records: list[dict[str, Any]]) -> None:
        members = []
        for record in records:
            try:
                members.append(Member.from_wire(record))
            except ValueError as exc:
                self.warnings.event("ignored a gossiped member record", "gossip", str(exc),
                                    self._now)
        me_before = self.membership.me
        if self.membership.merge(members):
            for member in self.membership.members():
                if member.name != self.name and member.status != "removed":
                    self._emit(Connect(member.address))
            me = self.membership.me
            if me != me_before:
                if me.tokens != me_before.tokens:
                    self.log.info("took back tokens the cluster remembers (version %d)",
                                  me.version)
                if me.join_order != me_before.join_order:
                    self.log.info("joins the ring as its event %d (join order)",
                                  me.join_order)
                self._save_identity()

    def _handle_anti_entropy(self, msg: Message, client: Client) -> None:
        try:
            self.answer(client, *self.anti_entropy.serve(msg.type, msg.body))
        except ValueError as exc:
            raise InvalidRequest(f"{msg.type}: {exc}") from None

    def _handle_reap(self, msg: Message, client: Client) -> None:
        b = msg.body
        try:
            versions = [Version.from_wire(v) for v in b["versions"]]
        except ValueError as exc:
            raise InvalidRequest(f"reap: {exc}") from None
        if not all(v.tombstone for v in versions):
            raise InvalidRequest("reap: only tombstones are reaped")
        reaped = self.store.remove(b["bucket"], b["key"], versions)
        self.answer(client, "reap_ok", {"reaped": reaped})

    def _handle_join(self, msg: Message, client: Client) -> None:
        """Join the cluster a seed belongs to: gossip with it now, and from then on."""
        seed = msg.body["seed"]
        self.membership.seeds = tuple(dict.fromkeys([*self.membership.seeds, seed]))
        if self.membership.me.status == "removed" and not msg.body.get("keep_data"):
            self._drop_stale_data("it was removed from the cluster and is joining again")
        # Above any removal of it, even one it has not heard of yet: restarted after it was
        # removed and told to join at once, it would otherwise learn of the removal next
        # and stay out for good.
        self.membership.join_again()
        self._enter_as_newcomer()
        self._save_identity()
        self._emit(Connect(seed))
        self.spawn("join", self._gossip_soon(seed))
        self.log.info("joining the cluster through %s", seed)
        self.answer(client, "join_ok", {})

    def _enter_as_newcomer(self) -> None:
        """Told to join, a node is a newcomer to the cluster's data, whatever it holds: alone
        it was "up" in a ring of its own, owner of every range (empty ones included), and
        those ranges would stay its own after the join, its "not found" counting for reads.
        It is joining instead, every range it replicates filling until anti-entropy has
        compared it with another replica (then it is up, see ranges_filled)."""
        self.starts_empty = True
        if self.membership.me.status == "up":
            self.membership.update_me(status="joining")
        self.anti_entropy.refill()

    async def _gossip_soon(self, address: str) -> None:
        await tasks.sleep(CONNECT_SECONDS)
        self._gossip_once(address)

    def _handle_leave(self, msg: Message, client: Client) -> None:
        """Leave gracefully: step off the ring, hand every range over, then exit."""
        if self.membership.me.status in ("up", "joining"):
            self.membership.update_me(status="leaving")
            self._save_identity()
            self.log.info("leaving; handing %d keys over before exiting", len(self.store))
            self.spawn("leave", self._supervise("leave", self._finish_leaving))
        self.answer(client, "leave_ok", {})

    async def _finish_leaving(self) -> None:
        while True:
            await tasks.sleep(self.config.ae_interval)
            if self.membership.me.status != "leaving":
                return
            self.anti_entropy.refresh()
            if not self.anti_entropy.unowned(1) and not self.hints.pending():
                break
            await self.anti_entropy.transfer_unowned()
        self.membership.update_me(status="removed")
        self._save_identity()
        for _ in range(3):  # make sure the news is out before going quiet
            self._gossip_once()
            await tasks.sleep(self.config.gossip_interval / 2)
        self.log.info("left the cluster")
        self.has_left = True
        self._emit(Left())

    def _handle_remove(self, msg: Message, client: Client) -> None:
        """Remove a dead node: its tokens leave the ring; anti-entropy rebuilds its copies."""
        name = msg.body["name"]
        member = self.membership.get(name)
        if member is None:
            raise InvalidRequest(f"no member named {name!r}; see dynamo status")
        if name == self.name:
            raise InvalidRequest("a node cannot remove itself; use dynamo leave")
        self.membership.merge([removal_of(member)])
        self.liveness.forget(name)
        self.log.info("removed %s from the cluster", name)
        self.answer(client, "remove_ok", {})

    def _handle_ping(self, msg: Message, client: Client) -> None:
        self.answer(client, "pong", {"node": self.name})

    def _handle_extension(self, msg: Message, client: Client) -> None:
        self.extensions.accept(msg, client)

    # ---------------------------------------------------------------- views

    def peer_state(self, name: str) -> str:
        """This node's local opinion of a peer: up, suspect or down."""
        return self.liveness.state(name, self._now)

    def members(self) -> list[PeerView]:
        """Every member as plugins see it, with this node's opinion of each."""
        return members_view(self.membership.members(), self.peer_state)

    def preference_list(self, bucket: str, key: str) -> list[str]:
        return list(self.membership.ring.walk(key_hash(bucket, key)))

    def local_key_count(self) -> int:
        return self.anti_entropy.keys_held()

    def _wall_of(self, monotonic: float | None) -> float | None:
        """A monotonic reading as wall time, for people and other processes to read."""
        if monotonic is None:
            return None
        return self.wall() - (self._now - monotonic)

    def _handle_ring(self, msg: Message, client: Client) -> None:
        self.answer(client, "ring_ok", self.ring_document())

    def ring_document(self) -> dict[str, Any]:
        """The ring as a routing client needs it (see :mod:`routing`), with this node's
        opinion of each member."""
        routes, _ = self._ring_view()
        routes = [r if r.name == self.name else
                  dataclasses.replace(r, state=self.peer_state(r.name)) for r in routes]
        config = self.config
        return ring_document(self.membership.ring, routes, config.n,
                             {name: b.n for name, b in config.buckets.items()})

    def _ring_view(self) -> tuple[list[Route], bytes]:
        """Where the ring's members listen, and the digest that names this view: built
        once per membership change, compared on every routed request."""
        ring, generation = self.membership.ring, self.membership.generation
        cached = self._ring_doc
        if cached is None or cached[0] is not ring or cached[1] != generation:
            routes = [Route(m.name, m.address, "up") for m in self.membership.live_members()]
            cached = self._ring_doc = (ring, generation, routes, ring_digest(ring, routes))
        return cached[2], cached[3]

    def _handle_status(self, msg: Message, client: Client) -> None:
        self.answer(client, "status_ok", {"status": self.status_document()})

    def status_document(self) -> dict[str, Any]:
        """What ``dynamo status`` shows: this node's view of the cluster and its counters."""
        ring = self.membership.ring
        ownership = ring.ownership()
        members = [{"name": m.name, "address": m.address, "state": self.peer_state(m.name),
                    "since": self._wall_of(self.liveness.since(m.name)), "status": m.status,
                    "meaning": STATUS_MEANINGS[m.status],
                    "capacity": m.capacity, "tokens": len(ring.tokens_of(m.name)),
                    "ownership": round(ownership.get(m.name, 0.0), 4), "version": m.version,
                    "last_heard": self._wall_of(self.liveness.last_heard(m.name))}
                   for m in self.membership.members()]
        loop_failures = dict(self.loop_failures)
        if self.handoff.failures:
            loop_failures["handoff"] = loop_failures.get("handoff", 0) + self.handoff.failures
        reasons = self.not_ready()
        return {
            "node": self.name, "address": self.address, "actor": self.actor,
            # ready: a request sent here now is served as a settled cluster would (see
            # readiness); not_ready: why not, in a few words each
            "ready": not reasons, "not_ready": reasons,
            "members": members, "keys": self.anti_entropy.keys_held(),
            "hints_pending": self.hints.pending(), "hints_bytes": self.hints.bytes_used,
            "hints_by_target": self.hints.targets(), "hints_delivered": self.handoff.delivered,
            "background": self.budget.stats(),
            "anti_entropy": self.anti_entropy.stats(),
            "engine": self.config.storage["engine"],
            "pending_requests": self.coordinator.pending(),
            "stale_replies": self.coordinator.stale_replies,
            "read_repairs": self.coordinator.read_repairs,
            # puts and deletes this node was no home of and handed to one (a client that
            # routes by the ring sends them to a home straight away)
            "forwarded_puts": self.coordinator.forwarded_puts,
            # a routing client's view of the ring did not match this node's
            "stale_ring_views": self.stale_ring_views,
            # what names this node's ring (and its members' addresses): nodes that agree
            # on the ring show the same digest
            "ring_digest": self._ring_view()[1].hex(),
            "hinted_writes": self.coordinator.hinted_writes,
            "failure_detector": self.config.failure_detector["plugin"],
            "malformed_frames": self.malformed_frames,
            "forbidden_requests": self.forbidden_requests,
            "loop_failures": loop_failures,
            "dot_conflicts": self.store.dot_conflicts,
            "expired_requests": self.expired_requests,
            "replication": self.config.n,
            "partitioning": self.config.partitioning["strategy"],
            "partitions": ring.partitions,
            "extensions": sorted(self.extensions.installed),
            "plugin_errors": self.extensions.errors,
            "overload": self.overload.stats(self._now),
        }

    def not_ready(self) -> list[str]:
        """Why this node is not ready yet (empty: it is): see :mod:`readiness`."""
        return not_ready(Facts(
            me=self.membership.me, members=self.membership.members(),
            has_seeds=bool(self.membership.seeds), digest=self._ring_view()[1],
            peer_digests=self._peer_digests, neighbours=self.anti_entropy.peers(),
            filling=len(self.anti_entropy.filling),
            is_up=lambda peer: self.peer_state(peer) == "up", connected=self._connected))

    def _handle_inspect(self, msg: Message, client: Client) -> None:
        bucket, key = msg.body["bucket"], msg.body["key"]
        versions = [_version_view(v) for v in self.store.read(bucket, key)]
        hints = [{"for": target, "versions": [_version_view(v) for v in hinted]}
                 for target, hinted in sorted(self.hints.for_key(bucket, key).items())]
        self.answer(client, "inspect_ok", {"inspect": {
            "node": self.name, "bucket": bucket, "key": key, "versions": versions,
            "hints": hints}})

    def _handle_preflist(self, msg: Message, client: Client) -> None:
        bucket, key = msg.body["bucket"], msg.body["key"]
        n = self.config.bucket(bucket).n
        nodes = [{"name": name, "address": self.membership.address_of(name),
                  "role": "home" if i < n else "fallback", "state": self.peer_state(name)}
                 for i, name in enumerate(self.preference_list(bucket, key))]
        self.answer(client, "preflist_ok", {"preflist": {
            "node": self.name, "bucket": bucket, "key": key, "n": n, "nodes": nodes}})


def request_lifetime(request_timeout: float) -> float:
    """Seconds a request between nodes stays valid: after its sender, and any forwarder,
    gave up on it. A request that waited longer in a queue is dropped unanswered."""
    return request_timeout * 2 + 1.0


def _members_from(records: Any) -> list[Member]:
    """Member records saved in ``node.cbor``; an unreadable one is skipped (gossip brings
    the members back anyway: the saved view only keeps removals from being forgotten)."""
    members = []
    for record in records if isinstance(records, list) else []:
        try:
            members.append(Member.from_wire(record))
        except (ValueError, TypeError, AttributeError):
            continue
    return members


def _configured(what: str, build: Callable[[], T]) -> T:
    """Build a plugin from its config; a ValueError (a bad option) is a ConfigError naming it."""
    try:
        return build()
    except (ValueError, TypeError) as exc:
        raise errors.ConfigError(f"{what}: {exc}") from None


def _version_view(v: Version) -> dict[str, Any]:
    """A version as ``dynamo inspect`` shows it: its full clock, its own dot, its fields."""
    return {"value": v.value, "clock": v.history().to_wire(), "context": v.clock.to_wire(),
            "dot": list(v.dot), "timestamp": v.timestamp, "tombstone": v.tombstone}
