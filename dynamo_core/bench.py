"""``dynamo bench``: YCSB-style workloads against a cluster, with the floor measured alongside.

What a run does, in order:

1. **The floor.** A raw pyzmq DEALER/ROUTER round trip between this process and an echo
   server in another process on this machine, with the same payload size and no Dynamo
   involved, one in flight. Every operation's p50 is reported as a ratio to this one.
2. **Load.** ``--records`` keys (``user<i>``) are inserted, ``--threads`` at a time, into a
   bucket of the bench's own (``--bucket``, default ``bench``); measured as ``insert``.
3. **The measured phases.** YCSB's core workloads by name (``a`` 50/50 read/update, ``b``
   95/5, ``c`` read-only, ``f`` 50% read and 50% read-modify-write), keys chosen by YCSB's
   scrambled zipfian generator (constant 0.99). ``latency`` is workload a's mix with one
   request in flight. With no ``--workload`` a run does ``latency`` then ``a``: put and get
   latency at one in flight and throughput at ``--threads``, as the first bench did.
   A phase is either a *closed loop* (``--threads`` workers, each sending its next request
   when the last one is answered) or, with ``--rate``, an *open loop* (requests sent on a
   seeded Poisson or uniform schedule whatever the answers do, each latency counted from the
   intended send time, so that queueing in the system cannot hide from the figures as it
   does in a closed loop: "coordinated omission").
4. **The knee** (``--sweep``): open-loop steps at increasing offered rates until the achieved
   rate falls below 90% of the offered one, p99 passes ``--p99-bound``, or 1% of requests
   fail; the table of offered, achieved and p50/p99/p99.9 says where the knee is.
5. **Cleanup.** Every key the bench wrote is read and deleted with the context just read
   (``--keep`` skips this); the time it took is reported.

Updates carry the context the worker last saw for the key (from its read, its insert or its
previous update), as an application following the contract would; a blind put with no
context would pile siblings up on the hot keys. A read-modify-write writes with the context
it just read; it is timed as one ``rmw`` operation and its read and its write are counted in
``read`` and ``update`` as well, as YCSB does.

Measurement: ``time.perf_counter``; warm-up requests before each phase are not counted;
percentiles by nearest rank over every raw sample (samples of several client processes,
``--procs``, are merged before ranking); errors are counted per operation kind and by error
class, and never stop a run. A request a node refused as overloaded (``Busy``) is counted as
*refused*, apart from errors: the measured phases do not retry refusals (the clients'
backoff would hide them in the latency), so the bench shows how much a node sheds and the
latency of what it accepted. The CPU the client used is reported, so a client that was
itself the bottleneck shows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import IO, Any

import zmq

from .client import AsyncClient
from .errors import Busy, ConfigError, DynamoError, Unavailable
from .node import run_loop
from .progress import ProgressLine

ECHO_READY = "ready"
#: YCSB's zipfian constant.
ZIPFIAN_CONSTANT = 0.99
#: Largest ``--value-size`` accepted (a message holds every sibling of a key; 16 MiB max).
MAX_VALUE_SIZE = 1 << 20
MAX_PROCS = 64
#: An open-loop request is sent this much before its intended time at the latest: the event
#: loop's timers wake up to 1 ms late (epoll's resolution), and a request sent early is timed
#: from its actual send, so waking early costs nothing while waking late would bias latency.
EARLY_SECONDS = 0.001
#: An open-loop request sent more than this after its intended time counts as late.
LATE_SECONDS = 0.001
#: Sweep: offered rates as multiples of the first estimate, then on by this factor.
SWEEP_MULTIPLES = (0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)
SWEEP_GROWTH = 1.5
SWEEP_MAX_STEPS = 20
#: A sweep step fails (the knee is below it) when achieved < this x offered, ...
SWEEP_ACHIEVED = 0.9
#: ... or when more than this fraction of its requests failed.
SWEEP_MAX_ERRORS = 0.01
#: Ops in the latency phase of a default run (no --workload): at most this many.
DEFAULT_LATENCY_OPS = 2000
RAW_SAMPLES = 2000
#: A client process busier than this fraction of a core was probably the bottleneck.
BUSY_CLIENT = 0.8
EXTRA = "pip install 'dynamo-py[examples]'"


@dataclass(frozen=True)
class Mix:
    """A workload's operation proportions (they add up to 1)."""

    read: float
    update: float
    rmw: float
    text: str


WORKLOADS = {
    "a": Mix(0.5, 0.5, 0.0, "50% read, 50% update"),
    "b": Mix(0.95, 0.05, 0.0, "95% read, 5% update"),
    "c": Mix(1.0, 0.0, 0.0, "100% read"),
    "f": Mix(0.5, 0.0, 0.5, "50% read, 50% read-modify-write"),
    "latency": Mix(0.5, 0.5, 0.0, "50% read, 50% update, one in flight"),
}
KIND_ORDER = ("insert", "read", "update", "rmw", "delete")


class BenchUsageError(ValueError):
    """The options do not make a run (the command line turns this into exit status 2)."""


# ====================================================================== statistics


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``samples`` by nearest rank: the smallest sample that at
    least ``p`` percent of the samples are less than or equal to (no interpolation)."""
    if not samples:
        raise ValueError("no samples")
    return _nearest_rank(sorted(samples), p)


def _nearest_rank(ordered: Sequence[float], p: float) -> float:
    if not 0 < p <= 100:
        raise ValueError(f"a percentile is in (0, 100], got {p}")
    # exact decimal arithmetic: 99.9 / 100 * 1000 must be rank 999, not 1000
    rank = math.ceil(Fraction(repr(p)) * len(ordered) / 100)
    return ordered[max(1, rank) - 1]


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """count, p50/p99/p99.9/max/mean in milliseconds (None when there are no samples)."""
    doc: dict[str, Any] = {"count": len(samples)}
    if not samples:
        return {**doc, "p50": None, "p99": None, "p99.9": None, "max": None, "mean": None}
    ordered = sorted(samples)
    for p in (50, 99, 99.9):
        doc[f"p{p:g}"] = _nearest_rank(ordered, p) * 1000
    doc["max"] = ordered[-1] * 1000
    doc["mean"] = math.fsum(ordered) / len(ordered) * 1000
    return doc


# ====================================================================== key choice


def zeta(n: int, theta: float) -> float:
    """sum(1 / i**theta for i in 1..n): exact up to 10 000 terms, the rest by Euler-Maclaurin
    (relative error below 1e-12 at any n, and constant time)."""
    head = min(n, 10_000)
    total = math.fsum(i ** -theta for i in range(1, head + 1))
    if n > head:
        m = float(head)

        def f(x: float) -> float:
            return float(x ** -theta)

        def df(x: float) -> float:
            return float(-theta * x ** (-theta - 1))

        integral = math.log(n / m) if theta == 1 else (n ** (1 - theta) - m ** (1 - theta)) / (
            1 - theta)
        total += integral + (f(n) - f(m)) / 2 + (df(n) - df(m)) / 12
    return total


class ZipfianGenerator:
    """Ranks 0..items-1, rank ``k`` drawn with probability proportional to 1/(k+1)**theta.

    Gray et al.'s algorithm ("Quickly generating billion-record synthetic databases",
    SIGMOD 1994), as YCSB's ZipfianGenerator implements it: constant time per draw after
    computing zeta(items) once. Ranks 0 and 1 come out exactly; the tail is approximated.
    """

    def __init__(self, items: int, theta: float = ZIPFIAN_CONSTANT,
                 rng: random.Random | None = None) -> None:
        if items < 1:
            raise ValueError(f"a zipfian generator needs at least one item, got {items}")
        if not 0 < theta < 1:
            raise ValueError(f"the zipfian constant is in (0, 1), got {theta}")
        self.items = items
        self.theta = theta
        self.rng = rng or random.Random()
        self.zetan = zeta(items, theta)
        self.alpha = 1 / (1 - theta)
        self._second = 1 + 0.5 ** theta
        zeta2 = zeta(2, theta)
        self.eta = 0.0 if items <= 2 else (
            (1 - (2 / items) ** (1 - theta)) / (1 - zeta2 / self.zetan))

    def probability(self, rank: int) -> float:
        """The theoretical probability of ``rank`` (0-based)."""
        return float((rank + 1) ** -self.theta / self.zetan)

    def next(self) -> int:
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1:
            return 0
        if uz < self._second:
            return 1
        rank = int(self.items * (self.eta * u - self.eta + 1) ** self.alpha)
        return min(rank, self.items - 1)


def _mix64(z: int) -> int:
    """splitmix64's finalizer: a well-mixed 64-bit hash of a 64-bit integer."""
    z = (z + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


class Scrambler:
    """A seeded bijection of 0..n-1 that looks random: rank ``k`` -> item.

    A four-round balanced Feistel network over the smallest even number of bits covering
    ``n``, each round keyed and hashed by splitmix64, applied again while the result is
    ``n`` or more (cycle walking: a permutation of the larger power of two restricted to
    0..n-1 is a permutation of 0..n-1). Unlike YCSB's ``hash(rank) % n`` it has no
    collisions, so the item distribution is exactly the rank distribution, reshuffled: the
    hot ranks land on unrelated keys (hence all over the ring) instead of user0, user1, ...
    """

    CACHE = 1 << 16

    def __init__(self, n: int, seed: Any) -> None:
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits & 1
        self.half = bits // 2
        self.mask = (1 << self.half) - 1
        rng = random.Random(f"scramble/{seed}")
        self.keys = tuple(rng.getrandbits(64) for _ in range(4))
        self._cache: dict[int, int] = {}

    def __call__(self, x: int) -> int:
        cached = self._cache.get(x)
        if cached is not None:
            return cached
        y = x
        half, mask = self.half, self.mask
        while True:
            left, right = y >> half, y & mask
            for key in self.keys:
                left, right = right, left ^ (_mix64(right ^ key) & mask)
            y = (left << half) | right
            if y < self.n:
                break
        if len(self._cache) < self.CACHE:
            self._cache[x] = y
        return y


class ScrambledZipfian:
    """Items 0..items-1 with zipfian popularity, the popular ones scattered (YCSB's
    ScrambledZipfianGenerator, with a collision-free scramble). The scramble depends on
    ``seed`` only, so every client process of a run agrees on which keys are hot."""

    def __init__(self, items: int, rng: random.Random, seed: Any,
                 theta: float = ZIPFIAN_CONSTANT) -> None:
        self.ranks = ZipfianGenerator(items, theta, rng)
        self.scramble = Scrambler(items, seed)

    def next(self) -> int:
        return self.scramble(self.ranks.next())


def key_name(item: int) -> str:
    """The key of record ``item``."""
    return f"user{item}"


# ====================================================================== recording


class Tally:
    """A counter of finished requests the progress display reads (in-process twin of a
    ``multiprocessing.Value``)."""

    def __init__(self) -> None:
        self.value = 0


class Recorder:
    """Latencies (seconds) per operation kind, errors per kind and class, refusals per
    kind, and the same for the phase's top-level operations (an rmw is one top-level
    operation)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.errors: dict[str, Counter[str]] = {}
        self.refused: Counter[str] = Counter()
        self.not_found: Counter[str] = Counter()
        self.total: list[float] = []
        self.total_errors = 0
        self.total_refused = 0

    def ok(self, kind: str, seconds: float) -> None:
        self.samples.setdefault(kind, []).append(seconds)

    def fail(self, kind: str, exc: BaseException) -> None:
        if isinstance(exc, Busy):
            self.refused[kind] += 1
        else:
            self.errors.setdefault(kind, Counter())[type(exc).__name__] += 1

    def failed(self, exc: BaseException) -> None:
        """A top-level operation failed with ``exc`` (refused, or an error)."""
        if isinstance(exc, Busy):
            self.total_refused += 1
        else:
            self.total_errors += 1


#: One operation: called with its index and the time it is timed from (``perf_counter``);
#: records its own outcome and never raises.
Op = Callable[[int, float], Awaitable[None]]


async def closed_loop(op: Op, n: int, threads: int, tally: Any = None) -> float:
    """``n`` operations by ``threads`` workers, each sending its next one when the last is
    answered. Returns the seconds it took."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await op(i, time.perf_counter())
            if tally is not None:
                tally.value += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(threads, n))))
    return time.perf_counter() - began


@dataclass
class OpenLoopStats:
    """How an open-loop schedule went."""

    elapsed: float = 0.0
    #: requests that waited for a free slot because ``cap`` were outstanding
    capped: int = 0
    #: requests sent more than LATE_SECONDS after their intended time (cap or client lag)
    late: int = 0
    #: send time minus intended time of each request, seconds (0 when sent early)
    lag: list[float] = field(default_factory=list)
    max_outstanding: int = 0


def arrival_gaps(rate: float, arrivals: str, rng: random.Random) -> Iterator[float]:
    """Seconds between two intended send times: Poisson (exponential gaps) or uniform."""
    if arrivals == "uniform":
        while True:
            yield 1 / rate
    while True:
        yield rng.expovariate(rate)


async def open_loop(op: Op, n: int, rate: float, rng: random.Random, *,
                    arrivals: str = "poisson", cap: int = 1000,
                    tally: Any = None) -> OpenLoopStats:
    """``n`` operations sent on a schedule of ``rate`` per second, whatever the answers do.

    Each one is timed from its *intended* send time (or its actual one if it went out
    early), so time spent waiting behind slow requests counts. At most ``cap`` are
    outstanding: past that, the schedule waits for a slot, and the wait counts in the
    latency of the requests that waited (reported as ``capped``); none is dropped.
    """
    stats = OpenLoopStats()
    slots = asyncio.Semaphore(cap)
    tasks: set[asyncio.Task[None]] = set()
    outstanding = 0

    async def one(i: int, start: float) -> None:
        nonlocal outstanding
        try:
            await op(i, start)
        finally:
            outstanding -= 1
            slots.release()
            if tally is not None:
                tally.value += 1

    gaps = arrival_gaps(rate, arrivals, rng)
    clock = time.perf_counter
    began = clock()
    intended = began
    for i in range(n):
        if i:
            intended += next(gaps)
        delay = intended - clock() - EARLY_SECONDS
        if delay > 0:
            await asyncio.sleep(delay)
        if slots.locked():
            stats.capped += 1
        await slots.acquire()
        now = clock()
        lag = now - intended
        stats.lag.append(max(0.0, lag))
        if lag > LATE_SECONDS:
            stats.late += 1
        outstanding += 1
        stats.max_outstanding = max(stats.max_outstanding, outstanding)
        task = asyncio.create_task(one(i, min(now, intended)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    stats.elapsed = clock() - began
    return stats


# ====================================================================== phases


@dataclass(frozen=True)
class Settings:
    """What every client process of a run shares."""

    nodes: tuple[str, ...]
    bucket: str
    timeout: float
    records: int
    value_size: int
    seed: int
    #: the client's secret key file and the cluster's public key (a cluster with security)
    key: str | None = None
    server_key: str | None = None


@dataclass(frozen=True)
class PhaseSpec:
    """One phase, as one client process runs it (a run's numbers already split)."""

    name: str
    action: str  # "load", "run" or "cleanup"
    mix: str = "a"
    ops: int = 0
    threads: int = 1
    warmup: int = 0
    rate: float | None = None
    arrivals: str = "poisson"
    cap: int = 1000


@dataclass
class PhaseResult:
    """What a phase measured (in one process, or merged over several)."""

    name: str
    samples: dict[str, list[float]]
    errors: dict[str, dict[str, int]]
    not_found: dict[str, int]
    total: list[float]
    total_errors: int
    done: int
    elapsed: float
    cpu: float
    busy: float
    procs: int = 1
    capped: int = 0
    late: int = 0
    lag: list[float] = field(default_factory=list)
    max_outstanding: int = 0
    absent: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    total_refused: int = 0

    @staticmethod
    def merge(parts: Sequence[PhaseResult]) -> PhaseResult:
        """One result from several processes' results: raw samples concatenated (percentiles
        are then ranked over all of them), counts summed, the longest elapsed time."""
        if len(parts) == 1:
            return parts[0]
        samples: dict[str, list[float]] = {}
        errors: dict[str, Counter[str]] = {}
        not_found: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        for part in parts:
            for kind, values in part.samples.items():
                samples.setdefault(kind, []).extend(values)
            for kind, classes in part.errors.items():
                errors.setdefault(kind, Counter()).update(classes)
            not_found.update(part.not_found)
            refused.update(part.refused)
        return PhaseResult(
            name=parts[0].name, samples=samples,
            errors={k: dict(v) for k, v in errors.items()}, not_found=dict(not_found),
            total=[s for p in parts for s in p.total],
            total_errors=sum(p.total_errors for p in parts), done=sum(p.done for p in parts),
            elapsed=max(p.elapsed for p in parts), cpu=sum(p.cpu for p in parts),
            busy=max(p.busy for p in parts), procs=max(1, sum(p.procs for p in parts if p.done)),
            capped=sum(p.capped for p in parts), late=sum(p.late for p in parts),
            lag=[s for p in parts for s in p.lag],
            max_outstanding=sum(p.max_outstanding for p in parts),
            absent=sum(p.absent for p in parts), refused=dict(refused),
            total_refused=sum(p.total_refused for p in parts))


def _share(total: int, index: int, procs: int) -> int:
    """Process ``index``'s part of ``total`` split as evenly as it goes."""
    return total // procs + (1 if index < total % procs else 0)


def split_spec(spec: PhaseSpec, procs: int) -> list[PhaseSpec]:
    """The spec each of ``procs`` client processes runs: ops, threads, warm-up, rate and
    the outstanding cap divided between them. A closed loop with fewer threads than
    processes (the latency phase: one in flight) runs in the first processes only."""
    if procs == 1:
        return [spec]
    closed = spec.action == "run" and spec.rate is None
    active = min(procs, spec.threads) if closed else procs
    parts = []
    for j in range(procs):
        if j >= active:
            parts.append(PhaseSpec(spec.name, spec.action, spec.mix, 0, 1, 0))
            continue
        parts.append(PhaseSpec(
            spec.name, spec.action, spec.mix, _share(spec.ops, j, active),
            max(1, _share(spec.threads, j, active)), _share(spec.warmup, j, active),
            None if spec.rate is None else spec.rate / active, spec.arrivals,
            max(1, _share(spec.cap, j, active))))
    return parts


class BenchWorker:
    """One client process's side of a run: its key chooser, its random numbers and the
    contexts it has seen, kept from one phase to the next."""

    def __init__(self, settings: Settings, index: int = 0, procs: int = 1,
                 tally: Any = None) -> None:
        self.settings = settings
        self.index = index
        self.procs = procs
        self.tally = tally if tally is not None else Tally()
        self.contexts: dict[str, bytes] = {}
        self.rng = random.Random(f"{settings.seed}/ops/{index}")
        self._values = random.Random(f"{settings.seed}/values/{index}")
        self.keys = ScrambledZipfian(settings.records, self.rng, settings.seed)
        self._phases = 0

    def my_records(self) -> range:
        return range(self.index, self.settings.records, self.procs)

    def run(self, spec: PhaseSpec) -> PhaseResult:
        return run_loop(self.run_async(spec))  # uvloop when installed, as nodes run

    async def run_async(self, spec: PhaseSpec) -> PhaseResult:
        s = self.settings
        self._phases += 1
        # the measured phases see refusals; the load and the cleanup retry them
        async with AsyncClient(list(s.nodes), timeout=s.timeout, bucket=s.bucket,
                               retry=spec.action != "run", key=s.key,
                               server_key=s.server_key) as client:
            rec = Recorder()
            if spec.action == "load":
                mine = [key_name(i) for i in self.my_records()]
                # connections up and membership known before the first timed insert
                await closed_loop(self._reader(client, Recorder()), min(20, len(mine)),
                                  spec.threads)
                op = self._inserter(client, rec, mine)
                count = len(mine)
            elif spec.action == "cleanup":
                mine = [key_name(i) for i in self.my_records()]
                op = self._deleter(client, rec, mine)
                count = len(mine)
            else:
                count = spec.ops
                op = self._workload(client, rec, WORKLOADS[spec.mix])
                if spec.warmup:
                    warm = self._workload(client, Recorder(), WORKLOADS[spec.mix])
                    await self._drive(spec, warm, spec.warmup, f"warm-up/{self._phases}")
            self.tally.value = 0
            cpu0 = time.process_time()
            stats = await self._drive(spec, op, count, str(self._phases))
            cpu = time.process_time() - cpu0
        return PhaseResult(
            name=spec.name, samples=rec.samples,
            errors={k: dict(v) for k, v in rec.errors.items()}, not_found=dict(rec.not_found),
            total=rec.total, total_errors=rec.total_errors, done=count,
            elapsed=stats.elapsed, cpu=cpu,
            busy=cpu / stats.elapsed if count and stats.elapsed else 0.0,
            capped=stats.capped, late=stats.late, lag=stats.lag,
            max_outstanding=stats.max_outstanding, absent=rec.not_found.get("delete", 0),
            refused=dict(rec.refused), total_refused=rec.total_refused)

    async def _drive(self, spec: PhaseSpec, op: Op, count: int, tag: str) -> OpenLoopStats:
        if spec.action == "run" and spec.rate is not None:
            rng = random.Random(f"{self.settings.seed}/arrivals/{self.index}/{tag}")
            return await open_loop(op, count, spec.rate, rng, arrivals=spec.arrivals,
                                   cap=spec.cap, tally=self.tally)
        elapsed = await closed_loop(op, count, spec.threads, self.tally)
        return OpenLoopStats(elapsed=elapsed)

    # ------------------------------------------------------------------ operations

    def _value(self) -> bytes:
        return self._values.randbytes(self.settings.value_size)

    async def _get(self, client: AsyncClient, key: str, rec: Recorder,
                   start: float) -> tuple[Exception | None, bytes | None]:
        """Read ``key``; (the error, None) or (None, the context read)."""
        try:
            result = await client.get(key)
        except Exception as exc:  # noqa: BLE001 -- counted by class; a run never dies of one
            rec.fail("read", exc)
            return exc, None
        rec.ok("read", time.perf_counter() - start)
        if not result.values:
            rec.not_found["read"] += 1
        if result.context:
            self.contexts[key] = result.context
        return None, result.context

    async def _put(self, client: AsyncClient, key: str, context: bytes | None, rec: Recorder,
                   start: float, kind: str = "update") -> Exception | None:
        """Write a fresh value to ``key`` with ``context``; the error, or None."""
        try:
            new = await client.put(key, self._value(), context=context)
        except Exception as exc:  # noqa: BLE001 -- counted by class; a run never dies of one
            rec.fail(kind, exc)
            return exc
        rec.ok(kind, time.perf_counter() - start)
        self.contexts[key] = new
        return None

    def _reader(self, client: AsyncClient, rec: Recorder) -> Op:
        async def op(_i: int, start: float) -> None:
            await self._get(client, key_name(self.keys.next()), rec, start)
        return op

    def _inserter(self, client: AsyncClient, rec: Recorder, keys: list[str]) -> Op:
        async def op(i: int, start: float) -> None:
            error = await self._put(client, keys[i], None, rec, start, "insert")
            if error is None:
                rec.total.append(time.perf_counter() - start)
            else:
                rec.failed(error)
        return op

    def _deleter(self, client: AsyncClient, rec: Recorder, keys: list[str]) -> Op:
        async def op(i: int, start: float) -> None:
            key = keys[i]
            try:
                result = await client.get(key)
                if not result.values:
                    rec.not_found["delete"] += 1
                    return
                await client.delete(key, context=result.context)
            except Exception as exc:  # noqa: BLE001 -- counted by class
                rec.fail("delete", exc)
                rec.failed(exc)
                return
            self.contexts.pop(key, None)
            seconds = time.perf_counter() - start
            rec.ok("delete", seconds)
            rec.total.append(seconds)
        return op

    def _workload(self, client: AsyncClient, rec: Recorder, mix: Mix) -> Op:
        async def op(_i: int, start: float) -> None:
            key = key_name(self.keys.next())
            u = self.rng.random()
            error: Exception | None
            if u < mix.read:
                error, _ = await self._get(client, key, rec, start)
            elif u < mix.read + mix.update:
                error = await self._put(client, key, self.contexts.get(key), rec, start)
            else:
                error, context = await self._get(client, key, rec, start)
                if error is None:
                    error = await self._put(client, key, context, rec, time.perf_counter())
                if error is None:
                    rec.ok("rmw", time.perf_counter() - start)
                else:
                    rec.fail("rmw", error)
            if error is None:
                rec.total.append(time.perf_counter() - start)
            else:
                rec.failed(error)
        return op


# ====================================================================== client processes


class InlineRunner:
    """Runs every phase in this process."""

    def __init__(self, settings: Settings) -> None:
        self.worker = BenchWorker(settings)
        self.procs = 1

    def run(self, spec: PhaseSpec) -> PhaseResult:
        return self.worker.run(spec)

    def done(self) -> int:
        return int(self.worker.tally.value)

    def close(self, kill: bool = False) -> float:
        """Stop; the CPU seconds used by other processes (none here)."""
        return 0.0


def _worker_main(conn: Any, settings: Settings, index: int, procs: int, tally: Any) -> None:
    """A client process: run the phases the parent sends until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    worker = BenchWorker(settings, index, procs, tally)
    while True:
        spec = conn.recv()
        if spec is None:
            conn.send(time.process_time())
            return
        try:
            conn.send(worker.run(spec))
        except Exception as exc:  # noqa: BLE001 -- reported by the parent, with its class
            conn.send(f"{type(exc).__name__}: {exc}")


class ProcessRunner:
    """Runs every phase in ``procs`` client processes at once and merges what they measured."""

    def __init__(self, settings: Settings, procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs = procs
        self.tallies = [ctx.Value("q", 0, lock=False) for _ in range(procs)]
        self.conns: list[Any] = []
        self.processes: list[Any] = []
        for j in range(procs):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, name=f"dynamo-bench-{j}", daemon=True,
                               args=(theirs, settings, j, procs, self.tallies[j]))
            proc.start()
            theirs.close()
            self.conns.append(mine)
            self.processes.append(proc)

    def run(self, spec: PhaseSpec) -> PhaseResult:
        for tally in self.tallies:
            tally.value = 0
        for conn, part in zip(self.conns, split_spec(spec, self.procs), strict=True):
            conn.send(part)
        results: list[PhaseResult] = []
        for j, conn in enumerate(self.conns):
            try:
                answer = conn.recv()
            except EOFError:
                raise OSError(f"bench client process {j} died during {spec.name}") from None
            if isinstance(answer, str):
                raise OSError(f"bench client process {j} failed in {spec.name}: {answer}")
            results.append(answer)
        return PhaseResult.merge(results)

    def done(self) -> int:
        return sum(int(t.value) for t in self.tallies)

    def close(self, kill: bool = False) -> float:
        """Stop the processes (at once if ``kill``); the CPU seconds they used in all."""
        cpu = 0.0
        for conn, proc in zip(self.conns, self.processes, strict=True):
            if kill or not proc.is_alive():
                continue
            try:
                conn.send(None)
                answer = conn.recv() if conn.poll(5) else None
            except (OSError, EOFError, ValueError):
                continue
            if isinstance(answer, float):
                cpu += answer
        for proc in self.processes:
            if kill:
                proc.kill()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        return cpu


# ====================================================================== progress


class Progress:
    """A progress bar on stderr when it is a terminal; otherwise one line every
    ``quiet_every`` seconds of a long phase (nothing for phases shorter than that)."""

    def __init__(self, enabled: bool, stream: IO[str] | None = None,
                 quiet_every: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.quiet_every = quiet_every

    @contextmanager
    def phase(self, label: str, total: int, done: Callable[[], int]) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._show, args=(label, total, done, stop),
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if self.tty:
                self.stream.write("\r\x1b[K")  # the bar goes: the phase's table follows
                self.stream.flush()

    def _show(self, label: str, total: int, done: Callable[[], int],
              stop: threading.Event) -> None:
        line = ProgressLine(f"dynamo bench: {label}", self.stream, self.quiet_every)
        began = time.monotonic()
        while not stop.wait(0.2 if self.tty else self.quiet_every):
            count = min(done(), total)
            elapsed = time.monotonic() - began
            line.update(count, total, f"ops, {count / elapsed if elapsed else 0.0:,.0f} ops/s")


# ====================================================================== raw floor


def echo_server(address: str) -> None:
    """A ROUTER that sends every frame straight back (run in its own process)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port(address)
    print(f"{ECHO_READY} {port}", flush=True)
    try:
        while True:
            sock.send_multipart(sock.recv_multipart())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)
        ctx.term()


def raw_round_trip(count: int, payload: int) -> list[float]:
    """Round-trip times of a DEALER to a ROUTER in another process, sequentially."""
    proc = subprocess.Popen([sys.executable, "-m", "dynamo_core.bench", "--echo"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != ECHO_READY:
            raise OSError("the echo server for the raw round trip did not start")
        sock.connect(f"tcp://127.0.0.1:{line[1]}")
        frame = os.urandom(payload)
        times = []
        for i in range(count + 50):
            start = time.perf_counter()
            sock.send(frame)
            if not sock.poll(5000):
                raise OSError("the echo server stopped answering")
            sock.recv()
            if i >= 50:  # warm-up round trips are not counted
                times.append(time.perf_counter() - start)
        return times
    finally:
        sock.close(0)
        ctx.term()
        proc.kill()
        proc.wait()


# ====================================================================== the command line


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value
    return parse


def _above_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def _rates(text: str) -> list[float]:
    return [_above_zero(part) for part in text.split(",") if part.strip()]


DESCRIPTION = """\
load generator: YCSB workloads, closed or open loop, latency percentiles against the raw
ZeroMQ round trip measured in the same run.

With no --workload, a run measures latency with one request in flight (workload a's mix:
put and get, at most 2000 ops) and then throughput with workload a at --threads in
flight. --workload latency runs the first part alone; a, b, c or f the second alone.
Before the measured phases the raw pyzmq DEALER/ROUTER round trip is measured and
--records keys are loaded; after them every key the bench wrote is deleted (--keep skips
that).

Closed loop (default): --threads workers, each sending its next request when the last is
answered. Open loop (--rate R): requests sent at R per second on a seeded Poisson (or
uniform) schedule whatever the answers do, each timed from its intended send time, so
queueing shows in the latency; at most --max-outstanding in flight (requests that had to
wait for a slot are counted, and the wait is in their latency).

--sweep: open-loop steps at rising offered rates (multiples of the closed-loop throughput,
or of --rate) until achieved < 90% of offered, p99 > --p99-bound or 1% of requests fail;
prints offered, achieved and p50/p99/p99.9 per step and the knee."""


def add_arguments(p: argparse.ArgumentParser, default_node: str,
                  address: Callable[[str], str]) -> None:
    """The options of ``dynamo bench`` (the command line's parser calls this)."""
    p.description = DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.set_defaults(default_node=default_node)
    p.add_argument("--node", type=address, action="append", dest="nodes", metavar="ADDR",
                   help=f"node address (repeatable; default {default_node})")
    p.add_argument("--workload", choices=sorted(WORKLOADS),
                   help="a: 50/50 read/update; b: 95/5; c: read only; f: 50%% read, 50%% "
                        "read-modify-write; latency: a's mix, one in flight (default: "
                        "latency, then a)")
    p.add_argument("--records", "--keys", type=_int_in(1, 100_000_000), default=1000,
                   metavar="N", help="keys loaded before the run, chosen zipfian (default 1000)")
    p.add_argument("--ops", "--requests", type=_int_in(1), default=10_000, metavar="N",
                   help="measured operations per phase (default 10000)")
    p.add_argument("--threads", "--concurrency", type=_int_in(1, 100_000), default=16,
                   metavar="K", help="requests in flight in a closed loop, and in the load "
                                     "and cleanup (default 16)")
    p.add_argument("--procs", type=_int_in(1, MAX_PROCS), default=1, metavar="P",
                   help="client processes sharing --threads, --ops and --rate, their samples "
                        "merged (default 1)")
    p.add_argument("--value-size", type=_int_in(1, MAX_VALUE_SIZE), default=100,
                   metavar="BYTES", help="bytes per value (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    p.add_argument("--rate", type=_above_zero, metavar="R",
                   help="open loop: offered operations per second")
    p.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson",
                   help="open-loop send times (default poisson)")
    p.add_argument("--max-outstanding", type=_int_in(1, 1_000_000), default=1000, metavar="N",
                   help="open loop: requests in flight at most (default 1000)")
    p.add_argument("--warmup", type=_int_in(0), metavar="N",
                   help="uncounted operations before each phase (default ops/10, at most 500)")
    p.add_argument("--sweep", action="store_true",
                   help="find the knee: open-loop steps at rising rates")
    p.add_argument("--sweep-rates", type=_rates, metavar="R1,R2,...",
                   help="the sweep's offered rates (default: multiples of the measured "
                        "throughput)")
    p.add_argument("--step-seconds", type=_above_zero, default=3.0, metavar="S",
                   help="seconds of offered load per sweep step (default 3)")
    p.add_argument("--p99-bound", type=_above_zero, default=100.0, metavar="MS",
                   help="a sweep step whose p99 passes this many ms is past the knee "
                        "(default 100)")
    p.add_argument("--bucket", default="bench", help="bucket of the bench's keys "
                                                     "(default 'bench')")
    p.add_argument("--keep", action="store_true", help="leave the keys in place afterwards")
    p.add_argument("--timeout", type=_above_zero, default=10.0,
                   help="seconds a request may take before it counts as failed (default 10)")
    p.add_argument("--plot", metavar="FILE",
                   help="PNG of p50/p99/p99.9 against throughput (needs matplotlib: "
                        f"{EXTRA})")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")


def check_args(args: argparse.Namespace) -> None:
    """What the parser cannot check on one option alone; raises BenchUsageError."""
    if args.procs > args.threads:
        raise BenchUsageError(f"--procs {args.procs} needs at least as many --threads "
                              f"(each client process runs at least one)")
    if args.rate is not None and args.rate < args.procs:
        raise BenchUsageError(f"--rate {args.rate:g} is below one request per second per "
                              f"client process (--procs {args.procs})")
    if args.rate is not None and args.workload == "latency":
        raise BenchUsageError("--rate needs a workload (a, b, c or f): the latency phase "
                              "keeps one request in flight")
    if args.sweep_rates and not args.sweep:
        raise BenchUsageError("--sweep-rates needs --sweep")
    if args.sweep_rates is not None and not args.sweep_rates:
        raise BenchUsageError("--sweep-rates names no rate")
    if not args.bucket:
        raise BenchUsageError("--bucket must not be empty")
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError(f"--plot needs matplotlib, which is not installed: {EXTRA}")
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise BenchUsageError(f"--plot {args.plot}: no directory {folder}")


# ====================================================================== the run


def _warmup(args: argparse.Namespace, ops: int, rate: float | None = None) -> int:
    n = args.warmup if args.warmup is not None else min(500, ops // 10)
    if rate is not None:  # an open loop's warm-up is at its rate: at most a second of it
        n = min(n, max(1, int(rate)))
    return int(n)


class Bench:
    """One ``dynamo bench`` run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.nodes: list[str] = args.nodes or [getattr(args, "default_node",
                                                       "tcp://127.0.0.1:7101")]
        self.settings = Settings(tuple(self.nodes), args.bucket, args.timeout, args.records,
                                 args.value_size, args.seed, args.key_file or None,
                                 args.server_key_file or None)
        self.progress = Progress(not args.no_progress)
        self.runner: InlineRunner | ProcessRunner | None = None
        self.raw: dict[str, Any] = {}

    def phase(self, spec: PhaseSpec, label: str, total: int) -> PhaseResult:
        assert self.runner is not None
        runner = self.runner
        with self.progress.phase(label, total, runner.done):
            return runner.run(spec)

    def preflight(self) -> None:
        """One read, so that a missing cluster fails in seconds, not after every timeout."""
        async def probe() -> None:
            async with AsyncClient(self.nodes, timeout=min(self.args.timeout, 5.0),
                                   bucket=self.args.bucket, key=self.settings.key,
                                   server_key=self.settings.server_key) as client:
                await client.get(key_name(0))
        try:
            asyncio.run(probe())
        except DynamoError as exc:
            raise Unavailable(f"no answer from {', '.join(self.nodes)} ({exc}); is a "
                              f"cluster running there? (dynamo cluster starts one)") from None

    def run(self) -> dict[str, Any]:
        args = self.args
        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        self.preflight()
        self.raw = summarize(raw_round_trip(RAW_SAMPLES, args.value_size))
        doc: dict[str, Any] = {"params": self.params(),
                               "raw_zmq_round_trip_ms": self.raw}
        other_cpu = 0.0
        self.runner = (ProcessRunner(self.settings, args.procs) if args.procs > 1
                       else InlineRunner(self.settings))
        interrupted = False
        try:
            try:
                self.measure(doc)
            except KeyboardInterrupt:
                interrupted = True
                print("dynamo bench: interrupted; cleaning up (Ctrl-C again to skip)",
                      file=sys.stderr, flush=True)
                other_cpu += self.runner.close(kill=True)
                self.runner = InlineRunner(self.settings)
            doc["cleanup"] = self.cleanup()
        finally:
            other_cpu += self.runner.close()
        if interrupted:
            raise KeyboardInterrupt
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0 + other_cpu
        doc["client"] = self.client_doc(doc, cpu, wall)
        doc["ratios"] = {f"{phase}.{kind}": op["p50_over_raw"]
                         for phase in ("load", "latency", "run")
                         if isinstance(doc.get(phase), dict)
                         for kind, op in doc[phase]["operations"].items()
                         if op["p50_over_raw"] is not None}
        doc["operations"] = {**doc["load"]["operations"],
                             **(doc.get("run") or doc["latency"])["operations"]}
        return doc

    def params(self) -> dict[str, Any]:
        a = self.args
        return {"workload": a.workload or "latency+a", "phases": self.phase_names(),
                "records": a.records, "ops": a.ops, "threads": a.threads, "procs": a.procs,
                "rate": a.rate, "arrivals": a.arrivals, "max_outstanding": a.max_outstanding,
                "value_size": a.value_size, "nodes": self.nodes, "seed": a.seed,
                "bucket": a.bucket, "timeout": a.timeout, "zipfian_constant": ZIPFIAN_CONSTANT,
                "sweep": a.sweep, "sweep_rates": a.sweep_rates,
                "step_seconds": a.step_seconds, "p99_bound_ms": a.p99_bound, "keep": a.keep,
                "cpu_count": os.cpu_count()}

    def phase_names(self) -> list[str]:
        w = self.args.workload
        return ["latency", "a"] if w is None else [w]

    def measure(self, doc: dict[str, Any]) -> None:
        args = self.args
        load = self.phase(PhaseSpec("load", "load", threads=args.threads),
                          "load", args.records)
        doc["load"] = self.phase_doc(load, "load", "closed", args.threads, None)
        if load.done and not load.samples.get("insert"):
            errors = ", ".join(f"{c} x{n}" for c, n in load.errors.get("insert", {}).items())
            raise DynamoError(f"every insert of the load phase failed ({errors})")
        for name in self.phase_names():
            if name == "latency":
                ops = args.ops if args.workload else min(args.ops, DEFAULT_LATENCY_OPS)
                spec = PhaseSpec("latency", "run", "latency", ops, 1, _warmup(args, ops))
                result = self.phase(spec, "latency (1 in flight)", ops)
                doc["latency"] = self.phase_doc(result, "latency", "closed", 1, None)
                continue
            rate = args.rate
            spec = PhaseSpec(name, "run", name, args.ops, args.threads,
                             _warmup(args, args.ops, rate), rate, args.arrivals,
                             args.max_outstanding)
            label = f"workload {name}" + (f" at {rate:g}/s" if rate else "")
            result = self.phase(spec, label, args.ops)
            doc["run"] = self.phase_doc(result, name, "closed" if rate is None else "open",
                                        args.threads, rate)
        if args.sweep:
            doc["sweep"] = self.sweep(doc)

    def sweep(self, doc: dict[str, Any]) -> dict[str, Any]:
        args = self.args
        mix = args.workload if args.workload in ("a", "b", "c", "f") else "a"
        if args.sweep_rates:
            rates = list(args.sweep_rates)
            base = rates[0]
        else:
            measured = doc.get("run") or doc.get("latency") or {}
            base = args.rate or measured.get("achieved_ops_per_s") or measured.get(
                "ops_per_s") or 100.0
            rates = [base * m for m in SWEEP_MULTIPLES]
            while len(rates) < SWEEP_MAX_STEPS:
                rates.append(rates[-1] * SWEEP_GROWTH)
        rates = [max(float(self.args.procs), round(r)) for r in rates]
        steps: list[dict[str, Any]] = []
        knee: float | None = None
        stopped = "every offered rate was served"
        for rate in rates:
            ops = max(50, int(rate * args.step_seconds))
            spec = PhaseSpec(f"sweep {rate:g}/s", "run", mix, ops, args.threads,
                             _warmup(args, ops, rate), rate, args.arrivals,
                             args.max_outstanding)
            result = self.phase(spec, f"sweep: {rate:g}/s offered", ops)
            step = self.phase_doc(result, mix, "open", args.threads, rate)
            total = step["all"]
            row = {"offered_ops_per_s": rate, "achieved_ops_per_s": step["achieved_ops_per_s"],
                   "p50": total["p50"], "p99": total["p99"], "p99.9": total["p99.9"],
                   "max": total["max"], "count": total["count"], "errors": step["errors"],
                   "refused": step["refused"], "refused_fraction": step["refused_fraction"],
                   "delayed_by_cap": step["delayed_by_cap"], "late": step["late"],
                   "client_busy": step["client_busy"], "operations": step["operations"]}
            steps.append(row)
            why = self.past_knee(row, ops)
            if why:
                stopped = f"at {rate:g}/s offered: {why}"
                break
            knee = rate
        return {"workload": mix, "mode": "open", "arrivals": args.arrivals,
                "step_seconds": args.step_seconds, "base_ops_per_s": base, "steps": steps,
                "knee_ops_per_s": knee, "stopped": stopped,
                "rule": f"achieved >= {SWEEP_ACHIEVED:.0%} of offered, p99 <= "
                        f"{args.p99_bound:g} ms, errors and refusals <= "
                        f"{SWEEP_MAX_ERRORS:.0%} each"}

    def past_knee(self, row: dict[str, Any], ops: int) -> str:
        if row["achieved_ops_per_s"] < SWEEP_ACHIEVED * row["offered_ops_per_s"]:
            return (f"achieved {row['achieved_ops_per_s']:.0f}/s, below "
                    f"{SWEEP_ACHIEVED:.0%} of offered")
        if row["p99"] is None:
            return "no request succeeded"
        if row["p99"] > self.args.p99_bound:
            return f"p99 {row['p99']:.1f} ms above {self.args.p99_bound:g} ms"
        if row["errors"] > SWEEP_MAX_ERRORS * ops:
            return f"{row['errors']} of {ops} requests failed"
        if row["refused"] > SWEEP_MAX_ERRORS * ops:
            return f"{row['refused']} of {ops} requests were refused as overloaded"
        return ""

    def cleanup(self) -> dict[str, Any]:
        if self.args.keep:
            return {"skipped": True, "keys_left": self.args.records}
        result = self.phase(PhaseSpec("cleanup", "cleanup", threads=self.args.threads),
                            "cleanup", self.args.records)
        errors = sum(sum(c.values()) for c in result.errors.values())
        return {"skipped": False, "keys_deleted": len(result.samples.get("delete", [])),
                "keys_absent": result.absent, "errors": errors,
                "errors_by_class": result.errors.get("delete", {}),
                "seconds": result.elapsed}

    def phase_doc(self, r: PhaseResult, workload: str, mode: str, threads: int,
                  rate: float | None) -> dict[str, Any]:
        elapsed = r.elapsed or math.nan
        raw_p50 = self.raw.get("p50")

        def op_doc(samples: list[float], errors: dict[str, int], refused: int,
                   not_found: int = 0) -> dict[str, Any]:
            d = summarize(samples)
            d["errors"] = sum(errors.values())
            d["errors_by_class"] = dict(errors)
            d["refused"] = refused
            d["ops_per_s"] = len(samples) / r.elapsed if r.elapsed else 0.0
            d["p50_over_raw"] = d["p50"] / raw_p50 if d["p50"] is not None and raw_p50 else None
            if not_found:
                d["not_found"] = not_found
            return d

        kinds = [k for k in KIND_ORDER if k in r.samples or k in r.errors or k in r.refused]
        operations = {k: op_doc(r.samples.get(k, []), r.errors.get(k, {}),
                                r.refused.get(k, 0), r.not_found.get(k, 0)) for k in kinds}
        everything = op_doc(r.total, {"failed": r.total_errors} if r.total_errors else {},
                            r.total_refused)
        answered = len(r.total) + r.total_errors + r.total_refused
        doc: dict[str, Any] = {
            "workload": workload, "mode": mode, "threads": threads if mode == "closed" else None,
            "rate": rate, "ops": r.done, "seconds": r.elapsed,
            "ops_per_s": len(r.total) / elapsed if r.elapsed else 0.0,
            "errors": r.total_errors, "operations": operations, "all": everything,
            # refused as overloaded (Busy), a share of every operation that ended
            "refused": r.total_refused,
            "refused_fraction": r.total_refused / answered if answered else 0.0,
            "client_cpu_seconds": r.cpu,
            "client_cpu_us_per_op": r.cpu / r.done * 1e6 if r.done else None,
            "client_busy": r.busy, "procs": r.procs}
        if mode == "open":
            lag = summarize(r.lag)
            doc.update({"offered_ops_per_s": rate,
                        "achieved_ops_per_s": len(r.total) / elapsed if r.elapsed else 0.0,
                        "delayed_by_cap": r.capped, "late": r.late,
                        "max_outstanding": self.args.max_outstanding,
                        "outstanding_peak": r.max_outstanding,
                        "send_lag_ms": {k: lag[k] for k in ("p50", "p99", "max")}})
        return doc

    def client_doc(self, doc: dict[str, Any], cpu: float, wall: float) -> dict[str, Any]:
        phases: list[tuple[str, Any]] = [(name, doc[name]) for name in ("load", "latency", "run")
                                         if name in doc]
        phases += [(f"sweep {s['offered_ops_per_s']:g}/s", s)
                   for s in (doc.get("sweep") or {}).get("steps", [])]
        busiest = max(phases, key=lambda p: p[1]["client_busy"], default=None)
        busy = busiest[1]["client_busy"] if busiest else 0.0
        where = busiest[0] if busiest else "-"
        cores = os.cpu_count() or 1
        per = "process" if self.args.procs == 1 else "client process"
        if busy >= BUSY_CLIENT:
            note = (f"the busiest {per} used {busy:.0%} of a core in {where}: the client was "
                    f"probably a bottleneck")
            if self.args.procs < cores:
                note += f"; try --procs {min(cores, self.args.procs * 2)}"
            note += f" (this machine has {cores} CPUs, shared with the nodes if local)"
        else:
            note = (f"the busiest {per} used {busy:.0%} of a core (in {where}): not the "
                    f"bottleneck")
        return {"cpu_seconds": cpu, "wall_seconds": wall, "processes": self.args.procs,
                "cpu_count": cores, "busiest_phase": where, "busiest_core_fraction": busy,
                "note": note}


def run_bench(args: argparse.Namespace) -> str:
    check_args(args)
    bench = Bench(args)
    doc = bench.run()
    if args.plot:
        plot(doc, args.plot)
        doc["plot"] = args.plot
    if args.json:
        return json.dumps(doc, indent=2)
    return report(doc)


# ====================================================================== output


def _ms(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


HEADER = (f"{'':34}{'count':>7}{'errors':>7}{'refused':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'p99.9 ms':>10}{'max ms':>9}{'ops/s':>9}{'x raw':>7}")


def _row(label: str, d: dict[str, Any], ops_per_s: float | None = None,
         errors: int | None = None) -> str:
    ratio = d.get("p50_over_raw")
    rate = d.get("ops_per_s") if ops_per_s is None else ops_per_s
    errs = d.get("errors", 0) if errors is None else errors
    return (f"{label:34}{d['count']:>7}{errs:>7}{d.get('refused', 0):>8}"
            f"{_ms(d['p50'], 9)}{_ms(d['p99'], 9)}"
            f"{_ms(d['p99.9'], 10)}{_ms(d['max'], 9)}"
            f"{'' if rate is None else f'{rate:.0f}':>9}"
            f"{'' if ratio is None else f'{ratio:.2f}':>7}")


def _phase_lines(name: str, phase: dict[str, Any]) -> list[str]:
    where = f"{phase['threads']} in flight" if phase["mode"] == "closed" else \
        f"open {phase['rate']:g}/s"
    lines = [_row(f"{name}: {kind} ({where})", op) for kind, op in phase["operations"].items()]
    if len(phase["operations"]) > 1 or phase["mode"] == "open":
        lines.append(_row(f"{name}: all ({phase['seconds']:.1f} s)", phase["all"],
                          phase["ops_per_s"]))
    return lines


def report(doc: dict[str, Any]) -> str:
    """The run as a table a person reads."""
    p = doc["params"]
    raw = doc["raw_zmq_round_trip_ms"]
    mixes = ", ".join(f"{w} ({WORKLOADS[w].text})" for w in p["phases"])
    lines = [f"dynamo bench: {mixes}",
             f"{p['records']} records (zipfian {p['zipfian_constant']}, scrambled), "
             f"{p['value_size']}-byte values, bucket {p['bucket']!r}, seed {p['seed']}, "
             f"{p['procs']} client process{'es' if p['procs'] > 1 else ''}",
             f"nodes: {' '.join(p['nodes'])}", "", HEADER,
             _row("raw pyzmq DEALER/ROUTER", {**raw, "p50_over_raw": 1.0}, errors=0)]
    for name in ("load", "latency", "run"):
        if name in doc:
            label = doc[name]["workload"] if name == "run" else name
            lines += _phase_lines(label, doc[name])
    run = doc.get("run")
    if run and run["mode"] == "open":
        lines.append(f"open loop: offered {run['offered_ops_per_s']:g}/s, achieved "
                     f"{run['achieved_ops_per_s']:.0f}/s; {run['delayed_by_cap']} requests "
                     f"waited for a slot (cap {run['max_outstanding']}), {run['late']} sent "
                     f"over 1 ms late, send lag p99 {_ms(run['send_lag_ms']['p99'], 0)} ms")
        if run["refused"]:
            lines.append(f"  {run['refused']} requests refused as overloaded "
                         f"({run['refused_fraction']:.1%} of those that ended); the "
                         f"percentiles are of the accepted ones")
        if run["late"] > 0.05 * run["ops"]:
            lines.append("  the client fell behind its schedule (its CPU was busy or it was not "
                         "scheduled in time): the latencies include that lag")
    for name in ("load", "latency", "run"):
        for kind, op in (doc.get(name) or {}).get("operations", {}).items():
            if op["errors"]:
                classes = ", ".join(f"{c} x{n}" for c, n in op["errors_by_class"].items())
                lines.append(f"errors in {name} {kind}: {classes}")
            if op.get("not_found"):
                lines.append(f"{name} {kind}: {op['not_found']} found no value")
    if "sweep" in doc:
        lines += ["", *sweep_table(doc["sweep"])]
    client = doc["client"]
    lines += ["", f"client: {client['cpu_seconds']:.1f} CPU-seconds in "
                  f"{client['wall_seconds']:.1f} s; {client['note']}"]
    c = doc["cleanup"]
    if c["skipped"]:
        lines.append(f"cleanup skipped (--keep): the keys stay in bucket {p['bucket']!r}")
    else:
        lines.append(f"cleanup: {c['keys_deleted']} keys deleted in {c['seconds']:.2f} s"
                     + (f", {c['keys_absent']} already absent" if c["keys_absent"] else "")
                     + (f", {c['errors']} errors {c['errors_by_class']}" if c["errors"] else ""))
    if "plot" in doc:
        lines.append(f"plot: {doc['plot']}")
    return "\n".join(lines)


def sweep_table(sweep: dict[str, Any]) -> list[str]:
    lines = [f"sweep: workload {sweep['workload']}, open loop, {sweep['arrivals']} arrivals, "
             f"{sweep['step_seconds']:g} s per step",
             f"{'offered/s':>10}{'achieved/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
             f"{'max ms':>9}{'errors':>7}{'refused':>8}{'capped':>7}{'late':>7}"]
    for s in sweep["steps"]:
        lines.append(f"{s['offered_ops_per_s']:>10.0f}{s['achieved_ops_per_s']:>12.0f}"
                     f"{_ms(s['p50'], 9)}{_ms(s['p99'], 9)}{_ms(s['p99.9'], 10)}"
                     f"{_ms(s['max'], 9)}{s['errors']:>7}{s['refused']:>8}"
                     f"{s['delayed_by_cap']:>7}"
                     f"{s['late']:>7}")
    late = sum(st["late"] for st in sweep["steps"])
    sent = sum(st["count"] + st["errors"] + st["refused"] for st in sweep["steps"])
    if late > 0.05 * sent:
        lines.append(f"{late} of {sent} requests went out over 1 ms late (the client's CPU "
                     f"was busy or it was not scheduled in time); the latencies include it")
    knee = sweep["knee_ops_per_s"]
    lines.append(f"knee: about {knee:g} ops/s, the highest rate that passed ({sweep['rule']}); "
                 f"stopped {sweep['stopped']}" if knee is not None else
                 f"knee: below the lowest rate tried; stopped {sweep['stopped']}")
    return lines


def plot(doc: dict[str, Any], path: str) -> None:
    """p50/p99/p99.9 against achieved throughput: the sweep's steps, else the phases."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(f"--plot needs matplotlib, which is not installed: {EXTRA}") from None
    points: list[tuple[float, dict[str, Any], str]] = []
    sweep = doc.get("sweep")
    if sweep and sweep["steps"]:
        points = [(s["achieved_ops_per_s"], s, f"{s['offered_ops_per_s']:g}/s offered")
                  for s in sweep["steps"] if s["p50"] is not None]
        title = f"workload {sweep['workload']}: open-loop sweep"
    else:
        for name in ("latency", "run"):
            phase = doc.get(name)
            if phase and phase["all"]["p50"] is not None:
                points.append((phase["ops_per_s"], phase["all"], phase["workload"]))
        title = "dynamo bench"
    points.sort(key=lambda point: point[0])
    p = doc["params"]
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [point[0] for point in points]
    for key, style in (("p50", "o-"), ("p99", "s-"), ("p99.9", "^-")):
        ax.plot(xs, [point[1][key] for point in points], style, label=key)
    raw = doc["raw_zmq_round_trip_ms"]["p50"]
    ax.axhline(raw, color="grey", linestyle=":", label=f"raw pyzmq p50 ({raw:.2f} ms)")
    if sweep and sweep.get("knee_ops_per_s"):
        knee_step = next(s for s in sweep["steps"]
                         if s["offered_ops_per_s"] == sweep["knee_ops_per_s"])
        ax.axvline(knee_step["achieved_ops_per_s"], color="red", linestyle="--",
                   label=f"knee ({sweep['knee_ops_per_s']:g}/s offered)")
    if not sweep:
        for x, stats, label in points:
            ax.annotate(label, (x, stats["p50"]), textcoords="offset points", xytext=(6, -12))
    ax.set_yscale("log")
    ax.set_xlabel("achieved throughput (ops/s)")
    ax.set_ylabel("latency (ms)")
    if sweep:
        ax.axhline(p["p99_bound_ms"], color="orange", linestyle=":",
                   label=f"p99 bound ({p['p99_bound_ms']:g} ms)")
    nodes = len(p["nodes"])
    ax.set_title(f"{title}; {p['records']} records, {p['value_size']} B values, "
                 f"via {nodes} node{'s' if nodes > 1 else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1:] == ["--echo"]:
        echo_server("tcp://127.0.0.1")
