"""The coordinator: quorum state machines for get, put and delete, with no I/O.

A node's runtime hands the coordinator requests, replica replies and clock ticks; the
coordinator hands back effects: messages to send (:class:`Send`) and answers for clients
(:class:`Reply`, :class:`Fail`). Time comes in as ``now`` on every call. The coordinator's
own replica is addressed like any other (a ``Send`` to its own name, which the runtime
short-circuits), so "W counts the coordinator's own write" needs no special case.

Rules (the paper's section 4.5, plus what its text leaves implicit):

* a put is coordinated by a node among the key's top N; any other node forwards it to one
  (the first it believes up, then the next if that one fails);
* sloppy quorum: a home node believed down is replaced by the next healthy node past the top
  N, and so is a home that fails or stays silent in the middle of an operation; a stand-in
  is told, with a hint, which home it stands in for, and its answer counts toward R or W
  (unless the bucket is strict, where only home nodes count);
* a get is coordinated by whichever node received it;
* an operation ends as soon as its quorum is met, or as soon as it can no longer be met, or
  at its deadline; an unmet quorum says how many answered of how many were needed;
* replies carry request ids; a reply for an operation that already ended is dropped;
* after answering a get, the coordinator keeps listening until every replica answered or
  the deadline passed, then sends the newest versions to replicas that were stale (read
  repair);
* a bucket with a resolver gets its siblings merged on read into one value whose context
  supersedes them all; a home-node coordinator writes that merge back.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import errors
from .api import DELETED, Resolver, Sibling
from .errors import (
    Busy,
    DynamoError,
    InvalidRequest,
    QuorumNotMet,
    ResolverFailed,
    Timeout,
    Unavailable,
)
from .versions import (
    Clock,
    Dot,
    Version,
    context_of,
    decode_context,
    encode_context,
    live,
    reconcile,
)


class DotIssuer(Protocol):
    """Where the coordinator gets the dot of each version it makes: this node's store.

    ``issue_dot`` reads and advances the key's counter in one step and records it
    durably before returning, so two versions never share a dot, whatever interleaves
    (a put and a merging get of one key, two forwarded puts, a stand-in's write).
    ``write_new`` does the same and stores the version made with the dot in the same
    write: the coordinator's own replica, in one read and one write of its storage.
    """

    actor: str

    @property
    def in_batch(self) -> bool:
        """Writes go into a batch that is yet to be committed (see NodeCore.begin_turn)."""
        ...

    def issue_dot(self, bucket: str, key: str, context: Clock) -> Dot: ...

    def write_new(self, bucket: str, key: str, context: Clock,
                  make: Callable[[Dot], Version]) -> Version: ...

# ====================================================================== effects


@dataclass(frozen=True)
class Send:
    """Send ``msg_type``/``body`` to node ``to``; a reply will carry ``req_id``."""

    to: str
    msg_type: str
    body: dict[str, Any]
    #: None for one-way messages (repairs, write-backs): no reply is expected
    req_id: int | None


@dataclass(frozen=True)
class Reply:
    """Answer the client request ``client`` with ``msg_type``/``body``."""

    client: Any
    msg_type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Fail:
    """Answer the client request ``client`` with an error."""

    client: Any
    error: DynamoError


@dataclass(frozen=True)
class PeerFailed:
    """A peer did not answer in time or could not be reached: tell the failure detector."""

    peer: str


Effect = Send | Reply | Fail | PeerFailed


# ====================================================================== requests


@dataclass(frozen=True)
class KeyPlan:
    """Where a key lives as this node sees it, and the quorum the request asks for.

    ``homes`` are the key's top-N distinct nodes. ``targets`` are the nodes to ask first:
    the homes, with those believed down replaced by healthy fallbacks (``stand_in`` maps
    each such fallback to the home it replaces). ``spares`` are further healthy fallbacks
    for homes that fail mid-operation. The runtime computes all of it from the ring and its
    failure detector (:meth:`sloppy`), so the coordinator needs neither.
    """

    bucket: str
    key: str
    homes: tuple[str, ...]
    quorum: int
    resolver: Resolver | None = None
    targets: tuple[str, ...] = ()
    stand_in: Mapping[str, str] = field(default_factory=dict)
    spares: tuple[str, ...] = ()
    strict: bool = False
    #: homes believed up first, then the others: where a non-home forwards a put
    forward_order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.targets:
            object.__setattr__(self, "targets", self.homes)
        if not self.forward_order:
            object.__setattr__(self, "forward_order", self.homes)

    @classmethod
    def sloppy(cls, bucket: str, key: str, walk: Iterable[str], n: int, quorum: int,
               is_down: Callable[[str], bool], resolver: Resolver | None = None,
               strict: bool = False) -> KeyPlan:
        """Plan from the ring walk: the first N healthy nodes, homes first (paper 4.6).

        The walk is read only as far as needed: the N homes, then at most 2N healthy
        fallbacks (N to stand in for every home, N more as spares for nodes failing
        mid-operation), so a plan costs the same on a ring of five nodes or five hundred.
        """
        nodes = iter(walk)
        homes = tuple(itertools.islice(nodes, n))
        healthy_fallbacks = [] if strict else list(itertools.islice(
            (f for f in nodes if not is_down(f)), 2 * n))
        targets: list[str] = []
        stand_in: dict[str, str] = {}
        for home in homes:
            if not is_down(home) or strict:
                targets.append(home)
            elif healthy_fallbacks:
                fallback = healthy_fallbacks.pop(0)
                targets.append(fallback)
                stand_in[fallback] = home
        forward_order = tuple(sorted(homes, key=is_down))  # stable: up homes keep their rank
        return cls(bucket, key, homes, quorum, resolver, tuple(targets), stand_in,
                   tuple(healthy_fallbacks), strict, forward_order)


# ====================================================================== operations


@dataclass
class _Operation:
    op_name = "?"
    client: Any
    plan: KeyPlan
    deadline: float
    #: nodes asked so far, in order (stand-ins are appended as they are brought in)
    asked: list[str]
    #: answers needed: the quorum, or one for a forwarded put
    needed: int
    msg_type: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    #: silence after which a node is replaced by a spare (the mid-operation timeout)
    hedge_after: float = float("inf")
    spares: list[str] = field(default_factory=list)
    stand_in: dict[str, str] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)
    answered: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    sent_ids: list[int] = field(default_factory=list)
    #: when each node was sent its request (a node never sent one is not waited on)
    sent_at: dict[str, float] = field(default_factory=dict)
    #: nodes already reported to the failure detector, so each is reported once
    reported: set[str] = field(default_factory=set)
    done: bool = False
    #: its key in the coordinator's table, once started
    op_id: int = 0

    @property
    def outstanding(self) -> int:
        return len(self.asked) - len(self.answered) - len(self.failed)

    def counted(self) -> int:
        """Answers that count toward the quorum."""
        return len(self.answered)

    def silent(self) -> list[str]:
        """Nodes sent a request that neither answered nor failed yet."""
        return [p for p in self.asked
                if p in self.sent_at and p not in self.answered and p not in self.failed]

    def settled(self) -> bool:
        """The answer is known: quorum met, or too few nodes left to meet it.

        Once the quorum is out of reach, the nodes still asked get to answer (or the
        deadline passes), so the error says truly how many did.
        """
        if self.counted() >= self.needed:
            return True
        hopeless = self.counted() + self.outstanding + len(self.spares) < self.needed
        return hopeless and self.outstanding == 0


@dataclass
class _GetOp(_Operation):
    op_name = "get"
    #: a resolved merge went to every replica, so read repair has nothing left to do
    written_back: bool = False

    #: replicas that answered "not found" for a range they are still receiving (a node
    #: that joined, or took a range over): weak evidence, used only as a last resort
    weak: set[str] = field(default_factory=set)

    def counted(self) -> int:
        """Answers that settle a get early: all but the weak "not found"s.

        Once no spare is left to ask, the weak answers count too (``_answer`` counts every
        answer), so a fresh cluster whose nodes are all still filling can answer at all.
        """
        return sum(1 for peer, versions in self.answered.items()
                   if versions or peer not in self.weak)


@dataclass
class _PutOp(_Operation):
    op_name = "put"
    version: Version | None = None
    #: replicas are only sent the version once the coordinator stored it itself
    replicated: bool = False


@dataclass
class _ForwardOp(_Operation):
    op_name = "put"
    #: the home node's error, relayed to the client as it was
    relayed: dict[str, Any] | None = None


class Coordinator:
    """All in-flight operations a node coordinates."""

    def __init__(self, name: str, dots: DotIssuer, *, request_timeout: float,
                 max_clock_entries: int, max_pending: int) -> None:
        self.name = name
        self.dots = dots
        self.actor = dots.actor
        self.request_timeout = request_timeout
        #: silence after which a replica is replaced by a spare, mid-operation
        self.hedge_after = request_timeout / 2
        self.max_clock_entries = max_clock_entries
        self.max_pending = max_pending
        self._ids = itertools.count(1)
        self._ops: dict[int, _Operation] = {}
        #: request id of a Send -> (operation id, peer)
        self._sent: dict[int, tuple[int, str]] = {}
        #: (when, operation id): deadlines and hedge times, earliest first (see on_tick)
        self._timers: list[tuple[float, int]] = []
        self.stale_replies = 0
        self.read_repairs = 0
        self.hinted_writes = 0
        self.forwarded_puts = 0
        #: puts whose own write waits in an uncommitted batch (see local_writes_lost)
        self._uncommitted: list[_PutOp] = []

    # ----------------------------------------------------------------- starting

    def pending(self) -> int:
        return len(self._ops)

    def start_get(self, client: Any, plan: KeyPlan, now: float) -> list[Effect]:
        if err := self._admit():
            return [Fail(client, err)]
        op = self._new(_GetOp, client, plan, now, list(plan.targets), plan.quorum,
                       "replica_get", {"bucket": plan.bucket, "key": plan.key})
        return self._fan_out(op, now)

    def start_put(self, client: Any, plan: KeyPlan, value: Any, context: bytes | None,
                  tombstone: bool, now: float, forwarded: bool = False,
                  timestamp: float | None = None) -> list[Effect]:
        """Coordinate a put here, or forward it to a home node if this node is not one.

        ``now`` times the operation; ``timestamp`` (wall time, default ``now``) stamps the
        version, which last-write-wins compares across nodes.

        A put that was forwarded here is coordinated here even if this node is not a home
        in its own view of the ring (views differ while gossip spreads a change).
        """
        if err := self._admit():
            return [Fail(client, err)]
        try:
            ctx = decode_context(context)
        except ValueError as exc:
            return [Fail(client, InvalidRequest(str(exc)))]
        if self.name not in plan.homes and not forwarded:
            return self._forward(client, plan, value, context, tombstone, now)
        clock = ctx.truncated(self.max_clock_entries, keep=self.actor)
        stamp = now if timestamp is None else timestamp

        def make(dot: Dot) -> Version:
            return Version(None if tombstone else value, clock, dot, stamp, tombstone)

        if self.name in plan.stand_in:
            return self._put_as_stand_in(client, plan, ctx, make, now)
        # The paper's order: write locally first, then send to the other replicas. A dot
        # this node never stored must never be acknowledged, or it could be issued again.
        try:
            version = self.dots.write_new(plan.bucket, plan.key, ctx, make)
        except DynamoError as exc:
            return [Fail(client, exc)]
        others = [t for t in plan.targets if t != self.name]
        body = {"bucket": plan.bucket, "key": plan.key, "versions": [version.to_wire()]}
        op = self._new(_PutOp, client, plan, now, [self.name, *others], plan.quorum,
                       "replica_put", body)
        op.version, op.replicated = version, True
        op.answered[self.name] = {"changed": True}  # W counts the coordinator's own write
        effects = self._fan_out(op, now, to=others)
        if self.dots.in_batch:  # counted only once its batch is committed
            self._uncommitted.append(op)
        return effects

    def _put_as_stand_in(self, client: Any, plan: KeyPlan, ctx: Clock,
                         make: Callable[[Dot], Version], now: float) -> list[Effect]:
        """A forwarded put reaching a node that stands in for a home believed down: its
        own copy is a hint for that home, stored like any stand-in's, before the others."""
        try:
            version = make(self.dots.issue_dot(plan.bucket, plan.key, ctx))
        except DynamoError as exc:
            return [Fail(client, exc)]
        targets = [self.name, *(t for t in plan.targets if t != self.name)]
        body = {"bucket": plan.bucket, "key": plan.key, "versions": [version.to_wire()]}
        op = self._new(_PutOp, client, plan, now, targets, plan.quorum, "replica_put", body)
        op.version = version
        return self._fan_out(op, now, to=[self.name])

    def _forward(self, client: Any, plan: KeyPlan, value: Any, context: bytes | None,
                 tombstone: bool, now: float) -> list[Effect]:
        """Hand the put to a home node; it coordinates and we relay its answer.

        Homes believed up are tried first; if one fails, the next is tried.
        """
        self.forwarded_puts += 1
        homes = list(plan.forward_order)
        body: dict[str, Any] = {"bucket": plan.bucket, "key": plan.key, "context": context,
                                "w": plan.quorum, "forwarded": True}
        if tombstone:
            msg_type = "delete"
        else:
            msg_type, body["value"] = "put", value
        op = self._new(_ForwardOp, client, plan, now, homes[:1], 1, msg_type, body)
        op.spares = homes[1:]
        op.hedge_after = float("inf")  # a home coordinates in its own time: wait for it
        # The home node needs its own full timeout, plus the hop there and back.
        op.deadline = now + self.request_timeout * 1.5
        return self._fan_out(op, now)

    def _new(self, kind: type, client: Any, plan: KeyPlan, now: float, asked: list[str],
             needed: int, msg_type: str, body: dict[str, Any]) -> Any:
        op = kind(client, plan, now + self.request_timeout, asked, needed, msg_type, body,
                  self.hedge_after, [] if plan.strict else list(plan.spares),
                  dict(plan.stand_in))
        return op

    def _admit(self) -> DynamoError | None:
        if len(self._ops) >= self.max_pending:
            return Busy(f"{self.name} already coordinates {len(self._ops)} requests, "
                              f"its limit; try again or another node")
        return None

    def _fan_out(self, op: _Operation, now: float, to: list[str] | None = None) -> list[Effect]:
        op.op_id = op_id = next(self._ids)
        self._ops[op_id] = op
        self._arm(op_id, op.deadline)
        return self._sends(op_id, op, op.asked if to is None else to, now) + \
            self._progress(op_id, op, now)

    def _sends(self, op_id: int, op: _Operation, peers: Sequence[str],
               now: float) -> list[Effect]:
        effects: list[Effect] = []
        if op.spares and peers and op.hedge_after < float("inf"):
            self._arm(op_id, now + op.hedge_after)
        for peer in peers:
            op.sent_at[peer] = now
            req_id = next(self._ids)
            self._sent[req_id] = (op_id, peer)
            op.sent_ids.append(req_id)
            effects.append(Send(peer, op.msg_type, self._body_for(op, peer), req_id))
        return effects

    def _body_for(self, op: _Operation, peer: str) -> dict[str, Any]:
        """A stand-in's copy of a write carries the hint naming the home it stands in for."""
        if op.msg_type != "replica_put":
            return op.body
        return self._hinted(op.body, op.stand_in.get(peer))

    def _hinted(self, body: dict[str, Any], home: str | None) -> dict[str, Any]:
        if home is None:
            return body
        self.hinted_writes += 1
        return {**body, "hint": home}

    def _replace(self, op_id: int, op: _Operation, peer: str, now: float) -> list[Effect]:
        """Bring in the next spare for a node that failed or stayed silent."""
        if op.done or not op.spares or peer in op.replaced:
            return []
        if isinstance(op, _PutOp) and not op.replicated:
            return []
        op.replaced.add(peer)
        spare = op.spares.pop(0)
        if not isinstance(op, _ForwardOp):
            op.stand_in[spare] = op.stand_in.get(peer, peer)
        op.asked.append(spare)
        return self._sends(op_id, op, [spare], now)

    # ----------------------------------------------------------------- replies

    def on_reply(self, req_id: int | None, peer: str, msg_type: str, body: dict[str, Any],
                 now: float) -> list[Effect]:
        """A peer answered one of our Sends (or reported an error for it).

        Replies to operations that already ended, or from a peer other than the one asked,
        are dropped and counted: ZeroMQ may deliver them long after we gave up.
        """
        entry = self._sent.get(req_id) if req_id is not None else None
        if req_id is None or entry is None or entry[1] != peer:
            self.stale_replies += 1
            return []
        del self._sent[req_id]
        op_id, _ = entry
        op = self._ops[op_id]
        effects: list[Effect] = []
        if msg_type == "error":
            op.failed[peer] = str(body.get("message", "error"))
            unreachable = body.get("code") == Unavailable.code
            if isinstance(op, _ForwardOp):
                op.relayed = body
                if not unreachable:
                    op.spares.clear()  # the home answered: its verdict is the answer
            if unreachable:
                effects.extend(self._report(op, [peer]))
        else:
            try:
                op.answered[peer] = _parse_reply(op, msg_type, body)
            except (ValueError, KeyError, TypeError) as exc:
                op.failed[peer] = f"bad reply: {exc}"
                if isinstance(op, _ForwardOp):
                    op.relayed = None  # the last home's failure is what the client hears
            else:
                if isinstance(op, _GetOp) and body.get("filling") and not op.answered[peer]:
                    op.weak.add(peer)  # ask the next node too: it may still hold the key
                    effects.extend(self._replace(op_id, op, peer, now))
        if isinstance(op, _PutOp) and peer == self.name and not op.replicated:
            return effects + self._after_local_write(op_id, op, body, now)
        if peer in op.failed:
            effects.extend(self._replace(op_id, op, peer, now))
        return effects + self._progress(op_id, op, now)

    def _after_local_write(self, op_id: int, op: _PutOp, reply: dict[str, Any],
                           now: float) -> list[Effect]:
        if self.name in op.failed:
            op.done = True
            error = errors.from_wire(reply) if "code" in reply else DynamoError(
                f"{self.name} could not store the version: {op.failed[self.name]}")
            return [Fail(op.client, error), *self._finish(op_id, op)]
        op.replicated = True
        others = [p for p in op.asked if p != self.name]
        return self._sends(op_id, op, others, now) + self._progress(op_id, op, now)

    def local_writes_committed(self) -> None:
        """The batch holding this node's own writes is durable: they count for good."""
        self._uncommitted.clear()

    def local_writes_lost(self, error: DynamoError) -> list[Effect]:
        """The batch failed to commit: the puts still open lose their own write, and fail
        with the storage error at once, as a put whose local write fails does. (One
        already answered was answered in the same turn, and that answer became the error.)
        """
        effects: list[Effect] = []
        lost, self._uncommitted = self._uncommitted, []
        for op in lost:
            if op.done:
                continue
            op.answered.pop(self.name, None)
            op.failed[self.name] = str(error)
            op.done = True
            effects.append(Fail(op.client, error))
            if op.op_id in self._ops:
                effects.extend(self._finish(op.op_id, op))
        return effects

    def on_unreachable(self, req_id: int, peer: str, why: str, now: float) -> list[Effect]:
        """The runtime could not send a request (no address, send queue full)."""
        entry = self._sent.get(req_id)
        if entry is not None and isinstance(self._ops.get(entry[0]), _ForwardOp):
            why = f"put forwarded to home node {peer} failed: {why}"
        return self.on_reply(req_id, peer, "error", errors.to_wire(Unavailable(why)), now)

    def _progress(self, op_id: int, op: _Operation, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if not op.done and op.settled():
            effects.extend(self._answer(op, now))
        # A get lingers after answering, to hear the remaining replicas for read repair.
        if op.done and (op.outstanding == 0 or not isinstance(op, _GetOp)):
            effects.extend(self._finish(op_id, op))
        return effects

    # ----------------------------------------------------------------- timers

    def on_tick(self, now: float) -> list[Effect]:
        """Replace nodes silent past the hedge time; expire operations at their deadline.

        Only the operations with a timer due are looked at, so a tick costs nothing when
        nothing is due, however many operations are open.
        """
        effects: list[Effect] = []
        while self._timers and self._timers[0][0] <= now:
            _, op_id = heapq.heappop(self._timers)
            op = self._ops.get(op_id)
            if op is None:
                continue  # ended already: its timers are dropped lazily
            if now >= op.deadline:
                effects.extend(self._report(op, op.silent()))
                if not op.done:
                    effects.extend(self._answer(op, now, timed_out=True))
                effects.extend(self._finish(op_id, op))
                continue
            if op.done or not op.spares:
                continue  # with nothing to replace them by, silent nodes get their deadline
            # The same sum the timer was armed with: no rounding can make it fall short.
            slow = [p for p in op.silent() if op.sent_at[p] + op.hedge_after <= now]
            effects.extend(self._report(op, slow))
            for peer in slow:
                effects.extend(self._replace(op_id, op, peer, now))
        return effects

    @staticmethod
    def _report(op: _Operation, peers: Sequence[str]) -> list[Effect]:
        """PeerFailed for each node not reported yet: a detector hears of a failure once."""
        fresh = [p for p in peers if p not in op.reported]
        op.reported.update(fresh)
        return [PeerFailed(p) for p in fresh]

    def next_deadline(self) -> float | None:
        """When :meth:`on_tick` next has work: a deadline, or a hedge (None: nothing open)."""
        timers = self._timers
        while timers and timers[0][1] not in self._ops:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def _arm(self, op_id: int, when: float) -> None:
        heapq.heappush(self._timers, (when, op_id))

    # ----------------------------------------------------------------- outcomes

    def _answer(self, op: _Operation, now: float, timed_out: bool = False) -> list[Effect]:
        op.done = True
        if len(op.answered) < op.needed:
            return [Fail(op.client, self._unmet(op, timed_out))]
        if isinstance(op, _ForwardOp):
            return [Reply(op.client, "put_ok", next(iter(op.answered.values())))]
        if isinstance(op, _PutOp):
            assert op.version is not None
            return [Reply(op.client, "put_ok",
                          {"context": encode_context(op.version.history())})]
        assert isinstance(op, _GetOp)
        return self._answer_get(op, now)

    def _unmet(self, op: _Operation, timed_out: bool) -> DynamoError:
        if isinstance(op, _ForwardOp):
            if not op.asked:
                return QuorumNotMet("put", 0, op.plan.quorum, 0, "no home node is known")
            target = op.asked[-1]
            if timed_out:
                return Timeout(f"put forwarded to home node {target} got no answer within "
                               f"{self.request_timeout * 1.5:.1f}s")
            if op.relayed is not None:
                return errors.from_wire(op.relayed)
            return Unavailable(f"put forwarded to home node {target} failed: "
                               f"{op.failed.get(target, 'no answer')}")
        reasons = [f"{p}: {r}" for p, r in sorted(op.failed.items())]
        if op.silent():
            reasons.append(f"no answer from {', '.join(op.silent())}")
        covered = set(op.asked) | set(op.stand_in.values())
        unasked = [h for h in op.plan.homes if h not in covered]
        if unasked:
            reasons.append(f"{', '.join(unasked)} believed down and no stand-in available")
        if op.plan.strict:
            reasons.append("the bucket is strict: only home nodes count")
        return QuorumNotMet(op.op_name, len(op.answered), op.needed,
                            max(len(op.asked), len(op.plan.homes)), "; ".join(reasons))

    def _answer_get(self, op: _GetOp, now: float) -> list[Effect]:
        versions = reconcile(v for vs in op.answered.values() for v in vs)
        alive = live(versions)
        context = context_of(versions)
        effects: list[Effect] = []
        siblings = [{"value": v.value, "ts": v.timestamp, "dot": list(v.dot)} for v in alive]
        resolver = op.plan.resolver
        shown = versions if getattr(resolver, "sees_tombstones", False) else alive
        if resolver is not None and len(shown) > 1 and alive:
            try:
                value = resolver.resolve(
                    [Sibling(v.value, v.timestamp, v.dot, v.tombstone) for v in shown])
            except Exception as exc:  # noqa: BLE001 - a plugin's failure is the client's answer
                return [Fail(op.client, ResolverFailed(
                    f"the resolver of bucket {op.plan.bucket!r} failed on the "
                    f"{len(shown)} siblings of {op.plan.key!r}: {exc}; read with "
                    f"resolve=False to see them"))]
            deleted = value is DELETED
            # The merge is no newer than what it merged: stamped with the latest sibling's
            # time, not the read's, so a later write it never saw still wins by timestamp.
            stamp = max(v.timestamp for v in shown)
            merged = self._merged_version(op, None if deleted else value, context, stamp,
                                          deleted)
            siblings = [] if deleted else [
                {"value": value, "ts": stamp, "dot": list(alive[-1].dot)}]
            if merged is not None:
                context = merged.history()
                for sibling in siblings:
                    sibling["dot"] = list(merged.dot)
                effects.extend(self._write_back(op, merged))
        effects.insert(0, Reply(op.client, "get_ok",
                                {"siblings": siblings, "context": encode_context(context)}))
        return effects

    def _merged_version(self, op: _GetOp, value: Any, context: Clock,
                        stamp: float, tombstone: bool = False) -> Version | None:
        """The resolved merge as a new version, when this node may issue one.

        Only a home node gives the merge a dot, issued now, when the merge is made: a put
        coordinated here since the get started has taken the key's next dot already.
        Elsewhere, or if no dot can be had, the merged value is returned with the siblings'
        context, and the client's next put supersedes them.
        """
        if self.name not in op.plan.homes:
            return None
        try:
            dot = self.dots.issue_dot(op.plan.bucket, op.plan.key, context)
        except Exception:  # noqa: BLE001 - storage trouble: answer without writing back
            return None
        return Version(value, context.truncated(self.max_clock_entries, keep=self.actor),
                       dot, stamp, tombstone)

    def _write_back(self, op: _GetOp, merged: Version) -> list[Effect]:
        """The merge goes where a put would: the targets, stand-ins with their hints."""
        op.written_back = True
        body = {"bucket": op.plan.bucket, "key": op.plan.key, "versions": [merged.to_wire()]}
        return [Send(peer, "replica_put", self._hinted(body, op.stand_in.get(peer)), None)
                for peer in op.plan.targets]

    def _finish(self, op_id: int, op: _Operation) -> list[Effect]:
        """Forget the operation; a get first repairs replicas that answered stale data."""
        del self._ops[op_id]
        for req_id in op.sent_ids:
            self._sent.pop(req_id, None)
        if isinstance(op, _GetOp) and op.done and not op.written_back:
            return self._read_repair(op)
        return []

    def _read_repair(self, op: _GetOp) -> list[Effect]:
        """Send each home replica that answered the newest versions it lacked (one-way).

        The newest versions are reconciled over every reply, including those that came in
        after the client was answered. Stand-ins are not repaired: what they hold for a
        home is a hint, delivered by handoff, not a replica of their own.
        """
        newest = reconcile(v for vs in op.answered.values() for v in vs)
        effects: list[Effect] = []
        for peer, versions in sorted(op.answered.items()):
            if peer not in op.plan.homes:
                continue
            # By content, not dot: a replica holding another version under one of these dots
            # (a dot issued twice) is repaired too, and keeps the same one as the others.
            held = {v.fingerprint for v in versions}
            missing = [v.to_wire() for v in newest if v.fingerprint not in held]
            if missing:
                self.read_repairs += 1
                effects.append(Send(peer, "replica_put", {
                    "bucket": op.plan.bucket, "key": op.plan.key, "versions": missing}, None))
        return effects


def _parse_reply(op: _Operation, msg_type: str, body: dict[str, Any]) -> Any:
    expected = {_GetOp: "replica_get_ok", _PutOp: "replica_put_ok", _ForwardOp: "put_ok"}
    if msg_type != expected[type(op)]:
        raise ValueError(f"expected {expected[type(op)]}, got {msg_type}")
    if isinstance(op, _GetOp):  # the coordinator's own replica answers with versions
        return [v if isinstance(v, Version) else Version.from_wire(v)
                for v in body["versions"]]
    return body
