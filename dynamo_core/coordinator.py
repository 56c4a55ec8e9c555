"""The coordinator: quorum state machines for get, put and delete, with no I/O.

A node's runtime hands the coordinator requests, replica replies and clock ticks; the
coordinator hands back effects: messages to send (:class:`Send`) and answers for clients
(:class:`Reply`, :class:`Fail`). Time comes in as ``now`` on every call. The coordinator's
own replica is addressed like any other (a ``Send`` to its own name, which the runtime
short-circuits), so "W counts the coordinator's own write" needs no special case.

Rules (the paper's section 4.5, plus what its text leaves implicit):

* a put is coordinated by a node among the key's top N; any other node forwards it to one;
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

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

from . import errors
from .errors import (DynamoError, InvalidRequest, Overloaded, QuorumNotMet, Timeout,
                     Unavailable)
from .hookspecs import Resolver, Sibling
from .versions import (Clock, Version, context_of, decode_context, encode_context, live,
                       next_dot, reconcile)


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


Effect = Union[Send, Reply, Fail]


# ====================================================================== requests


@dataclass(frozen=True)
class KeyPlan:
    """Where a key lives as this node sees it, and the quorum the request asks for.

    ``homes`` are the key's top-N distinct nodes; the runtime computes them from the ring
    (and, later, from failure detection), so the coordinator needs no ring of its own.
    """

    bucket: str
    key: str
    homes: tuple[str, ...]
    quorum: int
    resolver: Resolver | None = None


# ====================================================================== operations


@dataclass
class _Operation:
    op_name = "?"
    client: Any
    plan: KeyPlan
    deadline: float
    asked: tuple[str, ...]
    #: answers needed: the quorum, or one for a forwarded put
    needed: int
    answered: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    sent_ids: list[int] = field(default_factory=list)
    done: bool = False

    @property
    def outstanding(self) -> int:
        return len(self.asked) - len(self.answered) - len(self.failed)

    def settled(self) -> bool:
        """The answer is known: quorum met, or too few replicas left to meet it."""
        return (len(self.answered) >= self.needed
                or len(self.answered) + self.outstanding < self.needed)


@dataclass
class _GetOp(_Operation):
    op_name = "get"
    #: the highest dot counter this node issued for the key, from its own replica's answer
    issued: int = 0
    #: a resolved merge went to every home node, so read repair has nothing left to do
    written_back: bool = False


@dataclass
class _PutOp(_Operation):
    op_name = "put"
    version: Version | None = None
    body: dict[str, Any] = field(default_factory=dict)
    #: replicas are only sent the version once the coordinator stored it itself
    replicated: bool = False


@dataclass
class _ForwardOp(_Operation):
    op_name = "put"
    #: the home node's error, relayed to the client as it was
    relayed: dict[str, Any] | None = None


class Coordinator:
    """All in-flight operations a node coordinates."""

    def __init__(self, name: str, actor: str, *, request_timeout: float,
                 max_clock_entries: int, max_pending: int) -> None:
        self.name = name
        self.actor = actor
        self.request_timeout = request_timeout
        self.max_clock_entries = max_clock_entries
        self.max_pending = max_pending
        self._ids = itertools.count(1)
        self._ops: dict[int, _Operation] = {}
        #: request id of a Send -> (operation id, peer)
        self._sent: dict[int, tuple[int, str]] = {}
        self.stale_replies = 0
        self.read_repairs = 0

    # ----------------------------------------------------------------- starting

    def pending(self) -> int:
        return len(self._ops)

    def start_get(self, client: Any, plan: KeyPlan, now: float) -> list[Effect]:
        if err := self._admit():
            return [Fail(client, err)]
        op = _GetOp(client, plan, now + self.request_timeout, plan.homes, plan.quorum)
        return self._fan_out(op, "replica_get", {"bucket": plan.bucket, "key": plan.key}, now)

    def start_put(self, client: Any, plan: KeyPlan, value: Any, context: bytes | None,
                  tombstone: bool, local_versions: Sequence[Version], now: float,
                  forwarded: bool = False, issued: int = 0) -> list[Effect]:
        """Coordinate a put here, or forward it to a home node if this node is not one.

        ``local_versions`` and ``issued`` are this node's own replica of the key (the
        runtime reads them) so that the new version's dot is one it never issued before.
        """
        if err := self._admit():
            return [Fail(client, err)]
        try:
            ctx = decode_context(context)
        except ValueError as exc:
            return [Fail(client, InvalidRequest(str(exc)))]
        if self.name not in plan.homes and not forwarded:
            return self._forward(client, plan, value, context, tombstone, now)
        dot = next_dot(self.actor, ctx, local_versions, issued)
        clock = ctx.truncated(self.max_clock_entries, keep=self.actor)
        version = Version(None if tombstone else value, clock, dot, now, tombstone)
        asked = plan.homes if self.name in plan.homes else (self.name, *plan.homes)
        body = {"bucket": plan.bucket, "key": plan.key, "versions": [version.to_wire()]}
        op = _PutOp(client, plan, now + self.request_timeout, asked, plan.quorum,
                    version=version, body=body)
        # The paper's order: write locally first, then send to the other replicas. A dot
        # this node never stored must never be acknowledged, or it could be issued again.
        return self._fan_out(op, "replica_put", body, now, to=(self.name,))

    def _forward(self, client: Any, plan: KeyPlan, value: Any, context: bytes | None,
                 tombstone: bool, now: float) -> list[Effect]:
        """Hand the put to the first home node; it coordinates and we relay its answer."""
        target = plan.homes[:1]
        # The home node needs its own full timeout, plus the hop there and back.
        op = _ForwardOp(client, plan, now + self.request_timeout * 1.5, target, 1)
        body: dict[str, Any] = {"bucket": plan.bucket, "key": plan.key, "context": context,
                                "w": plan.quorum, "forwarded": True}
        if tombstone:
            msg_type = "delete"
        else:
            msg_type, body["value"] = "put", value
        return self._fan_out(op, msg_type, body, now)

    def _admit(self) -> DynamoError | None:
        if len(self._ops) >= self.max_pending:
            return Overloaded(f"{self.name} already coordinates {len(self._ops)} requests, "
                              f"its limit; try again or another node")
        return None

    def _fan_out(self, op: _Operation, msg_type: str, body: dict[str, Any], now: float,
                 to: tuple[str, ...] | None = None) -> list[Effect]:
        op_id = next(self._ids)
        self._ops[op_id] = op
        return self._sends(op_id, op, msg_type, body, op.asked if to is None else to) \
            + self._progress(op_id, op, now)

    def _sends(self, op_id: int, op: _Operation, msg_type: str, body: dict[str, Any],
               peers: Sequence[str]) -> list[Effect]:
        effects: list[Effect] = []
        for peer in peers:
            req_id = next(self._ids)
            self._sent[req_id] = (op_id, peer)
            op.sent_ids.append(req_id)
            effects.append(Send(peer, msg_type, body, req_id))
        return effects

    # ----------------------------------------------------------------- replies

    def on_reply(self, req_id: int | None, peer: str, msg_type: str, body: dict[str, Any],
                 now: float) -> list[Effect]:
        """A peer answered one of our Sends (or reported an error for it).

        Replies to operations that already ended, or from a peer other than the one asked,
        are dropped and counted: ZeroMQ may deliver them long after we gave up.
        """
        entry = self._sent.get(req_id) if req_id is not None else None
        if entry is None or entry[1] != peer:
            self.stale_replies += 1
            return []
        del self._sent[req_id]
        op_id, _ = entry
        op = self._ops[op_id]
        if msg_type == "error":
            op.failed[peer] = str(body.get("message", "error"))
            if isinstance(op, _ForwardOp):
                op.relayed = body
        else:
            try:
                op.answered[peer] = _parse_reply(op, msg_type, body)
            except (ValueError, KeyError, TypeError) as exc:
                op.failed[peer] = f"bad reply: {exc}"
            if isinstance(op, _GetOp) and peer == self.name:
                op.issued = body.get("issued", 0)
        if isinstance(op, _PutOp) and peer == self.name and not op.replicated:
            return self._after_local_write(op_id, op, body, now)
        return self._progress(op_id, op, now)

    def _after_local_write(self, op_id: int, op: _PutOp, reply: dict[str, Any],
                           now: float) -> list[Effect]:
        if self.name in op.failed:
            op.done = True
            error = errors.from_wire(reply) if "code" in reply else DynamoError(
                f"{self.name} could not store the version: {op.failed[self.name]}")
            return [Fail(op.client, error), *self._finish(op_id, op)]
        op.replicated = True
        others = [p for p in op.asked if p != self.name]
        return self._sends(op_id, op, "replica_put", op.body, others) + \
            self._progress(op_id, op, now)

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
        """Expire operations whose deadline passed."""
        effects: list[Effect] = []
        for op_id, op in list(self._ops.items()):
            if now >= op.deadline:
                if not op.done:
                    effects.extend(self._answer(op, now, timed_out=True))
                effects.extend(self._finish(op_id, op))
        return effects

    def next_deadline(self) -> float | None:
        return min((op.deadline for op in self._ops.values()), default=None)

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
            target = op.asked[0]
            if timed_out:
                return Timeout(f"put forwarded to home node {target} got no answer within "
                               f"{self.request_timeout * 1.5:.1f}s")
            if op.relayed is not None:
                return errors.from_wire(op.relayed)
            return Unavailable(f"put forwarded to home node {target} failed: "
                               f"{op.failed.get(target, 'no answer')}")
        reasons = [f"{p}: {r}" for p, r in sorted(op.failed.items())]
        silent = [p for p in op.asked if p not in op.answered and p not in op.failed]
        if silent:
            reasons.append(f"no answer from {', '.join(silent)}")
        return QuorumNotMet(op.op_name, len(op.answered), op.needed, len(op.asked),
                            "; ".join(reasons))

    def _answer_get(self, op: _GetOp, now: float) -> list[Effect]:
        versions = reconcile(v for vs in op.answered.values() for v in vs)
        alive = live(versions)
        context = context_of(versions)
        effects: list[Effect] = []
        siblings = [{"value": v.value, "ts": v.timestamp, "dot": list(v.dot)} for v in alive]
        if op.plan.resolver is not None and len(alive) > 1:
            value = op.plan.resolver.resolve(
                [Sibling(v.value, v.timestamp, v.dot) for v in alive])
            merged = self._merged_version(op, value, context, now)
            siblings = [{"value": value, "ts": now, "dot": list(alive[-1].dot)}]
            if merged is not None:
                context = merged.history()
                siblings[0]["dot"] = list(merged.dot)
                effects.extend(self._write_back(op, merged))
        effects.insert(0, Reply(op.client, "get_ok",
                                {"siblings": siblings, "context": encode_context(context)}))
        return effects

    def _merged_version(self, op: _GetOp, value: Any, context: Clock,
                        now: float) -> Version | None:
        """The resolved merge as a new version, when this node may issue one.

        Only a home node that read its own replica gives the merge a dot (it holds every
        dot it issued for the key, so the new one is fresh). Elsewhere the merged value is
        returned with the siblings' context, and the client's next put supersedes them.
        """
        if self.name not in op.plan.homes or self.name not in op.answered:
            return None
        dot = next_dot(self.actor, context, op.answered[self.name], op.issued)
        return Version(value, context.truncated(self.max_clock_entries, keep=self.actor),
                       dot, now)

    def _write_back(self, op: _GetOp, merged: Version) -> list[Effect]:
        op.written_back = True
        body = {"bucket": op.plan.bucket, "key": op.plan.key, "versions": [merged.to_wire()]}
        return [Send(peer, "replica_put", body, None) for peer in op.plan.homes]

    def _finish(self, op_id: int, op: _Operation) -> list[Effect]:
        """Forget the operation; a get first repairs replicas that answered stale data."""
        del self._ops[op_id]
        for req_id in op.sent_ids:
            self._sent.pop(req_id, None)
        if isinstance(op, _GetOp) and op.done and not op.written_back:
            return self._read_repair(op)
        return []

    def _read_repair(self, op: _GetOp) -> list[Effect]:
        """Send each replica that answered the newest versions it lacked (fire and forget).

        The newest versions are reconciled over every reply, including those that came in
        after the client was answered.
        """
        newest = reconcile(v for vs in op.answered.values() for v in vs)
        effects: list[Effect] = []
        for peer, versions in sorted(op.answered.items()):
            held = {v.dot for v in versions}
            missing = [v.to_wire() for v in newest if v.dot not in held]
            if missing:
                self.read_repairs += 1
                effects.append(Send(peer, "replica_put", {
                    "bucket": op.plan.bucket, "key": op.plan.key, "versions": missing}, None))
        return effects


def _parse_reply(op: _Operation, msg_type: str, body: dict[str, Any]) -> Any:
    expected = {_GetOp: "replica_get_ok", _PutOp: "replica_put_ok", _ForwardOp: "put_ok"}
    if msg_type != expected[type(op)]:
        raise ValueError(f"expected {expected[type(op)]}, got {msg_type}")
    if isinstance(op, _GetOp):
        return [Version.from_wire(v) for v in body["versions"]]
    return body

