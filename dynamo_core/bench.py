"""``dynamo bench``: throughput and latency percentiles of gets and puts against a cluster.

It first measures the floor: a raw pyzmq DEALER/ROUTER round trip between two processes on
this machine with the same payload size, no Dynamo involved. Then, against the cluster:
sequential puts and gets (one in flight: latency) and concurrent ones (throughput). A put is
two round trips at least (client to coordinator, coordinator to replicas) plus a durable
write; a get is two round trips plus reads, so the floor tells what the design costs here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from .client import AsyncClient
from .errors import DynamoError

ECHO_READY = "ready"


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99/p99.9 in milliseconds (nearest-rank)."""
    if not samples:
        return {"p50": float("nan"), "p99": float("nan"), "p99.9": float("nan")}
    ordered = sorted(samples)

    def rank(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[index] * 1000

    return {"p50": rank(50), "p99": rank(99), "p99.9": rank(99.9)}


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
                            stdout=subprocess.PIPE, text=True)
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


# ====================================================================== cluster phases


async def _timed(op: Callable[[int], Awaitable[Any]], i: int, times: list[float]) -> bool:
    """Run one operation; record its latency, or return False if the store refused it."""
    start = time.perf_counter()
    try:
        await op(i)
    except DynamoError:
        return False
    times.append(time.perf_counter() - start)
    return True


async def _sequential(n: int, op: Callable[[int], Awaitable[Any]]) -> tuple[list[float], int]:
    times: list[float] = []
    failed = [not await _timed(op, i, times) for i in range(n)]
    return times, sum(failed)


async def _concurrent(n: int, concurrency: int,
                      op: Callable[[int], Awaitable[Any]]) -> tuple[list[float], int, float]:
    times: list[float] = []
    failed = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal failed
        for i in counter:
            failed += not await _timed(op, i, times)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times, failed, time.perf_counter() - began


async def _cluster_phases(args: argparse.Namespace) -> dict[str, Any]:
    nodes = args.nodes or ["tcp://127.0.0.1:7101"]
    rng = random.Random(1)
    value = rng.randbytes(args.value_size)
    keys = [f"bench-{i}" for i in range(args.keys)]
    results: dict[str, Any] = {}
    async with AsyncClient(nodes, timeout=10.0, bucket=args.bucket) as client:
        await client.put(keys[0], value)  # connections warm, membership known

        async def put(i: int) -> Any:
            return await client.put(keys[i % len(keys)], value, None)

        async def get(i: int) -> Any:
            return await client.get(keys[rng.randrange(len(keys))])

        for name, op in (("put", put), ("get", get)):
            lat, lat_errors = await _sequential(args.requests, op)
            thr, thr_errors, elapsed = await _concurrent(args.requests, args.concurrency, op)
            results[name] = {"latency_ms": percentiles(lat), "errors": lat_errors + thr_errors,
                             "throughput_ops": len(thr) / elapsed if elapsed else 0.0,
                             "concurrent_latency_ms": percentiles(thr)}
    return results


def run_bench(args: argparse.Namespace) -> str:
    raw = percentiles(raw_round_trip(args.requests, args.value_size))
    results = asyncio.run(_cluster_phases(args))
    doc = {"raw_zmq_round_trip_ms": raw, "requests": args.requests,
           "concurrency": args.concurrency, "value_size": args.value_size, **results}
    for op in ("put", "get"):
        doc[op]["p50_over_raw"] = results[op]["latency_ms"]["p50"] / raw["p50"]
    if args.json:
        return json.dumps(doc, indent=2)
    return _report(doc)


def _report(doc: dict[str, Any]) -> str:
    raw = doc["raw_zmq_round_trip_ms"]
    lines = [f"{doc['requests']} requests per phase, {doc['value_size']}-byte values, "
             f"concurrency {doc['concurrency']} in the throughput phase",
             "",
             f"{'':28}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'ops/s':>9}{'x raw':>7}",
             f"{'raw pyzmq DEALER/ROUTER':28}{raw['p50']:>9.3f}{raw['p99']:>9.3f}"
             f"{raw['p99.9']:>10.3f}{'':>9}{1.0:>7.2f}"]
    for op in ("put", "get"):
        r = doc[op]
        lat, conc = r["latency_ms"], r["concurrent_latency_ms"]
        lines.append(f"{op + ' (one in flight)':28}{lat['p50']:>9.3f}{lat['p99']:>9.3f}"
                     f"{lat['p99.9']:>10.3f}{'':>9}{r['p50_over_raw']:>7.2f}")
        lines.append(f"{op + ' (concurrent)':28}{conc['p50']:>9.3f}{conc['p99']:>9.3f}"
                     f"{conc['p99.9']:>10.3f}{r['throughput_ops']:>9.0f}")
        if r["errors"]:
            lines.append(f"  {op}: {r['errors']} requests failed")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--echo"]:
        echo_server("tcp://127.0.0.1")
