"""A real network partition between two halves of a four-node cluster (issue 3).

Each node runs in a network namespace of its own, on a veth pair into a bridge in a switch
namespace (``tests/netns.py``). The partition moves the switch ports of n3 and n4 onto a
second bridge: {n1, n2} and {n3, n4} each still talk among themselves, but no frame crosses
between them, exactly as when a switch between two racks fails. Clients run inside the
namespaces too (one small agent process per node namespace), so each side is used only from
its own side.

With N=3 on four nodes every key has three homes and one fallback, so each half holds two
nodes of every key's preference list: with sloppy quorum both halves reach R=2 and W=2.

* Both halves update the same keys while split: a cart (bucket ``carts``, resolver
  ``cart-union``) and a plain key (no resolver). After the heal every home replica holds the
  same versions, the stand-ins' hints are delivered and gone, a get of the plain key from any
  node returns both halves' values as siblings, and a get of the cart returns one value, the
  union of every item added.

The protocol logic of partitions and healing (this scenario, and a key deleted on one side
while the other side only reads it staying deleted after the heal) is specified on the
simulator, with the same test names, in ``test_sim_partitions.py``; this test is kept as
the proof that a real split between real sockets behaves as the simulated one does.

The test skips, saying why, where namespaces cannot be made (not root, no ``ip``, or
``ip netns add`` refused). Every node and agent process is stopped and every namespace
deleted (with the devices in it) whatever happens. Time to detect the split and time to
converge after the heal are printed.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest
from conftest import to_toml
from netns import (
    Agent,
    AgentError,
    NetnsUnavailable,
    Topology,
    die_with_parent,
    netns_list,
    unavailable_reason,
)
from scenarios import replicas_converged

from dynamo_core.cluster import stop_processes

pytestmark = pytest.mark.cluster

NODES = 4
SIDE_A = ("n1", "n2")
SIDE_B = ("n3", "n4")
START_TIMEOUT = 20.0
DETECT_TIMEOUT = 20.0
CONVERGE_TIMEOUT = 30.0
#: After convergence, keep watching this long for anything coming back or diverging.
SETTLE_SECONDS = 3.0

CONFIG: dict[str, Any] = {
    "cluster": {"n": 3, "r": 2, "w": 2, "request_timeout": 1.0, "gossip_interval": 0.2,
                "heartbeat_interval": 0.2},
    "anti_entropy": {"interval": 0.05},
    "handoff": {"interval": 0.2},
    "buckets": {"carts": {"resolver": "cart-union"}},
}


def seconds(start: float) -> float:
    return round(time.monotonic() - start, 2)


def poll(predicate: Callable[[], Any], timeout: float, what: str,
         interval: float = 0.1) -> Any:
    """``predicate()`` until truthy; fail naming ``what`` and the last non-true answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except (AgentError, AssertionError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


# ====================================================================== the cluster


class NetCluster:
    """``dynamo node`` processes, node ``n<i>`` alone in host namespace ``i``.

    With ``wildcard``, each node listens on every interface of its namespace
    (``tcp://0.0.0.0:PORT``) and advertises its namespace's IP, as on a real machine.
    """

    def __init__(self, topo: Topology, root: Path, wildcard: bool = False) -> None:
        self.topo = topo
        self.root = root
        self.wildcard = wildcard
        self.config_path = root / "config.toml"
        self.config_path.write_text(to_toml(CONFIG))
        self.names = [f"n{i}" for i in range(1, topo.hosts + 1)]
        self.procs: dict[str, subprocess.Popen] = {}
        self.agents: dict[str, Agent] = {}

    def index(self, name: str) -> int:
        return int(name[1:])

    def address(self, name: str) -> str:
        """Where peers and clients reach node ``name``: its namespace's IP."""
        return self.topo.address(self.index(name))

    def listen_args(self, name: str) -> list[str]:
        if self.wildcard:
            return ["--listen", f"tcp://0.0.0.0:{self.topo.port}",
                    "--advertise", self.address(name)]
        return ["--listen", self.address(name)]

    def start(self) -> None:
        for name in self.names:
            i = self.index(name)
            data = self.root / name / "data"
            data.mkdir(parents=True, exist_ok=True)
            cmd = [*self.topo.exec_prefix(i), sys.executable, "-m", "dynamo_core.cli", "node",
                   "--name", name, *self.listen_args(name), "--data-dir", str(data),
                   "--config", str(self.config_path), "--log-level", "warning"]
            for other in self.names:
                if other != name:
                    cmd += ["--seed", self.address(other)]
            with open(self.root / f"{name}.log", "ab") as log:
                # preexec_fn only calls prctl, which is safe between fork and exec.
                self.procs[name] = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    preexec_fn=die_with_parent)
        for name in self.names:
            # Each agent lives beside its node and asks only that node.
            self.agents[name] = Agent(self.topo.exec_prefix(self.index(name)),
                                      [self.address(name)], timeout=3.0,
                                      stderr_path=str(self.root / f"{name}.agent.log"))

    def agent(self, name: str) -> Agent:
        return self.agents[name]

    # ------------------------------------------------------------------ views

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"node {name} exited with status {proc.returncode}:\n{self.logs()}")

    def states(self, name: str) -> dict[str, str]:
        """How node ``name`` sees every member: name -> up / suspect / down."""
        status = self.agent(name).call("status", node=self.address(name))
        return {m["name"]: m["state"] for m in status["members"]}

    def same_ring(self) -> bool:
        """Every node builds the same ring (members settle their join orders by gossip)."""
        digests = {self.agent(n).call("status", node=self.address(n))["ring_digest"]
                   for n in self.names}
        return len(digests) == 1

    def sees(self, observers: tuple[str, ...], peers: tuple[str, ...], state: str) -> bool:
        self.check_alive()
        for observer in observers:
            view = self.states(observer)
            if any(view.get(p) != state for p in peers):
                return False
        return True

    def homes(self, key: str, bucket: str = "default") -> list[str]:
        pref = self.agent("n1").call("preflist", key=key, bucket=bucket,
                                     node=self.address("n1"))
        return [n["name"] for n in pref["nodes"] if n["role"] == "home"]

    def inspect(self, name: str, key: str, bucket: str = "default") -> dict[str, Any]:
        return self.agent(name).call("inspect", key=key, bucket=bucket,
                                     node=self.address(name))

    def get(self, name: str, key: str, bucket: str = "default") -> dict[str, Any]:
        return self.agent(name).call("get", key=key, bucket=bucket)

    def put(self, name: str, key: str, value: Any, context: Any = None,
            bucket: str = "default") -> dict[str, Any]:
        return self.agent(name).call("put", key=key, value=value, context=context,
                                     bucket=bucket)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")):
            text = path.read_text(errors="replace")
            if len(text) > conftest.LOG_TAIL_CHARS:
                text = "..." + text[-conftest.LOG_TAIL_CHARS:]
            parts.append(f"----- {path.name} -----\n{text or '(empty)'}")
        parts.append(f"----- switch ports -----\n{self.topo.links()}")
        return "\n".join(parts)

    def close(self) -> None:
        # Agents first (they only hold client sockets), then the nodes: SIGTERM, then
        # SIGKILL after the grace period.
        for agent in self.agents.values():
            if agent.proc.stdin:
                try:
                    agent.proc.stdin.close()
                except OSError:
                    pass
        stop_processes([a.proc for a in self.agents.values()], grace=2.0)
        for agent in self.agents.values():
            if agent.proc.stdout:
                agent.proc.stdout.close()
        stop_processes(list(self.procs.values()), grace=conftest.STOP_GRACE)


@pytest.fixture
def netcluster(tmp_path: Path) -> Iterator[NetCluster]:
    with running_netcluster(tmp_path, NODES) as nc:
        yield nc


@contextlib.contextmanager
def running_netcluster(root: Path, nodes: int, wildcard: bool = False) -> Iterator[NetCluster]:
    """A :class:`NetCluster` of ``nodes`` nodes, started and settled (all up, one ring).

    Skips the test, saying why, where namespaces cannot be made; stops every process and
    deletes every namespace whatever happens.
    """
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    topo = Topology(nodes)
    nc: NetCluster | None = None
    try:
        try:
            topo.create()
        except NetnsUnavailable as exc:
            pytest.skip(f"network namespaces unavailable: {exc}")
        nc = NetCluster(topo, root, wildcard)
        conftest._ACTIVE.append(nc)  # failing tests get the node logs attached
        nc.start()
        started = time.monotonic()
        poll(lambda: nc.sees(tuple(nc.names), tuple(nc.names), "up") and nc.same_ring(),
             START_TIMEOUT, f"all {nodes} nodes to see each other up and build the same ring")
        print(f"cluster of {nodes} namespaced nodes converged in {seconds(started)}s")
        yield nc
    finally:
        try:
            if nc is not None:
                nc.close()
                if nc in conftest._ACTIVE:
                    conftest._ACTIVE.remove(nc)
        finally:
            problems = topo.destroy()
            left = [ns for ns in netns_list() if ns.startswith(topo.tag)]
            assert not problems and not left, f"namespace cleanup failed: {problems} {left}"


def partition(nc: NetCluster) -> float:
    """Split {n1, n2} | {n3, n4}; returns seconds until each side sees the other down."""
    start = time.monotonic()
    nc.topo.partition([nc.index(n) for n in SIDE_B])
    poll(lambda: nc.sees(SIDE_A, SIDE_B, "down") and nc.sees(SIDE_B, SIDE_A, "down"),
         DETECT_TIMEOUT, "each side of the partition to see the other down")
    return seconds(start)


def heal(nc: NetCluster) -> float:
    """Reconnect everyone; returns seconds until every node sees every other up."""
    start = time.monotonic()
    nc.topo.heal()
    poll(lambda: nc.sees(tuple(nc.names), tuple(nc.names), "up"), DETECT_TIMEOUT,
         "every node to see every other up after the heal")
    return seconds(start)


def report(capsys: pytest.CaptureFixture, title: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n[partition figures] {title}: " +
              ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


# ====================================================================== tests


@pytest.mark.timeout(180)
def test_both_sides_write_during_a_partition_and_converge_after_the_heal(
        netcluster: NetCluster, capsys: pytest.CaptureFixture) -> None:
    nc = netcluster
    figures: dict[str, Any] = {}

    # 1. Before the split: a cart and a plain key, on every home.
    nc.put("n1", "cart", {"items": ["a"]}, bucket="carts")
    nc.put("n1", "plain", "before")
    for key, bucket in (("cart", "carts"), ("plain", "default")):
        poll(lambda k=key, b=bucket: replicas_converged(nc, k, b, lambda vs: len(vs) == 1),
             10.0, f"{bucket}/{key} on every home before the partition")

    # 2. Split for real.
    figures["detect_partition_s"] = partition(nc)

    # 3. Each side reads, adds its own item, and writes back with the context it read.
    for side, writer, item, plain in ((SIDE_A, "n1", "b", "left"),
                                      (SIDE_B, "n3", "c", "right")):
        cart = nc.get(writer, "cart", bucket="carts")
        assert cart["values"] == [{"items": ["a"]}], f"{side} read the cart as {cart}"
        nc.put(writer, "cart", {"items": sorted(cart["values"][0]["items"] + [item])},
               context=cart["context"], bucket="carts")
        old = nc.get(writer, "plain")
        assert old["values"] == ["before"], f"{side} read the plain key as {old}"
        nc.put(writer, "plain", plain, context=old["context"])
    # Each side sees only its own write: the split is real.
    for reader, item, plain in (("n2", "b", "left"), ("n4", "c", "right")):
        assert nc.get(reader, "plain")["values"] == [plain]
        assert nc.get(reader, "cart", bucket="carts")["values"] == [{"items": ["a", item]}]
    # Three homes over two halves: for each key one half holds a single home, and its write
    # reached W=2 only through a stand-in, which now keeps a hint for a home across the split.
    hints = {key: [(name, h["for"]) for name in nc.names
                   for h in nc.inspect(name, key, bucket)["hints"]]
             for key, bucket in (("plain", "default"), ("cart", "carts"))}
    for key, held in hints.items():
        assert held, f"no stand-in holds a hint for {key} during the partition"
        assert all(name not in nc.homes(key, "carts" if key == "cart" else "default")
                   for name, _ in held), f"a home holds a hint for its own key: {held}"
    figures["hints_during_split"] = "; ".join(
        f"{key}: " + ",".join(f"{name} for {home}" for name, home in held)
        for key, held in hints.items())

    # 4. Heal.
    healed = time.monotonic()
    figures["heal_seen_up_s"] = heal(nc)

    # 5. Replicas converge by themselves (hinted handoff + anti-entropy; inspect only).
    def plain_ok(vs: list[dict[str, Any]]) -> bool:
        return sorted(v["value"] for v in vs if not v["tombstone"]) == ["left", "right"]

    def cart_ok(vs: list[dict[str, Any]]) -> bool:
        items = {i for v in vs if not v["tombstone"] for i in v["value"]["items"]}
        return items == {"a", "b", "c"}

    poll(lambda: replicas_converged(nc, "plain", "default", plain_ok), CONVERGE_TIMEOUT,
         "every home of the plain key to hold both sides' versions, and no hints left")
    figures["plain_replicas_converged_s"] = seconds(healed)
    poll(lambda: replicas_converged(nc, "cart", "carts", cart_ok), CONVERGE_TIMEOUT,
         "every home of the cart to hold both sides' versions, and no hints left")
    figures["cart_replicas_converged_s"] = seconds(healed)

    # Every node's get: siblings for the plain key, the union for the cart.
    def reads_ok() -> bool:
        for name in nc.names:
            if sorted(nc.get(name, "plain")["values"]) != ["left", "right"]:
                return False
            cart = nc.get(name, "cart", bucket="carts")["values"]
            if len(cart) != 1 or sorted(cart[0]["items"]) != ["a", "b", "c"]:
                return False
        return True

    poll(reads_ok, CONVERGE_TIMEOUT, "every node to read both siblings and the merged cart")
    figures["reads_converged_s"] = seconds(healed)

    # The gets above may have written the cart's merge back; whatever they did, the homes
    # agree again and stay agreed.
    poll(lambda: replicas_converged(nc, "cart", "carts", cart_ok), CONVERGE_TIMEOUT,
         "the homes of the cart to agree after the merged reads")
    poll(lambda: replicas_converged(nc, "plain", "default", plain_ok), CONVERGE_TIMEOUT,
         "the homes of the plain key to agree after the reads")
    figures["plain_homes"] = ",".join(nc.homes("plain"))
    figures["cart_homes"] = ",".join(nc.homes("cart", "carts"))
    report(capsys, "both sides write", figures)
