r"""Reference figures for two peer stores, measured the way ``dynamo bench`` measures ours.

Not part of the project and not needed by its tests: a standalone script (standard library,
plus the ``redis`` client for Redis) that times a single Redis server or an etcd cluster on
this machine, so the README can put their figures beside ``dynamo bench``'s, taken on the
same box under the same rules::

    python examples/peer_stores.py redis --url redis://127.0.0.1:6379
    python examples/peer_stores.py etcd --url http://127.0.0.1:2379
    python examples/peer_stores.py etcd --url http://127.0.0.1:2379 --at-leader --json

``examples/peer_stores.sh`` starts both stores on loopback in a temporary directory, runs
this script against each and stops them again; the commands to do it by hand follow.

What is measured
================

Values of ``--value-size`` bytes (default 100) over a key space of 1000 keys
(``peer-bench/user0`` .. ``user999``), each key chosen uniformly at random (seeded):

0. **load**: every one of the 1000 keys is written once, ``--concurrency`` at a time, so
   that every read finds its key (reported, not a reference figure).
1. **One in flight**: ``--requests`` (default 3000) operations of each kind, one after the
   other on one connection: their latency, p50/p99/p99.9 and max in milliseconds.
2. **K in flight** (``--concurrency``, default 16): ``--requests`` operations of each kind
   by K threads, each with its own connection, each sending its next request as soon as
   its last one is answered (a closed loop, as ``dynamo bench``'s ``--threads``):
   throughput in operations per second (operations / wall time of the phase) and latency.

The kinds of operation:

* Redis: ``put`` is ``SET key value``, ``get`` is ``GET key`` (redis-py; one
  connection per thread, no pipelining).
* etcd (v3 API through its HTTP/JSON gRPC gateway on the client port, one keep-alive
  ``http.client.HTTPConnection`` per thread): ``put`` is ``POST /v3/kv/put``
  (``{"key": b64, "value": b64}``); ``get linearizable`` is ``POST /v3/kv/range``
  (``{"key": b64}``: etcd's default, a read the leader confirms with a quorum, ReadIndex);
  ``get serializable`` is the same with ``"serializable": true`` (the member answers from
  its own state, possibly stale).

Rules, the same as ``dynamo bench``'s: time by ``time.perf_counter`` around each request;
``--warmup`` requests (default 200) before each phase are not counted; percentiles by
nearest rank over every sample (no interpolation); errors are counted by class and never
stop a run (a read that finds no value counts as an error of class ``NotFound``). The CPU
this client process used in each phase is shown as a fraction of one core ("client CPU"):
the client is Python, with a global interpreter lock, so a figure near 100% means the
client, not the store, set the pace of that row. At the end the script deletes the keys it
wrote (``--keep`` leaves them).

Two things to keep in mind when reading the figures. Redis's throughput rows are set by
this Python client (its K threads share one interpreter lock), as ``dynamo bench``'s are
by its own Python client; Redis's own ceiling on the same box, with its C benchmark
client, is a separate figure::

    redis-benchmark -h 127.0.0.1 -p 6379 -q -n 20000 -c 16 -d 100 -r 1000 -t set,get

And the etcd figures go through the JSON gateway, which decodes each request and calls the
member's gRPC service over a loopback connection of its own: a Go client speaking gRPC
directly (``etcdctl``, clientv3) skips that hop.

Starting the stores on loopback
===============================

Redis (one server; ``redis-server``, Debian package ``redis-server``)::

    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes

Persistence is *off* here: no RDB snapshots (``--save ''``), no append-only file: every
acknowledged write lives in memory only, and a crash loses everything. Redis's own default
(no arguments) also runs without the AOF and takes RDB snapshots in the background (after
1 h/1 change, 5 min/100 changes, 1 min/10000 changes), which does not touch a request's
path. The durable variant logs every write to the AOF and fsyncs it once a second (a crash
loses up to about a second of acknowledged writes)::

    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly yes \
        --appendfsync everysec --dir /tmp/redis-aof --daemonize yes

(``--appendfsync always`` fsyncs before each reply, the only setting that loses no
acknowledged write.) The script reports which settings the server runs with. Stop it with
``redis-cli -p 6379 shutdown nosave``.

etcd (three members, one machine; Debian packages ``etcd-server`` and ``etcd-client``,
etcd 3.4). Each member has its own data directory, client port (2379, 22379, 32379) and
peer port (2380, 22380, 32380); every write is fsynced to the write-ahead log of a majority
before it is acknowledged (etcd has no setting to turn that off in 3.4)::

    CLUSTER=m1=http://127.0.0.1:2380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380
    for m in 1:2379 2:22379 3:32379; do
      i=${m%:*}; c=${m#*:}; p=$((c + 1))    # member m$i: client port c, peer port c + 1
      etcd --name m$i --data-dir /tmp/etcd-m$i \
        --listen-client-urls http://127.0.0.1:$c --advertise-client-urls http://127.0.0.1:$c \
        --listen-peer-urls http://127.0.0.1:$p --initial-advertise-peer-urls http://127.0.0.1:$p \
        --initial-cluster "$CLUSTER" --initial-cluster-token peer-bench \
        --initial-cluster-state new --logger zap --log-outputs /tmp/etcd-m$i.log &
    done

The gRPC gateway (the ``/v3/...`` JSON endpoints) is on by default in 3.4. Find the leader
(the member whose ``IS LEADER`` is true) and point the script at its client URL; the
reference figures are taken at the leader, where a write or a linearizable read does not
take the extra hop a follower forwards it through::

    ETCDCTL_API=3 etcdctl \
      --endpoints=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 endpoint status -w table
    curl -s -X POST -d '{}' http://127.0.0.1:2379/v3/maintenance/status   # "leader" vs
                                                             # "header"."member_id"

or let the script do it: ``--at-leader`` asks the member at ``--url`` for the member list
and the leader's id, and measures at the leader's client URL. The script always reports
whether the member it measured at was the leader. Stop the members with ``kill`` (their
PIDs: ``jobs -p``) and remove ``/tmp/etcd-m*``.

Output: a table like ``dynamo bench``'s; with ``--json``, one JSON document instead
(``--json-out FILE`` writes that document to FILE and still prints the table).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

KEYS = 1000
KEY_PREFIX = "peer-bench/user"
#: Distinct values each thread cycles through (made once; their content does not matter).
VALUE_POOL = 64
TIMEOUT = 10.0
#: A client process busier than this fraction of a core probably set the pace.
BUSY_CLIENT = 0.8


class StoreError(Exception):
    """A store answered with an error (etcd: a non-200 status or an error document)."""


class NotFound(Exception):
    """A read found no value for a key the load phase wrote."""


# ====================================================================== statistics


def nearest_rank(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of the sorted ``ordered`` by nearest rank (as
    ``dynamo_core.bench.percentile``: exact arithmetic, no interpolation)."""
    rank = math.ceil(Fraction(repr(p)) * len(ordered) / 100)
    return ordered[max(1, rank) - 1]


def summarize(samples: list[float]) -> dict[str, Any]:
    """count and p50/p99/p99.9/max/mean in milliseconds (None when there are no samples)."""
    doc: dict[str, Any] = {"count": len(samples)}
    if not samples:
        return {**doc, "p50": None, "p99": None, "p99.9": None, "max": None, "mean": None}
    ordered = sorted(samples)
    for p in (50, 99, 99.9):
        doc[f"p{p:g}"] = nearest_rank(ordered, p) * 1000
    doc["max"] = ordered[-1] * 1000
    doc["mean"] = math.fsum(ordered) / len(ordered) * 1000
    return doc


# ====================================================================== the stores


def key_name(i: int) -> str:
    return f"{KEY_PREFIX}{i}"


class RedisStore:
    """A Redis server: SET and GET through redis-py, one connection per session."""

    name = "redis"

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError:
            raise SystemExit("peer_stores.py redis needs the redis client, which is not "
                             "installed: python -m pip install redis") from None
        self.redis = redis
        self.url = url
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, NotFound)
        self.operations = ("put", "get")

    def session(self) -> Any:
        return self.redis.Redis.from_url(self.url, single_connection_client=True,
                                         socket_timeout=TIMEOUT,
                                         socket_connect_timeout=TIMEOUT)

    def close(self, session: Any) -> None:
        session.close()

    def encode_value(self, value: bytes) -> bytes:
        return value

    def op(self, session: Any, kind: str) -> Callable[[str, bytes], None]:
        if kind == "put":
            def put(key: str, value: bytes) -> None:
                session.set(key, value)
            return put

        def get(key: str, value: bytes) -> None:
            if session.get(key) is None:
                raise NotFound(key)
        return get

    def describe(self) -> dict[str, Any]:
        s = self.session()
        try:
            info = s.info("server")
            config = {k: v for name in ("save", "appendonly", "appendfsync")
                      for k, v in s.config_get(name).items()}
        finally:
            s.close()
        save = config.get("save", "")
        aof = config.get("appendonly") == "yes"
        text = ("RDB snapshots " + (f"on ({save!r})" if save else "off") + ", AOF "
                + (f"on (appendfsync {config.get('appendfsync')})" if aof else "off"))
        return {"version": info.get("redis_version"), "url": self.url, "config": config,
                "persistence": text}

    def cleanup(self) -> int:
        s = self.session()
        try:
            return int(s.delete(*(key_name(i) for i in range(KEYS))))
        finally:
            s.close()


class EtcdSession:
    """One keep-alive HTTP/1.1 connection to an etcd member's gRPC gateway."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn: http.client.HTTPConnection | None = None

    def call(self, path: str, body: bytes) -> dict[str, Any]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        try:
            self.conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        doc: dict[str, Any] = json.loads(data) if data else {}
        if resp.status != 200 or "error" in doc:
            raise StoreError(f"{path}: HTTP {resp.status}: {data[:200]!r}")
        return doc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EtcdStore:
    """An etcd member, through the v3 API's HTTP/JSON gateway."""

    name = "etcd"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"--url {url!r}: an etcd client URL like http://127.0.0.1:2379")
        self.url = url
        self.host, self.port = parts.hostname, parts.port or 2379
        self.errors = (OSError, http.client.HTTPException, StoreError, ValueError, NotFound)
        self.operations = ("put", "get linearizable", "get serializable")
        self._keys: dict[str, str] = {}

    def _key(self, key: str) -> str:
        encoded = self._keys.get(key)
        if encoded is None:
            encoded = self._keys[key] = b64(key.encode())
        return encoded

    def session(self) -> EtcdSession:
        return EtcdSession(self.host, self.port)

    def close(self, session: EtcdSession) -> None:
        session.close()

    def op(self, session: EtcdSession, kind: str) -> Callable[[str, bytes], None]:
        if kind == "put":
            def put(key: str, value: bytes) -> None:
                session.call("/v3/kv/put", b'{"key":"%s","value":"%s"}' % (
                    self._key(key).encode(), value))
            return put
        tail = b',"serializable":true}' if kind == "get serializable" else b"}"

        def get(key: str, value: bytes) -> None:
            doc = session.call("/v3/kv/range", b'{"key":"%s"%s' % (self._key(key).encode(),
                                                                    tail))
            if not doc.get("kvs"):
                raise NotFound(key)
        return get

    def encode_value(self, value: bytes) -> bytes:
        return b64(value).encode("ascii")

    def status(self) -> dict[str, Any]:
        s = self.session()
        try:
            status = s.call("/v3/maintenance/status", b"{}")
            members = s.call("/v3/cluster/member/list", b"{}").get("members", [])
        finally:
            s.close()
        leader = str(status.get("leader"))
        me = str(status.get("header", {}).get("member_id"))
        leader_urls = [m.get("clientURLs", []) for m in members if str(m.get("ID")) == leader]
        return {"version": status.get("version"), "url": self.url, "members": len(members),
                "member_names": sorted(m.get("name", "") for m in members),
                "is_leader": me == leader,
                "leader_client_url": (leader_urls[0] or [None])[0] if leader_urls else None,
                "raft_term": status.get("raftTerm")}

    def describe(self) -> dict[str, Any]:
        doc = self.status()
        doc["persistence"] = ("every write fsynced to the WAL of a majority before it is "
                              "acknowledged")
        return doc

    def cleanup(self) -> int:
        s = self.session()
        try:
            # the whole prefix: range_end is the prefix with its last byte incremented
            prefix = KEY_PREFIX.encode()
            end = prefix[:-1] + bytes([prefix[-1] + 1])
            doc = s.call("/v3/kv/deleterange",
                         json.dumps({"key": b64(prefix), "range_end": b64(end)}).encode())
        finally:
            s.close()
        return int(doc.get("deleted", 0))


# ====================================================================== the phases


class Phase:
    """``n`` operations of one kind by ``threads`` workers (closed loop), after ``warmup``
    uncounted ones; each worker has its own connection."""

    def __init__(self, store: Any, kind: str, n: int, threads: int, warmup: int,
                 values: list[bytes], seed: int, keys: Sequence[int] | None = None) -> None:
        self.store, self.kind, self.n, self.threads = store, kind, n, max(1, min(threads, n))
        self.warmup, self.values, self.seed, self.keys = warmup, values, seed, keys
        self.samples: list[list[float]] = [[] for _ in range(self.threads)]
        self.errors: Counter[str] = Counter()
        self.not_found = 0
        self._lock = threading.Lock()
        self._next = 0
        self._warm = 0
        self._ready = threading.Barrier(self.threads + 1)
        self._go = threading.Event()

    def _take(self, warm: bool) -> int | None:
        with self._lock:
            if warm:
                if self._warm >= self.warmup:
                    return None
                self._warm += 1
                return -1
            if self._next >= self.n:
                return None
            self._next += 1
            return self._next - 1

    def _worker(self, t: int) -> None:
        rng = random.Random(f"{self.seed}/{self.kind}/{self.threads}/{t}")
        session = self.store.session()
        call = self.store.op(session, self.kind)
        mine = self.samples[t]
        errors: Counter[str] = Counter()
        values = self.values
        passed = False
        try:
            for warm in (True, False):
                if not warm:
                    self._ready.wait()
                    passed = True
                    self._go.wait()
                while (i := self._take(warm)) is not None:
                    item = self.keys[i] if self.keys is not None and i >= 0 else \
                        rng.randrange(KEYS)
                    key, value = key_name(item), values[rng.randrange(len(values))]
                    began = time.perf_counter()
                    try:
                        call(key, value)
                    except self.store.errors as exc:
                        if not warm:
                            errors[type(exc).__name__] += 1
                        continue
                    if not warm:
                        mine.append(time.perf_counter() - began)
        except BaseException:
            if not passed:
                self._ready.abort()  # the main thread waits on it: tell it this one failed
            raise
        finally:
            self.store.close(session)
            with self._lock:
                self.errors.update(errors)

    def run(self) -> dict[str, Any]:
        workers = [threading.Thread(target=self._worker, args=(t,), daemon=True)
                   for t in range(self.threads)]
        for w in workers:
            w.start()
        try:
            self._ready.wait()
        except threading.BrokenBarrierError:
            raise SystemExit(f"a worker of the {self.kind} phase failed (see above)") from None
        cpu, began = time.process_time(), time.perf_counter()
        self._go.set()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu
        samples = [s for per in self.samples for s in per]
        errors = dict(self.errors)
        doc = {"operation": self.kind, "in_flight": self.threads, **summarize(samples),
               "errors": sum(errors.values()), "errors_by_class": errors,
               "seconds": seconds, "ops_per_s": len(samples) / seconds if seconds else None,
               "client_cpu": cpu / seconds if seconds else 0.0}
        if "NotFound" in errors:
            doc["not_found"] = errors["NotFound"]
        return doc


def run(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    if args.store == "etcd" and args.at_leader:
        leader = store.status()["leader_client_url"]
        if not leader:
            raise SystemExit(f"{args.url}: no leader in the member list")
        store = EtcdStore(leader)
    server = store.describe()
    if args.store == "etcd" and not server["is_leader"]:
        print(f"note: {store.url} is not the leader ({server['leader_client_url']} is); the "
              f"reference figures are taken at the leader (--at-leader)", file=sys.stderr)
    rng = random.Random(f"values/{args.seed}")
    raw = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789")
                 for _ in range(args.value_size)) for _ in range(VALUE_POOL)]
    values = [store.encode_value(v) for v in raw]
    wall, cpu = time.perf_counter(), time.process_time()
    common = {"store": store, "values": values, "seed": args.seed}
    rows = [{"phase": "load", **Phase(kind="put", n=KEYS, threads=args.concurrency, warmup=0,
                                      keys=range(KEYS), **common).run()}]
    for in_flight in (1, args.concurrency):
        for kind in store.operations:
            phase = Phase(kind=kind, n=args.requests, threads=in_flight,
                          warmup=args.warmup, **common)
            rows.append({"phase": "one in flight" if in_flight == 1 else "K in flight",
                         **phase.run()})
    deleted = None if args.keep else store.cleanup()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"store": args.store, "server": server,
            "params": {"requests": args.requests, "concurrency": args.concurrency,
                       "value_size": args.value_size, "keys": KEYS, "warmup": args.warmup,
                       "seed": args.seed, "key_choice": "uniform",
                       "percentiles": "nearest rank", "cpu_count": os.cpu_count()},
            "results": rows,
            "client": {"cpu_seconds": cpu, "wall_seconds": wall,
                       "busiest_row_cpu": max(r["client_cpu"] for r in rows)},
            "cleanup": {"skipped": args.keep, "keys_deleted": deleted}}


# ====================================================================== output


def _ms(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


HEADER = (f"{'':34}{'count':>7}{'errors':>7}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
          f"{'max ms':>9}{'ops/s':>9}{'client CPU':>11}")


def report(doc: dict[str, Any]) -> str:
    s, p = doc["server"], doc["params"]
    where = s["url"]
    if doc["store"] == "etcd":
        where += (f", {'the leader' if s['is_leader'] else 'NOT the leader'} of "
                  f"{s['members']} members ({', '.join(s['member_names'])})")
    lines = [f"peer store: {doc['store']} {s['version']} at {where}",
             f"persistence: {s['persistence']}",
             f"{p['keys']} keys (uniform), {p['value_size']}-byte values, {p['requests']} "
             f"requests a row, {p['warmup']} warm-up requests before each (not counted), "
             f"seed {p['seed']}", "", HEADER]
    for r in doc["results"]:
        label = f"{r['phase']}: {r['operation']} ({r['in_flight']} in flight)" \
            if r["phase"] == "load" else f"{r['operation']} ({r['in_flight']} in flight)"
        rate = r["ops_per_s"]
        lines.append(f"{label:34}{r['count']:>7}{r['errors']:>7}{_ms(r['p50'], 9)}"
                     f"{_ms(r['p99'], 9)}{_ms(r['p99.9'], 10)}{_ms(r['max'], 9)}"
                     f"{'' if rate is None else f'{rate:.0f}':>9}{r['client_cpu']:>11.0%}")
    for r in doc["results"]:
        if r["errors"]:
            classes = ", ".join(f"{c} x{n}" for c, n in r["errors_by_class"].items())
            lines.append(f"errors in {r['operation']} ({r['in_flight']} in flight): {classes}")
    c = doc["client"]
    busy = c["busiest_row_cpu"]
    lines += ["", f"client: {c['cpu_seconds']:.1f} CPU-seconds in {c['wall_seconds']:.1f} s; "
                  f"the busiest row used {busy:.0%} of a core"
                  + (" (the Python client probably set the pace there)"
                     if busy >= BUSY_CLIENT else "")]
    cleanup = doc["cleanup"]
    lines.append("cleanup skipped (--keep)" if cleanup["skipped"] else
                 f"cleanup: {cleanup['keys_deleted']} keys deleted")
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Latency and throughput of a Redis server or an etcd cluster, measured "
                    "like dynamo bench (see the module docstring for starting them).")
    parser.add_argument("store", choices=["redis", "etcd"])
    parser.add_argument("--url", help="redis://127.0.0.1:6379 (redis) or "
                                      "http://127.0.0.1:2379 (etcd; the default of each)")
    parser.add_argument("--requests", type=_positive, default=3000,
                        help="measured requests in each row (default 3000)")
    parser.add_argument("--concurrency", type=_positive, default=16,
                        help="requests in flight in the throughput rows: threads, each with "
                             "its own connection (default 16)")
    parser.add_argument("--value-size", type=_positive, default=100,
                        help="bytes in each value (default 100)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="uncounted requests before each row (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--at-leader", action="store_true",
                        help="etcd: measure at the leader's client URL, found through --url")
    parser.add_argument("--keep", action="store_true", help="do not delete the keys after")
    parser.add_argument("--json", action="store_true", help="one JSON document, no table")
    parser.add_argument("--json-out", metavar="FILE",
                        help="also write the JSON document to FILE")
    args = parser.parse_args(argv)
    if args.url is None:
        args.url = "redis://127.0.0.1:6379" if args.store == "redis" else \
            "http://127.0.0.1:2379"
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    store: Any = RedisStore(args.url) if args.store == "redis" else EtcdStore(args.url)
    try:
        doc = run(store, args)
    except store.errors as exc:
        print(f"peer_stores.py: {args.store} at {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    print(json.dumps(doc, indent=2) if args.json else report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
