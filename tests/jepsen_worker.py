"""One client of the Jepsen-style cart test (``tests/test_jepsen_cart.py``), run as a process.

It talks to the cluster through ONE node address and adds its own unique items
(``c<client>-<i>``) to one ``cart-union`` key and one ``orset-cart`` key, one thread per key,
each with its own blocking :class:`~dynamo_core.client.Client`, in the paper's loop:

    get -> merge the siblings client-side with the bucket's resolver -> add the item -> put
    with the get's context

With ``--raw-reads`` the gets pass ``resolve=False``, so the node returns the siblings
unmerged and the merge is the client's alone (``GetResult.resolve`` with the same resolver).

An add is **acknowledged** when its put returned without raising; only those are promised to
survive. A put that raised (``QuorumNotMet``, ``Timeout``, ...) is recorded as failed: its item
may or may not show up later, and either is fine. When the run is over the worker writes one
JSON document with, per key, the acknowledged items, the failed ones and counters.

The OR-set cart has one extra client-side rule (see ``examples/orset_cart/README.md``): an
actor must never issue the same dot twice, so it must write from a state that includes its
own earlier writes. Rather than keep a local cart between writes (which would re-add, and so
hide, an add the store lost), this worker reads every time from the store alone and takes a
fresh actor id ("epoch") whenever the read does not show its own latest attempted write.

Usage::

    python tests/jepsen_worker.py --client 0 --node tcp://127.0.0.1:7101 \
        --carts-key cart --orcarts-key cart --start-at <unix time> --stop-at <unix time> \
        --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

from dynamo_orset_cart import Cart

from dynamo_core.client import Client
from dynamo_core.errors import DynamoError
from dynamo_core.plugins import Registry, make_plugin_manager

CARTS_BUCKET = "carts"  # resolver cart-union; the value is a list of items
ORCARTS_BUCKET = "orcarts"  # resolver orset-cart; the value is an OR-set cart state
#: Pause after a failed request, so that a worker cut off from its node does not spin.
BACKOFF = 0.05


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class KeyRun:
    """The record of one key's adds by this worker."""

    def __init__(self, bucket: str, key: str, raw: bool = False) -> None:
        self.bucket = bucket
        self.key = key
        self.raw = raw
        self.acked: list[str] = []
        #: item -> why its put is not acknowledged
        self.failed: dict[str, str] = {}
        self.get_failures = 0
        self.get_errors: dict[str, int] = {}
        self.siblings_seen = 0  # gets that came back with more than one value
        self.max_siblings = 0
        #: problems of the test itself (a value of the wrong shape, a crash): never expected
        self.anomalies: list[str] = []
        self.actors: list[str] = []
        self.put_seconds: list[float] = []

    def to_json(self) -> dict[str, Any]:
        lat = sorted(self.put_seconds)
        return {"bucket": self.bucket, "key": self.key, "raw_reads": self.raw,
                "acked": self.acked, "failed": self.failed, "get_failures": self.get_failures,
                "get_errors": self.get_errors, "siblings_seen": self.siblings_seen,
                "max_siblings": self.max_siblings, "anomalies": self.anomalies,
                "actors": self.actors,
                "put_p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
                "put_max_ms": round(lat[-1] * 1000, 2) if lat else None}


def _read(c: Client, run: KeyRun) -> Any:
    """A get of the key; None when it failed (counted).

    With ``run.raw`` the get asks the node not to merge (``resolve=False``), so the siblings
    come back as they are and the client-side merge below does the work.
    """
    try:
        r = c.bucket(run.bucket).get(run.key, resolve=not run.raw)
    except DynamoError as exc:
        run.get_failures += 1
        name = type(exc).__name__
        run.get_errors[name] = run.get_errors.get(name, 0) + 1
        return None
    if len(r.values) > 1:
        run.siblings_seen += 1
    run.max_siblings = max(run.max_siblings, len(r.values))
    return r


def _put(c: Client, run: KeyRun, item: str, value: Any, context: bytes) -> None:
    started = time.monotonic()
    try:
        c.bucket(run.bucket).put(run.key, value, context=context)
    except DynamoError as exc:
        run.failed[item] = _error(exc)
        time.sleep(BACKOFF)
        return
    except Exception as exc:  # noqa: BLE001 - not the store's answer: not acknowledged either
        run.failed[item] = _error(exc)
        run.anomalies.append(f"put of {item} raised {_error(exc)}")
        time.sleep(BACKOFF)
        return
    run.put_seconds.append(time.monotonic() - started)
    run.acked.append(item)  # only now: the put returned without an exception


def cart_union_loop(client: int, node: str, timeout: float, stop_at: float,
                    run: KeyRun) -> None:
    resolver = Registry(make_plugin_manager()).resolver("cart-union")
    i = 0
    with Client([node], timeout=timeout) as c:
        while time.time() < stop_at:
            r = _read(c, run)
            if r is None:
                time.sleep(BACKOFF)
                continue
            # Client-side merge of whatever came back (one value when the node resolved,
            # several siblings otherwise): the union of every sibling's items.
            merged = r.resolve(resolver)
            if merged is None:
                merged = []
            if not isinstance(merged, list):
                run.anomalies.append(f"cart-union value is not a list: {merged!r:.200}")
                time.sleep(BACKOFF)
                continue
            item = f"c{client}-{i}"
            i += 1
            _put(c, run, item, merged + [item], r.context)


def orset_loop(client: int, node: str, timeout: float, stop_at: float, run: KeyRun) -> None:
    resolver = Registry(make_plugin_manager()).resolver("orset-cart")
    i = 0
    epoch = 0
    actor = f"c{client}-e{epoch}"
    last_counter = 0  # the counter of this actor's latest attempted add (acked or not)
    run.actors.append(actor)
    with Client([node], timeout=timeout) as c:
        while time.time() < stop_at:
            r = _read(c, run)
            if r is None:
                time.sleep(BACKOFF)
                continue
            merged = r.resolve(resolver)  # the OR-set join of every sibling (None: absent)
            try:
                cart = Cart.from_value(merged, actor=actor)
            except ValueError as exc:
                run.anomalies.append(f"orset-cart value is not a cart: {exc}")
                time.sleep(BACKOFF)
                continue
            seen = (merged or {}).get("context", {}).get(actor, 0)
            if seen != last_counter:
                # The read does not show this actor's latest write (it failed, or the read
                # missed it): a new actor id, so that no dot is ever issued twice.
                epoch += 1
                actor = f"c{client}-e{epoch}"
                last_counter = 0
                run.actors.append(actor)
                cart = Cart.from_value(merged, actor=actor)
            item = f"c{client}-{i}"
            i += 1
            cart.add(item)
            last_counter += 1
            _put(c, run, item, cart.to_value(), r.context)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--client", type=int, required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--carts-key", required=True)
    p.add_argument("--orcarts-key", required=True)
    p.add_argument("--start-at", type=float, required=True, help="unix time to begin")
    p.add_argument("--stop-at", type=float, required=True, help="unix time to stop adding")
    p.add_argument("--timeout", type=float, default=3.0, help="client request timeout")
    p.add_argument("--out", required=True)
    p.add_argument("--raw-reads", action="store_true",
                   help="get with resolve=False: the siblings are merged here only")
    args = p.parse_args()

    runs = {"carts": KeyRun(CARTS_BUCKET, args.carts_key, args.raw_reads),
            "orcarts": KeyRun(ORCARTS_BUCKET, args.orcarts_key, args.raw_reads)}
    loops = {"carts": cart_union_loop, "orcarts": orset_loop}

    def body(name: str) -> None:
        try:
            loops[name](args.client, args.node, args.timeout, args.stop_at, runs[name])
        except Exception:  # noqa: BLE001 - reported in the result, the test fails on it
            runs[name].anomalies.append("worker thread crashed:\n" + traceback.format_exc())

    time.sleep(max(0.0, args.start_at - time.time()))
    threads = [threading.Thread(target=body, args=(name,), name=name) for name in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {"client": args.client, "node": args.node, "pid": os.getpid(),
              "keys": {name: run.to_json() for name, run in runs.items()}}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
