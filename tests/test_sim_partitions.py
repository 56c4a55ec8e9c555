"""A network partition between two halves of a four-node cluster (issue 3), on the simulator.

The simulator twins of ``test_partition.py`` (which splits real processes in network
namespaces; it keeps one of its tests as the real-socket proof): the same names, the same
claims, on virtual time. The partition cuts every link between {n1, n2} and {n3, n4}, both
ways: each half still talks among itself, and no frame crosses. Each node has a client of
its own that asks only that node, so each side is used only from its own side.

With N=3 on four nodes every key has three homes and one fallback, so each half holds two
nodes of every key's preference list: with sloppy quorum both halves reach R=2 and W=2.
"""

from __future__ import annotations

from typing import Any

from scenarios import replicas_converged

from dynamo_core.sim import ScriptClient, SimCluster

SIDE_A = ("n1", "n2")
SIDE_B = ("n3", "n4")
DETECT_TIMEOUT = 20.0
CONVERGE_TIMEOUT = 30.0
#: After convergence, keep watching this long for anything coming back or diverging.
SETTLE_SECONDS = 15.0

CONFIG: dict[str, Any] = {
    "cluster": {"n": 3, "r": 2, "w": 2, "request_timeout": 1.0, "gossip_interval": 0.2,
                "heartbeat_interval": 0.2},
    "anti_entropy": {"interval": 0.25},
    "handoff": {"interval": 0.2},
    "buckets": {"carts": {"resolver": "cart-union"}},
}


class Sides:
    """The cluster, and beside each node a client that asks only that node."""

    def __init__(self, seed: int) -> None:
        self.cl = SimCluster(4, seed=seed, config=CONFIG)
        self.cl.start()
        self.names = list(self.cl.nodes)
        self.clients: dict[str, ScriptClient] = {n: self.cl.client(via=[n], timeout=3.0)
                                                 for n in self.names}
        self.cut: set[tuple[str, str]] = set()

    def sees(self, observers: tuple[str, ...], peers: tuple[str, ...], state: str) -> bool:
        return all(self.cl.core(o).peer_state(p) == state
                   for o in observers for p in peers if p != o)

    def homes(self, key: str, bucket: str = "default") -> list[str]:
        pref = self.clients["n1"].preflist(key, "n1", bucket=bucket)
        return [n["name"] for n in pref["nodes"] if n["role"] == "home"]

    def inspect(self, name: str, key: str, bucket: str = "default") -> dict[str, Any]:
        return self.clients[name].inspect(key, name, bucket=bucket)

    def get(self, name: str, key: str, bucket: str = "default") -> Any:
        return self.clients[name].get(key, bucket=bucket)

    def put(self, name: str, key: str, value: Any, context: Any = None,
            bucket: str = "default") -> bytes:
        return self.clients[name].put(key, value, context, bucket=bucket)

    def partition(self) -> float:
        """Split {n1, n2} | {n3, n4}; returns seconds until each side sees the other down."""
        began = self.cl.world.now
        self.cut = self.cl.partition(SIDE_B, SIDE_A)
        self.cl.run_until(lambda: self.sees(SIDE_A, SIDE_B, "down")
                          and self.sees(SIDE_B, SIDE_A, "down"), DETECT_TIMEOUT,
                          "each side of the partition to see the other down")
        return round(self.cl.world.now - began, 2)

    def heal(self) -> float:
        """Reconnect everyone; returns seconds until every node sees every other up."""
        began = self.cl.world.now
        self.cl.heal(self.cut)
        all_ = tuple(self.names)
        self.cl.run_until(lambda: self.sees(all_, all_, "up"), DETECT_TIMEOUT,
                          "every node to see every other up after the heal")
        return round(self.cl.world.now - began, 2)


def report(title: str, figures: dict[str, Any]) -> None:
    print(f"\n[partition figures] {title}: " +
          ", ".join(f"{k}={v}" for k, v in figures.items()))


# ====================================================================== tests


def test_both_sides_write_during_a_partition_and_converge_after_the_heal() -> None:
    s = Sides(seed=61)
    cl = s.cl
    figures: dict[str, Any] = {}

    # 1. Before the split: a cart and a plain key, on every home.
    s.put("n1", "cart", {"items": ["a"]}, bucket="carts")
    s.put("n1", "plain", "before")
    for key, bucket in (("cart", "carts"), ("plain", "default")):
        cl.run_until(lambda k=key, b=bucket: replicas_converged(s, k, b, lambda vs: len(vs) == 1),
                     10.0, f"{bucket}/{key} on every home before the partition")

    # 2. Split.
    figures["detect_partition_s"] = s.partition()

    # 3. Each side reads, adds its own item, and writes back with the context it read.
    for side, writer, item, plain in ((SIDE_A, "n1", "b", "left"),
                                      (SIDE_B, "n3", "c", "right")):
        cart = s.get(writer, "cart", bucket="carts")
        assert cart.values == [{"items": ["a"]}], f"{side} read the cart as {cart.values}"
        s.put(writer, "cart", {"items": sorted(cart.values[0]["items"] + [item])},
              context=cart.context, bucket="carts")
        old = s.get(writer, "plain")
        assert old.values == ["before"], f"{side} read the plain key as {old.values}"
        s.put(writer, "plain", plain, context=old.context)
    # Each side sees only its own write: the split is real.
    for reader, item, plain in (("n2", "b", "left"), ("n4", "c", "right")):
        assert s.get(reader, "plain").values == [plain]
        assert s.get(reader, "cart", bucket="carts").values == [{"items": ["a", item]}]
    # Three homes over two halves: for each key one half holds a single home, and its write
    # reached W=2 only through a stand-in, which now keeps a hint for a home across the split.
    hints = {key: [(name, h["for"]) for name in s.names
                   for h in s.inspect(name, key, bucket)["hints"]]
             for key, bucket in (("plain", "default"), ("cart", "carts"))}
    for key, held in hints.items():
        assert held, f"no stand-in holds a hint for {key} during the partition"
        assert all(name not in s.homes(key, "carts" if key == "cart" else "default")
                   for name, _ in held), f"a home holds a hint for its own key: {held}"
    figures["hints_during_split"] = "; ".join(
        f"{key}: " + ",".join(f"{name} for {home}" for name, home in held)
        for key, held in hints.items())

    # 4. Heal.
    healed = cl.world.now
    figures["heal_seen_up_s"] = s.heal()

    # 5. Replicas converge by themselves (hinted handoff + anti-entropy; inspect only).
    def plain_ok(vs: list[dict[str, Any]]) -> bool:
        return sorted(v["value"] for v in vs if not v["tombstone"]) == ["left", "right"]

    def cart_ok(vs: list[dict[str, Any]]) -> bool:
        items = {i for v in vs if not v["tombstone"] for i in v["value"]["items"]}
        return items == {"a", "b", "c"}

    cl.run_until(lambda: replicas_converged(s, "plain", "default", plain_ok), CONVERGE_TIMEOUT,
                 "every home of the plain key to hold both sides' versions, and no hints left")
    figures["plain_replicas_converged_s"] = round(cl.world.now - healed, 2)
    cl.run_until(lambda: replicas_converged(s, "cart", "carts", cart_ok), CONVERGE_TIMEOUT,
                 "every home of the cart to hold both sides' versions, and no hints left")
    figures["cart_replicas_converged_s"] = round(cl.world.now - healed, 2)

    # Every node's get: siblings for the plain key, the union for the cart.
    def reads_ok() -> bool:
        for name in s.names:
            if sorted(s.get(name, "plain").values) != ["left", "right"]:
                return False
            cart = s.get(name, "cart", bucket="carts").values
            if len(cart) != 1 or sorted(cart[0]["items"]) != ["a", "b", "c"]:
                return False
        return True

    cl.run_until(reads_ok, CONVERGE_TIMEOUT, "every node to read both siblings and the merged cart")
    figures["reads_converged_s"] = round(cl.world.now - healed, 2)

    # The gets above may have written the cart's merge back; whatever they did, the homes
    # agree again and stay agreed.
    cl.run_until(lambda: replicas_converged(s, "cart", "carts", cart_ok), CONVERGE_TIMEOUT,
                 "the homes of the cart to agree after the merged reads")
    cl.run_until(lambda: replicas_converged(s, "plain", "default", plain_ok), CONVERGE_TIMEOUT,
                 "the homes of the plain key to agree after the reads")
    for _ in range(int(SETTLE_SECONDS / 0.5)):
        cl.run(0.5)
        assert replicas_converged(s, "cart", "carts", cart_ok)
        assert replicas_converged(s, "plain", "default", plain_ok)
    figures["plain_homes"] = ",".join(s.homes("plain"))
    figures["cart_homes"] = ",".join(s.homes("cart", "carts"))
    report("both sides write", figures)


def test_a_key_deleted_on_one_side_stays_deleted_after_the_heal() -> None:
    s = Sides(seed=62)
    cl = s.cl
    figures: dict[str, Any] = {}
    # Keys with a single home on the deleting side (there the tombstone reaches W=2 only
    # through a stand-in's hint) and keys with two homes on it.
    by_homes_on_a: dict[int, list[str]] = {1: [], 2: []}
    for i in range(400):
        key = f"doomed-{i}"
        on_a = len(set(s.homes(key)) & set(SIDE_A))
        if len(by_homes_on_a[on_a]) < 5:
            by_homes_on_a[on_a].append(key)
        if all(len(v) == 5 for v in by_homes_on_a.values()):
            break
    keys = by_homes_on_a[1] + by_homes_on_a[2]
    assert len(keys) == 10, f"not five keys of both kinds among 400: {by_homes_on_a}"
    for key in keys:
        s.put("n1", key, f"{key} value")
    for key in keys:
        cl.run_until(lambda k=key: replicas_converged(s, k, "default", lambda vs: len(vs) == 1),
                     10.0, f"{key} on every home before the partition")

    figures["detect_partition_s"] = s.partition()

    # Side A deletes (with the context it read); side B only reads, through both of its
    # nodes, so its read repair and its stand-in hints carry the old value around.
    for key in keys:
        seen = s.get("n1", key)
        assert seen.values == [f"{key} value"]
        s.clients["n1"].delete(key, context=seen.context)
        assert s.get("n2", key).values == []
    for _ in range(3):
        for key in keys:
            for reader in SIDE_B:
                assert s.get(reader, key).values == [f"{key} value"], \
                    f"{reader} lost {key} although its side never deleted it"

    healed = cl.world.now
    figures["heal_seen_up_s"] = s.heal()

    def deleted(vs: list[dict[str, Any]]) -> bool:
        return bool(vs) and all(v["tombstone"] for v in vs)

    for key in keys:
        cl.run_until(lambda k=key: replicas_converged(s, k, "default", deleted),
                     CONVERGE_TIMEOUT,
                     f"every home of {key} to hold only its tombstone, and no hints left")
    figures["tombstones_converged_s"] = round(cl.world.now - healed, 2)

    def nobody_reads_it() -> bool:
        return all(s.get(name, key).values == [] for name in s.names for key in keys)

    cl.run_until(nobody_reads_it, CONVERGE_TIMEOUT, "every node to read the deleted keys as absent")
    figures["reads_absent_s"] = round(cl.world.now - healed, 2)

    # Many anti-entropy and handoff rounds later: still gone.
    for _ in range(int(SETTLE_SECONDS)):
        cl.run(1.0)
        for key in keys:
            for name in s.names:
                assert s.get(name, key).values == [], f"{key} came back on {name}"
                assert not [v for v in s.inspect(name, key)["versions"]
                            if not v["tombstone"]], f"{name} holds a live {key} again"
    report("delete during partition", figures)
