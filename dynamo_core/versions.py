"""Versions and their causality: vector clocks with dots.

Dynamo tags every version with a vector clock and keeps every version that no other version
descends from. A plain vector clock, incremented by the coordinator, cannot tell two writes
apart when both came through the same node with the same context: the second would look like
a descendant of the first and silently replace it. So each version here carries

* ``clock``: the causal context the writer had seen (what the client's context said), and
* ``dot``: the one event that created it, ``(actor, counter)``, unique per actor.

Version ``b`` is obsolete once another version's clock covers ``b.dot``: the writer of that
version had seen ``b``. This is the dotted-version-vector idea Riak adopted for the same
reason. A :class:`Clock` is a set of events, stored compactly as a contiguous vector
(``actor -> counter``) plus a few isolated dots; ``descends`` is set inclusion and ``merge``
is union, so clocks form a lattice.

Clocks are bounded: past ``max_entries`` vector entries the oldest (by the wall-clock time of
the entry's last update) are dropped. Dropping only ever *removes* knowledge, so it can turn
an order into a false conflict (siblings the application merges) but can never make an older
version look newer than its descendant: a version is only ever made obsolete by a clock that
covers its dot, and truncation covers less, never more.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cbor2

#: Default bound on vector entries in a clock (the paper truncates at 10).
DEFAULT_MAX_ENTRIES = 10
#: Bound on the entries a clock from outside may have before it is even parsed.
MAX_WIRE_ENTRIES = 1024
#: Dot counters stay below this: far under 2**63 (no overflow in any engine or language),
#: exact as a double (JSON tools), and still more writes per actor and key than will happen.
MAX_COUNTER = 1 << 48
#: Timestamps are finite seconds since the epoch, at most this far from it (about 3,000
#: years); a skewed or simulated clock may go below zero.
MAX_TIMESTAMP = 1e11

Dot = tuple[str, int]


@dataclass(frozen=True)
class Clock:
    """An immutable set of events: ``actor -> (counter, timestamp)`` plus isolated dots.

    The vector part says "every event of ``actor`` up to ``counter``"; ``timestamp`` is the
    wall-clock time that entry was last advanced, used only to pick entries to truncate.
    ``dots`` holds events seen out of order (``counter > vector[actor] + 1``), for instance
    a sibling whose predecessors were never seen. It stays small: it holds at most one dot
    per sibling the context was built from.
    """

    vector: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    dots: frozenset[tuple[str, int, float]] = frozenset()

    # ----------------------------------------------------------------- construction

    @classmethod
    def empty(cls) -> Clock:
        return _EMPTY

    @classmethod
    def of(cls, vector: Mapping[str, int], timestamp: float = 0.0) -> Clock:
        """A clock from plain counters (convenient in tests and examples)."""
        return _normalized({a: (c, timestamp) for a, c in vector.items() if c > 0}, ())

    # ----------------------------------------------------------------- queries

    def counter(self, actor: str) -> int:
        """The highest counter of ``actor`` this clock knows of (vector or dot)."""
        top = self.vector.get(actor, (0, 0.0))[0]
        for a, c, _ in self.dots:
            if a == actor and c > top:
                top = c
        return top

    def covers(self, dot: Dot) -> bool:
        """True when the event ``dot`` is in this clock's history."""
        actor, counter = dot
        if self.vector.get(actor, (0, 0.0))[0] >= counter:
            return True
        return any(a == actor and c == counter for a, c, _ in self.dots)

    def descends(self, other: Clock) -> bool:
        """True when every event of ``other`` is also in this clock (``self >= other``)."""
        for actor, (counter, _) in other.vector.items():
            have = self.vector.get(actor, (0, 0.0))[0]
            # Events past our vector can only be covered by isolated dots, one each.
            if have < counter and (counter - have > len(self.dots) or not all(
                    self.covers((actor, c)) for c in range(have + 1, counter + 1))):
                return False
        return all(self.covers((a, c)) for a, c, _ in other.dots)

    def dominates(self, other: Clock) -> bool:
        """Strictly newer: descends from ``other`` and differs from it."""
        return self != other and self.descends(other)

    def concurrent(self, other: Clock) -> bool:
        """Neither descends from the other: the histories diverged."""
        return not self.descends(other) and not other.descends(self)

    def __len__(self) -> int:
        return len(self.vector) + len(self.dots)

    # ----------------------------------------------------------------- operations

    def merge(self, other: Clock) -> Clock:
        """The least upper bound: every event of both."""
        if not other.vector and not other.dots:
            return self
        vector = dict(self.vector)
        for actor, entry in other.vector.items():
            mine = vector.get(actor)
            # The larger counter wins; on a tie keep the later timestamp.
            vector[actor] = entry if mine is None else max(mine, entry)
        return _normalized(vector, self.dots | other.dots)

    def add(self, dot: Dot, timestamp: float) -> Clock:
        """This clock plus one event."""
        return _normalized(dict(self.vector), self.dots | {(dot[0], dot[1], timestamp)})

    def increment(self, actor: str, timestamp: float,
                  max_entries: int = DEFAULT_MAX_ENTRIES) -> Clock:
        """The classic vector-clock step: ``actor`` records one more event (then truncate)."""
        return self.add((actor, self.counter(actor) + 1), timestamp).truncated(
            max_entries, keep=actor)

    def truncated(self, max_entries: int = DEFAULT_MAX_ENTRIES, keep: str | None = None) -> Clock:
        """Drop the oldest vector entries (never ``keep``) until at most ``max_entries`` remain.

        Isolated dots of dropped actors go too, and of the rest only the ``max_entries``
        newest stay, so a clock never holds more than twice ``max_entries`` items.
        """
        if max_entries < 1:
            raise ValueError("a clock needs room for at least one entry")
        if len(self.vector) <= max_entries and len(self.dots) <= max_entries:
            return self
        by_age = sorted((ts, actor) for actor, (_, ts) in self.vector.items() if actor != keep)
        drop = {actor for _, actor in by_age[: max(0, len(self.vector) - max_entries)]}
        vector = {a: e for a, e in self.vector.items() if a not in drop}
        # Newest dots stay; ``keep``'s own dots rank above every other actor's, its highest
        # counter (the event just made) above all.
        dots = sorted((d for d in self.dots if d[0] not in drop),
                      key=lambda d: (d[0] == keep, d[1] if d[0] == keep else d[2], d))
        return Clock(vector, frozenset(dots[-max_entries:]))

    # ----------------------------------------------------------------- wire form

    def to_wire(self) -> list[list[Any]]:
        """``[[actor, counter, ts], ...]`` for vector entries, then ``[actor, counter, ts, 1]``
        for dots."""
        entries: list[list[Any]] = [[a, c, ts] for a, (c, ts) in sorted(self.vector.items())]
        entries.extend([a, c, ts, 1] for a, c, ts in sorted(self.dots))
        return entries

    @classmethod
    def from_wire(cls, entries: Any) -> Clock:
        if not isinstance(entries, list):
            raise ValueError("a clock is a list of [actor, counter, timestamp] entries")
        if len(entries) > MAX_WIRE_ENTRIES:
            raise ValueError(f"a clock has at most {MAX_WIRE_ENTRIES} entries")
        vector: dict[str, tuple[int, float]] = {}
        dots: list[tuple[str, int, float]] = []
        for entry in entries:
            actor, counter, ts, is_dot = _parse_entry(entry)
            if is_dot:
                dots.append((actor, counter, ts))
            elif actor in vector:
                raise ValueError(f"clock names actor {actor!r} twice")
            else:
                vector[actor] = (counter, ts)
        return _normalized(vector, dots)

    def __hash__(self) -> int:
        return hash(_events_key(self))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Clock):
            return NotImplemented
        return _events_key(self) == _events_key(other)

    def __repr__(self) -> str:
        parts = [f"{a}:{c}" for a, (c, _) in sorted(self.vector.items())]
        parts += [f"({a}:{c})" for a, c, _ in sorted(self.dots)]
        return "Clock{" + ", ".join(parts) + "}"


def _events_key(clock: Clock) -> tuple[Any, ...]:
    """Equality is about events, not the timestamps that only guide truncation."""
    return (frozenset((a, c) for a, (c, _) in clock.vector.items()),
            frozenset((a, c) for a, c, _ in clock.dots))


def _parse_entry(entry: Any) -> tuple[str, int, float, bool]:
    if not isinstance(entry, list) or len(entry) not in (3, 4):
        raise ValueError("a clock entry is [actor, counter, timestamp] or a dot with a 4th item")
    actor, counter, ts = entry[0], entry[1], entry[2]
    if not isinstance(actor, str) or not actor or len(actor) > 256:
        raise ValueError("a clock actor is a non-empty string of at most 256 characters")
    if isinstance(counter, bool) or not isinstance(counter, int) or \
            not 0 < counter < MAX_COUNTER:
        raise ValueError(f"a clock counter is a positive integer below 2**48, not {counter!r}")
    return actor, counter, parse_timestamp(ts, "a clock timestamp"), len(entry) == 4


def parse_timestamp(ts: Any, what: str = "a timestamp") -> float:
    """A timestamp from outside: a finite number of seconds within ``MAX_TIMESTAMP`` of 0.

    NaN, infinities and huge integers are refused here, where they arrive, rather than
    breaking a comparison (a NaN heads every heap) or a float conversion later.
    """
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise ValueError(f"{what} is a number of seconds")
    if isinstance(ts, int) and abs(ts) > MAX_TIMESTAMP:
        raise ValueError(f"{what} must lie within {MAX_TIMESTAMP:g} of 0, not {ts}")
    value = float(ts)
    if not math.isfinite(value) or abs(value) > MAX_TIMESTAMP:
        raise ValueError(f"{what} must be finite and within {MAX_TIMESTAMP:g} of 0, "
                         f"not {ts!r}")
    return value


def _normalized(vector: dict[str, tuple[int, float]],
                dots: Iterable[tuple[str, int, float]]) -> Clock:
    """Fold dots that extend the vector contiguously; drop dots the vector already covers.

    A dot is one event whatever its timestamp: when the same event arrives twice (say, from
    two merged contexts stamped differently) it is kept once, with the later timestamp.
    """
    latest: dict[tuple[str, int], float] = {}
    for actor, counter, ts in dots:
        seen = latest.get((actor, counter))
        latest[(actor, counter)] = ts if seen is None else max(seen, ts)
    final = []
    # In (actor, counter) order, a fold makes the next dot of that actor contiguous in turn.
    for (actor, counter), ts in sorted(latest.items()):
        have = vector.get(actor, (0, 0.0))
        if counter <= have[0]:
            continue
        if counter == have[0] + 1:
            vector[actor] = (counter, max(ts, have[1]))
        else:
            final.append((actor, counter, ts))
    return Clock(vector, frozenset(final))


_EMPTY = Clock({}, frozenset())


# ====================================================================== versions


@dataclass(frozen=True)
class Version:
    """One write of a key: its value, the event that made it, and what its writer had seen."""

    value: Any
    clock: Clock
    dot: Dot
    timestamp: float
    tombstone: bool = False

    def history(self) -> Clock:
        """Every event this version knows: its context plus its own dot."""
        return self.clock.add(self.dot, self.timestamp)

    def obsoletes(self, other: Version) -> bool:
        """True when this version's writer had seen ``other``."""
        return self.dot != other.dot and self.clock.covers(other.dot)

    @cached_property
    def fingerprint(self) -> bytes:
        """A digest of the whole version, value included, in its canonical wire form.

        A dot names one write, so two replicas holding the same dot normally hold the same
        version. If a dot was ever issued twice (an actor that lost its storage), comparing
        fingerprints instead of dots is what lets replicas notice they differ.
        """
        return hashlib.blake2b(_wire_bytes(self), digest_size=16).digest()

    def to_wire(self) -> dict[str, Any]:
        return {"value": self.value, "clock": self.clock.to_wire(),
                "dot": [self.dot[0], self.dot[1]], "ts": self.timestamp,
                "tomb": self.tombstone}

    @classmethod
    def from_wire(cls, body: Any) -> Version:
        if not isinstance(body, dict):
            raise ValueError("a version is a map")
        try:
            dot = body["dot"]
            if not isinstance(dot, list) or len(dot) != 2:
                raise ValueError("a version's dot is [actor, counter]")
            actor, counter, _, _ = _parse_entry([dot[0], dot[1], 0.0])
            ts = parse_timestamp(body["ts"], "a version's ts")
            tomb = body["tomb"]
            clock = Clock.from_wire(body["clock"])
            value = body["value"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"a version map lacks a field or has a wrong one: {exc}") from None
        if not isinstance(tomb, bool):
            raise ValueError("a version's tomb is a boolean")
        return cls(None if tomb else value, clock, (actor, counter), ts, tomb)


def reconcile(versions: Iterable[Version]) -> list[Version]:
    """The causally maximal versions: drop every version another one has seen.

    Duplicates (the same dot arriving from several replicas) collapse into one. The result
    is ordered by dot, so every node that reconciles the same set gets the same list.
    """
    by_dot: dict[Dot, Version] = {}
    for v in versions:
        held = by_dot.get(v.dot)
        if held is None:
            by_dot[v.dot] = v
        elif held.fingerprint != v.fingerprint and _wire_bytes(v) > _wire_bytes(held):
            # Two different versions under one dot should never exist, but if they do, every
            # node must keep the same one whatever order the replicas answered in.
            by_dot[v.dot] = v
    candidates = list(by_dot.values())
    maximal = [v for v in candidates if not any(o.obsoletes(v) for o in candidates)]
    maximal.sort(key=lambda v: v.dot)
    return maximal


def _wire_bytes(version: Version) -> bytes:
    return cbor2.dumps(version.to_wire(), canonical=True)


def context_of(versions: Iterable[Version]) -> Clock:
    """The context a client gets back: the union of every sibling's history.

    A put carrying it supersedes exactly the siblings that were read, no more.
    """
    clock = Clock.empty()
    for v in versions:
        clock = clock.merge(v.history())
    return clock


def next_dot(actor: str, context: Clock, local: Sequence[Version], issued: int = 0) -> Dot:
    """The next dot ``actor`` issues for a key, given what its replica holds of the key.

    ``issued`` is the highest counter the actor recorded issuing for the key; versions
    alone are not enough, since once a truncated clock supersedes every version that
    mentions the actor they no longer show its counter. A context naming a counter of
    ``actor`` beyond that is refused: the actor never made that event, so the context was
    forged or comes from another cluster, and honouring it would let one put supersede
    writes the actor has yet to make.
    """
    top = issued
    for v in local:
        top = max(top, v.clock.counter(actor), v.dot[1] if v.dot[0] == actor else 0)
    claimed = context.counter(actor)
    if claimed > top:
        raise ValueError(f"the context names event {claimed} of actor {actor}, which only "
                         f"issued {top} for this key: it is not a context this cluster made")
    if top + 1 >= MAX_COUNTER:
        raise ValueError(f"actor {actor} has issued every dot it may for this key")
    return actor, top + 1


def live(versions: Iterable[Version]) -> list[Version]:
    """The versions that are not tombstones."""
    return [v for v in versions if not v.tombstone]


# ====================================================================== contexts


_CONTEXT_TAG = "dyn1"


def encode_context(clock: Clock) -> bytes:
    """The opaque context handed to clients: CBOR bytes, so it pickles and CBOR-encodes."""
    return cbor2.dumps([_CONTEXT_TAG, clock.to_wire()])


def decode_context(context: bytes | str | None) -> Clock:
    """Parse a context from a client (bytes, or the base64 text the CLI prints)."""
    if context is None or context == b"" or context == "":
        return Clock.empty()
    if isinstance(context, str):
        context = context_from_text(context)
    if not isinstance(context, (bytes, bytearray)):
        raise ValueError("a context is the bytes a get returned (or their base64 text)")
    try:
        tag, entries = cbor2.loads(bytes(context), max_depth=4, allow_indefinite=False,
                                    allow_duplicate_keys=False)
    except Exception:  # noqa: BLE001 - any decoding failure means "not one of ours"
        raise ValueError("the context is not one a get returned") from None
    if tag != _CONTEXT_TAG:
        raise ValueError("the context is not one a get returned")
    return Clock.from_wire(entries)


def context_entries(context: bytes) -> int:
    """The entries (vector and dots) of a context this node encoded, counted without
    building its clock: observers are told it on every answer, so it must be cheap."""
    return len(cbor2.loads(context)[1])


def context_text(context: bytes) -> str:
    """The base64 text form the CLI prints and accepts back with ``--context``."""
    return base64.b64encode(context).decode("ascii")


def context_from_text(text: str) -> bytes:
    """The context bytes behind the base64 text :func:`context_text` made."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a context given as text must be the base64 string a get printed") \
            from None
