"""Gossip membership: who is in the cluster, where they listen and which tokens they hold.

Each member's record carries a version that only its owner raises (or, for a removal, the
node that removes it). Gossip between two nodes exchanges all records and both keep the
higher version of each, so changes spread epidemically, about once a second per node, with
no master. Seeds are plain addresses a node gossips with until it knows better, and now and
then afterwards so separately started groups find each other.

A node that learns of a *newer* record about itself than it holds (it restarted with an empty
data directory) takes back the tokens and join order the cluster remembers and re-announces
itself above that version: its place on the ring is the cluster's memory, not a fresh draw.

Records also carry the cluster's history of joins and leaves, which strategy 3 replays. A
member's *join order* is 0 until it has heard from another member; then it takes 1 + the
highest join or leave order of every record it knows (removed ones included), so a node that
joins a running cluster is the newest. A member that leaves the ring (``leaving``, or removed
by another node) gets a *leave order* the same way. Concurrent events may tie: the strategy
breaks ties by name, so the ring stays a function of the records. A removed node told to
join again keeps its join order and drops its leave order: it takes back its old place in
the history, as a strategy-1 node takes back its old tokens.

Pure logic: no sockets and no clocks; randomness comes in as a ``random.Random``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from random import Random
from typing import Any

from .api import MemberInfo, PartitionStrategy
from .ring import Ring

#: Statuses a member record can have. A removed member stays as a record (a tombstone) so
#: that stale gossip cannot resurrect it.
STATUSES = ("joining", "up", "leaving", "removed")
#: Members that are up or joining hold ring positions (a joining one takes writes at once
#: and reads once its ranges are filled); a leaving member's ranges move at once to their
#: next owners (it pushes its data there), a removed one's are rebuilt by them.
RING_STATUSES = frozenset({"up", "joining"})

#: How far a removal raises a member's version. The removed node may have raised its own
#: record meanwhile (joining -> up, say) in gossip that has not reached the remover yet; a
#: removal one version up would tie or lose against it and the dead node would come back
#: into the ring. No node updates its record a million times between two gossip rounds.
REMOVAL_STEP = 1 << 20

_TOKEN_BYTES = 16
MAX_TOKENS_PER_MEMBER = 65_536
#: Join and leave orders (like versions) stay below this.
_ORDER_LIMIT = 1 << 62
#: The leave order :func:`removal_of` leaves for :meth:`Membership.merge` to fill in (only
#: the merging membership knows the cluster's highest order); never valid on the wire.
_UNSTAMPED = -1


@dataclass(frozen=True)
class Member:
    name: str
    address: str
    capacity: int
    tokens: tuple[int, ...]
    status: str = "up"
    version: int = 1
    #: its place in the cluster's history of joins and leaves (see the module docstring):
    #: 0 until chosen; the leave order is 0 while the member is on the ring
    join_order: int = 0
    leave_order: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "capacity": self.capacity,
                "tokens": b"".join(t.to_bytes(_TOKEN_BYTES, "big") for t in self.tokens),
                "status": self.status, "version": self.version,
                "join_order": self.join_order, "leave_order": self.leave_order}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Member:
        """Parse a gossiped record; raises ValueError naming the bad field."""
        name, address = body.get("name"), body.get("address")
        capacity, blob = body.get("capacity"), body.get("tokens")
        status, version = body.get("status"), body.get("version")
        # Records from nodes that predate join orders carry none: 0, not chosen.
        join_order, leave_order = body.get("join_order", 0), body.get("leave_order", 0)
        if not isinstance(name, str) or not 0 < len(name) <= 256:
            raise ValueError("member name must be text of 1 to 256 characters")
        if not isinstance(address, str) or not address.startswith("tcp://") or len(address) > 512:
            raise ValueError(f"member {name}: address must be a tcp:// endpoint")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 < capacity <= 1024:
            raise ValueError(f"member {name}: capacity must be an integer from 1 to 1024")
        if (not isinstance(blob, bytes) or len(blob) % _TOKEN_BYTES
                or len(blob) // _TOKEN_BYTES > MAX_TOKENS_PER_MEMBER):
            raise ValueError(f"member {name}: tokens must be 16-byte big-endian integers")
        if status not in STATUSES:
            raise ValueError(f"member {name}: status must be one of {', '.join(STATUSES)}")
        if isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 1 << 62:
            raise ValueError(f"member {name}: version must be a positive integer")
        for field, order in (("join_order", join_order), ("leave_order", leave_order)):
            if isinstance(order, bool) or not isinstance(order, int) or \
                    not 0 <= order < _ORDER_LIMIT:
                raise ValueError(f"member {name}: {field} must be a non-negative integer")
        if leave_order and status in RING_STATUSES:
            raise ValueError(f"member {name}: a member on the ring has no leave_order")
        tokens = tuple(int.from_bytes(blob[i:i + _TOKEN_BYTES], "big")
                       for i in range(0, len(blob), _TOKEN_BYTES))
        return cls(name, address, capacity, tokens, status, version, join_order, leave_order)


class _RingMemo:
    """The last few rings built, shared by every node of the process.

    A strategy is a pure function of the members and options (its contract), and building
    a ring can cost milliseconds (strategy 3 replays the cluster's history). A real process
    runs one node and rarely sees a view twice; a simulation runs a hundred nodes whose
    views converge on the same few rings, and builds each once instead of a hundred times.
    Rings are immutable, so sharing one is safe. Bounded: the oldest entry goes first.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._rings: dict[tuple[Any, ...], Ring] = {}

    def build(self, strategy: PartitionStrategy, members: tuple[MemberInfo, ...],
              options: Mapping[str, Any]) -> Ring:
        kind = type(strategy)
        key = (kind.__module__, kind.__qualname__, getattr(strategy, "name", None),
               tuple(sorted((k, repr(v)) for k, v in options.items())), members)
        ring = self._rings.pop(key, None)
        if ring is None:
            ring = Ring(strategy.ring_tokens(list(members), options),
                        strategy.partition_count(options))
        self._rings[key] = ring  # most recently used last
        while len(self._rings) > self.size:
            del self._rings[next(iter(self._rings))]
        return ring


_RINGS = _RingMemo(32)


def removal_of(member: Member) -> Member:
    """The record that removes ``member`` from the cluster, above any it made itself.

    A removed node that is told to join again (``dynamo join``) takes its record back
    above this one (see :meth:`Membership._merge_about_me`). The leave order is filled in
    by :meth:`Membership.merge` (a member that was leaving keeps the one it had).
    """
    leave_order = member.leave_order if member.status not in RING_STATUSES else 0
    return replace(member, status="removed", version=member.version + REMOVAL_STEP,
                   leave_order=leave_order or _UNSTAMPED)


def _ring_place(member: Member) -> tuple[bool, tuple[int, ...], int, int, int]:
    """What a member contributes to the ring: whether it is on it, its tokens, its weight,
    its place in the history."""
    return (member.status in RING_STATUSES, member.tokens, member.capacity,
            member.join_order, member.leave_order)


class Membership:
    """One node's view of the cluster, and the ring that view implies."""

    def __init__(self, me: Member, strategy: PartitionStrategy,
                 strategy_options: Mapping[str, Any], seeds: Sequence[str] = ()) -> None:
        self._members: dict[str, Member] = {me.name: me}
        self._me = me.name
        self._strategy = strategy
        self._options = dict(strategy_options)
        self.seeds = tuple(s for s in seeds if s != me.address)
        self._ring: Ring | None = None
        #: raised whenever a member is added or its address, capacity, tokens, status or
        #: join or leave order change (not on a bare version bump): what "the membership
        #: changed" means
        self.generation = 0

    # ----------------------------------------------------------------- views

    @property
    def me(self) -> Member:
        return self._members[self._me]

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def members(self) -> list[Member]:
        return sorted(self._members.values(), key=lambda m: m.name)

    def live_members(self) -> list[Member]:
        """Members that hold a place on the ring."""
        return [m for m in self.members() if m.status in RING_STATUSES]

    def address_of(self, name: str) -> str | None:
        member = self._members.get(name)
        return member.address if member else None

    @property
    def ring(self) -> Ring:
        if self._ring is None:
            infos = [MemberInfo(m.name, m.capacity, m.tokens, m.join_order)
                     for m in self.live_members()]
            if getattr(self._strategy, "sees_departed", False):
                infos += [MemberInfo(m.name, m.capacity, m.tokens, m.join_order, m.leave_order)
                          for m in self.members()
                          if m.status not in RING_STATUSES and m.leave_order > 0]
            self._ring = _RINGS.build(self._strategy, tuple(infos), self._options)
        return self._ring

    def next_order(self) -> int:
        """The order of an event happening now: 1 + the highest join or leave order of
        every record this node knows, removed ones included."""
        return 1 + max(max(m.join_order, m.leave_order) for m in self._members.values())

    def to_wire(self) -> list[dict[str, Any]]:
        return [m.to_wire() for m in self.members()]

    # ----------------------------------------------------------------- changes

    def update_me(self, **changes: Any) -> Member:
        """Change this node's own record; the new version makes the change win gossip.

        Stepping off the ring (``leaving``) stamps the record with a leave order."""
        me = self.me
        self._set(self._ordered(replace(me, version=me.version + 1, **changes)))
        return self.me

    def join_again(self) -> Member:
        """This node was told to join (``dynamo join``): raise its own record past any
        removal of it, one it has heard of or one still on its way (a removal raises the
        removed node's record by REMOVAL_STEP, see :func:`removal_of`). Off the ring it
        comes back joining; a removal made after the join outvotes it in turn. It keeps its
        join order and drops its leave order: back in its old place in the history (a node
        that never chose a join order chooses one at the next gossip)."""
        me = self.me
        status = me.status if me.status in RING_STATUSES else "joining"
        self._set(self._ordered(replace(me, status=status, version=me.version + REMOVAL_STEP)))
        return self.me

    def merge(self, remote: Iterable[Member]) -> bool:
        """Fold in records from a peer; True when anything this node knows changed."""
        changed = False
        for theirs in remote:
            if theirs.name == self._me:
                changed |= self._merge_about_me(theirs)
                continue
            mine = self._members.get(theirs.name)
            if mine is None or theirs.version > mine.version:
                if theirs.leave_order == _UNSTAMPED:  # a removal made here (removal_of)
                    theirs = replace(theirs, leave_order=self.next_order())
                self._set(theirs)
                changed = True
        return self._choose_join_order() or changed

    def _choose_join_order(self) -> bool:
        """Take a join order once this node has heard of another member (a first node
        waits for the second; a joining one for the cluster its seed knows)."""
        me = self.me
        if me.join_order or me.status not in RING_STATUSES or len(self._members) == 1:
            return False
        self._set(replace(me, join_order=self.next_order(), version=me.version + 1))
        return True

    def _ordered(self, me: Member) -> Member:
        """This node's own record with a leave order that fits its status: none on the
        ring, and off it one after its join."""
        if me.status in RING_STATUSES:
            return replace(me, leave_order=0) if me.leave_order else me
        if me.leave_order <= me.join_order:
            return replace(me, leave_order=self.next_order())
        return me

    def _merge_about_me(self, theirs: Member) -> bool:
        me = self.me
        if theirs.version < me.version or theirs == me:
            return False
        # The cluster remembers a newer record of this node: take back its tokens and its
        # place in the history, keep this process's own address and capacity, and announce
        # above what it remembers.
        tokens = theirs.tokens if theirs.tokens else me.tokens
        # A removal stands until the node is told to join again (dynamo join).
        status = "removed" if theirs.status == "removed" else me.status
        self._set(self._ordered(replace(
            me, tokens=tokens, version=theirs.version + 1, status=status,
            join_order=theirs.join_order or me.join_order,
            leave_order=max(theirs.leave_order, 0) or me.leave_order)))
        return True

    def _set(self, member: Member) -> None:
        old = self._members.get(member.name)
        self._members[member.name] = member
        if old is None or (old.address, old.status, *_ring_place(old)) != (
                member.address, member.status, *_ring_place(member)):
            self.generation += 1
        if old is None or _ring_place(old) != _ring_place(member):
            # Only a change of what the ring is made of builds it anew (strategy 3 replays
            # the history for it): joining -> up, say, leaves it as it is.
            self._ring = None

    # ----------------------------------------------------------------- gossip

    def gossip_target(self, rng: Random) -> str | None:
        """The address to gossip with this round: a random peer, sometimes a seed."""
        peers = [m.address for m in self.members()
                 if m.name != self._me and m.status != "removed"]
        if self.seeds and (not peers or rng.random() < 1.0 / (len(peers) + 1)):
            return rng.choice(self.seeds)
        return rng.choice(peers) if peers else None


def member_records(members: Iterable[Member]) -> dict[str, tuple[str, str]]:
    """What an operator follows of each member: its status and its address."""
    return {m.name: (m.status, m.address) for m in members}


def membership_changes(before: Mapping[str, tuple[str, str]],
                       after: Mapping[str, tuple[str, str]]) -> list[str]:
    """The changes between two :func:`member_records`, one sentence each."""
    lines = []
    for name, (status, address) in sorted(after.items()):
        old = before.get(name)
        if old is None:
            lines.append(f"{name} appeared at {address} ({status})")
            continue
        if old[0] != status:
            lines.append(f"{name} is {status} (was {old[0]})")
        if old[1] != address:
            lines.append(f"{name} moved to {address} (was {old[1]})")
    return lines
