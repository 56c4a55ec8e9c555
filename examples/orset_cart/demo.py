"""orset-cart against cart-union, side by side, on a real local cluster.

    python examples/orset_cart/demo.py

Starts three node processes with two buckets: ``orset`` (resolver ``orset-cart``) and
``union`` (resolver ``cart-union``, the paper's cart). In each, two writers read the same cart
and then write without seeing each other's write, as the two sides of a partition would; the
store keeps both writes as siblings and the bucket's resolver merges them on the next read.
Exits 0 when every outcome is the expected one; the cluster is stopped however the demo ends.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from dynamo_core import Client, DynamoError
from dynamo_core.cluster import LocalCluster

CONFIG = """\
[cluster]
gossip_interval = 0.2
[buckets.orset]
resolver = "orset-cart"
[buckets.union]
resolver = "cart-union"
"""

try:
    from dynamo_orset_cart import Cart
except ImportError:
    sys.exit("demo.py: the orset-cart plugin is not installed; run "
             "`pip install -e examples/orset_cart` from the repository root first")


# --------------------------------------------------------------------------- one writer each

# A writer is ``(edit_union, edit_orset)``: the same change, for each bucket's value shape.
Edit = tuple[Callable[[list[str]], list[str]], Callable[[Cart], object]]


def union_items(value: Any) -> list[str]:
    return sorted(value["items"]) if value else []


def race(c: Client, key: str, start: list[str], writer_a: Edit, writer_b: Edit
         ) -> tuple[list[str], list[str]]:
    """Both writers read ``start``, then both write; the merged items of each bucket.

    Before the merged read, a read with ``resolve=False`` checks that the store really holds
    the two writes as siblings, i.e. that neither writer saw the other's write.
    """
    union, carts = c.bucket("union"), c.bucket("orset")

    union.put(key, {"items": start})  # a fresh key
    ra, rb = union.get(key), union.get(key)  # both read before either writes
    union.put(key, {"items": writer_a[0](union_items(ra.values[0]))}, context=ra.context)
    union.put(key, {"items": writer_b[0](union_items(rb.values[0]))}, context=rb.context)
    check_siblings(union.get(key, resolve=False).values, "union")
    union_after = union_items(union.get(key).values[0])

    seed = Cart("shop")  # a fresh key: nothing to read first
    for item in start:
        seed.add(item)
    carts.put(key, seed.to_value())
    ra, rb = carts.get(key), carts.get(key)
    cart_a = Cart.from_values(ra.values, actor="writer-a")
    cart_b = Cart.from_values(rb.values, actor="writer-b")
    writer_a[1](cart_a)
    writer_b[1](cart_b)
    carts.put(key, cart_a.to_value(), context=ra.context)
    carts.put(key, cart_b.to_value(), context=rb.context)
    check_siblings(carts.get(key, resolve=False).values, "orset")
    orset_after = list(Cart.from_values(carts.get(key).values, actor="reader"))
    return union_after, orset_after


def check_siblings(values: list[Any], bucket: str) -> None:
    if len(values) != 2:
        raise RuntimeError(f"expected the two concurrent writes as 2 siblings in bucket "
                           f"{bucket}, found {len(values)}")


def removes(item: str) -> Edit:
    return (lambda items: [i for i in items if i != item], lambda cart: cart.remove(item))


def adds(item: str) -> Edit:
    return (lambda items: sorted(set(items) | {item}), lambda cart: cart.add(item))


# --------------------------------------------------------------------------- the story


def show(label: str, items: list[str], verdict: str) -> None:
    print(f"  {label:<11} {items!s:<26} {verdict}".rstrip())


def main() -> int:
    problems: list[str] = []
    print("starting a local cluster of 3 nodes (buckets: orset -> orset-cart, "
          "union -> cart-union) ...", flush=True)
    with LocalCluster(3, config_toml=CONFIG) as cluster, \
            Client(cluster.addresses, timeout=5.0) as c:
        print("each time, two writers read the same cart and write without seeing each "
              "other's write;\nthe store keeps both as siblings and the bucket's resolver "
              "merges them on read")
        print("\n1. both writers read ['cup', 'pen']; A removes 'pen' while B adds 'book'")
        union_after, orset_after = race(c, "cart-1", ["cup", "pen"], removes("pen"),
                                        adds("book"))
        pen_back = "pen" in union_after
        show("cart-union", union_after,
             "<- 'pen' came back (the paper's anomaly)" if pen_back else "<- 'pen' stayed out")
        show("orset-cart", orset_after,
             "<- 'pen' stays removed" if "pen" not in orset_after else "<- 'pen' CAME BACK")
        if orset_after != ["book", "cup"]:
            problems.append(f"orset-cart merged to {orset_after}, expected ['book', 'cup']")
        if union_after != ["book", "cup", "pen"]:
            problems.append(f"cart-union merged to {union_after}, expected it to keep 'pen'")

        print("\n2. both writers read ['cup', 'pen']; A removes 'pen' while B adds 'pen' again")
        union_after, orset_after = race(c, "cart-2", ["cup", "pen"], removes("pen"),
                                        adds("pen"))
        show("cart-union", union_after, "")
        show("orset-cart", orset_after,
             "<- add wins: B's add was never seen by A" if "pen" in orset_after
             else "<- 'pen' LOST")
        if orset_after != ["cup", "pen"]:
            problems.append(f"orset-cart merged to {orset_after}, expected ['cup', 'pen']")
    print("\ncluster stopped")
    for problem in problems:
        print(f"unexpected: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _stop_on_sigterm(_sig: int, _frame: object) -> None:
    raise SystemExit("demo.py: stopped by SIGTERM")  # unwinds the with-blocks: cluster stops


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        sys.exit(main())
    except (DynamoError, OSError, RuntimeError) as exc:
        sys.exit(f"demo.py: {exc}")
    except KeyboardInterrupt:
        sys.exit("demo.py: interrupted")
