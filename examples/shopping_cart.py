"""The Dynamo paper's shopping cart: an "add to cart" is never lost, not even in a partition.

Run it with ``python examples/shopping_cart.py``. It starts a throwaway cluster of four node
processes (``LocalCluster``) whose bucket ``carts`` uses the ``cart-union`` resolver, and
tells three stories, checking every claim it prints against what the store returns:

a. The paper's flow: ``get`` (the server merges any siblings), add an item, ``put`` with the
   context the get returned.
b. A real partition: the cart's replicas are split into two sides by freezing node
   processes (SIGSTOP), each side is written on its own from its own stale state, and after
   the heal a read returns the union: every add survived.
c. The known flaw of a union cart (paper, section 4.4): an item removed by one writer while
   another concurrently adds something comes back after the merge.

It exits 0 only if every claim held, and always stops its cluster.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import (
    CLIENT_TIMEOUT,
    claim,
    heading,
    local_cluster,
    pause,
    preference_list,
    request_expiry,
    resume,
    retry,
    run,
    say,
    sees_up,
    thawed_on_exit,
    wait_until,
)

from dynamo_core import Bucket, Client, GetResult
from dynamo_core.cluster import LocalCluster

BUCKET = "carts"
KEY = "cart:alice"
REQUEST_TIMEOUT = 1.0

#: Four nodes, so that each side of the partition holds a replica of the cart and a node
#: to stand in for the other side's replicas. Fast gossip and heartbeats make failure
#: detection and recovery take a second rather than several.
CONFIG = f"""
[cluster]
request_timeout = {REQUEST_TIMEOUT}
gossip_interval = 0.2
heartbeat_interval = 0.2

[handoff]
interval = 0.2

[anti_entropy]
interval = 0.2

[buckets.{BUCKET}]
resolver = "cart-union"
n = 3
r = 2
w = 2
"""


# ---------------------------------------------------------------------- the cart's domain


def cart(items: list[Any]) -> dict[str, Any]:
    """The stored shape of a cart: ``cart-union`` merges the ``items`` of such envelopes."""
    return {"owner": "alice", "items": list(items)}


def items_of(result: GetResult) -> list[Any]:
    """The items of a cart as read: none if it is absent, merged if siblings came back.

    With a resolver configured the server already merged the siblings into one value; the
    client-side merge (the same plugin) only matters for a read made with ``resolve=False``.
    """
    if not result.values:
        return []
    value = result.values[0] if len(result.values) == 1 else result.resolve("cart-union")
    return list(value["items"])


def with_item(items: list[Any], item: Any) -> list[Any]:
    """``items`` plus ``item`` once: adding twice (a retried request) changes nothing."""
    return items if item in items else [*items, item]


def without_item(items: list[Any], item: Any) -> list[Any]:
    """``items`` less every copy of ``item``."""
    return [i for i in items if i != item]


def add_to_cart(carts: Bucket, item: Any, **request: Any) -> list[Any]:
    """The paper's flow: get (merged), add, put with the context. Returns what was written.

    ``request`` carries per-request settings (``node``, and ``r``/``w`` quorum overrides).
    """
    node = {"node": request["node"]} if "node" in request else {}
    current = carts.get(KEY, request.get("r"), **node)
    items = with_item(items_of(current), item)
    carts.put(KEY, cart(items), current.context, request.get("w"), **node)
    return items


def show(items: list[Any]) -> str:
    """A cart's items as one short, readable line."""
    return "[" + ", ".join(items) + "]" if items else "[] (empty)"


# ---------------------------------------------------------------------- the stories


def normal_adds(carts: Bucket) -> list[Any]:
    """a. Adds with contexts: each put supersedes exactly the version its get returned."""
    heading("a. Adding to the cart: get -> add -> put with the context (R=2, W=2)")
    first = retry(lambda: carts.get(KEY), "the first read")
    say(f"get {KEY!r}: values={first.values} (absent: an empty list, and a context anyway)")
    claim(first.values == [], "an absent cart reads as no values")
    for item in ["book", "headphones"]:
        written = retry(lambda item=item: add_to_cart(carts, item), f"adding {item}")
        say(f"add {item!r}: put {show(written)} with the context of the get before it")
    final = retry(lambda: carts.get(KEY), "the read back")
    say(f"get: {final.values}")
    claim(len(final.values) == 1, "one value: each put superseded the version it had read")
    claim(items_of(final) == ["book", "headphones"], "the cart holds both adds, in order")
    return items_of(final)


def partitioned_adds(client: Client, carts: Bucket, cl: LocalCluster,
                     before: list[Any]) -> list[Any]:
    """b. Two sides of a partition each add an item to their own stale copy; none is lost."""
    heading("b. A partition: each side adds to its own copy, and the heal keeps both adds")
    homes, fallbacks = retry(lambda: preference_list(client, KEY, BUCKET), "the preflist")
    x1, x2, y_home = homes
    y_spare = fallbacks[0]
    side_x, side_y = [x1, x2], [y_home, y_spare]
    say(f"{KEY!r} lives on home nodes {', '.join(homes)}; {y_spare} is the first fallback")
    say(f"side X = {x1}, {x2} (two homes); side Y = {y_home} (a home) + {y_spare} "
        f"(a stand-in)")

    def held_by(name: str) -> list[list[Any]]:
        versions = client.inspect(KEY, node=cl.address(name), bucket=BUCKET)["versions"]
        return [v["value"]["items"] for v in versions if not v["tombstone"]]

    wait_until(lambda: all(held_by(h) == [before] for h in homes), 10.0,
               "every home replica holds the cart before the split")
    say(f"before the split every home holds {show(before)}")

    with thawed_on_exit(cl):
        # Side X alone: side Y is frozen, so nothing reaches it.
        pause(cl, side_y)
        say(f"SIGSTOP {y_home} and {y_spare}: side X is on its own")
        x_items = retry(lambda: add_to_cart(carts, "charger", node=cl.address(x1), r=1, w=2),
                        "side X's add")
        say(f"on side X (via {x1}, R=1, W=2): add 'charger' -> put {show(x_items)}")
        seen_x = items_of(retry(lambda: carts.get(KEY, 1, node=cl.address(x2)),
                                "side X's read"))
        say(f"side X reads via {x2}: {show(seen_x)}")
        claim("charger" in seen_x, "side X sees its own add")

        # Wait until whatever side X sent towards side Y has expired, then swap sides.
        wait = request_expiry(REQUEST_TIMEOUT) + 0.5
        say(f"waiting {wait:g}s: requests queued for the frozen side expire by then, so "
            f"none leaks across")
        time.sleep(wait)
        pause(cl, side_x)
        resume(cl, side_y)
        say(f"SIGSTOP {x1} and {x2}, SIGCONT {y_home} and {y_spare}: now side Y is alone")
        wait_until(lambda: sees_up(client, cl, y_home, [y_spare]), 10.0,
                   f"{y_home} sees {y_spare} up again")

        stale = retry(lambda: carts.get(KEY, 1, node=cl.address(y_home)), "side Y's read")
        say(f"side Y reads via {y_home} (R=1): {show(items_of(stale))}")
        claim("charger" not in items_of(stale),
              "side Y cannot see the charger: the replicas really diverged")
        y_items = retry(lambda: add_to_cart(carts, "phone case", node=cl.address(y_home),
                                            r=1, w=2), "side Y's add")
        say(f"on side Y (via {y_home}, W=2): add 'phone case' -> put {show(y_items)}")
        hints = retry(lambda: client.inspect(KEY, node=cl.address(y_spare), bucket=BUCKET),
                      "the stand-in's inspect")["hints"]
        for hint in hints:
            say(f"{y_spare} keeps a hint for {hint['for']}: "
                f"{[show(v['value']['items']) for v in hint['versions']]}")
        claim(any(h["for"] in side_x for h in hints),
              f"the write met W=2 through sloppy quorum: {y_spare} stood in for side X, "
              f"with a hint")
        claim(retry(lambda: held_by(y_home), "an inspect") == [y_items],
              f"{y_home} holds only side Y's cart")

        # The heal.
        resume(cl, side_x)
        say("SIGCONT everything: the partition heals")
        healed_at = time.monotonic()
        expected = {*before, "charger", "phone case"}
        healed = wait_until(lambda: _union_read(carts, expected), 20.0,
                            "a read after the heal returns the union of both sides")
        say(f"get after the heal (R=3), {time.monotonic() - healed_at:.1f}s later: "
            f"{healed.values}")
    claim(len(healed.values) == 1,
          "one value: the server merged the two sides' siblings with cart-union")
    claim(set(items_of(healed)) == expected,
          "every add survived: the one before the split, side X's and side Y's")
    return items_of(healed)


def _union_read(carts: Bucket, expected: set[Any]) -> GetResult | None:
    result = carts.get(KEY, 3)
    return result if set(items_of(result)) == expected else None


def deleted_item_returns(carts: Bucket) -> None:
    """c. The union's known flaw: a removal concurrent with an add is undone by the merge."""
    heading("c. The known flaw: a removed item comes back")
    base = retry(lambda: carts.get(KEY, 3), "the read both writers start from")
    items = items_of(base)
    say(f"both writers read {show(items)} (the same context)")
    removed = without_item(items, "headphones")
    retry(lambda: carts.put(KEY, cart(removed), base.context, 3), "writer A's removal")
    say(f"writer A removes 'headphones': put {show(removed)}")
    added = with_item(items, "mug")
    retry(lambda: carts.put(KEY, cart(added), base.context, 3), "writer B's add")
    say(f"writer B, concurrently (it never saw A's write), adds 'mug': put {show(added)}")
    raw = retry(lambda: carts.get(KEY, 3, resolve=False), "the read of the siblings")
    say(f"get with resolve=False: {len(raw.values)} siblings: "
        f"{', '.join(show(v['items']) for v in raw.values)}")
    claim(len(raw.values) >= 2, "the two writes are concurrent: both are kept as siblings")
    merged = items_of(retry(lambda: carts.get(KEY, 3), "the merged read"))
    say(f"get (merged by cart-union): {show(merged)}")
    claim("mug" in merged, "writer B's add survived")
    claim("headphones" in merged,
          "the removed 'headphones' is back: a union cannot tell a removal from an item "
          "never added")
    say("This is the anomaly the paper reports for its cart (section 4.4): deleted items")
    say("can resurface. examples/orset_cart (resolver 'orset-cart', an add-wins OR-set")
    say("that remembers what each removal saw) fixes it.")


def main(args: argparse.Namespace) -> None:
    """Start the cluster, tell the three stories, stop the cluster."""
    say("starting a local cluster of 4 nodes (bucket 'carts': cart-union, N=3, R=2, W=2)")
    with (local_cluster(4, CONFIG, args.log_level) as cl,
          Client(cl.addresses, timeout=CLIENT_TIMEOUT) as client):
        carts = client.bucket(BUCKET)
        before = normal_adds(carts)
        partitioned_adds(client, carts, cl, before)
        deleted_item_returns(carts)


if __name__ == "__main__":
    run(main, __doc__.splitlines()[0])
