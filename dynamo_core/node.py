"""The node runtime: drives the protocol core with ZeroMQ and asyncio.

Everything that decides lives elsewhere (``coordinator``, ``membership``, ``store``,
``versions``); this module decodes frames, routes them, reads the clock, runs the timers,
and carries out the effects the protocol core returns. A malformed or unexpected frame gets
an error reply and a log line; nothing a peer sends can stop the node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cbor2

from . import errors
from .admission import BackgroundBudget
from .antientropy import AntiEntropy
from .config import Config
from .coordinator import Coordinator, Effect, Fail, KeyPlan, PeerFailed, Reply, Send
from .errors import DynamoError, InvalidRequest, WireError
from .extensions import OBSERVED_OPS, Extensions
from .handoff import HandoffPlanner, HintStore
from .hookspecs import PartitionStrategy, StorageEngine
from .identity import Epoch, choose_actor, new_boot
from .liveness import Liveness
from .membership import Member, Membership
from .plugins import Registry, make_plugin_manager
from .ring import key_hash
from .store import IDENTITY_KEY, LocalStore, key_bytes_limit
from .transport import SendFailed, ZmqTransport
from .versions import Version
from .wire import MAX_BATCH_ITEMS, Codec, Message

log = logging.getLogger(__name__)

T = TypeVar("T")

TICK_SECONDS = 0.02
#: Time given to a new peer connection before the first message is sent on it.
CONNECT_SECONDS = 0.05
#: How often the storage records that this node is alive (see Node._mark_storage).
ALIVE_SECONDS = 10.0
#: Bounds of the wait before a failed background loop is started again.
LOOP_BACKOFF_MIN = 0.1
LOOP_BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class Client:
    """Where to send the answer to a request that came in on the ROUTER."""

    identity: bytes
    req_id: int | None
    #: when the request arrived: foreground latency feeds background admission control
    arrived: float = 0.0
    #: for client operations (get, put, delete), what observers are told when it completes
    op: str | None = None
    bucket: str = ""
    key: str = ""
    forwarded: bool = False


def _client_of(identity: bytes, msg: Message, now: float) -> Client:
    """The reply address of a request, and what it asks, if it is a client operation."""
    if msg.type not in OBSERVED_OPS:
        return Client(identity, msg.id, now)
    b = msg.body
    return Client(identity, msg.id, now, msg.type, b["bucket"], b["key"],
                  bool(b.get("forwarded")))


class Node:
    """One Dynamo node: storage, membership, coordination, all behind one ROUTER socket."""

    def __init__(self, name: str, listen: str, *, config: Config, data_dir: str | None = None,
                 seeds: tuple[str, ...] = (), rng: random.Random | None = None,
                 keep_stale_data: bool = False) -> None:
        self.name = name
        #: keep replicas held from before an absence past the tombstone grace (operator's call)
        self.keep_stale_data = keep_stale_data
        #: no data of its own yet while the cluster may hold some for its ranges: a new node
        #: with seeds, or one that dropped stale data (anti-entropy marks its ranges filling)
        self.starts_empty = bool(seeds)
        #: when the storage last recorded this node alive (None: never), see _mark_storage
        self._last_alive: float | None = None
        self.listen = listen
        self.config = config
        self.data_dir = data_dir
        self.rng = rng or random.Random()
        self.registry = Registry(make_plugin_manager(config.plugin_modules))
        self.codec = Codec(max_bytes=config.max_message_bytes)
        self.strategy = self._pick_strategy()
        self._check_resolvers()
        detector_factory = self.registry.failure_detector(config.failure_detector["plugin"])
        detector = _configured(f"failure detector {config.failure_detector['plugin']!r}",
                               lambda: detector_factory(config.failure_detector))
        engine_factory = self.registry.storage_engine(config.storage["engine"])
        if data_dir is not None:
            os.makedirs(data_dir, exist_ok=True)
        engine = f"storage engine {config.storage['engine']!r}"
        replicas = _configured(engine, lambda: engine_factory(data_dir, config.storage))
        try:
            self.epoch, me = self._identity(replicas)
        except BaseException:
            replicas.close()
            raise
        self.actor = self.epoch.actor
        #: drawn at each start; ties node.cbor to the storage of this run (see identity)
        self.boot = new_boot(self.rng)
        self.store = LocalStore(replicas, config.max_siblings, self.actor,
                                key_bytes_limit(config.max_message_bytes))
        # Hints live in their own store, never mixed with this node's own replicas.
        hints_dir = os.path.join(data_dir, "hints") if data_dir is not None else None
        try:
            hint_engine = _configured(engine, lambda: engine_factory(hints_dir, config.storage))
        except BaseException:
            self.store.close()
            raise
        self.hints = HintStore(hint_engine, config.handoff_max_hints, config.handoff_max_bytes,
                               config.handoff_max_age)
        self.handoff = HandoffPlanner()
        self.budget = BackgroundBudget(config.bg_rate, config.bg_burst,
                                       config.bg_max_concurrent, config.bg_latency_target)
        #: request id -> future of a background request (handoff, anti-entropy, transfers)
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = iter(range(1 << 62, 1 << 63))
        self.hints_delivered = 0
        self.membership = Membership(me, self.strategy, config.partitioning, seeds)
        self.coordinator = Coordinator(name, self.store,
                                       request_timeout=config.request_timeout,
                                       max_clock_entries=config.max_clock_entries,
                                       max_pending=config.max_pending_requests)
        self.transport = ZmqTransport(name, listen, config.max_message_bytes,
                                      self._on_request, self._on_peer_reply)
        self.liveness = Liveness(name, detector, config.heartbeat_interval)
        self._gossip_ids = iter(range(1, 1 << 62))
        self._tasks: list[asyncio.Task] = []
        self._handlers: dict[str, Callable[[Message, Client], None]] = {
            "get": self._handle_get, "put": self._handle_put, "delete": self._handle_put,
            "replica_get": self._handle_replica_get, "replica_put": self._handle_replica_put,
            "replica_put_many": self._handle_replica_put_many,
            "gossip": self._handle_gossip, "status": self._handle_status,
            "inspect": self._handle_inspect, "preflist": self._handle_preflist,
            "ping": self._handle_ping, "ae_roots": self._handle_anti_entropy,
            "ae_hashes": self._handle_anti_entropy, "ae_keys": self._handle_anti_entropy,
            "reap": self._handle_reap, "join": self._handle_join, "leave": self._handle_leave,
            "remove": self._handle_remove,
        }
        self.malformed_frames = 0
        self.expired_requests = 0
        #: background loop name -> how many times it failed and was started again
        self.loop_failures: dict[str, int] = {}
        self.anti_entropy = AntiEntropy(self)
        #: set when this node has left the cluster and should exit
        self.left = asyncio.Event()
        try:
            self.extensions = Extensions(self, self.registry)
        except BaseException:
            self._release()  # nothing started yet: the storage files and sockets only
            raise
        self._handlers.update(self.extensions.handlers())
        self._membership_seen = self.membership.generation

    # ================================================================== lifecycle

    def _pick_strategy(self) -> PartitionStrategy:
        """The configured partition strategy, its options checked now rather than mid-gossip."""
        options = self.config.partitioning
        strategy = self.registry.partition_strategy(options["strategy"])
        try:
            strategy.partition_count(options)
            strategy.initial_tokens(self.name, self.config.capacity, options,
                                    random.Random(0))
        except ValueError as exc:
            raise errors.ConfigError(f"{options['strategy']}: {exc}") from None
        return strategy

    def _release(self) -> None:
        self.store.close()
        self.hints.close()
        self.transport.discard()

    def _check_resolvers(self) -> None:
        """Fail at start-up, not on the first read, when a bucket names a missing resolver."""
        for bucket in self.config.buckets.values():
            if bucket.resolver:
                self.registry.resolver(bucket.resolver)

    def _identity(self, engine: StorageEngine) -> tuple[Epoch, Member]:
        """This node's actor and member record, kept across restarts in ``node.cbor``.

        The member record (tokens, status) comes back from ``node.cbor``; the actor does
        only while the storage provably holds every dot it issued (:mod:`identity`).
        """
        path = Path(self.data_dir, "node.cbor") if self.data_dir else None
        saved = cbor2.loads(path.read_bytes()) if path is not None and path.exists() else None
        stored_bytes = engine.get(IDENTITY_KEY)
        stored = cbor2.loads(stored_bytes) if stored_bytes is not None else None
        if stored is not None and isinstance(stored.get("alive"), (int, float)):
            self._last_alive = float(stored["alive"])
        epoch = choose_actor(self.name, saved, stored,
                             durable=bool(getattr(engine, "durable", False)),
                             power_safe=bool(getattr(engine, "power_safe", False)),
                             rng=self.rng)
        if epoch.new and saved is not None:
            log.warning("%s starts a new actor epoch %s: %s", self.name, epoch.actor,
                        epoch.reason)
        self.starts_empty = self.starts_empty and saved is None
        if saved is None:
            tokens = self.strategy.initial_tokens(self.name, self.config.capacity,
                                                  self.config.partitioning, self.rng)
            # A new node with seeds joins a cluster that may hold data for its ranges.
            status = "joining" if self.starts_empty else "up"
            return epoch, Member(self.name, self.listen, self.config.capacity,
                                 tuple(sorted(tokens)), status)
        if saved.get("name") != self.name:
            raise errors.ConfigError(
                f"data directory {self.data_dir} belongs to node {saved.get('name')!r}, "
                f"not {self.name!r}")
        member = Member.from_wire(saved["member"])
        # A node that left (or was removed) stays out until it is told to join again.
        status = "removed" if member.status in ("removed", "leaving") else member.status
        if status == "removed":
            log.warning("%s left the cluster earlier; it stays out of the ring until "
                        "`dynamo join` brings it back", self.name)
        return epoch, Member(self.name, self.listen, self.config.capacity, member.tokens,
                             status, member.version + 1)

    def _save_identity(self) -> None:
        if self.data_dir is None:
            return
        path = Path(self.data_dir, "node.cbor")
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(cbor2.dumps({"name": self.name, "actor": self.actor, "boot": self.boot,
                                     "member": self.membership.me.to_wire()}))
        os.replace(tmp, path)

    def _mark_storage(self, clean: bool) -> None:
        """Record in storage which actor and boot it belongs to, whether we stopped, and
        when this node was last alive (this node's own clock).

        Written before ``node.cbor`` at start (a crash between the two only starts one
        more epoch next time), every ALIVE_SECONDS while running, and, with ``clean``, as
        the very last write at stop.
        """
        self.store.engine.put(IDENTITY_KEY, cbor2.dumps(
            {"actor": self.actor, "boot": self.boot, "clean": clean, "alive": time.time()}))

    def _drop_stale_data(self, why: str) -> None:
        """Forget replicas and hints that may predate deletes the cluster has reaped since.

        Pushing them back by anti-entropy or range transfer would resurrect deleted keys;
        dropped, the node's ranges are refilled from the current replicas instead.
        """
        keys, hints = self.store.forget_all(), self.hints.forget_all()
        log.warning("%s: dropped %d keys and %d hints held from before: %s (their current "
                    "versions come back from the other replicas; `--keep-data` keeps them)",
                    self.name, keys, hints, why)

    def now(self) -> float:
        return time.time()

    async def call(self, peer: str, msg_type: str, body: dict[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        """A background request to a peer, awaited: the reply body, or a DynamoError."""
        address = self.membership.address_of(peer)
        if address is None:
            raise errors.Unavailable(f"no address known for node {peer}")
        req_id = next(self._call_ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[req_id] = future
        try:
            wait = timeout or self.config.request_timeout
            self.transport.send(address, self.codec.encode(msg_type, body, req_id, self.name,
                                                           time.time() + wait))
            async with asyncio.timeout(wait):  # wait_for can swallow a cancel on 3.11
                msg = await future
        except SendFailed as exc:
            raise errors.Unavailable(str(exc)) from None
        except TimeoutError:
            self.liveness.request_failed(peer, time.time())
            raise errors.Timeout(f"{msg_type} to {peer} got no answer") from None
        finally:
            self._calls.pop(req_id, None)
        if msg.type == "error":
            raise errors.from_wire(msg.body)
        return msg.body

    async def start(self) -> None:
        away = None if self._last_alive is None else time.time() - self._last_alive
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
        await self.transport.start()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "tick": self._tick_loop, "gossip": self._gossip_loop,
            "heartbeat": self._heartbeat_loop, "handoff": self._handoff_loop,
            "anti-entropy": self.anti_entropy.run}
        self._tasks = [*(asyncio.create_task(self._supervise(name, loop), name=name)
                         for name, loop in loops.items()),
                       *self.extensions.start_tasks()]
        log.info("%s listening on %s (actor %s, %s, engine %s)", self.name, self.listen,
                 self.actor, self.config.partitioning["strategy"], self.config.storage["engine"])
        self.extensions.notify("dynamo_node_started")

    async def stop(self) -> None:
        self.extensions.notify("dynamo_node_stopping")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.extensions.stop()
        await self.transport.close()
        try:
            self._mark_storage(clean=True)
        except Exception:  # the next start then begins a new epoch: safe
            log.exception("%s: could not record a clean stop in storage", self.name)
        self.store.close()
        self.hints.close()
        log.info("%s stopped", self.name)

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop forever: whatever it raises, it is started again.

        One storage error (a full disk) in a read repair sent from a timer must not end
        the timers for good. The first failure of a loop is logged with its traceback,
        later ones in a line each; all are counted (``loop_failures`` in status), and the
        restarts back off, from a tenth of a second up to ten, resetting once the loop
        has run for a minute without failing.
        """
        delay = 0.0
        while True:
            started = time.monotonic()
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the point is to survive anything
                failures = self.loop_failures.get(name, 0) + 1
                self.loop_failures[name] = failures
                delay = LOOP_BACKOFF_MIN if time.monotonic() - started > 60 else min(
                    LOOP_BACKOFF_MAX, max(LOOP_BACKOFF_MIN, delay * 2))
                if failures == 1:
                    log.exception("%s: the %s loop failed; restarting it in %.1fs",
                                  self.name, name, delay)
                else:
                    log.error("%s: the %s loop failed again (%d times): %s; restarting in "
                              "%.1fs", self.name, name, failures, exc, delay)
            await asyncio.sleep(delay)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.time()
            self._run(self.coordinator.on_tick(now))
            if self.membership.generation != self._membership_seen:
                self._membership_seen = self.membership.generation
                self.extensions.notify("dynamo_membership_changed",
                                       members=self.extensions.api.members())

    async def _gossip_loop(self) -> None:
        # Peer sockets only queue on live connections: open them first, give them a moment.
        for address in [*self.membership.seeds,
                        *(m.address for m in self.membership.members() if m.name != self.name)]:
            self.transport.connect(address)
        await asyncio.sleep(CONNECT_SECONDS)
        interval = self.config.gossip_interval
        marked = time.monotonic()
        while True:
            self._gossip_once()
            if time.monotonic() - marked >= ALIVE_SECONDS:
                marked = time.monotonic()
                try:
                    self._mark_storage(clean=False)
                except Exception as exc:  # a failing disk must not stop gossip
                    log.warning("%s: could not record being alive in storage: %s",
                                self.name, exc)
            # Jitter keeps nodes from gossiping in lock step.
            await asyncio.sleep(interval * self.rng.uniform(0.8, 1.2))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval / 2)
            peers = [m.name for m in self.membership.members() if m.status != "removed"]
            for peer in self.liveness.refresh(peers, time.time()):
                self.send_one_way(peer, "ping", {})

    def send_one_way(self, peer: str, msg_type: str, body: dict[str, Any]) -> None:
        address = self.membership.address_of(peer)
        if address is None:
            return
        try:
            self.transport.send(address, self.codec.encode(msg_type, body, None, self.name))
        except SendFailed as exc:
            self.liveness.request_failed(peer, time.time())
            log.debug("%s: %s to %s not sent: %s", self.name, msg_type, peer, exc)

    def _gossip_once(self, target: str | None = None) -> None:
        target = target or self.membership.gossip_target(self.rng)
        if target is None:
            return
        frame = self.codec.encode("gossip", {"members": self.membership.to_wire()},
                                  next(self._gossip_ids), self.name)
        try:
            self.transport.send(target, frame)
        except SendFailed as exc:
            log.debug("%s: gossip to %s not sent: %s", self.name, target, exc)

    # ================================================================== handoff

    async def _handoff_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.handoff_interval)
            now = time.time()
            expired = self.hints.expire(now)
            if expired:
                log.warning("%s: %d hints expired undelivered after %gs; anti-entropy "
                            "repairs their keys", self.name, expired,
                            self.config.handoff_max_age)
            is_up = lambda t: (not self.liveness.is_down(t, now)
                               and self.membership.address_of(t) is not None)
            for target in self.handoff.due(self.hints.targets(), is_up, now):
                self.handoff.started(target)
                self._tasks.append(asyncio.create_task(self._deliver_hints(target)))
            self._tasks = [t for t in self._tasks if not t.done()]

    async def _deliver_hints(self, target: str) -> None:
        """Hand one batch of hints to a home that is back; delete each once acknowledged.

        Whatever happens, the target's delivery slot is given back (``finally``): a batch
        that raised must not stop hinted handoff to that node for good.
        """
        ok = False
        try:
            # Batch after batch while the target takes them: the backlog drains at the
            # speed of round trips, not one batch per handoff interval.
            while batch := self.hints.batch(target, self.config.handoff_batch):
                results = await self.put_many(
                    target, [(h.bucket, h.key, h.versions) for h in batch])
                refused = [(h, r) for h, r in zip(batch, results) if isinstance(r, str)]
                for hint, result in zip(batch, results):
                    if not isinstance(result, str) and self.hints.delivered(hint):
                        self.hints_delivered += 1
                if refused:
                    hint, why = refused[0]
                    log.warning("%s: %s refused %d hinted keys (first %s/%s: %s); kept "
                                "until they expire", self.name, target, len(refused),
                                hint.bucket, hint.key, why)
                    break
            else:
                ok = True
        except DynamoError as exc:
            log.debug("%s: handoff to %s paused: %s", self.name, target, exc)
        except Exception:  # logged, retried after the target's backoff
            self.loop_failures["handoff"] = self.loop_failures.get("handoff", 0) + 1
            log.exception("%s: handoff to %s failed", self.name, target)
        finally:
            self.handoff.finished(target, ok, time.time())

    # ================================================================== incoming

    def _on_request(self, identity: bytes, frames: list[bytes]) -> None:
        if len(frames) != 1:
            self._reject(identity, self.codec.request_id_of(frames[0]) if frames else None,
                         WireError(
                f"expected one frame per message, got {len(frames)}"))
            return
        try:
            msg = self.codec.decode(frames[0])
        except WireError as exc:
            req_id, sender = self.codec.origin_of(frames[0])
            if req_id is None and sender is not None:  # a peer's one-way message
                self.malformed_frames += 1
                log.warning("%s: refused a one-way message from %s: %s", self.name, sender, exc)
                return
            self._reject(identity, req_id, exc)
            return
        now = time.time()
        client = _client_of(identity, msg, now)
        if msg.sender:
            self.liveness.heard_from(msg.sender, now)
        if msg.expires is not None and now > msg.expires:
            self.expired_requests += 1
            log.info("%s: dropped a %s from %s that expired %.1fs ago (it waited in a queue)",
                     self.name, msg.type, msg.sender, now - msg.expires)
            return
        handler = self._handlers.get(msg.type)
        if handler is None:
            self.reply_error(client, InvalidRequest(
                f"{msg.type} is a reply type; a node does not accept it as a request"))
            return
        try:
            handler(msg, client)
        except DynamoError as exc:
            self.reply_error(client, exc)
        except Exception as exc:
            log.exception("%s: %s request failed", self.name, msg.type)
            self.reply_error(client, DynamoError(f"internal error handling {msg.type}: {exc}"))

    def _reject(self, identity: bytes, req_id: int | None, exc: WireError) -> None:
        self.malformed_frames += 1
        log.warning("%s: rejected a malformed frame: %s", self.name, exc)
        self.reply_error(Client(identity, req_id), exc)

    def _on_peer_reply(self, address: str, frames: list[bytes]) -> None:
        if len(frames) != 1:
            log.warning("%s: dropped a %d-frame reply from %s", self.name, len(frames), address)
            return
        try:
            msg = self.codec.decode(frames[0])
        except WireError as exc:
            log.warning("%s: dropped a malformed reply from %s: %s", self.name, address, exc)
            return
        if msg.sender:
            self.liveness.heard_from(msg.sender, time.time())
        if msg.type == "gossip_ok":
            self._merge_gossip(msg.body["members"])
        elif msg.type == "pong":
            pass  # a heartbeat: hearing it was the point
        elif msg.id in self._calls:
            future = self._calls.pop(msg.id)
            if not future.done():
                future.set_result(msg)
        elif msg.sender is not None:
            self._run(self.coordinator.on_reply(msg.id, msg.sender, msg.type, msg.body,
                                                time.time()))

    # ================================================================== effects

    def _run(self, effects: list[Effect]) -> None:
        """Carry out effects; local sends are answered at once and may yield more effects."""
        queue = deque(effects)
        while queue:
            effect = queue.popleft()
            if isinstance(effect, Send):
                queue.extend(self._send(effect))
            elif isinstance(effect, Reply):
                self.reply(effect.client, effect.msg_type, effect.body)
                self.budget.observe(time.time() - effect.client.arrived, time.time())
            elif isinstance(effect, Fail):
                if isinstance(effect.error, errors.ResolverFailed):
                    log.warning("%s: %s", self.name, effect.error)
                self.reply_error(effect.client, effect.error)
                self.budget.observe(time.time() - effect.client.arrived, time.time())
            elif isinstance(effect, PeerFailed):
                self.liveness.request_failed(effect.peer, time.time())

    def _send(self, send: Send) -> list[Effect]:
        now = time.time()
        if send.to == self.name:
            try:
                msg_type, body = self._serve_replica(send.msg_type, send.body)
            except DynamoError as exc:
                msg_type, body = "error", errors.to_wire(exc)
            except Exception as exc:  # the operation fails, the node serves on
                log.exception("%s: local %s failed", self.name, send.msg_type)
                msg_type, body = "error", errors.to_wire(errors.StorageFailed(
                    f"{self.name} could not serve its own {send.msg_type}: {exc}"))
            if send.req_id is None:
                return []
            return self.coordinator.on_reply(send.req_id, self.name, msg_type, body, now)
        address = self.membership.address_of(send.to)
        try:
            if address is None:
                raise SendFailed(f"no address known for node {send.to}")
            self.transport.send(address, self.codec.encode(
                send.msg_type, send.body, send.req_id, self.name, self._expiry(now)))
        except (SendFailed, WireError) as exc:
            if send.req_id is None:
                return []
            return self.coordinator.on_unreachable(send.req_id, send.to, str(exc), now)
        return []

    def _expiry(self, now: float) -> float:
        return now + request_lifetime(self.config.request_timeout)

    def reply(self, client: Client, msg_type: str, body: dict[str, Any]) -> None:
        try:
            frame = self.codec.encode(msg_type, body, client.req_id, self.name)
        except WireError as exc:
            msg_type, body = "error", errors.to_wire(exc)
            frame = self.codec.encode(msg_type, body, client.req_id, self.name)
        self.transport.reply(client.identity, frame)
        if client.op is not None:
            self.extensions.request_completed(
                client, "ok" if msg_type != "error" else body["code"], time.time())

    def reply_error(self, client: Client, exc: DynamoError) -> None:
        body = errors.to_wire(exc)
        body["message"] = body["message"][:4000]
        self.reply(client, "error", body)

    # ================================================================== handlers

    def plan(self, bucket: str, key: str, quorum_field: str, override: int | None) -> KeyPlan:
        """The key's home nodes and the quorum this request needs."""
        settings = self.config.bucket(bucket)
        quorum = override if override is not None else getattr(settings, quorum_field)
        if quorum > settings.n:
            raise InvalidRequest(f"{quorum_field}={quorum} exceeds n={settings.n} of "
                                 f"bucket {bucket!r}")
        walk = list(self.membership.ring.walk(key_hash(bucket, key)))
        resolver = self.registry.resolver(settings.resolver) if settings.resolver else None
        now = time.time()
        return KeyPlan.sloppy(bucket, key, walk, settings.n, quorum,
                              lambda peer: self.liveness.is_down(peer, now), resolver,
                              settings.strict)

    def ranges_filled(self) -> None:
        """After an anti-entropy exchange: a joining node whose every range was compared
        with another replica holds its ranges, and is up."""
        if self.membership.me.status == "joining" and not self.anti_entropy.filling:
            self.membership.update_me(status="up")
            self._save_identity()
            log.info("%s: its ranges are filled; it is up", self.name)

    def _handle_get(self, msg: Message, client: Client) -> None:
        b = msg.body
        plan = self.plan(b["bucket"], b["key"], "r", b.get("r"))
        if b.get("resolve") is False:
            plan = dataclasses.replace(plan, resolver=None)
        self._run(self.coordinator.start_get(client, plan, time.time()))

    def _handle_put(self, msg: Message, client: Client) -> None:
        b = msg.body
        plan = self.plan(b["bucket"], b["key"], "w", b.get("w"))
        self._run(self.coordinator.start_put(
            client, plan, b.get("value"), b.get("context"), msg.type == "delete",
            time.time(), forwarded=bool(b.get("forwarded"))))

    def _serve_replica(self, msg_type: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """This node's part as a replica: read or fold in versions of one key."""
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
            reply["versions"] = [v.to_wire() for v in versions]
            return "replica_get_ok", reply
        try:
            incoming = [Version.from_wire(v) for v in body["versions"]]
        except ValueError as exc:
            raise InvalidRequest(f"replica_put: {exc}") from None
        home = body.get("hint")
        if home is not None and home != self.name:
            try:
                self.hints.add(home, bucket, key, incoming, time.time())
            except errors.Overloaded as exc:
                log.warning("%s: hint for %s refused: %s", self.name, home, exc)
                raise
            return "replica_put_ok", {"changed": True}
        return "replica_put_ok", {"changed": self.store.apply(bucket, key, incoming)}

    def _handle_replica_get(self, msg: Message, client: Client) -> None:
        self.reply(client, *self._serve_replica(msg.type, msg.body))

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
        self.reply(client, "replica_put_many_ok", {"results": results})

    async def put_many(self, peer: str, items: Sequence[tuple[str, str, Sequence[Version]]]
                       ) -> list[bool | str]:
        """Store many keys' versions in ``peer``'s own replicas, in batches that fit a frame.

        One background request per batch, not per key: what bounds catching up after an
        outage is the backlog's size in frames, not the request-rate cap that protects
        foreground latency. Returns each item's result (changed, or why it was refused).
        """
        results: list[bool | str] = []
        for batch in self._batches(items):
            while not self.budget.try_start(time.time()):
                await asyncio.sleep(0.01)
            try:
                reply = await self.call(peer, "replica_put_many", {"items": batch})
            finally:
                self.budget.done()
            if len(reply["results"]) != len(batch):
                raise DynamoError(f"{peer} answered {len(reply['results'])} results for "
                                  f"{len(batch)} keys")
            results.extend(reply["results"])
        return results

    def _batches(self, items: Sequence[tuple[str, str, Sequence[Version]]]
                 ) -> Iterator[list[dict[str, Any]]]:
        limit = key_bytes_limit(self.config.max_message_bytes) // 2
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

    def _handle_replica_put(self, msg: Message, client: Client) -> None:
        reply = self._serve_replica(msg.type, msg.body)
        if client.req_id is not None:
            self.reply(client, *reply)

    def _handle_gossip(self, msg: Message, client: Client) -> None:
        self._merge_gossip(msg.body["members"])
        self.reply(client, "gossip_ok", {"members": self.membership.to_wire()})

    def _merge_gossip(self, records: list[dict[str, Any]]) -> None:
        members = []
        for record in records:
            try:
                members.append(Member.from_wire(record))
            except ValueError as exc:
                log.warning("%s: ignored a gossiped member record: %s", self.name, exc)
        me_before = self.membership.me
        if self.membership.merge(members):
            for member in self.membership.members():
                if member.name != self.name and member.status != "removed":
                    self.transport.connect(member.address)
            if self.membership.me != me_before:
                log.info("%s: took back tokens the cluster remembers (version %d)",
                         self.name, self.membership.me.version)
                self._save_identity()

    def _handle_anti_entropy(self, msg: Message, client: Client) -> None:
        try:
            self.reply(client, *self.anti_entropy.serve(msg.type, msg.body))
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
        self.reply(client, "reap_ok", {"reaped": reaped})

    def _handle_join(self, msg: Message, client: Client) -> None:
        """Join the cluster a seed belongs to: gossip with it now, and from then on."""
        seed = msg.body["seed"]
        self.membership.seeds = tuple(dict.fromkeys([*self.membership.seeds, seed]))
        if self.membership.me.status == "removed" and not msg.body.get("keep_data"):
            self._drop_stale_data("it was removed from the cluster and is joining again")
        if self.membership.me.status not in ("up", "joining"):
            self.membership.update_me(status="joining")
            self._save_identity()
        self.transport.connect(seed)
        asyncio.get_running_loop().call_later(CONNECT_SECONDS, self._gossip_once, seed)
        log.info("%s: joining the cluster through %s", self.name, seed)
        self.reply(client, "join_ok", {})

    def _handle_leave(self, msg: Message, client: Client) -> None:
        """Leave gracefully: step off the ring, hand every range over, then exit."""
        if self.membership.me.status in ("up", "joining"):
            self.membership.update_me(status="leaving")
            self._save_identity()
            log.info("%s: leaving; handing %d keys over before exiting", self.name,
                     len(self.store))
            self._tasks.append(asyncio.create_task(self._finish_leaving(), name="leave"))
        self.reply(client, "leave_ok", {})

    async def _finish_leaving(self) -> None:
        while True:
            await asyncio.sleep(self.config.ae_interval)
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
            await asyncio.sleep(self.config.gossip_interval / 2)
        log.info("%s: left the cluster", self.name)
        self.left.set()

    def _handle_remove(self, msg: Message, client: Client) -> None:
        """Remove a dead node: its tokens leave the ring; anti-entropy rebuilds its copies."""
        name = msg.body["name"]
        member = self.membership.get(name)
        if member is None:
            raise InvalidRequest(f"no member named {name!r}; see dynamo status")
        if name == self.name:
            raise InvalidRequest("a node cannot remove itself; use dynamo leave")
        self.membership.merge([dataclasses.replace(member, status="removed",
                                                   version=member.version + 1)])
        self.liveness.forget(name)
        log.info("%s: removed %s from the cluster", self.name, name)
        self.reply(client, "remove_ok", {})

    def _handle_ping(self, msg: Message, client: Client) -> None:
        self.reply(client, "pong", {"node": self.name})

    # ---------------------------------------------------------------- operator views

    def peer_state(self, name: str) -> str:
        """This node's local opinion of a peer: up, suspect or down."""
        return self.liveness.state(name, time.time())

    def _handle_status(self, msg: Message, client: Client) -> None:
        self.reply(client, "status_ok", {"status": self.status_document()})

    def status_document(self) -> dict[str, Any]:
        """What ``dynamo status`` shows: this node's view of the cluster and its counters."""
        ring = self.membership.ring
        ownership = ring.ownership()
        members = [{"name": m.name, "address": m.address, "state": self.peer_state(m.name),
                    "since": self.liveness.since(m.name), "status": m.status,
                    "capacity": m.capacity, "tokens": len(ring.tokens_of(m.name)),
                    "ownership": round(ownership.get(m.name, 0.0), 4), "version": m.version,
                    "last_heard": self.liveness.last_heard(m.name)}
                   for m in self.membership.members()]
        return {
            "node": self.name, "address": self.listen, "actor": self.actor,
            "members": members, "keys": self.anti_entropy.keys_held(),
            "hints_pending": self.hints.pending(), "hints_bytes": self.hints.bytes_used,
            "hints_by_target": self.hints.targets(), "hints_delivered": self.hints_delivered,
            "background": self.budget.stats(),
            "anti_entropy": self.anti_entropy.stats(),
            "engine": self.config.storage["engine"],
            "pending_requests": self.coordinator.pending(),
            "stale_replies": self.coordinator.stale_replies,
            "read_repairs": self.coordinator.read_repairs,
            "hinted_writes": self.coordinator.hinted_writes,
            "failure_detector": self.config.failure_detector["plugin"],
            "malformed_frames": self.malformed_frames,
            "loop_failures": dict(self.loop_failures),
            "dot_conflicts": self.store.dot_conflicts,
            "expired_requests": self.expired_requests,
            "replication": self.config.n,
            "partitioning": self.config.partitioning["strategy"],
            "partitions": ring.partitions,
            "extensions": sorted(self.extensions.installed),
            "plugin_errors": self.extensions.errors,
        }

    def _handle_inspect(self, msg: Message, client: Client) -> None:
        bucket, key = msg.body["bucket"], msg.body["key"]
        versions = [_version_view(v) for v in self.store.read(bucket, key)]
        hints = [{"for": target, "versions": [_version_view(v) for v in hinted]}
                 for target, hinted in sorted(self.hints.for_key(bucket, key).items())]
        self.reply(client, "inspect_ok", {"inspect": {
            "node": self.name, "bucket": bucket, "key": key, "versions": versions,
            "hints": hints}})

    def _handle_preflist(self, msg: Message, client: Client) -> None:
        bucket, key = msg.body["bucket"], msg.body["key"]
        n = self.config.bucket(bucket).n
        walk = list(self.membership.ring.walk(key_hash(bucket, key)))
        nodes = [{"name": name, "address": self.membership.address_of(name),
                  "role": "home" if i < n else "fallback", "state": self.peer_state(name)}
                 for i, name in enumerate(walk)]
        self.reply(client, "preflist_ok", {"preflist": {
            "node": self.name, "bucket": bucket, "key": key, "n": n, "nodes": nodes}})


def request_lifetime(request_timeout: float) -> float:
    """Seconds a request between nodes stays valid: after its sender, and any forwarder,
    gave up on it. A request that waited longer in a queue is dropped unanswered."""
    return request_timeout * 2 + 1.0


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


async def run_node(node: Node, stop: asyncio.Event) -> None:
    """Run ``node`` until ``stop`` is set, then shut it down cleanly."""
    await node.start()
    try:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.left.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
    finally:
        await node.stop()
