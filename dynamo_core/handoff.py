"""Hinted handoff: the hints a stand-in node keeps for home nodes that were down.

When a home replica of a key cannot be reached, the coordinator sends the write to the next
healthy node of the extended preference list with a *hint* naming the intended owner
(paper section 4.6). The stand-in keeps hinted writes apart from its own replicas, in a
:class:`HintStore` on a storage engine of their own, and delivers them when the owner is back;
only then are they deleted.

Two rules shape this module:

* **Nothing acknowledged is lost.** A hint counts toward W, so it is written through a
  (normally durable) engine before the write is acknowledged, is reloaded on restart, and is
  deleted after delivery only if nothing new was merged into it meanwhile.
* **Nothing grows without bound.** The number of hints and their total size are capped; a
  hint that does not fit is refused with :class:`~dynamo_core.errors.Overloaded`, so the
  coordinator tries another node or fails the write instead of the stand-in filling its disk.

:class:`HandoffPlanner` is the pure decision of *whom to deliver to now*;
:class:`HintDelivery` carries it out as coroutines of the node core's scheduler (sends out,
replies in). Time always comes in from the core; nothing here reads a clock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from . import tasks
from .api import StorageEngine
from .errors import DynamoError, Overloaded
from .versions import Dot, Version, reconcile

log = logging.getLogger(__name__)

#: Separates the target node's name from ``bucket/key`` in an engine key. Node names and
#: bucket names never contain it, and the key may contain anything after the first ``/``.
SEPARATOR = "\x1f"

BucketKey = tuple[str, str]


# ====================================================================== hints


@dataclass(frozen=True)
class Hint:
    """Versions of one key that ``target`` (a home node) has not received yet."""

    target: str
    bucket: str
    key: str
    versions: list[Version]
    #: When the hint's current content was made (the time of the last add that changed it).
    created: float


@dataclass
class _Meta:
    """What the in-memory index keeps per stored hint: enough for the bounds and for expiry."""

    size: int
    created: float


def hint_key(target: str, bucket: str, key: str) -> str:
    """The engine key of a hint; refuses names that would make it ambiguous."""
    if not target or SEPARATOR in target:
        raise ValueError(f"a hint's target node name must be non-empty without \\x1f: {target!r}")
    if not bucket or "/" in bucket or SEPARATOR in bucket:
        raise ValueError(f"a bucket name must be non-empty without '/' or \\x1f: {bucket!r}")
    return f"{target}{SEPARATOR}{bucket}/{key}"


def split_hint_key(skey: str) -> tuple[str, str, str] | None:
    """``(target, bucket, key)`` of an engine key, or ``None`` if it is not a hint's key."""
    target, sep, rest = skey.partition(SEPARATOR)
    bucket, slash, key = rest.partition("/")
    if not sep or not slash or not target or not bucket:
        return None
    return target, bucket, key


def encode_hint(versions: Sequence[Version], created: float) -> bytes:
    return cbor2.dumps({"versions": [v.to_wire() for v in versions], "created": created})


def decode_hint(data: bytes) -> tuple[list[Version], float]:
    """Our own bytes, but a torn or foreign record raises ``ValueError`` rather than crashing."""
    try:
        record = cbor2.loads(data)
        versions = [Version.from_wire(v) for v in record["versions"]]
        created = float(record["created"])
    except Exception as exc:  # noqa: BLE001 - any failure means "not a hint we can read"
        raise ValueError(f"not a readable hint record: {exc}") from None
    return versions, created


def dots_of(versions: Iterable[Version]) -> list[Dot]:
    """The identity of a set of versions: their dots, in order (equal dots, equal content)."""
    return sorted(v.dot for v in versions)


class HintStore:
    """Durable, bounded hints: ``(target, bucket, key) -> versions``.

    Counts, sizes and creation times of the stored hints are mirrored in memory (one scan at
    open) so that the bounds, ``for_key`` (a stand-in answers reads with its hinted versions
    too) and ``expire`` never scan the engine. The size of a hint is the length of its engine
    key plus its value, which is what it costs on disk, give or take the engine's overhead.
    """

    def __init__(self, engine: StorageEngine, max_hints: int, max_bytes: int,
                 max_age: float) -> None:
        if max_hints < 1 or max_bytes < 1 or max_age <= 0:
            raise ValueError("max_hints, max_bytes and max_age must all be positive")
        self.engine = engine
        self.max_hints = max_hints
        self.max_bytes = max_bytes
        self.max_age = max_age
        #: target -> (bucket, key) -> meta, in the order the hints were first stored.
        self._by_target: dict[str, dict[BucketKey, _Meta]] = {}
        #: (bucket, key) -> targets holding a hint for it.
        self._by_key: dict[BucketKey, set[str]] = {}
        self._count = 0
        self._bytes = 0
        #: Records found unreadable at open and deleted (the runtime may log the number).
        self.discarded = 0
        self._load()

    # ----------------------------------------------------------------- open

    def _load(self) -> None:
        """Rebuild the index from the engine; a reopened store sees every hint it held.

        Hints are indexed oldest first, so delivery order survives the restart.
        """
        bad = []
        found = []
        for skey in list(self.engine.keys()):
            parts = split_hint_key(skey)
            data = self.engine.get(skey)
            if parts is None or data is None:
                bad.append(skey)
                continue
            try:
                _, created = decode_hint(data)
            except ValueError:
                bad.append(skey)
                continue
            found.append((created, parts, len(skey.encode()) + len(data)))
        for created, parts, size in sorted(found):
            self._index(parts, _Meta(size, created))
        for skey in bad:
            self.engine.delete(skey)
        self.discarded = len(bad)

    # ----------------------------------------------------------------- index upkeep

    def _index(self, parts: tuple[str, str, str], meta: _Meta) -> None:
        target, bucket, key = parts
        held = self._by_target.setdefault(target, {})
        old = held.get((bucket, key))
        if old is None:
            self._count += 1
            self._by_key.setdefault((bucket, key), set()).add(target)
        else:
            self._bytes -= old.size
        held[(bucket, key)] = meta
        self._bytes += meta.size

    def _unindex(self, target: str, bucket: str, key: str) -> None:
        held = self._by_target.get(target, {})
        meta = held.pop((bucket, key), None)
        if meta is None:
            return
        self._count -= 1
        self._bytes -= meta.size
        if not held:
            del self._by_target[target]
        targets = self._by_key[(bucket, key)]
        targets.discard(target)
        if not targets:
            del self._by_key[(bucket, key)]

    def _meta(self, target: str, bucket: str, key: str) -> _Meta | None:
        return self._by_target.get(target, {}).get((bucket, key))

    # ----------------------------------------------------------------- writes

    def add(self, target: str, bucket: str, key: str, versions: Sequence[Version],
            now: float) -> None:
        """Merge ``versions`` into the hint for ``target``; durable when this returns.

        Raises :class:`Overloaded` (and changes nothing) when a new hint would pass
        ``max_hints`` or the stored bytes would pass ``max_bytes``.
        """
        skey = hint_key(target, bucket, key)
        held = self.get(target, bucket, key)
        merged = reconcile([*held, *versions])
        if not merged or (held and dots_of(held) == dots_of(merged)):
            return  # nothing new: the stored hint already covers these versions
        data = encode_hint(merged, now)
        old = self._meta(target, bucket, key)
        size = len(skey.encode()) + len(data)
        self._check_bounds(old, size)
        self.engine.put(skey, data)
        self._index((target, bucket, key), _Meta(size, now))

    def _check_bounds(self, old: _Meta | None, size: int) -> None:
        """Refuse a hint that does not fit, saying which bound and how much is held."""
        if old is None and self._count >= self.max_hints:
            raise Overloaded(
                f"hint store full: max_hints is {self.max_hints} and {self._count} hints are "
                f"held; refusing a new hint until some are delivered or expire")
        total = self._bytes - (old.size if old else 0) + size
        if total > self.max_bytes:
            raise Overloaded(
                f"hint store full: max_bytes is {self.max_bytes} and {self._bytes} bytes are "
                f"held in {self._count} hints; this hint would bring it to {total} bytes")

    def delivered(self, hint: Hint) -> bool:
        """Delete the hint if it still holds exactly what was delivered; True if deleted.

        A write merged into the hint after the batch was taken changes its dots, and then the
        hint stays, to be delivered again with the new versions.
        """
        held = self.get(hint.target, hint.bucket, hint.key)
        if not held or dots_of(held) != dots_of(hint.versions):
            return False
        self._remove(hint.target, hint.bucket, hint.key)
        return True

    def expire(self, now: float) -> int:
        """Drop hints older than ``max_age``; returns how many went.

        A home node gone that long is presumably replaced; keeping its hints forever would let
        one dead node fill every stand-in.
        """
        old = [(t, bk) for t, held in self._by_target.items()
               for bk, meta in held.items() if now - meta.created > self.max_age]
        for target, (bucket, key) in old:
            self._remove(target, bucket, key)
        return len(old)

    def forget_all(self) -> int:
        """Drop every hint: they are stale (held from before this node was removed)."""
        return self.expire(float("inf"))

    def _remove(self, target: str, bucket: str, key: str) -> None:
        self.engine.delete(hint_key(target, bucket, key))
        self._unindex(target, bucket, key)

    # ----------------------------------------------------------------- reads

    def get(self, target: str, bucket: str, key: str) -> list[Version]:
        """The versions hinted for ``target``, or ``[]``."""
        if self._meta(target, bucket, key) is None:
            return []
        data = self.engine.get(hint_key(target, bucket, key))
        return [] if data is None else decode_hint(data)[0]

    def for_key(self, bucket: str, key: str) -> dict[str, list[Version]]:
        """Every hint held for one key, by target (reads only the hints that exist)."""
        targets = sorted(self._by_key.get((bucket, key), ()))
        return {t: self.get(t, bucket, key) for t in targets}

    def batch(self, target: str, limit: int) -> list[Hint]:
        """Up to ``limit`` hints for ``target``, oldest first, for one delivery round."""
        out = []
        for bucket, key in list(self._by_target.get(target, {}))[:max(0, limit)]:
            data = self.engine.get(hint_key(target, bucket, key))
            if data is not None:
                versions, created = decode_hint(data)
                out.append(Hint(target, bucket, key, versions, created))
        return out

    def targets(self) -> dict[str, int]:
        """Hints held per target node."""
        return {t: len(held) for t, held in self._by_target.items()}

    def pending(self) -> int:
        """How many hints are held in all."""
        return self._count

    @property
    def bytes_used(self) -> int:
        """Bytes the held hints take (engine keys plus values)."""
        return self._bytes

    def close(self) -> None:
        self.engine.close()


# ====================================================================== planning


class HandoffPlanner:
    """Whom to deliver hints to now: up targets, in turn, a few at a time, backing off failures.

    Pure: the runtime asks :meth:`due`, calls :meth:`started` for each target it starts a
    delivery to and :meth:`finished` when that delivery ends.
    """

    def __init__(self, max_concurrent_targets: int = 2, base_backoff: float = 1.0,
                 max_backoff: float = 30.0) -> None:
        if max_concurrent_targets < 1 or base_backoff <= 0 or max_backoff < base_backoff:
            raise ValueError("need max_concurrent_targets >= 1 and 0 < base_backoff <= max_backoff")
        self.max_concurrent_targets = max_concurrent_targets
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._active: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        #: The target most recently started: the next round begins after it (round-robin).
        self._last: str | None = None

    def due(self, targets: Mapping[str, int], is_up: Callable[[str], bool],
            now: float) -> list[str]:
        """Targets to start delivering to now, at most the free concurrency slots."""
        self._forget_idle(targets)
        slots = self.max_concurrent_targets - len(self._active)
        if slots <= 0:
            return []
        ready = [t for t in self._rotated(sorted(t for t, n in targets.items() if n > 0))
                 if t not in self._active and self._retry_at.get(t, now) <= now]
        chosen: list[str] = []
        for target in ready:
            if len(chosen) == slots:
                break
            if is_up(target):
                chosen.append(target)
        return chosen

    def _rotated(self, names: list[str]) -> list[str]:
        """``names`` starting just after the last target started, so each gets its turn."""
        if self._last is None:
            return names
        after = [n for n in names if n > self._last]
        return after + [n for n in names if n <= self._last]

    def _forget_idle(self, targets: Mapping[str, int]) -> None:
        """Backoff of a target with no hints left is moot: dropping it keeps state bounded."""
        for target in [t for t in self._failures if not targets.get(t)]:
            if target not in self._active:
                self._failures.pop(target, None)
                self._retry_at.pop(target, None)

    def started(self, target: str) -> None:
        self._active.add(target)
        self._last = target

    def finished(self, target: str, ok: bool, now: float) -> None:
        """End a delivery; a failure postpones the target by a doubling, capped backoff."""
        self._active.discard(target)
        if ok:
            self._failures.pop(target, None)
            self._retry_at.pop(target, None)
            return
        failures = self._failures.get(target, 0) + 1
        self._failures[target] = failures
        self._retry_at[target] = now + self.backoff(target)

    def backoff(self, target: str) -> float:
        """The wait after the target's latest failure (0 if it has not failed)."""
        failures = self._failures.get(target, 0)
        if failures == 0:
            return 0.0
        # The exponent is capped so a long outage cannot overflow the float.
        return min(self.max_backoff, self.base_backoff * 2.0 ** min(failures - 1, 64))

    def active(self) -> set[str]:
        return set(self._active)


# ====================================================================== delivery


#: Stores versions of many keys in a peer's own replicas; each item's result (see NodeCore).
PutMany = Callable[[str, Sequence[tuple[str, str, Sequence[Version]]]],
                   Awaitable[list[bool | str]]]


class HintDelivery:
    """Hands held hints to their home nodes once those are back, and deletes each one once
    acknowledged: a coroutine per target, driven by the node core's scheduler.

    Its collaborators are narrow: the hint store, a way to store keys in a peer's replicas
    (``put_many``), the failure detector's opinion (``is_up``), and the two clocks. It never
    sees the node.
    """

    def __init__(self, hints: HintStore, put_many: PutMany,
                 is_up: Callable[[str, float], bool], spawn: Callable[[str, Any], Any], *,
                 interval: float, batch: int, max_age: float,
                 now: Callable[[], float], wall: Callable[[], float],
                 logger: logging.Logger | logging.LoggerAdapter[Any] = log) -> None:
        self.hints = hints
        self.log = logger
        self.planner = HandoffPlanner()
        self._put_many = put_many
        self._is_up = is_up
        self._spawn = spawn
        self.interval = interval
        self.batch = batch
        self.max_age = max_age
        self._now = now
        self._wall = wall
        self.delivered = 0
        #: deliveries that raised something else than a DynamoError (a bug, a disk error)
        self.failures = 0

    async def run(self) -> None:
        """Forever: expire old hints, start a delivery to each home that is due."""
        while True:
            await tasks.sleep(self.interval)
            self.round()

    def round(self) -> None:
        expired = self.hints.expire(self._wall())
        if expired:
            self.log.warning("%d hints expired undelivered after %gs; anti-entropy repairs "
                        "their keys", expired, self.max_age)
        now = self._now()
        for target in self.planner.due(self.hints.targets(),
                                       lambda t: self._is_up(t, now), now):
            self.planner.started(target)
            self._spawn(f"handoff to {target}", self.deliver(target))

    async def deliver(self, target: str) -> None:
        """Hand a home that is back its hints, batch after batch; delete each once
        acknowledged.

        Whatever happens, the target's delivery slot is given back (``finally``): a batch
        that raised must not stop hinted handoff to that node for good.
        """
        ok = False
        try:
            # Batch after batch while the target takes them: the backlog drains at the
            # speed of round trips, not one batch per handoff interval.
            while batch := self.hints.batch(target, self.batch):
                results = await self._put_many(
                    target, [(h.bucket, h.key, h.versions) for h in batch])
                refused = [(h, r) for h, r in zip(batch, results, strict=True)
                           if isinstance(r, str)]
                for hint, result in zip(batch, results, strict=True):
                    if not isinstance(result, str) and self.hints.delivered(hint):
                        self.delivered += 1
                if refused:
                    hint, why = refused[0]
                    self.log.warning("%s refused %d hinted keys (first %s/%s: %s); kept until "
                                "they expire", target, len(refused), hint.bucket, hint.key, why)
                    break
            else:
                ok = True
        except DynamoError as exc:
            self.log.debug("handoff to %s paused: %s", target, exc)
        except Exception:  # logged, retried after the target's backoff
            self.failures += 1
            self.log.exception("handoff to %s failed", target)
        finally:
            self.planner.finished(target, ok, self._now())
