"""Leave and join against real node processes, with data in the cluster.

What only real processes can show: a node that has left hands its ranges off over real
sockets and then its process exits with status 0; a node started with no seeds joins when
told to (the adapter connects to a seed it had never heard of) and reads during the join
hold while two homes are frozen with SIGSTOP. The protocol logic of join, leave and remove
(the fair share moved, N copies on exactly the homes, a removed node rebuilt, a node that
left staying out) is specified on the simulator, with the same test names and more keys,
in ``test_sim_membership.py``.

Each test loads keys into a cluster (N = 3), changes its membership while a reader thread
reads keys back the whole time, and then checks that no read fails and that afterwards
every key has exactly N copies, on exactly its home nodes (``inspect``, one node's local
storage). Figures are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from conftest import Cluster, NodeProcess, free_port, homes, load, status, wait_for
from scenarios import copies_converged

from dynamo_core.client import Client
from dynamo_core.errors import DynamoError

pytestmark = pytest.mark.cluster

N = 3
#: Keys in the cluster a node leaves (the simulator twin moves 1500; here the point is the
#: process and its sockets).
KEYS = 600
#: Keys whose copies are checked one by one with ``inspect`` on every node.
SAMPLE = 150

CONFIG: dict[str, Any] = {
    "cluster": {"gossip_interval": 0.2, "heartbeat_interval": 0.2, "request_timeout": 1.0},
    "anti_entropy": {"interval": 0.05},
    "handoff": {"interval": 0.2},
    "background": {"rate": 100000.0, "burst": 1000, "max_concurrent": 8},
    # The default strategy 3 gives every node its fair share of partitions (give or take
    # one), so the test measures the transfer, not the luck of a random draw.
}


# ====================================================================== helpers


def holders(cl: Cluster, key: str, names: list[str]) -> dict[str, list[Any]]:
    """Node -> the values it holds locally for ``key``, for the nodes that hold any."""
    found = {}
    for name in names:
        with cl.client(name) as c:
            versions = c.inspect(key, cl.address(name))["versions"]
        if versions:
            found[name] = [v["value"] for v in versions]
    return found


def converged(cl: Cluster, names: list[str], total_keys: int) -> dict[str, dict[str, Any]]:
    """Every node sees the same members up, holds only what it replicates, and the
    replicas add up to N copies of every key; returns each node's status when so."""
    return copies_converged(lambda name: status(cl, name), names, total_keys, N)


def check_copies(cl: Cluster, keys: dict[str, Any], names: list[str],
                 sample: int | None = SAMPLE) -> None:
    """A sample of keys (or all): exactly N copies, on exactly the key's homes, with its
    value."""
    chosen = sorted(keys) if sample is None else random.Random(7).sample(sorted(keys), sample)
    for key in chosen:
        expected = homes(cl, key, names[0])
        assert len(expected) == N
        found = holders(cl, key, names)
        assert sorted(found) == sorted(expected), (key, found, expected)
        assert all(values == [keys[key]] for values in found.values()), (key, found)


def moved(before: dict[str, dict], after: dict[str, dict], field: str) -> int:
    return sum(after[n]["anti_entropy"][field]
               - before.get(n, {"anti_entropy": {field: 0}})["anti_entropy"][field]
               for n in after)


class Reader(threading.Thread):
    """Reads random keys until stopped; every read must return the key's value."""

    def __init__(self, addresses: list[str], keys: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.addresses = addresses
        self.keys = keys
        self.stopping = threading.Event()
        self.reads = 0
        self.failures: list[tuple[str, Any]] = []
        self.latencies: list[float] = []

    def run(self) -> None:
        rng = random.Random()
        names = sorted(self.keys)
        with Client(self.addresses, timeout=5.0) as c:
            while not self.stopping.is_set():
                key = rng.choice(names)
                began = time.monotonic()
                try:
                    values = c.get(key).values
                except DynamoError as exc:
                    self.failures.append((key, repr(exc)))
                    continue
                self.latencies.append(time.monotonic() - began)
                self.reads += 1
                if values != [self.keys[key]]:
                    self.failures.append((key, values))

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=15)
        assert not self.is_alive(), "the reader did not stop"

    def summary(self) -> str:
        ordered = sorted(self.latencies) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return (f"{self.reads} reads, {len(self.failures)} failed, latency p50 "
                f"{ordered[len(ordered) // 2] * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                f"max {ordered[-1] * 1000:.0f} ms")


def start_without_seeds(cl: Cluster, name: str) -> None:
    """Start one more node that knows nobody; it joins only when told to."""
    node = NodeProcess(name, free_port(), cl.root / name / "data", cl.root / f"{name}.log")
    cl.nodes[name] = node  # from now on the fixture stops it like the others
    node.data_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "dynamo_core.cli", "node", "--name", name,
           "--listen", node.address, "--data-dir", str(node.data_dir),
           "--config", str(cl.config_path), "--log-level", "warning"]
    with open(node.log_path, "ab") as log:
        node.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def answers() -> bool:
        with Client(node.address, timeout=0.5) as c:
            return c.ping(node=node.address) == name

    wait_for(answers, 15, f"{name} to answer")


# ====================================================================== leave


def test_a_leaving_node_hands_its_ranges_off_then_exits_and_every_key_keeps_n_copies(cluster):
    cl = cluster(5, config=CONFIG)
    keys = {f"leave-{i}": i for i in range(KEYS)}
    load(cl, keys)
    before = wait_for(lambda: converged(cl, cl.names, len(keys)), 20, "the cluster to settle")
    leaver = "n5"
    stay = [n for n in cl.names if n != leaver]
    held = before[leaver]["anti_entropy"]["keys_replicated"]

    reader = Reader([cl.address(n) for n in stay], keys)
    reader.start()
    try:
        time.sleep(0.5)
        left_at = time.monotonic()
        with cl.client("n1") as c:
            c.leave(cl.address(leaver))
        proc = cl.nodes[leaver].proc
        assert proc is not None
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{leaver} did not exit within 60 s of being asked to leave")
        exited = time.monotonic() - left_at
        assert code == 0, f"{leaver} exited with status {code}"
        after = wait_for(lambda: converged(cl, stay, len(keys)), 30,
                         "every key to have N copies on the remaining nodes")
        time.sleep(0.3)
    finally:
        reader.finish()

    assert not reader.failures, f"{len(reader.failures)} failed reads: {reader.failures[:5]}"
    gained = moved(before, after, "keys_replicated")
    print(f"\n[leave] {leaver} held {held} of {N * len(keys)} copies and exited with status 0 "
          f"after {exited:.1f}s; the others gained {gained} copies; "
          f"{reader.summary()}")
    assert gained == held
    for name in stay:
        seen = {m["name"]: m["status"] for m in status(cl, name)["members"]}
        assert seen[leaver] == "removed", (name, seen)
    check_copies(cl, keys, stay)
    with cl.client(*stay) as c:
        for key, value in keys.items():
            assert c.get(key).values == [value], key


# ====================================================================== reads while a node joins


def test_a_get_during_a_join_does_not_count_the_new_nodes_empty_answer_as_the_key_missing(
        cluster):
    # No anti-entropy rounds at all: the new node stays empty, as it is in the first
    # seconds of any join, and the old replicas keep their copies. (Nor are the first four
    # ever ready: they stay joining too.)
    cl = cluster(4, config={**CONFIG, "anti_entropy": {"interval": 1e6}}, ready=False)
    keys = {f"early-{i}": i for i in range(100)}
    with cl.client() as c:
        for key, value in keys.items():
            c.put(key, value, w=3)

    def walk(key: str) -> list[str]:
        with cl.client("n1") as c:
            return [n["name"] for n in c.preflist(key, node=cl.address("n1"))["nodes"]]

    homes_before = {k: set(walk(k)[:N]) for k in keys}
    start_without_seeds(cl, "n5")
    with cl.client("n5") as c:
        c.join(cl.address("n5"), seed=cl.address("n1"))
    # With no anti-entropy n5 stays joining (in the ring, taking writes, its ranges unfilled).
    wait_for(lambda: all(len({m["name"] for m in status(cl, n)["members"]
                              if m["status"] in ("up", "joining")}) == 5 for n in cl.names), 10,
             "every node to see n5 in the ring")
    # A key n5 became a home of, whose old homes are the walk's next ones (under strategy 3 a
    # key whose walk passed a partition n5 took over may lose that partition's old owner
    # from its homes; those keys do not fit).
    key = next(k for k in keys if "n5" in walk(k)[:N]
               and set(walk(k)[:N + 1]) - {"n5"} == homes_before[k])
    order = walk(key)
    slow = [h for h in order[:N] if h != "n5"]  # the two homes that hold the key
    coordinator = order[4]  # the second fallback: it never held the key
    assert holders(cl, key, ["n5", order[3], coordinator]) == {order[3]: [keys[key]]}
    for name in slow:
        os.kill(cl.pid(name), signal.SIGSTOP)
    try:
        # Both old homes pause past the hedge time (request_timeout / 2): the coordinator
        # asks the fallbacks, the third home (order[3]) still holds the key.
        with cl.client(coordinator, timeout=5.0) as c:
            values = c.get(key, node=cl.address(coordinator)).values
    finally:
        for name in slow:
            os.kill(cl.pid(name), signal.SIGCONT)
    assert values == [keys[key]], f"{key} read as {values} while {order[3]} holds it"
