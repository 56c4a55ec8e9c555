"""Jepsen-style: no acknowledged cart add is ever lost, with and without faults.

A real 3-node cluster ((n, r, w) = (3, 2, 2), diskcache) with two buckets, ``carts``
(resolver ``cart-union``) and ``orcarts`` (resolver ``orset-cart``, the installed example
package). Four client **processes** (``tests/jepsen_worker.py``), each through a different
node address (four clients over three nodes: two share one), add their own unique items
(``c<client>-<i>``) to ONE key of each bucket for ``DURATION`` seconds, concurrently, with
the paper's loop: get, merge the siblings client-side with the bucket's resolver, add the
item, put with the get's context. Odd-numbered clients read with ``resolve=False``, so
they get the siblings unmerged and only their own client-side merge
(``GetResult.resolve``) stands between a sibling and its loss. A worker counts an add as
acknowledged only when its put returned without raising.

Three scenarios, one test each: no fault; one node paused (SIGSTOP, then SIGCONT) mid-run;
one node killed (SIGKILL) mid-run and restarted with the same data directory.

Afterwards the test waits (bounded) for the replicas to converge, reads the key from EVERY
node, both its local storage (``inspect``, no quorum; the live versions merged with the
bucket's resolver) and a get with R = 3 coordinated by that node, and asserts that every
acknowledged add is present everywhere. The counts (acknowledged, failed, present, lost) are
printed (visible with ``-s``) and are in the assertion message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Cluster

from dynamo_core.client import Client
from dynamo_core.errors import DynamoError
from dynamo_core.hookspecs import Sibling
from dynamo_core.plugins import Registry, make_plugin_manager

pytestmark = [pytest.mark.cluster]

#: Seconds the clients keep adding, per scenario (the brief: at least 20).
DURATION = 20.0
#: Client processes, each through node ``n<(i % 3) + 1>``; odd ones read unmerged siblings.
CLIENTS = 4
#: Seconds into the run when the fault starts, and how long a paused / killed node stays so.
FAULT_AT = 6.0
PAUSE_SECONDS = 5.0
DOWN_SECONDS = 3.0
#: The node the fault hits (clients 0 and 3 talk through it).
VICTIM = "n1"
#: The clients' request timeout (the nodes' own request timeout is REQUEST_TIMEOUT).
CLIENT_TIMEOUT = 3.0
REQUEST_TIMEOUT = 1.0
#: Seconds the workers get to start their interpreters before the run begins.
WORKER_STARTUP = 2.0
#: Bound on the wait for the replicas to agree after the run.
CONVERGE_TIMEOUT = 20.0
#: When every node agrees but acknowledged adds are missing, how long the agreement must hold
#: before the test stops waiting (lost is lost; anti-entropy had its chance).
STABLE_SECONDS = 3.0
#: Fewer acknowledged adds per key than this would make the run meaningless.
MIN_ACKED = 10
#: Hard bound on one test (cluster start + run + convergence + teardown).
TEST_TIMEOUT = int(DURATION + 70)

WORKER = Path(__file__).with_name("jepsen_worker.py")

CONFIG: dict[str, Any] = {
    "cluster": {"n": 3, "r": 2, "w": 2, "gossip_interval": 0.2, "heartbeat_interval": 0.2,
                "request_timeout": REQUEST_TIMEOUT},
    "storage": {"engine": "diskcache"},
    "handoff": {"interval": 0.2},
    "buckets": {"carts": {"resolver": "cart-union"},
                "orcarts": {"resolver": "orset-cart"}},
}

#: worker result key -> (bucket, resolver)
BUCKETS = {"carts": ("carts", "cart-union"), "orcarts": ("orcarts", "orset-cart")}

_REGISTRY: Registry | None = None


def resolver(name: str):
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry(make_plugin_manager())
    return _REGISTRY.resolver(name)


def items_of(kind: str, value: Any) -> set[str]:
    """The items of a merged value (None: an absent key, no items)."""
    if value is None:
        return set()
    if kind == "carts":
        assert isinstance(value, list), f"cart-union value is not a list: {value!r:.200}"
        return set(value)
    assert isinstance(value, dict) and isinstance(value.get("items"), dict), \
        f"orset-cart value is not a cart state: {value!r:.200}"
    return set(value["items"])


# ====================================================================== reading the replicas


def local_items(c: Client, cl: Cluster, name: str, kind: str, key: str) -> set[str]:
    """The items of ``key`` in ``name``'s own storage: its live versions, merged."""
    bucket, res = BUCKETS[kind]
    info = c.inspect(key, cl.address(name), bucket=bucket)
    live = [Sibling(v["value"], float(v["timestamp"]), (str(v["dot"][0]), int(v["dot"][1])))
            for v in info["versions"] if not v["tombstone"]]
    return items_of(kind, resolver(res).resolve(live) if live else None)


def quorum_items(c: Client, cl: Cluster, name: str, kind: str, key: str) -> set[str]:
    """The items a get with R = 3 coordinated by ``name`` returns (siblings merged)."""
    bucket, res = BUCKETS[kind]
    r = c.get(key, r=3, bucket=bucket, node=cl.address(name))
    return items_of(kind, r.resolve(resolver(res)))


def wait_converged(cl: Cluster, keys: dict[str, str],
                   acked: dict[str, set[str]]) -> tuple[dict, float, bool]:
    """Poll every node's local copy of each key until they agree (bounded).

    Returns the last snapshot ``{kind: {node: items}}``, the seconds waited and whether the
    nodes agreed. Stops early once they agree and hold every acknowledged add, or once they
    have agreed on the same contents for ``STABLE_SECONDS``.
    """
    started = time.monotonic()
    deadline = started + CONVERGE_TIMEOUT
    snapshot: dict[str, dict[str, set[str]]] = {}
    stable_since: float | None = None
    previous = None
    with Client(cl.addresses, timeout=2.0) as c:
        while True:
            try:
                snapshot = {kind: {name: local_items(c, cl, name, kind, key)
                                   for name in cl.names}
                            for kind, key in keys.items()}
            except DynamoError:
                snapshot, stable_since, previous = {}, None, None
            agreed = bool(snapshot) and all(
                len({frozenset(s) for s in per_node.values()}) == 1
                for per_node in snapshot.values())
            now = time.monotonic()
            if agreed:
                complete = all(acked[kind] <= next(iter(snapshot[kind].values()))
                               for kind in keys)
                if complete:
                    return snapshot, now - started, True
                current = {kind: frozenset(next(iter(per_node.values())))
                           for kind, per_node in snapshot.items()}
                if current != previous:
                    previous, stable_since = current, now
                elif now - stable_since >= STABLE_SECONDS:
                    return snapshot, now - started, True
            else:
                previous, stable_since = None, None
            if now >= deadline:
                return snapshot, now - started, agreed
            time.sleep(0.25)


# ====================================================================== the run


def start_workers(cl: Cluster, root: Path, keys: dict[str, str], start_at: float,
                  stop_at: float) -> list[tuple[subprocess.Popen, Path, Path]]:
    workers = []
    for i in range(CLIENTS):
        node = cl.address(cl.names[i % len(cl.names)])
        out = root / f"client{i}.json"
        log = root / f"client{i}.log"
        cmd = [sys.executable, str(WORKER), "--client", str(i), "--node", node,
               "--carts-key", keys["carts"], "--orcarts-key", keys["orcarts"],
               "--start-at", repr(start_at), "--stop-at", repr(stop_at),
               "--timeout", repr(CLIENT_TIMEOUT), "--out", str(out)]
        if i % 2 == 1:
            cmd.append("--raw-reads")  # half the clients merge the siblings themselves
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        workers.append((proc, out, log))
    return workers


def collect(workers: list[tuple[subprocess.Popen, Path, Path]], stop_at: float) -> list[dict]:
    results = []
    for proc, out, log in workers:
        # A worker stops adding at stop_at; its last request may take CLIENT_TIMEOUT more.
        remaining = stop_at - time.time() + 2 * CLIENT_TIMEOUT + 10
        try:
            proc.wait(timeout=max(1.0, remaining))
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {out.stem} did not finish; its log:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        assert proc.returncode == 0 and out.exists(), (
            f"worker {out.stem} exited with {proc.returncode}; its log:\n"
            f"{log.read_text(errors='replace')[-3000:]}")
        results.append(json.loads(out.read_text()))
    return results


def run_scenario(cluster, tmp_path: Path, scenario: str, fault) -> None:
    """Start the cluster and the clients, apply ``fault`` mid-run, then check every add."""
    cl: Cluster = cluster(3, config=CONFIG)
    keys = {"carts": f"jepsen-{scenario}", "orcarts": f"jepsen-{scenario}"}
    workers: list[tuple[subprocess.Popen, Path, Path]] = []
    root = tmp_path / "workers"
    root.mkdir()
    try:
        start_at = time.time() + WORKER_STARTUP
        stop_at = start_at + DURATION
        workers = start_workers(cl, root, keys, start_at, stop_at)
        if fault is not None:
            time.sleep(max(0.0, start_at + FAULT_AT - time.time()))
            fault(cl)
        results = collect(workers, stop_at)
        cl.wait_converged()  # every node sees every member again (after a restart)
        check(cl, scenario, keys, results, tmp_path)
    finally:
        for proc, _, _ in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for node in cl.nodes.values():  # a paused node must not stay paused
            if node.running:
                try:
                    os.kill(node.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass


def check(cl: Cluster, scenario: str, keys: dict[str, str], results: list[dict],
          tmp_path: Path) -> None:
    acked = {kind: set() for kind in keys}
    failed = {kind: set() for kind in keys}
    anomalies: list[str] = []
    stats = {kind: {"get_failures": 0, "siblings_seen": 0, "max_siblings": 0, "actors": 0}
             for kind in keys}
    for res in results:
        for kind, run in res["keys"].items():
            acked[kind] |= set(run["acked"])
            failed[kind] |= set(run["failed"])
            anomalies += [f"client {res['client']} {kind}: {a}" for a in run["anomalies"]]
            st = stats[kind]
            st["get_failures"] += run["get_failures"]
            st["siblings_seen"] += run["siblings_seen"]
            st["max_siblings"] = max(st["max_siblings"], run["max_siblings"])
            st["actors"] += len(run["actors"])
    for kind in keys:
        overlap = acked[kind] & failed[kind]
        assert not overlap, f"the test is broken: items both acked and failed: {overlap}"

    local, waited, agreed = wait_converged(cl, keys, acked)
    with Client(cl.addresses, timeout=5.0) as c:
        quorum = {}
        for kind, key in keys.items():
            quorum[kind] = {}
            for name in cl.names:
                try:
                    quorum[kind][name] = quorum_items(c, cl, name, kind, key)
                except DynamoError as exc:
                    quorum[kind][name] = None
                    anomalies.append(f"get r=3 of {kind} via {name} failed: {exc}")

    lines = [f"jepsen cart [{scenario}]: converged={agreed} after {waited:.1f}s"]
    summary: dict[str, Any] = {"scenario": scenario, "converged": agreed,
                               "converge_seconds": round(waited, 2), "keys": {}}
    lost_any = False
    for kind in keys:
        per_node_local = local.get(kind, {})
        lost_local = {name: sorted(acked[kind] - items) for name, items in per_node_local.items()}
        lost_quorum = {name: sorted(acked[kind] - items)
                       for name, items in quorum[kind].items() if items is not None}
        lost = set().union(*lost_local.values(), *lost_quorum.values()) if per_node_local \
            else set(acked[kind])
        everywhere = set(acked[kind])
        for items in list(per_node_local.values()) + [q for q in quorum[kind].values() if q]:
            everywhere &= items
        present_anywhere = set().union(*per_node_local.values()) if per_node_local else set()
        unacked_present = failed[kind] & present_anywhere
        lost_any |= bool(lost)
        entry = {"acknowledged": len(acked[kind]), "failed_puts": len(failed[kind]),
                 "acked_present_everywhere": len(everywhere), "lost": len(lost),
                 "failed_but_present": len(unacked_present),
                 "items_per_node_local": {n: len(s) for n, s in per_node_local.items()},
                 "items_per_node_r3": {n: (len(s) if s is not None else None)
                                       for n, s in quorum[kind].items()},
                 "lost_per_node_local": {n: len(v) for n, v in lost_local.items()},
                 "lost_per_node_r3": {n: len(v) for n, v in lost_quorum.items()},
                 "lost_sample": sorted(lost)[:20], **stats[kind]}
        summary["keys"][kind] = entry
        lines.append(
            f"  {kind:8s} ({BUCKETS[kind][1]}): acknowledged={entry['acknowledged']} "
            f"present={entry['acked_present_everywhere']} lost={entry['lost']} "
            f"failed_puts={entry['failed_puts']} (of which present: "
            f"{entry['failed_but_present']}) get_failures={entry['get_failures']} "
            f"reads_with_siblings={entry['siblings_seen']} "
            f"local={entry['items_per_node_local']} r3={entry['items_per_node_r3']}"
            + (f" lost_sample={entry['lost_sample']}" if lost else ""))
    report = "\n".join(lines + [f"  anomaly: {a[:500]}" for a in anomalies[:10]])
    print("\n" + report, flush=True)
    (tmp_path / "jepsen-summary.json").write_text(json.dumps(summary, indent=2))

    assert not anomalies, f"the clients or the final reads misbehaved:\n{report}"
    for kind in keys:
        assert len(acked[kind]) >= MIN_ACKED, \
            f"too few acknowledged adds to mean anything:\n{report}"
    assert not lost_any, f"acknowledged adds were lost:\n{report}"
    assert agreed, f"the replicas did not converge within {CONVERGE_TIMEOUT:g}s:\n{report}"


# ====================================================================== faults


def pause(cl: Cluster) -> None:
    pid = cl.pid(VICTIM)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_SECONDS)
    finally:
        os.kill(pid, signal.SIGCONT)


def kill_and_restart(cl: Cluster) -> None:
    cl.kill(VICTIM, signal.SIGKILL)
    time.sleep(DOWN_SECONDS)
    cl.restart(VICTIM, wait=False)  # same name, port and data directory


# ====================================================================== the tests


@pytest.mark.timeout(TEST_TIMEOUT)
def test_no_acknowledged_add_is_lost_without_faults(cluster, tmp_path: Path) -> None:
    run_scenario(cluster, tmp_path, "nofault", None)


@pytest.mark.timeout(TEST_TIMEOUT)
def test_no_acknowledged_add_is_lost_when_a_node_pauses(cluster, tmp_path: Path) -> None:
    run_scenario(cluster, tmp_path, "pause", pause)


@pytest.mark.timeout(TEST_TIMEOUT)
def test_no_acknowledged_add_is_lost_when_a_node_is_killed_and_restarted(
        cluster, tmp_path: Path) -> None:
    run_scenario(cluster, tmp_path, "kill", kill_and_restart)
