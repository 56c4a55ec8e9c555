"""Quick start: a cart written twice concurrently, read back as siblings, merged, written once.

Run a cluster first (``dynamo cluster --nodes 3``), then ``python examples/quickstart.py``.
"""

from __future__ import annotations

import sys

from dynamo_core import Client


def main(nodes: list[str]) -> None:
    with Client(nodes) as c:
        start = c.get("quickstart-cart")
        # Two writers start from the same context: neither has seen the other.
        c.put("quickstart-cart", {"items": ["book"]}, context=start.context)
        c.put("quickstart-cart", {"items": ["pen"]}, context=start.context)
        r = c.get("quickstart-cart")
        print(f"siblings after two concurrent writes: {r.values}")
        merged = r.resolve("cart-union")  # the server-side resolver, run client-side
        c.put("quickstart-cart", merged, context=r.context)
        print(f"after writing the merge back: {c.get('quickstart-cart').values}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tcp://127.0.0.1:7101", "tcp://127.0.0.1:7102"])
